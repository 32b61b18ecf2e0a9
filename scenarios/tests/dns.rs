//! Service discovery on lab hosts: names resolve in every sandbox with no
//! set-up, from the replicated view; other names go upstream; withdrawn
//! names stop resolving; hostile input harms no one. Needs root.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use mesh_scenarios::Lab;
use serde_json::Value;

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);
/// The upstream resolver the lab runs: dnsmasq on host 1's underlay address.
const UPSTREAM: &str = "198.18.0.1";

/// A cluster of `n` hosts whose agents forward to [`UPSTREAM`], with
/// network `dev` and sandbox `svcI` on host I (aliases as given).
fn cluster(n: usize, aliases: &[&[&str]]) -> anyhow::Result<Lab> {
    let mut lab = Lab::new(n)?;
    lab.form_cluster_with(&["--upstream-dns", UPSTREAM])?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.30.0.0/24"])?;
    lab.wait_for("dev everywhere", CONVERGE, |lab| {
        (1..=lab.len()).try_fold(true, |ok, i| Ok(ok && lab.mesh(i, &["network", "inspect", "dev"])?.success))
    })?;
    for i in 1..=n {
        let name = format!("svc{i}");
        let mut args = vec!["sandbox", "create", name.as_str(), "--network", "dev"];
        for alias in aliases.get(i - 1).copied().unwrap_or_default() {
            args.extend(["--alias", alias]);
        }
        lab.mesh_ok(i, &args)?;
    }
    Ok(lab)
}

