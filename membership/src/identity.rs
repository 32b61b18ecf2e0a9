//! Who a node is: its stable id, its name, where to reach it, and the bump
//! that lets a restarted or rejoining node win over its older self; and how
//! a member looks from here ([`Status`]), which both the core and the
//! records' view go by.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's stable 128-bit id: the first half of the SHA-256 of its
/// identity key's public key ([`crate::node_key::NodeKey`]), so it is as
/// stable as the key in its data dir and cannot be claimed without that key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// The id of the node whose identity key has this public key.
    pub fn of_public_key(public_key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0; 16];
        id.copy_from_slice(&digest.as_ref()[..16]);
        Self(id)
    }

    /// The DNS-style name carried in this node's certificate.
    pub fn cert_name(&self) -> String {
        format!("{self}.node.mesh")
    }

    /// Parses the id back out of a certificate name made by [`NodeId::cert_name`].
    pub fn from_cert_name(name: &str) -> Option<Self> {
        name.strip_suffix(".node.mesh")?.parse().ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are plenty to tell nodes apart in logs.
        write!(f, "{}", &self.to_string()[..8])
    }
}

/// The text was not a node id (32 hex digits).
#[derive(Debug, thiserror::Error)]
#[error("a node id is 32 hex digits")]
pub struct BadNodeId;

impl FromStr for NodeId {
    type Err = BadNodeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.is_ascii() {
            return Err(BadNodeId);
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadNodeId)?;
        }
        Ok(Self(id))
    }
}

/// A node as SWIM sees it. Foca keeps one identity per [`NodeId`]; when two
/// identities of the same node meet, the one with the later `bump` wins, so a
/// restarted agent (which bumps at start) replaces its old self at once.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Stable id of the node.
    pub id: NodeId,
    /// Incremented at every agent start and every rejoin after being declared down.
    pub bump: u16,
    /// Human-readable node name (the host name by default).
    pub name: String,
    /// Where the node's agent listens; its IP is also the node's VTEP address.
    pub addr: SocketAddr,
}

impl NodeIdentity {
    /// Whether `self` is a later incarnation of the node than `other`
    /// (serial-number arithmetic, so the u16 may wrap).
    pub fn is_newer_than(&self, other: &Self) -> bool {
        // Reinterpreting the wrapped difference as signed is the point here.
        #[allow(clippy::cast_possible_wrap)]
        let ahead = self.bump.wrapping_sub(other.bump) as i16;
        ahead > 0
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?}#{}@{})", self.name, self.id, self.bump, self.addr)
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self { bump: self.bump.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.id
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.is_newer_than(adversary)
    }
}

/// How a member looks from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes in time.
    Suspect,
    /// Declared failed.
    Down,
    /// Left the cluster on purpose.
    Left,
}

impl Status {
    /// The status as `mesh members` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn ident(bump: u16) -> NodeIdentity {
        NodeIdentity {
            id: NodeId([7; 16]),
            bump,
            name: "h1".into(),
            addr: "198.18.0.1:7950".parse().expect("test address"),
        }
    }

    #[test]
    fn node_id_round_trips_through_text_and_cert_name() {
        let id = NodeId::of_public_key(b"some key");
        assert_eq!(id.to_string().parse::<NodeId>().ok(), Some(id));
        assert_eq!(NodeId::from_cert_name(&id.cert_name()), Some(id));
        assert!("xyz".parse::<NodeId>().is_err());
        assert!("é".repeat(16).parse::<NodeId>().is_err());
        assert_eq!(NodeId::from_cert_name("mesh"), None);
    }

    #[test]
    fn later_bump_wins_even_across_wrap() {
        assert!(ident(2).win_addr_conflict(&ident(1)));
        assert!(!ident(1).win_addr_conflict(&ident(2)));
        assert!(ident(0).win_addr_conflict(&ident(u16::MAX)));
        assert!(!ident(3).win_addr_conflict(&ident(3)));
        assert_eq!(ident(u16::MAX).renew().map(|i| i.bump), Some(0));
    }
}
