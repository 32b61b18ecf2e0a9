//! The demo: what "it works" looks like, on three lab hosts.

use std::time::Duration;

use crate::lab::Lab;

/// Builds a 3-host lab, forms a cluster with `mesh init` and `mesh join`,
/// creates the network `dev` and a sandbox per host (`svc1`-`svc3`), prints
/// what the hosts see, and tears everything down.
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
    println!("== h2: mesh network inspect dev (the replicated view; the VXLAN data plane and DNS come next)");
    print!("{}", lab.mesh_ok(2, &["network", "inspect", "dev"])?);
    println!("== tearing the lab down");
    drop(lab);
    println!("== done");
    Ok(())
}
