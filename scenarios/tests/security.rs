//! What a member with a valid certificate cannot do to the others (see
//! SECURITY.md): the real `mesh` binary on lab hosts, with one host's
//! credentials used by the test as a rogue member. Needs root.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use mesh_membership::records::{EndpointSpec, NetworkId, NetworkSpec, Record, RecordKey, Value};
use mesh_membership::wire::Frame;
use mesh_membership::Owned;
use mesh_netdev::netns;
use mesh_scenarios::{host_ip, hostile, procfs, rogue, Lab, AGENT_PORT};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value as Json;

/// Generous bound on convergence waits: a bound on the test, not a
/// performance claim.
const CONVERGE: Duration = Duration::from_secs(30);

/// `mesh network inspect NAME --format json` on host `i`.
fn inspect(lab: &Lab, i: usize, network: &str) -> anyhow::Result<Json> {
    let out = lab.mesh_ok(i, &["network", "inspect", network, "--format", "json"])?;
    serde_json::from_str(&out).context("inspect prints JSON")
}

/// `(name, ip, node, state)` of every endpoint of `network` on host `i`.
fn endpoints(lab: &Lab, i: usize, network: &str) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let text = |v: &Json| v.as_str().unwrap_or_default().to_owned();
    let mut rows: Vec<_> = inspect(lab, i, network)?["endpoints"]
        .as_array()
        .context("inspect lists endpoints")?
        .iter()
        .map(|e| (text(&e["name"]), text(&e["ip"]), text(&e["node"]), text(&e["state"])))
        .collect();
    rows.sort();
    Ok(rows)
}

/// Host `i`'s saved endpoint called `name`, as its agent signed it.
fn saved_endpoint(lab: &Lab, i: usize, name: &str) -> anyhow::Result<Record> {
    let owned: Owned = serde_json::from_slice(&std::fs::read(lab.data_dir(i).join("records.json"))?)?;
    owned
        .endpoints
        .into_iter()
        .find(|r| matches!(&r.key, RecordKey::Endpoint { name: n, .. } if n == name))
        .with_context(|| format!("host {i} saved {name}"))
}

