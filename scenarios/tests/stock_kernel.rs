//! Debian's stock kernel, the kind mesh's hosts run: this machine runs a
//! small 6.18 without WireGuard, IPsec or IPVS, so `scripts/kernel-vm.sh`
//! boots Debian's (6.1, with all three as modules) under qemu, and the
//! demo's whole story runs inside it unchanged: three agents, init, join,
//! a network, svc2 pinging svc1 by name over VXLAN, the entries shown. It
//! is also where the kernel-only paths are tested: kernel WireGuard, whose
//! test is one of this binary's, ignored here and run inside the VM.
//! Needs root, and `scripts/kernel-vm.sh prepare` (`scripts/test.sh` runs it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_netdev::wg_genl::DeviceState;
use mesh_netdev::wg_kernel::{KernelWireguard, WireguardDevice, WireguardReport};
use mesh_netdev::wireguard::{self, Mode, Peer, INTERFACE};
use mesh_netdev::{netns, NetdevError};
use mesh_scenarios::encrypted::{self, WireguardPath};
use mesh_scenarios::{host_ip, Lab};

#[test]
fn the_demo_runs_on_debians_stock_kernel_in_a_vm() -> anyhow::Result<()> {
    mesh_scenarios::require_root()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kernel-vm.sh");
    let script = script.to_str().context("utf-8 path")?;
    let host = mesh_scenarios::run("uname", ["-r"])?.stdout.trim().to_owned();
    let run = mesh_scenarios::run(
        script,
        [
            "--mem",
            "3072",
            "--",
            "bash",
            "-c",
            "echo \"guest kernel: $(uname -r)\" && exec \"$0\" demo",
            env!("CARGO_BIN_EXE_mesh-lab"),
        ],
    )?;
    ensure!(run.success, "the demo in the VM failed:\n{}\n{}", run.stdout, run.stderr);
    let guest = run
        .stdout
        .lines()
        .find_map(|line| line.split_once("guest kernel: ").map(|(_, version)| version.trim()))
        .context("the guest's uname -r")?;
    eprintln!("host kernel {host}, guest kernel {guest}");
    ensure!(guest != host, "the VM ran this machine's kernel ({host}), not Debian's");
    ensure!(run.stdout.contains("bytes from svc1"), "svc2 did not ping svc1 by name in the VM:\n{}", run.stdout);
    ensure!(run.stdout.contains("VXLAN, flags"), "tcpdump saw no VXLAN on the VM's underlay:\n{}", run.stdout);
    ensure!(run.stdout.contains("dst 198.18.0.1 self permanent"), "no FDB entry to h1 in the VM:\n{}", run.stdout);
    Ok(())
}

/// RFC 7748's two X25519 key pairs (§6.1), as hosts 1 and 2: private
/// (which the kernel clamps), public.
const KEYS: [([u8; 32], [u8; 32]); 2] = [
    (
        hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
    ),
    (
        hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
    ),
];

/// 64 hex digits as 32 bytes.
const fn hex(text: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'a' + 10,
        }
    }
    let (text, mut out, mut i) = (text.as_bytes(), [0u8; 32], 0);
    while i < 32 {
        out[i] = digit(text[2 * i]) << 4 | digit(text[2 * i + 1]);
        i += 1;
    }
    out
}

/// Host `i`'s tunnel address, from a node id of sixteen `i`s.
fn tunnel(i: u8) -> Ipv6Addr {
    wireguard::tunnel_address(&[i; 16])
}

/// Host `i` (1 or 2) as the other's peer, its WireGuard at `ip`.
fn peer(i: u8, ip: Ipv4Addr) -> Peer {
    Peer { public_key: KEYS[usize::from(i) - 1].1, endpoint: SocketAddr::from((ip, 51820)), tunnel: tunnel(i) }
}

/// Host `i`'s `mwg0` as wanted, with `peers`.
fn device(i: u8, peers: Vec<Peer>) -> WireguardDevice {
    WireguardDevice {
        private_key: KEYS[usize::from(i) - 1].0,
        port: wireguard::DEFAULT_PORT,
        address: tunnel(i),
        mtu: wireguard::interface_mtu(1500, IpAddr::V4(host_ip(1))),
        peers,
    }
}

/// Runs `work` with the kernel WireGuard of host `i` (opened inside it).
fn with_wireguard<R, F, Fut>(lab: &Lab, i: u8, work: F) -> anyhow::Result<R>
where
    R: Send + 'static,
    F: FnOnce(KernelWireguard) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, NetdevError>>,
{
    let path = netns::path_of(lab.netns(usize::from(i)));
    Ok(netns::run_in(&path, move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetdevError::Socket)?;
        runtime.block_on(async { work(KernelWireguard::open().await?).await })
    })?)
}

