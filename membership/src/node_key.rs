//! A node's identity key: an Ed25519 key pair whose public key's hash *is*
//! the node's [`NodeId`].
//!
//! Because the id is derived from the key, nobody can claim another node's
//! id without its private key, not even a member holding the cluster CA key
//! (every member does, so that any member can enrol the next joiner). The
//! key signs the node's records ([`crate::records::Seal`]) and is the key of
//! its TLS certificate, whose name must be the hash of that same key
//! ([`crate::pki::node_id_of`]).

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::identity::NodeId;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The DER that precedes the 32-byte seed in an Ed25519 PKCS#8 v1 document
/// (RFC 8410, section 7): version 0, algorithm id-Ed25519, the seed as an
/// octet string inside an octet string.
const PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// A key could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("not an Ed25519 node key (PKCS#8 v1, as mesh writes it)")]
pub struct BadNodeKey;

/// A node's Ed25519 identity key.
pub struct NodeKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.id())
    }
}

impl Clone for NodeKey {
    fn clone(&self) -> Self {
        Self::from_seed(self.seed)
    }
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The key made from a 32-byte seed. The agent uses random seeds; the
    /// simulator derives them from its own seed so runs repeat.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        // Every 32-byte string is a valid Ed25519 seed.
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).unwrap_or_else(|_| unreachable!("any 32 bytes are a seed"));
        Self { seed, pair }
    }

    /// Reads a key from the PKCS#8 document [`NodeKey::pkcs8`] wrote.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, BadNodeKey> {
        let seed = der.strip_prefix(&PKCS8_PREFIX[..]).ok_or(BadNodeKey)?;
        Ok(Self::from_seed(seed.try_into().map_err(|_| BadNodeKey)?))
    }

    /// The key as a PKCS#8 v1 document, the form TLS and the data dir take.
    pub fn pkcs8(&self) -> Vec<u8> {
        [&PKCS8_PREFIX[..], &self.seed].concat()
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The id of the node this key belongs to.
    pub fn id(&self) -> NodeId {
        NodeId::of_public_key(&self.public_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Whether `signature` is `public_key`'s signature of `message`.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key).verify(message, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_pkcs8_and_names_its_node() {
        let key = NodeKey::generate();
        let again = NodeKey::from_pkcs8(&key.pkcs8()).expect("own encoding");
        assert_eq!(again.id(), key.id());
        assert_eq!(NodeKey::from_seed([1; 32]).id(), NodeKey::from_seed([1; 32]).id(), "ids are deterministic");
        assert_ne!(NodeKey::from_seed([1; 32]).id(), NodeKey::from_seed([2; 32]).id());
        assert!(NodeKey::from_pkcs8(&key.pkcs8()[..40]).is_err());
        assert!(NodeKey::from_pkcs8(b"garbage").is_err());
    }

    #[test]
    fn pkcs8_is_what_other_libraries_read() {
        let key = NodeKey::generate();
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.pkcs8()).expect("ring reads it");
        assert_eq!(pair.public_key().as_ref(), key.public_key());
        let rcgen_pair = rcgen::KeyPair::try_from(key.pkcs8().as_slice()).expect("rcgen reads it");
        assert_eq!(rcgen_pair.public_key_raw(), key.public_key());
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = NodeKey::generate();
        let signature = key.sign(b"hello");
        assert!(verify(&key.public_key(), b"hello", &signature));
        assert!(!verify(&key.public_key(), b"hellO", &signature));
        assert!(!verify(&NodeKey::generate().public_key(), b"hello", &signature));
    }
}