/// The address of endpoint `name` in host 1's view.
fn ip_of(lab: &Lab, name: &str) -> anyhow::Result<String> {
    let dev: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", "dev", "--format", "json"])?)?;
    let endpoint = dev["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == name));
    Ok(endpoint.and_then(|e| e["ip"].as_str()).context("endpoint has an address")?.to_owned())
}

/// `dig +short ARGS` from sandbox `sandbox` of host `i`: the answer lines.
fn dig_short(lab: &Lab, i: usize, sandbox: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut all = vec!["+short", "+time=2", "+tries=1"];
    all.extend(args);
    let out = lab.sandbox_exec(i, sandbox, "dig", &all)?;
    Ok(out.stdout.lines().map(str::to_owned).collect())
}

/// The status dig reports (NOERROR, NXDOMAIN, SERVFAIL...), or `timeout`.
fn dig_status(lab: &Lab, i: usize, sandbox: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["+time=5", "+tries=1"];
    all.extend(args);
    let out = lab.sandbox_exec(i, sandbox, "dig", &all)?;
    let status = out.stdout.split("status: ").nth(1).and_then(|rest| rest.split(',').next());
    Ok(status.unwrap_or("timeout").to_owned())
}

#[test]
fn names_aliases_and_addresses_resolve_across_hosts() -> anyhow::Result<()> {
    let lab = cluster(3, &[&["web"], &[], &["web"]])?;
    let (ip1, ip3) = (ip_of(&lab, "svc1")?, ip_of(&lab, "svc3")?);
    lab.wait_for("svc1 resolves on h2", CONVERGE, |lab| Ok(dig_short(lab, 2, "svc2", &["svc1"])? == [ip1.clone()]))?;
    for name in ["svc1.dev", "svc1.dev.mesh", "SVC1.Dev.Mesh."] {
        ensure!(dig_short(&lab, 2, "svc2", &[name])? == [ip1.clone()], "{name}");
    }
    ensure!(dig_short(&lab, 2, "svc2", &["+tcp", "svc1"])? == [ip1.clone()], "over TCP");
    let getent = lab.sandbox_exec(2, "svc2", "getent", &["hosts", "svc1"])?;
    ensure!(getent.success && getent.stdout.starts_with(&ip1), "getent hosts svc1: {getent:?}");
    let ping = lab.sandbox_exec(2, "svc2", "ping", &["-c", "1", "-W", "2", "svc1"])?;
    ensure!(ping.success, "ping svc1: {ping:?}");
    ensure!(dig_short(&lab, 2, "svc2", &["-x", &ip1])? == ["svc1.dev.mesh."], "reverse");
    let mut web = dig_short(&lab, 2, "svc2", &["web"])?;
    web.sort();
    let mut expected = vec![ip1.clone(), ip3];
    expected.sort();
    ensure!(web == expected, "a shared alias gives every holder: {web:?}");
    ensure!(dig_short(&lab, 2, "svc2", &["h1.node.mesh"])? == ["198.18.0.1"], "a node's name");
    ensure!(dig_status(&lab, 2, "svc2", &["nosuch.dev.mesh"])? == "NXDOMAIN", "no such name");
    ensure!(dig_status(&lab, 2, "svc2", &["svc1.dev.mesh", "AAAA"])? == "NOERROR", "NODATA, not NXDOMAIN");
    ensure!(dig_short(&lab, 2, "svc2", &["svc1.dev.mesh", "AAAA"])?.is_empty(), "and no address");
    Ok(())
}

#[test]
fn mesh_run_resolves_and_a_restarted_agent_serves_again() -> anyhow::Result<()> {
    let mut lab = cluster(2, &[])?;
    let ip1 = ip_of(&lab, "svc1")?;
    lab.wait_for("svc1 resolves on h2", CONVERGE, |lab| Ok(dig_short(lab, 2, "svc2", &["svc1"])? == [ip1.clone()]))?;
    let out = lab.mesh(2, &["run", "--network", "dev", "--", "getent", "hosts", "svc1"])?;
    ensure!(out.success && out.stdout.starts_with(&ip1), "mesh run gets the sandbox's resolv.conf: {out:?}");
    lab.terminate(2)?;
    lab.start_agent(2, &["--upstream-dns", UPSTREAM])?;
    lab.wait_for("svc2's resolver back after a restart", CONVERGE, |lab| {
        Ok(dig_short(lab, 2, "svc2", &["svc1"])? == [ip1.clone()])
    })?;
    Ok(())
}

/// Starts dnsmasq on host 1 answering `outside.example`, and NXDOMAIN
/// for the rest of `example`.
fn start_upstream(lab: &mut Lab) -> anyhow::Result<()> {
    let args = [
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--bind-interfaces",
        "--listen-address=198.18.0.1",
        "--address=/outside.example/198.18.100.1",
        "--local=/example/",
    ];
    lab.spawn(1, "dnsmasq", "dnsmasq", &args)
}

#[test]
fn other_names_go_upstream_and_fail_fast_without_it() -> anyhow::Result<()> {
    let mut lab = cluster(2, &[])?;
    start_upstream(&mut lab)?;
    lab.wait_for("an upstream name resolves in svc2", CONVERGE, |lab| {
        Ok(dig_short(lab, 2, "svc2", &["outside.example"])? == ["198.18.100.1"])
    })?;
    ensure!(dig_status(&lab, 2, "svc2", &["nosuch.example"])? == "NXDOMAIN", "the upstream's NXDOMAIN passes through");
    lab.kill_spawned();
    let status = dig_status(&lab, 2, "svc2", &["another.example"])?;
    ensure!(status == "SERVFAIL", "with the upstream gone the answer is SERVFAIL, not a timeout: {status}");
    ensure!(dig_short(&lab, 2, "svc2", &["svc1"])? == [ip_of(&lab, "svc1")?], "mesh names still resolve");
    Ok(())
}

/// What `dig` in a sandbox saw: the status (or `timeout`) and the
/// query time it reports.
fn dig_timed(lab: &Lab, i: usize, sandbox: &str, name: &str) -> anyhow::Result<(String, Duration)> {
    let out = lab.sandbox_exec(i, sandbox, "dig", &["+time=15", "+tries=1", name])?;
    let status = out.stdout.split("status: ").nth(1).and_then(|rest| rest.split(',').next());
    let millis = out.stdout.split("Query time: ").nth(1).and_then(|rest| rest.split(' ').next());
    let took = millis.and_then(|ms| ms.parse().ok()).map_or(Duration::from_secs(15), Duration::from_millis);
    Ok((status.unwrap_or("timeout").to_owned(), took))
}

/// A lab host that only plays the upstream resolver: nothing listens on
/// its port 53.
const DEAD_UPSTREAM: usize = 2;

#[test]
fn an_unreachable_upstream_fails_at_once_and_a_silent_one_within_two_seconds() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let upstream = mesh_scenarios::host_ip(DEAD_UPSTREAM).to_string();
    lab.start_agent(1, &["--upstream-dns", &upstream])?;
    lab.mesh_ok(1, &["init"])?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.31.0.0/24"])?;
    lab.mesh_ok(1, &["sandbox", "create", "svc1", "--network", "dev"])?;
    lab.wait_for("svc1 resolves in itself", CONVERGE, |lab| Ok(dig_short(lab, 1, "svc1", &["svc1"])?.len() == 1))?;

    // The upstream's port is closed: its kernel answers ICMP port
    // unreachable, which tells the agent at once (no time-out to wait for).
    let (status, refused) = dig_timed(&lab, 1, "svc1", "closed.example")?;
    eprintln!("upstream port closed: {status} after {} ms", refused.as_millis());
    ensure!(status == "SERVFAIL", "a closed upstream port gives SERVFAIL: {status}");
    // glibc gives up at 5 s; the refusal is one round trip on the lab's
    // underlay, well under a second even on a loaded debug-build machine.
    ensure!(refused < Duration::from_secs(1), "SERVFAIL at once, not after a time-out: {refused:?}");

    // The upstream drops every packet it gets: only the deadline ends it.
    lab.set_loss(DEAD_UPSTREAM, 100)?;
    let (status, silent) = dig_timed(&lab, 1, "svc1", "silent.example")?;
    eprintln!("upstream silent: {status} after {} ms", silent.as_millis());
    ensure!(status == "SERVFAIL", "a silent upstream gives SERVFAIL: {status}");
    ensure!(silent <= Duration::from_millis(2_250), "SERVFAIL within 2 s of a silent upstream: {silent:?}");
    ensure!(dig_short(&lab, 1, "svc1", &["svc1"])?.len() == 1, "mesh names still resolve");
    Ok(())
}

