//! Every record this node holds, merged by version, with tombstone reaping
//! and the bucketed digests that anti-entropy compares: one of the records
//! every member reads, which agents of 0.2 compare too, and one of those
//! that need protocol 2 ([`Tier`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{encode, stable_hash, Forged, Record, RecordKey, Refused, Tier, Value};
use crate::identity::NodeId;

/// Number of digest buckets. A sync whose roots differ compares the
/// buckets and exchanges only the records of the ones that differ.
pub const BUCKETS: usize = 256;

/// How long an endpoint's tombstone is kept (NetworkDB keeps them 30 min).
/// An owner re-deletes anything of its own that comes back later, so a
/// reaped endpoint tombstone cannot resurrect the endpoint.
pub const ENDPOINT_TOMBSTONE_TTL_MS: u64 = 30 * 60 * 1000;
/// How long a network's tombstone is kept. Networks are few and any member
/// may delete one, so their tombstones are kept much longer.
pub const NETWORK_TOMBSTONE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Index of a digest bucket.
pub type Bucket = u16;

struct Entry {
    record: Record,
    hash: u64,
    /// The digest it counts in (a network's tombstone replaces a live
    /// encrypted network in the other).
    tier: Tier,
    /// Whether its seal was checked (see [`Store::apply_all`]).
    checked: bool,
}

/// The record store of one node.
pub struct Store {
    records: BTreeMap<RecordKey, Entry>,
    /// The digest of the [`Tier::V1`] records.
    buckets: Vec<u64>,
    /// The digest of the [`Tier::V2`] records.
    buckets_v2: Vec<u64>,
    /// Records merged before their seal was checked, oldest first.
    deferred: VecDeque<RecordKey>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            buckets: vec![0; BUCKETS],
            buckets_v2: vec![0; BUCKETS],
            deferred: VecDeque::new(),
        }
    }
}

impl Store {
    /// Merges `record` in. Returns whether it changed the store: `false`
    /// for a record this store already holds or holds a newer version of,
    /// and for a tombstone older than its time to live. Only a record that
    /// would change the store has its seal checked, so a record heard again
    /// costs no signature check.
    pub fn apply(&mut self, record: Record, now_ms: u64) -> Result<bool, Refused> {
        if !self.is_news(&record, now_ms)? {
            return Ok(false);
        }
        check_seal(&record)?;
        self.check_signer(&record)?;
        self.insert(record, true);
        Ok(true)
    }

    /// Merges many records, as [`Store::apply`] one after another would,
    /// but checks the seals of a large batch (a sync page) on every core:
    /// a signature check costs about 0.1 ms, so 10,000 endpoints arriving
    /// at once would otherwise wait a second on one core. Returns each
    /// record with its outcome, in order.
    ///
    /// `writer` is the node whose authenticated connection brought the
    /// batch, if the caller vouches for that: the connection already proves
    /// that node wrote the records it alone may write, so those are merged
    /// at once and their seals (which only third parties need) are checked
    /// afterwards by [`Store::check_deferred`].
    pub fn apply_all(
        &mut self,
        records: Vec<Record>,
        now_ms: u64,
        writer: Option<NodeId>,
    ) -> Vec<(Record, Result<bool, Refused>)> {
        let vouched = |r: &Record| writer.is_some_and(|w| r.key.writer() == Some(w) && r.seal.signer() == w);
        let news: Vec<bool> = records.iter().map(|r| self.is_news(r, now_ms).unwrap_or(true)).collect();
        let candidates: Vec<&Record> =
            records.iter().zip(&news).filter(|(r, &n)| n && !vouched(r)).map(|(r, _)| r).collect();
        let mut seals = check_seals(&candidates).into_iter();
        let mut outcomes = Vec::with_capacity(records.len());
        for (record, news) in records.into_iter().zip(news) {
            let deferred = vouched(&record);
            let seal = if news && !deferred { seals.next() } else { None };
            // An earlier record of the batch may have made this one old news.
            let outcome = match self.is_news(&record, now_ms) {
                Ok(true) if deferred => self.check_signer(&record).map(|()| {
                    self.deferred.push_back(record.key.clone());
                    self.insert(record.clone(), false);
                    true
                }),
                Ok(true) => {
                    seal.unwrap_or_else(|| check_seal(&record)).and_then(|()| self.check_signer(&record)).map(|()| {
                        self.insert(record.clone(), true);
                        true
                    })
                }
                other => other,
            };
            outcomes.push((record, outcome));
        }
        outcomes
    }

