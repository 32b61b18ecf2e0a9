//! The records of the encrypted data plane: a member's WireGuard key and
//! how it carries encrypted networks (the member record, written only by
//! that member), and the cluster's encryption policy (written by any
//! member, the latest winning). Both need protocol 2 (see
//! [`Record::needs_v2`](super::Record::needs_v2)): an agent of 0.2 cannot
//! decode them.

use serde::{Deserialize, Serialize};

use super::InvalidRecord;

/// How a member carries encrypted networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncryptionPath {
    /// It cannot: no kernel WireGuard and no TUN device.
    None,
    /// Through the kernel's WireGuard.
    Kernel,
    /// Through the agent's own WireGuard over a TUN device.
    Userspace,
}

impl EncryptionPath {
    /// The path's name as `mesh status` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        }
    }
}

/// What a member announces about its end of the encrypted data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberSpec {
    /// Its WireGuard (X25519) public key.
    pub wireguard_key: [u8; 32],
    /// The UDP port its WireGuard listens on (at its advertise address).
    pub wireguard_port: u16,
    /// How it carries encrypted networks.
    pub path: EncryptionPath,
}

impl MemberSpec {
    /// Checks the key and the port: all zeros is no key, and port 0 is no port.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        if self.wireguard_key == [0; 32] {
            return Err(InvalidRecord("a member record's WireGuard key is all zeros".into()));
        }
        if self.wireguard_port == 0 {
            return Err(InvalidRecord("a member record's WireGuard port is 0".into()));
        }
        Ok(())
    }
}

/// The cluster's encryption policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicySpec {
    /// Whether new overlay networks are encrypted, and a plaintext one is
    /// refused.
    pub encrypt_networks: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_record_needs_a_key_and_a_port() {
        let spec = MemberSpec { wireguard_key: [9; 32], wireguard_port: 51820, path: EncryptionPath::Kernel };
        assert_eq!(spec.validate(), Ok(()));
        assert!(MemberSpec { wireguard_key: [0; 32], ..spec }.validate().is_err());
        assert!(MemberSpec { wireguard_port: 0, ..spec }.validate().is_err());
        let names: Vec<&str> = [EncryptionPath::None, EncryptionPath::Kernel, EncryptionPath::Userspace]
            .map(EncryptionPath::as_str)
            .into();
        assert_eq!(names, ["none", "kernel", "userspace"]);
    }
}
