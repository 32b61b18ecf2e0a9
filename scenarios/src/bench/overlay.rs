//! Throughput across the overlay: iperf3 between sandboxes on two lab
//! hosts (mesh's bridge, veth and VXLAN device), beside iperf3 over a
//! VXLAN pair built by hand with `ip` between the same hosts, and over the
//! raw underlay, in the same run. The agent is not in the data path, so
//! the overlay should match the hand-built pair.

use std::time::Duration;

use super::iperf::{self, checked, on_machine, Path};
use super::median;
use super::report::{Better, Figure};
use crate::lab::Lab;

/// Measures for `seconds` each (three rounds) and prints the table.
pub fn run(seconds: u32) -> anyhow::Result<Vec<Figure>> {
    let mut lab = Lab::new(2)?;
    println!("overlay throughput on 2 lab hosts, {seconds} s per figure");
    lab.form_cluster()?;
    lab.wait_for("both alive", Duration::from_secs(30), |lab| {
        Ok(lab.members_api(1)?.iter().filter(|m| m.status == "alive").count() == 2)
    })?;
    lab.mesh_ok(1, &["network", "create", "bench", "--subnet", "10.77.0.0/24", "--vni", "7777"])?;
    lab.wait_for("the network on h2", Duration::from_secs(30), |lab| {
        Ok(lab.mesh(2, &["network", "inspect", "bench"])?.success)
    })?;
    lab.mesh_ok(1, &["sandbox", "create", "client", "--network", "bench", "--ip", "10.77.0.10"])?;
    lab.mesh_ok(2, &["sandbox", "create", "server", "--network", "bench", "--ip", "10.77.0.20"])?;

    // The hand-built pair: the same path as mesh's (a namespace, a veth,
    // a bridge, a VXLAN device) made with `ip`, with no agent involved.
    for (i, local, remote) in [(1, "198.18.0.1", "198.18.0.2"), (2, "198.18.0.2", "198.18.0.1")] {
        let hand = lab.sandbox_netns(i, "hand");
        let address = format!("10.88.0.{i}/24");
        checked("ip", &["netns", "add", &hand], on_machine)?;
        let in_host: [&[&str]; 6] = [
            &["link", "add", "hbr", "type", "bridge"],
            &["link", "set", "hbr", "up"],
            &[
                "link", "add", "hvx", "type", "vxlan", "id", "8888", "local", local, "remote", remote, "dstport",
                "4799", "dev", "eth0",
            ],
            &["link", "set", "hvx", "master", "hbr", "mtu", "1450", "up"],
            &["link", "add", "hve", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", &hand],
            &["link", "set", "hve", "master", "hbr", "up"],
        ];
        for args in in_host {
            checked("ip", args, |program, args| lab.exec(i, program, args))?;
        }
        let in_sandbox: [&[&str]; 3] = [
            &["link", "set", "lo", "up"],
            &["link", "set", "eth0", "mtu", "1450", "up"],
            &["addr", "add", &address, "dev", "eth0"],
        ];
        for args in in_sandbox {
            checked("ip", args, |program, args| lab.sandbox_exec(i, "hand", program, args))?;
        }
    }

    let mesh_path = Path::sandboxes(&lab, "client", "server", "10.77.0.20");
    let hand_path = Path::sandboxes(&lab, "hand", "hand", "10.88.0.2");
    let raw_path = Path::hosts(&lab, "198.18.0.2");
    iperf::serve(&mut lab, &[&mesh_path, &hand_path, &raw_path])?;
    // Alternate the three, three times, and keep each one's median.
    let (mut mesh, mut hand, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        mesh.push(iperf::throughput(&lab, &mesh_path, seconds, 1)?);
        hand.push(iperf::throughput(&lab, &hand_path, seconds, 1)?);
        raw.push(iperf::throughput(&lab, &raw_path, seconds, 1)?);
    }
    lab.kill_spawned();
    let (mesh, hand, raw) = (median(&mut mesh), median(&mut hand), median(&mut raw));
    let throughput = |name: &str, value: f64| {
        Figure::new(
            "overlay",
            format!("iperf3 TCP, {name}, {seconds} s, median of 3"),
            "Gbit/s",
            Better::Higher,
            Some(value),
        )
    };
    Ok(vec![
        throughput("mesh overlay, sandbox to sandbox", mesh)
            .against("hand-built VXLAN pair", Some(hand))
            .aiming("at least 0.97 of hand-built"),
        throughput("mesh overlay, sandbox to sandbox", mesh).against("raw underlay, host to host", Some(raw)),
    ])
}