    /// Whether records merged by [`Store::apply_all`] still await their
    /// seal check.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Checks the seals of up to `budget` records merged before their
    /// check; a forged one is taken out again. Returns the refusals. The
    /// checks run on this thread, one after another: they are background
    /// work, and the other cores are the data plane's.
    pub fn check_deferred(&mut self, budget: usize) -> Vec<Refused> {
        let count = budget.min(self.deferred.len());
        let pending: Vec<Record> = self
            .deferred
            .drain(..count)
            .filter_map(|key| self.records.get(&key).filter(|e| !e.checked).map(|e| e.record.clone()))
            .collect();
        let mut refused = Vec::new();
        for record in &pending {
            let verdict = check_seal(record);
            let Some(entry) = self.records.get_mut(&record.key).filter(|e| e.record == *record) else { continue };
            match verdict {
                Ok(()) => entry.checked = true,
                Err(error) => {
                    self.remove(&record.key);
                    refused.push(error);
                }
            }
        }
        refused
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.records.contains_key(&RecordKey::Removed(id))
    }

    /// Refuses what a removed member signed (a removal of itself aside:
    /// that changes nothing it could abuse).
    fn check_signer(&self, record: &Record) -> Result<(), Refused> {
        let signer = record.seal.signer();
        if self.is_removed(signer) && record.key != RecordKey::Removed(signer) {
            return Err(Refused::Forged { key: record.key.clone(), why: Forged::Removed(signer) });
        }
        Ok(())
    }

    /// Whether `record` is well formed and would change the store.
    fn is_news(&self, record: &Record, now_ms: u64) -> Result<bool, Refused> {
        record.validate()?;
        Ok(match self.records.get(&record.key) {
            Some(existing) => record.supersedes(&existing.record),
            None => !expired(record, now_ms),
        })
    }

    /// Puts a record in, over whatever it supersedes.
    fn insert(&mut self, record: Record, checked: bool) {
        let bucket = usize::from(bucket_of(&record.key));
        let hash = stable_hash(&encode(&record));
        let tier = record.tier();
        self.buckets_mut(tier)[bucket] ^= hash;
        if let Some(old) = self.records.insert(record.key.clone(), Entry { record, hash, checked, tier }) {
            self.buckets_mut(old.tier)[bucket] ^= old.hash;
        }
    }

    /// Takes the record of `key` out.
    fn remove(&mut self, key: &RecordKey) {
        if let Some(entry) = self.records.remove(key) {
            self.buckets_mut(entry.tier)[usize::from(bucket_of(key))] ^= entry.hash;
        }
    }

    fn buckets_mut(&mut self, tier: Tier) -> &mut Vec<u64> {
        match tier {
            Tier::V1 => &mut self.buckets,
            Tier::V2 => &mut self.buckets_v2,
        }
    }

