//! Cores wired together in virtual time, some speaking only protocol 1
//! (standing in for agents of 0.2: their links negotiate `mesh/1`), to
//! check that records needing protocol 2 reach every member speaking it
//! and never one that does not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Core, PeerOracle};
use crate::identity::{NodeId, NodeIdentity, Status};
use crate::node_key::NodeKey;
use crate::records::testing::{endpoint, endpoint_record, member, member_record, network};
use crate::records::{NetworkSpec, PolicySpec, Record, RecordKey, Tier};
use crate::wire::{self, Frame, Protocol};

/// Virtual time between two turns.
const STEP: Duration = Duration::from_millis(10);

fn identity(i: usize) -> (NodeIdentity, NodeKey) {
    let byte = u8::try_from(i + 1).expect("a small test cluster");
    let key = NodeKey::from_seed([byte; 32]);
    let addr: SocketAddr = format!("198.18.0.{byte}:7950").parse().expect("addr");
    (NodeIdentity { id: key.id(), bump: 0, name: format!("n{i}"), addr }, key)
}

/// Cores that deliver to each other at once, each link negotiating the
/// lower of its two ends' protocols.
struct Cluster {
    cores: Vec<Core>,
    speaks: Vec<Protocol>,
    now: Instant,
    /// Frames that went over a `mesh/1` link but needed protocol 2.
    violations: Vec<String>,
}

impl Cluster {
    fn new(speaks: &[Protocol]) -> Self {
        let now = Instant::now();
        let cores = (0..speaks.len())
            .map(|i| {
                let (identity, key) = identity(i);
                let mut core = Core::new(identity, key, u64::try_from(i).expect("small"));
                core.set_wall_clock(now, 1_000_000);
                core.handle_timeout(now);
                core
            })
            .collect();
        Self { cores, speaks: speaks.to_vec(), now, violations: Vec::new() }
    }

    fn id(&self, i: usize) -> NodeId {
        self.cores[i].identity().id
    }

    /// Node `i` joins through node 0.
    fn join(&mut self, i: usize) {
        let through = self.cores[0].identity().clone();
        self.cores[i].announce(self.now, through).expect("announce");
        self.deliver();
    }

    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.now += STEP;
            for core in &mut self.cores {
                if core.poll_timeout().is_some_and(|at| at <= self.now) {
                    core.handle_timeout(self.now);
                }
            }
            self.deliver();
        }
    }

    /// Delivers everything in flight, and what it causes, at once.
    fn deliver(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.cores.len() {
                while let Some(transmit) = self.cores[from].poll_transmit() {
                    moved = true;
                    let Some(to) = self.cores.iter().position(|c| c.identity().id == transmit.to.id) else { continue };
                    let link = self.speaks[from].min(self.speaks[to]);
                    if link == Protocol::V1 {
                        self.check_readable_by_v1(from, to, &transmit.payload);
                    }
                    let (now, sender) = (self.now, self.id(from));
                    self.cores[to].set_protocol(sender, link);
                    let _ = self.cores[to].handle_datagram(now, sender, &transmit.payload);
                }
                while self.cores[from].poll_event().is_some() {}
            }
            if !moved {
                return;
            }
        }
    }

    fn check_readable_by_v1(&mut self, from: usize, to: usize, payload: &[u8]) {
        let Ok(frame) = wire::decode(payload) else { return };
        let records_v2 = match &frame {
            Frame::Records(records) | Frame::SyncRecords(records) => records.iter().any(Record::needs_v2),
            _ => false,
        };
        if frame.protocol() > Protocol::V1 || records_v2 {
            self.violations.push(format!("n{from} -> n{to}: {frame:?}"));
        }
    }

    fn root(&self, i: usize, tier: Tier) -> u64 {
        self.cores[i].shared.lock().store.root(tier)
    }

    fn all_alive(&self) -> bool {
        self.cores.iter().all(|c| {
            let members = c.members();
            members.len() == self.cores.len() && members.iter().all(|m| m.status == Status::Alive)
        })
    }
}

fn encrypted(name: &str, vni: u32, subnet: &str) -> NetworkSpec {
    NetworkSpec { encrypted: true, ..network(name, vni, subnet, 5) }
}

