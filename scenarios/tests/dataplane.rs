//! The data plane on lab hosts: sandboxes ping across the VXLAN tunnels
//! and the kernel tables hold exactly the remote endpoints. Needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_scenarios::{run, Lab};
use serde_json::Value;

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);

/// A cluster of `n` hosts with network `dev` and sandbox `sI` on host I.
fn cluster_with_sandboxes(n: usize) -> anyhow::Result<Lab> {
    let lab = Lab::converged(n)?;
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

/// The FDB entries and permanent neighbour addresses on host `i`'s VXLAN device.
fn tables(lab: &Lab, i: usize) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    lab.vxlan_tables(i, "mvx4242")
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

    // Each host's tables hold exactly the two remote endpoints, and the
    // device learns nothing from what arrives (SECURITY.md).
    for i in 1..=3 {
        let details = lab.exec(i, "ip", &["-d", "link", "show", "mvx4242"])?.stdout;
        ensure!(details.contains("nolearning"), "h{i}'s VXLAN device learns: {details}");
        let (fdb, neigh) = tables(&lab, i)?;
        let remote: BTreeSet<String> =
            ips.iter().enumerate().filter(|(j, _)| j + 1 != i).map(|(_, ip)| ip.clone()).collect();
        ensure!(neigh == remote, "h{i} neighbours {neigh:?}, expected {remote:?}");
        ensure!(fdb.len() == 2, "h{i} fdb {fdb:?}");
    }
    lab.kill_spawned();
    Ok(())
}

/// The FDB line for `mac` on host `i`'s VXLAN device, if any.
fn fdb_line(lab: &Lab, i: usize, mac: &str) -> anyhow::Result<Option<String>> {
    let fdb = lab.exec(i, "bridge", &["fdb", "show", "dev", "mvx4242"])?.stdout;
    Ok(fdb.lines().find(|l| l.starts_with(mac) && l.contains(" dst ")).map(str::to_owned))
}

