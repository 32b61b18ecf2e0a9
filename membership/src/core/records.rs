//! The core's record half: publishing this node's changes, pushing them at
//! once, merging what peers send, and anti-entropy.
//!
//! A change travels three ways, so a host that misses one still converges:
//! 1. **push**: the origin sends it at once to every active member (to
//!    [`push_fanout`](super::push_fanout) random ones in clusters above [`DIRECT_PUSH_LIMIT`],
//!    where each receiver that finds it new relays it to as many more);
//! 2. **gossip**: it rides on SWIM packets as a foca custom broadcast,
//!    retransmitted like membership updates, from the origin and from the
//!    nodes that learn it by gossip (not from those that learn it by push
//!    or relay: that cost each node a record 10·log10(n) times over);
//! 3. **sync**: every [`SYNC_EVERY`], and whenever a member comes (back)
//!    up, this node compares store roots with a member; if they differ the
//!    two exchange the records of the digest buckets that differ, in pages.
//!
//! Records that need protocol 2 ([`Tier::V2`]) take only the ways to
//! members whose connection negotiated it: pushed and relayed only to them,
//! never gossiped (a broadcast reaches every member), and synced under a
//! second root that only they compare ([`Frame::SyncV2Hello`]), so the
//! first root stays comparable with an agent of 0.2.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Core, CoreTimer, Transmit, MAX_SWIM_PACKET};
use crate::identity::{NodeId, NodeIdentity, Status};
use crate::records::store::{Bucket, BUCKETS};
use crate::records::view::View;
use crate::records::{
    encode, log_refused, stable_hash, EndpointSpec, InvalidRecord, NetworkId, NetworkSpec, Record, RecordKey, Refused,
    Tier, Value,
};
use crate::wire::{self, Frame, Protocol};

/// Up to this many active members, a change is pushed to every one.
pub const DIRECT_PUSH_LIMIT: usize = 64;
/// How often a node starts an anti-entropy round.
pub const SYNC_EVERY: Duration = Duration::from_secs(5);
/// How long a sync round's hello waits for a SWIM packet to ride with
/// (each node probes a member every second).
const HELLO_RIDE_WAIT: Duration = Duration::from_millis(1500);
/// Least time between two member-list pulls by sync (memberlist's full
/// push/pull runs every 30 s).
const MEMBERS_PULL_EVERY: Duration = Duration::from_secs(30);
/// Least time between two syncs triggered by members coming up.
const TRIGGERED_SYNC_GAP: Duration = Duration::from_secs(1);
/// How often expired tombstones are reaped.
const REAP_EVERY: Duration = Duration::from_secs(60);
/// Largest encoded size of one page of records (about 1,800 endpoints).
/// Each page merged costs the receiver a new view, so pages are large: at
/// 64 KB, 10,000 signed endpoints took 22 pages and 1.5 s to reach a
/// restarted peer's kernel. A page must stay under the transport's largest
/// stream frame (1 MB).
const MAX_PAGE_BYTES: usize = 256 * 1024;
/// Most records taken from one frame.
const MAX_RECORDS_FRAME: usize = 8192;
/// Most deferred seal checks in one turn of the core (about 5 ms on a
/// core of the lab machine), so other work is not held up.
const SEAL_CHECKS_PER_TURN: usize = 128;
/// Time between two turns of deferred seal checks. The checks are
/// background work (only third parties need them): run back to back, the
/// 10,000 seals of one sync held the core (and the data plane's requests
/// to it) for 300 ms while the records waited for the kernel.
const SEAL_CHECK_GAP: Duration = Duration::from_millis(5);

/// A sync round this node took part in, as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSeen {
    /// The other member.
    pub peer: NodeId,
    /// When (milliseconds since the Unix epoch, this node's clock).
    pub at_ms: u64,
    /// Whether both held the same records.
    pub in_step: bool,
}