#[test]
fn a_member_speaking_protocol_1_never_gets_what_needs_protocol_2_and_its_digest_still_compares() {
    use Protocol::{V1, V2};
    let mut cluster = Cluster::new(&[V2, V2, V1, V2]);
    for i in 1..3 {
        cluster.join(i);
    }
    cluster.run_for(Duration::from_secs(5));
    assert!(cluster.cores[..3].iter().all(|c| c.active_members() == 2), "three members");

    let now = cluster.now;
    cluster.cores[0].announce_member(now, member(1)).expect("announced");
    cluster.cores[0].create_network(now, encrypted("secret", 20, "10.20.0.0/24")).expect("created");
    cluster.cores[0].set_policy(now, PolicySpec { encrypt_networks: true }).expect("set");
    cluster.cores[1].announce_member(now, member(2)).expect("announced");
    cluster.cores[2].create_network(now, network("dev", 10, "10.10.0.0/24", 5)).expect("created");
    cluster.cores[2].put_endpoint(now, "old", endpoint("dev", "10.10.0.2", 6)).expect("put");
    cluster.deliver();
    // Pushed at once to the member speaking protocol 2.
    assert_eq!(cluster.cores[1].view().members().len(), 2);
    cluster.run_for(Duration::from_secs(20));

    // Node 3 joins late: what needs protocol 2 reaches it by sync alone.
    cluster.join(3);
    cluster.run_for(Duration::from_secs(20));
    assert!(cluster.all_alive());
    assert_eq!(cluster.violations, Vec::<String>::new());
    for i in [0, 1, 3] {
        let view = cluster.cores[i].view();
        let keys: Vec<NodeId> = view.members().keys().copied().collect();
        let mut expected = vec![cluster.id(0), cluster.id(1)];
        expected.sort();
        assert_eq!(keys, expected, "n{i}'s member records");
        assert_eq!(view.policy(), Some(&PolicySpec { encrypt_networks: true }), "n{i}");
        assert!(view.network("secret").is_some_and(|n| n.spec.encrypted), "n{i}");
        assert!(view.network("dev").is_some_and(|n| n.endpoints.len() == 1), "n{i}");
    }
    let old = &cluster.cores[2];
    assert!(old.records().iter().all(|r| !r.needs_v2()), "n2 holds nothing that needs protocol 2");
    assert!(old.view().network("dev").is_some() && old.view().network("secret").is_none());
    // The root a 0.2 agent compares is equal everywhere; the digests of
    // the members speaking protocol 2 are equal, and show what n2 lacks.
    let v1: Vec<u64> = (0..4).map(|i| cluster.root(i, Tier::V1)).collect();
    assert!(v1.iter().all(|&root| root == v1[0]), "{v1:x?}");
    assert_eq!(old.records_root(), v1[2], "n2's digest is a 0.2 agent's");
    let digests: Vec<u64> = [0, 1, 3].iter().map(|&i| cluster.cores[i].records_root()).collect();
    assert!(digests.iter().all(|&d| d == digests[0] && d != v1[0]), "{digests:x?}");
    let stats = old.record_stats().sync;
    assert!(stats.in_step > 0, "n2's syncs find it in step: {stats:?}");
}

#[test]
fn a_member_record_gets_a_new_version_only_when_it_changes() {
    let mut cluster = Cluster::new(&[Protocol::V2]);
    let (now, key) = (cluster.now, RecordKey::Member(cluster.id(0)));
    let core = &mut cluster.cores[0];
    core.announce_member(now, member(1)).expect("announced");
    let first = core.record(&key).expect("held");
    core.announce_member(now, member(1)).expect("announced");
    assert_eq!(core.record(&key), Some(first.clone()), "unchanged: no new version");
    core.announce_member(now, member(2)).expect("announced");
    assert!(core.record(&key).is_some_and(|r| r.version > first.version));
    core.set_policy(now, PolicySpec { encrypt_networks: true }).expect("set");
    let policy = core.record(&RecordKey::Policy).expect("held");
    core.set_policy(now, PolicySpec { encrypt_networks: true }).expect("set");
    assert_eq!(core.record(&RecordKey::Policy), Some(policy));
}

#[test]
fn a_stale_member_record_of_this_node_from_a_peer_is_overruled() {
    let mut cluster = Cluster::new(&[Protocol::V2, Protocol::V2]);
    cluster.join(1);
    cluster.run_for(Duration::from_secs(3));
    let now = cluster.now;
    cluster.cores[0].announce_member(now, member(1)).expect("announced");
    // A version from before a restart, above the one announced since.
    let stale = member_record(1, 99, member(7), 1);
    assert_eq!(stale.key, RecordKey::Member(cluster.id(0)));
    let peer = cluster.id(1);
    cluster.cores[0].handle_datagram(now, peer, &wire::encode(&Frame::Records(vec![stale]))).expect("handled");
    cluster.deliver();
    for core in &cluster.cores {
        assert_eq!(core.view().members().get(&cluster.id(0)), Some(&member(1)));
    }
}

/// The active members of a large simulated cluster.
struct Peers(Vec<NodeIdentity>);

impl PeerOracle for Peers {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn sample(&self, rng: &mut rand::rngs::StdRng, k: usize, exclude: Option<NodeId>) -> Vec<NodeIdentity> {
        rand::seq::IteratorRandom::sample(self.0.iter().filter(|p| Some(p.id) != exclude).cloned(), rng, k)
    }

    fn get(&self, id: NodeId) -> Option<NodeIdentity> {
        self.0.iter().find(|p| p.id == id).cloned()
    }
}

#[test]
fn in_a_large_cluster_records_needing_protocol_2_are_relayed_only_to_members_speaking_it() {
    let (me, key) = identity(0);
    let mut core = Core::new(me, key, 1);
    let now = Instant::now();
    core.set_wall_clock(now, 1_000_000);
    let peers: Vec<NodeIdentity> = (1..=100).map(|i| identity(i).0).collect();
    for (i, peer) in peers.iter().enumerate() {
        core.set_protocol(peer.id, if i % 2 == 0 { Protocol::V2 } else { Protocol::V1 });
    }
    let v2: Vec<NodeId> = peers.iter().step_by(2).map(|p| p.id).collect();
    core.set_peer_oracle(Box::new(Peers(peers.clone())));
    let news = vec![member_record(2, 1, member(9), 2), endpoint_record(2, "a", 2, endpoint("dev", "10.0.0.2", 1))];
    core.handle_datagram(now, peers[0].id, &wire::encode(&Frame::Records(news))).expect("handled");
    let (mut relayed_v2, mut relayed_v1) = (0, 0);
    while let Some(transmit) = core.poll_transmit() {
        let Ok(Frame::Records(records)) = wire::decode(&transmit.payload) else { continue };
        if records.iter().any(Record::needs_v2) {
            assert!(v2.contains(&transmit.to.id), "relayed to a member speaking protocol 1");
            relayed_v2 += 1;
        } else {
            relayed_v1 += 1;
        }
    }
    assert!(relayed_v2 > 0 && relayed_v1 > 0, "{relayed_v2} {relayed_v1}");
}
