//! The membership benchmark (join, failure detection, memory, idle CPU and
//! idle traffic): mesh beside HashiCorp Serf on the same lab, in
//! the same run. Figures, not assertions: the machine is shared and noisy.
//!
//! Every host is watched by its own thread, polling its own view, so a
//! figure is "the moment the last host saw it", not the polling loop's pace.
//! mesh is watched through its control socket, Serf through its RPC, one
//! session per host.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::median;
use super::report::{Better, Figure};
use super::systems::{serf_installed, Mesh, Serf, System};
use crate::lab::Lab;
use crate::procfs;

/// What one system measured.
#[derive(Debug, Default)]
struct Figures {
    /// `None`: not every host got there within [`WAIT_LIMIT`].
    join_convergence: Option<Duration>,
    /// `None`: not every host got there within [`WAIT_LIMIT`].
    cut_detection: Option<Duration>,
    rss_mib: f64,
    private_mib: f64,
    idle_cpu_percent: f64,
    /// Underlay bytes each agent sends per second when nothing changes.
    idle_bytes_per_second: f64,
}

/// Runs the membership benchmark on `hosts` hosts: mesh's figures beside
/// Serf's (when `with_serf` and `serf` is installed).
pub fn run(hosts: usize, with_serf: bool, idle: Idle) -> anyhow::Result<Vec<Figure>> {
    if hosts < 3 {
        bail!("the benchmark needs at least 3 hosts");
    }
    let mut lab = Lab::new(hosts)?;
    println!("membership benchmark on {hosts} lab hosts");
    let mesh = measure(&Mesh, &mut lab, idle)?;
    let serf = if with_serf {
        if serf_installed() {
            Some(measure(&Serf::default(), &mut lab, idle)?)
        } else {
            println!("serf is not installed (apt-get install serf): no baseline");
            None
        }
    } else {
        None
    };
    Ok(figures(hosts, &mesh, serf.as_ref()))
}

fn measure(system: &dyn System, lab: &mut Lab, idle: Idle) -> anyhow::Result<Figures> {
    let n = lab.len();
    println!("-- {}: starting {n} agents", system.name());
    system.start(lab)?;
    let lab_ref: &Lab = lab;
    // Join every host concurrently, as VM images booting together would.
    let joined = std::thread::scope(|scope| {
        let joins: Vec<_> = (2..=n).map(|i| scope.spawn(move || system.join(lab_ref, i))).collect();
        joins.into_iter().try_for_each(|j| j.join().map_err(|_| anyhow::anyhow!("join thread panicked"))?)
    });
    joined?;
    let join_convergence = reported(
        &format!("every host lists {n} alive, after the last join returned"),
        last_seen(lab_ref, 1..=n, WAIT_LIMIT, |lab, i| {
            Ok(system.view(lab, i)?.iter().filter(|(_, s)| s == "alive").count() == n)
        }),
    );

    std::thread::sleep(idle.settle);
    let pids: Vec<u32> = (1..=n).filter_map(|i| system.pid(lab_ref, i)).collect();
    let sent = |lab: &Lab| (1..=n).map(|i| lab.underlay_sent_bytes(i)).collect::<anyhow::Result<Vec<u64>>>();
    let cpu_before: Vec<Duration> = pids.iter().map(|&p| procfs::cpu_time(p)).collect::<Result<_, _>>()?;
    let sent_before = sent(lab_ref)?;
    std::thread::sleep(idle.window);
    let sent_after = sent(lab_ref)?;
    let cpu_after: Vec<Duration> = pids.iter().map(|&p| procfs::cpu_time(p)).collect::<Result<_, _>>()?;
    let mut bytes: Vec<f64> = sent_before
        .iter()
        .zip(&sent_after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / idle.window.as_secs_f64())
        .collect();
    let mut cpu: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| (*a - *b).as_secs_f64() / idle.window.as_secs_f64() * 100.0)
        .collect();
    let mib_of_each = |kib: fn(u32) -> anyhow::Result<u64>| -> anyhow::Result<Vec<f64>> {
        pids.iter().map(|&p| kib(p).map(|k| k as f64 / 1024.0)).collect()
    };
    let (mut rss, mut private) = (mib_of_each(procfs::rss_kib)?, mib_of_each(procfs::private_kib)?);
    let (idle_cpu_percent, rss_mib, private_mib) = (median(&mut cpu), median(&mut rss), median(&mut private));
    let idle_bytes_per_second = median(&mut bytes);
    println!(
        "   idle, per agent (median): {idle_cpu_percent:.2} % CPU, {rss_mib:.1} MiB resident, {private_mib:.1} MiB private, {idle_bytes_per_second:.0} B/s sent"
    );

    // One cut is one draw of when the first probe of the victim happens:
    // the figure is the median of a few, the last hosts cut one after
    // another (each stays cut, so no reconnection is waited for).
    let cuts = cuts_for(n);
    let mut detections = Vec::new();
    for victim in (n + 1 - cuts..=n).rev() {
        let name = format!("h{victim}");
        lab_ref.cut(victim, true)?;
        let detected = last_seen(lab_ref, 1..=victim - 1, WAIT_LIMIT, |lab, i| {
            Ok(system.view(lab, i)?.iter().any(|(member, s)| *member == name && s == system.down_word()))
        });
        let what = format!("cut host {name} declared {} on every other host", system.down_word());
        detections.extend(reported(&what, detected).map(|d| d.as_secs_f64()));
    }
    for victim in n + 1 - cuts..=n {
        lab_ref.cut(victim, false)?;
    }
    let cut_detection =
        (cuts > 0 && detections.len() == cuts).then(|| Duration::from_secs_f64(median(&mut detections)));
    system.stop(lab)?;
    Ok(Figures { join_convergence, cut_detection, rss_mib, private_mib, idle_cpu_percent, idle_bytes_per_second })
}

