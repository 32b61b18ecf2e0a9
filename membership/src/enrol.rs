//! Enrolment: how a node with a join token but no certificate becomes a
//! member. The joiner opens a QUIC connection without a client certificate,
//! checks that the server's chain ends in the CA its token pins, and sends
//! the token's secret with a signing request on one bidirectional stream.
//! The member checks the secret and answers with a certificate, the CA
//! certificate and the CA key. After a CA rotation (see
//! [`crate::keyring`]), members hand each other the new CA's key the same
//! way, over their authenticated connections.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::keyring::{unix_ms, Keyring, KeyringError};
use crate::node_key::NodeKey;
use crate::pki::{certificate_request, ClusterCa, ClusterSecret, Fingerprint, PkiError, NODE_CERT_LIFETIME};
use crate::records::CaRotation;
use crate::wire::PROTOCOL_VERSION;

/// Largest enrolment message either side reads.
pub const MAX_ENROL_MESSAGE: usize = 64 * 1024;

/// What a joiner sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The joiner's protocol version.
    pub version: u8,
    /// The cluster secret from the join token.
    pub secret: [u8; 32],
    /// The joiner's node id, which its certificate will name.
    pub node: NodeId,
    /// A certificate signing request for the joiner's key, DER.
    pub csr_der: Vec<u8>,
}

/// What a member answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum EnrolResponse {
    /// The joiner is in: its certificate and the cluster CA.
    Admitted {
        /// The joiner's new certificate, DER.
        cert_der: Vec<u8>,
        /// The cluster CA certificate, DER.
        ca_cert_der: Vec<u8>,
        /// The cluster CA key, PEM, so this node can enrol others.
        ca_key_pem: String,
    },
    /// The joiner was refused, and why.
    Refused(String),
}

/// What a member asks another for after a CA rotation, on a bidirectional
/// stream of their authenticated connection: the key of the rotated CA.
#[derive(Debug, Serialize, Deserialize)]
pub struct CaKeyRequest {
    /// The fingerprint of the CA whose key is wanted.
    pub wanted: Fingerprint,
}

/// The answer to a [`CaKeyRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum CaKeyResponse {
    /// The CA key, PEM.
    Key(String),
    /// Not given, and why.
    Refused(String),
}

/// The member side of enrolment: what it needs to admit joiners.
pub struct Enroller {
    /// The cluster CAs, to sign joiners' certificates (and this node's).
    keyring: Mutex<Keyring>,
    /// The cluster secret joiners must present.
    secret: Mutex<ClusterSecret>,
    /// How long the certificates it issues are valid.
    lifetime: Duration,
}

impl Enroller {
    /// An enroller that signs with `ca` and admits holders of `secret`.
    pub fn new(ca: ClusterCa, secret: ClusterSecret) -> Self {
        Self { keyring: Mutex::new(Keyring::new(ca)), secret: Mutex::new(secret), lifetime: NODE_CERT_LIFETIME }
    }

    /// The same, issuing certificates valid for `lifetime` (default
    /// [`NODE_CERT_LIFETIME`]).
    pub fn with_cert_lifetime(self, lifetime: Duration) -> Self {
        Self { lifetime, ..self }
    }

    /// Runs `f` on the keyring.
    pub fn keyring<R>(&self, f: impl FnOnce(&mut Keyring) -> R) -> R {
        f(&mut self.keyring.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The certificate of the CA this member signs with.
    pub fn ca_cert(&self) -> CertificateDer<'static> {
        self.keyring(|k| k.signer().cert_der().clone())
    }

    /// A fresh certificate for the node whose key is `key` (this node's
    /// own, when it renews).
    pub fn issue(&self, key: &NodeKey) -> Result<CertificateDer<'static>, PkiError> {
        let request = certificate_request(key)?;
        self.keyring(|k| k.signer().issue(key.id(), &request, self.lifetime))
    }

    /// Takes the latest CA rotation record; returns whether it is news.
    pub fn set_rotation(&self, rotation: CaRotation) -> bool {
        self.keyring(|k| k.set_rotation(rotation))
    }

    /// The fingerprint of the rotated CA while this member lacks its key.
    pub fn missing(&self) -> Option<Fingerprint> {
        self.keyring(|k| k.missing())
    }

