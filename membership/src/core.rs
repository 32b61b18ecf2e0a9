//! The sans-io membership core: foca plus an ordered timer queue, the
//! cluster-size-aware configuration and the leave protocol. It never reads
//! the clock, opens a socket or spawns a task: callers pass `now` in and pull
//! datagrams to send, events and the next deadline out. The tokio
//! [`driver`](crate::driver) and the simulator drive this very same code.

use std::collections::{HashMap, VecDeque};
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, Foca, Member, OwnedNotification, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::identity::{NodeId, NodeIdentity};
use crate::timers::TimerQueue;
use crate::wire::{self, Frame, WireError};

/// Largest SWIM packet foca builds. It fits one QUIC datagram on any path
/// with the IPv6 minimum MTU (QUIC guarantees at least 1200 bytes of UDP
/// payload) with room for the QUIC and framing overhead.
pub const MAX_SWIM_PACKET: usize = 1100;

/// Most members sent or taken in one member list (about 1 MiB on the wire).
const MAX_MEMBERS_FRAME: usize = 20_000;

/// How a member looks from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared failed.
    Down,
    /// Left the cluster on purpose.
    Left,
}

impl Status {
    /// The status as `mesh members` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

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
}

type Swim = Foca<NodeIdentity, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

/// The membership state machine of one node.
pub struct Core {
    swim: Swim,
    runtime: AccumulatingRuntime<NodeIdentity>,
    timers: TimerQueue<Timer<NodeIdentity>>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Nodes that announced their leave, with the bump that left.
    left: HashMap<NodeId, u16>,
    /// Cluster size the current foca config was derived for.
    configured_size: usize,
    has_left: bool,
}

/// Foca's configuration for a cluster of `size` nodes: memberlist's LAN
/// profile with these changes:
/// - suspicion lasts 3 probe periods per log10 of the size, not 4: failures
///   are declared sooner (a later change adds Lifeguard-style confirmation);
/// - each update is retransmitted 10·log10(size+1) times, not 4·: joins are
///   pushed eagerly, which spends transmissions fast, and with 6· one node
///   in a few missed one of 19 simultaneous joins until the next announce
///   (measured on 20 lab hosts); a member update is ~40 bytes, so this
///   costs little;
/// - every node announces to a random member every 5 s and gets its member
///   list back: a pull that bounds how long any node can miss a member
///   (memberlist's push/pull runs every 30 s); 2 s cost a measurable share
///   of idle CPU on 20 hosts;
/// - down members are re-announced to every 3 s, which heals partitions;
/// - packets fit one QUIC datagram.
pub fn config_for(size: usize) -> Config {
    let size = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
    let mut config = Config::new_lan(NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN));
    let log_size = f64::from(size).log10();
    config.suspect_to_down_after = config.probe_period.mul_f64(log_size.max(1.0) * 3.0);
    let transmissions = (f64::from(size.saturating_add(1)).log10() * 10.0).clamp(1.0, 255.0);
    // Clamped to 1..=255 above, so the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let transmissions = transmissions as u8;
    config.max_transmissions = NonZeroU8::new(transmissions).unwrap_or(NonZeroU8::MIN);
    config.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
    config.periodic_announce =
        Some(foca::PeriodicParams { frequency: Duration::from_secs(5), num_members: NonZeroUsize::MIN });
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    config
}

impl Core {
    /// A core for `identity`, seeded so that runs are reproducible.
    pub fn new(identity: NodeIdentity, seed: u64) -> Self {
        let swim = Foca::new(identity, config_for(1), StdRng::seed_from_u64(seed), PostcardCodec);
        Self {
            swim,
            runtime: AccumulatingRuntime::new(),
            timers: TimerQueue::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            left: HashMap::new(),
            configured_size: 1,
            has_left: false,
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
        match wire::decode(data)? {
            // A node that left must not be pulled back in by members that
            // announce to it (they do so to every member they saw go down).
            Frame::Swim(_) if self.has_left => {}
            Frame::Swim(packet) => {
                let header: foca::Header<NodeIdentity> =
                    postcard::take_from_bytes(&packet).map_err(WireError::Malformed)?.0;
                if header.src.id != from {
                    return Err(CoreError::Spoofed { claimed: header.src.id, actual: from });
                }
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
                let known = members.into_iter().take(MAX_MEMBERS_FRAME).filter(|m| m.id().id != me);
                let result = self.swim.apply_many(known, true, &mut self.runtime);
                self.drain(now);
                result?;
            }
        }
        Ok(())
    }

    /// Fires every timer due at `now`, in order.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            if let Err(error) = self.swim.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "swim timer");
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
            self.timers.insert(now + after, timer);
        }
        let mut size_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            size_changed |= matches!(notification, OwnedNotification::MemberUp(_) | OwnedNotification::MemberDown(_));
            if let Some(event) = self.event_for(notification) {
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
    }

    /// Moves the packets foca wants sent into the outbox, framed.
    fn take_packets(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.outbox.push_back(Transmit { to, payload: wire::encode(&Frame::Swim(data.to_vec())), reliable: false });
        }
    }

    fn event_for(&mut self, notification: OwnedNotification<NodeIdentity>) -> Option<Event> {
        Some(match notification {
            OwnedNotification::MemberUp(id) => {
                self.left.remove(&id.id);
                Event::MemberUp(id)
            }
            OwnedNotification::MemberDown(id) if self.left_with(&id) => Event::MemberLeft(id),
            OwnedNotification::MemberDown(id) => Event::MemberDown(id),
            OwnedNotification::Rename(old, new) => Event::MemberRenamed { old, new },
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
