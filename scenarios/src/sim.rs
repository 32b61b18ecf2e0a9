//! The simulator: the membership and record core the agent runs, for up to
//! thousands of nodes in one process, in virtual time, with per-packet
//! latency and jitter, random loss and partitions. Deterministic from its
//! seed: the same seed gives the same run.
//!
//! Datagrams (SWIM packets, relays) are lost at the configured rate;
//! reliable frames (QUIC streams in the agent) are delayed but not lost,
//! unless a partition or a stopped node drops them. A frozen node (as
//! under SIGSTOP, or a CPU-starved one between its time slices) fires no
//! timer and reads nothing; what arrives meanwhile waits for it, as in a
//! socket buffer. Every frame is counted, so a run reports messages and
//! bytes per node per second.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use mesh_membership::core::PeerOracle;
use mesh_membership::records::{EndpointSpec, RecordKey};
use mesh_membership::wire::{self, Frame};
use mesh_membership::{Core, Event, NodeId, NodeIdentity, NodeKey, PublishError, Status};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Wall-clock time the simulation starts at (milliseconds since the Unix epoch).
const WALL_START_MS: u64 = 1_800_000_000_000;

/// How a simulated network behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed for every random choice (nodes' and network's).
    pub seed: u64,
    /// One-way latency of every frame.
    pub latency: Duration,
    /// Up to this much extra latency, uniformly drawn per frame.
    pub jitter: Duration,
    /// Share of datagrams lost (0.0 to 1.0).
    pub loss: f64,
}

impl SimConfig {
    /// `nodes` nodes on a 1 ms, lossless network.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self { nodes, seed, latency: Duration::from_millis(1), jitter: Duration::ZERO, loss: 0.0 }
    }
}

/// Frames and bytes sent, for per-node rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames sent.
    pub messages: u64,
    /// Bytes sent (frame payloads, without UDP/QUIC overhead).
    pub bytes: u64,
    /// Bytes sent by kind of frame (indexed by the frame's variant).
    pub bytes_by_kind: [u64; 16],
}

struct Packet {
    from: usize,
    to: usize,
    payload: Vec<u8>,
}

/// A virtual network of cores.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    nodes: Vec<Option<Core>>,
    bumps: Vec<u16>,
    /// Partition group of each node: frames between groups are dropped.
    groups: Vec<u32>,
    /// Frames held for each frozen node (`None`: it runs).
    frozen: Vec<Option<Vec<Packet>>>,
    in_flight: BTreeMap<(Instant, u64), Packet>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    seq: u64,
    rng: StdRng,
    traffic: Traffic,
    /// Verdicts about each node declared down while it was running.
    false_downs: Vec<u64>,
    /// The record being watched, and when each node first held it.
    watched: Option<(RecordKey, u64)>,
    arrivals: Vec<Option<Instant>>,
    /// Whether the record layer's peers come from an oracle (see [`Sim::use_peer_oracle`]).
    oracle: bool,
}

/// The identity key of simulated node `i`: the same in every run.
pub fn node_key(i: usize) -> NodeKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&u64::try_from(i).unwrap_or(u64::MAX).to_be_bytes());
    NodeKey::from_seed(seed)
}

/// The ids of simulated nodes `0..`, and back: a node id is the hash of its
/// key, so the index cannot be read out of it.
#[derive(Default)]
struct Ids {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
}

fn ids() -> MutexGuard<'static, Ids> {
    static IDS: OnceLock<Mutex<Ids>> = OnceLock::new();
    IDS.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner)
}

/// The identity of simulated node `i`.
pub fn identity(i: usize, bump: u16) -> NodeIdentity {
    let id = {
        let mut ids = ids();
        while ids.ids.len() <= i {
            let next = ids.ids.len();
            let id = node_key(next).id();
            ids.ids.push(id);
            ids.index.insert(id, next);
        }
        ids.ids[i]
    };
    let [_, _, hi, lo] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    NodeIdentity { id, bump, name: format!("n{i}"), addr: SocketAddr::new(Ipv4Addr::new(198, 18, hi, lo).into(), 7950) }
}

