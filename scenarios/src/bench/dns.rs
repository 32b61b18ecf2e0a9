//! DNS: dnsperf against mesh's resolver inside a sandbox serving N names
//! (endpoints of another host, from the replicated view), beside dnsmasq
//! serving the same N names from a hosts file in the same sandbox, with
//! the same dnsperf settings in the same run; then how soon the name of a
//! sandbox created on host 1 resolves on host 2.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use mesh_dns::answer;

use super::report::{Better, Figure};
use super::{injected, median, percentile, view_to_kernel};
use crate::api;
use crate::lab::Lab;

/// The first injected endpoint's address (the network is 10.64.0.0/16).
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 10);
/// dnsmasq's address inside the client sandbox (mesh's is [`MESH`]).
const DNSMASQ: &str = "127.0.0.12";
/// dnsperf's simulated clients (the figure on record for dnsmasq uses 4).
const CLIENTS: &str = "4";
/// The fixed loads of the latency runs, queries per second: a light one
/// and a busy one (about half of what either server sustains here).
const LATENCY_LOADS: [&str; 2] = ["10000", "40000"];
/// How long each latency run lasts, seconds.
const LATENCY_SECONDS: &str = "3";
/// Latency runs per server and load, the two servers in turn, so that the
/// drift of this shared machine falls on both alike: one run each put
/// either ahead by 10-50 % at the light load, from one run to the next.
const LATENCY_ROUNDS: usize = 3;
/// Saturated runs per server, the two in turn, for the same reason.
const SATURATED_ROUNDS: u32 = 2;
/// Where mesh's resolver listens in a sandbox.
const MESH: &str = "127.0.0.11";
/// Generous bound on each wait (not a performance claim).
const LIMIT: Duration = Duration::from_secs(60);

/// What saturated dnsperf runs measured of one server.
#[derive(Default)]
struct Saturated {
    qps: f64,
    average_ms: f64,
}

