//! Whom the record layer talks to: SWIM's active members or, in
//! simulations too large for full member lists, an oracle standing in
//! for them; and which protocol each speaks, as its connection negotiated.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::IteratorRandom;

use super::Core;
use crate::identity::{NodeId, NodeIdentity};
use crate::records::Tier;
use crate::wire::Protocol;

/// The cluster's active members, known without SWIM. Only simulations use
/// one: at 10,000 nodes, every node's foca holding every member takes
/// 10^8 entries, more than one machine has.
pub trait PeerOracle: Send {
    /// Number of active members, this node excluded.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Up to `k` distinct random active members, never `exclude`.
    fn sample(&self, rng: &mut StdRng, k: usize, exclude: Option<NodeId>) -> Vec<NodeIdentity>;
    /// The active member with id `id`.
    fn get(&self, id: NodeId) -> Option<NodeIdentity>;
}

impl Core {
    /// Makes the record layer pick its peers from `oracle` instead of
    /// SWIM's member list (for simulations; see [`PeerOracle`]).
    pub fn set_peer_oracle(&mut self, oracle: Box<dyn PeerOracle>) {
        self.oracle = Some(oracle);
    }

    /// Notes that member `peer`'s connection negotiated `protocol` (the
    /// driver tells, with each frame, what the frame's connection
    /// negotiated). Until told, a member counts as speaking
    /// [`Protocol::V1`]: it is sent nothing that needs protocol 2.
    pub fn set_protocol(&mut self, peer: NodeId, protocol: Protocol) {
        if self.protocols.get(&peer) != Some(&protocol) {
            self.protocols.insert(peer, protocol);
        }
    }

    /// The protocol member `peer`'s connection negotiated, as last told
    /// ([`Protocol::V1`] if never).
    pub fn protocol_of(&self, peer: NodeId) -> Protocol {
        self.protocols.get(&peer).copied().unwrap_or(Protocol::V1)
    }

    /// Number of active members, this node excluded.
    pub(super) fn peer_count(&self) -> usize {
        match &self.oracle {
            Some(oracle) => oracle.len(),
            None => self.swim.num_members(),
        }
    }

    /// Up to `k` random active members that read records of `tier`, never `exclude`.
    pub(super) fn sample_peers(&mut self, k: usize, exclude: Option<NodeId>, tier: Tier) -> Vec<NodeIdentity> {
        match &self.oracle {
            Some(oracle) => {
                let mut sample = oracle.sample(&mut self.rng, k, exclude);
                sample.retain(|peer| reads(&self.protocols, peer.id, tier));
                sample
            }
            None => self
                .swim
                .iter_members()
                .map(|m| m.id().clone())
                .filter(|id| Some(id.id) != exclude && reads(&self.protocols, id.id, tier))
                .sample(&mut self.rng, k),
        }
    }

    /// Whom the origin of a change of `tier` pushes it to: every active
    /// member that reads it in clusters up to [`super::DIRECT_PUSH_LIMIT`],
    /// [`push_fanout`] random ones above it; never `exclude`.
    pub(super) fn push_targets(&mut self, exclude: Option<NodeId>, tier: Tier) -> Vec<NodeIdentity> {
        let members = self.peer_count();
        let fanout = if members <= super::DIRECT_PUSH_LIMIT { members } else { push_fanout(members) };
        self.sample_peers(fanout, exclude, tier)
    }

    /// Whom a receiver relays news of `tier` to: nobody up to
    /// [`super::DIRECT_PUSH_LIMIT`] members (the origin reached them all),
    /// [`push_fanout`] random members that read it above it, never `from`.
    pub(super) fn relay_targets(&mut self, from: Option<NodeId>, tier: Tier) -> Vec<NodeIdentity> {
        let members = self.peer_count();
        if members <= super::DIRECT_PUSH_LIMIT {
            return Vec::new();
        }
        self.sample_peers(push_fanout(members), from, tier)
    }

    /// The active member with id `id`.
    pub(super) fn active_peer(&self, id: NodeId) -> Option<NodeIdentity> {
        match &self.oracle {
            Some(oracle) => oracle.get(id),
            None => self
                .swim
                .iter_membership_state()
                .find(|m| m.id().id == id && m.state() != foca::State::Down)
                .map(|m| m.id().clone()),
        }
    }
}

/// Whether member `peer` may be sent records of `tier`, by the protocols
/// members' connections negotiated.
fn reads(protocols: &HashMap<NodeId, Protocol>, peer: NodeId, tier: Tier) -> bool {
    tier == Tier::V1 || protocols.get(&peer).is_some_and(|&p| p >= Protocol::V2)
}

/// How many members a change is pushed or relayed to in a cluster of
/// `members` (above [`super::DIRECT_PUSH_LIMIT`]): ln(n) + 1, rounded.
/// When every receiver relays once to that many, the share of nodes the
/// push misses is about e^-(ln n + 1 ± 0.5): under two thirds of a node in
/// expectation, left to the origin's gossip and to sync. Each relay is a
/// whole sealed record (about 150 bytes): with ln(n) + 2 rounded up, a
/// node sent 1.33 KB per change on 1,000 simulated nodes and 1.80 KB on
/// 10,000, more than memberlist's 1.28 and 1.60 KB.
pub fn push_fanout(members: usize) -> usize {
    // ln of a usize is small and positive: the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let fanout = (members.max(1) as f64).ln().round() as usize + 1;
    fanout
}