/// The index of the simulated node with id `id` (`usize::MAX` for an id no
/// simulated node has).
fn index_of(id: NodeId) -> usize {
    ids().index.get(&id).copied().unwrap_or(usize::MAX)
}

impl Sim {
    /// A network of `config.nodes` running cores that know nobody yet.
    pub fn new(config: SimConfig) -> Self {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let nodes = (0..config.nodes).map(|i| Some(new_core(i, 1, rng.random(), now))).collect();
        let mut sim = Self {
            now,
            bumps: vec![1; config.nodes],
            groups: vec![0; config.nodes],
            frozen: (0..config.nodes).map(|_| None).collect(),
            arrivals: vec![None; config.nodes],
            nodes,
            in_flight: BTreeMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            rng,
            traffic: Traffic::default(),
            false_downs: vec![0; config.nodes],
            watched: None,
            oracle: false,
            config,
        };
        for i in 0..sim.nodes.len() {
            sim.touch(i);
        }
        sim
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s core.
    ///
    /// # Panics
    /// If node `i` is stopped.
    pub fn node(&mut self, i: usize) -> &mut Core {
        self.nodes[i].as_mut().expect("the node is running")
    }

    /// Node `i`'s core, if it runs.
    pub fn get(&self, i: usize) -> Option<&Core> {
        self.nodes[i].as_ref()
    }

    /// Has every node from 1 on join through node 0, as `mesh join` does
    /// (an announce and a member-list pull).
    pub fn join_all_through_first(&mut self) {
        for i in 1..self.nodes.len() {
            self.join(i, 0);
        }
    }

    /// Has node `i` join through node `through`.
    pub fn join(&mut self, i: usize, through: usize) {
        let now = self.now;
        let peer = identity(through, 0);
        let core = self.node(i);
        // A node that cannot announce shows up as not having joined.
        let _ = core.announce(now, peer.clone());
        core.request_members(peer);
        self.touch(i);
    }

    /// Makes every node know every other at once (for large simulations,
    /// where joining one by one would dominate the run): each node is
    /// handed the full member list, as a member-list pull would.
    pub fn bootstrap(&mut self) {
        let members: Vec<_> = (0..self.nodes.len()).map(|i| foca::Member::alive(identity(i, self.bumps[i]))).collect();
        let frame = wire::encode(&Frame::Members(members));
        for i in 0..self.nodes.len() {
            let now = self.now;
            let from = identity((i + 1) % self.nodes.len(), 0).id;
            if let Some(core) = self.nodes[i].as_mut() {
                let _ = core.handle_datagram(now, from, &frame);
            }
            self.touch(i);
        }
    }

    /// Gives every node's record layer an oracle of the whole cluster in
    /// place of SWIM's member list, and leaves SWIM empty: for simulations
    /// too large for full member lists, measuring push and sync alone
    /// (gossip, which only adds paths, does not run).
    pub fn use_peer_oracle(&mut self) {
        self.oracle = true;
        let n = self.nodes.len();
        for (i, core) in self.nodes.iter_mut().enumerate() {
            if let Some(core) = core.as_mut() {
                core.set_peer_oracle(Box::new(WholeCluster { n, me: i }));
            }
        }
    }

    /// Runs the network for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        while self.step(until) {}
        self.now = until;
    }

    /// Runs until `done` holds (checked after each step) or `span` passes;
    /// returns whether it held.
    pub fn run_until(&mut self, span: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let until = self.now + span;
        while !done(self) {
            if !self.step(until) {
                self.now = until;
                return done(self);
            }
        }
        true
    }