/// The MAC of endpoint `name`, from host 1's view.
fn mac_of(lab: &Lab, name: &str) -> anyhow::Result<String> {
    let dev: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", "dev", "--format", "json"])?)?;
    let endpoint = dev["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == name));
    Ok(endpoint.and_then(|e| e["mac"].as_str()).context("endpoint has a MAC")?.to_owned())
}

#[test]
fn what_is_deleted_by_hand_is_restored() -> anyhow::Result<()> {
    let lab = cluster_with_sandboxes(2)?;
    let (ip2, mac2) = (ip_of(&lab, "s2")?, mac_of(&lab, "s2")?);
    lab.wait_for("s1 pings s2", CONVERGE, |lab| pings(lab, 1, "s1", &ip2))?;

    let out = lab.exec(1, "bridge", &["fdb", "del", &mac2, "dev", "mvx4242", "dst", "198.18.0.2", "self"])?;
    ensure!(out.success, "bridge fdb del: {}", out.stderr);
    let took = lab.wait_for("the FDB entry back", CONVERGE, |lab| Ok(fdb_line(lab, 1, &mac2)?.is_some()))?;
    println!("FDB entry restored after {took:?}");

    ensure!(lab.exec(1, "ip", &["neigh", "del", &ip2, "dev", "mvx4242"])?.success, "ip neigh del");
    let took = lab.wait_for("the neighbour entry back", CONVERGE, |lab| Ok(tables(lab, 1)?.1.contains(&ip2)))?;
    println!("neighbour entry restored after {took:?}");

    ensure!(lab.exec(1, "ip", &["link", "del", "mvx4242"])?.success, "ip link del");
    let took = lab.wait_for("the tunnel back", CONVERGE, |lab| pings(lab, 1, "s1", &ip2))?;
    println!("VXLAN device restored after {took:?}");
    Ok(())
}

#[test]
fn removed_sandboxes_go_and_a_moved_address_is_repointed() -> anyhow::Result<()> {
    let lab = cluster_with_sandboxes(3)?;
    let (ip2, mac2) = (ip_of(&lab, "s2")?, mac_of(&lab, "s2")?);
    lab.wait_for("s1 pings s2", CONVERGE, |lab| pings(lab, 1, "s1", &ip2))?;

    // The address moves from h2 to h3 at once.
    lab.mesh_ok(2, &["sandbox", "rm", "s2"])?;
    let gone = lab.sandbox_netns(2, "s2");
    ensure!(
        !run("ip", ["netns", "list"])?.stdout.lines().any(|l| l.split_whitespace().next() == Some(&gone)),
        "{gone} remains"
    );
    lab.wait_for("h3 takes the address", CONVERGE, |lab| {
        Ok(lab.mesh(3, &["sandbox", "create", "moved", "--network", "dev", "--ip", &ip2])?.success)
    })?;
    let took = lab.wait_for("h1 points the address at h3", CONVERGE, |lab| {
        Ok(fdb_line(lab, 1, &mac2)?.is_some_and(|l| l.contains("dst 198.18.0.3")) && pings(lab, 1, "s1", &ip2)?)
    })?;
    println!("moved address repointed after {took:?}");
    for i in [1, 2] {
        let fdb = lab.exec(i, "bridge", &["fdb", "show", "dev", "mvx4242"])?.stdout;
        ensure!(!fdb.contains("dst 198.18.0.2"), "h{i} still points somewhere at h2: {fdb}");
    }

    // Removing the last sandbox of a host removes the network's devices there.
    lab.mesh_ok(1, &["sandbox", "rm", "s1"])?;
    lab.wait_for("h1's devices removed", CONVERGE, |lab| {
        Ok(!lab.exec(1, "ip", &["link", "show"])?.stdout.contains("mvx4242"))
    })?;
    Ok(())
}

#[test]
fn a_cut_host_is_withdrawn_after_the_grace_period_and_restored() -> anyhow::Result<()> {
    let lab = cluster_with_sandboxes(3)?;
    let mac3 = mac_of(&lab, "s3")?;
    lab.wait_for("h1 programs s3", CONVERGE, |lab| Ok(fdb_line(lab, 1, &mac3)?.is_some()))?;
    lab.cut(3, true)?;
    lab.wait_for("h1 sees h3 down", CONVERGE, |lab| Ok(lab.status_of(1, "h3")?.as_deref() == Some("down")))?;
    ensure!(fdb_line(&lab, 1, &mac3)?.is_some(), "kept during the grace period");
    let took =
        lab.wait_for("s3 withdrawn on h1", Duration::from_secs(60), |lab| Ok(fdb_line(lab, 1, &mac3)?.is_none()))?;
    println!("withdrawn {took:?} after h3 was seen down");
    lab.cut(3, false)?;
    lab.wait_for("s3 back on h1", Duration::from_secs(60), |lab| Ok(fdb_line(lab, 1, &mac3)?.is_some()))?;
    Ok(())
}

#[test]
fn restarting_an_agent_loses_no_packet() -> anyhow::Result<()> {
    let mut lab = cluster_with_sandboxes(2)?;
    let ip2 = ip_of(&lab, "s2")?;
    lab.wait_for("s1 pings s2", CONVERGE, |lab| pings(lab, 1, "s1", &ip2))?;
    let netns = format!("--net=/run/netns/{}", lab.sandbox_netns(1, "s1"));
    // 20 packets a second for 6 s, across a restart of h1's agent.
    lab.spawn(1, "ping", "nsenter", &[&netns, "ping", "-i", "0.05", "-c", "120", "-W", "1", &ip2])?;
    std::thread::sleep(Duration::from_secs(1));
    lab.terminate(1)?;
    lab.start_agent(1, &[])?;
    let log = lab.spawn_log(1, "ping");
    lab.wait_for("the ping run to end", Duration::from_secs(20), |_| {
        Ok(std::fs::read_to_string(&log)?.contains("packet loss"))
    })?;
    let summary = std::fs::read_to_string(&log)?;
    ensure!(summary.contains(" 0% packet loss"), "packets lost across the restart:\n{summary}");
    Ok(())
}

/// Every sandbox namespace of host `i` that exists.
fn sandbox_namespaces(lab: &Lab, i: usize) -> anyhow::Result<BTreeSet<String>> {
    let prefix = lab.sandbox_netns(i, "");
    let listing = run("ip", ["netns", "list"])?.stdout;
    Ok(listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

#[test]
fn existing_namespaces_attach_and_bad_input_leaves_nothing_behind() -> anyhow::Result<()> {
    let lab = cluster_with_sandboxes(2)?;
    let ip2 = ip_of(&lab, "s2")?;

    // A container's namespace, made outside mesh, is attached and detached.
    let outside = lab.sandbox_netns(1, "outside");
    ensure!(run("ip", ["netns", "add", &outside])?.success, "ip netns add");
    let path = format!("/run/netns/{outside}");
    lab.mesh_ok(1, &["sandbox", "create", "ext", "--network", "dev", "--netns", &path])?;
    lab.wait_for("the attached namespace pings s2", CONVERGE, |lab| pings(lab, 1, "outside", &ip2))?;
    lab.mesh_ok(1, &["sandbox", "rm", "ext"])?;
    lab.wait_for("its interface removed", CONVERGE, |lab| {
        Ok(!lab.sandbox_exec(1, "outside", "ip", &["link", "show", "eth0"])?.success)
    })?;
    ensure!(sandbox_namespaces(&lab, 1)?.contains(&outside), "a namespace mesh did not make is left alone");

    let before = (sandbox_namespaces(&lab, 1)?, lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?);
    let out = lab.mesh(1, &["sandbox", "create", "bad", "--network", "dev", "--netns", "/etc/hostname"])?;
    ensure!(!out.success && out.stderr.contains("is not a network namespace"), "--netns a file: {out:?}");

    // A device in the way with other settings.
    let made = lab.exec(
        1,
        "ip",
        &["link", "add", "mvx5151", "type", "vxlan", "id", "77", "dstport", "4790", "local", "198.18.0.1"],
    )?;
    ensure!(made.success, "ip link add: {}", made.stderr);
    lab.mesh_ok(1, &["network", "create", "other", "--vni", "5151"])?;
    let out = lab.mesh(1, &["sandbox", "create", "bad", "--network", "other"])?;
    ensure!(!out.success && out.stderr.contains("exists with other settings"), "a device in the way: {out:?}");
    let after = (sandbox_namespaces(&lab, 1)?, lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?);
    ensure!(before == after, "bad input left something behind: {before:?} vs {after:?}");
    Ok(())
}

#[test]
fn an_advertise_address_on_no_interface_is_a_clear_error() -> anyhow::Result<()> {
    let mut lab = Lab::new(1)?;
    lab.start_agent(1, &["--advertise", "198.18.0.99"])?;
    lab.mesh_ok(1, &["init"])?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    let out = lab.mesh(1, &["sandbox", "create", "web", "--network", "dev"])?;
    ensure!(!out.success && out.stderr.contains("advertise address 198.18.0.99"), "{}", out.stderr);
    ensure!(sandbox_namespaces(&lab, 1)?.is_empty(), "nothing was built");
    Ok(())
}

#[test]
fn mesh_run_runs_a_command_in_a_sandbox_and_a_null_network_has_loopback_only() -> anyhow::Result<()> {
    let lab = cluster_with_sandboxes(2)?;
    let ip2 = ip_of(&lab, "s2")?;
    // Wired before `sandbox create` returns: a command can use it at once.
    let out = lab.mesh(1, &["run", "--network", "dev", "--name", "job", "--", "ping", "-c", "1", "-W", "2", &ip2])?;
    ensure!(out.success && out.stdout.contains("1 received"), "mesh run ping: {out:?}");
    let own = lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?;
    ensure!(!own.contains("\"job\""), "the run's sandbox is removed: {own}");
    ensure!(!sandbox_namespaces(&lab, 1)?.contains(&lab.sandbox_netns(1, "job")), "and its namespace");
    let out = lab.mesh(1, &["run", "--network", "dev", "--", "false"])?;
    ensure!(!out.success, "the command's failure is mesh run's");

    lab.mesh_ok(1, &["network", "create", "nothing", "--driver", "null"])?;
    lab.mesh_ok(1, &["sandbox", "create", "lonely", "--network", "nothing"])?;
    let links = lab.sandbox_exec(1, "lonely", "ip", &["-o", "link", "show"])?.stdout;
    ensure!(links.lines().count() == 1 && links.contains("lo:") && links.contains("UP"), "loopback only, up: {links}");
    ensure!(lab.sandbox_exec(1, "lonely", "ping", &["-c", "1", "-W", "1", "127.0.0.1"])?.success, "loopback answers");
    Ok(())
}

#[test]
fn a_sandbox_on_two_networks_reaches_both_and_goes_from_both() -> anyhow::Result<()> {
    let lab = cluster_with_sandboxes(2)?;
    lab.mesh_ok(1, &["network", "create", "back", "--subnet", "10.21.0.0/24", "--vni", "4343"])?;
    lab.wait_for("back on h2", CONVERGE, |lab| Ok(lab.mesh(2, &["network", "inspect", "back"])?.success))?;
    lab.mesh_ok(2, &["sandbox", "create", "db", "--network", "back"])?;
    lab.mesh_ok(1, &["sandbox", "create", "app", "--network", "dev", "--network", "back"])?;

    let own: Value = serde_json::from_str(&lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?)?;
    let app = own.as_array().and_then(|s| s.iter().find(|s| s["name"] == "app")).context("app listed")?;
    let wiring: Vec<(String, String)> = app["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .map(|e| (e["network"].as_str().unwrap_or("?").to_owned(), e["interface"].as_str().unwrap_or("?").to_owned()))
        .collect();
    ensure!(wiring == [("dev".into(), "eth0".into()), ("back".into(), "eth1".into())], "interfaces: {wiring:?}");
    let addresses = lab.sandbox_exec(1, "app", "ip", &["-o", "-4", "addr", "show"])?.stdout;
    ensure!(addresses.contains("eth0    inet 10.20.0.") && addresses.contains("eth1    inet 10.21.0."), "{addresses}");

    let ip2 = ip_of(&lab, "s2")?;
    let back: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", "back", "--format", "json"])?)?;
    let db = back["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == "db"));
    let db = db.and_then(|e| e["ip"].as_str()).context("db has an address")?.to_owned();
    lab.wait_for("app pings s2 on dev", CONVERGE, |lab| pings(lab, 1, "app", &ip2))?;
    lab.wait_for("app pings db on back", CONVERGE, |lab| pings(lab, 1, "app", &db))?;

    let out = lab.mesh(1, &["sandbox", "create", "twice", "--network", "dev", "--network", "dev"])?;
    ensure!(!out.success && out.stderr.contains("given twice"), "{out:?}");
    lab.mesh_ok(1, &["network", "create", "nothing", "--driver", "null"])?;
    let out = lab.mesh(1, &["sandbox", "create", "mixed", "--network", "dev", "--network", "nothing"])?;
    ensure!(!out.success && out.stderr.contains("cannot be joined with others"), "{out:?}");

    lab.mesh_ok(1, &["sandbox", "rm", "app"])?;
    lab.wait_for("app gone from both networks on h2", CONVERGE, |lab| {
        let dev = lab.mesh_ok(2, &["network", "inspect", "dev", "--format", "json"])?;
        let back = lab.mesh_ok(2, &["network", "inspect", "back", "--format", "json"])?;
        Ok(!dev.contains("\"app\"") && !back.contains("\"app\""))
    })?;
    ensure!(!sandbox_namespaces(&lab, 1)?.contains(&lab.sandbox_netns(1, "app")), "its namespace is removed");
    Ok(())
}
