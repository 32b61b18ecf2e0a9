//! An encrypted network's data plane (DESIGN.md, "Encrypted data plane",
//! test plan step 5): iperf3 TCP (one stream and four) and ping between
//! sandboxes on two lab hosts over an encrypted network (on this kernel,
//! which has no WireGuard, the agent's own WireGuard over a TUN), beside,
//! between the same two hosts and in the same run: Nebula (Debian's, with
//! its own certificates), wireguard-go (Debian's, configured with `wg`),
//! mesh's plaintext overlay and the raw underlay. The systems take turns,
//! round after round, and each figure is the median of its rounds. Also
//! the CPU the carrying processes use per Gbit carried (from /proc, both
//! hosts' together) and their resident memory after the runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::iperf::{self, checked, on_machine, Path};
use super::median;
use super::report::{Better, Figure};
use crate::lab::{host_ip, Lab};
use crate::procfs;

/// How long a path is given to come up (not a performance claim).
const COME_UP: Duration = Duration::from_secs(30);

/// Pings per round-trip figure.
const PINGS: u32 = 20;

/// Nebula's UDP port and the overlay its hosts get (`10.43.0.I`).
const NEBULA_PORT: u16 = 4242;
const NEBULA_NET: &str = "10.43.0";
/// Nebula's default MTU (it carries its own header over a 1500 underlay).
const NEBULA_MTU: u32 = 1300;

/// wireguard-go's UDP port (the agent holds 51820) and overlay (`10.44.0.I`).
const WG_PORT: u16 = 51821;
const WG_NET: &str = "10.44.0";
/// `wg-quick`'s MTU over an IPv4 underlay of 1500.
const WG_MTU: u32 = 1420;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct EncryptedBench {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Rounds of every system in turn (each figure is their median).
    pub rounds: usize,
}

/// A system under test: the way iperf3 and ping take, and the processes
/// (on both hosts) that carry its packets, whose CPU and memory count.
struct System {
    name: &'static str,
    path: Path,
    carriers: Vec<u32>,
}

/// What was measured of one system, a value per round.
#[derive(Default)]
struct Measured {
    one_stream: Vec<f64>,
    four_streams: Vec<f64>,
    /// CPU seconds of the carriers per Gbit carried, one stream.
    cpu_per_gbit: Vec<f64>,
    rtt_ms: Vec<f64>,
    /// The carriers' largest resident set after the runs, MiB.
    rss_mib: Option<f64>,
}

/// Measures and returns the figures.
pub fn run(bench: &EncryptedBench) -> anyhow::Result<Vec<Figure>> {
    for program in ["nebula", "nebula-cert", "wireguard-go", "wg", "iperf3"] {
        if crate::process::run("sh", ["-c", &format!("command -v {program}")]).map_or(true, |o| !o.success) {
            bail!("{program} is not installed (scripts/common.sh's LAB_PACKAGES has it)");
        }
    }
    let (seconds, rounds) = (bench.seconds, bench.rounds.max(1));
    // Declared before the lab, so dropped after it has ended wireguard-go.
    let _sockets = Sockets::new();
    let mut lab = Lab::new(2)?;
    println!("encrypted network on 2 lab hosts, {seconds} s per iperf3 run, {rounds} rounds");
    let systems = set_up(&mut lab)?;
    let paths: Vec<&Path> = systems.iter().map(|s| &s.path).collect();
    iperf::serve(&mut lab, &paths)?;

    let mut measured: Vec<Measured> = systems.iter().map(|_| Measured::default()).collect();
    for _ in 0..rounds {
        for (system, measured) in systems.iter().zip(&mut measured) {
            let before = cpu_seconds(&system.carriers)?;
            let one = iperf::throughput(&lab, &system.path, seconds, 1).with_context(|| system.name)?;
            if !system.carriers.is_empty() && one > 0.0 {
                let used = cpu_seconds(&system.carriers)? - before;
                measured.cpu_per_gbit.push(used / (one * f64::from(seconds)));
            }
            measured.one_stream.push(one);
            measured.four_streams.push(iperf::throughput(&lab, &system.path, seconds, 4).with_context(|| system.name)?);
            measured.rtt_ms.push(iperf::rtt_ms(&lab, &system.path, PINGS).with_context(|| system.name)?);
        }
    }
    for (system, measured) in systems.iter().zip(&mut measured) {
        let largest = system.carriers.iter().filter_map(|pid| procfs::rss_kib(*pid).ok()).max();
        #[allow(clippy::cast_precision_loss)] // KiB of one process: far below 2^52
        let mib = largest.map(|kib| kib as f64 / 1024.0);
        measured.rss_mib = mib;
    }
    lab.kill_spawned();
    Ok(figures(bench, &systems, &mut measured))
}

