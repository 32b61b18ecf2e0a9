//! The sans-io membership core: foca plus an ordered timer queue, the
//! cluster-size-aware configuration, Lifeguard's confirmations and local
//! health (`lifeguard`), the leave protocol, and the replicated
//! records with their dissemination and anti-entropy ([`records`]). It never
//! reads the clock, opens a socket or spawns a task: callers pass `now` in
//! and pull datagrams to send, events and the next deadline out. The tokio
//! [`driver`](crate::driver) and the simulator drive this very same code.

mod config;
mod control;
mod encryption;
mod held;
mod lifeguard;
mod peers;
mod records;
mod swim_codec;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, State, Timer};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use self::config::config_for;
pub use self::peers::{push_fanout, PeerOracle};
pub use self::records::{Owned, PublishError, RecordStats, SyncSeen, SyncStats, DIRECT_PUSH_LIMIT, SYNC_EVERY};
use self::swim_codec::SwimCodec;
use crate::identity::{NodeId, NodeIdentity, Status};
use crate::node_key::NodeKey;
use crate::records::gossip::{RecordGossip, SharedStore};
use crate::records::{MemberSpec, Record, RecordKey};
use crate::timers::TimerQueue;
use crate::wire::{self, Frame, Protocol, WireError};

/// Largest SWIM packet foca builds. It fits one QUIC datagram on any path
/// with the IPv6 minimum MTU (QUIC guarantees at least 1200 bytes of UDP
/// payload) with room for the QUIC and framing overhead.
pub const MAX_SWIM_PACKET: usize = 1100;

/// Most members sent or taken in one member list (about 1 MiB on the wire).
const MAX_MEMBERS_FRAME: usize = 20_000;

/// One member and its status, as reported by [`Core::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's current identity.
    pub identity: NodeIdentity,
    /// Its status as this node sees it.
    pub status: Status,
}

/// A datagram the core wants delivered.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The node it is for.
    pub to: NodeIdentity,
    /// The framed bytes to send.
    pub payload: Vec<u8>,
    /// Whether it must arrive (a stream) or may be lost (a datagram).
    pub reliable: bool,
}

/// Something that happened to the cluster or to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member became reachable.
    MemberUp(NodeIdentity),
    /// A member was declared failed.
    MemberDown(NodeIdentity),
    /// A member left on purpose.
    MemberLeft(NodeIdentity),
    /// A member came back with a newer identity (restart or rejoin).
    MemberRenamed {
        /// The identity it had.
        old: NodeIdentity,
        /// The identity that replaced it.
        new: NodeIdentity,
    },
    /// This node is known to at least one active member.
    Active,
    /// This node knows no active member.
    Idle,
    /// This node was declared down and rejoined with a bumped identity,
    /// which the caller should persist.
    Rejoined(NodeIdentity),
    /// The records changed (here or elsewhere): the view may have changed.
    RecordsChanged,
    /// A member was removed from the cluster for good: refuse its connections.
    Removed(NodeId),
}

/// Why an input was rejected. The core's state is unchanged by it.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The bytes were not a frame of our protocol.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A SWIM packet claimed to come from another node than the one whose
    /// certificate the connection presented.
    #[error("SWIM packet from {claimed:?} arrived over {actual:?}'s connection")]
    Spoofed {
        /// The node named in the packet.
        claimed: NodeId,
        /// The node that sent it.
        actual: NodeId,
    },
    /// Foca refused the input (malformed or unexpected packet).
    #[error("swim: {0}")]
    Swim(#[from] foca::Error),
    /// The sender was removed from the cluster.
    #[error("node {0} was removed from the cluster")]
    Removed(NodeId),
}

type Swim = Foca<NodeIdentity, SwimCodec, StdRng, RecordGossip>;

/// What the core's timer queue holds.
#[derive(Debug)]
enum CoreTimer {
    /// One of foca's.
    Swim(Timer<NodeIdentity>),
    /// Time for an anti-entropy round: its hello rides with the next SWIM
    /// packet to a member.
    Sync,
    /// The due hello found no SWIM packet to ride with: it goes alone, to
    /// a random member.
    SyncAlone,
    /// Time to reap expired tombstones.
    Reap,
    /// A suspicion of this node's may be due (see [`lifeguard`]).
    SuspicionDue(NodeId),
    /// Seals of records merged unchecked are due for their check.
    CheckSeals,
}

