//! How fast a change reaches every host: `mesh sandbox create` returning
//! on one host until every other host's view holds the sandbox, beside a
//! Serf user event (`serf event` returning until every other host's event
//! handler ran) on the same lab, in the same run.
//!
//! mesh hosts are watched through a long poll on their control socket
//! (`/v1/changes`), which answers as the view changes: a host's time is
//! when its answer holding the sandbox arrived. Serf's handler is a shell
//! script stamping the wall clock, which adds a fork per event on Serf's
//! side; its start is taken after the `serf event` process returns, which
//! favours Serf by that process's exit time. A host may hold a change
//! before the command returns (the agent answers after saving its records
//! to disk): that counts as 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::report::{Better, Figure};
use super::systems::{serf_installed, Mesh, Serf, System, SERF_RPC};
use super::{median, percentile};
use crate::api;
use crate::lab::Lab;

/// Pause between two changes, so each is measured on a quiet cluster.
const PAUSE: Duration = Duration::from_millis(30);
/// How long the last change may take to arrive everywhere.
const SETTLE: Duration = Duration::from_secs(20);

/// Delays of one system, in milliseconds.
struct Delays {
    /// Every (change, other host) pair, from the command returning.
    per_host: Vec<f64>,
    /// Per change, the last other host to get it, from the command returning.
    per_change: Vec<f64>,
    /// Per change, the last other host to get it, from the command starting.
    per_change_from_start: Vec<f64>,
    /// (change, host) pairs that never arrived.
    missing: usize,
}

/// When a change was made: the host, when the command started, when it returned.
type Start<T> = (usize, T, T);

/// Runs the benchmark on `hosts` hosts with `changes` changes.
pub fn run(hosts: usize, changes: usize, with_serf: bool) -> anyhow::Result<Vec<Figure>> {
    if hosts < 2 || changes == 0 {
        bail!("the benchmark needs at least 2 hosts and 1 change");
    }
    let mut lab = Lab::new(hosts)?;
    println!("change propagation on {hosts} lab hosts, {changes} changes");
    let mesh = measure_mesh(&mut lab, changes)?;
    let serf = if with_serf && serf_installed() {
        Some(measure_serf(&mut lab, changes)?)
    } else {
        println!("no Serf baseline (not asked for, or serf is not installed)");
        None
    };
    Ok(figures(hosts, &mesh, serf.as_ref()))
}

fn measure_mesh(lab: &mut Lab, changes: usize) -> anyhow::Result<Delays> {
    let n = lab.len();
    println!("-- mesh: forming the cluster");
    Mesh.start(lab)?;
    for i in 2..=n {
        Mesh.join(lab, i)?;
    }
    lab.wait_for("every host alive", Duration::from_secs(60), |lab| {
        (1..=n).try_fold(true, |ok, i| Ok(ok && Mesh.view(lab, i)?.iter().all(|(_, s)| s == "alive")))
    })?;
    lab.mesh_ok(1, &["network", "create", "bench"])?;
    lab.wait_for("the network everywhere", Duration::from_secs(30), |lab| {
        (1..=n).try_fold(true, |ok, i| Ok(ok && lab.mesh(i, &["network", "inspect", "bench"])?.success))
    })?;

    let seen: Vec<Mutex<HashMap<String, Instant>>> = (0..n).map(|_| Mutex::new(HashMap::new())).collect();
    let stop = AtomicBool::new(false);
    let lab: &Lab = lab;
    let starts = std::thread::scope(|scope| -> anyhow::Result<Vec<Start<Instant>>> {
        for i in 1..=n {
            let (seen, stop) = (&seen[i - 1], &stop);
            scope.spawn(move || watch_mesh(&lab.socket(i), seen, stop));
        }
        std::thread::sleep(Duration::from_millis(200));
        let made = make_sandboxes(lab, changes);
        let deadline = Instant::now() + SETTLE;
        while made.is_ok() && Instant::now() < deadline && !all_seen(&seen, changes) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The watchers stop whatever happened, or the scope never ends.
        stop.store(true, Ordering::Relaxed);
        made
    })?;
    let arrivals: Vec<HashMap<String, Instant>> =
        seen.into_iter().map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)).collect();
    Ok(delays(
        &starts,
        |host, k| arrivals[host - 1].get(&format!("c{k}")).copied(),
        |at, start| at.saturating_duration_since(start).as_secs_f64() * 1000.0,
    ))
}