/// Sync rounds this node compared roots in, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Rounds where both held the same records.
    pub in_step: u64,
    /// Rounds where the records differed (and were exchanged).
    pub differed: u64,
    /// The latest round.
    pub last: Option<SyncSeen>,
}

/// The records a node holds and how its syncs go, for an operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Records by kind ([`RecordKey::kind`]) and whether they are
    /// tombstones: how many.
    pub records: std::collections::BTreeMap<(&'static str, bool), usize>,
    /// Equal on two nodes holding the same records (both tiers: see
    /// [`Store::digest`](crate::records::store::Store::digest)).
    pub records_root: u64,
    /// Equal on two nodes that see the same members active.
    pub members_root: u64,
    /// Sync rounds.
    pub sync: SyncStats,
}

/// What a node persists to come back unchanged after a restart: its own
/// endpoints, its version counter, and the cluster-wide records it knows
/// (networks, the join secret, removals, member records, the policy: a
/// lone node has nobody to learn them from again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// The next version the node gives a record.
    pub next_version: u64,
    /// The node's live endpoints.
    pub endpoints: Vec<Record>,
    /// Every cluster-wide record held (networks, the join secret,
    /// removals, member records, the policy), tombstones included.
    pub networks: Vec<Record>,
}

/// Why a change was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The record breaks the rules.
    #[error(transparent)]
    Invalid(#[from] InvalidRecord),
    /// The store found the record this node wrote forged (a bug: a node's
    /// own records are always sealed with its key).
    #[error(transparent)]
    Forged(Refused),
    /// There is no such live record to delete.
    #[error("no such record")]
    NotFound,
}

impl From<Refused> for PublishError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Invalid(invalid) => Self::Invalid(invalid),
            forged @ Refused::Forged { .. } => Self::Forged(forged),
        }
    }
}