/// The figures: mesh's encrypted network against each other system.
fn figures(bench: &EncryptedBench, systems: &[System], measured: &mut [Measured]) -> Vec<Figure> {
    let (seconds, rounds) = (bench.seconds, bench.rounds.max(1));
    let mut of = |pick: fn(&mut Measured) -> &mut Vec<f64>| -> Vec<Option<f64>> {
        measured.iter_mut().map(|m| Some(median(pick(m))).filter(|v| v.is_finite())).collect()
    };
    let one = of(|m| &mut m.one_stream);
    let four = of(|m| &mut m.four_streams);
    let rtt = of(|m| &mut m.rtt_ms);
    let cpu = of(|m| &mut m.cpu_per_gbit);
    let rss: Vec<Option<f64>> = measured.iter().map(|m| m.rss_mib).collect();
    // systems[0] is mesh's encrypted network; the order of the rest is set_up's.
    let against = |figure: Figure, values: &[Option<f64>], others: &[usize], aim: Option<&str>| {
        others
            .iter()
            .map(|&k| {
                let figure = figure.clone().against(systems[k].name, values[k]);
                match aim {
                    Some(aim) => figure.aiming(aim),
                    None => figure,
                }
            })
            .collect::<Vec<_>>()
    };
    let figure = |name: String, unit: &str, better: Better, values: &[Option<f64>]| {
        Figure::new("encrypted", name, unit, better, values[0])
    };
    let runs = format!("{seconds} s, median of {rounds}");
    let (nebula, wggo, plain, raw) = (1, 2, 3, 4);
    let mut out = Vec::new();
    let name = format!("iperf3 TCP, 1 stream, encrypted network, sandbox to sandbox, {runs}");
    let one_fig = figure(name, "Gbit/s", Better::Higher, &one);
    out.extend(against(one_fig.clone(), &one, &[nebula], Some("at least 3x Nebula")));
    out.extend(against(one_fig, &one, &[wggo, plain, raw], None));
    let name = format!("iperf3 TCP, 4 streams, encrypted network, sandbox to sandbox, {runs}");
    out.extend(against(figure(name, "Gbit/s", Better::Higher, &four), &four, &[nebula, wggo, plain, raw], None));
    let name = format!("ping round trip, encrypted network, median of {PINGS} a round, median of {rounds}");
    let rtt_fig = figure(name, "ms", Better::Lower, &rtt);
    out.extend(against(rtt_fig.clone(), &rtt, &[nebula, wggo], Some("below Nebula's and wireguard-go's")));
    out.extend(against(rtt_fig, &rtt, &[plain, raw], None));
    let name = format!("CPU of the agents (both hosts) per Gbit carried, 1 stream, {runs}");
    out.extend(against(figure(name, "CPU s/Gbit", Better::Lower, &cpu), &cpu, &[nebula, wggo], None));
    let name = "resident memory of the agent, encryption on, after the runs (the larger of 2 hosts)".to_owned();
    out.extend(against(figure(name, "MiB", Better::Lower, &rss), &rss, &[nebula, wggo], None));
    out
}

/// CPU time the processes `pids` have used so far, seconds.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().try_fold(0.0, |sum, pid| Ok(sum + procfs::cpu_time(*pid)?.as_secs_f64()))
}

