//! Traffic between two namespaces of a lab, for the throughput benchmarks
//! ([`super::overlay`], [`super::encrypted`]): iperf3 TCP from a client
//! namespace on h1 to a server namespace on h2, and ping's round trip the
//! same way. Each serving namespace gets one iperf3 server for the whole
//! benchmark ([`serve`]), which serves the runs one after another.

use std::time::Duration;

use anyhow::{bail, Context};

use super::median;
use crate::lab::Lab;
use crate::process::Output;

/// iperf3's port.
const PORT: &str = "5201";

/// How long iperf3 servers are given to listen.
const LISTEN: Duration = Duration::from_secs(10);

/// One way across: from a namespace on h1 to an address served from a
/// namespace on h2.
#[derive(Debug, Clone)]
pub(super) struct Path {
    /// The client's namespace, on h1.
    pub(super) client: String,
    /// The server's namespace, on h2.
    pub(super) server: String,
    /// The address the client reaches the server at.
    pub(super) address: String,
}

impl Path {
    /// From h1's namespace to h2's, at `address`.
    pub(super) fn hosts(lab: &Lab, address: &str) -> Self {
        Self { client: lab.netns(1).to_owned(), server: lab.netns(2).to_owned(), address: address.to_owned() }
    }

    /// From sandbox (or namespace of that suffix) `client` of h1 to
    /// `server` of h2, at `address`.
    pub(super) fn sandboxes(lab: &Lab, client: &str, server: &str, address: &str) -> Self {
        Self { client: lab.sandbox_netns(1, client), server: lab.sandbox_netns(2, server), address: address.to_owned() }
    }
}

/// Starts an iperf3 server in each distinct server namespace of `paths`
/// (killed with the lab's other spawned processes) and waits until each
/// listens.
pub(super) fn serve(lab: &mut Lab, paths: &[&Path]) -> anyhow::Result<()> {
    let mut namespaces: Vec<&str> = paths.iter().map(|p| p.server.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for (k, netns) in namespaces.iter().enumerate() {
        lab.spawn_in(2, netns, &format!("iperf3-server-{k}"), "iperf3", &["-s", "-p", PORT])?;
    }
    for netns in namespaces {
        lab.wait_for(&format!("iperf3 listening in {netns}"), LISTEN, |lab| {
            let listening = lab.exec_in(netns, "ss", &["-Hltn", &format!("sport = :{PORT}")])?;
            Ok(listening.stdout.contains(PORT))
        })?;
    }
    Ok(())
}

/// iperf3 TCP with `streams` parallel streams for `seconds` along `path`
/// (its server started by [`serve`]): the received throughput, Gbit/s.
pub(super) fn throughput(lab: &Lab, path: &Path, seconds: u32, streams: u32) -> anyhow::Result<f64> {
    let (time, parallel) = (seconds.to_string(), streams.to_string());
    let args = ["-c", &path.address, "-p", PORT, "-t", &time, "-P", &parallel, "-J"];
    let out = lab.exec_in(&path.client, "iperf3", &args)?;
    if !out.success {
        bail!("iperf3 to {}: {} {}", path.address, out.stderr.trim(), error_of(&out.stdout));
    }
    let report: serde_json::Value = serde_json::from_str(&out.stdout).context("iperf3 JSON")?;
    let bits = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 reported no throughput")?;
    Ok(bits / 1e9)
}

/// The `error` field of iperf3's JSON, if any.
fn error_of(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|report| report["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The median round trip of `count` pings along `path`, 20 ms apart, in
/// ms; fails if none came back.
pub(super) fn rtt_ms(lab: &Lab, path: &Path, count: u32) -> anyhow::Result<f64> {
    let out = lab.exec_in(&path.client, "ping", &["-n", "-c", &count.to_string(), "-i", "0.02", &path.address])?;
    let mut times = round_trips(&out.stdout);
    if times.is_empty() {
        bail!("no ping to {} came back: {}", path.address, out.stderr.trim());
    }
    Ok(median(&mut times))
}

/// The `time=` of each of ping's answer lines, in ms.
fn round_trips(ping: &str) -> Vec<f64> {
    ping.lines().filter_map(|line| line.split_once("time=")?.1.split_whitespace().next()?.parse().ok()).collect()
}

/// Runs `program args` in the machine's own namespace (a `run` for
/// [`checked`]).
pub(super) fn on_machine(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    crate::process::run(program, args)
}

/// Runs `program args` through `run`, failing with its error output.
pub(super) fn checked(
    program: &str,
    args: &[&str],
    run: impl Fn(&str, &[&str]) -> anyhow::Result<Output>,
) -> anyhow::Result<()> {
    let out = run(program, args)?;
    if !out.success {
        bail!("{program} {}: {}", args.join(" "), out.stderr.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_are_read_from_the_answer_lines() {
        let ping = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
                    64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.061 ms\n\
                    64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=1.25 ms\n\
                    \n--- 10.0.0.2 ping statistics ---\n\
                    rtt min/avg/max/mdev = 0.061/0.655/1.250/0.594 ms\n";
        assert_eq!(super::round_trips(ping), vec![0.061, 1.25]);
    }
}