    /// Adopts the rotated CA from its PEM key (fetched from a member).
    pub fn adopt(&self, key_pem: &str) -> Result<(), String> {
        self.keyring(|k| {
            let rotation = k.rotation().ok_or("no CA rotation is known")?;
            let cert_pem = crate::pki::to_pem("CERTIFICATE", &rotation.cert_der);
            let ca = ClusterCa::from_pem(&cert_pem, key_pem).map_err(|e| e.to_string())?;
            k.adopt(ca).map_err(|e| e.to_string())
        })
    }

    /// The rotated CA's key for member `node`, if it may have it.
    pub fn key_for(&self, node: NodeId, wanted: Fingerprint) -> Result<String, KeyringError> {
        self.keyring(|k| k.key_for(node, wanted))
    }

    /// Whether member `node` may connect with `cert` now (see [`Keyring::admits`]).
    pub fn admits(&self, node: NodeId, cert: &[u8]) -> bool {
        self.keyring(|k| k.admits(node, cert, unix_ms()))
    }

    /// Replaces the secret joiners must present (a rotation): tokens with
    /// the old one stop admitting anyone.
    pub fn set_secret(&self, secret: ClusterSecret) {
        *self.secret.lock().unwrap_or_else(PoisonError::into_inner) = secret;
    }

    /// Decides on a request.
    pub fn admit(&self, request: &EnrolRequest) -> EnrolResponse {
        if request.version != PROTOCOL_VERSION {
            return EnrolResponse::Refused(format!(
                "protocol version {} is not supported (this member speaks {PROTOCOL_VERSION})",
                request.version
            ));
        }
        if !self.secret.lock().unwrap_or_else(PoisonError::into_inner).matches(&ClusterSecret(request.secret)) {
            return EnrolResponse::Refused("the join token is not valid for this cluster".into());
        }
        self.keyring(|k| {
            if k.missing().is_some() {
                return EnrolResponse::Refused(
                    "this member is switching to a rotated cluster CA; try again in a few seconds".into(),
                );
            }
            let ca = k.signer();
            match ca.issue(request.node, &request.csr_der, self.lifetime) {
                Ok(cert) => EnrolResponse::Admitted {
                    cert_der: cert.to_vec(),
                    ca_cert_der: ca.cert_der().to_vec(),
                    ca_key_pem: ca.key_pem(),
                },
                Err(error) => EnrolResponse::Refused(format!("bad certificate request: {error}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::node_id_of;

    fn request(secret: [u8; 32], key: &NodeKey) -> Result<EnrolRequest, PkiError> {
        Ok(EnrolRequest { version: PROTOCOL_VERSION, secret, node: key.id(), csr_der: certificate_request(key)? })
    }

    #[test]
    fn right_secret_is_admitted_wrong_one_refused() -> Result<(), PkiError> {
        let secret = ClusterSecret::random();
        let enroller = Enroller::new(ClusterCa::generate()?, secret.clone());
        let key = NodeKey::generate();
        let node = key.id();
        match enroller.admit(&request(secret.0, &key)?) {
            EnrolResponse::Admitted { cert_der, .. } => assert_eq!(node_id_of(&cert_der)?, node),
            EnrolResponse::Refused(why) => panic!("refused: {why}"),
        }
        let EnrolResponse::Refused(why) = enroller.admit(&request([0; 32], &key)?) else {
            panic!("a wrong secret was admitted");
        };
        assert!(why.contains("not valid"), "{why}");
        let mut old = request(secret.0, &key)?;
        old.version = 0;
        assert!(matches!(enroller.admit(&old), EnrolResponse::Refused(_)));
        let mut impostor = request(secret.0, &NodeKey::generate())?;
        impostor.node = node;
        let EnrolResponse::Refused(why) = enroller.admit(&impostor) else {
            panic!("a request for another node's id was admitted");
        };
        assert!(why.contains("identity key"), "{why}");
        enroller.set_secret(ClusterSecret::random());
        assert!(
            matches!(enroller.admit(&request(secret.0, &key)?), EnrolResponse::Refused(_)),
            "the old secret is out"
        );
        Ok(())
    }
}