    /// Stops node `i` silently, as a crash would.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        self.frozen[i] = None;
    }

    /// Restarts node `i` with a bumped identity (as the agent does at start).
    pub fn restart(&mut self, i: usize) -> &mut Core {
        self.bumps[i] = self.bumps[i].wrapping_add(1);
        let seed = self.rng.random();
        let mut core = new_core(i, self.bumps[i], seed, self.now);
        if self.oracle {
            core.set_peer_oracle(Box::new(WholeCluster { n: self.nodes.len(), me: i }));
        }
        self.nodes[i] = Some(core);
        self.touch(i);
        self.node(i)
    }

    /// Freezes node `i`: it handles nothing until [`Sim::resume`], and the
    /// frames sent to it wait.
    pub fn freeze(&mut self, i: usize) {
        self.frozen[i].get_or_insert_with(Vec::new);
    }

    /// Resumes frozen node `i` the way a stopped process wakes up: its
    /// overdue timers fire first, then it reads what waited for it.
    pub fn resume(&mut self, i: usize) {
        let Some(held) = self.frozen[i].take() else { return };
        let now = self.now;
        if let Some(core) = self.nodes[i].as_mut() {
            core.handle_timeout(now);
        }
        self.touch(i);
        for packet in held {
            self.deliver(packet);
        }
    }

    /// Splits the network: node `i` is in group `groups[i]`.
    pub fn partition(&mut self, groups: Vec<u32>) {
        self.groups = groups;
    }

    /// Joins all groups back.
    pub fn heal(&mut self) {
        self.groups = vec![0; self.nodes.len()];
    }

    /// How node `observer` sees node `of`.
    pub fn status(&self, observer: usize, of: usize) -> Option<Status> {
        let core = self.nodes[observer].as_ref()?;
        core.members().into_iter().find(|m| m.identity.id == identity(of, 0).id).map(|m| m.status)
    }

    /// Frames and bytes sent so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// How many times a running member was declared down.
    pub fn false_downs(&self) -> u64 {
        self.false_downs.iter().sum()
    }

    /// How many times node `i` was declared down while it was running.
    pub fn false_downs_about(&self, i: usize) -> u64 {
        self.false_downs[i]
    }

    /// Starts watching for `key` at `version` or later: [`Sim::arrivals`]
    /// then tells when each node first held it.
    pub fn watch(&mut self, key: RecordKey, version: u64) {
        self.arrivals = vec![None; self.nodes.len()];
        self.watched = Some((key, version));
        for i in 0..self.nodes.len() {
            self.check_arrival(i);
        }
    }

    /// When each node first held the watched record (`None`: not yet).
    pub fn arrivals(&self) -> &[Option<Instant>] {
        &self.arrivals
    }

    /// Has node `origin` publish its endpoint `name`, then runs until
    /// every node holds it or `within` passes. Returns each node's delay
    /// from the publication (`None`: it never got it).
    pub fn spread_endpoint(
        &mut self,
        origin: usize,
        name: &str,
        spec: EndpointSpec,
        within: Duration,
    ) -> Result<Vec<Option<Duration>>, PublishError> {
        let record = self.with_node(origin, |core, now| core.put_endpoint(now, name, spec))?;
        let start = self.now;
        self.watch(record.key, record.version);
        self.run_until(within, |sim| sim.arrivals().iter().all(Option::is_some));
        Ok(self.arrivals.iter().map(|at| at.map(|at| at - start)).collect())
    }

    /// Lets a caller act on node `i` and then sends what it produced.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Core, Instant) -> R) -> R {
        let now = self.now;
        let result = f(self.node(i), now);
        self.touch(i);
        result
    }

    /// Processes the next packet or timer due before `until`; returns
    /// whether there was one.
    fn step(&mut self, until: Instant) -> bool {
        let next_packet = self.in_flight.keys().next().map(|k| k.0);
        let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let next = match (next_packet, next_timer) {
            (Some(p), Some(t)) => p.min(t),
            (Some(p), None) => p,
            (None, Some(t)) => t,
            (None, None) => return false,
        };
        if next > until {
            return false;
        }
        self.now = self.now.max(next);
        if next_packet == Some(next) {
            if let Some((_, packet)) = self.in_flight.pop_first() {
                self.deliver(packet);
            }
        } else if let Some(Reverse((_, i))) = self.timers.pop() {
            let now = self.now;
            let due = self.nodes[i].as_ref().and_then(Core::poll_timeout).is_some_and(|at| at <= now);
            // A frozen node's timers wait for resume().
            if due && self.frozen[i].is_none() {
                self.node(i).handle_timeout(now);
                self.touch(i);
            }
        }
        true
    }

    fn deliver(&mut self, packet: Packet) {
        let now = self.now;
        if self.groups[packet.from] != self.groups[packet.to] {
            return;
        }
        if let Some(held) = self.frozen[packet.to].as_mut() {
            held.push(packet);
            return;
        }
        let from = identity(packet.from, 0).id;
        let Some(core) = self.nodes[packet.to].as_mut() else { return };
        // A refused frame changes nothing, as in the agent.
        let _ = core.handle_datagram(now, from, &packet.payload);
        self.touch(packet.to);
    }

    /// Sends what node `i` produced, notes its events and its next deadline.
    fn touch(&mut self, i: usize) {
        let Some(core) = self.nodes[i].as_mut() else { return };
        let mut out = Vec::new();
        while let Some(transmit) = core.poll_transmit() {
            out.push(transmit);
        }
        let mut events = Vec::new();
        while let Some(event) = core.poll_event() {
            events.push(event);
        }
        if let Some(at) = core.poll_timeout() {
            self.timers.push(Reverse((at, i)));
        }
        for transmit in out {
            self.traffic.messages += 1;
            self.traffic.bytes += transmit.payload.len() as u64;
            let kind = transmit.payload.get(1).map_or(0, |&k| usize::from(k).min(15));
            self.traffic.bytes_by_kind[kind] += transmit.payload.len() as u64;
            if !transmit.reliable && self.rng.random::<f64>() < self.config.loss {
                continue;
            }
            let jitter = self.config.jitter.mul_f64(self.rng.random::<f64>());
            let at = self.now + self.config.latency + jitter;
            let to = index_of(transmit.to.id);
            if to < self.nodes.len() {
                self.in_flight.insert((at, self.seq), Packet { from: i, to, payload: transmit.payload });
                self.seq += 1;
            }
        }
        for event in events {
            match event {
                // A running member in the same group was wrongly declared down.
                Event::MemberDown(id) if self.is_reachable(i, index_of(id.id)) => {
                    self.false_downs[index_of(id.id)] += 1;
                }
                Event::RecordsChanged => self.check_arrival(i),
                _ => {}
            }
        }
    }

    fn is_reachable(&self, from: usize, to: usize) -> bool {
        self.nodes.get(to).is_some_and(Option::is_some) && self.groups[from] == self.groups[to]
    }

    fn check_arrival(&mut self, i: usize) {
        let Some((key, version)) = &self.watched else { return };
        if self.arrivals[i].is_some() {
            return;
        }
        let held = self.nodes[i].as_ref().and_then(|core| core.record(key)).is_some_and(|r| r.version >= *version);
        if held {
            self.arrivals[i] = Some(self.now);
        }
    }
}

/// Every simulated node but one, as a [`PeerOracle`].
struct WholeCluster {
    n: usize,
    me: usize,
}

impl PeerOracle for WholeCluster {
    fn len(&self) -> usize {
        self.n - 1
    }

    fn sample(&self, rng: &mut StdRng, k: usize, exclude: Option<NodeId>) -> Vec<NodeIdentity> {
        let excluded = exclude.map(index_of);
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        let wanted = k.min(self.n.saturating_sub(2));
        while picked.len() < wanted {
            let j = rng.random_range(0..self.n);
            if j != self.me && Some(j) != excluded && !picked.contains(&j) {
                picked.push(j);
            }
        }
        picked.into_iter().map(|j| identity(j, 1)).collect()
    }

    fn get(&self, id: NodeId) -> Option<NodeIdentity> {
        let j = index_of(id);
        (j < self.n && j != self.me).then(|| identity(j, 1))
    }
}

fn new_core(i: usize, bump: u16, seed: u64, now: Instant) -> Core {
    let mut core = Core::new(identity(i, bump), node_key(i), seed);
    core.set_wall_clock(now, WALL_START_MS);
    // Starts the core's own periodic timers (sync, reaping), as the agent's driver does.
    core.handle_timeout(now);
    core
}
