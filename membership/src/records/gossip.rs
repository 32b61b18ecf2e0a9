//! Records riding on SWIM packets: foca's custom broadcasts. Foca owns the
//! handler, so the handler and the core share the store; a record received
//! this way is merged at once, re-gossiped only if it was news, and a newer
//! version of a record replaces the older one in foca's backlog.
//!
//! A broadcast reaches every member, agents of 0.2 too, so a record that
//! needs protocol 2 never becomes one: this node never gossips one, and one
//! a peer gossiped anyway is merged but not passed on.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foca::{BroadcastHandler, Invalidates};

use super::store::Store;
use super::{encode, stable_hash, Record, RecordKey};
use crate::identity::NodeIdentity;

/// What the core and the gossip handler share.
#[derive(Default)]
pub(crate) struct Shared {
    /// Every record this node holds.
    pub(crate) store: Store,
    /// The wall clock (milliseconds since the Unix epoch) at the last input.
    pub(crate) now_ms: u64,
    /// Records that arrived through gossip and changed the store, for the
    /// core to act on (events, owner checks).
    pub(crate) fresh: Vec<Record>,
}

/// A handle on the shared state, cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct SharedStore(Arc<Mutex<Shared>>);

impl SharedStore {
    /// Locks the shared state. Only the core's task ever holds it, so
    /// this never waits; a poisoned lock (a panic elsewhere) is taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Identifies a broadcast item so that foca can drop a stale one from its
/// backlog when a newer version of the same record arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ItemKey {
    key: RecordKey,
    rank: (u64, bool, u64),
}

impl ItemKey {
    fn of(record: &Record) -> Self {
        Self { key: record.key.clone(), rank: (record.version, record.is_deleted(), stable_hash(&encode(record))) }
    }
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.rank >= other.rank
    }
}

/// An item in a SWIM packet was not a record.
#[derive(Debug, thiserror::Error)]
#[error("malformed record in a SWIM packet: {0}")]
pub struct BadItem(#[from] postcard::Error);

/// Foca's handler for record broadcasts.
pub(crate) struct RecordGossip {
    shared: SharedStore,
}

impl RecordGossip {
    pub(crate) fn new(shared: SharedStore) -> Self {
        Self { shared }
    }
}

impl BroadcastHandler<NodeIdentity> for RecordGossip {
    type Key = ItemKey;
    type Error = BadItem;

    fn receive_item(&mut self, data: &[u8], sender: Option<&NodeIdentity>) -> Result<Option<ItemKey>, BadItem> {
        let record: Record = postcard::from_bytes(data)?;
        let key = ItemKey::of(&record);
        // Without a sender the core is adding a record it already merged.
        let Some(sender) = sender else { return Ok(Some(key)) };
        let mut shared = self.shared.lock();
        let now_ms = shared.now_ms;
        match shared.store.apply(record.clone(), now_ms) {
            Ok(true) => {
                let regossip = !record.needs_v2();
                shared.fresh.push(record);
                Ok(regossip.then_some(key))
            }
            Ok(false) => Ok(None),
            Err(error) => {
                super::log_refused(sender.id, &error);
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_newer_version_invalidates_an_older_one_only_for_the_same_key() {
        let old = ItemKey::of(&endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1)));
        let new = ItemKey::of(&endpoint_record(1, "a", 2, endpoint("dev", "10.0.0.3", 1)));
        let other = ItemKey::of(&endpoint_record(1, "b", 3, endpoint("dev", "10.0.0.4", 1)));
        assert!(new.invalidates(&old) && !old.invalidates(&new));
        assert!(!other.invalidates(&old));
    }

    #[test]
    fn only_news_is_regossiped() {
        let shared = SharedStore::default();
        let mut handler = RecordGossip::new(shared.clone());
        let sender =
            NodeIdentity { id: node(2), bump: 0, name: "b".into(), addr: "198.18.0.2:7950".parse().expect("addr") };
        let record = endpoint_record(2, "a", 1, endpoint("dev", "10.0.0.2", 1));
        let bytes = encode(&record);
        assert!(handler.receive_item(&bytes, Some(&sender)).expect("valid").is_some());
        assert!(handler.receive_item(&bytes, Some(&sender)).expect("valid").is_none());
        assert_eq!(shared.lock().fresh, vec![record]);
        assert!(handler.receive_item(&[0xff, 0xff], Some(&sender)).is_err());
    }

    #[test]
    fn a_record_needing_protocol_2_heard_by_gossip_is_merged_but_not_passed_on() {
        let shared = SharedStore::default();
        let mut handler = RecordGossip::new(shared.clone());
        let sender =
            NodeIdentity { id: node(2), bump: 0, name: "b".into(), addr: "198.18.0.2:7950".parse().expect("addr") };
        let record = member_record(2, 1, member(9), 2);
        assert!(handler.receive_item(&encode(&record), Some(&sender)).expect("valid").is_none());
        assert_eq!(shared.lock().fresh, vec![record]);
    }
}