/// Builds every system's path; mesh's encrypted network first, then
/// Nebula, wireguard-go, mesh's plaintext overlay and the raw underlay
/// (the order [`figures`] reads them in).
fn set_up(lab: &mut Lab) -> anyhow::Result<Vec<System>> {
    lab.form_cluster()?;
    lab.wait_for("both alive", COME_UP, |lab| {
        Ok(lab.members_api(1)?.iter().filter(|m| m.status == "alive").count() == 2)
    })?;
    // Refused until h2's WireGuard key has reached h1 (just after it joined).
    lab.wait_for("the encrypted network created", COME_UP, |lab| {
        let create = ["network", "create", "enc", "--encrypted", "--subnet", "10.79.0.0/24", "--vni", "7979"];
        Ok(lab.mesh(1, &create)?.success)
    })?;
    lab.mesh_ok(1, &["network", "create", "plain", "--subnet", "10.77.0.0/24", "--vni", "7777"])?;
    lab.wait_for("both networks on h2", COME_UP, |lab| {
        Ok(lab.mesh(2, &["network", "inspect", "enc"])?.success
            && lab.mesh(2, &["network", "inspect", "plain"])?.success)
    })?;
    for (i, role, last) in [(1, "client", "10"), (2, "server", "20")] {
        lab.mesh_ok(
            i,
            &["sandbox", "create", &format!("e{role}"), "--network", "enc", "--ip", &format!("10.79.0.{last}")],
        )?;
        lab.mesh_ok(
            i,
            &["sandbox", "create", &format!("p{role}"), "--network", "plain", "--ip", &format!("10.77.0.{last}")],
        )?;
    }
    let agents: Vec<u32> = (1..=2).filter_map(|i| lab.agent_pid(i)).collect();
    let systems = vec![
        System {
            name: "mesh encrypted",
            path: Path::sandboxes(lab, "eclient", "eserver", "10.79.0.20"),
            carriers: agents,
        },
        System {
            name: "Nebula, host to host",
            path: Path::hosts(lab, &format!("{NEBULA_NET}.2")),
            carriers: nebula(lab)?,
        },
        System {
            name: "wireguard-go, host to host",
            path: Path::hosts(lab, &format!("{WG_NET}.2")),
            carriers: wireguard_go(lab)?,
        },
        System {
            name: "mesh plaintext overlay",
            path: Path::sandboxes(lab, "pclient", "pserver", "10.77.0.20"),
            carriers: Vec::new(),
        },
        System {
            name: "raw underlay, host to host",
            path: Path::hosts(lab, &host_ip(2).to_string()),
            carriers: Vec::new(),
        },
    ];
    for system in &systems {
        let Path { client, address, .. } = &system.path;
        lab.wait_for(&format!("{} to carry a ping", system.name), COME_UP, |lab| {
            Ok(lab.exec_in(client, "ping", &["-c", "1", "-W", "1", address])?.success)
        })?;
    }
    Ok(systems)
}

/// Starts `program` in host `i` as [`Lab::spawn`] does; its pid.
fn spawn(lab: &mut Lab, i: usize, name: &str, program: &str, args: &[&str]) -> anyhow::Result<u32> {
    lab.spawn(i, name, program, args)?;
    lab.spawned_pids(i).last().copied().context("the process just spawned")
}

/// Nebula on both hosts, h1 its lighthouse, with a CA and certificates of
/// its own in the hosts' directories; the two processes.
fn nebula(lab: &mut Lab) -> anyhow::Result<Vec<u32>> {
    let dirs = [lab.host_dir(1).to_owned(), lab.host_dir(2).to_owned()];
    let file = |i: usize, name: &str| dirs[i - 1].join(name).to_string_lossy().into_owned();
    let (ca_crt, ca_key) = (file(1, "nebula-ca.crt"), file(1, "nebula-ca.key"));
    checked("nebula-cert", &["ca", "-name", "mesh-bench", "-out-crt", &ca_crt, "-out-key", &ca_key], on_machine)?;
    let mut pids = Vec::new();
    for i in 1..=2 {
        let (crt, key, config) = (file(i, "nebula.crt"), file(i, "nebula.key"), file(i, "nebula.yml"));
        let ip = format!("{NEBULA_NET}.{i}/24");
        let sign = ["sign", "-ca-crt", &ca_crt, "-ca-key", &ca_key, "-name", &format!("h{i}"), "-ip", &ip];
        checked("nebula-cert", &[&sign[..], &["-out-crt", &crt, "-out-key", &key]].concat(), on_machine)?;
        let (lighthouse, hosts) =
            if i == 1 { ("true", "[]".to_owned()) } else { ("false", format!("[\"{NEBULA_NET}.1\"]")) };
        let yaml = format!(
            "pki: {{ca: {ca_crt}, cert: {crt}, key: {key}}}\n\
             static_host_map: {{\"{NEBULA_NET}.1\": [\"{}:{NEBULA_PORT}\"]}}\n\
             lighthouse: {{am_lighthouse: {lighthouse}, interval: 60, hosts: {hosts}}}\n\
             listen: {{host: 0.0.0.0, port: {NEBULA_PORT}}}\n\
             punchy: {{punch: true}}\n\
             tun: {{disabled: false, dev: neb0, mtu: {NEBULA_MTU}}}\n\
             logging: {{level: warning}}\n\
             firewall:\n  outbound: [{{port: any, proto: any, host: any}}]\n  inbound: [{{port: any, proto: any, host: any}}]\n",
            host_ip(1)
        );
        std::fs::write(&config, yaml)?;
        pids.push(spawn(lab, i, "nebula", "nebula", &["-config", &config])?);
    }
    Ok(pids)
}

