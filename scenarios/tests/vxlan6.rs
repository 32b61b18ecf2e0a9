//! VXLAN between IPv6 VTEPs, the first step of the encrypted data plane
//! (DESIGN.md): two lab hosts whose underlay also carries fd00:6d::/64,
//! each programmed by netdev's reconciler itself (no agent), and a sandbox
//! on each pinging the other across the tunnel. Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_netdev::netns;
use mesh_netdev::reconcile::{self, LocalPlan, Mode, NetworkPlan, Reconciler, Remote, Report, Underlay};
use mesh_scenarios::Lab;

/// The network's VNI.
const VNI: u32 = 4646;
/// The device `bridge fdb show` and `ip neigh show` are asked about.
const DEVICE: &str = "mvx4646";

/// Host `i`'s IPv6 underlay address: its VTEP.
fn vtep(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x6d, 0, 0, 0, 0, 0, u16::from(i))
}

/// The overlay address of host `i`'s sandbox.
fn overlay(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 46, 0, i)
}

/// The MAC of host `i`'s sandbox.
fn mac(i: u8) -> [u8; 6] {
    [2, 0x6d, 10, 46, 0, i]
}

/// As `bridge fdb show` prints a MAC.
fn mac_text(i: u8) -> String {
    mac(i).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Host `i`'s sandbox as a remote endpoint of the others.
fn remote(i: u8) -> Remote {
    Remote { mac: mac(i), ip: overlay(i), vtep: IpAddr::V6(vtep(i)) }
}

/// The network on host `i`: its sandbox `s`, and `remotes`.
fn plan(lab: &Lab, i: u8, remotes: Vec<Remote>) -> NetworkPlan {
    NetworkPlan {
        vni: VNI,
        vxlan: true,
        encrypted: false,
        mtu: None,
        bridge_addresses: Vec::new(),
        locals: vec![LocalPlan {
            netns: netns::path_of(&lab.sandbox_netns(usize::from(i), "s")),
            interface: "eth0".into(),
            mac: mac(i),
            address: Some((overlay(i), 24)),
            gateway: None,
        }],
        handoffs: Vec::new(),
        remotes,
    }
}

/// One full pass of the reconciler inside host `i`, its VTEP [`vtep`]`(i)`.
fn reconcile(lab: &Lab, i: u8, plans: Vec<NetworkPlan>) -> anyhow::Result<Report> {
    let underlay = Underlay { local: IpAddr::V6(vtep(i)), port: 4789, tunnel: None };
    let report = netns::run_in(&netns::path_of(lab.netns(usize::from(i))), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(mesh_netdev::NetdevError::Socket)?;
        runtime.block_on(async { Reconciler::open()?.reconcile(underlay, &plans, Mode::Full).await })
    })?;
    Ok(report)
}

/// Whether host `i`'s sandbox gets an answer from `ip`, with `size` bytes
/// of payload and fragmentation forbidden.
fn pings(lab: &Lab, i: u8, ip: Ipv4Addr, size: u32) -> anyhow::Result<bool> {
    let (ip, size) = (ip.to_string(), size.to_string());
    Ok(lab.sandbox_exec(usize::from(i), "s", "ping", &["-c", "1", "-W", "1", "-M", "do", "-s", &size, &ip])?.success)
}

