//! Networks, sandboxes and addresses across lab hosts: the real `mesh`
//! binary, checked through `mesh network inspect --format json` as an
//! operator would. Needs root.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use mesh_scenarios::Lab;
use serde_json::Value;

/// Generous bound on convergence waits: a bound on the test, not a
/// performance claim (figures come from the benchmarks).
const CONVERGE: Duration = Duration::from_secs(30);

/// `mesh network inspect NAME --format json` on host `i`.
fn inspect(lab: &Lab, i: usize, network: &str) -> anyhow::Result<Value> {
    let out = lab.mesh_ok(i, &["network", "inspect", network, "--format", "json"])?;
    serde_json::from_str(&out).context("inspect prints JSON")
}

/// The endpoints of an inspected network, as comparable text rows.
fn endpoint_rows(network: &Value) -> Vec<String> {
    let mut rows: Vec<String> = network["endpoints"]
        .as_array()
        .map(|endpoints| {
            endpoints
                .iter()
                .map(|e| format!("{} {} {} {} {}", e["name"], e["ip"], e["mac"], e["node"], e["state"]))
                .collect()
        })
        .unwrap_or_default();
    rows.sort();
    rows
}

/// Whether every host's inspect of `network` is identical (fields,
/// endpoints, conflicts), with every endpoint active.
fn identical_everywhere(lab: &Lab, network: &str, endpoints: usize) -> anyhow::Result<bool> {
    let first = inspect(lab, 1, network)?;
    for i in 2..=lab.len() {
        if inspect(lab, i, network)? != first {
            return Ok(false);
        }
    }
    let rows = endpoint_rows(&first);
    Ok(rows.len() == endpoints && rows.iter().all(|r| r.ends_with("\"active\"")))
}

/// The endpoint called `name` in an inspected network.
fn endpoint<'a>(network: &'a Value, name: &str) -> Option<&'a Value> {
    network["endpoints"].as_array()?.iter().find(|e| e["name"] == name)
}