#[test]
fn a_member_cannot_forge_alter_or_delete_another_members_records() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.wait_for("dev on every host", CONVERGE, |lab| Ok((1..=3).all(|i| inspect(lab, i, "dev").is_ok())))?;
    lab.mesh_ok(1, &["sandbox", "create", "web", "--network", "dev"])?;
    lab.wait_for("web active on h2", CONVERGE, |lab| {
        Ok(endpoints(lab, 2, "dev")?.iter().any(|e| e.0 == "web" && e.3 == "active"))
    })?;
    let before = endpoints(&lab, 2, "dev")?;

    // h3 turns rogue: with its own valid certificate and key it tells h2
    // things about h1's records that h1 never said.
    let rogue_key = rogue::node_key(&lab, 3)?;
    let h1 = rogue::node_key(&lab, 1)?.id();
    let genuine = saved_endpoint(&lab, 1, "web")?;
    let Value::Endpoint(spec) = &genuine.value else { anyhow::bail!("web is an endpoint") };
    let moved = Value::Endpoint(EndpointSpec { ip: Some("10.0.0.99".parse()?), ..spec.clone() });
    let far_ahead = genuine.version + 1_000;
    // 1. h1's endpoint moved to another address, signed by the rogue.
    let hijack = Record::signed(genuine.key.clone(), far_ahead, moved.clone(), &rogue_key);
    // 2. The same, carrying h1's genuine seal.
    let altered = Record { version: far_ahead, value: moved, ..genuine.clone() };
    // 3. h1's endpoint deleted, signed by the rogue.
    let deleted = Record::signed(genuine.key.clone(), far_ahead, Value::Deleted { at_ms: 1 }, &rogue_key);
    // 4. A sandbox published in h1's name.
    let planted_key = RecordKey::Endpoint { owner: h1, name: "planted".into(), network: "dev".into() };
    let planted_spec = EndpointSpec { ip: Some("10.0.0.98".parse()?), ..spec.clone() };
    let planted = Record::signed(planted_key, far_ahead, Value::Endpoint(planted_spec), &rogue_key);
    // 5. A network defined in h1's name.
    let spec_of = |name: &str, vni: u32| {
        NetworkSpec::overlay(name, vni, format!("10.{}.0.0/24", vni % 200).parse().expect("subnet"), 1)
    };
    let h1_net = RecordKey::Network(NetworkId { creator: h1, serial: far_ahead });
    let impersonated = Record::signed(h1_net, 1, Value::Network(spec_of("impersonated", 4242)), &rogue_key);
    // The control: what any member may do, a network of its own, sent last
    // on the same connection. Seeing it on h2 shows the forgeries arrived.
    let own_net = RecordKey::Network(NetworkId { creator: rogue_key.id(), serial: far_ahead });
    let control = Record::signed(own_net, 1, Value::Network(spec_of("rogue-own", 4243)), &rogue_key);
    let forgeries = vec![hijack, altered, deleted, planted, impersonated];
    // h1 would correct forgeries of its own records as soon as it heard of
    // them; frozen, it cannot, so what h2 shows is h2's own judgement.
    lab.freeze(1, true)?;
    let sent = rogue::send_as(
        &lab,
        3,
        2,
        &[Frame::Records(forgeries.clone()), Frame::SyncRecords(forgeries), Frame::Records(vec![control])],
    );
    let seen = sent.and_then(|()| {
        lab.wait_for("the rogue's own network on h2", CONVERGE, |lab| Ok(inspect(lab, 2, "rogue-own").is_ok()))?;
        endpoints(&lab, 2, "dev")
    });
    lab.freeze(1, false)?;
    // Nothing forged took: not on h2, and not anywhere a sync later.
    let seen = seen?;
    ensure!(seen == before, "h2 shows only h1's own word: {seen:?}");
    std::thread::sleep(Duration::from_secs(6));
    for i in 1..=3 {
        ensure!(
            endpoints(&lab, i, "dev")? == before,
            "h{i} shows only h1's own word: {:?}",
            endpoints(&lab, i, "dev")?
        );
        ensure!(inspect(&lab, i, "impersonated").is_err(), "h{i} has no network defined in h1's name");
    }
    let log = lab.log_tail(2, 400);
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("forged record")).collect();
    ensure!(refusals.len() >= 10, "h2 logs each forgery, both times: {refusals:#?}");
    ensure!(refusals.iter().all(|l| l.contains(&rogue_key.id().to_string())), "naming the rogue: {refusals:#?}");
    println!("h2 refused {} forged records from h3, e.g.\n{}", refusals.len(), refusals[0]);
    Ok(())
}

/// Random datagrams sent at the agent's QUIC port, and at a sandbox's resolver.
const DATAGRAMS: usize = 20_000;

/// `dig +short NAME` from sandbox `sandbox` of host `i`.
fn resolve(lab: &Lab, i: usize, sandbox: &str, name: &str) -> anyhow::Result<String> {
    Ok(lab.sandbox_exec(i, sandbox, "dig", &["+short", "+time=2", "+tries=1", name])?.stdout.trim().to_owned())
}

/// Sends `count` datagrams of random bytes (some of them larger than any
/// MTU) from inside namespace `ns` to `to`; returns the bytes sent.
fn flood_udp(ns: &str, from: Ipv4Addr, to: SocketAddr, count: usize) -> anyhow::Result<usize> {
    netns::run_in(&netns::path_of(ns), move || {
        Ok((|| -> anyhow::Result<usize> {
            let socket = UdpSocket::bind((from, 0))?;
            let mut rng = StdRng::seed_from_u64(count as u64);
            let mut sent = 0;
            for k in 0..count {
                let len = if k % 500 == 0 { 60_000 } else { rng.random_range(1..1400) };
                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                // A full socket buffer only drops this datagram.
                sent += socket.send_to(&bytes, to).unwrap_or(0);
            }
            Ok(sent)
        })())
    })?
}

