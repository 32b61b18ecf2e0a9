//! The cluster CAs a member holds and trusts, through CA rotations.
//!
//! Every member holds the cluster CA's key (so any member can enrol the
//! next joiner), so a member removed for good still holds it and could mint
//! a certificate for a new identity. `mesh ca rotate` makes a new CA and
//! publishes a [`CaRotation`] record naming it and the members at that
//! moment. Then, on every member:
//!
//! - the new CA is trusted at once; each listed member fetches its key
//!   from a member that has it, over their authenticated connection, and
//!   re-issues its own certificate from it;
//! - a certificate from any other CA counts only if it names a listed
//!   member, and only until the grace period ends. A removed member is not
//!   listed, so nothing it mints from the old key is accepted, even during
//!   the grace period;
//! - a member that cannot yet sign with the new CA refuses to enrol
//!   joiners (a joiner it enrolled would not be listed).
//!
//! A member down for the whole grace period is shut out and joins again
//! with a new token. Two rotations at once: the record that wins names the
//! CA; a member that adopted the losing one signs again with the CA before
//! it (which it keeps, and which the winner lists as previous) until it
//! has fetched the winner's key.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

use crate::identity::NodeId;
use crate::pki::{fingerprint, issued_by, ClusterCa, Fingerprint};
use crate::records::CaRotation;

/// Why a CA could not be adopted or its key handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No rotation names that CA.
    #[error("that is not the cluster CA since the latest rotation")]
    NotTheRotatedCa,
    /// The requester was not a member at the rotation.
    #[error("node {0} was not a member when the CA was rotated")]
    NotListed(NodeId),
    /// This member has not got the key either (yet).
    #[error("this member does not hold that CA's key")]
    NotHeld,
}

/// The CAs this member holds, and the latest rotation it knows.
#[derive(Debug)]
pub struct Keyring {
    /// The CA held most recently.
    current: ClusterCa,
    /// The one held before it, kept in case a competing rotation wins.
    previous: Option<ClusterCa>,
    /// The latest rotation record, if the CA was ever rotated.
    rotation: Option<CaRotation>,
}

impl Keyring {
    /// A keyring holding only `ca`.
    pub fn new(ca: ClusterCa) -> Self {
        Self { current: ca, previous: None, rotation: None }
    }

    /// Takes the latest rotation record; returns whether it is news.
    pub fn set_rotation(&mut self, rotation: CaRotation) -> bool {
        if self.rotation.as_ref() == Some(&rotation) {
            return false;
        }
        self.rotation = Some(rotation);
        true
    }

    /// The latest rotation known.
    pub fn rotation(&self) -> Option<&CaRotation> {
        self.rotation.as_ref()
    }

