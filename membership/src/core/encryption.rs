//! The core's records of the encrypted data plane: this node's member
//! record (its WireGuard key, port and path) and the cluster's encryption
//! policy. Both need protocol 2, so they reach only members speaking it
//! (see [`records`](super::records)), and survive restarts in
//! [`Owned`](super::Owned) like the other cluster-wide records.

use std::time::Instant;

use super::records::PublishError;
use super::Core;
use crate::records::{MemberSpec, PolicySpec, Record, RecordKey, Value};

impl Core {
    /// Writes this node's member record, or updates it if `spec` differs
    /// from what it holds (no new version otherwise). Its version comes
    /// from this node's counter, above any version of it held.
    pub fn announce_member(&mut self, now: Instant, spec: MemberSpec) -> Result<(), PublishError> {
        self.tick(now);
        let key = RecordKey::Member(self.identity().id);
        let held = self.record(&key);
        if held.as_ref().is_some_and(|r| r.value == Value::Member(spec)) {
            self.announced = Some(spec);
            return Ok(());
        }
        let version = self.next_version.max(held.map_or(0, |r| r.version + 1));
        self.publish(now, self.sign(key, version, Value::Member(spec)))?;
        self.next_version = version + 1;
        self.announced = Some(spec);
        Ok(())
    }

    /// Sets the cluster's encryption policy (any member may; the latest
    /// wins), unless it is already `spec`.
    pub fn set_policy(&mut self, now: Instant, spec: PolicySpec) -> Result<(), PublishError> {
        self.tick(now);
        let held = self.record(&RecordKey::Policy);
        if held.as_ref().is_some_and(|r| r.value == Value::Policy(spec)) {
            return Ok(());
        }
        let version = held.map_or(1, |r| r.version + 1);
        self.publish(now, self.sign(RecordKey::Policy, version, Value::Policy(spec)))
    }

    /// Re-announces what this node announced last if a peer passed on
    /// another version of its member record (one from before a restart
    /// that outranks the one announced since).
    pub(super) fn assert_member_record(&mut self, now: Instant, fresh: &[Record]) {
        let Some(spec) = self.announced else { return };
        let key = RecordKey::Member(self.identity().id);
        if fresh.iter().any(|r| r.key == key && r.value != Value::Member(spec)) {
            tracing::info!("a peer held another version of this node's member record; restoring ours");
            if let Err(error) = self.announce_member(now, spec) {
                tracing::warn!(%error, "could not restore this node's member record");
            }
        }
    }
}
