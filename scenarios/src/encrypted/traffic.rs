//! What crosses the underlay, and hosts on the two paths side by side.

use std::time::Duration;

use anyhow::ensure;
use serde_json::Value;

use super::{create_sec, everywhere, expect_path, ip_of, pings, WireguardPath, CONVERGE, WIREGUARD_PORT};
use crate::lab::{Lab, AGENT_PORT};

/// What h1's underlay carries, gossip aside, while sandbox `from` on h2
/// sends `marker` over TCP to sandbox `to` on h1 (at `to_ip`): tcpdump's
/// text, with payloads in ASCII, once it shows `carrier` (the text of the
/// packets that carry the marker). Checks that the marker arrived.
fn capture_marker(lab: &mut Lab, [from, to, to_ip]: [&str; 3], marker: &str, carrier: &str) -> anyhow::Result<String> {
    let capture = format!("capture-{to}");
    let filter = format!("udp and not port {AGENT_PORT}");
    lab.spawn(1, &capture, "tcpdump", &["-l", "-n", "-A", "-i", "eth0", &filter])?;
    let listener = format!("nc-{to}");
    let netns = lab.sandbox_netns(1, to);
    lab.spawn_in(1, &netns, &listener, "busybox", &["nc", "-l", "-p", "7777"])?;
    // tcpdump and nc take a while to start (longer under emulation).
    lab.wait_for("tcpdump to listen", CONVERGE, |lab| {
        Ok(std::fs::read_to_string(lab.spawn_log(1, &capture))?.contains("listening on"))
    })?;
    std::thread::sleep(Duration::from_millis(700));
    let send = format!("echo {marker} | busybox nc -w 2 {to_ip} 7777");
    let sent = lab.sandbox_exec(2, from, "sh", &["-c", &send])?;
    ensure!(sent.success, "{from} could not send to {to}: {}", sent.stderr);
    let received = lab.spawn_log(1, &listener);
    lab.wait_for("the marker to arrive", CONVERGE, |_| Ok(std::fs::read_to_string(&received)?.contains(marker)))?;
    // tcpdump prints late under emulation.
    let log = lab.spawn_log(1, &capture);
    lab.wait_for(&format!("tcpdump to show {carrier}"), CONVERGE, |_| {
        Ok(std::fs::read_to_string(&log)?.contains(carrier))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_spawned();
    Ok(std::fs::read_to_string(lab.spawn_log(1, &capture))?)
}

/// On a [`super::cluster`] of three hosts on `path`: sandboxes on the
/// encrypted network ping each other by name, the network's MTU is 1370
/// and shown with its sum; the underlay carries only WireGuard for it (no
/// VXLAN, never the marker sent inside), while a plaintext network beside
/// it (`plain`, 10.31.0.0/24, sandboxes `p1` and `p2`) shows VXLAN and its
/// marker; the two networks do not reach each other.
pub fn the_underlay_shows_only_wireguard(lab: &mut Lab, path: WireguardPath) -> anyhow::Result<()> {
    ensure!(lab.len() >= 3, "the story needs three hosts");
    lab.mesh_ok(1, &["network", "create", "plain", "--subnet", "10.31.0.0/24"])?;
    everywhere(lab, "plain")?;
    for i in 1..=2 {
        lab.mesh_ok(i, &["sandbox", "create", &format!("p{i}"), "--network", "plain"])?;
    }
    let took = lab.wait_for("s2 pings s1 by name", CONVERGE, |lab| pings(lab, 2, "s2", "s1"))?;
    println!("{} path: s2 pings s1 by name over the encrypted network after {took:?}", path.as_str());
    for (i, j) in [(1, 3), (3, 2)] {
        let target = format!("s{j}");
        lab.wait_for(&format!("s{i} pings {target}"), CONVERGE, |lab| pings(lab, i, &format!("s{i}"), &target))?;
    }

    let inspect: Value = serde_json::from_str(&lab.mesh_ok(2, &["network", "inspect", "sec", "--format", "json"])?)?;
    ensure!(inspect["encrypted"] == true, "inspect does not say encrypted: {inspect}");
    ensure!(inspect["mtu_effective"] == 1370, "the MTU over a 1500-byte IPv4 underlay is 1370: {inspect}");
    ensure!(
        inspect["mtu_from"] == "underlay 1500 - WireGuard 60 - VXLAN/IPv6 70",
        "inspect shows how the MTU is made: {inspect}"
    );
    let details = lab.exec(2, "ip", &["-d", "link", "show", &format!("mvx{}", inspect["vni"])])?.stdout;
    ensure!(details.contains("mtu 1370") && details.contains("local fd6d:6573:6800:1:"), "h2's device: {details}");

    let marker = format!("mesh-marker-{:08x}", std::process::id());
    let s1 = ip_of(lab, "sec", "s1")?;
    let wireguard = format!(".{WIREGUARD_PORT}: UDP");
    let encrypted = capture_marker(lab, ["s2", "s1", &s1], &marker, &wireguard)?;
    ensure!(encrypted.contains(&format!(".{WIREGUARD_PORT}: UDP")), "no WireGuard on the underlay:\n{encrypted}");
    ensure!(!encrypted.contains(".4789: "), "VXLAN on the underlay of an encrypted network:\n{encrypted}");
    ensure!(!encrypted.contains(&marker), "the marker crossed the underlay in the clear:\n{encrypted}");
    let datagrams = encrypted.lines().filter(|l| l.contains(&format!(".{WIREGUARD_PORT}: UDP"))).count();
    println!("encrypted: {datagrams} WireGuard datagrams on the underlay, no VXLAN, no marker");

    // The same check on the plaintext network finds what it looks for.
    let p1 = ip_of(lab, "plain", "p1")?;
    lab.wait_for("p2 pings p1", CONVERGE, |lab| pings(lab, 2, "p2", &p1))?;
    let plain_marker = format!("{marker}-plain");
    let plaintext = capture_marker(lab, ["p2", "p1", &p1], &plain_marker, &plain_marker)?;
    ensure!(plaintext.contains(".4789: VXLAN"), "no VXLAN on the plaintext network's underlay:\n{plaintext}");
    ensure!(plaintext.contains(&plain_marker), "the plaintext marker was not seen:\n{plaintext}");
    println!("plaintext: VXLAN on the underlay and the marker in it");

    // Side by side, the two networks do not reach each other.
    ensure!(!pings(lab, 2, "s2", &p1)?, "s2 on sec reached p1 on plain");
    ensure!(!pings(lab, 2, "p2", &s1)?, "p2 on plain reached s1 on sec");
    Ok(())
}

/// Needs kernel WireGuard. h1 on the kernel path and h2 on the agent's
/// own (`--wireguard userspace`) share an encrypted network: s1 and s2
/// ping each other by name. Then h2's agent restarts with the default
/// (`auto`): it replaces the TUN `mwg0` its userspace run left with a
/// kernel one, and the two still ping.
pub fn a_kernel_host_and_a_userspace_host_share_an_encrypted_network() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    lab.start_agent(1, &[])?;
    lab.start_agent(2, &["--wireguard", "userspace"])?;
    let token = lab.mesh_ok(1, &["init"])?.trim().to_owned();
    lab.mesh_ok(2, &["join", &lab.agent_addr(1), "--token", &token])?;
    lab.wait_for("all alive", CONVERGE, Lab::all_alive)?;
    create_sec(&lab)?;
    for i in 1..=2 {
        lab.mesh_ok(i, &["sandbox", "create", &format!("s{i}"), "--network", "sec"])?;
    }
    expect_path(&lab, 1, WireguardPath::Kernel)?;
    expect_path(&lab, 2, WireguardPath::Userspace)?;
    let kind = |lab: &Lab| -> anyhow::Result<String> { Ok(lab.exec(2, "ip", &["-d", "link", "show", "mwg0"])?.stdout) };
    ensure!(kind(&lab)?.contains("tun type tun"), "h2's mwg0 is no TUN:\n{}", kind(&lab)?);
    for (i, j) in [(1, 2), (2, 1)] {
        let took = lab.wait_for(&format!("s{i} pings s{j} by name"), CONVERGE, |lab| {
            pings(lab, i, &format!("s{i}"), &format!("s{j}"))
        })?;
        println!("h{i} ({}) to h{j}: s{i} pings s{j} by name after {took:?}", ["kernel", "userspace"][i - 1]);
    }

    lab.terminate(2)?;
    lab.start_agent(2, &[])?;
    lab.wait_for("h2 back", CONVERGE, Lab::all_alive)?;
    expect_path(&lab, 2, WireguardPath::Kernel)?;
    let shown = kind(&lab)?;
    ensure!(shown.contains("wireguard") && !shown.contains("tun type"), "h2's mwg0 was not replaced:\n{shown}");
    let took = lab.wait_for("s2 pings s1 over kernel WireGuard", CONVERGE, |lab| pings(lab, 2, "s2", "s1"))?;
    println!("h2's TUN mwg0 replaced by a kernel one; s2 pings s1 again after {took:?}");
    ensure!(pings(&lab, 1, "s1", "s2")?, "s1 no longer pings s2");
    let log = lab.log_tail(2, 200);
    ensure!(log.contains("replaced"), "h2's log does not say it replaced the TUN:\n{log}");
    Ok(())
}