/// Creates sandboxes `c0`... on the hosts in turn, [`PAUSE`] apart; returns
/// each one's host and when its command started and returned.
fn make_sandboxes(lab: &Lab, changes: usize) -> anyhow::Result<Vec<Start<Instant>>> {
    let n = lab.len();
    let mut starts = Vec::new();
    for k in 0..changes {
        let origin = k % n + 1;
        let body = format!(r#"{{"name":"c{k}","networks":["bench"],"aliases":["svc"]}}"#);
        let sent = Instant::now();
        let posted = api::post(&lab.socket(origin), "/v1/sandboxes", &body);
        starts.push((origin, sent, Instant::now()));
        posted.with_context(|| format!("sandbox c{k} on h{origin}"))?;
        std::thread::sleep(PAUSE);
    }
    Ok(starts)
}

/// Long-polls one host's view, noting when each endpoint first appears.
fn watch_mesh(socket: &Path, seen: &Mutex<HashMap<String, Instant>>, stop: &AtomicBool) {
    let mut generation = 0;
    while !stop.load(Ordering::Relaxed) {
        let path = format!("/v1/changes?after={generation}&network=bench&timeout_ms=500");
        let Ok(body) = api::get_waiting(socket, &path, Duration::from_millis(500)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let now = Instant::now();
        let Ok(answer) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        generation = answer["generation"].as_u64().unwrap_or(generation);
        let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in answer["endpoints"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
            seen.entry(name.to_owned()).or_insert(now);
        }
    }
}

fn all_seen(seen: &[Mutex<HashMap<String, Instant>>], changes: usize) -> bool {
    seen.iter().all(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() >= changes)
}

fn measure_serf(lab: &mut Lab, changes: usize) -> anyhow::Result<Delays> {
    let n = lab.len();
    let dir = tempfile::Builder::new().prefix("mesh-bench-serf-").tempdir()?;
    let handler = dir.path().join("handler.sh");
    std::fs::write(&handler, "#!/bin/sh\necho \"$SERF_USER_EVENT $(date +%s%N)\" >> \"$1\"\n")?;
    std::fs::set_permissions(&handler, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let log = |i: usize| dir.path().join(format!("h{i}.events"));
    println!("-- serf: forming the cluster");
    lab.kill_spawned();
    for i in 1..=n {
        lab.kill(i)?;
    }
    // Each host's handler writes to its own file; the flag is per host.
    for i in 1..=n {
        let serf =
            Serf::with_flags(vec![format!("-event-handler=user:bench={} {}", handler.display(), log(i).display())]);
        serf.start_one(lab, i)?;
    }
    let serf = Serf::default();
    for i in 2..=n {
        serf.join(lab, i)?;
    }
    lab.wait_for("every serf host alive", Duration::from_secs(60), |lab| {
        (1..=n).try_fold(true, |ok, i| {
            let view = serf.view(lab, i)?;
            Ok(ok && view.len() == n && view.iter().all(|(_, s)| s == "alive"))
        })
    })?;
    let mut starts = Vec::new();
    for k in 0..changes {
        let origin = k % n + 1;
        let sent = SystemTime::now();
        let out = lab.exec(origin, "serf", &["event", SERF_RPC, "-coalesce=false", "bench", &format!("c{k}")])?;
        starts.push((origin, sent, SystemTime::now()));
        if !out.success {
            bail!("serf event on h{origin}: {}", out.stderr.trim());
        }
        std::thread::sleep(PAUSE);
    }
    std::thread::sleep(Duration::from_secs(3));
    let arrivals: Vec<HashMap<usize, SystemTime>> = (1..=n).map(|i| serf_arrivals(&log(i))).collect();
    lab.kill_spawned();
    // The payload is the change's index; only the event name is in the
    // variable, so arrivals are matched by order of the handler's lines.
    Ok(delays(
        &starts,
        |host, k| arrivals[host - 1].get(&k).copied(),
        |at, start| at.duration_since(start).unwrap_or_default().as_secs_f64() * 1000.0,
    ))
}

/// When each of a host's handler runs happened, by event order.
fn serf_arrivals(path: &PathBuf) -> HashMap<usize, SystemTime> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .enumerate()
        .map(|(k, nanos)| (k, UNIX_EPOCH + Duration::from_nanos(nanos)))
        .collect()
}

/// Delays of every change at every host but its origin.
fn delays<T: Copy>(
    starts: &[Start<T>],
    arrival: impl Fn(usize, usize) -> Option<T>,
    millis: impl Fn(T, T) -> f64,
) -> Delays {
    let hosts = starts.iter().map(|(origin, ..)| *origin).max().unwrap_or(0);
    let mut result =
        Delays { per_host: Vec::new(), per_change: Vec::new(), per_change_from_start: Vec::new(), missing: 0 };
    for (k, &(origin, sent, returned)) in starts.iter().enumerate() {
        let (mut last, mut last_from_start): (f64, f64) = (0.0, 0.0);
        for host in (1..=hosts).filter(|&h| h != origin) {
            match arrival(host, k) {
                Some(at) => {
                    let ms = millis(at, returned);
                    result.per_host.push(ms);
                    last = last.max(ms);
                    last_from_start = last_from_start.max(millis(at, sent));
                }
                None => result.missing += 1,
            }
        }
        result.per_change.push(last);
        result.per_change_from_start.push(last_from_start);
    }
    result
}

/// mesh's delays beside a Serf user event's, if it ran.
fn figures(hosts: usize, mesh: &Delays, serf: Option<&Delays>) -> Vec<Figure> {
    let values = |d: &Delays| {
        let (mut host, mut change) = (d.per_host.clone(), d.per_change.clone());
        let mut from_start = d.per_change_from_start.clone();
        [
            median(&mut host),
            percentile(&mut host, 99.0),
            median(&mut change),
            percentile(&mut change, 99.0),
            median(&mut from_start),
            percentile(&mut from_start, 99.0),
            d.missing as f64,
        ]
    };
    let changes = mesh.per_change.len();
    let labels = [
        ("a host holds the change after the command returned, median", "ms", None),
        ("a host holds the change after the command returned, p99", "ms", None),
        ("every host holds it after the command returned, median", "ms", Some("under 10 ms at 20 hosts")),
        ("every host holds it after the command returned, p99", "ms", None),
        ("every host holds it after the command started, median", "ms", None),
        ("every host holds it after the command started, p99", "ms", None),
        ("(change, host) pairs never reached", "pairs", Some("0")),
    ];
    let (m, s) = (values(mesh), serf.map(values));
    labels
        .iter()
        .enumerate()
        .map(|(row, (label, unit, aim))| {
            let name = format!("{label}, {hosts} hosts, {changes} changes");
            let mut figure = Figure::new("records", name, unit, Better::Lower, Some(m[row]));
            if let Some(s) = s {
                figure = figure.against("serf user event", Some(s[row]));
            }
            match aim {
                Some(aim) => figure.aiming(aim),
                None => figure,
            }
        })
        .collect()
}
