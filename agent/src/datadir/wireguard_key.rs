//! This node's WireGuard static key: an X25519 key pair, kept in the data
//! dir as `wg genkey` writes a private key (base64 of 32 bytes, one line),
//! so `wg pubkey < wireguard.key` names it too.

use std::fmt;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use x25519_dalek::{PublicKey, StaticSecret};

/// This node's WireGuard key pair.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WireguardKey {
    private: [u8; 32],
    public: [u8; 32],
}

impl WireguardKey {
    /// A new random key, clamped as X25519 wants (as `wg genkey` does).
    pub(crate) fn generate() -> Self {
        let mut private: [u8; 32] = rand::random();
        private[0] &= 248;
        private[31] = (private[31] & 127) | 64;
        Self::from_private(private)
    }

    fn from_private(private: [u8; 32]) -> Self {
        let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
        Self { private, public }
    }

    /// The key in the text of a key file (base64, surrounding white
    /// space ignored).
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD.decode(text.trim()).context("not base64")?;
        let Ok(private) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!("a WireGuard key is 32 bytes, this one is {}", bytes.len());
        };
        if private == [0; 32] {
            bail!("a WireGuard key of all zeros is no key");
        }
        Ok(Self::from_private(private))
    }

    /// The text of its key file.
    pub(crate) fn to_file(&self) -> String {
        format!("{}\n", STANDARD.encode(self.private))
    }

    /// The private key.
    pub(crate) fn private(&self) -> [u8; 32] {
        self.private
    }

    /// The public key, which the member record announces.
    pub(crate) fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The public key as `wg pubkey` prints it.
    pub(crate) fn public_base64(&self) -> String {
        STANDARD.encode(self.public)
    }
}

impl fmt::Debug for WireguardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireguardKey(public {})", self.public_base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_its_file_and_matches_wg_pubkey() -> anyhow::Result<()> {
        // `wg genkey` / `wg pubkey` (wireguard-tools 1.0.20210914).
        let key = WireguardKey::parse("6B+6CPnK2oHxblt0uYuLogQeZGSmaLtl6AbgLys2CUk=\n")?;
        assert_eq!(key.public_base64(), "GL1HmwVMtv9EI5CtRi8AneZe5E90JnaaviJ6mOArHzE=");
        let fresh = WireguardKey::generate();
        assert_eq!(WireguardKey::parse(&fresh.to_file())?, fresh);
        assert_ne!(fresh.public(), WireguardKey::generate().public());
        assert!(!format!("{fresh:?}").contains(&STANDARD.encode(fresh.private())), "Debug hides the private key");
        Ok(())
    }

    #[test]
    fn damaged_keys_are_refused() {
        for text in ["", "not base64!", "AAAA", &STANDARD.encode([0u8; 32])] {
            assert!(WireguardKey::parse(text).is_err(), "{text:?}");
        }
    }
}
