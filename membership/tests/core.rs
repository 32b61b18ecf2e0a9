//! The sans-io core driven by a tiny virtual network: no sockets, no real
//! time, the same code the agent runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_membership::core::CoreError;
use mesh_membership::{Core, NodeId, NodeIdentity, Status};

/// Nodes exchanging datagrams with a fixed one-way latency, in virtual time.
struct Net {
    now: Instant,
    nodes: Vec<Option<Core>>,
    in_flight: BTreeMap<(Instant, u64), (usize, usize, Vec<u8>)>,
    seq: u64,
}

const LATENCY: Duration = Duration::from_millis(1);

fn identity(i: usize, bump: u16) -> NodeIdentity {
    let mut id = [0u8; 16];
    id[0] = u8::try_from(i).expect("small test");
    NodeIdentity {
        id: NodeId(id),
        bump,
        name: format!("n{i}"),
        addr: format!("198.18.0.{}:7950", i + 1).parse().expect("addr"),
    }
}

impl Net {
    fn new(n: usize) -> Self {
        let nodes = (0..n).map(|i| Some(Core::new(identity(i, 1), i as u64))).collect();
        Self { now: Instant::now(), nodes, in_flight: BTreeMap::new(), seq: 0 }
    }

    fn index_of(&self, id: NodeId) -> usize {
        usize::from(id.0[0])
    }

    /// Moves every node's outgoing datagrams onto the wire.
    fn collect(&mut self) {
        for from in 0..self.nodes.len() {
            let Some(core) = self.nodes[from].as_mut() else { continue };
            let mut out = Vec::new();
            while let Some(t) = core.poll_transmit() {
                out.push(t);
            }
            while core.poll_event().is_some() {}
            for t in out {
                let to = self.index_of(t.to.id);
                self.in_flight.insert((self.now + LATENCY, self.seq), (from, to, t.payload));
                self.seq += 1;
            }
        }
    }

    /// Runs the network until `until` in virtual time.
    fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        loop {
            self.collect();
            let next_packet = self.in_flight.keys().next().map(|k| k.0);
            let next_timer = self.nodes.iter().flatten().filter_map(Core::poll_timeout).min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else { break };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (from, to, payload) = entry.remove();
                let from_id = identity(from, 0).id;
                if let Some(core) = self.nodes[to].as_mut() {
                    let _ = core.handle_datagram(self.now, from_id, &payload);
                }
            }
            for core in self.nodes.iter_mut().flatten() {
                core.handle_timeout(self.now);
            }
        }
        self.now = until;
    }

    fn join_all_through_first(&mut self) {
        for i in 1..self.nodes.len() {
            let now = self.now;
            self.node(i).announce(now, identity(0, 0)).expect("announce");
        }
    }

    fn node(&mut self, i: usize) -> &mut Core {
        self.nodes[i].as_mut().expect("node is running")
    }

    fn status(&self, observer: usize, of: usize) -> Option<Status> {
        let core = self.nodes[observer].as_ref()?;
        core.members().into_iter().find(|m| m.identity.id == identity(of, 0).id).map(|m| m.status)
    }
}

#[test]
fn joins_through_one_member_reach_everyone() {
    let mut net = Net::new(8);
    net.join_all_through_first();
    net.run_for(Duration::from_secs(3));
    for observer in 0..8 {
        for of in 0..8 {
            assert_eq!(net.status(observer, of), Some(Status::Alive), "n{observer} on n{of}");
        }
    }
}

#[test]
fn graceful_leave_is_left_and_a_crash_is_down() {
    let mut net = Net::new(5);
    net.join_all_through_first();
    net.run_for(Duration::from_secs(3));

    let now = net.now;
    net.node(3).leave(now).expect("leave");
    net.nodes[4] = None; // crashed: silent from now on
    net.run_for(Duration::from_millis(50));
    for observer in 0..3 {
        assert_eq!(net.status(observer, 3), Some(Status::Left), "n{observer} sees n3 left at once");
    }
    net.run_for(Duration::from_secs(15));
    for observer in 0..3 {
        assert_eq!(net.status(observer, 3), Some(Status::Left), "n3 stays left");
        assert_eq!(net.status(observer, 4), Some(Status::Down), "n{observer} sees n4 down");
    }

    // n4 restarts with a later bump and finds its way back.
    net.nodes[4] = Some(Core::new(identity(4, 2), 99));
    let now = net.now;
    net.node(4).announce(now, identity(0, 0)).expect("announce");
    net.run_for(Duration::from_secs(3));
    for observer in 0..3 {
        assert_eq!(net.status(observer, 4), Some(Status::Alive), "n{observer} sees n4 back");
    }
}

#[test]
fn a_packet_naming_another_sender_is_refused() {
    let mut net = Net::new(2);
    net.join_all_through_first();
    // Capture n1's announce and replay it as if it came from a third node.
    net.collect();
    let (_, (_, _, payload)) = net.in_flight.pop_first().expect("an announce is in flight");
    let now = net.now;
    let err = net.node(0).handle_datagram(now, identity(7, 0).id, &payload).expect_err("spoofed");
    assert!(matches!(err, CoreError::Spoofed { .. }), "{err}");
    assert_eq!(net.status(0, 1), None, "the spoofed announce added nobody");
    assert!(net.node(0).handle_datagram(now, identity(1, 0).id, b"\x01garbage").is_err());
}

#[test]
fn a_late_joiner_learns_every_member_even_past_one_feed_packet() {
    // 40 members do not fit one SWIM feed (about 30 do): the member list a
    // joiner asks for fills in the rest at once.
    let mut net = Net::new(41);
    for i in 1..40 {
        let now = net.now;
        net.node(i).announce(now, identity(0, 0)).expect("announce");
    }
    net.run_for(Duration::from_secs(5));
    let now = net.now;
    net.node(40).announce(now, identity(0, 0)).expect("announce");
    net.node(40).request_members(identity(0, 0));
    net.run_for(Duration::from_millis(20));
    let known = (0..40).filter(|&of| net.status(40, of) == Some(Status::Alive)).count();
    assert_eq!(known, 40, "the late joiner knows everyone within a few round trips");
}