#[test]
fn removed_and_cut_off_names_stop_resolving() -> anyhow::Result<()> {
    let lab = cluster(3, &[])?;
    lab.wait_for("svc3 resolves on h2", CONVERGE, |lab| Ok(dig_short(lab, 2, "svc2", &["svc3.dev.mesh"])?.len() == 1))?;
    lab.mesh_ok(3, &["sandbox", "rm", "svc3"])?;
    let took = lab.wait_for("svc3 withdrawn on h2", CONVERGE, |lab| {
        Ok(dig_status(lab, 2, "svc2", &["svc3.dev.mesh"])? == "NXDOMAIN")
    })?;
    println!("a removed sandbox's name stopped resolving on another host {} ms after `sandbox rm`", took.as_millis());

    lab.wait_for("svc1 resolves on h2", CONVERGE, |lab| Ok(dig_short(lab, 2, "svc2", &["svc1.dev.mesh"])?.len() == 1))?;
    lab.cut(1, true)?;
    let took = lab.wait_for("svc1 withdrawn on h2", CONVERGE, |lab| {
        Ok(dig_status(lab, 2, "svc2", &["svc1.dev.mesh"])? == "NXDOMAIN")
    })?;
    println!("a cut-off host's name stopped resolving on another host {} ms after the cut", took.as_millis());
    lab.cut(1, false)?;
    lab.wait_for(
        "svc1 back once h1 is",
        CONVERGE,
        |lab| Ok(dig_short(lab, 2, "svc2", &["svc1.dev.mesh"])?.len() == 1),
    )?;
    Ok(())
}