/// The membership and record state machine of one node.
pub struct Core {
    swim: Swim,
    /// Tells the SWIM codec which node sent the packet it decodes.
    swim_sender: Arc<Mutex<Option<NodeId>>>,
    /// This node's identity key, which signs its records.
    key: NodeKey,
    runtime: AccumulatingRuntime<NodeIdentity>,
    timers: TimerQueue<CoreTimer>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Nodes that announced their leave, with the bump that left.
    left: HashMap<NodeId, u16>,
    /// Cluster size the current foca config was derived for.
    configured_size: usize,
    has_left: bool,
    /// The record store, shared with foca's broadcast handler.
    shared: SharedStore,
    /// This node's live endpoints, as it last published them: the truth
    /// it restores if a peer holds something else under its name.
    own: BTreeMap<RecordKey, Record>,
    /// The next version this node gives a record; it only grows.
    next_version: u64,
    /// A wall-clock reading and the instant it was taken, to timestamp
    /// tombstones; `None` until [`Core::set_wall_clock`].
    epoch: Option<(Instant, u64)>,
    /// Chooses sync partners and push targets.
    rng: StdRng,
    /// Whether a [`Event::RecordsChanged`] is owed.
    records_changed: bool,
    /// Whether the periodic timers have been started.
    timers_started: bool,
    /// When a member coming up last triggered a sync.
    last_triggered_sync: Option<Instant>,
    /// Number of [`Event::RecordsChanged`] emitted so far.
    generation: u64,
    /// When a sync last pulled a member list.
    last_members_pull: Option<Instant>,
    /// Whether a sync round's hello waits for a SWIM packet to ride with.
    hello_due: bool,
    /// Stands in for SWIM's member list in large simulations.
    oracle: Option<Box<dyn peers::PeerOracle>>,
    /// Suspicions, accusations and local health.
    lifeguard: lifeguard::Lifeguard,
    /// Whether a [`CoreTimer::CheckSeals`] is pending.
    seal_checks_scheduled: bool,
    /// How sync rounds went.
    sync_stats: records::SyncStats,
    /// Records members were seen holding lately, not sent to them again.
    recently_held: held::RecentlyHeld,
    /// The protocol each member's connection negotiated, as the driver told.
    protocols: HashMap<NodeId, Protocol>,
    /// What this node last announced in its member record: the truth it
    /// restores if a peer holds another version.
    announced: Option<MemberSpec>,
}

impl Core {
    /// A core for the node whose identity key is `key` (so `identity.id`
    /// is `key.id()`), seeded so that runs are reproducible.
    pub fn new(identity: NodeIdentity, key: NodeKey, seed: u64) -> Self {
        debug_assert_eq!(identity.id, key.id(), "a node's id is its key's");
        let shared = SharedStore::default();
        let gossip = RecordGossip::new(shared.clone());
        let codec = SwimCodec::new(identity.clone());
        let swim_sender = codec.sender_handle();
        let swim = Foca::with_custom_broadcast(identity, config_for(1), StdRng::seed_from_u64(seed), codec, gossip);
        Self {
            swim,
            swim_sender,
            key,
            runtime: AccumulatingRuntime::new(),
            timers: TimerQueue::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            left: HashMap::new(),
            configured_size: 1,
            has_left: false,
            shared,
            own: BTreeMap::new(),
            next_version: 1,
            epoch: None,
            rng: StdRng::seed_from_u64(seed.wrapping_add(1)),
            records_changed: false,
            timers_started: false,
            last_triggered_sync: None,
            generation: 0,
            last_members_pull: None,
            hello_due: false,
            oracle: None,
            lifeguard: lifeguard::Lifeguard::default(),
            seal_checks_scheduled: false,
            sync_stats: records::SyncStats::default(),
            recently_held: held::RecentlyHeld::default(),
            protocols: HashMap::new(),
            announced: None,
        }
    }

    /// This node's current identity.
    pub fn identity(&self) -> &NodeIdentity {
        self.swim.identity()
    }

    /// Records that this node left the cluster before a restart: it stays
    /// out, answering nobody, until [`Core::announce`] takes it back in.
    pub fn stay_out(&mut self) {
        self.has_left = true;
    }

    /// Whether this node has left the cluster (and not rejoined since).
    pub fn has_left(&self) -> bool {
        self.has_left
    }

    /// Number of members this node believes alive or suspect, itself excluded.
    pub fn active_members(&self) -> usize {
        self.swim.num_members()
    }

    /// Asks `peer` to let this node into its cluster. Only `peer.id` and
    /// `peer.addr` need be right: foca accepts an announce addressed to any
    /// identity of the receiving node.
    pub fn announce(&mut self, now: Instant, peer: NodeIdentity) -> Result<(), CoreError> {
        if self.has_left {
            let renewed = foca::Identity::renew(self.swim.identity()).unwrap_or_else(|| self.identity().clone());
            self.swim.change_identity(renewed.clone(), &mut self.runtime)?;
            self.has_left = false;
            self.events.push_back(Event::Rejoined(renewed));
        }
        let result = self.swim.announce(peer, &mut self.runtime);
        self.drain(now);
        Ok(result?)
    }