/// Runs the benchmark with `names` names for `seconds` per throughput run
/// and `creates` timed sandbox creations.
pub fn run(names: usize, seconds: u64, creates: usize) -> anyhow::Result<Vec<Figure>> {
    if !(1..=60_000).contains(&names) || seconds == 0 || creates == 0 {
        bail!("give 1-60000 names, a positive duration and a positive number of creates");
    }
    let mut lab = Lab::new(2)?;
    println!("DNS on 2 lab hosts: {names} names served from host 1's sandbox");
    lab.form_cluster()?;
    lab.wait_for("both alive", LIMIT, |lab| {
        Ok(lab.members_api(1)?.iter().filter(|m| m.status == "alive").count() == 2)
    })?;
    lab.mesh_ok(1, &["network", "create", "bench", "--subnet", "10.64.0.0/16", "--vni", "9997"])?;
    lab.wait_for("bench on h2", LIMIT, |lab| Ok(lab.mesh(2, &["network", "inspect", "bench"])?.success))?;
    lab.mesh_ok(1, &["sandbox", "create", "client", "--network", "bench", "--ip", "10.64.255.251"])?;
    lab.mesh_ok(2, &["sandbox", "create", "seed", "--network", "bench", "--ip", "10.64.255.250"])?;
    lab.terminate(2)?;
    injected::add(&lab, 2, FIRST, names)?;
    lab.start_agent(2, &[])?;
    let socket = lab.socket(1);
    lab.wait_for("every name in h1's view", LIMIT, |_| {
        Ok(view_to_kernel::active_endpoints(&socket, 0, Duration::ZERO)?.0 == names + 2)
    })?;

    let dir = tempfile::Builder::new().prefix("mesh-bench-dns-").tempdir()?;
    let (mut queries, mut hosts) = (String::new(), String::new());
    for k in 0..names {
        writeln!(queries, "{} A", injected::name(k))?;
        writeln!(hosts, "{} {}", injected::address(FIRST, k), injected::name(k))?;
    }
    let (queries_file, hosts_file) = (dir.path().join("queries"), dir.path().join("hosts"));
    std::fs::write(&queries_file, queries)?;
    std::fs::write(&hosts_file, hosts)?;
    let hosts_arg = format!("--addn-hosts={}", hosts_file.display());
    let listen = format!("--listen-address={DNSMASQ}");
    let dnsmasq = ["--no-daemon", "--no-resolv", "--no-hosts", "--user=root", "--bind-interfaces", &listen, &hosts_arg];
    let client_netns = lab.sandbox_netns(1, "client");
    lab.spawn_in(1, &client_netns, "dnsmasq", "dnsmasq", &dnsmasq)?;
    let probe = injected::name(0);
    lab.wait_for("dnsmasq answers", LIMIT, |lab| {
        let out = lab.sandbox_exec(1, "client", "dig", &["+short", &format!("@{DNSMASQ}"), &probe])?;
        Ok(!out.stdout.trim().is_empty())
    })?;

    let file = queries_file.to_str().context("temp path")?;
    let (mut mesh, mut baseline) = (Saturated::default(), Saturated::default());
    for _ in 0..SATURATED_ROUNDS {
        mesh.add_mean(&saturated(&lab, MESH, file, seconds)?);
        baseline.add_mean(&saturated(&lab, DNSMASQ, file, seconds)?);
    }
    let mut paced = Vec::new();
    for load in LATENCY_LOADS {
        let (mut mesh, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..LATENCY_ROUNDS {
            mesh.extend(latencies(&lab, MESH, file, load)?);
            baseline.extend(latencies(&lab, DNSMASQ, file, load)?);
        }
        paced.push((load, mesh, baseline));
    }
    lab.kill_spawned();
    let conditions = format!("{names} names, {CLIENTS} clients");
    let latency = |name: String, mesh: f64, dnsmasq: f64| {
        Figure::new("dns", name, "ms", Better::Lower, Some(mesh)).against("dnsmasq", Some(dnsmasq))
    };
    let mut figures = vec![
        Figure::new(
            "dns",
            format!("queries per second, saturated, {conditions}, {SATURATED_ROUNDS} runs of {seconds} s in turn"),
            "qps",
            Better::Higher,
            Some(mesh.qps),
        )
        .against("dnsmasq", Some(baseline.qps))
        .aiming("at least dnsmasq's rate"),
        latency(format!("average latency, saturated, {conditions}"), mesh.average_ms, baseline.average_ms),
    ];
    let runs = format!("{LATENCY_ROUNDS} runs of {LATENCY_SECONDS} s in turn with dnsmasq");
    for (load, mut mesh, mut baseline) in paced {
        let name = format!("latency at {load} qps, {conditions}, {runs}");
        figures.push(latency(format!("median {name}"), median(&mut mesh), median(&mut baseline)));
        figures.push(latency(format!("p99 {name}"), percentile(&mut mesh, 99.0), percentile(&mut baseline, 99.0)));
    }

    let delays = create_to_resolve(&lab, creates)?;
    let (mut after, mut from_start): (Vec<f64>, Vec<f64>) = delays.into_iter().unzip();
    let resolve = |what: &str, values: &mut Vec<f64>, p: f64| {
        let name =
            format!("`sandbox create` on h1 → name resolves on h2, {what}, {creates} creates, {names} endpoints");
        Figure::new("dns", name, "ms", Better::Lower, Some(percentile(values, p)))
    };
    figures.push(Figure::new(
        "dns",
        format!("answering one query in process (parse, lookup, encode), {names} names"),
        "µs",
        Better::Lower,
        Some(answer_time(names)),
    ));
    figures.extend([
        resolve("from the answer, median", &mut after, 50.0),
        resolve("from the answer, p99", &mut after, 99.0),
        resolve("from the request's start, median", &mut from_start, 50.0),
        resolve("from the request's start, p99", &mut from_start, 99.0),
    ]);
    Ok(figures)
}

/// Queries timed in process by [`answer_time`].
const TIMED_ANSWERS: u32 = 200_000;

/// How long mesh's resolver takes to answer one A query, in microseconds:
/// the packet parsed, the name looked up in a table of `names` endpoints,
/// the answer encoded; no socket. What is left of a query's latency is the
/// way through the kernel and the wake-up of the serving thread.
fn answer_time(names: usize) -> f64 {
    let endpoints: Vec<mesh_dns::Endpoint> = (0..names)
        .map(|k| mesh_dns::Endpoint {
            name: injected::name(k),
            network: "bench".into(),
            aliases: Vec::new(),
            ip: injected::address(FIRST, k),
        })
        .collect();
    let table = mesh_dns::NameTable::new(&endpoints, &[]);
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(injected::name(names / 2)).unwrap_or_default(), RecordType::A));
    let packet = query.to_vec().unwrap_or_default();
    let started = Instant::now();
    for rotation in 0..TIMED_ANSWERS {
        if let answer::Outcome::Reply { message, udp_limit } =
            answer::answer(&packet, &table, &mesh_dns::Scope::All, rotation as usize)
        {
            std::hint::black_box(answer::encode(&message, udp_limit));
        }
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(TIMED_ANSWERS)
}

