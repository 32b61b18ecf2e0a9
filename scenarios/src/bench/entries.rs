//! Programming many remote endpoints into one host: mesh's reconciler
//! (dump, diff, pipelined requests) taking a view of N remote endpoints
//! from nothing to the kernel, beside the same entries given to iproute2
//! in batch mode (`bridge -batch`, `ip -batch`), in the same run; and the
//! cost of a steady-state pass (dump and diff, nothing to change).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mesh_netdev::netns;
use mesh_netdev::reconcile::{vxlan_name, LocalPlan, Mode, NetworkPlan, Reconciler, Remote, Underlay};

use super::report::{Better, Figure};
use crate::lab::{host_ip, Lab};

/// The VNI the benchmark uses.
const VNI: u32 = 9999;

/// Measures with `count` remote endpoints.
pub fn run(count: usize) -> anyhow::Result<Vec<Figure>> {
    if count == 0 || count > 60_000 {
        bail!("give between 1 and 60000 endpoints");
    }
    let mut lab = Lab::new(2)?;
    println!("programming {count} remote endpoints (FDB + neighbour) into one lab host");
    let host = PathBuf::from(format!("/run/netns/{}", lab.netns(1)));
    let sandbox = lab.sandbox_netns(1, "local");
    let remotes: Vec<Remote> = (0..count).map(remote).collect();
    let figures = netns::run_in(&host, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(mesh_netdev::NetdevError::Socket)?;
        runtime.block_on(measure(sandbox, remotes))
    })?;
    let (mesh, steady) = figures;
    let batch = iproute2_batch(&lab, count)?;
    println!("the same through the agents: h2 restarts holding {count} endpoints, h1 programs them");
    let agents = super::view_to_kernel::measure(&mut lab, count)?;
    let against_batch = |name: &str, took: Duration| {
        let ms = |d: Duration| Some(d.as_secs_f64() * 1000.0);
        Figure::new("entries", format!("{name}, {count} remote endpoints"), "ms", Better::Lower, ms(took))
            .against("iproute2 batch", ms(batch))
    };
    let cpu = |what: &str, took: Duration| {
        let name = format!("h1's agent in steady state, {what}: CPU time per second");
        Figure::new("entries", name, "ms", Better::Lower, Some(took.as_secs_f64() * 1000.0))
    };
    Ok(vec![
        against_batch("straight through the reconciler, from nothing to every entry", mesh)
            .aiming("within 2x of the batch, under 1 s"),
        against_batch("agents: from all of them in h1's view to all in h1's kernel", agents.view_to_kernel),
        against_batch("agents: from the first of them in h1's view to all in h1's kernel", agents.first_to_kernel),
        Figure::new(
            "entries",
            "a steady-state pass (dump + diff, no change)",
            "ms",
            Better::Lower,
            Some(steady.as_secs_f64() * 1000.0),
        ),
        cpu("1 remote endpoint", agents.cpu_one),
        cpu(&format!("{count} remote endpoints"), agents.cpu_all),
    ])
}

/// Remote endpoint `k`: an address in 10.128.0.0/10 and one of 200 VTEPs.
fn remote(k: usize) -> Remote {
    let k = u32::try_from(k).unwrap_or(u32::MAX);
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + k);
    let [a, b, c, d] = ip.octets();
    Remote { mac: [0x02, 0x6d, a, b, c, d], ip, vtep: host_ip(2 + (k as usize % 200)).into() }
}

async fn measure(sandbox: String, remotes: Vec<Remote>) -> Result<(Duration, Duration), mesh_netdev::NetdevError> {
    let local = netns::create(&sandbox)?;
    mesh_netdev::reconcile::prepare_sandbox(&local)?;
    let kernel = Reconciler::open()?;
    let underlay = Underlay { local: host_ip(1).into(), port: 4789, tunnel: None };
    let plan = |remotes: Vec<Remote>| NetworkPlan {
        vni: VNI,
        vxlan: true,
        encrypted: false,
        mtu: None,
        bridge_addresses: Vec::new(),
        locals: vec![LocalPlan {
            netns: local.clone(),
            interface: "eth0".into(),
            mac: [2, 0x6d, 10, 127, 0, 1],
            address: Some((Ipv4Addr::new(10, 127, 0, 1), 10)),
            gateway: None,
        }],
        handoffs: Vec::new(),
        remotes,
    };
    kernel.reconcile(underlay, &[plan(Vec::new())], Mode::Full).await?;
    let full = [plan(remotes)];
    let start = Instant::now();
    let report = kernel.reconcile(underlay, &full, Mode::Full).await?;
    let programmed = start.elapsed();
    if !report.errors.is_empty() {
        return Err(mesh_netdev::NetdevError::Conflict(report.errors.join("; ")));
    }
    let start = Instant::now();
    kernel.reconcile(underlay, &full, Mode::Full).await?;
    let steady = start.elapsed();
    kernel.reconcile(underlay, &[plan(Vec::new())], Mode::Full).await?;
    Ok((programmed, steady))
}

/// The same entries through `bridge -batch` and `ip -batch`; returns the time both took.
fn iproute2_batch(lab: &Lab, count: usize) -> anyhow::Result<Duration> {
    let device = vxlan_name(VNI);
    let dir = tempfile::Builder::new().prefix("mesh-bench-entries-").tempdir()?;
    let (mut fdb, mut neigh) = (String::new(), String::new());
    for remote in (0..count).map(remote) {
        let mac: Vec<String> = remote.mac.iter().map(|b| format!("{b:02x}")).collect();
        let mac = mac.join(":");
        writeln!(fdb, "fdb add {mac} dev {device} dst {} self permanent", remote.vtep)?;
        writeln!(neigh, "neigh add {} lladdr {mac} dev {device} nud permanent", remote.ip)?;
    }
    let (fdb_file, neigh_file) = (dir.path().join("fdb"), dir.path().join("neigh"));
    std::fs::write(&fdb_file, fdb)?;
    std::fs::write(&neigh_file, neigh)?;
    // The device exists (the reconciler made it and removed only the entries).
    let start = Instant::now();
    for (tool, file) in [("bridge", &fdb_file), ("ip", &neigh_file)] {
        let out = lab.exec(1, tool, &["-batch", file.to_str().context("temp path")?])?;
        if !out.success {
            bail!("{tool} -batch: {}", out.stderr.lines().next().unwrap_or_default());
        }
    }
    Ok(start.elapsed())
}
