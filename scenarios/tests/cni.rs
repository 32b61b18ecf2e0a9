//! CNI on mesh: a real podman (Debian's, CNI backend) on two lab hosts
//! attaches containers through `mesh-cni`; and the plugin itself, run as a
//! runtime runs it, behaves as the CNI spec says. Needs root.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_scenarios::podman::PodmanLab;
use mesh_scenarios::{run, Lab};
use serde_json::{json, Value};

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);

/// Environment variables for the plugin.
type Vars<'a> = [(&'a str, &'a str)];

/// Whether host `i`'s view has endpoint `name` on `dev`, with `alias` if given.
fn in_view(lab: &Lab, i: usize, name: &str, alias: Option<&str>) -> anyhow::Result<bool> {
    let out = lab.mesh(i, &["network", "inspect", "dev", "--format", "json"])?;
    let dev: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    Ok(dev["endpoints"].as_array().is_some_and(|endpoints| {
        endpoints.iter().any(|e| e["name"] == name && alias.is_none_or(|a| e["aliases"].to_string().contains(a)))
    }))
}

/// Runs `mesh-cni` (at `plugin`) with `command`, the environment `env`
/// and `config` on stdin, as a runtime does: whether it exited 0, and its
/// stdout as JSON (null if empty).
fn cni(plugin: &Path, command: &str, env: &[(&str, &str)], config: &Value) -> anyhow::Result<(bool, Value)> {
    let (code, stdout) = cni_raw(plugin, command, env, config.to_string().as_bytes())?;
    let json = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout)? };
    Ok((code == Some(0), json))
}