/// When and for how long the idle figures (CPU, memory, bytes sent) are
/// measured.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// From the last join to the start of the window.
    pub settle: Duration,
    /// The window the figures are averaged over.
    pub window: Duration,
}

impl Idle {
    /// The steady state on `hosts` hosts, as quoted: the window starts once
    /// every agent has probed every other (SWIM probes one member a
    /// second; mesh's first contact with a peer is a QUIC handshake
    /// carrying certificates, about 5 KB on the wire, which on 50 hosts
    /// made the first minute cost several times the steady state) and
    /// lasts 20 s.
    pub fn steady(hosts: usize) -> Self {
        let settle = Duration::from_secs(2 * u64::try_from(hosts).unwrap_or(u64::MAX)).max(Duration::from_secs(10));
        Self { settle, window: Duration::from_secs(20) }
    }

    /// A smoke check's (the quick suite): the figures exist, noisier and
    /// partly from the joins.
    pub fn brief() -> Self {
        Self { settle: Duration::from_secs(2), window: Duration::from_secs(5) }
    }
}

/// Hosts cut, one after another, for the failure detection figure: five
/// (with three, the median swung by a second from run to run), at most
/// half of them.
fn cuts_for(hosts: usize) -> usize {
    (hosts / 2).min(5)
}

/// How long a figure is waited for before it is reported as not reached.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Prints a timed figure, or why it was not reached, and returns it.
fn reported(what: &str, measured: anyhow::Result<Duration>) -> Option<Duration> {
    match measured {
        Ok(took) => {
            println!("   {what}: {:.3} s", took.as_secs_f64());
            Some(took)
        }
        Err(error) => {
            println!("   {what}: not reached ({error:#})");
            None
        }
    }
}

/// How often a watcher looks at its host's view: the same for every system,
/// so both figures carry the same granularity, and slower on bigger labs so
/// that the watching (N watchers on 2 cores) does not starve the agents.
fn poll_every(hosts: usize) -> Duration {
    Duration::from_micros(2500 * u64::try_from(hosts).unwrap_or(u64::MAX)).max(Duration::from_millis(25))
}

/// Watches each host in `hosts` on its own thread until `check` holds
/// there; returns when the last one saw it, measured from the call.
fn last_seen(
    lab: &Lab,
    hosts: std::ops::RangeInclusive<usize>,
    timeout: Duration,
    check: impl Fn(&Lab, usize) -> anyhow::Result<bool> + Sync,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let pause = poll_every(lab.len());
    std::thread::scope(|scope| {
        let watchers: Vec<_> = hosts
            .map(|i| {
                let check = &check;
                scope.spawn(move || {
                    while start.elapsed() < timeout {
                        if check(lab, i).unwrap_or(false) {
                            return Ok(start.elapsed());
                        }
                        std::thread::sleep(pause);
                    }
                    bail!("h{i} did not get there within {timeout:?}")
                })
            })
            .collect();
        let mut latest = Duration::ZERO;
        for watcher in watchers {
            let seen = watcher.join().map_err(|_| anyhow::anyhow!("watcher panicked"))??;
            latest = latest.max(seen);
        }
        Ok(latest)
    })
}

impl Figures {
    /// Each figure with its label and unit, in report order; `None` if not reached.
    fn rows(&self, hosts: usize) -> [(String, &'static str, Option<f64>); 6] {
        let cut = format!("cut host declared down everywhere, median of {} hosts cut in turn", cuts_for(hosts));
        [
            (
                "join convergence after the last join".into(),
                "ms",
                self.join_convergence.map(|d| d.as_secs_f64() * 1000.0),
            ),
            (cut, "s", self.cut_detection.map(|d| d.as_secs_f64())),
            ("resident memory per agent".into(), "MiB", Some(self.rss_mib)),
            ("private memory per agent (not shared with the other agents)".into(), "MiB", Some(self.private_mib)),
            ("idle CPU per agent".into(), "%", Some(self.idle_cpu_percent)),
            ("idle gossip sent per agent".into(), "B/s", Some(self.idle_bytes_per_second)),
        ]
    }
}

/// mesh's figures, beside Serf's if it ran.
fn figures(hosts: usize, mesh: &Figures, serf: Option<&Figures>) -> Vec<Figure> {
    let serf_rows = serf.map(|serf| serf.rows(hosts));
    mesh.rows(hosts)
        .into_iter()
        .enumerate()
        .map(|(row, (label, unit, value))| {
            let figure = Figure::new("membership", format!("{label}, {hosts} hosts"), unit, Better::Lower, value);
            match serf_rows {
                Some(ref rows) => figure.against("serf", rows[row].2).aiming("below serf"),
                None => figure,
            }
        })
        .collect()
}
