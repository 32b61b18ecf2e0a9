//! Membership for mesh: who is in the cluster, and how agents talk.
//!
//! - [`core`]: the sans-io SWIM core (foca plus ordered timers, the
//!   leave protocol and a cluster-size-aware configuration). It takes
//!   `(now, input)` and yields datagrams, events and its next deadline, so
//!   the agent's [`driver`] and the simulator run the very same code.
//! - [`records`]: the replicated networks, endpoints, member records and
//!   policy, their merge rules and the view derived from them; the core
//!   disseminates and syncs them (those that need protocol 2 only to
//!   members whose connection negotiated `mesh/2`).
//! - [`transport`]: QUIC (quinn) with mutual TLS between members;
//!   [`traffic`]: what it carried.
//! - [`node_key`]: a node's Ed25519 identity key, whose hash is its id and
//!   which signs its records.
//! - [`pki`] and [`enrol`]: the cluster CA, node certificates, join tokens
//!   and how a new node gets its certificate; [`keyring`]: the CAs a
//!   member holds and trusts through a CA rotation.
//! - [`identity`]: who a node is, and its [`Status`] as seen from here,
//!   which the core and the records' view both go by; [`wire`]: the
//!   framing of every message.
//!
//! Each module imports only modules in the layers below its own, as the
//! project's DESIGN.md ("Layers") lists them and `scenarios/tests/layers.rs`
//! checks: the driver on top, then the transport, the sans-io core, the
//! records, and identity at the bottom.
//!
//! # Why SWIM travels as QUIC datagrams
//!
//! The alternative was UDP packets sealed with a key derived from the
//! cluster secret (memberlist's way). QUIC datagrams over mutually
//! authenticated connections were chosen because:
//!
//! - every packet is tied to the certificate of the node that sent it, so a
//!   member cannot speak for another (the core drops a SWIM packet whose
//!   source is not the connection's node), whereas one shared key lets any
//!   holder forge any node's messages;
//! - one port and one handshake serve SWIM, reliable frames (streams) and
//!   anti-entropy sync, with congestion control and path MTU handled by QUIC;
//! - there is no second key to rotate beside the certificates.
//!
//! The cost is a handshake (one round trip on a LAN) before the first
//! packet to a new peer, and a connection's state per peer; packets queued
//! during the handshake are sent once it completes.

pub mod core;
pub mod driver;
pub mod enrol;
pub mod identity;
pub mod keyring;
pub mod node_key;
pub mod pki;
pub mod records;
pub mod tls;
pub mod traffic;
pub mod transport;
pub mod wire;

mod timers;

pub use crate::core::{Core, Event, MemberInfo, Owned, PublishError, RecordStats, SyncSeen};
pub use crate::driver::{ChangeError, CurrentView, JoinError, Membership, RotateError};
pub use crate::identity::{NodeId, NodeIdentity, Status};
pub use crate::node_key::NodeKey;
