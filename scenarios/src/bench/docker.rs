//! Docker: how soon a container started with `docker run` on host 1 is
//! resolved, then pinged, from a container on host 2: through mesh's
//! plugin, beside Docker swarm's own overlay (an attachable overlay
//! network) on the same two lab hosts, in the same run.
//!
//! A probe container runs on host 2 in each network; the benchmark asks
//! Docker's resolver inside it (127.0.0.11) for the new name every 0.5 ms,
//! then sends it ICMP echoes every 0.5 ms, from a thread inside the probe's
//! namespace (no process start in the measured path).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hickory_proto::rr::Name;
use socket2::{Domain, Protocol, Socket, Type};

use super::dns::first_answer;
use super::percentile;
use super::report::{Better, Figure};
use crate::docker::{DockerLab, CONTAINER_LIFETIME, IMAGE};
use crate::lab::Lab;

/// Generous bound on each wait (not a performance claim).
const LIMIT: Duration = Duration::from_secs(60);
/// Swarm's VXLAN port (mesh keeps 4789 on the same hosts).
const SWARM_VXLAN_PORT: &str = "4790";

/// One container's delays, ms: resolved and pinged, from `docker run`
/// returning and from its start.
#[derive(Debug, Clone, Copy)]
struct Delays {
    resolved: f64,
    pinged: f64,
    resolved_from_start: f64,
    pinged_from_start: f64,
    /// How long `docker run -d` itself took.
    run: f64,
}

/// Reads one figure of [`Delays`].
type Field = fn(&Delays) -> f64;

/// Runs the benchmark with `runs` containers per system.
pub fn run(runs: usize) -> anyhow::Result<Vec<Figure>> {
    if runs == 0 {
        bail!("give a positive number of runs");
    }
    let mut lab = DockerLab::new(Lab::new(2)?)?;
    println!(
        "docker run on h1 → resolved and pinged from a container on h2: mesh beside swarm, {runs} containers each"
    );
    lab.form_cluster()?;
    for i in 1..=2 {
        lab.start_dockerd(i, &["--dns=169.254.53.53"])?;
    }
    let version = lab.docker_ok(1, &["version", "-f", "{{.Server.Version}}"])?;
    lab.docker_ok(1, &["swarm", "init", "--advertise-addr", "198.18.0.1", "--data-path-port", SWARM_VXLAN_PORT])?;
    let token = lab.docker_ok(1, &["swarm", "join-token", "-q", "worker"])?;
    lab.docker_ok(2, &["swarm", "join", "--token", token.trim(), "198.18.0.1:2377"])?;
    lab.docker_ok(1, &["network", "create", "-d", "overlay", "--attachable", "--subnet", "10.250.0.0/24", "swarm"])?;
    lab.docker_ok(
        1,
        &["network", "create", "-d", "mesh", "--ipam-driver", "mesh", "--subnet", "10.251.0.0/24", "dev"],
    )?;
    lab.wait_for("dev in h2's engine", LIMIT, |lab| Ok(lab.docker(2, &["network", "inspect", "dev"])?.success))?;

    let swarm = measure(&lab, "swarm", runs)?;
    let mesh = measure(&lab, "dev", runs)?;
    println!("(0 ms: the name or the address answered before `docker run` returned)");
    let rows: [(&str, Field, Option<&str>); 5] = [
        ("h2 resolves a container started on h1, after `docker run` returned", |d| d.resolved, Some("under 10 ms")),
        ("h2 pings it, after `docker run` returned", |d| d.pinged, None),
        ("h2 resolves it, after `docker run` started", |d| d.resolved_from_start, None),
        ("h2 pings it, after `docker run` started", |d| d.pinged_from_start, None),
        ("`docker run -d` on h1, start to return", |d| d.run, None),
    ];
    let version = version.trim();
    let mut figures = vec![Figure::new(
        "docker",
        format!("`docker run` failed, of {runs}, docker {version}"),
        "runs",
        Better::Lower,
        Some(mesh.failures as f64),
    )
    .against("docker swarm overlay", Some(swarm.failures as f64))
    .aiming("0")];
    // `None` when every run failed.
    let statistic = |delays: &[Delays], field: Field, p: f64| {
        let mut values: Vec<f64> = delays.iter().map(field).collect();
        (!values.is_empty()).then(|| percentile(&mut values, p))
    };
    for (what, field, aim) in rows {
        for (statistic_name, p) in [("median", 50.0), ("p99", 99.0)] {
            let name = format!("{what}, {statistic_name} of the runs that started, docker {version}");
            let figure = Figure::new("docker", name, "ms", Better::Lower, statistic(&mesh.delays, field, p))
                .against("docker swarm overlay", statistic(&swarm.delays, field, p));
            figures.push(match aim {
                Some(aim) if p == 50.0 => figure.aiming(aim),
                _ => figure,
            });
        }
    }
    Ok(figures)
}

/// What one system measured: the delays of the containers that started,
/// and how many `docker run`s failed.
struct Measured {
    delays: Vec<Delays>,
    failures: usize,
}

