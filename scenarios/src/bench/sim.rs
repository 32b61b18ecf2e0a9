//! Dissemination at scale, in the simulator: how long a change made on one
//! node takes to reach 50 %, 99 %, 99.9 % and all nodes, what the cluster
//! sends per node per second when idle, and how many false "down" verdicts
//! the run produced. The baseline is memberlist's gossip (what Serf and
//! Consul use) modelled on the same simulated network: every 200 ms each
//! node sends what it holds to 3 random nodes, each message sent at most
//! 4·ceil(log10(n+1)) times (its LAN defaults; Serf's published model of
//! it gives about 2.2 s to reach 10,000 nodes).
//!
//! Up to [`FULL_VIEW_LIMIT`] nodes the whole core runs, SWIM included, and
//! every node knows every other, as in the agent. Beyond it SWIM cannot
//! run here (every node holding every member is 10^8 entries at 10,000
//! nodes, and foca searches its member list linearly), so the record layer
//! runs alone with an oracle of the cluster for its peers: push and sync,
//! without the gossip path, which only adds paths. The report says which.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mesh_membership::records::EndpointSpec;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::percentile;
use super::report::{Better, Figure};
use crate::sim::{Sim, SimConfig};

/// Largest cluster simulated with full member lists.
pub const FULL_VIEW_LIMIT: usize = 2000;
/// The shares of nodes reported.
const SHARES: [f64; 4] = [50.0, 99.0, 99.9, 100.0];

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimBench {
    /// Number of nodes.
    pub nodes: usize,
    /// Changes measured (one at a time).
    pub changes: usize,
    /// Share of datagrams lost.
    pub loss: f64,
    /// One-way latency.
    pub latency: Duration,
    /// Seed of the run.
    pub seed: u64,
}

/// Time to reach each share of [`SHARES`], in ms, per change (`None`: not reached).
type Reach = Vec<[Option<f64>; 4]>;

/// Runs the simulation and the baseline model; prints the report.
pub fn run(bench: &SimBench) -> anyhow::Result<Vec<Figure>> {
    let wall = Instant::now();
    let full = bench.nodes <= FULL_VIEW_LIMIT;
    println!(
        "simulating {} nodes ({}), {} ms links, {:.1} % loss, seed {}",
        bench.nodes,
        if full { "the whole core, full member lists" } else { "the record layer alone, peers from an oracle" },
        bench.latency.as_millis(),
        bench.loss * 100.0,
        bench.seed
    );
    let mut config = SimConfig::new(bench.nodes, bench.seed);
    config.loss = bench.loss;
    config.latency = bench.latency;
    let mut sim = Sim::new(config);
    if full {
        sim.bootstrap();
    } else {
        sim.use_peer_oracle();
    }
    sim.run_for(Duration::from_secs(2));
    let idle = Duration::from_secs(5);
    let before = sim.traffic();
    sim.run_for(idle);
    let after = sim.traffic();
    let per_node_second = |v: u64| v as f64 / bench.nodes as f64 / idle.as_secs_f64();
    let idle_messages = per_node_second(after.messages - before.messages);
    let idle_bytes = per_node_second(after.bytes - before.bytes);
    let kind = |kinds: std::ops::RangeInclusive<usize>| {
        per_node_second(kinds.map(|k| after.bytes_by_kind[k] - before.bytes_by_kind[k]).sum())
    };
    // Frame variants: 0 SWIM, 1 leave, 2-3 member lists, 4 record pushes, 5-8 sync.
    let idle_split = format!("SWIM {:.0}, member lists {:.0}, sync {:.0}", kind(0..=0), kind(2..=3), kind(5..=8));

    let mut rng = StdRng::seed_from_u64(bench.seed ^ 0x5eed);
    let before_changes = sim.traffic();
    let changes_started = sim.now();
    let mut mesh: Reach = Vec::new();
    for k in 0..bench.changes {
        let origin = rng.random_range(0..bench.nodes);
        let ip = Ipv4Addr::new(10, 200, (k / 250) as u8, (k % 250 + 2) as u8);
        let spec = EndpointSpec::allocated("bench", ip, 0);
        let delays = sim.spread_endpoint(origin, &format!("c{k}"), spec, Duration::from_secs(30))?;
        let delays: Vec<f64> = delays.iter().flatten().map(|d| d.as_secs_f64() * 1000.0).collect();
        mesh.push(reach(delays, bench.nodes));
        sim.run_for(Duration::from_millis(500));
    }
    let false_downs = sim.false_downs();
    // Traffic of the change phase beyond the idle rate, per node and change.
    let phase = sim.now() - changes_started;
    let extra_bytes =
        (sim.traffic().bytes - before_changes.bytes) as f64 - idle_bytes * bench.nodes as f64 * phase.as_secs_f64();
    let per_change = extra_bytes.max(0.0) / bench.nodes as f64 / bench.changes.max(1) as f64;
    let during = sim.traffic();
    let change_kind = |kinds: std::ops::RangeInclusive<usize>| {
        let sent: u64 = kinds.map(|k| during.bytes_by_kind[k] - before_changes.bytes_by_kind[k]).sum();
        sent as f64 / bench.nodes as f64 / bench.changes.max(1) as f64
    };
    println!(
        "change traffic per node per change (idle included): SWIM {:.0}, pushes {:.0}, sync {:.0} B",
        change_kind(0..=0),
        change_kind(4..=4),
        change_kind(5..=8)
    );
    let baseline: Reach = (0..bench.changes).map(|k| gossip_model(bench, bench.seed.wrapping_add(k as u64))).collect();
    println!("idle traffic per node: {idle_split} B/s");
    println!("(simulated in {:.1} s of real time)", wall.elapsed().as_secs_f64());
    let false_downs = full.then_some(false_downs as f64);
    Ok(figures(bench, &mesh, &baseline, (idle_messages, idle_bytes), per_change, false_downs))
}

