//! The whole suite (`mesh-bench`): every benchmark in turn, each figure
//! beside its baseline from the same run, written as `results.json`, a
//! Markdown report and a PNG plot. `--quick` runs each at a small size (a
//! smoke check: each figure is produced); the full run is the one whose
//! figures are quoted.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::encrypted::EncryptedBench;
use super::membership::Idle;
use super::report::{Figure, Machine, Report};
use super::{dns, docker, encrypted, entries, membership, overlay, plot, records, sim, verdicts};

/// The simulator's seed (written in the report).
const SEED: u64 = 1;

/// One benchmark at one size.
struct Step {
    bench: &'static str,
    conditions: String,
    run: Box<dyn Fn() -> anyhow::Result<Vec<Figure>>>,
}

fn step(bench: &'static str, conditions: String, run: impl Fn() -> anyhow::Result<Vec<Figure>> + 'static) -> Step {
    Step { bench, conditions, run: Box::new(run) }
}

/// The steps of a quick or a full run.
fn steps(quick: bool) -> Vec<Step> {
    let sim_bench = |nodes: usize, changes: usize| sim::SimBench {
        nodes,
        changes,
        loss: 0.01,
        latency: Duration::from_millis(1),
        seed: SEED,
    };
    if quick {
        return vec![
            step("membership", "5 hosts, 5 s idle, beside serf".into(), || membership::run(5, true, Idle::brief())),
            step("verdicts", "5 hosts, 15 s, 10 % loss, one freeze, beside serf".into(), || {
                verdicts::run(5, Duration::from_secs(15), 10)
            }),
            step("records", "5 hosts, 10 changes, beside a serf user event".into(), || records::run(5, 10, true)),
            step("docker", "2 hosts, 3 containers, beside swarm".into(), || docker::run(3)),
            step("sim", "200 nodes, 3 changes, beside memberlist's model".into(), move || sim::run(&sim_bench(200, 3))),
            step("dns", "200 names, 1 s, 5 creates, beside dnsmasq".into(), || dns::run(200, 1, 5)),
            step("entries", "1,000 remote endpoints, beside iproute2's batch".into(), || entries::run(1000)),
            step("overlay", "1 s per iperf3 run, beside a hand-built pair".into(), || overlay::run(1)),
            step("encrypted", "1 s per iperf3 run, 1 round, beside Nebula and wireguard-go".into(), || {
                encrypted::run(&EncryptedBench { seconds: 1, rounds: 1 })
            }),
        ];
    }
    vec![
        step("membership", "20 hosts, beside serf".into(), || membership::run(20, true, Idle::steady(20))),
        step("membership", "50 hosts, beside serf".into(), || membership::run(50, true, Idle::steady(50))),
        step("verdicts", "20 hosts, 10 min, 10 % loss, one agent frozen 5 s a minute, beside serf".into(), || {
            verdicts::run(20, Duration::from_secs(600), 10)
        }),
        step("records", "2 hosts, 100 changes, beside a serf user event".into(), || records::run(2, 100, true)),
        step("records", "20 hosts, 100 changes, beside a serf user event".into(), || records::run(20, 100, true)),
        step("records", "50 hosts, 100 changes, beside a serf user event".into(), || records::run(50, 100, true)),
        step("docker", "2 hosts, 20 containers, beside swarm".into(), || docker::run(20)),
        step("sim", "1,000 nodes (whole core), 10 changes".into(), move || sim::run(&sim_bench(1000, 10))),
        step("sim", "10,000 nodes (record layer), 10 changes".into(), move || sim::run(&sim_bench(10_000, 10))),
        step("dns", "1,000 names, 10 s, 50 creates, beside dnsmasq".into(), || dns::run(1000, 10, 50)),
        step("entries", "10,000 remote endpoints, beside iproute2's batch".into(), || entries::run(10_000)),
        step("overlay", "5 s per iperf3 run, beside a hand-built pair".into(), || overlay::run(5)),
        step("encrypted", "10 s per iperf3 run, 3 rounds, beside Nebula and wireguard-go".into(), || {
            encrypted::run(&EncryptedBench { seconds: 10, rounds: 3 })
        }),
    ]
}

/// Runs the suite and writes its report into `out`; returns the report.
pub fn run(quick: bool, out: &Path) -> anyhow::Result<Report> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let steps = steps(quick);
    let mut report = Report {
        started: utc_now(),
        quick,
        machine: Machine::this(),
        versions: versions(),
        seed: SEED,
        figures: Vec::new(),
        failures: Vec::new(),
    };
    let suite = Instant::now();
    for (k, step) in steps.iter().enumerate() {
        eprintln!(
            "[{}/{}] {}: {} (suite at {:.0} s)",
            k + 1,
            steps.len(),
            step.bench,
            step.conditions,
            suite.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        match (step.run)() {
            Ok(figures) => {
                eprintln!(
                    "[{}/{}] {}: {} figures in {:.0} s",
                    k + 1,
                    steps.len(),
                    step.bench,
                    figures.len(),
                    started.elapsed().as_secs_f64()
                );
                report.figures.extend(figures);
            }
            Err(error) => {
                eprintln!("[{}/{}] {} failed: {error:#}", k + 1, steps.len(), step.bench);
                report.failures.push((format!("{} ({})", step.bench, step.conditions), format!("{error:#}")));
            }
        }
        write(&report, out)?;
    }
    eprintln!("suite done in {:.0} s: {}", suite.elapsed().as_secs_f64(), out.display());
    Ok(report)
}

/// Writes the report of an earlier run's `results` again (after a change
/// to how reports look) into the same directory.
pub fn rewrite(results: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read(results).with_context(|| format!("cannot read {}", results.display()))?;
    let report: Report =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a suite's results", results.display()))?;
    write(&report, results.parent().unwrap_or(Path::new(".")))?;
    Ok(report)
}

/// Writes `results.json`, `report.md`, `summary.md` (for the README) and
/// `advantage.png` into `out`.
fn write(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("report.md"), report.markdown())?;
    std::fs::write(out.join("summary.md"), report.summary())?;
    plot::advantage(&report.figures, &out.join("advantage.png"))
}

/// The version of mesh and of each peer's Debian package.
fn versions() -> Vec<(String, String)> {
    let mut versions = vec![("mesh".to_owned(), env!("CARGO_PKG_VERSION").to_owned())];
    for package in
        ["serf", "docker.io", "dnsmasq-base", "dnsperf", "iperf3", "nebula", "wireguard-go", "wireguard-tools"]
    {
        let version = crate::process::run("dpkg-query", ["-W", "-f", "${Version}", package])
            .ok()
            .filter(|out| out.success)
            .map_or_else(|| "not installed".to_owned(), |out| out.stdout.trim().to_owned());
        versions.push((package.to_owned(), version));
    }
    versions
}

/// The current time, UTC, RFC 3339 to the second.
fn utc_now() -> String {
    crate::process::run("date", ["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .map_or_else(|_| "unknown".into(), |o| o.stdout.trim().to_owned())
}