/// A saturated dnsperf run of `seconds` against `server` from the client
/// sandbox.
fn saturated(lab: &Lab, server: &str, queries: &str, seconds: u64) -> anyhow::Result<Saturated> {
    let seconds = seconds.to_string();
    let saturated =
        lab.sandbox_exec(1, "client", "dnsperf", &["-s", server, "-d", queries, "-c", CLIENTS, "-l", &seconds])?;
    if !saturated.success {
        bail!("dnsperf against {server}: {}", saturated.stderr.trim());
    }
    let stat = |label: &str| {
        saturated.stdout.lines().find_map(|l| l.trim().strip_prefix(label)).map(|rest| rest.trim().to_owned())
    };
    let qps: f64 = stat("Queries per second:").context("no queries per second")?.parse()?;
    let average_ms = stat("Average Latency (s):")
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .context("no average latency")?
        * 1000.0;
    println!("queries lost, {server}: {}", stat("Queries lost:").unwrap_or_default());
    Ok(Saturated { qps, average_ms })
}

impl Saturated {
    /// Adds one of [`SATURATED_ROUNDS`] runs to the mean.
    fn add_mean(&mut self, run: &Self) {
        let share = f64::from(SATURATED_ROUNDS).recip();
        self.qps += run.qps * share;
        self.average_ms += run.average_ms * share;
    }
}

/// The latency of every answered query (ms) of a dnsperf run of
/// [`LATENCY_SECONDS`] at `load` queries per second against `server`.
fn latencies(lab: &Lab, server: &str, queries: &str, load: &str) -> anyhow::Result<Vec<f64>> {
    let args = ["-s", server, "-d", queries, "-c", CLIENTS, "-l", LATENCY_SECONDS, "-Q", load, "-v"];
    let out = lab.sandbox_exec(1, "client", "dnsperf", &args)?;
    let latencies: Vec<f64> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("> NOERROR"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    if latencies.is_empty() {
        bail!("dnsperf against {server} at {load} qps got no answers");
    }
    Ok(latencies)
}

/// For each of `creates` sandboxes made on host 1 (through its control
/// socket, as `mesh sandbox create` does, without the client's process
/// start): the delay from the request's answer, and from its start, to its
/// name first answered by the resolver in host 2's sandbox (asked every
/// 0.5 ms), in ms.
fn create_to_resolve(lab: &Lab, creates: usize) -> anyhow::Result<Vec<(f64, f64)>> {
    let watcher = PathBuf::from(format!("/run/netns/{}", lab.sandbox_netns(2, "seed")));
    let mut delays = Vec::new();
    for k in 0..creates {
        let name = format!("t{k}");
        let asked = Name::from_ascii(format!("{name}.bench.mesh."))?;
        let (path, poll) = (watcher.clone(), asked.clone());
        let resolved = std::thread::spawn(move || first_answer(&path, &poll));
        std::thread::sleep(Duration::from_millis(20));
        let body = format!(r#"{{"name":"{name}","networks":["bench"],"aliases":[]}}"#);
        let start = Instant::now();
        api::post(&lab.socket(1), "/v1/sandboxes", &body).with_context(|| format!("sandbox {name}"))?;
        let returned = Instant::now();
        let (at, _) = resolved.join().map_err(|_| anyhow::anyhow!("the resolver watcher panicked"))??;
        let ms = |from: Instant| at.saturating_duration_since(from).as_secs_f64() * 1000.0;
        delays.push((ms(returned), ms(start)));
        lab.mesh_ok(1, &["sandbox", "rm", &name])?;
    }
    Ok(delays)
}

/// Asks the resolver at 127.0.0.11 in the namespace at `netns` for `name`
/// (every 0.5 ms) until it answers with an address; returns when it first
/// did, and the address.
pub(super) fn first_answer(netns: &std::path::Path, name: &Name) -> anyhow::Result<(Instant, Ipv4Addr)> {
    let mut query = Message::query();
    query.add_query(Query::query(name.clone(), RecordType::A));
    let packet = query.to_vec()?;
    let found = mesh_netdev::netns::run_in(netns, move || {
        let io = |source| mesh_netdev::NetdevError::Io { what: "dns probe", path: "127.0.0.11".into(), source };
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
        socket.set_read_timeout(Some(Duration::from_micros(500))).map_err(io)?;
        let resolver = SocketAddr::from(([127, 0, 0, 11], 53));
        let deadline = Instant::now() + LIMIT;
        let mut buffer = [0u8; 1500];
        while Instant::now() < deadline {
            socket.send_to(&packet, resolver).map_err(io)?;
            while let Ok(len) = socket.recv(&mut buffer) {
                let Ok(answer) = Message::from_vec(&buffer[..len]) else { continue };
                if answer.metadata.response_code != ResponseCode::NoError {
                    continue;
                }
                let address = answer.answers.iter().find_map(|record| match &record.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                });
                if let Some(address) = address {
                    return Ok(Some((Instant::now(), address)));
                }
            }
        }
        Ok(None)
    })?;
    found.with_context(|| format!("{name} did not resolve on h2 within {LIMIT:?}"))
}