/// memberlist's gossip on the same network: returns the time to reach each share.
fn gossip_model(bench: &SimBench, seed: u64) -> [Option<f64>; 4] {
    const INTERVAL: Duration = Duration::from_millis(200);
    const FANOUT: usize = 3;
    let n = bench.nodes;
    let limit = 4 * (n as f64 + 1.0).log10().ceil() as u32;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut got: Vec<Option<Duration>> = vec![None; n];
    let mut left = vec![0u32; n];
    // Events: (time, node, kind) where kind 0 = gossip tick, 1 = arrival.
    let mut queue: BinaryHeap<Reverse<(Duration, usize, u8)>> = BinaryHeap::new();
    let origin = rng.random_range(0..n);
    got[origin] = Some(Duration::ZERO);
    left[origin] = limit;
    for node in 0..n {
        queue.push(Reverse((INTERVAL.mul_f64(rng.random::<f64>()), node, 0)));
    }
    let horizon = Duration::from_secs(60);
    while let Some(Reverse((at, node, kind))) = queue.pop() {
        if at > horizon || got.iter().all(Option::is_some) {
            break;
        }
        match kind {
            1 if got[node].is_none() => {
                got[node] = Some(at);
                left[node] = limit;
            }
            1 => {}
            _ => {
                for _ in 0..FANOUT {
                    if left[node] == 0 {
                        break;
                    }
                    left[node] -= 1;
                    let target = rng.random_range(0..n);
                    if rng.random::<f64>() >= bench.loss {
                        queue.push(Reverse((at + bench.latency, target, 1)));
                    }
                }
                queue.push(Reverse((at + INTERVAL, node, 0)));
            }
        }
    }
    reach(got.iter().flatten().map(|d| d.as_secs_f64() * 1000.0).collect(), n)
}

/// Payload bytes of memberlist's messages, as msgpack encodes them with
/// short node names: a ping (sequence number, target and source), its ack,
/// one member's state in a push/pull, and one alive or user-event message.
const MEMBERLIST_PING: f64 = 80.0;
const MEMBERLIST_ACK: f64 = 20.0;
const MEMBERLIST_STATE: f64 = 75.0;
const MEMBERLIST_MESSAGE: f64 = 80.0;

