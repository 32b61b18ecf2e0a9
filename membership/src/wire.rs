//! The framing of every agent-to-agent message: a protocol version byte, then
//! a postcard-encoded [`Frame`]. Decoding never trusts a length field beyond
//! the bytes actually received.
//!
//! Within the version, what a member reads grows by [`Protocol`], which
//! its connection negotiates (ALPN): frames and records new in protocol 2
//! go only to members that negotiated it.

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

/// What a member's connection negotiated (its ALPN name), so what it
/// reads. Ordered: a member speaking a protocol reads the earlier ones'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `mesh/1`, all an agent of 0.1 or 0.2 speaks: no frame from
    /// [`Frame::SyncV2Hello`] on, and no record that
    /// [`needs_v2`](crate::records::Record::needs_v2).
    V1,
    /// `mesh/2` (mesh 0.3 on): everything.
    V2,
}

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
    /// Anti-entropy, step 1, between members speaking [`Protocol::V2`]:
    /// `SyncHello`'s roots and that of the records that need protocol 2.
    SyncV2Hello {
        /// The sender's root of the records every member reads.
        records: u64,
        /// A hash of the members the sender sees active.
        members: u64,
        /// The sender's root of the records that need protocol 2.
        records_v2: u64,
    },
    /// Step 2 for the records that need protocol 2 (their roots differ):
    /// the receiver's per-bucket hashes of them.
    SyncV2Digest(Vec<u64>),
    /// Step 3 for them: "send me your records of these buckets that need
    /// protocol 2" (the sender has just sent its own).
    SyncV2Pull(Vec<Bucket>),
}

impl Frame {
    /// The protocol a member must speak to be sent this frame. Records in
    /// a frame are the sender's to filter.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::SyncV2Hello { .. } | Self::SyncV2Digest(_) | Self::SyncV2Pull(_) => Protocol::V2,
            _ => Protocol::V1,
        }
    }
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
    fn frames_of_protocol_1_keep_their_bytes_and_the_new_ones_are_appended() {
        // As protocol 3 of mesh 0.1 and 0.2 encodes them.
        let hello = Frame::SyncHello { records: 1, members: 2 };
        assert_eq!(encode(&hello), [PROTOCOL_VERSION, 5, 1, 2]);
        assert_eq!(encode(&Frame::SyncPull(vec![7])), [PROTOCOL_VERSION, 7, 1, 7]);
        assert_eq!(hello.protocol(), Protocol::V1);
        let v2 = Frame::SyncV2Hello { records: 1, members: 2, records_v2: 3 };
        assert_eq!(encode(&v2), [PROTOCOL_VERSION, 10, 1, 2, 3]);
        assert_eq!(decode(&encode(&v2)).ok(), Some(v2.clone()));
        assert_eq!(v2.protocol(), Protocol::V2);
        assert!(Protocol::V1 < Protocol::V2);
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