    /// The record held for `key`, tombstones included.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.records.get(key).map(|entry| &entry.record)
    }

    /// Every record, tombstones included, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.values().map(|entry| &entry.record)
    }

    /// Number of records held, tombstones included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops tombstones past their time to live; returns how many.
    pub fn reap(&mut self, now_ms: u64) -> usize {
        let expired: Vec<RecordKey> =
            self.records.values().filter(|e| expired(&e.record, now_ms)).map(|e| e.record.key.clone()).collect();
        for key in &expired {
            self.remove(key);
        }
        expired.len()
    }

    /// One number that is equal on two stores holding the same records of
    /// `tier`. The [`Tier::V1`] root is what agents of 0.2 compare.
    pub fn root(&self, tier: Tier) -> u64 {
        let bytes: Vec<u8> = self.buckets(tier).iter().flat_map(|b| b.to_le_bytes()).collect();
        stable_hash(&bytes)
    }

    /// One number that is equal on two stores holding the same records of
    /// both tiers: the [`Tier::V1`] root alone while there is no
    /// [`Tier::V2`] record (so it is also equal on an agent of 0.2 holding
    /// the same records), else a hash of both roots.
    pub fn digest(&self) -> u64 {
        let v1 = self.root(Tier::V1);
        if self.buckets_v2.iter().all(|&b| b == 0) {
            return v1;
        }
        let bytes: Vec<u8> = [v1, self.root(Tier::V2)].iter().flat_map(|r| r.to_le_bytes()).collect();
        stable_hash(&bytes)
    }

    /// The per-bucket hashes of `tier`'s records ([`BUCKETS`] of them).
    pub fn buckets(&self, tier: Tier) -> &[u64] {
        match tier {
            Tier::V1 => &self.buckets,
            Tier::V2 => &self.buckets_v2,
        }
    }

    /// The buckets of `tier` whose hash differs from `theirs` (a peer's
    /// [`Store::buckets`]). A malformed list (wrong length) differs everywhere.
    pub fn differing(&self, tier: Tier, theirs: &[u64]) -> BTreeSet<Bucket> {
        let ours = self.buckets(tier);
        (0..BUCKETS)
            .filter(|&i| theirs.len() != BUCKETS || theirs[i] != ours[i])
            .filter_map(|i| Bucket::try_from(i).ok())
            .collect()
    }

    /// The records of `tier` (tombstones included) in the given buckets.
    pub fn in_buckets(&self, tier: Tier, buckets: &BTreeSet<Bucket>) -> Vec<Record> {
        self.records
            .values()
            .filter(|e| e.tier == tier && buckets.contains(&bucket_of(&e.record.key)))
            .map(|e| e.record.clone())
            .collect()
    }
}

/// The digest bucket a key falls in.
pub fn bucket_of(key: &RecordKey) -> Bucket {
    let hash = stable_hash(&postcard::to_allocvec(key).unwrap_or_default());
    // The modulus keeps the value below BUCKETS (256), which fits a u16.
    #[allow(clippy::cast_possible_truncation)]
    let bucket = (hash % BUCKETS as u64) as Bucket;
    bucket
}

/// Below this many records, seals are checked on the calling thread.
const PARALLEL_CHECK_MIN: usize = 64;

fn check_seal(record: &Record) -> Result<(), Refused> {
    record.check_seal().map_err(|why| Refused::Forged { key: record.key.clone(), why })
}

/// The seal check of each record, in order, spread over the machine's cores.
fn check_seals(records: &[&Record]) -> Vec<Result<(), Refused>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if records.len() < PARALLEL_CHECK_MIN || threads == 1 {
        return records.iter().map(|r| check_seal(r)).collect();
    }
    let check_part = |part: &[&Record]| part.iter().map(|r| check_seal(r)).collect::<Vec<_>>();
    let parts: Vec<&[&Record]> = records.chunks(records.len().div_ceil(threads)).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts.iter().map(|&part| scope.spawn(move || check_part(part))).collect();
        parts
            .iter()
            .zip(workers)
            // A seal check does not panic; were one to, its part is checked again here.
            .flat_map(|(&part, worker)| worker.join().unwrap_or_else(|_| check_part(part)))
            .collect()
    })
}