#[test]
fn sandboxes_ping_over_vxlan_between_ipv6_vteps_programmed_entry_by_entry() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    for i in 1..=2u8 {
        let host = lab.netns(usize::from(i)).to_owned();
        let address = format!("{}/64", vtep(i));
        let added = lab.exec(usize::from(i), "ip", &["addr", "add", &address, "dev", "eth0", "nodad"])?;
        ensure!(added.success, "h{i}: cannot add {address} (is IPv6 enabled?): {}", added.stderr);
        let sandbox = netns::create(&lab.sandbox_netns(usize::from(i), "s")).context(host)?;
        reconcile::prepare_sandbox(&sandbox)?;
    }

    // h1 also holds a remote on a host that does not exist (host 3), to
    // be withdrawn below.
    let wanted = |lab: &Lab, i: u8| match i {
        1 => plan(lab, 1, vec![remote(2), remote(3)]),
        _ => plan(lab, 2, vec![remote(1)]),
    };
    for i in 1..=2u8 {
        let report = reconcile(&lab, i, vec![wanted(&lab, i)])?;
        ensure!(report.errors.is_empty(), "h{i}: {:?}", report.errors);
        println!("h{i}: first pass set {} devices and entries", report.set);
    }

    // The device is IPv6 at both ends, with zero UDP checksums.
    let details = lab.exec(1, "ip", &["-d", "link", "show", DEVICE])?.stdout;
    for wanted in [format!("local {}", vtep(1)).as_str(), "udp6zerocsumtx", "udp6zerocsumrx", "nolearning", "mtu 1430"]
    {
        ensure!(details.contains(wanted), "h1's {DEVICE} lacks {wanted:?}: {details}");
    }
    let (fdb, neigh) = lab.vxlan_tables(1, DEVICE)?;
    let line = |i: u8| format!("{} dst {}", mac_text(i), vtep(i));
    println!("h1 bridge fdb show dev {DEVICE}: {fdb:?}");
    ensure!(fdb == [line(2), line(3)].into(), "h1 fdb {fdb:?}");
    ensure!(neigh == [overlay(2).to_string(), overlay(3).to_string()].into(), "h1 neighbours {neigh:?}");

    // A full-size packet crosses (1430 inner bytes in 1500 outer), as IPv6
    // UDP to port 4789 on the underlay.
    lab.spawn(1, "tcpdump", "tcpdump", &["-l", "-n", "-c", "2", "-i", "eth0", "ip6", "and", "udp", "port", "4789"])?;
    std::thread::sleep(Duration::from_millis(500));
    lab.wait_for("h1's sandbox to ping h2's", Duration::from_secs(10), |lab| pings(lab, 1, overlay(2), 56))?;
    ensure!(pings(&lab, 2, overlay(1), 1430 - 28)?, "h2's sandbox pings h1's with 1430-byte packets");
    let log = lab.spawn_log(1, "tcpdump");
    lab.wait_for("tcpdump to see VXLAN over IPv6 with vni 4646", Duration::from_secs(5), |_| {
        let seen = std::fs::read_to_string(&log)?;
        Ok(seen
            .lines()
            .any(|l| l.contains("IP6") && l.contains(&format!("{}.4789", vtep(2))) && l.contains("vni 4646")))
    })?;
    println!("underlay: {}", std::fs::read_to_string(&log)?.lines().find(|l| l.contains("vni")).unwrap_or_default());
    lab.kill_spawned();

    // A second pass changes nothing.
    for i in 1..=2u8 {
        let report = reconcile(&lab, i, vec![wanted(&lab, i)])?;
        ensure!((report.set, report.removed) == (0, 0) && report.errors.is_empty(), "h{i} second pass: {report:?}");
    }

    // Withdrawing host 3 removes its two entries and touches nothing else.
    let report = reconcile(&lab, 1, vec![plan(&lab, 1, vec![remote(2)])])?;
    ensure!((report.set, report.removed) == (0, 2) && report.errors.is_empty(), "h1 withdraws host 3: {report:?}");
    let (fdb, neigh) = lab.vxlan_tables(1, DEVICE)?;
    ensure!(fdb == [line(2)].into() && neigh == [overlay(2).to_string()].into(), "h1 after: {fdb:?} {neigh:?}");
    ensure!(pings(&lab, 1, overlay(2), 56)?, "h1's sandbox still pings h2's");

    // A plan that mixes families is refused before anything of it is made.
    let mixed = NetworkPlan {
        vni: VNI + 1,
        locals: Vec::new(),
        remotes: vec![Remote { vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), ..remote(2) }],
        ..plan(&lab, 1, Vec::new())
    };
    let report = reconcile(&lab, 1, vec![plan(&lab, 1, vec![remote(2)]), mixed])?;
    let refused = report.errors.iter().any(|e| e.contains("vni 4647") && e.contains("family"));
    ensure!(refused && report.errors.len() == 1 && report.set == 0, "mixed families: {report:?}");
    for device in ["mvx4647", "mbr4647"] {
        ensure!(!lab.exec(1, "ip", &["link", "show", device])?.success, "h1 made {device} of a refused plan");
    }
    Ok(())
}