    /// Asks `peer` for its whole member list. A SWIM feed fits one packet
    /// (about 30 members), so a node that joins after the others' joins
    /// were disseminated would otherwise learn the rest only from later
    /// feeds; this is memberlist's push/pull on join, over a QUIC stream.
    pub fn request_members(&mut self, peer: NodeIdentity) {
        let request = Frame::MembersRequest(self.identity().clone());
        self.outbox.push_back(Transmit { to: peer, payload: wire::encode(&request), reliable: true });
    }

    /// Handles a datagram from `from`, the node the connection's
    /// certificate names.
    pub fn handle_datagram(&mut self, now: Instant, from: NodeId, data: &[u8]) -> Result<(), CoreError> {
        self.tick(now);
        self.refuse_removed(from)?;
        match wire::decode(data)? {
            // A node that left must not be pulled back in by members that
            // announce to it (they do so to every member they saw go down).
            Frame::Swim(_) if self.has_left => {}
            Frame::Swim(packet) => {
                let claimed = SwimCodec::claimed_sender(&packet).map_err(WireError::Malformed)?;
                if let Some(claimed) = claimed.filter(|&claimed| claimed != from) {
                    return Err(CoreError::Spoofed { claimed, actual: from });
                }
                *self.swim_sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(from);
                let result = self.swim.handle_data(&packet, &mut self.runtime);
                self.drain(now);
                result?;
            }
            Frame::Leave => self.handle_leave(now, from)?,
            Frame::MembersRequest(_) | Frame::Members(_) if self.has_left => {}
            Frame::MembersRequest(requester) if requester.id != from => {
                return Err(CoreError::Spoofed { claimed: requester.id, actual: from });
            }
            Frame::MembersRequest(requester) => self.send_members(requester),
            Frame::Members(members) => {
                let me = self.identity().id;
                let active: HashSet<NodeIdentity> = self.swim.iter_members().map(|m| m.id().clone()).collect();
                // A list is second-hand: a verdict in it about a member
                // this node sees active is stale (the other side of a
                // healed partition) or will reach it first-hand anyway.
                let known = members
                    .into_iter()
                    .take(MAX_MEMBERS_FRAME)
                    .filter(|m| m.id().id != me && (m.state() != State::Down || !active.contains(m.id())));
                // Not re-gossiped: the sender's members are known to the
                // cluster already, and re-broadcasting a whole list (up
                // to thousands of updates, each sent 10·log10(n) times)
                // would flood every join.
                let result = self.swim.apply_many(known, false, &mut self.runtime);
                self.drain(now);
                result?;
            }
            _ if self.has_left => {}
            Frame::Suspect { target, incarnation, accuser } => {
                self.handle_accusation(now, from, (target, incarnation, accuser))?;
            }
            record_frame => self.handle_record_frame(now, from, record_frame),
        }
        Ok(())
    }