impl Core {
    /// Lets the core timestamp tombstones: `unix_ms` is the wall clock
    /// (milliseconds since the Unix epoch) at `now`.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.epoch = Some((now, unix_ms));
    }

    /// Takes back what [`Core::owned`] returned before a restart.
    pub fn restore(&mut self, owned: Owned) {
        let me = self.identity().id;
        self.next_version = self.next_version.max(owned.next_version);
        let records: Vec<Record> = owned.networks.into_iter().chain(owned.endpoints).collect();
        let merged = {
            let mut shared = self.shared.lock();
            let now_ms = shared.now_ms;
            shared.store.apply_all(records, now_ms, None)
        };
        for (record, outcome) in merged {
            let mine = matches!(&record.key, RecordKey::Endpoint { owner, .. } if *owner == me);
            self.next_version = self.next_version.max(record.version.saturating_add(1));
            match outcome {
                Ok(true) if mine && !record.is_deleted() => {
                    self.own.insert(record.key.clone(), record);
                }
                // The driver must refuse a removed member from the start.
                Ok(true) if matches!(record.key, RecordKey::Removed(_)) => {
                    if let RecordKey::Removed(id) = record.key {
                        self.events.push_back(super::Event::Removed(id));
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "ignored an invalid persisted record"),
            }
        }
        self.records_changed = true;
    }

    /// A counter that grows whenever the records (or the owners'
    /// liveness) change: of two [`Core::owned`] snapshots, the one taken at
    /// the greater generation is the newer.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What this node must persist (see [`Owned`]).
    pub fn owned(&self) -> Owned {
        let shared = self.shared.lock();
        let networks = shared.store.iter().filter(|r| !matches!(r.key, RecordKey::Endpoint { .. })).cloned().collect();
        Owned { next_version: self.next_version, endpoints: self.own.values().cloned().collect(), networks }
    }

    /// The merged view of every record, as this node sees its members now.
    pub fn view(&self) -> View {
        let mut status: HashMap<NodeId, Status> =
            self.members().into_iter().map(|m| (m.identity.id, m.status)).collect();
        status.insert(self.identity().id, Status::Alive);
        View::derive(&self.shared.lock().store, &status)
    }

    /// Every record held, tombstones included.
    pub fn records(&self) -> Vec<Record> {
        self.shared.lock().store.iter().cloned().collect()
    }

    /// The record held for `key`, tombstones included.
    pub fn record(&self, key: &RecordKey) -> Option<Record> {
        self.shared.lock().store.get(key).cloned()
    }

    /// A number equal on two nodes holding the same records (see
    /// [`Store::digest`](crate::records::store::Store::digest)).
    pub fn records_root(&self) -> u64 {
        self.shared.lock().store.digest()
    }

    /// The records held and how syncs go.
    pub fn record_stats(&self) -> RecordStats {
        let mut records = std::collections::BTreeMap::new();
        let shared = self.shared.lock();
        for record in shared.store.iter() {
            *records.entry((record.key.kind(), matches!(record.value, Value::Deleted { .. }))).or_default() += 1;
        }
        let records_root = shared.store.digest();
        drop(shared);
        RecordStats { records, records_root, members_root: self.members_root(), sync: self.sync_stats }
    }

    fn saw_sync(&mut self, now: Instant, peer: NodeId, in_step: bool) {
        let at_ms = self.wall_ms(now);
        let stats = &mut self.sync_stats;
        *(if in_step { &mut stats.in_step } else { &mut stats.differed }) += 1;
        stats.last = Some(SyncSeen { peer, at_ms, in_step });
    }

    /// Creates a network; returns its id.
    pub fn create_network(&mut self, now: Instant, spec: NetworkSpec) -> Result<NetworkId, PublishError> {
        self.tick(now);
        let id = NetworkId { creator: self.identity().id, serial: self.next_version };
        self.publish(now, self.sign(RecordKey::Network(id), 1, Value::Network(spec)))?;
        self.next_version += 1;
        Ok(id)
    }

    /// Deletes a network (any member may).
    pub fn delete_network(&mut self, now: Instant, id: NetworkId) -> Result<(), PublishError> {
        self.tick(now);
        let key = RecordKey::Network(id);
        let version = match self.shared.lock().store.get(&key) {
            Some(record) if !record.is_deleted() => record.version + 1,
            _ => return Err(PublishError::NotFound),
        };
        let at_ms = self.wall_ms(now);
        self.publish(now, self.sign(key, version, Value::Deleted { at_ms }))
    }

    /// Creates or replaces this node's endpoint of sandbox `name` on the
    /// network `spec` names.
    pub fn put_endpoint(&mut self, now: Instant, name: &str, spec: EndpointSpec) -> Result<Record, PublishError> {
        self.tick(now);
        let key = spec.key(self.identity().id, name);
        let record = self.sign(key.clone(), self.next_version, Value::Endpoint(spec));
        self.publish(now, record.clone())?;
        self.next_version += 1;
        self.own.insert(key, record.clone());
        Ok(record)
    }

    /// Deletes this node's endpoint of sandbox `name` on `network`.
    pub fn delete_endpoint(&mut self, now: Instant, name: &str, network: &str) -> Result<(), PublishError> {
        self.tick(now);
        let key = RecordKey::Endpoint { owner: self.identity().id, name: name.to_owned(), network: network.to_owned() };
        let Some(existing) = self.own.get(&key) else { return Err(PublishError::NotFound) };
        let version = self.next_version.max(existing.version + 1);
        let at_ms = self.wall_ms(now);
        self.publish(now, self.sign(key.clone(), version, Value::Deleted { at_ms }))?;
        self.next_version = version + 1;
        self.own.remove(&key);
        Ok(())
    }

    /// Updates the wall clock the store sees and starts the periodic
    /// timers on the first call.
    pub(super) fn tick(&mut self, now: Instant) {
        let now_ms = self.wall_ms(now);
        self.shared.lock().now_ms = now_ms;
        if !self.timers_started {
            self.timers_started = true;
            // Spread the nodes' rounds over the period.
            let offset = SYNC_EVERY.mul_f64(rand::RngExt::random::<f64>(&mut self.rng));
            self.timers.insert(now + offset, CoreTimer::Sync);
            self.timers.insert(now + REAP_EVERY, CoreTimer::Reap);
        }
    }

    /// Handles a record or sync frame from `from`.
    pub(super) fn handle_record_frame(&mut self, now: Instant, from: NodeId, frame: Frame) {
        match frame {
            Frame::Records(records) => {
                let fresh = self.merge(now, from, records);
                self.spread(&fresh, Some(from));
            }
            Frame::SyncRecords(records) => {
                self.merge(now, from, records);
            }
            Frame::SyncHello { records, members } => self.answer_hello(now, from, (records, members), None),
            Frame::SyncV2Hello { records, members, records_v2 } => {
                self.answer_hello(now, from, (records, members), Some(records_v2));
            }
            Frame::SyncDigest(theirs) if theirs.len() == BUCKETS => self.answer_digest(now, from, Tier::V1, &theirs),
            Frame::SyncV2Digest(theirs) if theirs.len() == BUCKETS => self.answer_digest(now, from, Tier::V2, &theirs),
            Frame::SyncPull(buckets) => self.answer_pull(now, from, Tier::V1, buckets),
            Frame::SyncV2Pull(buckets) => self.answer_pull(now, from, Tier::V2, buckets),
            _ => tracing::debug!(peer = ?from, "ignored a malformed sync frame"),
        }
        self.schedule_seal_checks(now);
        self.drain(now);
    }

    /// Answers a sync round's hello: the roots of the records every member
    /// reads and of the members, and, from a member speaking protocol 2,
    /// the root of the records that need it. Sends the digest of each tier
    /// whose root differs.
    fn answer_hello(&mut self, now: Instant, from: NodeId, (records, members): (u64, u64), records_v2: Option<u64>) {
        let Some(peer) = self.active_peer(from) else { return };
        let (ours, ours_v2) = {
            let shared = self.shared.lock();
            (shared.store.root(Tier::V1), shared.store.root(Tier::V2))
        };
        let v2_differs = records_v2.is_some_and(|theirs| theirs != ours_v2);
        self.saw_sync(now, from, records == ours && !v2_differs);
        if records != ours {
            let digest = self.shared.lock().store.buckets(Tier::V1).to_vec();
            self.send(&peer, &Frame::SyncDigest(digest));
        }
        if v2_differs {
            let digest = self.shared.lock().store.buckets(Tier::V2).to_vec();
            self.send(&peer, &Frame::SyncV2Digest(digest));
        }
        if members != self.members_root() && self.may_pull_members(now) {
            self.request_members(peer);
        }
    }

    /// Answers a peer's digest of `tier`'s records: sends this node's
    /// records of the buckets that differ, then asks for the peer's. (A
    /// round where both tiers differ counts twice here.)
    fn answer_digest(&mut self, now: Instant, from: NodeId, tier: Tier, theirs: &[u64]) {
        let Some(peer) = self.active_peer(from) else { return };
        self.saw_sync(now, from, false);
        let differing = self.shared.lock().store.differing(tier, theirs);
        self.send_buckets(now, &peer, tier, &differing);
        let buckets = differing.into_iter().collect();
        let pull = match tier {
            Tier::V1 => Frame::SyncPull(buckets),
            Tier::V2 => Frame::SyncV2Pull(buckets),
        };
        self.send(&peer, &pull);
    }

    /// Answers a pull: sends this node's records of `tier` in the buckets asked for.
    fn answer_pull(&mut self, now: Instant, from: NodeId, tier: Tier, buckets: Vec<Bucket>) {
        let Some(peer) = self.active_peer(from) else { return };
        let wanted: BTreeSet<Bucket> =
            buckets.into_iter().take(BUCKETS).filter(|&b| usize::from(b) < BUCKETS).collect();
        self.send_buckets(now, &peer, tier, &wanted);
    }

    /// Makes sure the seals of records merged unchecked get checked soon,
    /// a turn at a time.
    fn schedule_seal_checks(&mut self, now: Instant) {
        if !self.seal_checks_scheduled && self.shared.lock().store.has_deferred() {
            self.seal_checks_scheduled = true;
            self.timers.insert(now + SEAL_CHECK_GAP, CoreTimer::CheckSeals);
        }
    }

    /// Checks a turn's worth of deferred seals; a forged record found
    /// there is taken out of the view again.
    pub(super) fn check_deferred_seals(&mut self, now: Instant) {
        self.seal_checks_scheduled = false;
        let refused = self.shared.lock().store.check_deferred(SEAL_CHECKS_PER_TURN);
        for error in &refused {
            // Deferred records came from their writer's own connection.
            if let Refused::Forged { key, .. } = error {
                log_refused(key.writer().unwrap_or(self.identity().id), error);
            }
        }
        self.records_changed |= !refused.is_empty();
        self.schedule_seal_checks(now);
    }

    /// Starts a periodic anti-entropy round: its hello goes out right after the next
    /// SWIM packet to an active member (a probe or an answer, sent every
    /// second), in the same QUIC packet, to that member; or alone after
    /// [`HELLO_RIDE_WAIT`]. Alone, a hello costs a packet and its
    /// acknowledgement: about 30 of 360 B/s on 20 idle lab hosts.
    pub(super) fn start_sync(&mut self, now: Instant) {
        self.timers.insert(now + SYNC_EVERY, CoreTimer::Sync);
        self.hello_due = true;
        self.timers.insert(now + HELLO_RIDE_WAIT, CoreTimer::SyncAlone);
    }

    /// Sends a due hello that found nothing to ride with to a random member.
    pub(super) fn sync_alone(&mut self) {
        if std::mem::take(&mut self.hello_due) {
            if let Some(peer) = self.sample_peers(1, None, Tier::V1).pop() {
                self.sync_with(peer);
            }
        }
    }

    /// Syncs with a member that came (back) up, unless another did so
    /// within [`TRIGGERED_SYNC_GAP`]: one round with any member of a healed
    /// side brings all of that side's records, and a joiner that learns
    /// hundreds of members at once must not sync with each.
    pub(super) fn sync_soon(&mut self, now: Instant, peer: NodeIdentity) {
        if self.last_triggered_sync.is_some_and(|last| now < last + TRIGGERED_SYNC_GAP) {
            return;
        }
        self.last_triggered_sync = Some(now);
        self.sync_with(peer);
    }

    /// Sends `peer` the roots that start a sync round: with a member
    /// speaking protocol 2, the root of the records that need it too.
    pub(super) fn sync_with(&mut self, peer: NodeIdentity) {
        if self.has_left {
            return;
        }
        let (records, records_v2) = {
            let shared = self.shared.lock();
            (shared.store.root(Tier::V1), shared.store.root(Tier::V2))
        };
        let members = self.members_root();
        let hello = match self.protocol_of(peer.id) {
            Protocol::V1 => Frame::SyncHello { records, members },
            Protocol::V2 => Frame::SyncV2Hello { records, members, records_v2 },
        };
        // A datagram: a lost hello costs one round, and a stream costs a
        // packet and its acknowledgement more, every 5 s on every node.
        self.send_unreliable(&peer, &hello);
    }

    /// Whether a sync may pull a member list now: at most once per
    /// [`MEMBERS_PULL_EVERY`], since lists differ transiently all the time
    /// (a suspect here, not yet there) and a list is big in a big cluster.
    fn may_pull_members(&mut self, now: Instant) -> bool {
        if self.last_members_pull.is_some_and(|last| now < last + MEMBERS_PULL_EVERY) {
            return false;
        }
        self.last_members_pull = Some(now);
        true
    }

    /// Drops expired tombstones.
    pub(super) fn reap(&mut self, now: Instant) {
        self.timers.insert(now + REAP_EVERY, CoreTimer::Reap);
        let now_ms = self.wall_ms(now);
        self.lifeguard.forget_before(now);
        let reaped = self.shared.lock().store.reap(now_ms);
        if reaped > 0 {
            tracing::debug!(reaped, "reaped tombstones");
        }
    }

    /// Acts on records that gossip merged since the last call: restores
    /// this node's own records if a peer holds something else under its
    /// name, and owes a [`super::Event::RecordsChanged`].
    pub(super) fn settle_records(&mut self, now: Instant) {
        let fresh = std::mem::take(&mut self.shared.lock().fresh);
        if !fresh.is_empty() {
            self.records_changed = true;
            self.assert_ownership(now, &fresh);
            self.assert_member_record(now, &fresh);
            self.expel_removed(now, &fresh);
        }
        if std::mem::take(&mut self.records_changed) {
            self.generation += 1;
            self.events.push_back(super::Event::RecordsChanged);
        }
    }

    /// A record this node writes, sealed with its key.
    pub(super) fn sign(&self, key: RecordKey, version: u64, value: Value) -> Record {
        Record::signed(key, version, value, &self.key)
    }

    /// Merges records from a peer (`from`); returns those that were news.
    /// Forged records are refused and logged with the peer that passed
    /// them on (their origin, if not the peer, is unknown).
    fn merge(&mut self, now: Instant, from: NodeId, mut records: Vec<Record>) -> Vec<Record> {
        records.truncate(MAX_RECORDS_FRAME);
        self.recently_held.note(now, from, &records);
        let mut shared = self.shared.lock();
        let now_ms = shared.now_ms;
        let mut fresh = Vec::new();
        for (record, outcome) in shared.store.apply_all(records, now_ms, Some(from)) {
            match outcome {
                Ok(true) => fresh.push(record),
                Ok(false) => {}
                Err(error) => log_refused(from, &error),
            }
        }
        shared.fresh.extend(fresh.iter().cloned());
        fresh
    }

    /// Spreads pushed news in large clusters: relays it to a few members.
    /// Receivers do not gossip it: the origin does, and every receiver
    /// gossiping it too cost each node its size some 10·log10(n) times
    /// over (2.0 KB per change per node on 20 simulated nodes, 4.1 KB on
    /// 1,000) for the stragglers of lost relays, which the origin's gossip
    /// and sync reach anyway. In small clusters the origin pushed it to
    /// every member over a stream: nothing to relay. Records that need
    /// protocol 2 are relayed to members speaking it.
    fn spread(&mut self, fresh: &[Record], from: Option<NodeId>) {
        if fresh.is_empty() || self.peer_count() <= DIRECT_PUSH_LIMIT {
            return;
        }
        for tier in [Tier::V1, Tier::V2] {
            let records: Vec<Record> = fresh.iter().filter(|r| r.tier() == tier).cloned().collect();
            if records.is_empty() {
                continue;
            }
            let frame = Frame::Records(records);
            for target in self.relay_targets(from, tier) {
                self.send_unreliable(&target, &frame);
            }
        }
    }

    /// Merges a change made here and sends it on its three ways (a record
    /// that needs protocol 2 on the two that reach only members speaking it).
    pub(super) fn publish(&mut self, now: Instant, record: Record) -> Result<(), PublishError> {
        let now_ms = self.wall_ms(now);
        self.shared.lock().store.apply(record.clone(), now_ms)?;
        let tier = record.tier();
        if tier == Tier::V1 {
            if let Err(error) = self.swim.add_broadcast(&encode(&record)) {
                tracing::debug!(%error, "record not gossiped (it is pushed and synced)");
            }
        }
        let targets = self.push_targets(None, tier);
        let frame = Frame::Records(vec![record]);
        for target in targets {
            self.send(&target, &frame);
        }
        self.records_changed = true;
        self.drain(now);
        Ok(())
    }

    /// Re-publishes this node's truth over any record a peer holds under
    /// this node's name that it did not publish (one from before a lost
    /// state, or a stale one that outlived its tombstone).
    fn assert_ownership(&mut self, now: Instant, fresh: &[Record]) {
        let me = self.identity().id;
        for record in fresh {
            let RecordKey::Endpoint { owner, name, .. } = &record.key else { continue };
            if *owner != me || self.own.get(&record.key) == Some(record) {
                continue;
            }
            self.next_version = self.next_version.max(record.version + 1);
            let truth = match self.own.get(&record.key) {
                Some(own) => own.value.clone(),
                None if record.is_deleted() => continue,
                None => Value::Deleted { at_ms: self.wall_ms(now) },
            };
            tracing::info!(endpoint = %name, version = record.version, "a peer held a stale record of this node's; restoring ours");
            let restored = self.sign(record.key.clone(), self.next_version, truth);
            self.next_version += 1;
            if !restored.is_deleted() {
                self.own.insert(record.key.clone(), restored.clone());
            }
            if let Err(error) = self.publish(now, restored) {
                tracing::warn!(%error, "could not restore an own record");
            }
        }
    }

    /// Sends `peer` this node's records of `tier` in `buckets`, in pages,
    /// but not those it was seen holding lately.
    fn send_buckets(&mut self, now: Instant, peer: &NodeIdentity, tier: Tier, buckets: &BTreeSet<Bucket>) {
        if buckets.is_empty() {
            return;
        }
        let mut records = self.shared.lock().store.in_buckets(tier, buckets);
        self.recently_held.keep_unheld(now, peer.id, &mut records);
        let mut page = Vec::new();
        let mut bytes = 0;
        for record in records {
            let size = encode(&record).len();
            if bytes + size > MAX_PAGE_BYTES && !page.is_empty() {
                self.send(peer, &Frame::SyncRecords(std::mem::take(&mut page)));
                bytes = 0;
            }
            bytes += size;
            page.push(record);
        }
        if !page.is_empty() {
            self.send(peer, &Frame::SyncRecords(page));
        }
    }

    /// A hash of the members this node sees active, itself included.
    fn members_root(&self) -> u64 {
        let mut ids: Vec<(NodeId, u16)> = self
            .swim
            .iter_members()
            .map(|m| (m.id().id, m.id().bump))
            .chain([(self.identity().id, self.identity().bump)])
            .collect();
        ids.sort_unstable();
        stable_hash(&postcard::to_allocvec(&ids).unwrap_or_default())
    }

    pub(super) fn send(&mut self, to: &NodeIdentity, frame: &Frame) {
        if self.may_send(to.id, frame) {
            self.outbox.push_back(Transmit { to: to.clone(), payload: wire::encode(frame), reliable: true });
        }
    }

    pub(super) fn send_unreliable(&mut self, to: &NodeIdentity, frame: &Frame) {
        if !self.may_send(to.id, frame) {
            return;
        }
        let payload = wire::encode(frame);
        let reliable = payload.len() > MAX_SWIM_PACKET;
        self.outbox.push_back(Transmit { to: to.clone(), payload, reliable });
    }

    /// Whether member `to` reads `frame`: every record frame and sync
    /// frame goes through here, so one that needs protocol 2 never reaches
    /// a member speaking protocol 1, whatever chose to send it (the callers
    /// choose their targets so that it never has to refuse one).
    fn may_send(&self, to: NodeId, frame: &Frame) -> bool {
        if self.protocol_of(to) >= Protocol::V2 {
            return true;
        }
        let records_v2 = match frame {
            Frame::Records(records) | Frame::SyncRecords(records) => records.iter().any(Record::needs_v2),
            _ => false,
        };
        if frame.protocol() > Protocol::V1 || records_v2 {
            tracing::warn!(peer = %to, "not sent: a frame needing protocol 2 to a member speaking protocol 1 (a bug)");
            return false;
        }
        true
    }

    pub(super) fn wall_ms(&self, now: Instant) -> u64 {
        self.epoch.map_or(0, |(at, ms)| {
            let elapsed = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
            ms.saturating_add(elapsed)
        })
    }
}
