//! A Prometheus histogram of durations: fixed buckets, atomic counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts of observed durations by upper bound, with their sum.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Upper bounds in seconds, ascending (`+Inf` is implied).
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`'s.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// A reading of a histogram, cumulative as Prometheus wants it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, `+Inf` last.
    pub(crate) buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub(crate) sum: f64,
    /// Number of observations.
    pub(crate) count: u64,
}

impl HistogramSnapshot {
    /// The sum of two readings of histograms with the same bounds.
    pub(crate) fn plus(self, other: Self) -> Self {
        let buckets = self.buckets.iter().zip(&other.buckets).map(|((bound, a), (_, b))| (*bound, a + b)).collect();
        Self { buckets, sum: self.sum + other.sum, count: self.count + other.count }
    }
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, ascending).
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_nanos: AtomicU64::new(0) }
    }

    /// Counts one observation.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.iter().position(|&bound| seconds <= bound).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The cumulative counts and the sum.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        // Nanoseconds to seconds: precision beyond 2^53 ns (104 days) is moot.
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSnapshot { buckets, sum, count: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_holds_everything() {
        let histogram = Histogram::new(&[0.001, 0.01]);
        for ms in [0, 1, 5, 50] {
            histogram.observe(Duration::from_millis(ms));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![(0.001, 2), (0.01, 3), (f64::INFINITY, 4)]);
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum - 0.056).abs() < 1e-9, "{}", snapshot.sum);
    }
}
