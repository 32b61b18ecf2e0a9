//! The framing of every agent-to-agent message: a protocol version byte, then
//! a postcard-encoded [`Frame`]. Decoding never trusts a length field beyond
//! the bytes actually received.

use serde::{Deserialize, Serialize};

use crate::identity::NodeIdentity;
use crate::records::store::Bucket;
use crate::records::Record;

/// Version of the agent-to-agent protocol. A peer speaking another version is
/// refused with [`WireError::Version`], never misread. Version 2: records
/// carry their writer's seal. Version 3 (mesh 0.1): SWIM headers are
/// compact, and the cluster CA can be rotated. A change here makes a new
/// major version of mesh: minor versions keep the protocol, and a scenario
/// runs the previous minor release beside this build.
pub const PROTOCOL_VERSION: u8 = 3;

/// One message between agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A SWIM packet, opaque to everything but foca.
    Swim(Vec<u8>),
    /// The sender is leaving the cluster on purpose (not failing).
    Leave,
    /// The sender (this identity) asks for the receiver's whole member list.
    MembersRequest(NodeIdentity),
    /// The sender's whole member list (the answer to `MembersRequest`).
    Members(Vec<foca::Member<NodeIdentity>>),
    /// Records pushed as they change, by their origin or by a relay.
    Records(Vec<Record>),
    /// Anti-entropy, step 1: the roots of the sender's records and members.
    SyncHello {
        /// The sender's record store root.
        records: u64,
        /// A hash of the members the sender sees active.
        members: u64,
    },
    /// Step 2 (roots differ): the receiver's per-bucket hashes.
    SyncDigest(Vec<u64>),
    /// Step 3: "send me your records of these buckets" (the sender has
    /// just sent its own).
    SyncPull(Vec<Bucket>),
    /// A page of records answering a sync; merged, not re-gossiped.
    SyncRecords(Vec<Record>),
    /// `accuser`'s probe of `target` failed: it suspects it at
    /// `incarnation` (Lifeguard; see `core::lifeguard`).
    Suspect {
        /// The member suspected.
        target: NodeIdentity,
        /// Its incarnation when it was suspected.
        incarnation: foca::Incarnation,
        /// The member whose probe failed.
        accuser: crate::identity::NodeId,
    },
}

/// Why bytes from a peer were not a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message was empty.
    #[error("empty message")]
    Empty,
    /// The peer speaks a protocol version this agent does not.
    #[error("protocol version {0} is not supported (this agent speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The bytes after the version were not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a frame with its version prefix.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    // Serialising an in-memory enum into a Vec cannot fail.
    out.extend(postcard::to_allocvec(frame).unwrap_or_default());
    out
}

/// Decodes a frame, checking the version prefix.
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    Ok(postcard::from_bytes(rest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for frame in [Frame::Swim(vec![1, 2, 3]), Frame::Leave, Frame::Members(Vec::new())] {
            assert_eq!(decode(&encode(&frame)).ok(), Some(frame));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(&[]), Err(WireError::Empty)));
        assert!(matches!(decode(&[9, 0]), Err(WireError::Version(9))));
        assert!(matches!(decode(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f]), Err(WireError::Malformed(_))));
        // A length prefix claiming 4 GiB must not allocate it.
        assert!(decode(&[PROTOCOL_VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