/// What a memberlist node sends per second when nothing changes, at its LAN
/// defaults: a ping and an ack each second, and its whole state pushed to
/// one node and returned to another every push/pull interval (30 s, scaled
/// by log2 of the size beyond 32 nodes). Gossip sends nothing when idle.
fn memberlist_idle_bytes(nodes: usize) -> f64 {
    let n = nodes.max(1) as f64;
    let scale = if n <= 32.0 { 1.0 } else { (n.log2() - 32f64.log2()).ceil() + 1.0 };
    let push_pull_every = 30.0 * scale;
    MEMBERLIST_PING + MEMBERLIST_ACK + 2.0 * n * MEMBERLIST_STATE / push_pull_every
}

/// What a memberlist node sends for one change: the message, retransmitted
/// 4·ceil(log10(n+1)) times (its retransmit limit at LAN defaults).
fn memberlist_change_bytes(nodes: usize) -> f64 {
    let limit = 4.0 * (nodes as f64 + 1.0).log10().ceil();
    limit * MEMBERLIST_MESSAGE
}

/// The delay by which each share of `total` nodes held the change.
fn reach(mut delays: Vec<f64>, total: usize) -> [Option<f64>; 4] {
    delays.sort_by(f64::total_cmp);
    SHARES.map(|share| {
        let needed = ((share / 100.0 * total as f64).ceil() as usize).max(1);
        delays.get(needed - 1).copied()
    })
}

/// The simulator's figures: reach beside memberlist's gossip model on the
/// same network; traffic; false verdicts (`None` when SWIM was not simulated).
fn figures(
    bench: &SimBench,
    mesh: &Reach,
    baseline: &Reach,
    idle: (f64, f64),
    per_change: f64,
    false_downs: Option<f64>,
) -> Vec<Figure> {
    let median_of = |reach: &Reach, column: usize| -> Option<f64> {
        let mut reached: Vec<f64> = reach.iter().filter_map(|r| r[column]).collect();
        (reached.len() == reach.len() && !reached.is_empty()).then(|| percentile(&mut reached, 50.0))
    };
    let nodes = bench.nodes;
    let mut figures: Vec<Figure> = SHARES
        .iter()
        .enumerate()
        .map(|(column, share)| {
            let name = format!("{share} % of {nodes} nodes hold a change, median of {} changes", mesh.len());
            let figure = Figure::new("sim", name, "ms", Better::Lower, median_of(mesh, column))
                .against("memberlist gossip model", median_of(baseline, column));
            if *share == 99.9 {
                figure.aiming("under 1 s")
            } else {
                figure
            }
        })
        .collect();
    let (messages, bytes) = idle;
    let idle_bytes =
        Figure::new("sim", format!("idle bytes per node per second, {nodes} nodes"), "B/s", Better::Lower, Some(bytes));
    figures.extend([
        Figure::new(
            "sim",
            format!("idle messages per node per second, {nodes} nodes"),
            "msg/s",
            Better::Lower,
            Some(messages),
        ),
        // Without SWIM (beyond FULL_VIEW_LIMIT) the idle figure has nothing to compare.
        if nodes <= FULL_VIEW_LIMIT {
            idle_bytes.against("memberlist model", Some(memberlist_idle_bytes(nodes))).aiming("fewer bytes")
        } else {
            idle_bytes
        },
        Figure::new("sim", format!("bytes per node per change, {nodes} nodes"), "B", Better::Lower, Some(per_change))
            .against("memberlist model", Some(memberlist_change_bytes(nodes))),
    ]);
    if let Some(false_downs) = false_downs {
        let name = format!("false down verdicts, {nodes} nodes, {:.1} % loss", bench.loss * 100.0);
        figures.push(Figure::new("sim", name, "verdicts", Better::Lower, Some(false_downs)).aiming("0"));
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberlist_push_pull_slows_down_beyond_32_nodes() {
        let probes = MEMBERLIST_PING + MEMBERLIST_ACK;
        assert_eq!(memberlist_idle_bytes(32), probes + 2.0 * 32.0 * MEMBERLIST_STATE / 30.0);
        assert_eq!(memberlist_idle_bytes(33), probes + 2.0 * 33.0 * MEMBERLIST_STATE / 60.0);
        assert_eq!(memberlist_idle_bytes(1000), probes + 2.0 * 1000.0 * MEMBERLIST_STATE / 180.0);
        assert_eq!(memberlist_change_bytes(1000), 16.0 * MEMBERLIST_MESSAGE);
    }
}
