//! The core's cluster-control half: rotating the join secret or the
//! cluster CA, and removing members for good. All are records any member
//! may write (see
//! [`crate::records`]), so they reach every member the way networks do and
//! survive restarts in [`Owned`](super::Owned).
//!
//! A removed member's records leave the view, nothing it signs is merged
//! again, its frames are dropped, and [`Event::Removed`] tells the driver to
//! refuse its connections.

use std::time::Instant;

use foca::{Member, State};

use super::records::PublishError;
use super::{Core, CoreError, Event};
use crate::identity::NodeId;
use crate::records::{CaRotation, Record, RecordKey, Value};

impl Core {
    /// Rotates the join secret: from now on, on every member, only tokens
    /// carrying `secret` admit new nodes.
    pub fn rotate_join_secret(&mut self, now: Instant, secret: [u8; 32]) -> Result<(), PublishError> {
        self.tick(now);
        let version = self.record(&RecordKey::JoinSecret).map_or(1, |r| r.version + 1);
        let rotated_ms = self.wall_ms(now);
        let record = self.sign(RecordKey::JoinSecret, version, Value::JoinSecret { secret, rotated_ms });
        self.publish(now, record)
    }

    /// The join secret since the latest rotation (`None` if it was never
    /// rotated: the secret `mesh init` made still holds).
    pub fn join_secret(&self) -> Option<[u8; 32]> {
        match self.record(&RecordKey::JoinSecret)?.value {
            Value::JoinSecret { secret, .. } => Some(secret),
            _ => None,
        }
    }

    /// Announces a new cluster CA: `rotation`'s certificates and grace
    /// period, with its version, time and members filled in here. The new
    /// CA's key may go to the members known now (removed ones left out),
    /// and their certificates from the previous CA count for the grace
    /// period. Returns the rotation as published.
    pub fn rotate_ca(&mut self, now: Instant, rotation: CaRotation) -> Result<CaRotation, PublishError> {
        self.tick(now);
        let version = self.record(&RecordKey::ClusterCa).map_or(1, |r| r.version + 1);
        let members = self
            .swim
            .iter_membership_state()
            .map(|m| m.id().id)
            .chain([self.identity().id])
            .filter(|&id| !self.is_removed(id))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let rotation = CaRotation { members, rotated_ms: self.wall_ms(now), ..rotation };
        self.publish(now, self.sign(RecordKey::ClusterCa, version, Value::ClusterCa(rotation.clone())))?;
        Ok(rotation)
    }

    /// The cluster CA since its latest rotation (`None` if it was never
    /// rotated: the CA `mesh init` made still holds).
    pub fn ca_rotation(&self) -> Option<CaRotation> {
        match self.record(&RecordKey::ClusterCa)?.value {
            Value::ClusterCa(rotation) => Some(rotation),
            _ => None,
        }
    }

    /// Removes member `id` from the cluster for good, everywhere.
    pub fn remove_member(&mut self, now: Instant, id: NodeId) -> Result<(), PublishError> {
        self.tick(now);
        if self.is_removed(id) {
            return Ok(());
        }
        let at_ms = self.wall_ms(now);
        self.publish(now, self.sign(RecordKey::Removed(id), 1, Value::Removed { at_ms }))?;
        self.expel(now, id);
        Ok(())
    }

    /// Whether member `id` was removed from the cluster.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.shared.lock().store.is_removed(id)
    }

    /// Refuses a frame from a removed member.
    pub(super) fn refuse_removed(&self, from: NodeId) -> Result<(), CoreError> {
        if self.is_removed(from) {
            return Err(CoreError::Removed(from));
        }
        Ok(())
    }

    /// Acts on removals among records just merged or restored.
    pub(super) fn expel_removed(&mut self, now: Instant, records: &[Record]) {
        for record in records {
            if let RecordKey::Removed(id) = record.key {
                self.expel(now, id);
            }
        }
    }

    /// Takes a removed member out of the membership and tells the driver.
    fn expel(&mut self, now: Instant, id: NodeId) {
        if id == self.identity().id {
            tracing::warn!("this node was removed from the cluster");
            return;
        }
        tracing::info!(node = %id, "member removed from the cluster");
        let member = self.swim.iter_membership_state().find(|m| m.id().id == id).cloned();
        if let Some(member) = member {
            if member.state() != State::Down {
                let down = Member::new(member.id().clone(), member.incarnation(), State::Down);
                if let Err(error) = self.swim.apply_many(std::iter::once(down), true, &mut self.runtime) {
                    tracing::debug!(%error, "could not mark a removed member down");
                }
                self.drain(now);
            }
        }
        self.records_changed = true;
        self.events.push_back(Event::Removed(id));
    }
}