    fn held(&self, cert_der: &[u8]) -> Option<&ClusterCa> {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|ca| ca.cert_der().as_ref() == cert_der)
    }

    /// The CA this member signs with: the rotated one once held; until
    /// then the one it replaces, if held; else the most recent.
    pub fn signer(&self) -> &ClusterCa {
        self.rotation
            .as_ref()
            .and_then(|r| self.held(&r.cert_der).or_else(|| self.held(&r.previous_der)))
            .unwrap_or(&self.current)
    }

    /// The fingerprint of the rotated CA if this member does not hold its
    /// key yet.
    pub fn missing(&self) -> Option<Fingerprint> {
        let rotation = self.rotation.as_ref()?;
        self.held(&rotation.cert_der).is_none().then(|| fingerprint(&rotation.cert_der))
    }

    /// Adopts `ca`, which must be the rotated CA, as the one to sign with.
    pub fn adopt(&mut self, ca: ClusterCa) -> Result<(), KeyringError> {
        if self.rotation.as_ref().is_none_or(|r| r.cert_der != ca.cert_der().as_ref()) {
            return Err(KeyringError::NotTheRotatedCa);
        }
        if self.held(ca.cert_der()).is_none() {
            self.previous = Some(std::mem::replace(&mut self.current, ca));
        }
        Ok(())
    }

    /// Starts a rotation made here: `rotation` names `ca`, made by this
    /// member.
    pub fn rotate(&mut self, ca: ClusterCa, rotation: CaRotation) -> Result<(), KeyringError> {
        self.rotation = Some(rotation);
        self.adopt(ca)
    }

    /// The rotated CA's key, PEM, for member `node`, which asked for the
    /// CA whose fingerprint is `wanted`.
    pub fn key_for(&self, node: NodeId, wanted: Fingerprint) -> Result<String, KeyringError> {
        let rotation = self.rotation.as_ref().filter(|r| fingerprint(&r.cert_der) == wanted);
        let rotation = rotation.ok_or(KeyringError::NotTheRotatedCa)?;
        if !rotation.members.contains(&node) {
            return Err(KeyringError::NotListed(node));
        }
        self.held(&rotation.cert_der).map(ClusterCa::key_pem).ok_or(KeyringError::NotHeld)
    }

    fn in_grace(&self, now_ms: u64) -> bool {
        self.rotation.as_ref().is_some_and(|r| now_ms < r.grace_ends_ms())
    }

    /// The CAs a peer's certificate may chain to at `now_ms` (TLS checks
    /// the chain; [`Keyring::admits`] then checks who may use which).
    pub fn roots(&self, now_ms: u64) -> Vec<CertificateDer<'static>> {
        let mut roots: Vec<CertificateDer<'static>> = vec![self.current.cert_der().clone()];
        let mut trust = |cert: CertificateDer<'static>| {
            if !roots.contains(&cert) {
                roots.push(cert);
            }
        };
        if let Some(rotation) = &self.rotation {
            trust(CertificateDer::from(rotation.cert_der.clone()));
            if self.in_grace(now_ms) {
                trust(CertificateDer::from(rotation.previous_der.clone()));
                if let Some(previous) = &self.previous {
                    trust(previous.cert_der().clone());
                }
            }
        }
        roots
    }

    /// What this member presents beside its certificate at `now_ms`: in a
    /// grace period, once it signs with the rotated CA, that CA's
    /// certificate signed by the previous one, so members not yet switched
    /// can verify it.
    pub fn cross(&self, now_ms: u64) -> Option<CertificateDer<'static>> {
        let rotation = self.rotation.as_ref().filter(|_| self.in_grace(now_ms))?;
        (self.signer().cert_der().as_ref() == rotation.cert_der)
            .then(|| CertificateDer::from(rotation.cross_der.clone()))
    }

    /// Whether member `node` may connect with `cert` (already verified by
    /// TLS against [`Keyring::roots`]) at `now_ms`: a certificate from the
    /// rotated CA always; one from another CA only if `node` was a member
    /// at the rotation and the grace period still runs.
    pub fn admits(&self, node: NodeId, cert: &[u8], now_ms: u64) -> bool {
        let Some(rotation) = &self.rotation else { return true };
        issued_by(cert, &rotation.cert_der) || (self.in_grace(now_ms) && rotation.members.contains(&node))
    }
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::node_key::NodeKey;
    use crate::pki::{certificate_request, PkiError};

    fn cert(ca: &ClusterCa, key: &NodeKey) -> Result<CertificateDer<'static>, PkiError> {
        ca.issue(key.id(), &certificate_request(key)?, Duration::from_secs(3600))
    }

    fn rotation(new: &ClusterCa, old: &ClusterCa, members: &[NodeId]) -> CaRotation {
        CaRotation {
            cert_der: new.cert_der().to_vec(),
            previous_der: old.cert_der().to_vec(),
            cross_der: old.cross_sign(new).map(|c| c.to_vec()).unwrap_or_default(),
            members: members.to_vec(),
            rotated_ms: 1_000,
            grace_ms: 1_000,
        }
    }

    fn copy(ca: &ClusterCa) -> Result<ClusterCa, PkiError> {
        ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem())
    }

    #[test]
    fn after_a_rotation_old_certificates_count_only_for_listed_members_in_the_grace_period() -> Result<(), PkiError> {
        let (old, new) = (ClusterCa::generate()?, ClusterCa::generate()?);
        let (member, minted) = (NodeKey::generate(), NodeKey::generate());
        let mut keyring = Keyring::new(copy(&old)?);
        assert!(keyring.admits(minted.id(), &cert(&old, &minted)?, 0), "no rotation: the CA is all that counts");
        let record = rotation(&new, &old, &[member.id()]);
        assert!(keyring.set_rotation(record.clone()));
        assert!(!keyring.set_rotation(record), "the same record is no news");
        // In the grace period: the listed member with its old certificate, not a minted identity.
        assert!(keyring.admits(member.id(), &cert(&old, &member)?, 1_500));
        assert!(!keyring.admits(minted.id(), &cert(&old, &minted)?, 1_500));
        assert_eq!(keyring.roots(1_500).len(), 2);
        // After it: only the new CA.
        assert!(!keyring.admits(member.id(), &cert(&old, &member)?, 2_000));
        assert!(keyring.admits(member.id(), &cert(&new, &member)?, 2_000));
        assert!(keyring.admits(minted.id(), &cert(&new, &minted)?, 2_000), "a joiner enrolled with the new CA");
        assert_eq!(keyring.roots(2_000).len(), 2, "the held CA and the rotated one");
        Ok(())
    }

    #[test]
    fn the_key_goes_only_to_listed_members_and_only_the_rotated_ca_is_adopted() -> Result<(), PkiError> {
        let (old, new, other) = (ClusterCa::generate()?, ClusterCa::generate()?, ClusterCa::generate()?);
        let (member, stranger) = (NodeKey::generate(), NodeKey::generate());
        let mut holder = Keyring::new(copy(&old)?);
        holder.rotate(copy(&new)?, rotation(&new, &old, &[member.id()])).map_err(|_| PkiError::Unreadable)?;
        assert_eq!(holder.signer().fingerprint(), new.fingerprint());
        assert!(holder.cross(1_500).is_some() && holder.cross(2_000).is_none(), "cross-signed in the grace period");
        let wanted = new.fingerprint();
        assert_eq!(holder.key_for(member.id(), wanted), Ok(new.key_pem()));
        assert_eq!(holder.key_for(stranger.id(), wanted), Err(KeyringError::NotListed(stranger.id())));
        assert_eq!(holder.key_for(member.id(), other.fingerprint()), Err(KeyringError::NotTheRotatedCa));

        let mut lagging = Keyring::new(copy(&old)?);
        lagging.set_rotation(rotation(&new, &old, &[member.id()]));
        assert_eq!(lagging.missing(), Some(wanted));
        assert_eq!(lagging.signer().fingerprint(), old.fingerprint(), "signs with the old CA until it has the key");
        assert_eq!(lagging.key_for(member.id(), wanted), Err(KeyringError::NotHeld));
        assert_eq!(lagging.cross(1_500), None, "nothing to present beside an old certificate");
        assert_eq!(lagging.adopt(copy(&other)?), Err(KeyringError::NotTheRotatedCa));
        assert_eq!(lagging.adopt(copy(&new)?), Ok(()));
        assert_eq!((lagging.missing(), lagging.signer().fingerprint()), (None, wanted));
        Ok(())
    }

    #[test]
    fn a_member_that_adopted_a_losing_rotation_signs_with_the_ca_before_it() -> Result<(), PkiError> {
        let (old, lost, won) = (ClusterCa::generate()?, ClusterCa::generate()?, ClusterCa::generate()?);
        let member = NodeKey::generate();
        let mut keyring = Keyring::new(copy(&old)?);
        keyring.rotate(copy(&lost)?, rotation(&lost, &old, &[member.id()])).map_err(|_| PkiError::Unreadable)?;
        keyring.set_rotation(rotation(&won, &old, &[member.id()]));
        assert_eq!(keyring.signer().fingerprint(), old.fingerprint());
        assert_eq!(keyring.missing(), Some(won.fingerprint()));
        Ok(())
    }
}