/// One pass on host `i` towards `device(i, peers)`.
fn reconcile(lab: &Lab, i: u8, peers: Vec<Peer>, mode: Mode) -> anyhow::Result<WireguardReport> {
    let desired = device(i, peers);
    let report = with_wireguard(lab, i, move |wg| async move { wg.reconcile(&desired, mode).await })?;
    ensure!(report.errors.is_empty(), "h{i}: {:?}", report.errors);
    Ok(report)
}

/// Host `i`'s `mwg0` as its kernel holds it.
fn dump(lab: &Lab, i: u8) -> anyhow::Result<DeviceState> {
    with_wireguard(lab, i, |wg| async move { wg.device().await })
}

/// Whether host `i` gets an answer from host `to` through the tunnel.
fn pings(lab: &Lab, i: u8, to: u8) -> anyhow::Result<bool> {
    Ok(lab.exec(usize::from(i), "ping", &["-6", "-c", "1", "-W", "2", &tunnel(to).to_string()])?.success)
}

/// Does this machine's kernel have WireGuard (loaded, built in, or as a
/// module)?
fn kernel_has_wireguard() -> bool {
    Path::new("/sys/module/wireguard").exists()
        || mesh_scenarios::run("modprobe", ["-n", "-q", "wireguard"]).is_ok_and(|out| out.success)
}

#[test]
fn a_kernel_without_wireguard_is_told_apart_from_other_errors() -> anyhow::Result<()> {
    if kernel_has_wireguard() {
        eprintln!("this kernel has WireGuard: nothing to tell apart here");
        return Ok(());
    }
    let lab = Lab::new(1)?;
    let path = netns::path_of(lab.netns(1));
    let opened = netns::run_in(&path, || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetdevError::Socket)?;
        runtime.block_on(async { KernelWireguard::open().await.map(drop) })
    });
    ensure!(matches!(opened, Err(NetdevError::NoKernelWireguard(_))), "{opened:?}");
    println!("{:#}", anyhow::Error::from(opened.err().context("an error")?));
    Ok(())
}

/// The ignored tests of this binary: the kernel-path tests, run inside
/// the VM by [`kernel_wireguard_runs_on_debians_stock_kernel_in_a_vm`].
const IN_THE_VM: usize = 3;

#[test]
fn kernel_wireguard_runs_on_debians_stock_kernel_in_a_vm() -> anyhow::Result<()> {
    mesh_scenarios::require_root()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kernel-vm.sh");
    let script = script.to_str().context("utf-8 path")?;
    // This very test binary, run inside the VM for its ignored tests only,
    // one at a time (two labs at once under emulation on 2 cores would
    // time each other out).
    let me = std::env::current_exe()?;
    let me = me.to_str().context("utf-8 path")?;
    let started = std::time::Instant::now();
    let run =
        mesh_scenarios::run(script, ["--mem", "3072", "--", me, "--ignored", "--nocapture", "--test-threads", "1"])?;
    println!("{}", run.stdout);
    println!("the VM ran the kernel-path tests in {:?}", started.elapsed());
    ensure!(run.success, "a kernel-path test failed in the VM:\n{}\n{}", run.stdout, run.stderr);
    let passed = format!("test result: ok. {IN_THE_VM} passed");
    ensure!(run.stdout.contains(&passed), "not every kernel-path test ran in the VM:\n{}", run.stdout);
    Ok(())
}

#[test]
#[ignore = "needs kernel WireGuard: run inside scripts/kernel-vm.sh"]
fn on_kernel_wireguard_three_hosts_share_an_encrypted_network_through_garbage_a_restart_and_a_removal(
) -> anyhow::Result<()> {
    // The stories of tests/encryption.rs, on one cluster: forming one
    // takes a minute under emulation. The removal ends it.
    let path = WireguardPath::Kernel;
    let mut lab = encrypted::cluster(3, path)?;
    encrypted::the_underlay_shows_only_wireguard(&mut lab, path)?;
    encrypted::garbage_replays_and_forgeries_are_dropped(&mut lab, path)?;
    encrypted::an_agent_restart_keeps_an_encrypted_ping(&mut lab, path)?;
    encrypted::a_removed_host_is_no_peer_within_a_second(&mut lab, path)
}

#[test]
#[ignore = "needs kernel WireGuard: run inside scripts/kernel-vm.sh"]
fn a_kernel_host_and_a_userspace_host_share_an_encrypted_network() -> anyhow::Result<()> {
    encrypted::a_kernel_host_and_a_userspace_host_share_an_encrypted_network()
}