    /// Fires every timer due at `now`, in order.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.absorb_stall(now);
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                CoreTimer::Swim(timer @ Timer::ProbeRandomMember(_)) => self.run_probe_timer(now, timer),
                CoreTimer::Swim(timer) => {
                    if let Err(error) = self.swim.handle_timer(timer, &mut self.runtime) {
                        tracing::debug!(%error, "swim timer");
                    }
                }
                CoreTimer::Sync => self.start_sync(now),
                CoreTimer::SyncAlone => self.sync_alone(),
                CoreTimer::Reap => self.reap(now),
                CoreTimer::SuspicionDue(id) => self.suspicion_due(now, id),
                CoreTimer::CheckSeals => self.check_deferred_seals(now),
            }
            self.drain(now);
        }
    }

    /// Leaves the cluster: tells every active member directly (so they show
    /// this node as left at once rather than failed), then lets foca
    /// gossip its own departure.
    pub fn leave(&mut self, now: Instant) -> Result<(), CoreError> {
        let payload = wire::encode(&Frame::Leave);
        for member in self.swim.iter_members() {
            self.outbox.push_back(Transmit { to: member.id().clone(), payload: payload.clone(), reliable: true });
        }
        let result = self.swim.leave_cluster(&mut self.runtime);
        self.has_left = true;
        self.drain(now);
        Ok(result?)
    }

    /// When the core next needs [`Core::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event to report.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every known member (this node first) and its status.
    pub fn members(&self) -> Vec<MemberInfo> {
        let me = MemberInfo {
            identity: self.identity().clone(),
            status: if self.has_left { Status::Left } else { Status::Alive },
        };
        let mut others: Vec<MemberInfo> = self
            .swim
            .iter_membership_state()
            .filter(|member| !self.is_removed(member.id().id))
            .map(|member| MemberInfo {
                identity: member.id().clone(),
                status: match member.state() {
                    State::Alive => Status::Alive,
                    State::Suspect => Status::Suspect,
                    State::Down if self.left_with(member.id()) => Status::Left,
                    State::Down => Status::Down,
                },
            })
            .collect();
        others.sort_by(|a, b| a.identity.name.cmp(&b.identity.name).then(a.identity.id.cmp(&b.identity.id)));
        std::iter::once(me).chain(others).collect()
    }

    fn send_members(&mut self, requester: NodeIdentity) {
        let members: Vec<_> = self.swim.iter_membership_state().take(MAX_MEMBERS_FRAME).cloned().collect();
        self.outbox.push_back(Transmit {
            to: requester,
            payload: wire::encode(&Frame::Members(members)),
            reliable: true,
        });
    }

    fn left_with(&self, identity: &NodeIdentity) -> bool {
        self.left.get(&identity.id) == Some(&identity.bump)
    }

    fn handle_leave(&mut self, now: Instant, from: NodeId) -> Result<(), CoreError> {
        let Some(member) = self.swim.iter_membership_state().find(|m| m.id().id == from).cloned() else {
            return Ok(());
        };
        self.left.insert(from, member.id().bump);
        if member.state() == State::Down {
            self.records_changed = true;
            self.events.push_back(Event::MemberLeft(member.id().clone()));
            return Ok(());
        }
        let down = Member::new(member.id().clone(), member.incarnation(), State::Down);
        let result = self.swim.apply_many(std::iter::once(down), true, &mut self.runtime);
        self.drain(now);
        Ok(result?)
    }

    /// Moves everything foca produced into the core's queues.
    fn drain(&mut self, now: Instant) {
        self.take_packets();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.schedule_swim_timer(now, after, timer);
        }
        let mut size_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            size_changed |= matches!(notification, OwnedNotification::MemberUp(_) | OwnedNotification::MemberDown(_));
            if let Some(event) = self.event_for(now, notification) {
                self.events.push_back(event);
            }
        }
        if size_changed {
            self.resize();
            // Push membership changes now rather than at the next gossip
            // tick: a join or failure reaches the cluster in one round trip.
            if let Err(error) = self.swim.gossip(&mut self.runtime) {
                tracing::debug!(%error, "eager gossip");
            }
            self.take_packets();
        }
        self.settle_records(now);
    }

    /// Moves the packets foca wants sent into the outbox, framed.
    fn take_packets(&mut self) {
        self.take_packets_as(false);
    }

    /// Moves the packets foca wants sent into the outbox, framed, sent as
    /// streams (`reliable`) or datagrams.
    fn take_packets_as(&mut self, reliable: bool) {
        while let Some((to, data)) = self.runtime.to_send() {
            let ride = !reliable && self.hello_due && self.active_peer(to.id).is_some();
            self.outbox.push_back(Transmit {
                to: to.clone(),
                payload: wire::encode(&Frame::Swim(data.to_vec())),
                reliable,
            });
            if ride {
                self.hello_due = false;
                self.sync_with(to);
            }
        }
    }

    fn event_for(&mut self, now: Instant, notification: OwnedNotification<NodeIdentity>) -> Option<Event> {
        Some(match notification {
            OwnedNotification::MemberUp(id) => {
                self.left.remove(&id.id);
                // A member that comes (back) up may hold records this node
                // missed, and miss this node's: sync with it at once.
                self.sync_soon(now, id.clone());
                self.records_changed = true;
                Event::MemberUp(id)
            }
            OwnedNotification::MemberDown(id) if self.left_with(&id) => {
                self.records_changed = true;
                Event::MemberLeft(id)
            }
            OwnedNotification::MemberDown(id) => {
                self.records_changed = true;
                Event::MemberDown(id)
            }
            OwnedNotification::Rename(old, new) => {
                self.sync_soon(now, new.clone());
                Event::MemberRenamed { old, new }
            }
            OwnedNotification::Active => Event::Active,
            OwnedNotification::Idle => Event::Idle,
            OwnedNotification::Rejoin(id) => Event::Rejoined(id),
            OwnedNotification::Defunct => {
                tracing::warn!("this node was declared down and could not renew its identity");
                return None;
            }
        })
    }

    /// Re-derives foca's configuration when the cluster size changed enough
    /// to move its derived parameters (they grow with log10 of the size).
    fn resize(&mut self) {
        let size = self.swim.num_members() + 1;
        let (old, new) = (config_for(self.configured_size), config_for(size));
        if old.max_transmissions == new.max_transmissions && old.suspect_to_down_after == new.suspect_to_down_after {
            return;
        }
        match self.swim.set_config(new) {
            Ok(()) => self.configured_size = size,
            Err(error) => tracing::warn!(%error, size, "could not resize the swim configuration"),
        }
    }
}