/// Times `runs` containers started on host 1 in `network`, watched from a
/// probe container on host 2. A failed `docker run` is counted and the
/// next one tried (swarm's attach sometimes times out).
fn measure(lab: &DockerLab, network: &str, runs: usize) -> anyhow::Result<Measured> {
    let probe = format!("probe-{network}");
    lab.docker_ok(2, &["run", "-d", "--name", &probe, "--network", network, IMAGE, "sleep", CONTAINER_LIFETIME])?;
    let pid = lab.docker_ok(2, &["inspect", "-f", "{{.State.Pid}}", &probe])?;
    let netns = PathBuf::from(format!("/proc/{}/ns/net", pid.trim()));
    let (mut delays, mut failures) = (Vec::new(), 0);
    for k in 0..runs {
        let name = format!("{network}-t{k}");
        let (path, asked) = (netns.clone(), Name::from_ascii(format!("{name}."))?);
        let watcher = std::thread::spawn(move || -> anyhow::Result<(Instant, Instant)> {
            let (resolved, ip) = first_answer(&path, &asked)?;
            Ok((resolved, first_echo(&path, ip)?))
        });
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        let started =
            lab.docker(1, &["run", "-d", "--name", &name, "--network", network, IMAGE, "sleep", CONTAINER_LIFETIME])?;
        let returned = Instant::now();
        let watched = watcher.join().map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
        if !started.success {
            println!("   {network}: `docker run` {k} failed: {}", started.stderr.trim());
            failures += 1;
            lab.docker_ok(1, &["rm", "-f", &name])?;
            continue;
        }
        let (resolved, pinged) = watched?;
        let ms = |at: Instant, from: Instant| at.saturating_duration_since(from).as_secs_f64() * 1000.0;
        delays.push(Delays {
            resolved: ms(resolved, returned),
            pinged: ms(pinged, returned),
            resolved_from_start: ms(resolved, start),
            pinged_from_start: ms(pinged, start),
            run: ms(returned, start),
        });
        lab.docker_ok(1, &["rm", "-f", &name])?;
    }
    lab.docker_ok(2, &["rm", "-f", &probe])?;
    Ok(Measured { delays, failures })
}

/// Sends ICMP echo requests to `ip` from the namespace at `netns` (every
/// 0.5 ms) until one is answered; returns when.
fn first_echo(netns: &Path, ip: Ipv4Addr) -> anyhow::Result<Instant> {
    let answered = mesh_netdev::netns::run_in(netns, move || {
        let io = |source| mesh_netdev::NetdevError::Io { what: "ping probe", path: ip.to_string().into(), source };
        let mut socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(io)?;
        socket.set_read_timeout(Some(Duration::from_micros(500))).map_err(io)?;
        let target = SocketAddrV4::new(ip, 0).into();
        let id: u16 = rand::random();
        let deadline = Instant::now() + LIMIT;
        let mut buffer = [0u8; 1500];
        for sequence in 0u16.. {
            if Instant::now() > deadline {
                break;
            }
            socket.send_to(&echo_request(id, sequence), &target).map_err(io)?;
            while let Ok(len) = socket.read(&mut buffer) {
                if is_echo_reply(&buffer[..len], ip, id) {
                    return Ok(Some(Instant::now()));
                }
            }
        }
        Ok(None)
    })?;
    answered.with_context(|| format!("{ip} did not answer within {LIMIT:?}"))
}

/// An ICMP echo request.
fn echo_request(id: u16, sequence: u16) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = 8;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    let checksum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    packet
}

/// Whether `packet` (an IPv4 packet, as a raw socket reads it) is an echo
/// reply from `from` with identifier `id`.
fn is_echo_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> bool {
    let Some(&first) = packet.first() else { return false };
    let header = usize::from(first & 0x0f) * 4;
    let (Some(source), Some(icmp)) = (packet.get(12..16), packet.get(header..header + 8)) else { return false };
    source == from.octets() && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes()
}

/// The ones' complement sum of RFC 1071.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded to 16 bits above.
    #[allow(clippy::cast_possible_truncation)]
    let folded = !(sum as u16);
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_check_and_replies_are_recognised() {
        let request = echo_request(0x1234, 7);
        assert_eq!(internet_checksum(&request), 0, "a packet with its checksum sums to zero");
        let mut reply = vec![0x45u8; 20];
        reply[12..16].copy_from_slice(&[10, 0, 0, 2]);
        reply.extend([0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert!(is_echo_reply(&reply, Ipv4Addr::new(10, 0, 0, 2), 0x1234));
        assert!(!is_echo_reply(&reply, Ipv4Addr::new(10, 0, 0, 3), 0x1234));
        assert!(!is_echo_reply(&reply[..24], Ipv4Addr::new(10, 0, 0, 2), 0x1234));
        assert!(!is_echo_reply(&[], Ipv4Addr::new(10, 0, 0, 2), 0x1234));
    }
}
