//! The bridge driver and the way in and out of networks: host-local bridge
//! networks, sandboxes reaching an "outside" through their host
//! (masqueraded), internal networks with no way out, published ports, and
//! the nftables table mesh owns. Needs root.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use mesh_scenarios::{outside_ip, Lab, OUTSIDE_ROUTER};
use serde_json::Value;

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);
/// How long a connection that should fail is given.
const REFUSED_WITHIN: Duration = Duration::from_secs(3);

/// Creates network `name` on host 1 (`args` are the extra flags) and waits
/// until every host knows it.
fn network(lab: &Lab, name: &str, args: &[&str]) -> anyhow::Result<()> {
    lab.mesh_ok(1, &[&["network", "create", name], args].concat())?;
    lab.wait_for(&format!("{name} everywhere"), CONVERGE, |lab| {
        (1..=lab.len()).try_fold(true, |ok, i| Ok(ok && lab.mesh(i, &["network", "inspect", name])?.success))
    })?;
    Ok(())
}

/// The address of sandbox `name` on `network`, from host 1's view.
fn ip_of(lab: &Lab, network: &str, name: &str) -> anyhow::Result<String> {
    let inspect: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", network, "--format", "json"])?)?;
    let endpoint = inspect["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == name));
    Ok(endpoint.and_then(|e| e["ip"].as_str()).context("the endpoint has an address")?.to_owned())
}

/// A TCP listener on `addr` inside the namespace at `netns`.
fn listen_in(netns: &Path, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = mesh_netdev::netns::run_in(netns, move || {
        TcpListener::bind(addr).map_err(|source| mesh_netdev::NetdevError::Io {
            what: "cannot listen on",
            path: addr.to_string().into(),
            source,
        })
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The source address of the next connection to `listener`, if one is
/// waiting or comes within `limit` (looked for at least once).
fn next_peer(listener: &TcpListener, limit: Duration) -> anyhow::Result<Option<Ipv4Addr>> {
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((_, SocketAddr::V4(peer))) => return Ok(Some(*peer.ip())),
            Ok((_, peer)) => anyhow::bail!("an IPv6 peer {peer}"),
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return Err(e.into()),
            Err(_) if Instant::now() >= deadline => return Ok(None),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Connects from namespace `netns` to `ip:port` (bash's /dev/tcp, with a
/// timeout); answers whether the connection was made.
fn connect_from(lab: &Lab, netns: &str, ip: &str, port: u16) -> anyhow::Result<bool> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    Ok(lab.exec_in(netns, "timeout", &["2", "bash", "-c", &script])?.success)
}

/// Where sandbox `name` of host `i` is.
fn sandbox_path(lab: &Lab, i: usize, name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(lab.sandbox_netns(i, name))
}

/// Host `i`'s mesh nftables table, if it has one.
fn mesh_table(lab: &Lab, i: usize) -> anyhow::Result<Option<String>> {
    let listing = lab.exec(i, "nft", &["list", "table", "ip", "mesh"])?;
    Ok(listing.success.then_some(listing.stdout))
}

#[test]
fn a_bridge_network_connects_the_sandboxes_of_one_host_and_no_other() -> anyhow::Result<()> {
    let lab = Lab::converged(2)?;
    network(&lab, "lan", &["--driver", "bridge", "--subnet", "10.61.0.0/24"])?;
    for (i, name) in [(1, "a"), (1, "b"), (2, "c")] {
        lab.mesh_ok(i, &["sandbox", "create", name, "--network", "lan"])?;
    }
    let inspect: Value = serde_json::from_str(&lab.mesh_ok(2, &["network", "inspect", "lan", "--format", "json"])?)?;
    ensure!(inspect["driver"] == "bridge", "inspect shows the driver: {inspect}");
    lab.wait_for("a pings b by name", CONVERGE, |lab| {
        Ok(lab.sandbox_exec(1, "a", "ping", &["-c", "1", "-W", "1", "b"])?.success)
    })?;
    let (a, c) = (ip_of(&lab, "lan", "a")?, ip_of(&lab, "lan", "c")?);
    let lookup = lab.sandbox_exec(2, "c", "getent", &["hosts", "a"])?;
    ensure!(!lookup.success, "a's name resolves only on its own host, but c got {:?}", lookup.stdout);
    ensure!(!lab.sandbox_exec(2, "c", "ping", &["-c", "2", "-W", "1", &a])?.success, "c reaches a on another host");
    ensure!(!lab.sandbox_exec(1, "a", "ping", &["-c", "2", "-W", "1", &c])?.success, "a reaches c on another host");
    for i in [1, 2] {
        let vxlan = lab.exec(i, "ip", &["-d", "link", "show", "type", "vxlan"])?.stdout;
        ensure!(vxlan.trim().is_empty(), "h{i} has a VXLAN device for a bridge network:\n{vxlan}");
    }
    Ok(())
}

#[test]
fn sandboxes_reach_the_outside_as_their_host_and_overlay_traffic_keeps_its_source() -> anyhow::Result<()> {
    let lab = Lab::converged(2)?;
    let outside = lab.attach_outside(1)?;
    network(&lab, "dev", &["--subnet", "10.62.0.0/24"])?;
    network(&lab, "lan", &["--driver", "bridge", "--subnet", "10.63.0.0/24"])?;
    lab.mesh_ok(1, &["sandbox", "create", "o1", "--network", "dev"])?;
    lab.mesh_ok(1, &["sandbox", "create", "b1", "--network", "lan"])?;
    lab.mesh_ok(2, &["sandbox", "create", "o2", "--network", "dev"])?;

    let server = listen_in(&Path::new("/run/netns").join(&outside), (OUTSIDE_ROUTER, 8080).into())?;
    for sandbox in ["o1", "b1"] {
        let netns = lab.sandbox_netns(1, sandbox);
        lab.wait_for(&format!("{sandbox} reaches the outside"), CONVERGE, |lab| {
            connect_from(lab, &netns, &OUTSIDE_ROUTER.to_string(), 8080)
        })?;
        let seen = next_peer(&server, REFUSED_WITHIN)?;
        ensure!(seen == Some(outside_ip(1)), "the outside saw {sandbox} as {seen:?}, not as its host");
        ensure!(
            lab.sandbox_exec(1, sandbox, "ping", &["-c", "1", "-W", "2", &OUTSIDE_ROUTER.to_string()])?.success,
            "{sandbox} pings the outside"
        );
    }

    let o2 = ip_of(&lab, "dev", "o2")?;
    let across = listen_in(&sandbox_path(&lab, 2, "o2"), (o2.parse::<Ipv4Addr>()?, 9000).into())?;
    let o1_netns = lab.sandbox_netns(1, "o1");
    lab.wait_for("o1 reaches o2 across hosts", CONVERGE, |lab| connect_from(lab, &o1_netns, &o2, 9000))?;
    let seen = next_peer(&across, REFUSED_WITHIN)?;
    let o1: Ipv4Addr = ip_of(&lab, "dev", "o1")?.parse()?;
    ensure!(seen == Some(o1), "o2 saw o1 as {seen:?}: overlay traffic must keep its source {o1}");
    Ok(())
}

#[test]
fn internal_networks_have_no_way_out_and_published_ports_have_a_way_in() -> anyhow::Result<()> {
    let lab = Lab::converged(2)?;
    let outside = lab.attach_outside(1)?;
    network(&lab, "vault", &["--internal", "--subnet", "10.64.0.0/24"])?;
    network(&lab, "dev", &["--subnet", "10.65.0.0/24"])?;
    lab.mesh_ok(1, &["sandbox", "create", "v1", "--network", "vault"])?;
    let routes = lab.sandbox_exec(1, "v1", "ip", &["route", "show", "default"])?.stdout;
    ensure!(routes.trim().is_empty(), "a sandbox of an internal network has no default route: {routes}");
    let gateway = "10.64.0.1";
    lab.sandbox_exec(1, "v1", "ip", &["route", "add", "default", "via", gateway])?;
    let server = listen_in(&Path::new("/run/netns").join(&outside), (OUTSIDE_ROUTER, 8080).into())?;
    let v1 = lab.sandbox_netns(1, "v1");
    ensure!(
        !connect_from(&lab, &v1, &OUTSIDE_ROUTER.to_string(), 8080)?,
        "an internal network's sandbox reached the outside through a route of its own"
    );
    let refused = lab.mesh(1, &["sandbox", "create", "v2", "--network", "vault", "--publish", "8081:80"])?;
    ensure!(!refused.success && refused.stderr.contains("no network with a way in"), "{}", refused.stderr);

    // A server in a sandbox, published at port 8080 of host 1.
    lab.mesh_ok(1, &["sandbox", "create", "web", "--network", "dev", "--publish", "8080:80"])?;
    let web = listen_in(&sandbox_path(&lab, 1, "web"), (Ipv4Addr::UNSPECIFIED, 80).into())?;
    lab.wait_for("the outside reaches web through host 1", CONVERGE, |lab| {
        connect_from(lab, &outside, &outside_ip(1).to_string(), 8080)
    })?;
    ensure!(next_peer(&web, REFUSED_WITHIN)? == Some(OUTSIDE_ROUTER), "web sees the client's own address");
    ensure!(next_peer(&server, Duration::ZERO)?.is_none(), "nothing from the internal network reached the outside");

    let taken = lab.mesh(1, &["sandbox", "create", "web2", "--network", "dev", "--publish", "8080:80"])?;
    ensure!(!taken.success && taken.stderr.contains("8080/tcp is taken"), "{}", taken.stderr);
    let _program = listen_in(Path::new(&format!("/run/netns/{}", lab.netns(1))), (Ipv4Addr::UNSPECIFIED, 9090).into())?;
    let busy = lab.mesh(1, &["sandbox", "create", "web3", "--network", "dev", "--publish", "9090:80"])?;
    ensure!(!busy.success && busy.stderr.contains("taken by a program"), "{}", busy.stderr);
    let malformed = lab.mesh(1, &["sandbox", "create", "web4", "--network", "dev", "--publish", "8080"])?;
    ensure!(!malformed.success && malformed.stderr.contains("malformed port"), "{}", malformed.stderr);
    let listed = lab.mesh_ok(1, &["sandbox", "ls"])?;
    ensure!(!["web2", "web3", "web4"].iter().any(|s| listed.contains(s)), "a refused sandbox leaves nothing: {listed}");

    lab.mesh_ok(1, &["sandbox", "rm", "web"])?;
    lab.wait_for("the port's rule is gone", CONVERGE, |lab| {
        Ok(!mesh_table(lab, 1)?.unwrap_or_default().contains("dport 8080"))
    })?;
    ensure!(!connect_from(&lab, &outside, &outside_ip(1).to_string(), 8080)?, "a removed sandbox's port still answers");
    Ok(())
}

#[test]
fn the_table_is_restored_after_a_delete_and_network_rm_leaves_nothing() -> anyhow::Result<()> {
    let lab = Lab::converged(2)?;
    let outside = lab.attach_outside(1)?;
    network(&lab, "dev", &["--subnet", "10.66.0.0/24"])?;
    lab.mesh_ok(1, &["sandbox", "create", "s1", "--network", "dev", "--publish", "8080:80"])?;
    let table = mesh_table(&lab, 1)?.context("host 1 has mesh's table")?;
    ensure!(table.contains("masquerade") && table.contains("dport 8080"), "{table}");

    ensure!(lab.exec(1, "nft", &["delete", "table", "ip", "mesh"])?.success, "deleted by hand");
    lab.wait_for("the table restored", CONVERGE, |lab| Ok(mesh_table(lab, 1)?.as_ref() == Some(&table)))?;
    let added = lab.exec(1, "nft", &["add", "rule", "ip", "mesh", "forward", "drop"])?;
    ensure!(added.success, "a rule added by hand: {}", added.stderr);
    lab.wait_for("the stray rule removed", CONVERGE, |lab| Ok(mesh_table(lab, 1)?.as_ref() == Some(&table)))?;
    let others = lab.exec(1, "nft", &["add", "table", "ip", "someone_else"])?;
    ensure!(others.success, "{}", others.stderr);

    lab.mesh_ok(1, &["sandbox", "rm", "s1"])?;
    lab.mesh_ok(1, &["network", "rm", "dev"])?;
    lab.wait_for("nothing of dev left on host 1", CONVERGE, |lab| {
        let links = lab.exec(1, "ip", &["-o", "link", "show"])?.stdout;
        let routes = lab.exec(1, "ip", &["route", "show"])?.stdout;
        Ok(mesh_table(lab, 1)?.is_none()
            && !links.contains("mbr")
            && !links.contains("mvx")
            && !links.contains("mve")
            && !routes.contains("10.66."))
    })?;
    let tables = lab.exec(1, "nft", &["list", "tables"])?.stdout;
    ensure!(tables.contains("someone_else"), "a table mesh does not own is left alone: {tables}");
    ensure!(lab.exec_in(&outside, "true", &[])?.success, "the outside is still there");
    Ok(())
}
