//! Many remote endpoints through the real agents: host 2's agent restarts
//! holding N endpoints of its own (written into its data dir while it was
//! stopped, as if it had published them before a restart, with no
//! sandboxes to build on host 2), they reach host 1 by sync, and host 1's
//! agent programs them. The figure is the time from host 1's view holding
//! all of them to its kernel holding all of them, watched from outside
//! (the control API's long poll and netlink dumps of the VXLAN device).
//! Then the agent's CPU in steady state, with N entries to keep, beside
//! the same agent holding one.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_netdev::{kernel, netns, reconcile::vxlan_name};
use serde_json::Value as Json;

use super::injected;
use crate::lab::Lab;
use crate::{api, procfs};

/// The network's VNI (not the one the direct measurement used).
const VNI: u32 = 9998;
/// The first injected address; the network is 10.64.0.0/16.
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 10);
/// How long the agent's CPU is sampled in each steady state.
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// How long after the entries are in the steady state starts: the agent
/// checks the seals of records merged from their writer in the background
/// (about 0.4 s of CPU for 10,000, in turns 5 ms apart).
const SETTLE: Duration = Duration::from_secs(3);
/// How often host 1's kernel tables are dumped while they fill (a dump
/// holds the kernel's rtnl lock, which the agent's writes need too).
const POLL: Duration = Duration::from_millis(20);
/// Generous bound on each wait (not a performance claim).
const LIMIT: Duration = Duration::from_secs(120);

/// What the agents showed.
pub(super) struct Figures {
    /// From the first injected endpoint in host 1's view to all in its kernel.
    pub(super) first_to_kernel: Duration,
    /// From all of them in host 1's view to all in its kernel.
    pub(super) view_to_kernel: Duration,
    /// Host 1's agent CPU per second with one remote endpoint.
    pub(super) cpu_one: Duration,
    /// Host 1's agent CPU per second with all of them.
    pub(super) cpu_all: Duration,
}

/// Runs the measurement on hosts 1 and 2 of `lab` (agents not started).
pub(super) fn measure(lab: &mut Lab, count: usize) -> anyhow::Result<Figures> {
    lab.form_cluster()?;
    lab.wait_for("both alive", LIMIT, |lab| {
        Ok(lab.members_api(1)?.iter().filter(|m| m.status == "alive").count() == 2)
    })?;
    lab.mesh_ok(1, &["network", "create", "bench", "--subnet", "10.64.0.0/16", "--vni", &VNI.to_string()])?;
    lab.wait_for("bench on h2", LIMIT, |lab| Ok(lab.mesh(2, &["network", "inspect", "bench"])?.success))?;
    lab.mesh_ok(1, &["sandbox", "create", "app", "--network", "bench", "--ip", "10.64.255.251"])?;
    lab.mesh_ok(2, &["sandbox", "create", "seed", "--network", "bench", "--ip", "10.64.255.250"])?;
    let host = PathBuf::from(format!("/run/netns/{}", lab.netns(1)));
    wait_kernel(&host, 1)?;
    let pid = lab.agent_pid(1).context("h1's agent")?;
    let cpu_one = cpu_per_second(pid)?;

    lab.terminate(2)?;
    injected::add(lab, 2, FIRST, count)?;
    let socket = lab.socket(1);
    let (_, generation) = active_endpoints(&socket, 0, Duration::ZERO)?;
    let kernel = std::thread::spawn(move || wait_kernel(&host, count + 1));
    lab.start_agent(2, &[])?;
    let (mut first, mut generation) = (None, generation);
    let all = loop {
        let (active, next) = active_endpoints(&socket, generation, LIMIT)?;
        generation = next;
        let now = Instant::now();
        if active > 2 {
            first.get_or_insert(now);
        }
        if active == count + 2 {
            break now;
        }
    };
    let done = kernel.join().map_err(|_| anyhow::anyhow!("the kernel watcher panicked"))??;
    let first = first.unwrap_or(all);
    std::thread::sleep(SETTLE);
    let cpu_all = cpu_per_second(pid)?;
    Ok(Figures {
        first_to_kernel: done.saturating_duration_since(first),
        view_to_kernel: done.saturating_duration_since(all),
        cpu_one,
        cpu_all,
    })
}

/// Host 1's count of active endpoints on `bench` once its view's
/// generation passes `after` (or `wait` runs out), and that generation.
pub(super) fn active_endpoints(socket: &std::path::Path, after: u64, wait: Duration) -> anyhow::Result<(usize, u64)> {
    let path = format!("/v1/changes?after={after}&network=bench&timeout_ms={}", wait.as_millis());
    let body: Json = serde_json::from_str(&api::get_waiting(socket, &path, wait)?)?;
    let active = body["endpoints"].as_array().map_or(0, Vec::len);
    Ok((active, body["generation"].as_u64().context("generation")?))
}

/// Waits until host 1's VXLAN device holds `count` FDB and neighbour
/// entries; returns when it first did.
fn wait_kernel(host: &std::path::Path, count: usize) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + LIMIT;
    let done = netns::netlink_in(host, move |handle| async move {
        loop {
            let links = kernel::links(&handle).await?;
            if let Some(device) = links.get(&vxlan_name(VNI)) {
                let fdb = kernel::fdb(&handle, device.index).await?.len();
                let neighbours = kernel::neighbours(&handle, device.index).await?.len();
                if fdb >= count && neighbours >= count {
                    return Ok(Some(Instant::now()));
                }
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    })?;
    done.with_context(|| format!("h1's kernel did not hold {count} entries within {LIMIT:?}"))
}

/// CPU time process `pid` uses per second over [`CPU_WINDOW`].
fn cpu_per_second(pid: u32) -> anyhow::Result<Duration> {
    let before = procfs::cpu_time(pid)?;
    std::thread::sleep(CPU_WINDOW);
    Ok((procfs::cpu_time(pid)? - before).div_f64(CPU_WINDOW.as_secs_f64()))
}
