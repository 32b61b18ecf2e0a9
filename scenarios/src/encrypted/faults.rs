//! Removal, restart, hostile packets, and a host with no way to encrypt.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use super::{dropped, encryption, ip_of, peer_count, pings, wg_peers, WireguardPath, CONVERGE, WIREGUARD_PORT};
use crate::lab::Lab;

/// On a [`super::cluster`] of three hosts on `path` (the story that ends
/// it: h3 goes): h3, pinging s1 at 20 pps, is removed (`mesh remove h3`
/// on h1): on h1 and h2 its WireGuard peer goes within a second of its
/// leaving the member list, and from then on its packets reach no
/// sandbox; the userspace path counts them as dropped (the kernel's
/// WireGuard counts no packet it cannot match to a session).
pub fn a_removed_host_is_no_peer_within_a_second(lab: &mut Lab, path: WireguardPath) -> anyhow::Result<()> {
    ensure!(lab.len() == 3, "the story needs three hosts");
    let s1 = ip_of(lab, "sec", "s1")?;
    let h3_key = encryption(lab, 3)?["public_key"].as_str().context("h3's key")?.to_owned();
    lab.wait_for("s3 pings s1", CONVERGE, |lab| pings(lab, 3, "s3", &s1))?;
    let netns = format!("--net=/run/netns/{}", lab.sandbox_netns(3, "s3"));
    lab.spawn(3, "ping", "nsenter", &[&netns, "ping", "-i", "0.05", "-W", "1", &s1])?;
    lab.mesh_ok(1, &["remove", "h3"])?;
    // For each of h1 and h2: when h3 left its member list, and when its
    // WireGuard peer went.
    let start = Instant::now();
    let mut gone: [Option<Duration>; 2] = [None; 2];
    // When each saw it go, by the clock the agents log with.
    let mut gone_at: [f64; 2] = [0.0; 2];
    let mut unpeered: [Option<Duration>; 2] = [None; 2];
    while (gone.iter().chain(&unpeered).any(Option::is_none)) && start.elapsed() < CONVERGE {
        for (k, i) in [1, 2].into_iter().enumerate() {
            if gone[k].is_none() && lab.members_api(i)?.iter().all(|m| m.name != "h3") {
                gone[k] = Some(start.elapsed());
                gone_at[k] = seconds_of_day(std::time::SystemTime::now());
            }
            if unpeered[k].is_none() && peer_count(lab, i, path)? == 1 {
                unpeered[k] = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (k, (gone, unpeered)) in gone.iter().zip(&unpeered).enumerate() {
        let (Some(gone), Some(unpeered)) = (gone, unpeered) else {
            anyhow::bail!("h{}: h3 not removed ({gone:?}) or still a peer ({unpeered:?}) after {CONVERGE:?}", k + 1);
        };
        println!("{} path: h{}: h3 removed at {gone:?}, its WireGuard peer gone at {unpeered:?}", path.as_str(), k + 1);
        // On the kernel path, by the agent's log: under emulation each
        // poll of the kernel takes most of a second.
        let unpeered = match path {
            WireguardPath::Userspace => unpeered.saturating_sub(*gone),
            WireguardPath::Kernel => {
                let log = lab.log_tail(k + 1, 100);
                let at = log
                    .lines()
                    .filter(|line| line.contains("WireGuard peers removed"))
                    .filter_map(|line| line.get(11..26)?.parse::<Clock>().ok())
                    .map(|Clock(at)| at)
                    .find(|at| *at > gone_at[k] - 1.0)
                    .context("the agent logs no removal of a WireGuard peer")?;
                println!("h{}'s agent removed h3's peer {:.3} s after h3 left its member list", k + 1, at - gone_at[k]);
                Duration::from_secs_f64((at - gone_at[k]).max(0.0))
            }
        };
        ensure!(
            unpeered < Duration::from_secs(1),
            "h3's peer outlived its removal by a second on h{}:\n{}",
            k + 1,
            lab.log_tail(k + 1, 30)
        );
        if path == WireguardPath::Kernel {
            ensure!(!wg_peers(lab, k + 1)?.contains(&h3_key), "h{}'s wg show mwg0 still lists h3", k + 1);
        }
    }
    // From now on h3, still running with its old key, reaches no sandbox.
    let before = dropped(lab, 1)?;
    let sent = lab.sandbox_exec(3, "s3", "ping", &["-c", "10", "-i", "0.1", "-W", "1", &s1])?;
    ensure!(!sent.stdout.contains("bytes from"), "s3 still reaches s1 after h3's removal:\n{}", sent.stdout);
    let after = dropped(lab, 1)?;
    println!("h1 counted {} of h3's packets as dropped: {}", after - before, encryption(lab, 1)?["dropped"]);
    ensure!(after > before || path == WireguardPath::Kernel, "h1 counted none of h3's packets as dropped");
    lab.kill_spawned();
    Ok(())
}

/// A time of day in seconds, from a log line's `HH:MM:SS.ffffff`.
struct Clock(f64);

impl std::str::FromStr for Clock {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut parts = text.splitn(3, ':');
        let mut next = || parts.next().context("HH:MM:SS");
        let (hours, minutes, seconds): (f64, f64, f64) = (next()?.parse()?, next()?.parse()?, next()?.parse()?);
        Ok(Self(hours * 3600.0 + minutes * 60.0 + seconds))
    }
}

/// `time`'s seconds since midnight (UTC, as the agents log).
fn seconds_of_day(time: std::time::SystemTime) -> f64 {
    let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (since.as_secs() % 86_400) as f64 + f64::from(since.subsec_micros()) / 1e6
}

/// On a [`super::cluster`] of two or more hosts on `path`: s1 pings s2 at
/// 20 packets a second for 8 s across a restart of h1's agent. On the
/// kernel path `mwg0` (the same interface) and its peers outlive the
/// agent, so no packet is lost; on the userspace path the gap (no process
/// reads the TUN) is under a second.
pub fn an_agent_restart_keeps_an_encrypted_ping(lab: &mut Lab, path: WireguardPath) -> anyhow::Result<()> {
    let s2 = ip_of(lab, "sec", "s2")?;
    lab.wait_for("s1 pings s2", CONVERGE, |lab| pings(lab, 1, "s1", &s2))?;
    let interface = |lab: &Lab| -> anyhow::Result<String> {
        let shown = lab.exec(1, "ip", &["-o", "link", "show", "mwg0"])?.stdout;
        Ok(shown.split(':').next().unwrap_or_default().to_owned())
    };
    let (index, peers) = (interface(lab)?, wg_peers_if_kernel(lab, path)?);
    let netns = format!("--net=/run/netns/{}", lab.sandbox_netns(1, "s1"));
    lab.spawn(1, "ping", "nsenter", &[&netns, "ping", "-i", "0.05", "-c", "160", "-W", "1", &s2])?;
    std::thread::sleep(Duration::from_secs(2));
    lab.terminate(1)?;
    if path == WireguardPath::Kernel {
        ensure!(interface(lab)? == index, "h1's mwg0 went with its agent");
        ensure!(wg_peers_if_kernel(lab, path)? == peers, "h1's WireGuard peers went with its agent");
    }
    lab.start_agent(1, &[])?;
    let log = lab.spawn_log(1, "ping");
    lab.wait_for("the ping run to end", CONVERGE, |_| Ok(std::fs::read_to_string(&log)?.contains("packet loss")))?;
    let summary = std::fs::read_to_string(&log)?;
    let received = summary
        .lines()
        .find_map(|l| l.split(", ").find_map(|part| part.strip_suffix(" received")))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .context("ping's summary")?;
    let gap = Duration::from_millis(50 * u64::from(160 - received));
    println!("{} path: {} of 160 packets lost across the restart, a gap of {gap:?}", path.as_str(), 160 - received);
    ensure!(interface(lab)? == index, "h1's restarted agent made mwg0 anew");
    lab.wait_for("h1 back", CONVERGE, Lab::all_alive)?;
    let bound = match path {
        WireguardPath::Kernel => Duration::ZERO,
        WireguardPath::Userspace => Duration::from_millis(950),
    };
    ensure!(gap <= bound, "the restart interrupted the encrypted network for {gap:?}:\n{summary}");
    Ok(())
}

/// How many packets host `i`'s `mwg0` has received (decrypted, in from
/// WireGuard), from `/sys/class/net` read inside the host.
fn delivered(lab: &Lab, i: usize) -> anyhow::Result<u64> {
    let read = lab.exec(i, "cat", &["/sys/class/net/mwg0/statistics/rx_packets"])?;
    ensure!(read.success, "h{i}: {}", read.stderr);
    Ok(read.stdout.trim().parse()?)
}

/// `wg show mwg0 peers` of h1 on the kernel path (the userspace path
/// has no `wg` interface to ask).
fn wg_peers_if_kernel(lab: &Lab, path: WireguardPath) -> anyhow::Result<Vec<String>> {
    match path {
        WireguardPath::Kernel => wg_peers(lab, 1),
        WireguardPath::Userspace => Ok(Vec::new()),
    }
}

/// On a [`super::cluster`] of two or more hosts on `path`: from h1 (a
/// host on the path) random datagrams, forged handshake initiations and
/// data messages, and captured real packets replayed, all to h2's
/// WireGuard port: h2 delivers none of them to `mwg0`, the cluster is
/// undisturbed, and the userspace path counts each as dropped (the
/// kernel's WireGuard counts none of them: its `rx_errors` count only
/// packets that decrypt to a bad inner packet).
pub fn garbage_replays_and_forgeries_are_dropped(lab: &mut Lab, path: WireguardPath) -> anyhow::Result<()> {
    let s2 = ip_of(lab, "sec", "s2")?;
    lab.wait_for("s1 pings s2", CONVERGE, |lab| pings(lab, 1, "s1", &s2))?;
    // Capture a few of h1's real WireGuard packets to h2, to replay them.
    let pcap = lab.host_dir(2).join("wireguard.pcap");
    let pcap_text = pcap.to_str().context("utf-8 path")?.to_owned();
    lab.spawn(
        2,
        "capture",
        "tcpdump",
        &["-n", "-c", "5", "-w", &pcap_text, "-i", "eth0", "udp", "dst", "port", WIREGUARD_PORT],
    )?;
    lab.wait_for("tcpdump to listen", CONVERGE, |lab| {
        Ok(std::fs::read_to_string(lab.spawn_log(2, "capture"))?.contains("listening on"))
    })?;
    let five = lab.sandbox_exec(1, "s1", "ping", &["-c", "5", "-i", "0.1", "-W", "1", &s2])?;
    ensure!(five.success, "s1 pings s2 during the capture: {}", five.stdout);
    lab.wait_for("five captured packets", CONVERGE, |_| Ok(std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 200)))?;
    std::thread::sleep(Duration::from_millis(300));
    lab.kill_spawned();
    let before = dropped(lab, 2)?;
    let delivered_before = delivered(lab, 2)?;
    let script = format!(
        r#"
import os, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
to = ("198.18.0.2", {WIREGUARD_PORT})
for n in (1, 4, 32, 148, 1500):
    s.sendto(os.urandom(n), to)
for _ in range(20):
    s.sendto(struct.pack("<I", 1) + os.urandom(144), to)
    s.sendto(struct.pack("<I", 4) + os.urandom(60), to)
data = open("{pcap_text}", "rb").read()
link = struct.unpack("<I", data[20:24])[0]
offset, replayed = 24, 0
while offset + 16 <= len(data):
    length = struct.unpack("<I", data[offset + 8:offset + 12])[0]
    frame = data[offset + 16:offset + 16 + length]
    offset += 16 + length
    ip = frame[14:] if link == 1 else frame
    header = (ip[0] & 15) * 4
    s.sendto(ip[header + 8:], to)
    replayed += 1
print("replayed", replayed)
"#
    );
    let sent = lab.exec(1, "python3", &["-c", &script])?;
    ensure!(
        sent.success && sent.stdout.contains("replayed 5"),
        "sending the garbage failed: {}{}",
        sent.stdout,
        sent.stderr
    );
    match path {
        WireguardPath::Userspace => {
            lab.wait_for("h2 to count the garbage", CONVERGE, |lab| Ok(dropped(lab, 2)? >= before + 45))?;
        }
        // Nothing to wait for: let the kernel's queues drain.
        WireguardPath::Kernel => std::thread::sleep(Duration::from_secs(2)),
    }
    let (counted, got) = (dropped(lab, 2)? - before, delivered(lab, 2)? - delivered_before);
    println!("{} path: h2 counted {counted} packets as dropped, mwg0 received {got}", path.as_str());
    println!("h2: {}", encryption(lab, 2)?);
    println!("h2: {}", lab.exec(2, "ip", &["-s", "-s", "link", "show", "mwg0"])?.stdout);
    // 50 hostile packets; a keepalive or two may come in meanwhile.
    ensure!(got < 5, "h2's mwg0 took {got} packets in while the hostile ones came");
    // The cluster is undisturbed.
    ensure!(pings(lab, 1, "s1", &s2)?, "s1 no longer pings s2");
    ensure!(lab.all_alive()?, "a member is no longer alive");
    Ok(())
}

/// Two hosts; h2 restarts with the userspace path forced and a TUN device
/// that does not exist: it has no encrypted path, says why, and refuses a
/// sandbox on an encrypted network, leaving no device or namespace.
pub fn a_host_with_no_way_to_encrypt_refuses_sandboxes() -> anyhow::Result<()> {
    let mut lab = Lab::converged(2)?;
    lab.terminate(2)?;
    lab.start_agent(2, &["--wireguard", "userspace", "--tun-device", "/nonexistent/tun"])?;
    lab.wait_for("h2 back", CONVERGE, Lab::all_alive)?;
    let status = encryption(&lab, 2)?;
    ensure!(status["path"] == "none", "h2 has no TUN device: {status}");
    ensure!(
        status["reason"].as_str().is_some_and(|r| r.contains("/nonexistent/tun")),
        "the reason names the device: {status}"
    );
    lab.wait_for("sec created", CONVERGE, |lab| {
        Ok(lab.mesh(1, &["network", "create", "sec", "--encrypted", "--subnet", "10.30.0.0/24"])?.success)
    })?;
    lab.wait_for("sec on h2", CONVERGE, |lab| Ok(lab.mesh(2, &["network", "inspect", "sec"])?.success))?;
    let refused = lab.mesh(2, &["sandbox", "create", "s2", "--network", "sec"])?;
    ensure!(!refused.success, "h2 made a sandbox on an encrypted network with no way to encrypt");
    ensure!(refused.stderr.contains("cannot carry encrypted networks"), "unclear refusal: {}", refused.stderr);
    let inspect: Value = serde_json::from_str(&lab.mesh_ok(2, &["network", "inspect", "sec", "--format", "json"])?)?;
    let device = format!("mvx{}", inspect["vni"]);
    ensure!(!lab.exec(2, "ip", &["link", "show", &device])?.success, "h2 built {device} all the same");
    ensure!(
        !lab.exec(2, "ip", &["netns", "list"])?.stdout.contains(&lab.sandbox_netns(2, "s2")),
        "s2's namespace is left"
    );
    Ok(())
}
