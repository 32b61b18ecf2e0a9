//! Foca's configuration, derived from the cluster's size.

use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::Config;

use super::MAX_SWIM_PACKET;

/// Foca's configuration for a cluster of `size` nodes: memberlist's LAN
/// profile with these changes:
/// - suspicion lasts at least 3.5 probe periods per log10 of the size, not
///   4: this is the time once confirmed, and a lone suspicion waits up to 6
///   times longer (see `core::lifeguard`). It bounds the pauses a node
///   survives: stopped for 5 s, it was accused after 1 s at the earliest,
///   and is declared down after 1 + 4.55 s on 20 hosts (with 3 periods,
///   one pause in ten was declared down a few ms before its refutation);
/// - each update is retransmitted 10·log10(size+1) times, not 4·: joins are
///   pushed eagerly, which spends transmissions fast, and with 6· one node
///   in a few missed one of 19 simultaneous joins until the next announce
///   (measured on 20 lab hosts); a member update is ~40 bytes, so this
///   costs little;
/// - no periodic announce to live members (memberlist's push/pull): sync
///   compares a hash of the members every 5 s and pulls the list (at most
///   every 30 s) only when they differ, which bounds as well how long a
///   node can miss a member. Each announce's answer is up to a packet of
///   members: announcing every 30 s cost 20 idle lab hosts about 40 of
///   410 B/s each (at 15 s, 84 of 485 B/s), for lists that were equal;
/// - down members are re-announced to every 3 s, which heals partitions;
/// - packets fit one QUIC datagram.
pub fn config_for(size: usize) -> Config {
    let size = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
    let mut config = Config::new_lan(NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN));
    let log_size = f64::from(size).log10();
    config.suspect_to_down_after = config.probe_period.mul_f64(log_size.max(1.0) * 3.5);
    let transmissions = (f64::from(size.saturating_add(1)).log10() * 10.0).clamp(1.0, 255.0);
    // Clamped to 1..=255 above, so the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let transmissions = transmissions as u8;
    config.max_transmissions = NonZeroU8::new(transmissions).unwrap_or(NonZeroU8::MIN);
    config.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
    config.periodic_announce = None;
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    config
}