/// From inside namespace `netns`: asks mesh's resolver each of `queries`
/// in turn (waiting for its answer), then floods it with `flood`; returns
/// how many of `queries` were answered.
fn blast(netns: PathBuf, queries: Vec<Vec<u8>>, flood: Vec<Vec<u8>>) -> anyhow::Result<usize> {
    let answered = mesh_netdev::netns::run_in(&netns, move || {
        let io = |source| mesh_netdev::NetdevError::Io { what: "udp", path: "127.0.0.11".into(), source };
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
        socket.set_read_timeout(Some(Duration::from_millis(500))).map_err(io)?;
        let resolver = SocketAddr::from(([127, 0, 0, 11], 53));
        let mut buffer = [0u8; 4096];
        let mut answered = 0;
        for query in &queries {
            socket.send_to(query, resolver).map_err(io)?;
            if let Ok(len) = socket.recv(&mut buffer) {
                answered += usize::from(Message::from_vec(&buffer[..len]).is_ok());
            }
        }
        for packet in &flood {
            let _ = socket.send_to(packet, resolver);
        }
        Ok(answered)
    })?;
    Ok(answered)
}

#[test]
fn hostile_input_harms_no_other_client() -> anyhow::Result<()> {
    let lab = cluster(2, &[])?;
    let ip1 = ip_of(&lab, "svc1")?;
    lab.wait_for("svc1 resolves on h2", CONVERGE, |lab| Ok(dig_short(lab, 2, "svc2", &["svc1"])? == [ip1.clone()]))?;
    lab.mesh_ok(2, &["sandbox", "create", "rogue", "--network", "dev"])?;

    // Every query type, then garbage, long names and truncated queries.
    let mut typed = Vec::new();
    for qtype in 0..=300u16 {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii("svc1.dev.mesh.")?, RecordType::from(qtype)));
        typed.push(query.to_vec()?);
    }
    let mut flood = Vec::new();
    let mut state: u32 = 0x1234_5678;
    for k in 0..5000usize {
        let mut packet = typed[k % typed.len()].clone();
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        match k % 4 {
            0 => packet.truncate(usize::try_from(state).unwrap_or(0) % packet.len()),
            1 => packet.iter_mut().skip(12).for_each(|b| *b ^= state.to_le_bytes()[0]),
            2 => {
                packet.truncate(12);
                packet[5] = 1;
                packet.extend(std::iter::repeat_n([1u8, b'a'], 127).flatten());
                packet.extend([0, 0, 1, 0, 1]);
            }
            _ => packet = state.to_le_bytes().repeat(1 + k % 100),
        }
        flood.push(packet);
    }
    let rogue = PathBuf::from(format!("/run/netns/{}", lab.sandbox_netns(2, "rogue")));
    let count = typed.len();
    let flood = std::thread::spawn(move || blast(rogue, typed, flood));
    for _ in 0..20 {
        ensure!(
            dig_short(&lab, 2, "svc2", &["svc1"])? == [ip1.clone()],
            "another sandbox is answered during the flood"
        );
    }
    let answered = flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    ensure!(answered == count, "every query of every type is answered ({answered} of {count})");
    let tcp = lab.sandbox_exec(2, "rogue", "bash", &["-c", "printf '\\xff\\xffjunk' > /dev/tcp/127.0.0.11/53"])?;
    ensure!(tcp.success, "a junk TCP frame is taken: {tcp:?}");
    ensure!(dig_short(&lab, 2, "rogue", &["+tcp", "svc1"])? == [ip1.clone()], "and TCP still answers");
    ensure!(lab.mesh(2, &["status"])?.success, "the agent is alive");
    Ok(())
}