fn expired(record: &Record, now_ms: u64) -> bool {
    let Value::Deleted { at_ms } = record.value else { return false };
    let ttl = match record.key {
        RecordKey::Endpoint { .. } => ENDPOINT_TOMBSTONE_TTL_MS,
        RecordKey::Network(_)
        | RecordKey::JoinSecret
        | RecordKey::Removed(_)
        | RecordKey::ClusterCa
        | RecordKey::Member(_)
        | RecordKey::Policy => NETWORK_TOMBSTONE_TTL_MS,
    };
    now_ms.saturating_sub(at_ms) >= ttl
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn merge_is_order_independent() {
        let records = [
            endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1)),
            endpoint_record(1, "a", 3, endpoint("dev", "10.0.0.4", 1)),
            endpoint_record(2, "b", 2, endpoint("dev", "10.0.0.3", 1)),
        ];
        let delete = tombstone(&records[0], 2, 5, 1);
        let mut forward = Store::default();
        let mut backward = Store::default();
        for record in records.iter().chain([&delete]) {
            forward.apply(record.clone(), 10).expect("valid");
        }
        for record in records.iter().chain([&delete]).rev() {
            backward.apply(record.clone(), 10).expect("valid");
        }
        assert_eq!(forward.root(Tier::V1), backward.root(Tier::V1));
        assert_eq!(forward.get(&records[0].key), Some(&records[1]));
    }

    #[test]
    fn a_forged_record_changes_nothing() {
        let mut store = Store::default();
        let own = endpoint_record(1, "a", 3, endpoint("dev", "10.0.0.4", 1));
        store.apply(own.clone(), 0).expect("valid");
        let root = store.root(Tier::V1);
        let forged_delete = tombstone(&own, 4, 0, 2);
        assert!(matches!(store.apply(forged_delete, 0), Err(Refused::Forged { .. })));
        let mut hijacked = own.clone();
        hijacked.version = 9;
        assert!(matches!(store.apply(hijacked, 0), Err(Refused::Forged { .. })));
        assert_eq!((store.root(Tier::V1), store.get(&own.key)), (root, Some(&own)));
    }

    #[test]
    fn a_batch_merges_as_one_record_after_another_would() {
        let mut records: Vec<Record> = (0..300u64)
            .map(|k| endpoint_record(1, &format!("e{}", k % 200), k, endpoint("dev", "10.0.0.2", 1)))
            .collect();
        records[7] = tombstone(&records[7], 99, 5, 2);
        let mut one_by_one = Store::default();
        let expected: Vec<_> = records.iter().map(|r| one_by_one.apply(r.clone(), 10)).collect();
        let mut batch = Store::default();
        let outcomes: Vec<_> = batch.apply_all(records, 10, None).into_iter().map(|(_, outcome)| outcome).collect();
        assert_eq!(outcomes, expected);
        assert!(matches!(outcomes[7], Err(Refused::Forged { .. })));
        assert_eq!(batch.root(Tier::V1), one_by_one.root(Tier::V1));
    }

    #[test]
    fn records_from_their_writer_are_merged_at_once_and_forgeries_taken_out_later() {
        let mut store = Store::default();
        let good = endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1));
        let mut bad = endpoint_record(1, "b", 1, endpoint("dev", "10.0.0.3", 1));
        bad.version = 2; // node 1's seal no longer matches
        let relayed = endpoint_record(2, "c", 1, endpoint("dev", "10.0.0.4", 1));
        let outcomes = store.apply_all(vec![good.clone(), bad.clone(), relayed], 0, Some(node(1)));
        assert!(outcomes.iter().all(|(_, outcome)| *outcome == Ok(true)), "{outcomes:?}");
        assert!(store.has_deferred());
        let refused = store.check_deferred(100);
        assert!(matches!(refused.as_slice(), [Refused::Forged { key, .. }] if *key == bad.key), "{refused:?}");
        assert!(!store.has_deferred());
        assert_eq!(store.get(&good.key), Some(&good));
        assert_eq!(store.get(&bad.key), None);
        let mut expected = Store::default();
        for record in store.iter().cloned().collect::<Vec<_>>() {
            expected.apply(record, 0).expect("valid");
        }
        assert_eq!(store.root(Tier::V1), expected.root(Tier::V1), "the digest drops what was taken out");
    }

    #[test]
    fn a_stale_record_changes_nothing() {
        let mut store = Store::default();
        let newer = endpoint_record(1, "a", 3, endpoint("dev", "10.0.0.4", 1));
        assert_eq!(store.apply(newer.clone(), 0), Ok(true));
        let root = store.root(Tier::V1);
        assert_eq!(store.apply(endpoint_record(1, "a", 2, endpoint("dev", "10.0.0.2", 1)), 0), Ok(false));
        assert_eq!(store.apply(newer, 0), Ok(false));
        assert_eq!(store.root(Tier::V1), root);
    }

    #[test]
    fn tombstones_are_reaped_after_their_ttl_and_not_taken_back() {
        let mut store = Store::default();
        let live = endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1));
        let dead = tombstone(&live, 2, 1_000, 1);
        store.apply(live, 0).expect("valid");
        store.apply(dead.clone(), 1_000).expect("valid");
        assert_eq!(store.reap(1_000 + ENDPOINT_TOMBSTONE_TTL_MS - 1), 0);
        assert_eq!(store.reap(1_000 + ENDPOINT_TOMBSTONE_TTL_MS), 1);
        assert!(store.is_empty());
        assert_eq!(store.root(Tier::V1), Store::default().root(Tier::V1));
        // A peer that still holds the expired tombstone cannot hand it back.
        assert_eq!(store.apply(dead, 1_000 + ENDPOINT_TOMBSTONE_TTL_MS), Ok(false));
    }

    #[test]
    fn differing_buckets_hold_exactly_the_differences() {
        let mut ours = Store::default();
        let mut theirs = Store::default();
        let shared = endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1));
        let only_ours = endpoint_record(2, "b", 1, endpoint("dev", "10.0.0.3", 1));
        for store in [&mut ours, &mut theirs] {
            store.apply(shared.clone(), 0).expect("valid");
        }
        ours.apply(only_ours.clone(), 0).expect("valid");
        let differing = ours.differing(Tier::V1, theirs.buckets(Tier::V1));
        assert_eq!(differing.len(), 1);
        assert_eq!(ours.in_buckets(Tier::V1, &differing), vec![only_ours]);
        assert_eq!(ours.differing(Tier::V1, &[1, 2, 3]).len(), BUCKETS);
    }

    #[test]
    fn records_that_need_protocol_2_keep_out_of_the_first_digest() {
        let mut ours = Store::default();
        let mut theirs = Store::default();
        let shared = endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1));
        for store in [&mut ours, &mut theirs] {
            store.apply(shared.clone(), 0).expect("valid");
        }
        assert_eq!(ours.digest(), ours.root(Tier::V1), "without V2 records, the digest of a 0.2 agent");
        let announced = member_record(1, 2, member(9), 1);
        let secret = encrypted_network(1, 3, "sec", 10, "10.9.0.0/24");
        ours.apply(announced.clone(), 0).expect("valid");
        ours.apply(secret.clone(), 0).expect("valid");
        assert_eq!(ours.root(Tier::V1), theirs.root(Tier::V1), "comparable with an agent without them");
        assert_eq!(ours.buckets(Tier::V1), theirs.buckets(Tier::V1));
        assert_ne!(ours.digest(), theirs.digest(), "the digest shows them");
        let differing = ours.differing(Tier::V2, theirs.buckets(Tier::V2));
        let mut v2 = ours.in_buckets(Tier::V2, &differing);
        v2.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(v2, vec![secret.clone(), announced]);
        assert!(ours.in_buckets(Tier::V1, &differing).iter().all(|r| !r.needs_v2()));
        // The network's tombstone is for everyone: it moves to the first digest.
        let deleted = tombstone(&secret, 2, 5, 2);
        ours.apply(deleted.clone(), 0).expect("valid");
        theirs.apply(deleted, 0).expect("valid");
        assert_eq!(ours.root(Tier::V1), theirs.root(Tier::V1));
        ours.apply(tombstone(&member_record(1, 2, member(9), 1), 4, 5, 1), 0).expect("valid");
        ours.reap(5 + NETWORK_TOMBSTONE_TTL_MS);
        theirs.reap(5 + NETWORK_TOMBSTONE_TTL_MS);
        assert_eq!((ours.digest(), ours.root(Tier::V2)), (theirs.digest(), Store::default().root(Tier::V2)));
    }

    #[test]
    fn nothing_a_removed_member_signs_is_taken_member_records_included() {
        let mut store = Store::default();
        store
            .apply(Record::signed(RecordKey::Removed(node(2)), 1, Value::Removed { at_ms: 1 }, &key(1)), 0)
            .expect("valid");
        let policy = Record::signed(RecordKey::Policy, 1, Value::Policy(super::super::PolicySpec::default()), &key(2));
        for record in [member_record(2, 1, member(9), 2), policy] {
            assert!(matches!(store.apply(record, 0), Err(Refused::Forged { why: Forged::Removed(_), .. })));
        }
    }

    #[test]
    fn invalid_records_are_refused() {
        let mut store = Store::default();
        let record = endpoint_record(1, "bad name", 1, endpoint("dev", "10.0.0.2", 1));
        assert!(store.apply(record, 0).is_err());
        assert!(store.is_empty());
    }
}