#[test]
#[ignore = "needs kernel WireGuard: run inside scripts/kernel-vm.sh"]
fn kernel_wireguard_peers_are_added_updated_and_removed_never_flushed() -> anyhow::Result<()> {
    let lab = Lab::new(2)?;
    let (key2, moved) = (KEYS[1].1, Ipv4Addr::new(198, 18, 0, 202));

    // Each host's mwg0, with the other as its peer: interface MTU and up,
    // address, key, port, peer.
    for (i, other) in [(1, 2), (2, 1)] {
        let report = reconcile(&lab, i, vec![peer(other, host_ip(usize::from(other)))], Mode::Full)?;
        ensure!((report.set, report.removed) == (5, 0), "h{i} first pass: {report:?}");
    }
    let shown = lab.exec(1, "ip", &["-d", "addr", "show", "dev", INTERFACE])?.stdout;
    for wanted in ["wireguard", "mtu 1440", &format!("inet6 {}/64", tunnel(1))] {
        ensure!(shown.contains(wanted), "h1's {INTERFACE} lacks {wanted:?}:\n{shown}");
    }
    lab.wait_for("h1 to ping h2's tunnel address", Duration::from_secs(60), |lab| pings(lab, 1, 2))?;
    ensure!(pings(&lab, 2, 1)?, "h2 pings h1's tunnel address");
    let before = dump(&lab, 1)?.peers.get(&key2).cloned().context("h1 lost its peer h2")?;
    ensure!(before.last_handshake.is_some(), "no handshake with h2: {before:?}");

    // A second pass changes nothing.
    for (i, other) in [(1, 2), (2, 1)] {
        let report = reconcile(&lab, i, vec![peer(other, host_ip(usize::from(other)))], Mode::Full)?;
        ensure!((report.set, report.removed) == (0, 0), "h{i} second pass: {report:?}");
    }

    // h2 moves to another underlay address: h1 updates the peer in place,
    // keeping its session (a peer made anew has no handshake and no bytes).
    let added = lab.exec(2, "ip", &["addr", "add", &format!("{moved}/15"), "dev", "eth0"])?;
    ensure!(added.success, "h2: {}", added.stderr);
    let report = reconcile(&lab, 1, vec![peer(2, moved)], Mode::Full)?;
    ensure!((report.set, report.removed) == (1, 0), "h1 endpoint change: {report:?}");
    let after = dump(&lab, 1)?.peers.get(&key2).cloned().context("h1 lost its peer h2")?;
    ensure!(after.endpoint == Some(SocketAddr::from((moved, 51820))), "endpoint not updated: {after:?}");
    ensure!(
        after.last_handshake == before.last_handshake && after.rx_bytes >= before.rx_bytes,
        "the peer was made anew: before {before:?}, after {after:?}"
    );
    lab.wait_for("h1 to ping h2 at its new endpoint", Duration::from_secs(30), |lab| pings(lab, 1, 2))?;

    // A third peer comes; when it goes, AddOnly keeps it and Full removes
    // only it.
    let third = Peer { public_key: [0x33; 32], endpoint: SocketAddr::from((host_ip(3), 51820)), tunnel: tunnel(3) };
    let report = reconcile(&lab, 1, vec![peer(2, moved), third], Mode::Full)?;
    ensure!((report.set, report.removed) == (1, 0), "h1 adds a peer: {report:?}");
    let report = reconcile(&lab, 1, vec![peer(2, moved)], Mode::AddOnly)?;
    ensure!((report.set, report.removed) == (0, 0), "AddOnly removed something: {report:?}");
    ensure!(dump(&lab, 1)?.peers.len() == 2, "AddOnly kept both peers");
    let report = reconcile(&lab, 1, vec![peer(2, moved)], Mode::Full)?;
    ensure!((report.set, report.removed) == (0, 1), "h1 removes the third peer: {report:?}");
    let peers = dump(&lab, 1)?.peers;
    let kept = peers.get(&key2).context("h1 removed h2 too")?;
    ensure!(peers.len() == 1 && kept.last_handshake >= before.last_handshake, "h1's peers: {peers:?}");

    // A peer added by hand goes at the next full pass.
    let by_hand = format!("wg set {INTERFACE} peer $(wg genkey | wg pubkey) allowed-ips {}/128", tunnel(9));
    let added = lab.exec(1, "sh", &["-c", &by_hand])?;
    ensure!(added.success, "wg set: {}", added.stderr);
    ensure!(dump(&lab, 1)?.peers.len() == 2, "the peer added by hand is there");
    let report = reconcile(&lab, 1, vec![peer(2, moved)], Mode::Full)?;
    ensure!((report.set, report.removed) == (0, 1), "h1 removes the peer added by hand: {report:?}");

    // What `wg` shows, and the interface outlives every connection to it.
    let shown = lab.exec(1, "wg", &["show", INTERFACE])?.stdout;
    println!("h1 wg show {INTERFACE}:\n{shown}");
    ensure!(shown.contains(&format!("endpoint: {moved}:51820")) && shown.contains("latest handshake"), "{shown}");
    ensure!(shown.matches("peer: ").count() == 1, "h1 has one peer: {shown}");
    let stats = with_wireguard(&lab, 1, |wg| async move { wg.stats().await })?;
    println!("h1 stats: {stats:?}");
    ensure!(stats.peers == 1 && stats.rx_bytes > 0 && stats.handshakes.get(&key2).is_some_and(Option::is_some));
    ensure!(pings(&lab, 2, 1)?, "h2 still pings h1 after every pass");
    Ok(())
}