/// Runs `mesh-cni` with any bytes on stdin: its exit code and stdout.
fn cni_raw(plugin: &Path, command: &str, env: &[(&str, &str)], stdin: &[u8]) -> anyhow::Result<(Option<i32>, String)> {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", plugin.parent().context("plugin dir")?)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The plugin may stop reading at the first byte it cannot parse.
    let _ = child.stdin.take().context("stdin")?.write_all(stdin);
    let out = child.wait_with_output()?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn podman_containers_on_two_hosts_reach_each_other_through_mesh_cni() -> anyhow::Result<()> {
    let mut lab = PodmanLab::new(Lab::new(2)?)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.34.0.0/24"])?;
    lab.wait_for("dev on h2", CONVERGE, |lab| Ok(lab.mesh(2, &["network", "inspect", "dev"])?.success))?;
    for i in 1..=2 {
        lab.prepare(i)?;
        lab.add_network(i, "dev", "dev")?;
    }
    lab.start(1, "web1", "dev", &["--network-alias", "svc1"])?;
    lab.start(2, "web2", "dev", &[])?;
    lab.wait_for("web1 and its alias in h2's view", CONVERGE, |lab| in_view(lab, 2, "web1", Some("svc1")))?;
    let ip1 = lab.podman_ok(1, &["inspect", "-f", "{{.NetworkSettings.Networks.dev.IPAddress}}", "web1"])?;
    let ip1 = ip1.trim().to_owned();
    ensure!(ip1.starts_with("10.34.0."), "podman reports mesh's address: {ip1:?}");
    for target in ["svc1", "web1", ip1.as_str()] {
        let ping = lab.podman(2, &["exec", "web2", "ping", "-c", "1", "-W", "5", target])?;
        ensure!(ping.success && ping.stdout.contains(&ip1), "ping {target} from web2: {ping:?}");
    }

    // CHECK, as the runtime would run it, then with the interface gone.
    let format = "{{.Id}} {{.NetworkSettings.SandboxKey}}";
    let inspect = lab.podman_ok(2, &["inspect", "-f", format, "web2"])?;
    let (id, netns) = inspect.trim().split_once(' ').context("id and sandbox key")?;
    let plugin = lab.cni_bin_dir(2).join("mesh-cni");
    let config = json!({"cniVersion": "1.0.0", "name": "dev", "type": "mesh-cni", "network": "dev",
        "socket": lab.socket(2)});
    let env =
        [("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "K8S_POD_NAME=web2")];
    let (ok, answer) = cni(&plugin, "CHECK", &env, &config)?;
    ensure!(ok && answer.is_null(), "CHECK of a healthy container: {answer}");
    let deleted = run("nsenter", [&format!("--net={netns}"), "ip", "link", "del", "eth0"])?;
    ensure!(deleted.success, "{deleted:?}");
    let (ok, answer) = cni(&plugin, "CHECK", &env, &config)?;
    ensure!(!ok && answer["code"] == 100 && answer["msg"].as_str().is_some_and(|m| m.contains("missing")), "{answer}");

    lab.podman_ok(1, &["rm", "-f", "-t", "0", "web1"])?;
    lab.wait_for("web1 gone from h2's view and kernel", CONVERGE, |lab| {
        let neighbours = lab.exec(2, "ip", &["neigh", "show"])?.stdout;
        Ok(!in_view(lab, 2, "web1", None)? && !neighbours.contains(&format!("{ip1} dev")))
    })?;
    lab.podman_ok(2, &["rm", "-f", "-t", "0", "web2"])?;
    lab.wait_for("web2 gone from h1's view", CONVERGE, |lab| Ok(!in_view(lab, 1, "web2", None)?))?;
    ensure!(lab.mesh_ok(2, &["sandbox", "ls", "--format", "json"])?.trim() == "[]", "no sandbox is left on h2");
    Ok(())
}

#[test]
fn mesh_cni_follows_the_spec() -> anyhow::Result<()> {
    let mut lab = PodmanLab::new(Lab::new(1)?)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.35.0.0/24"])?;
    lab.prepare(1)?;
    let plugin = lab.cni_bin_dir(1).join("mesh-cni");
    let netns_name = lab.sandbox_netns(1, "cnitest");
    run("ip", ["netns", "add", &netns_name])?;
    let netns = format!("/run/netns/{netns_name}");
    let socket = lab.socket(1);
    let config = |version: &str| {
        json!({"cniVersion": version, "name": "dev", "type": "mesh-cni", "network": "dev", "socket": socket,
            "aliases": ["api"]})
    };
    let env = [("CNI_CONTAINERID", "c0ffee0123456789"), ("CNI_NETNS", netns.as_str()), ("CNI_IFNAME", "net1")];

    let (ok, version) = cni(&plugin, "VERSION", &[], &json!({"cniVersion": "1.0.0"}))?;
    ensure!(ok && version == json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}), "{version}");

    let (ok, added) = cni(&plugin, "ADD", &env, &config("0.4.0"))?;
    ensure!(ok && added["cniVersion"] == "0.4.0" && added["ips"][0]["version"] == "4", "ADD 0.4.0: {added}");
    ensure!(added["interfaces"][0]["name"] == "net1" && added["interfaces"][0]["sandbox"] == netns, "{added}");
    ensure!(added["dns"]["nameservers"] == json!(["127.0.0.11"]), "{added}");
    let address = added["ips"][0]["address"].as_str().context("an address")?.to_owned();
    let inside = run("ip", ["-n", &netns_name, "-br", "addr", "show", "net1"])?.stdout;
    ensure!(inside.contains(&address), "net1 in the namespace has {address}: {inside}");
    let (ok, again) = cni(&plugin, "ADD", &env, &config("0.4.0"))?;
    ensure!(ok && again == added, "ADD twice gives the same result: {again}");
    let sandboxes: Value = serde_json::from_str(&lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?)?;
    ensure!(sandboxes.as_array().map(Vec::len) == Some(1), "ADD twice makes one sandbox: {sandboxes}");
    ensure!(sandboxes[0]["name"] == "cni-c0ffee012345", "named from the container id: {sandboxes}");

    let mut checked = config("0.4.0");
    checked["prevResult"] = added.clone();
    let (ok, answer) = cni(&plugin, "CHECK", &env, &checked)?;
    ensure!(ok, "CHECK with prevResult: {answer}");
    checked["prevResult"]["ips"] = json!([]);
    let (ok, answer) = cni(&plugin, "CHECK", &env, &checked)?;
    ensure!(!ok && answer["msg"].as_str().is_some_and(|m| m.contains("prevResult")), "{answer}");

    let (ok, _) = cni(&plugin, "DEL", &env, &config("0.4.0"))?;
    ensure!(ok && lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?.trim() == "[]", "DEL removes the sandbox");
    let (ok, answer) = cni(&plugin, "DEL", &env, &config("0.4.0"))?;
    ensure!(ok && answer.is_null(), "DEL of what is gone succeeds: {answer}");
    let no_netns = [("CNI_CONTAINERID", "ffff0123456789"), ("CNI_IFNAME", "eth0")];
    ensure!(cni(&plugin, "DEL", &no_netns, &config("1.0.0"))?.0, "DEL without a namespace succeeds");

    // Chained after another plugin: mesh's interface and address follow its.
    let mut chained = config("1.0.0");
    chained["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}],
        "ips": [{"address": "192.0.2.9/24", "interface": 0}]});
    let (ok, result) = cni(&plugin, "ADD", &env, &chained)?;
    ensure!(ok && result["interfaces"][1]["name"] == "net1" && result["ips"][1]["interface"] == 1, "{result}");
    ensure!(result["ips"][0]["address"] == "192.0.2.9/24" && result["ips"][1].get("version").is_none(), "{result}");
    ensure!(cni(&plugin, "DEL", &env, &chained)?.0, "DEL");

    // Errors: CNI's JSON on stdout, a non-zero exit, nothing made.
    let mut unreachable = config("1.0.0");
    unreachable["socket"] = json!("/nonexistent/mesh.sock");
    let mut unknown = config("1.0.0");
    unknown["network"] = json!("nope");
    let missing_netns =
        [("CNI_CONTAINERID", "c0ffee0123456789"), ("CNI_NETNS", "/run/netns/mesh-absent"), ("CNI_IFNAME", "eth0")];
    let cases: Vec<(&str, &Vars<'_>, Value, u64)> = vec![
        ("ADD", &env, unreachable, 11),
        ("ADD", &env, unknown, 7),
        ("ADD", &env, json!("not a config"), 6),
        ("ADD", &env, json!({"name": "dev", "type": "mesh-cni", "network": "dev"}), 7),
        ("ADD", &env, json!({"cniVersion": "0.3.1", "name": "dev", "type": "mesh-cni", "network": "dev"}), 1),
        ("ADD", &missing_netns, config("1.0.0"), 3),
        ("ADD", &[("CNI_CONTAINERID", "c0ffee")], config("1.0.0"), 4),
        ("GC", &env, config("1.0.0"), 4),
    ];
    for (command, env, config, code) in cases {
        let (ok, answer) = cni(&plugin, command, env, &config)?;
        ensure!(!ok && answer["code"] == code && answer["msg"].is_string(), "{command} {config}: {answer}");
        ensure!(answer["cniVersion"].is_string(), "errors carry a version: {answer}");
    }
    ensure!(lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?.trim() == "[]", "no error left a sandbox");

    // Hostile stdin: mutations of a valid config. Every run answers with a
    // result or a CNI error, never a panic (exit 101) or nothing.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let valid = config("1.0.0").to_string().into_bytes();
    let mut errors = 0;
    for _ in 0..300 {
        let input = mesh_scenarios::hostile::mutate(&mut rng, &valid);
        let (code, stdout) = cni_raw(&plugin, "ADD", &env, &input)?;
        let answer: Value = serde_json::from_str(&stdout).with_context(|| {
            format!("exit {code:?}, stdout not JSON: {stdout:?} for {:?}", String::from_utf8_lossy(&input))
        })?;
        ensure!(code != Some(101), "mesh-cni panicked on {:?}", String::from_utf8_lossy(&input));
        if code != Some(0) {
            ensure!(answer["code"].is_u64() && answer["msg"].is_string(), "a CNI error: {answer}");
            errors += 1;
        }
    }
    cni(&plugin, "DEL", &env, &config("1.0.0"))?;
    println!("mesh-cni: 300 mutated configs, {errors} refused with a CNI error, none panicked");
    ensure!(lab.mesh_ok(1, &["sandbox", "ls", "--format", "json"])?.trim() == "[]", "nothing left behind");
    Ok(())
}