fn ips(network: &Value) -> Vec<String> {
    network["endpoints"]
        .as_array()
        .map(|endpoints| endpoints.iter().filter_map(|e| e["ip"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn sandboxes_on_five_hosts_give_every_host_the_same_view() -> anyhow::Result<()> {
    let lab = Lab::converged(5)?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.wait_for("dev on every host", CONVERGE, |lab| Ok((1..=lab.len()).all(|i| inspect(lab, i, "dev").is_ok())))?;
    // Every host creates two sandboxes at the same moment.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let lab = &lab;
        let handles: Vec<_> = (1..=5)
            .map(|i| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for k in 1..=2 {
                        lab.mesh_ok(
                            i,
                            &["sandbox", "create", &format!("s{i}-{k}"), "--network", "dev", "--alias", "web"],
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| anyhow::anyhow!("a creator thread panicked"))??;
        }
        Ok(())
    })?;
    let took = lab.wait_for("an identical view on every host", CONVERGE, |lab| identical_everywhere(lab, "dev", 10))?;
    println!("10 sandboxes on 5 hosts: identical views after {took:?}");
    let dev = inspect(&lab, 3, "dev")?;
    let addresses = ips(&dev);
    ensure!(addresses.iter().collect::<HashSet<_>>().len() == 10, "no duplicate address: {addresses:?}");
    ensure!(dev["vni"].as_u64().is_some() && dev["subnet"].is_string(), "vni and subnet are shown: {dev}");
    let s4 = endpoint(&dev, "s4-1").context("s4-1 is listed")?;
    ensure!(s4["node"] == "h4" && s4["mac"].as_str().is_some_and(|m| m.len() == 17), "{s4}");

    // The owner lists its own sandboxes; a removal reaches every host.
    let own: Value = serde_json::from_str(&lab.mesh_ok(2, &["sandbox", "ls", "--format", "json"])?)?;
    ensure!(own.as_array().map(Vec::len) == Some(2), "h2 lists its two sandboxes: {own}");
    lab.mesh_ok(2, &["sandbox", "rm", "s2-1"])?;
    lab.wait_for("s2-1 gone everywhere", CONVERGE, |lab| identical_everywhere(lab, "dev", 9))?;
    Ok(())
}

#[test]
fn a_healed_partition_converges_with_nothing_lost_and_no_duplicate() -> anyhow::Result<()> {
    let lab = Lab::converged(5)?;
    lab.mesh_ok(1, &["network", "create", "tiny", "--subnet", "10.9.0.0/29"])?;
    lab.wait_for("tiny everywhere", CONVERGE, |lab| Ok((1..=5).all(|i| inspect(lab, i, "tiny").is_ok())))?;

    lab.partition(&[3, 4, 5])?;
    lab.wait_for("each side sees the other down", CONVERGE, |lab| {
        Ok(lab.status_of(1, "h4")?.as_deref() == Some("down") && lab.status_of(4, "h1")?.as_deref() == Some("down"))
    })?;
    // The same network name on both sides, with different subnets; h1's is first.
    lab.mesh_ok(1, &["network", "create", "shared", "--subnet", "10.1.0.0/24"])?;
    lab.mesh_ok(4, &["network", "create", "shared", "--subnet", "10.2.0.0/24"])?;
    lab.mesh_ok(2, &["sandbox", "create", "left", "--network", "shared"])?;
    lab.mesh_ok(5, &["sandbox", "create", "right", "--network", "shared"])?;
    // A side-local network too, and the same address taken on both sides:
    // allocated on the left, asked for (static) on the right.
    lab.mesh_ok(4, &["network", "create", "rightonly"])?;
    lab.mesh_ok(1, &["sandbox", "create", "dyn", "--network", "tiny"])?;
    let taken = endpoint(&inspect(&lab, 1, "tiny")?, "dyn").context("dyn")?["ip"].as_str().context("ip")?.to_owned();
    lab.mesh_ok(3, &["sandbox", "create", "fixed", "--network", "tiny", "--ip", &taken])?;

    lab.heal()?;
    let took = lab.wait_for("one converged view after the heal", CONVERGE, |lab| {
        Ok(identical_everywhere(lab, "shared", 2)?
            && identical_everywhere(lab, "tiny", 2)?
            && identical_everywhere(lab, "rightonly", 0)?)
    })?;
    println!("partition healed: one view on every host after {took:?}");
    for i in 1..=5 {
        let shared = inspect(&lab, i, "shared")?;
        ensure!(shared["subnet"] == "10.1.0.0/24", "h{i}: the first created shared wins: {shared}");
        let conflicts = shared["conflicts"].as_array().map(Vec::len).unwrap_or_default();
        ensure!(conflicts == 1, "h{i} reports the losing shared: {shared}");
        let right = endpoint(&shared, "right").context("right is not lost")?;
        ensure!(
            right["ip"].as_str().is_some_and(|ip| ip.starts_with("10.1.0.")),
            "h{i}: right moved into the winner: {right}"
        );
        let tiny = inspect(&lab, i, "tiny")?;
        let fixed = endpoint(&tiny, "fixed").context("fixed")?;
        let dynamic = endpoint(&tiny, "dyn").context("dyn")?;
        ensure!(fixed["ip"] == taken.as_str(), "h{i}: the static address wins: {tiny}");
        ensure!(dynamic["ip"] != taken.as_str() && dynamic["readdressed_from"] == taken.as_str(), "h{i}: {tiny}");
    }
    // The moved sandbox is rewired with its new address.
    let moved = endpoint(&inspect(&lab, 1, "tiny")?, "dyn").context("dyn")?["ip"].as_str().context("ip")?.to_owned();
    lab.wait_for("dyn's eth0 to carry its new address", CONVERGE, |lab| {
        let addresses = lab.sandbox_exec(1, "dyn", "ip", &["-4", "-o", "addr", "show", "dev", "eth0"])?.stdout;
        Ok(addresses.contains(&format!("{moved}/")) && !addresses.contains(&format!("{taken}/")))
    })?;
    let log = lab.log_tail(2, 400);
    ensure!(log.contains("conflict"), "the conflicts are logged:\n{log}");
    Ok(())
}

#[test]
fn a_removed_address_taken_elsewhere_at_once_never_shows_the_old_owner() -> anyhow::Result<()> {
    let lab = Lab::converged(3)?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.3.0.0/24"])?;
    lab.wait_for("dev everywhere", CONVERGE, |lab| Ok((1..=3).all(|i| inspect(lab, i, "dev").is_ok())))?;
    for round in 0..5 {
        let (old, new) = (format!("old{round}"), format!("new{round}"));
        lab.mesh_ok(1, &["sandbox", "create", &old, "--network", "dev", "--ip", "10.3.0.50"])?;
        lab.wait_for("old on h2", CONVERGE, |lab| Ok(endpoint(&inspect(lab, 2, "dev")?, &old).is_some()))?;
        // Remove on h1 and take the address on h2 at once (retrying while
        // h2 has not heard of the removal yet, as a user would).
        lab.mesh_ok(1, &["sandbox", "rm", &old])?;
        let start = Instant::now();
        while !lab.mesh(2, &["sandbox", "create", &new, "--network", "dev", "--ip", "10.3.0.50"])?.success {
            ensure!(start.elapsed() < CONVERGE, "h2 never got the address");
        }
        lab.wait_for("the new owner everywhere", CONVERGE, |lab| identical_everywhere(lab, "dev", 1))?;
        // And it stays that way.
        for _ in 0..10 {
            for i in 1..=3 {
                let dev = inspect(&lab, i, "dev")?;
                ensure!(endpoint(&dev, &old).is_none(), "h{i} shows the old owner again: {dev}");
                ensure!(endpoint(&dev, &new).is_some_and(|e| e["node"] == "h2"), "h{i}: {dev}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lab.mesh_ok(2, &["sandbox", "rm", &new])?;
        lab.wait_for("clean", CONVERGE, |lab| identical_everywhere(lab, "dev", 0))?;
    }
    Ok(())
}

#[test]
fn a_killed_agent_keeps_its_addresses_is_never_shown_twice_and_a_leaving_one_is_withdrawn() -> anyhow::Result<()> {
    let mut lab = Lab::converged(3)?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.wait_for("dev everywhere", CONVERGE, |lab| Ok((1..=3).all(|i| inspect(lab, i, "dev").is_ok())))?;
    for name in ["a", "b", "c"] {
        lab.mesh_ok(2, &["sandbox", "create", name, "--network", "dev", "--alias", "svc"])?;
    }
    lab.wait_for("three endpoints everywhere", CONVERGE, |lab| identical_everywhere(lab, "dev", 3))?;
    let before = endpoint_rows(&inspect(&lab, 1, "dev")?);

    lab.kill(2)?;
    lab.wait_for("h2's endpoints hidden on h1", CONVERGE, |lab| {
        let dev = inspect(lab, 1, "dev")?;
        Ok(["a", "b", "c"].iter().all(|n| endpoint(&dev, n).is_some_and(|e| e["state"] == "owner-down")))
    })?;
    lab.start_agent(2, &[])?;
    let start = Instant::now();
    loop {
        let dev = inspect(&lab, 3, "dev")?;
        let names: Vec<&str> =
            dev["endpoints"].as_array().context("endpoints")?.iter().filter_map(|e| e["name"].as_str()).collect();
        ensure!(names.len() == names.iter().collect::<BTreeSet<_>>().len(), "an endpoint shown twice: {dev}");
        if endpoint_rows(&dev) == before {
            break;
        }
        ensure!(start.elapsed() < CONVERGE, "h2's endpoints did not come back unchanged: {dev}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let own = lab.mesh_ok(2, &["sandbox", "ls", "--format", "json"])?;
    ensure!(serde_json::from_str::<Value>(&own)?.as_array().map(Vec::len) == Some(3), "h2 still owns a, b, c: {own}");

    // A host that leaves gracefully is withdrawn at once, and comes back with `mesh join`.
    lab.mesh_ok(2, &["leave"])?;
    let withdrawn = lab.wait_for("h2's endpoints withdrawn on h1", CONVERGE, |lab| {
        let dev = inspect(lab, 1, "dev")?;
        Ok(["a", "b", "c"].iter().all(|n| endpoint(&dev, n).is_some_and(|e| e["state"] == "owner-left")))
    })?;
    println!("a leaving host's endpoints withdrawn after {withdrawn:?}");
    let token = lab.mesh_ok(1, &["token"])?;
    lab.mesh_ok(2, &["join", &lab.agent_addr(1), "--token", token.trim()])?;
    lab.wait_for("h2's endpoints back", CONVERGE, |lab| identical_everywhere(lab, "dev", 3))?;
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let lab = Lab::converged(2)?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.4.0.0/24", "--vni", "4242"])?;
    lab.mesh_ok(1, &["sandbox", "create", "web", "--network", "dev", "--ip", "10.4.0.10"])?;
    let state = |lab: &Lab| -> anyhow::Result<(String, String)> {
        Ok((
            lab.mesh_ok(1, &["network", "ls", "--format", "json"])?,
            lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?,
        ))
    };
    let before = state(&lab)?;
    let cases: &[(&[&str], &str)] = &[
        (&["sandbox", "create", "x", "--network", "nope"], "no network named nope"),
        (&["network", "create", "n1", "--subnet", "10.5.0.0/33"], "malformed subnet"),
        (&["network", "create", "n1", "--subnet", "banana"], "malformed subnet"),
        (&["network", "create", "n1", "--subnet", "10.5.0.7/24"], "not a network address"),
        (&["network", "create", "n1", "--vni", "16777216"], "out of range"),
        (&["network", "create", "n1", "--vni", "0"], "out of range"),
        (&["network", "create", "n1", "--vni", "4242"], "already used by network dev"),
        (&["network", "create", "n1", "--subnet", "10.4.0.0/16"], "overlaps network dev"),
        (&["network", "create", "n1", "--mtu", "20"], "out of range"),
        (&["network", "create", "n1", "--driver", "magic"], "unknown driver"),
        (&["network", "create", "bad_name"], "not valid"),
        (&["network", "create", "dev"], "already exists"),
        (&["sandbox", "create", "web", "--network", "dev"], "already exists on this host"),
        (&["sandbox", "create", "x", "--network", "dev", "--ip", "10.9.9.9"], "not a host address"),
        (&["sandbox", "create", "x", "--network", "dev", "--ip", "10.4.0.10"], "already used by web"),
        (&["sandbox", "create", "x", "--network", "dev", "--ip", "10.4.0.1"], "gateway"),
        (&["sandbox", "create", "x", "--network", "dev", "--ip", "ten"], "malformed address"),
        (&["sandbox", "create", "x", "--network", "dev", "--alias", "a.b"], "not valid"),
        (&["sandbox", "rm", "nope"], "no sandbox named nope"),
        (&["network", "rm", "nope"], "no network named nope"),
        (&["network", "rm", "dev"], "still has 1 endpoint"),
        (&["network", "inspect", "a/b"], "no network named a/b"),
    ];
    for (args, expected) in cases {
        let out = lab.mesh(1, args)?;
        ensure!(!out.success, "{args:?} should fail");
        ensure!(out.stderr.contains(expected), "{args:?}: expected {expected:?} in {:?}", out.stderr);
    }
    // h2 also refuses a sandbox whose name is taken on the network by h1.
    let out = lab.mesh(2, &["sandbox", "create", "web", "--network", "dev"])?;
    ensure!(!out.success && out.stderr.contains("already used on network dev by a sandbox on h1"), "{}", out.stderr);
    ensure!(state(&lab)? == before, "bad input changed nothing");
    Ok(())
}
