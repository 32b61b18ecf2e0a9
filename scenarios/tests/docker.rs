//! Docker on mesh: a real dockerd (Debian's docker.io) in each lab host,
//! using the agent as its network and IPAM driver. `docker network
//! create` on one host is the network on every host; containers reach
//! each other across hosts by name and alias; stopping, removing and
//! restarting behave; bad input to the plugin socket changes nothing.
//! Needs root.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_scenarios::docker::{DockerLab, CONTAINER_LIFETIME, IMAGE};
use mesh_scenarios::{Lab, OUTSIDE_ROUTER};
use serde_json::Value;

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);
/// The one setting dockerd needs: forward names it does not hold to
/// mesh's resolver.
const DNS: &str = "--dns=169.254.53.53";
/// Containers outlive a restart of dockerd.
const LIVE_RESTORE: &str = "--live-restore";

/// A cluster of `n` hosts, each with a dockerd using mesh, and network
/// `dev` made with `docker network create` on host 1.
fn cluster(n: usize) -> anyhow::Result<DockerLab> {
    let mut lab = DockerLab::new(Lab::new(n)?)?;
    lab.form_cluster()?;
    for i in 1..=n {
        lab.start_dockerd(i, &[DNS, LIVE_RESTORE])?;
    }
    lab.docker_ok(1, &["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "dev"])?;
    lab.wait_for("dev in every engine", CONVERGE, |lab| {
        (1..=n).try_fold(true, |ok, i| Ok(ok && lab.docker(i, &["network", "inspect", "dev"])?.success))
    })?;
    Ok(lab)
}

/// Starts a long-running container on host `i`.
fn start(lab: &DockerLab, i: usize, name: &str, aliases: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["run", "-d", "--name", name, "--network", "dev"];
    for alias in aliases {
        args.extend(["--network-alias", alias]);
    }
    args.extend([IMAGE, "sleep", CONTAINER_LIFETIME]);
    lab.docker_ok(i, &args)?;
    Ok(())
}

/// Container `name`'s address and MAC on `dev`, as Docker reports them.
fn address_of(lab: &DockerLab, i: usize, name: &str) -> anyhow::Result<(String, String)> {
    let format = "{{.NetworkSettings.Networks.dev.IPAddress}} {{.NetworkSettings.Networks.dev.MacAddress}}";
    let out = lab.docker_ok(i, &["inspect", "-f", format, name])?;
    let mut parts = out.split_whitespace().map(str::to_owned);
    Ok((parts.next().context("an address")?, parts.next().context("a MAC")?))
}

/// Whether host `i`'s mesh view has endpoint `name` on `dev`.
fn in_view(lab: &Lab, i: usize, name: &str) -> anyhow::Result<bool> {
    let out = lab.mesh(i, &["network", "inspect", "dev", "--format", "json"])?;
    if !out.success {
        return Ok(false);
    }
    let dev: Value = serde_json::from_str(&out.stdout)?;
    Ok(dev["endpoints"].as_array().is_some_and(|e| e.iter().any(|e| e["name"] == name)))
}

/// `ip neigh show` of host `i`'s namespace.
fn neighbours(lab: &Lab, i: usize) -> anyhow::Result<String> {
    Ok(lab.exec(i, "ip", &["neigh", "show"])?.stdout)
}

#[test]
fn containers_on_two_hosts_reach_each_other_by_name_and_go_cleanly() -> anyhow::Result<()> {
    let lab = cluster(2)?;
    let dev: Value = serde_json::from_str(&lab.mesh_ok(2, &["network", "inspect", "dev", "--format", "json"])?)?;
    let inspect =
        lab.docker_ok(2, &["network", "inspect", "-f", "{{.Driver}} {{(index .IPAM.Config 0).Subnet}}", "dev"])?;
    ensure!(
        inspect.trim() == format!("mesh {}", dev["subnet"].as_str().unwrap_or_default()),
        "h2's engine has dev with mesh's subnet: {inspect} vs {dev}"
    );

    lab.attach_outside(1)?;
    start(&lab, 1, "web1", &["svc1"])?;
    let (ip, mac) = address_of(&lab, 1, "web1")?;
    // The outside has no route to mesh's subnets: an answer means host 1
    // masqueraded the ping.
    let out = lab.docker(1, &["exec", "web1", "ping", "-c", "1", "-W", "5", &OUTSIDE_ROUTER.to_string()])?;
    ensure!(out.success, "web1 reaches the outside through its host: {out:?}");
    lab.wait_for("web1 in h2's view", CONVERGE, |lab| in_view(lab, 2, "web1"))?;
    let taken = lab.mesh(1, &["sandbox", "rm", "web1"])?;
    ensure!(!taken.success && taken.stderr.contains("Docker container"), "mesh leaves web1 to Docker: {taken:?}");
    for name in ["svc1", "web1", "web1.dev.mesh"] {
        let ping = lab.docker(2, &["run", "--rm", "--network", "dev", IMAGE, "ping", "-c", "1", "-W", "5", name])?;
        ensure!(ping.success && ping.stdout.contains(&ip), "ping {name} from a new container on h2: {ping:?}");
    }
    start(&lab, 2, "web2", &[])?;
    let ping = lab.docker(2, &["exec", "web2", "ping", "-c", "1", "-W", "5", "svc1"])?;
    ensure!(ping.success && ping.stdout.contains(&ip), "ping svc1 from web2: {ping:?}");
    let fdb = lab.exec(2, "bridge", &["fdb", "show"])?.stdout;
    ensure!(fdb.contains(&mac) && fdb.contains("dst 198.18.0.1"), "h2's FDB points web1 at h1: {fdb}");
    ensure!(neighbours(&lab, 2)?.contains(&format!("{ip} dev")), "h2 has web1's neighbour entry");

    lab.docker_ok(1, &["stop", "-t", "1", "web1"])?;
    lab.wait_for("web1 gone from h2's view and kernel", CONVERGE, |lab| {
        Ok(!in_view(lab, 2, "web1")? && !neighbours(lab, 2)?.contains(&format!("{ip} dev")))
    })?;
    let lookup = lab.docker(2, &["run", "--rm", "--network", "dev", IMAGE, "nslookup", "svc1"])?;
    ensure!(!lookup.success || !lookup.stdout.contains(&ip), "svc1 no longer resolves: {lookup:?}");

    lab.docker_ok(1, &["rm", "web1"])?;
    // Docker ignores a driver's refusal to delete a network: its own copy
    // goes, mesh's network stays (web2 on h2 uses it), and the agent puts
    // the copy back.
    lab.docker_ok(1, &["network", "rm", "dev"])?;
    lab.wait_for("dev back in h1's engine", CONVERGE, |lab| {
        Ok(lab.docker(1, &["network", "inspect", "dev"])?.success)
    })?;
    ensure!(in_view(&lab, 1, "web2")?, "dev and web2 stay in mesh");
    lab.docker_ok(2, &["rm", "-f", "web2"])?;
    lab.wait_for("web2 gone from h1's view", CONVERGE, |lab| Ok(!in_view(lab, 1, "web2")?))?;
    lab.docker_ok(1, &["network", "rm", "dev"])?;
    lab.wait_for("dev gone from every engine and view", CONVERGE, |lab| {
        (1..=2).try_fold(true, |ok, i| {
            Ok(ok
                && !lab.docker(i, &["network", "inspect", "dev"])?.success
                && !lab.mesh(i, &["network", "inspect", "dev"])?.success)
        })
    })?;
    Ok(())
}

#[test]
fn networks_made_with_mesh_appear_in_every_engine_and_names_stay_unique() -> anyhow::Result<()> {
    let lab = cluster(2)?;
    lab.mesh_ok(1, &["network", "create", "shared", "--subnet", "10.33.0.0/24"])?;
    lab.wait_for("shared in every engine", CONVERGE, |lab| {
        (1..=2).try_fold(true, |ok, i| {
            let out = lab
                .docker(i, &["network", "inspect", "-f", "{{.Driver}} {{(index .IPAM.Config 0).Subnet}}", "shared"])?;
            Ok(ok && out.stdout.trim() == "mesh 10.33.0.0/24")
        })
    })?;
    let twice = lab.docker(2, &["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "shared"])?;
    ensure!(!twice.success && twice.stderr.contains("already exists"), "one network per name: {twice:?}");
    let overlapping = lab
        .docker(2, &["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "--subnet", "10.33.0.0/16", "wide"])?;
    ensure!(
        !overlapping.success && overlapping.stderr.contains("overlaps"),
        "overlapping subnet refused: {overlapping:?}"
    );
    let v6 = lab.docker(
        2,
        &["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "--ipv6", "--subnet", "fd00:1::/64", "six"],
    )?;
    ensure!(!v6.success && v6.stderr.contains("IPv4 only"), "IPv6 refused: {v6:?}");
    start(&lab, 2, "c2", &[])?;
    lab.docker_ok(2, &["network", "connect", "--alias", "second", "shared", "c2"])?;
    lab.wait_for("c2 on shared in h1's view", CONVERGE, |lab| {
        let out = lab.mesh(1, &["network", "inspect", "shared", "--format", "json"])?;
        Ok(out.success && out.stdout.contains("\"c2\"") && out.stdout.contains("\"second\""))
    })?;
    lab.docker_ok(2, &["network", "disconnect", "shared", "c2"])?;
    lab.wait_for("c2 off shared, still on dev", CONVERGE, |lab| {
        let shared = lab.mesh_ok(1, &["network", "inspect", "shared", "--format", "json"])?;
        Ok(!shared.contains("\"c2\"") && in_view(lab, 1, "c2")?)
    })?;
    lab.mesh_ok(1, &["network", "rm", "shared"])?;
    lab.wait_for("shared gone from every engine", CONVERGE, |lab| {
        (1..=2).try_fold(true, |ok, i| Ok(ok && !lab.docker(i, &["network", "inspect", "shared"])?.success))
    })?;
    Ok(())
}

#[test]
fn restarting_dockerd_or_the_agent_keeps_containers_connected() -> anyhow::Result<()> {
    let mut lab = cluster(2)?;
    start(&lab, 1, "web1", &[])?;
    start(&lab, 2, "web2", &[])?;
    let reaches = |lab: &DockerLab| -> anyhow::Result<bool> {
        Ok(lab.docker(2, &["exec", "web2", "ping", "-c", "1", "-W", "2", "web1"])?.success)
    };
    lab.wait_for("web2 reaches web1", CONVERGE, |lab| reaches(lab))?;

    lab.stop_dockerd(1)?;
    ensure!(reaches(&lab)?, "web1 answers while its dockerd is down");
    lab.start_dockerd(1, &[DNS, LIVE_RESTORE])?;
    ensure!(reaches(&lab)?, "web1 answers after its dockerd restarted");

    lab.terminate(1)?;
    ensure!(reaches(&lab)?, "web1 answers while its agent is down");
    lab.start_agent(1, &[])?;
    lab.wait_for("h1's agent is back", CONVERGE, |lab| Ok(lab.status_of(2, "h1")?.as_deref() == Some("alive")))?;
    ensure!(reaches(&lab)?, "web1 answers after its agent restarted");
    start(&lab, 1, "web3", &[])?;
    let ping = lab.docker(2, &["exec", "web2", "ping", "-c", "1", "-W", "5", "web3"])?;
    ensure!(ping.success, "a container started after the restart is reachable: {ping:?}");
    Ok(())
}

#[test]
fn docker_opt_encrypted_makes_an_encrypted_network_its_containers_reach_each_other_over() -> anyhow::Result<()> {
    let mut lab = DockerLab::new(Lab::new(2)?)?;
    lab.form_cluster()?;
    for i in 1..=2 {
        lab.start_dockerd(i, &[DNS])?;
    }
    let create = ["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "--opt", "encrypted", "sec"];
    lab.docker_ok(1, &create)?;
    lab.wait_for("sec in h2's engine and mesh", CONVERGE, |lab| {
        Ok(lab.docker(2, &["network", "inspect", "sec"])?.success
            && lab.mesh(2, &["network", "inspect", "sec"])?.success)
    })?;
    let sec: Value = serde_json::from_str(&lab.mesh_ok(2, &["network", "inspect", "sec", "--format", "json"])?)?;
    ensure!(sec["encrypted"] == true, "--opt encrypted made a plaintext network: {sec}");
    for (i, name) in [(1, "enc1"), (2, "enc2")] {
        let args = ["run", "-d", "--name", name, "--network", "sec", IMAGE, "sleep", CONTAINER_LIFETIME];
        lab.docker_ok(i, &args)?;
    }
    lab.wait_for("enc2 pings enc1 by name", CONVERGE, |lab| {
        Ok(lab.docker(2, &["exec", "enc2", "ping", "-c", "1", "-W", "2", "enc1"])?.success)
    })?;
    let fdb = lab.exec(2, "bridge", &["fdb", "show", "dev", &format!("mvx{}", sec["vni"])])?.stdout;
    ensure!(fdb.contains("dst fd6d:6573:6800:1:"), "h2's FDB points enc1 at h1's tunnel address: {fdb}");
    let mtu = lab.docker_ok(2, &["exec", "enc2", "cat", "/sys/class/net/eth0/mtu"])?;
    ensure!(mtu.trim() == "1370", "a container on an encrypted network gets MTU 1370, not {mtu}");
    let bad = lab
        .docker(1, &["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "--opt", "encrypted=maybe", "odd"])?;
    ensure!(!bad.success || !lab.mesh(1, &["network", "inspect", "odd"])?.success, "encrypted=maybe made a network");
    Ok(())
}

/// One raw plugin call on host `i`: status line and body.
fn plugin_call(lab: &Lab, i: usize, call: &str, body: &[u8]) -> anyhow::Result<(String, String)> {
    let mut stream = UnixStream::connect(lab.docker_plugin_dir(i).join("mesh.sock"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head =
        format!("POST /{call} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[test]
fn bad_plugin_input_gets_clear_errors_and_changes_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new(1)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.31.0.0/24"])?;
    let networks = lab.mesh_ok(1, &["network", "ls"])?;

    let (status, body) = plugin_call(&lab, 1, "Plugin.Activate", b"")?;
    ensure!(status.contains("200") && body.contains("NetworkDriver") && body.contains("IpamDriver"), "{status} {body}");
    let id = "ab".repeat(32);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("NetworkDriver.CreateNetwork", b"{not json".to_vec(), "malformed request"),
        ("NetworkDriver.CreateNetwork", vec![0xff, 0x00, 0x13], "malformed request"),
        (
            "NetworkDriver.CreateNetwork",
            br#"{"NetworkID":"../../etc","IPv4Data":[{"Pool":"10.32.0.0/24"}]}"#.to_vec(),
            "malformed network id",
        ),
        (
            "NetworkDriver.CreateNetwork",
            format!(r#"{{"NetworkID":"{id}","IPv4Data":[]}}"#).into_bytes(),
            "exactly one subnet",
        ),
        (
            "NetworkDriver.CreateNetwork",
            format!(r#"{{"NetworkID":"{id}","IPv4Data":[{{"Pool":"10.32.0.1/24"}}]}}"#).into_bytes(),
            "not a network address",
        ),
        ("NetworkDriver.DeleteNetwork", format!(r#"{{"NetworkID":"{id}"}}"#).into_bytes(), "no Docker network"),
        (
            "NetworkDriver.CreateEndpoint",
            format!(r#"{{"NetworkID":"{id}","EndpointID":"{id}","Interface":{{"Address":"10.31.0.9/24"}}}}"#)
                .into_bytes(),
            "no Docker network",
        ),
        (
            "NetworkDriver.Join",
            format!(r#"{{"NetworkID":"{id}","EndpointID":"{id}","SandboxKey":"/x"}}"#).into_bytes(),
            "no endpoint",
        ),
        ("NetworkDriver.Leave", format!(r#"{{"NetworkID":"{id}","EndpointID":"{id}"}}"#).into_bytes(), "no endpoint"),
        (
            "NetworkDriver.DeleteEndpoint",
            format!(r#"{{"NetworkID":"{id}","EndpointID":"{id}"}}"#).into_bytes(),
            "no endpoint",
        ),
        ("IpamDriver.RequestPool", br#"{"Pool":"10.31.0.128/25"}"#.to_vec(), "overlaps mesh network dev"),
        ("IpamDriver.RequestPool", br#"{"Pool":"","V6":true}"#.to_vec(), "IPv4 only"),
        ("IpamDriver.RequestAddress", br#"{"PoolID":"nonsense"}"#.to_vec(), "malformed pool"),
        ("IpamDriver.RequestAddress", br#"{"PoolID":"10.99.0.0/24"}"#.to_vec(), "no mesh network has the pool"),
    ];
    for (call, body, expected) in cases {
        let (status, answer) = plugin_call(&lab, 1, call, &body)?;
        let err: Value = serde_json::from_str(&answer).with_context(|| format!("{call}: {answer}"))?;
        let message = err["Err"].as_str().unwrap_or_default();
        ensure!(
            status.contains("500") && message.contains(expected),
            "{call} {:?}: {status} {answer}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, answer) = plugin_call(&lab, 1, "NetworkDriver.Bogus", b"{}")?;
    ensure!(status.contains("404") && answer.contains("does not implement"), "unknown call: {status} {answer}");

    ensure!(lab.mesh_ok(1, &["network", "ls"])? == networks, "no network was made or removed");
    let bindings = std::fs::read_to_string(lab.data_dir(1).join("docker.json")).unwrap_or_default();
    ensure!(!bindings.contains(&id), "nothing was bound: {bindings}");
    ensure!(lab.mesh(1, &["status"])?.success, "the agent still serves");
    Ok(())
}
