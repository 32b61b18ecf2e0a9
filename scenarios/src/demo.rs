//! The demo: what "it works" looks like, on three lab hosts.

use std::time::Duration;

use anyhow::Context;

use crate::lab::Lab;

/// Builds a 3-host lab, forms a cluster with `mesh init` and `mesh join`,
/// creates the network `dev` and a sandbox per host (`svc1`-`svc3`), pings
/// svc1 by name from h2's svc2 across the VXLAN tunnel, shows the tunnel on the
/// underlay and the tables the agent programmed, and tears everything down.
pub fn run() -> anyhow::Result<()> {
    println!("== building a lab of 3 hosts (network namespaces on an underlay bridge)");
    let mut lab = Lab::new(3)?;
    for i in 1..=lab.len() {
        println!("   h{i}: netns {}, agent at {}", lab.netns(i), lab.agent_addr(i));
        lab.start_agent(i, &[])?;
    }
    println!("== h1: mesh init");
    let token = lab.mesh_ok(1, &["init"])?.trim().to_owned();
    println!("   join token: {token}");
    let peer = lab.agent_addr(1);
    for i in 2..=lab.len() {
        println!("== h{i}: mesh join {peer} --token ...");
        print!("   {}", lab.mesh_ok(i, &["join", &peer, "--token", &token])?);
    }
    let n = lab.len();
    let took = lab.wait_for("every host to list every host alive", Duration::from_secs(10), |lab| {
        (1..=n).try_fold(true, |ok, i| Ok(ok && lab.members(i)?.iter().filter(|m| m.status == "alive").count() == n))
    })?;
    println!("== every host lists {n} alive, {} ms after the last join", took.as_millis());
    for i in 1..=lab.len() {
        println!("== h{i}: mesh members");
        print!("{}", lab.mesh_ok(i, &["members"])?);
    }
    println!("== h2: mesh status");
    print!("{}", lab.mesh_ok(2, &["status"])?);
    println!("== h1: mesh network create dev");
    print!("   {}", lab.mesh_ok(1, &["network", "create", "dev"])?);
    for i in 1..=n {
        let name = format!("svc{i}");
        println!("== h{i}: mesh sandbox create {name} --network dev");
        print!("   {}", lab.mesh_ok(i, &["sandbox", "create", &name, "--network", "dev"])?);
    }
    let took = lab.wait_for("every host to hold the 3 endpoints", Duration::from_secs(10), |lab| {
        (1..=n).try_fold(true, |ok, i| {
            let out = lab.mesh_ok(i, &["network", "inspect", "dev", "--format", "json"])?;
            let dev: serde_json::Value = serde_json::from_str(&out)?;
            Ok(ok && dev["endpoints"].as_array().is_some_and(|e| e.len() == n))
        })
    })?;
    println!("== every host holds the 3 endpoints, {} ms after the last create", took.as_millis());
    println!("== h2: mesh network inspect dev");
    print!("{}", lab.mesh_ok(2, &["network", "inspect", "dev"])?);
    let dev: serde_json::Value =
        serde_json::from_str(&lab.mesh_ok(2, &["network", "inspect", "dev", "--format", "json"])?)?;
    let vni = dev["vni"].as_u64().unwrap_or_default();
    let svc1 = dev["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "svc1"))
        .and_then(|e| e["ip"].as_str())
        .context("svc1 has an address")?
        .to_owned();
    lab.wait_for("svc2 to reach svc1 by name", Duration::from_secs(10), |lab| {
        Ok(lab.sandbox_exec(2, "svc2", "ping", &["-c", "1", "-W", "1", "svc1"])?.success)
    })?;
    println!("== h2: svc2's /etc/resolv.conf (written by the agent; `ip netns exec` puts it in place)");
    print!("{}", indent(&lab.sandbox_exec(2, "svc2", "cat", &["/etc/resolv.conf"])?.stdout));
    println!("== h2: svc2 asks the resolver inside its namespace: dig +short svc1.dev.mesh (svc1 is {svc1})");
    print!("{}", indent(&lab.sandbox_exec(2, "svc2", "dig", &["+short", "svc1.dev.mesh"])?.stdout));
    println!("== h1: tcpdump -n -i eth0 udp port 4789 (the underlay), while h2's svc2 pings svc1 by name");
    lab.spawn(1, "tcpdump", "tcpdump", &["-l", "-n", "-c", "4", "-i", "eth0", "udp", "port", "4789"])?;
    std::thread::sleep(Duration::from_millis(500));
    let ping = lab.sandbox_exec(2, "svc2", "ping", &["-c", "2", "-i", "0.2", "svc1"])?;
    print!("{}", indent(&ping.stdout));
    let log = lab.spawn_log(1, "tcpdump");
    lab.wait_for("tcpdump to see the tunnel", Duration::from_secs(5), |_| {
        Ok(std::fs::read_to_string(&log)?.lines().filter(|l| l.contains("VXLAN")).count() >= 4)
    })?;
    print!("{}", indent(&std::fs::read_to_string(&log)?));
    let vxlan = format!("mvx{vni}");
    println!("== h2: bridge fdb show dev {vxlan} (programmed by the agent: MAC -> remote VTEP)");
    print!("{}", indent(&lab.exec(2, "bridge", &["fdb", "show", "dev", &vxlan])?.stdout));
    println!("== h2: ip neigh show dev {vxlan} (programmed by the agent: IP -> MAC)");
    print!("{}", indent(&lab.exec(2, "ip", &["neigh", "show", "dev", &vxlan])?.stdout));
    lab.kill_spawned();
    println!("== tearing the lab down");
    drop(lab);
    println!("== done");
    Ok(())
}

/// Indents every line of `text` by three spaces.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}
