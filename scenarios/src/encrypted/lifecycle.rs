//! The tunnel guard against VXLAN forged on the underlay, peers of hosts
//! that leave or are cut off, and the cluster policy that encrypts every
//! network.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use super::{encryption, ip_of, pings, CONVERGE};
use crate::lab::Lab;

/// The echo requests sandbox `name` on host `i` has received (its
/// kernel's `Icmp: InEchos`).
fn echoes_received(lab: &Lab, i: usize, name: &str) -> anyhow::Result<u64> {
    let snmp = lab.sandbox_exec(i, name, "cat", &["/proc/net/snmp"])?.stdout;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp: "));
    let (header, values) = (icmp.next().context("Icmp header")?, icmp.next().context("Icmp values")?);
    let column = header.split_whitespace().position(|h| h == "InEchos").context("InEchos")?;
    Ok(values.split_whitespace().nth(column).context("InEchos value")?.parse()?)
}

/// On a [`super::cluster`] of two hosts: h1 routes h2's tunnel address
/// over the underlay instead of WireGuard, as an attacker on the path
/// would, and sends VXLAN there with an echo request to s2 inside: h2's
/// tunnel guard counts it and s2 never sees it; with the guard deleted by
/// hand the same packets are answered (so it is the guard that stops
/// them), and the reconciler puts it back.
pub fn vxlan_forged_to_a_tunnel_address_reaches_no_sandbox(lab: &Lab) -> anyhow::Result<()> {
    ensure!(lab.len() == 2, "the story needs two hosts");
    let s2 = ip_of(lab, "sec", "s2")?;
    lab.wait_for("s1 pings s2", CONVERGE, |lab| pings(lab, 1, "s1", &s2))?;
    let link_local = |lab: &Lab, i| lab.exec(i, "ip", &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
    lab.wait_for("the underlay's link-local addresses past DAD", CONVERGE, |lab| {
        (1..=2).try_fold(true, |ok, i| Ok(ok && !link_local(lab, i)?.stdout.contains("tentative")))
    })?;
    let inspect: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", "sec", "--format", "json"])?)?;
    let vni = inspect["vni"].as_u64().context("vni")?;
    let endpoint = inspect["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == "s2"));
    let mac = endpoint.and_then(|e| e["mac"].as_str()).context("s2's MAC")?.replace(':', "");
    let tunnel2 = encryption(lab, 2)?["tunnel"].as_str().context("h2's tunnel address")?.to_owned();
    // h1 routes h2's tunnel address over the underlay instead of WireGuard,
    // as an attacker on the path would, and sends VXLAN there: an echo
    // request to s2 inside.
    let link_local = link_local(lab, 2)?.stdout;
    let via = link_local.split_whitespace().skip_while(|w| *w != "inet6").nth(1).context("h2's link-local")?;
    let via = via.split('/').next().context("address")?.to_owned();
    let routed = lab.exec(1, "ip", &["-6", "route", "add", &format!("{tunnel2}/128"), "via", &via, "dev", "eth0"])?;
    ensure!(routed.success, "route to h2's tunnel address over the underlay: {}", routed.stderr);
    let before = (echoes_received(lab, 2, "s2")?, encryption(lab, 2)?["guard_dropped"].clone());
    let script = format!(
        r#"
import socket, struct
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
src, dst = socket.inet_aton("10.30.0.250"), socket.inet_aton("{s2}")
icmp = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"forged"
icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, src, dst)
ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
frame = bytes.fromhex("{mac}") + bytes.fromhex("02aabbccddee") + b"\x08\x00" + ip + icmp
vxlan = struct.pack("!II", 0x08000000, {vni} << 8) + frame
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(10):
    s.sendto(vxlan, ("{tunnel2}", 4789))
print("sent")
"#
    );
    let sent = lab.exec(1, "python3", &["-c", &script])?;
    ensure!(sent.success, "sending the forged VXLAN failed: {}{}", sent.stdout, sent.stderr);
    std::thread::sleep(Duration::from_millis(500));
    let after = (echoes_received(lab, 2, "s2")?, encryption(lab, 2)?["guard_dropped"].clone());
    println!("h2's tunnel guard: before {}, after {}", before.1, after.1);
    ensure!(after.0 == before.0, "s2 received {} forged echo requests", after.0 - before.0);
    let dropped = |counts: &Value| counts.as_object().map_or(0, |c| c.values().filter_map(Value::as_u64).sum::<u64>());
    ensure!(dropped(&after.1) >= dropped(&before.1) + 10, "h2's guard did not count the forgeries: {}", after.1);
    // Without the guard (deleted by hand) the same packets do reach s2:
    // the guard is what stops them. The reconciler puts it back.
    ensure!(lab.exec(2, "nft", &["delete", "table", "ip6", "mesh"])?.success, "nft delete table ip6 mesh");
    ensure!(lab.exec(1, "python3", &["-c", &script])?.success, "sending again failed");
    lab.wait_for("s2 to answer the forgeries", Duration::from_secs(5), |lab| {
        Ok(echoes_received(lab, 2, "s2")? > after.0)
    })?;
    lab.wait_for("the guard restored", CONVERGE, |lab| {
        Ok(lab.exec(2, "nft", &["list", "table", "ip6", "mesh"])?.success)
    })?;
    // The real path still works.
    ensure!(lab.exec(1, "ip", &["-6", "route", "del", &format!("{tunnel2}/128")])?.success, "route removed");
    ensure!(pings(lab, 1, "s1", &s2)?, "s1 no longer pings s2");
    Ok(())
}

/// On a [`super::cluster`] of three hosts: h3 cut off stays h1's peer
/// through the grace period, then goes, and is back when reconnected; h2,
/// leaving, is no peer at once.
pub fn a_host_that_leaves_is_no_peer_at_once_and_one_cut_off_only_after_the_grace(lab: &Lab) -> anyhow::Result<()> {
    ensure!(lab.len() == 3, "the story needs three hosts");
    lab.wait_for("h1 peers with h2 and h3", CONVERGE, |lab| Ok(encryption(lab, 1)?["peers"] == 2))?;
    // Cut off: h3 stays a peer through the grace period (a host briefly
    // unreachable loses nothing), then goes; back when reconnected.
    lab.cut(3, true)?;
    lab.wait_for("h3 down on h1", Duration::from_secs(60), |lab| {
        Ok(lab.status_of(1, "h3")?.as_deref() == Some("down"))
    })?;
    let down_at = Instant::now();
    ensure!(encryption(lab, 1)?["peers"] == 2, "h3's peer went as soon as it was down");
    lab.wait_for("h3's peer gone from h1", Duration::from_secs(40), |lab| Ok(encryption(lab, 1)?["peers"] == 1))?;
    let kept = down_at.elapsed();
    println!("a down host stayed a WireGuard peer {kept:?} after it was seen down");
    ensure!(kept >= Duration::from_secs(10), "h3's peer went {kept:?} after it was seen down, before the grace period");
    lab.cut(3, false)?;
    lab.wait_for("h3 a peer again", Duration::from_secs(60), |lab| Ok(encryption(lab, 1)?["peers"] == 2))?;
    let s3 = ip_of(lab, "sec", "s3")?;
    lab.wait_for("s1 pings s3 again", CONVERGE, |lab| pings(lab, 1, "s1", &s3))?;
    // A host that leaves is no peer at once.
    lab.mesh_ok(2, &["leave"])?;
    let took = lab.wait_for("h2's peer gone from h1", CONVERGE, |lab| Ok(encryption(lab, 1)?["peers"] == 1))?;
    println!("a host that left stopped being a WireGuard peer after {took:?}");
    Ok(())
}

/// A cluster made with `mesh init --encrypt-networks`: a network created
/// with no flag is encrypted, `--encrypted=false` is refused, and an
/// encrypted bridge network too.
pub fn a_cluster_made_with_encrypt_networks_refuses_plaintext() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    for i in 1..=2 {
        lab.start_agent(i, &[])?;
    }
    let token = lab.mesh_ok(1, &["init", "--encrypt-networks"])?.trim().to_owned();
    lab.mesh_ok(2, &["join", &lab.agent_addr(1), "--token", &token])?;
    lab.wait_for("dev created", CONVERGE, |lab| Ok(lab.mesh(2, &["network", "create", "dev"])?.success))?;
    let dev: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", "dev", "--format", "json"])?)?;
    ensure!(dev["encrypted"] == true, "a network of an --encrypt-networks cluster is plaintext: {dev}");
    let refused = lab.mesh(2, &["network", "create", "open", "--encrypted=false"])?;
    ensure!(!refused.success, "--encrypted=false was taken in an --encrypt-networks cluster");
    ensure!(refused.stderr.contains("encrypts every network"), "unclear refusal: {}", refused.stderr);
    ensure!(!lab.mesh(1, &["network", "inspect", "open"])?.success, "the refused network exists");
    let bridge = lab.mesh(1, &["network", "create", "local", "--driver", "bridge", "--encrypted"])?;
    ensure!(
        !bridge.success && bridge.stderr.contains("only an overlay network"),
        "bridge --encrypted: {}",
        bridge.stderr
    );
    lab.mesh_ok(1, &["sandbox", "create", "a", "--network", "dev"])?;
    lab.mesh_ok(2, &["sandbox", "create", "b", "--network", "dev"])?;
    lab.wait_for("a pings b by name", CONVERGE, |lab| pings(lab, 1, "a", "b"))?;
    Ok(())
}