/// The name of host `i`'s wireguard-go interface. wireguard-go's control
/// socket is named after its interface in the machine's
/// `/var/run/wireguard`, which every namespace shares: so the names are
/// this process's, and the sockets are removed after the lab ([`Sockets`]).
fn wg_interface(i: usize) -> String {
    format!("wgb{}-{i}", std::process::id())
}

/// wireguard-go's control sockets of this process's interfaces, removed
/// when made (left by nothing but a crash) and when dropped (the lab
/// ends wireguard-go with SIGKILL, which leaves them).
struct Sockets(Vec<PathBuf>);

impl Sockets {
    fn new() -> Self {
        let sockets =
            Self((1..=2).map(|i| PathBuf::from(format!("/var/run/wireguard/{}.sock", wg_interface(i)))).collect());
        sockets.remove();
        sockets
    }

    fn remove(&self) {
        for socket in &self.0 {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        self.remove();
    }
}

/// wireguard-go on both hosts, one peer each, keys made with `wg`; the
/// two processes.
fn wireguard_go(lab: &mut Lab) -> anyhow::Result<Vec<u32>> {
    let name = wg_interface;
    let keys = [lab.host_dir(1).join("wg.key"), lab.host_dir(2).join("wg.key")];
    let key = |i: usize| keys[i - 1].clone();
    let mut public = Vec::new();
    for i in 1..=2 {
        let made = format!("umask 077; wg genkey > {0}; wg pubkey < {0}", key(i).display());
        let out = crate::process::run("sh", ["-c", &made])?;
        if !out.success {
            bail!("wg genkey: {}", out.stderr.trim());
        }
        public.push(out.stdout.trim().to_owned());
    }
    let mut pids = Vec::new();
    for i in 1..=2 {
        pids.push(spawn(lab, i, "wireguard-go", "env", &["WG_PROCESS_FOREGROUND=1", "wireguard-go", &name(i)])?);
    }
    for i in 1..=2 {
        let (interface, other) = (name(i), 3 - i);
        lab.wait_for(&format!("{interface} up"), COME_UP, |lab| Ok(lab.exec(i, "wg", &["show", &interface])?.success))?;
        let (port, key, allowed) = (WG_PORT.to_string(), key(i), format!("{WG_NET}.{other}/32"));
        let endpoint = format!("{}:{WG_PORT}", host_ip(other));
        let set = [
            "set",
            &interface,
            "listen-port",
            &port,
            "private-key",
            &*key.to_string_lossy(),
            "peer",
            &public[other - 1],
            "allowed-ips",
            &allowed,
            "endpoint",
            &endpoint,
        ];
        let in_host = |program: &str, args: &[&str]| lab.exec(i, program, args);
        checked("wg", &set, in_host)?;
        checked("ip", &["addr", "add", &format!("{WG_NET}.{i}/24"), "dev", &interface], in_host)?;
        checked("ip", &["link", "set", &interface, "mtu", &WG_MTU.to_string(), "up"], in_host)?;
    }
    Ok(pids)
}
