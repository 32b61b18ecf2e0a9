//! Prometheus metrics: what the agent counts as it runs (the data plane's
//! passes, DNS answers), and the text of a scrape ([`render`]), which also
//! reads the membership, the records and the transport's counters. The
//! listener that serves it at `--metrics-addr` is [`crate::metrics_http`].

mod exposition;
mod histogram;
mod report;

pub(crate) use exposition::CONTENT_TYPE;
pub(crate) use report::{render, EncryptionFigures};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_dns::{Observer, ResponseCode, Source};
use mesh_netdev::reconcile::Report;

use histogram::{Histogram, HistogramSnapshot};

/// Bounds of the DNS latency buckets, in seconds: names mesh holds are
/// answered in tens of microseconds, forwarded ones in milliseconds.
const DNS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Bounds of the convergence lag buckets, in seconds.
const LAG_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Everything the agent counts itself.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// The reconciler's passes.
    pub(crate) dataplane: DataplaneMetrics,
    /// DNS answers.
    pub(crate) dns: DnsMetrics,
}

/// The reconciler's passes and what they changed.
#[derive(Debug)]
pub(crate) struct DataplaneMetrics {
    runs: AtomicU64,
    errors: AtomicU64,
    set: AtomicU64,
    removed: AtomicU64,
    remote_endpoints: AtomicU64,
    lag: Histogram,
}

impl Default for DataplaneMetrics {
    fn default() -> Self {
        Self {
            runs: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            set: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            remote_endpoints: AtomicU64::new(0),
            lag: Histogram::new(LAG_BUCKETS),
        }
    }
}

impl DataplaneMetrics {
    /// Counts a pass that ran (its report) or could not (`None`), meant to
    /// program `remotes` endpoints of other hosts.
    pub(crate) fn pass(&self, report: Option<&Report>, remotes: usize) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        match report {
            Some(report) => {
                self.errors.fetch_add(as_count(report.errors.len()), Ordering::Relaxed);
                self.set.fetch_add(as_count(report.set), Ordering::Relaxed);
                self.removed.fetch_add(as_count(report.removed), Ordering::Relaxed);
                if report.errors.is_empty() {
                    self.remote_endpoints.store(as_count(remotes), Ordering::Relaxed);
                }
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts an endpoint of another host that reached this host's kernel
    /// `lag` after its host created it.
    pub(crate) fn converged(&self, lag: Duration) {
        self.lag.observe(lag);
    }
}

/// Results a DNS answer is counted under.
const DNS_RESULTS: [&str; 7] = ["noerror", "nxdomain", "servfail", "formerr", "refused", "other", "dropped"];
/// Sources a DNS answer is counted under.
const DNS_SOURCES: [&str; 2] = ["mesh", "upstream"];

/// Shards of the DNS counters.
const DNS_SHARDS: usize = 8;

/// DNS answers by source and result, and their latency by source. Each
/// thread counts in its own shard: one set of counters shared by the
/// resolver's threads cost 5-8 % of the saturated query rate (dnsperf,
/// alternating runs), its cache lines bouncing between cores.
#[derive(Debug)]
pub(crate) struct DnsMetrics {
    shards: Vec<DnsShard>,
}

/// One thread's DNS counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct DnsShard {
    answers: [[AtomicU64; DNS_RESULTS.len()]; DNS_SOURCES.len()],
    latency: [Histogram; DNS_SOURCES.len()],
}

impl Default for DnsMetrics {
    fn default() -> Self {
        let shard = || DnsShard {
            answers: Default::default(),
            latency: [Histogram::new(DNS_BUCKETS), Histogram::new(DNS_BUCKETS)],
        };
        Self { shards: (0..DNS_SHARDS).map(|_| shard()).collect() }
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The shard this thread counts in.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % DNS_SHARDS;
}

impl Observer for Metrics {
    fn answered(&self, source: Source, code: Option<ResponseCode>, elapsed: Duration) {
        self.dns.answered(source, code, elapsed);
    }
}

impl DnsMetrics {
    /// Counts a DNS packet handled (see [`Observer::answered`]).
    fn answered(&self, source: Source, code: Option<ResponseCode>, elapsed: Duration) {
        let source = match source {
            Source::Mesh => 0,
            Source::Upstream => 1,
        };
        let result = match code {
            Some(ResponseCode::NoError) => 0,
            Some(ResponseCode::NXDomain) => 1,
            Some(ResponseCode::ServFail) => 2,
            Some(ResponseCode::FormErr) => 3,
            Some(ResponseCode::Refused) => 4,
            Some(_) => 5,
            None => 6,
        };
        let shard = &self.shards[SHARD.with(|shard| *shard)];
        shard.answers[source][result].fetch_add(1, Ordering::Relaxed);
        if code.is_some() {
            shard.latency[source].observe(elapsed);
        }
    }

    /// Answers of `source` (an index of [`DNS_SOURCES`]) with `result`
    /// (an index of [`DNS_RESULTS`]), over every shard.
    fn answers(&self, source: usize, result: usize) -> u64 {
        self.shards.iter().map(|shard| shard.answers[source][result].load(Ordering::Relaxed)).sum()
    }

    /// The latency of `source`'s answers, over every shard.
    fn latency(&self, source: usize) -> HistogramSnapshot {
        let mut shards = self.shards.iter().map(|shard| shard.latency[source].snapshot());
        let first = shards.next().unwrap_or_else(|| Histogram::new(DNS_BUCKETS).snapshot());
        shards.fold(first, HistogramSnapshot::plus)
    }
}

fn as_count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
