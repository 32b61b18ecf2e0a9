//! The wall clock, as records, events and the data plane stamp it.

/// The wall clock in milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
