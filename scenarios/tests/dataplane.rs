//! The data plane on lab hosts: sandboxes ping across the VXLAN tunnels
//! and the kernel tables hold exactly the remote endpoints. Needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_scenarios::Lab;
use serde_json::Value;

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);

/// A cluster of `n` hosts with network `dev` and sandbox `sI` on host I.
fn cluster_with_sandboxes(n: usize) -> anyhow::Result<Lab> {
    let mut lab = Lab::new(n)?;
    lab.form_cluster()?;
    lab.wait_for("all alive", CONVERGE, |lab| {
        (1..=lab.len()).try_fold(true, |ok, i| {
            let members = lab.members_api(i)?;
            Ok(ok && members.len() == lab.len() && members.iter().all(|m| m.status == "alive"))
        })
    })?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.20.0.0/24", "--vni", "4242"])?;
    lab.wait_for("dev everywhere", CONVERGE, |lab| {
        (1..=lab.len()).try_fold(true, |ok, i| Ok(ok && lab.mesh(i, &["network", "inspect", "dev"])?.success))
    })?;
    for i in 1..=n {
        lab.mesh_ok(i, &["sandbox", "create", &format!("s{i}"), "--network", "dev"])?;
    }
    Ok(lab)
}

/// The address of endpoint `name`, from host 1's view.
fn ip_of(lab: &Lab, name: &str) -> anyhow::Result<String> {
    let dev: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", "dev", "--format", "json"])?)?;
    let endpoint = dev["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == name));
    Ok(endpoint.and_then(|e| e["ip"].as_str()).context("endpoint has an address")?.to_owned())
}

/// Whether sandbox `from` on host `i` gets an answer from `ip`.
fn pings(lab: &Lab, i: usize, from: &str, ip: &str) -> anyhow::Result<bool> {
    Ok(lab.sandbox_exec(i, from, "ping", &["-c", "1", "-W", "1", ip])?.success)
}

/// The permanent FDB destinations and neighbour addresses on host `i`'s VXLAN device.
fn tables(lab: &Lab, i: usize) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let fdb = lab.exec(i, "bridge", &["fdb", "show", "dev", "mvx4242"])?.stdout;
    let neigh = lab.exec(i, "ip", &["neigh", "show", "dev", "mvx4242"])?.stdout;
    let fdb = fdb
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect();
    let neigh = neigh
        .lines()
        .filter(|l| l.contains("PERMANENT"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    Ok((fdb, neigh))
}

#[test]
fn sandboxes_on_three_hosts_ping_each_other_over_vxlan() -> anyhow::Result<()> {
    let mut lab = cluster_with_sandboxes(3)?;
    let ips: Vec<String> = (1..=3).map(|i| ip_of(&lab, &format!("s{i}"))).collect::<anyhow::Result<_>>()?;
    let took = lab.wait_for("every sandbox pings every other", CONVERGE, |lab| {
        for i in 1..=3 {
            for (j, ip) in ips.iter().enumerate() {
                if j + 1 != i && !pings(lab, i, &format!("s{i}"), ip)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    println!("all pairs ping after {took:?}");

    // The underlay carries VXLAN with the network's VNI.
    lab.spawn(1, "tcpdump", "tcpdump", &["-l", "-n", "-c", "2", "-i", "eth0", "udp", "port", "4789"])?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(pings(&lab, 2, "s2", &ips[0])?, "s2 pings s1");
    let log = lab.spawn_log(1, "tcpdump");
    lab.wait_for("tcpdump to see VXLAN with vni 4242", Duration::from_secs(5), |_| {
        Ok(std::fs::read_to_string(&log)?.contains("vni 4242"))
    })?;

    // Each host's tables hold exactly the two remote endpoints.
    for i in 1..=3 {
        let (fdb, neigh) = tables(&lab, i)?;
        let remote: BTreeSet<String> =
            ips.iter().enumerate().filter(|(j, _)| j + 1 != i).map(|(_, ip)| ip.clone()).collect();
        ensure!(neigh == remote, "h{i} neighbours {neigh:?}, expected {remote:?}");
        ensure!(fdb.len() == 2, "h{i} fdb {fdb:?}");
    }
    lab.kill_spawned();
    Ok(())
}