/// Opens `count` TCP connections from inside `ns` to `to`, each sending
/// random bytes (a DNS length prefix claiming more than follows, then
/// garbage) and closing.
fn garbage_tcp(ns: &str, to: SocketAddr, count: usize) -> anyhow::Result<()> {
    netns::run_in(&netns::path_of(ns), move || {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..count {
            if let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                let bytes: Vec<u8> = (0..rng.random_range(0..3000)).map(|_| rng.random()).collect();
                let _ = stream.write_all(&[0xff, 0xff]).and_then(|()| stream.write_all(&bytes));
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// Posts `body` to an agent's unix socket; returns the HTTP status (0 if
/// the agent answered nothing) and the body.
fn post_raw(socket: &std::path::Path, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

#[test]
fn random_bytes_at_every_port_leave_the_agent_serving_with_bounded_memory() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.mesh_ok(1, &["sandbox", "create", "svc1", "--network", "dev"])?;
    lab.wait_for("dev on h2", CONVERGE, |lab| Ok(inspect(lab, 2, "dev").is_ok()))?;
    lab.mesh_ok(2, &["sandbox", "create", "probe", "--network", "dev"])?;
    lab.wait_for("svc1 resolves on h2", CONVERGE, |lab| Ok(!resolve(lab, 2, "probe", "svc1")?.is_empty()))?;
    let svc1 = resolve(&lab, 2, "probe", "svc1")?;
    let pid = lab.agent_pid(1).context("h1's agent runs")?;
    let rss_before = procfs::rss_kib(pid)?;
    let started = Instant::now();

    // The QUIC port, from another host.
    let agent = SocketAddr::new(host_ip(1).into(), AGENT_PORT);
    let quic_bytes = flood_udp(lab.netns(2), host_ip(2), agent, DATAGRAMS)?;
    // The resolver, from the sandbox it serves, over UDP and TCP.
    let sandbox_ns = lab.sandbox_netns(1, "svc1");
    let resolver = SocketAddr::new(mesh_dns::OWN_ADDRESS.into(), 53);
    let dns_bytes = flood_udp(&sandbox_ns, Ipv4Addr::LOCALHOST, resolver, DATAGRAMS)?;
    garbage_tcp(&sandbox_ns, resolver, 200)?;
    // The control API: mutated JSON, and bytes that are not HTTP at all.
    let mut rng = StdRng::seed_from_u64(11);
    let valid = br#"{"name":"n1","driver":"overlay","subnet":"10.77.0.0/24","vni":77,"mtu":1400}"#;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..300 {
        let body = hostile::mutate(&mut rng, valid);
        *statuses.entry(post_raw(&lab.socket(1), "/v1/networks", &body)?.0).or_default() += 1;
    }
    // The Docker plugin: mutated calls get the protocol's answer, a JSON
    // body, with {"Err": ...} on a 500.
    let plugin = lab.docker_plugin_dir(1).join("mesh.sock");
    let calls: [(&str, &[u8]); 2] = [
        (
            "/NetworkDriver.CreateNetwork",
            br#"{"NetworkID":"n1","Options":{"com.docker.network.generic":{}},"IPv4Data":[{"AddressSpace":"","Pool":"10.88.0.0/24","Gateway":"10.88.0.1/24"}],"IPv6Data":[]}"#,
        ),
        ("/IpamDriver.RequestAddress", br#"{"PoolID":"10.88.0.0/24","Address":"","Options":{}}"#),
    ];
    let mut plugin_answers = std::collections::BTreeMap::<u16, usize>::new();
    for k in 0..300 {
        let (path, valid) = calls[k % calls.len()];
        let (status, body) = post_raw(&plugin, path, &hostile::mutate(&mut rng, valid))?;
        let json: Json = serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body:?}"))?;
        ensure!(status == 200 || (status == 500 && json["Err"].is_string()), "{path}: {status} {body}");
        *plugin_answers.entry(status).or_default() += 1;
    }
    for _ in 0..100 {
        let mut stream = UnixStream::connect(lab.socket(1))?;
        let bytes: Vec<u8> = (0..rng.random_range(1..4000)).map(|_| rng.random()).collect();
        let _ = stream.write_all(&bytes);
    }
    let took = started.elapsed();

    // Still serving: membership, names both ways, the control API.
    lab.wait_for("h1 alive on h2", CONVERGE, |lab| Ok(lab.status_of(2, "h1")?.as_deref() == Some("alive")))?;
    ensure!(resolve(&lab, 2, "probe", "svc1")? == svc1, "svc1 still resolves on h2");
    ensure!(!resolve(&lab, 1, "svc1", "probe")?.is_empty(), "h1's resolver still answers");
    lab.mesh_ok(1, &["status"])?;
    ensure!(
        !statuses.contains_key(&0) && statuses.keys().all(|&code| code < 500),
        "every request answered, none failed inside: {statuses:?}"
    );
    let rss_after = procfs::rss_kib(pid)?;
    println!(
        "h1 took {DATAGRAMS} random datagrams ({quic_bytes} B) at its QUIC port, {DATAGRAMS} ({dns_bytes} B) and 200 TCP \
         connections at a resolver, 400 bad control requests (answers {statuses:?}), 300 bad Docker plugin calls \
         (answers {plugin_answers:?}) in {took:?}; \
         RSS {rss_before} -> {rss_after} KiB"
    );
    ensure!(rss_after < rss_before + 64 * 1024, "memory stays bounded: {rss_before} -> {rss_after} KiB");
    Ok(())
}

/// Whether host `i` lists a member called `name`.
fn lists(lab: &Lab, i: usize, name: &str) -> anyhow::Result<bool> {
    Ok(lab.members_api(i)?.iter().any(|m| m.name == name))
}

#[test]
fn a_rotated_token_admits_no_one_and_a_removed_member_is_cut_off_everywhere() -> anyhow::Result<()> {
    let mut lab = Lab::new(4)?;
    for i in 1..=4 {
        lab.start_agent(i, &[])?;
    }
    let old = lab.mesh_ok(1, &["init"])?.trim().to_owned();
    for i in 2..=3 {
        lab.mesh_ok(i, &["join", &lab.agent_addr(1), "--token", &old])?;
    }

    // A rotation on h2 reaches every member; the old token admits no one, anywhere.
    let new = lab.mesh_ok(2, &["token", "rotate"])?.trim().to_owned();
    ensure!(new != old && new.starts_with("mesh1."), "a new token: {new}");
    lab.wait_for("every member gives the new token", CONVERGE, |lab| {
        Ok((1..=3)
            .map(|i| lab.mesh_ok(i, &["token"]))
            .collect::<anyhow::Result<Vec<_>>>()?
            .iter()
            .all(|t| t.trim() == new))
    })?;
    let refused = lab.mesh(4, &["join", &lab.agent_addr(3), "--token", &old])?;
    ensure!(!refused.success && refused.stderr.contains("not valid"), "the old token is refused: {}", refused.stderr);
    lab.mesh_ok(4, &["join", &lab.agent_addr(3), "--token", &new])?;
    lab.wait_for("four members everywhere", CONVERGE, |lab| {
        Ok((1..=4).all(|i| lab.members_api(i).is_ok_and(|m| m.len() == 4 && m.iter().all(|m| m.status == "alive"))))
    })?;

    // h3, with a sandbox, is removed (from h1): gone from every list and view.
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.wait_for("dev on h3", CONVERGE, |lab| Ok(inspect(lab, 3, "dev").is_ok()))?;
    lab.mesh_ok(3, &["sandbox", "create", "s3", "--network", "dev"])?;
    lab.wait_for("s3 on h4", CONVERGE, |lab| Ok(endpoints(lab, 4, "dev")?.iter().any(|e| e.0 == "s3")))?;
    ensure!(!lab.mesh(1, &["remove", "h1"])?.success, "a node does not remove itself");
    ensure!(!lab.mesh(1, &["remove", "nosuch"])?.success, "an unknown member is an error");
    lab.mesh_ok(1, &["remove", "h3"])?;
    let gone = |lab: &Lab| -> anyhow::Result<bool> {
        for i in [1, 2, 4] {
            if lists(lab, i, "h3")? || endpoints(lab, i, "dev")?.iter().any(|e| e.0 == "s3") {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let took = lab.wait_for("h3 and s3 gone from h1, h2 and h4", CONVERGE, gone)?;
    println!("a removal reached every member in {took:?}");

    // Restarted, h3 cannot get back in: its connections are refused.
    lab.terminate(3)?;
    lab.start_agent(3, &[])?;
    std::thread::sleep(Duration::from_secs(8));
    ensure!(gone(&lab)?, "h3 stays out after a restart");
    ensure!(
        lab.members_api(3)?.iter().filter(|m| m.name != "h3").all(|m| m.status != "alive"),
        "h3 reaches no one: {:?}",
        lab.members_api(3)?
    );
    Ok(())
}

#[test]
fn certificates_are_renewed_before_they_expire_without_a_break() -> anyhow::Result<()> {
    // 15 s certificates: each agent renews its own at 10 s of age.
    let mut lab = Lab::new(3)?;
    lab.form_cluster_with(&["--cert-lifetime-secs", "15"])?;
    let all_alive = |lab: &Lab| -> anyhow::Result<bool> {
        Ok((1..=3).all(|i| lab.members_api(i).is_ok_and(|m| m.len() == 3 && m.iter().all(|m| m.status == "alive"))))
    };
    lab.wait_for("all alive", CONVERGE, all_alive)?;
    let cert = || std::fs::read_to_string(lab.data_dir(2).join("pki/node.pem"));
    let first = cert()?;
    let mut seen = vec![first.clone()];
    // Past the first certificates' expiry, checking every second that nobody drops out.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        ensure!(all_alive(&lab)?, "every member stays alive through renewals");
        let now = cert()?;
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure!(seen.len() >= 3, "h2 renewed its certificate at least twice in 25 s: {} versions", seen.len());
    // New handshakes, both ways, with the renewed certificates only (the
    // first ones expired 10 s ago).
    lab.terminate(3)?;
    lab.start_agent(3, &["--cert-lifetime-secs", "15"])?;
    let took = lab.wait_for("h3 back everywhere", CONVERGE, all_alive)?;
    println!("{} certificates of h2 in 25 s; after a restart, h3 back in {took:?}", seen.len());
    Ok(())
}

/// `mesh token` on host `i`.
fn token(lab: &Lab, i: usize) -> anyhow::Result<String> {
    Ok(lab.mesh_ok(i, &["token"])?.trim().to_owned())
}

#[test]
fn a_ca_rotation_shuts_out_what_a_removed_member_mints_and_keeps_every_member() -> anyhow::Result<()> {
    const GRACE: Duration = Duration::from_secs(20);
    let mut lab = Lab::new(4)?;
    let old = lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.wait_for("dev on every host", CONVERGE, |lab| Ok((1..=4).all(|i| inspect(lab, i, "dev").is_ok())))?;
    lab.mesh_ok(1, &["sandbox", "create", "s1", "--network", "dev"])?;
    lab.mesh_ok(2, &["sandbox", "create", "s2", "--network", "dev"])?;

    // h3 is removed, but holds the CA: an identity it mints is let in.
    lab.mesh_ok(1, &["remove", "h3"])?;
    lab.wait_for("h3 gone from h2", CONVERGE, |lab| Ok(!lists(lab, 2, "h3")?))?;
    let minted = rogue::RogueCredentials::minted_with(&lab, 3)?;
    let before = rogue::connect_as(&lab, 3, 2, &minted)?;
    ensure!(matches!(before, rogue::Reception::Kept(_)), "before a rotation the CA admits anyone: {before:?}");

    // h4 is down through the rotation; its old credentials are kept for later.
    let h4_old = rogue::RogueCredentials::of_host(&lab, 4)?;
    lab.terminate(4)?;
    let ca_before = std::fs::read_to_string(lab.data_dir(1).join("pki/ca.pem"))?;
    let rotated_at = Instant::now();
    let new = lab.mesh_ok(1, &["ca", "rotate", "--grace-secs", &GRACE.as_secs().to_string()])?.trim().to_owned();
    ensure!(new != old && new.starts_with("mesh1."), "a new token: {new}");
    let took = lab.wait_for("h2 adopts the new CA", CONVERGE, |lab| Ok(token(lab, 2)? == new))?;
    println!("h2 adopted the rotated CA {took:?} after the rotation");
    let saved = |lab: &Lab, i: usize| std::fs::read_to_string(lab.data_dir(i).join("pki/ca.pem"));
    lab.wait_for("h1 and h2 save the new CA", CONVERGE, |lab| {
        Ok(saved(lab, 1)? != ca_before && saved(lab, 2)? == saved(lab, 1)?)
    })?;

    // What h3 mints from the old CA is refused at once, grace or not.
    let after = rogue::connect_as(&lab, 3, 2, &rogue::RogueCredentials::minted_with(&lab, 3)?)?;
    ensure!(matches!(after, rogue::Reception::Refused(_)), "a minted identity is refused: {after:?}");
    // A listed member's old certificate counts in the grace period, and gets the new key.
    let listed = rogue::connect_as(&lab, 4, 2, &h4_old)?;
    ensure!(listed == rogue::Reception::Kept(Ok(())), "h4's old certificate counts in the grace period: {listed:?}");

    // h4, back within the grace period, switches too.
    lab.start_agent(4, &[])?;
    let took = lab.wait_for("h4 adopts the new CA", CONVERGE, |lab| Ok(token(lab, 4)? == new))?;
    println!("h4, restarted within the grace period, adopted the rotated CA in {took:?}");

    // The old token admits no one; a wiped h3 comes in with the new one as a new node.
    lab.terminate(3)?;
    std::fs::remove_dir_all(lab.data_dir(3))?;
    lab.start_agent(3, &[])?;
    let refused = lab.mesh(3, &["join", &lab.agent_addr(2), "--token", &old])?;
    ensure!(!refused.success, "the old token is refused: {}", refused.stdout);
    lab.mesh_ok(3, &["join", &lab.agent_addr(2), "--token", &new])?;

    // After the grace period only the new CA counts: h4's old certificate
    // is refused, and every member is still up and reachable.
    std::thread::sleep(GRACE.saturating_sub(rotated_at.elapsed()) + Duration::from_secs(1));
    let late = rogue::connect_as(&lab, 4, 2, &h4_old)?;
    ensure!(
        matches!(late, rogue::Reception::Refused(_)),
        "after the grace period an old certificate is refused: {late:?}"
    );
    let all_alive = |lab: &Lab| -> anyhow::Result<bool> {
        Ok([1, 2, 4].iter().all(|&i| {
            lab.members_api(i).is_ok_and(|m| {
                ["h1", "h2", "h4"].iter().all(|name| m.iter().any(|m| m.name == *name && m.status == "alive"))
            })
        }))
    };
    lab.wait_for("h1, h2 and h4 alive everywhere", CONVERGE, all_alive)?;
    let s1 = resolve(&lab, 2, "s2", "s1")?;
    ensure!(!s1.is_empty(), "s1 resolves from s2");
    ensure!(lab.sandbox_exec(2, "s2", "ping", &["-c", "1", "-W", "2", &s1])?.success, "s2 pings s1 at {s1}");
    // A restarted member comes back with the CA it saved.
    lab.terminate(2)?;
    lab.start_agent(2, &[])?;
    let took = lab.wait_for("h2 back everywhere", CONVERGE, all_alive)?;
    println!("after the grace period, a restarted h2 was back in {took:?}");
    Ok(())
}
