//! The replicated records: networks (cluster-scoped), endpoints (owned by
//! the host they live on), the control records (join secret, cluster CA,
//! removals) and those of the encrypted data plane ([`MemberSpec`],
//! [`PolicySpec`]); how two versions of one record are ordered, and what a
//! well-formed record is.
//!
//! - [`store`]: every record this node holds, with the digest anti-entropy
//!   compares.
//! - [`view`]: what the records mean once merged: the winning network for
//!   each name, the endpoints of each, and the conflicts.
//! - [`gossip`]: how records ride on SWIM packets (foca custom broadcasts).
//!
//! # Ordering
//!
//! Each record carries a version. A record replaces another with the same
//! key only if its version is greater, or, at equal versions, if it is a
//! delete (deletes win ties) or its encoding is greater: every host orders
//! any two records the same way, so merging is commutative and a late
//! delete can never remove a newer add. An endpoint's versions come from
//! its owner's counter, which only grows (it is persisted), so the owner's
//! latest word always wins.
//!
//! # Authenticity
//!
//! Every record carries a [`Seal`]: the signature of the node that wrote
//! it, checked by every node that merges it, however it arrived (pushed,
//! relayed, gossiped or synced). Only an endpoint's owner may write it, live
//! or deleted; only a member may write its own member record; only a
//! network's creator may write its definition; any member may delete a
//! network, rotate the join secret or the cluster CA, set the encryption
//! policy, or remove a member.
//! Nothing a removed member signs is taken. A node id is the hash of the node's
//! identity key ([`crate::node_key`]), so the check needs nothing but the
//! record itself.
//!
//! # Protocol 2
//!
//! Member records, the policy and encrypted networks are new in mesh 0.3,
//! and an agent of 0.2 cannot decode them: one such record fails a whole
//! frame there. They are [`Tier::V2`] records ([`Record::needs_v2`]): sent
//! only to members whose connection negotiated protocol 2, and kept out of
//! the digest that 0.2 agents compare.

pub mod gossip;
mod member;
pub mod store;
pub mod view;
mod wire_network;

use std::cmp::Ordering;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::node_key::{self, NodeKey, PUBLIC_KEY_LEN};

pub use self::member::{EncryptionPath, MemberSpec, PolicySpec};

/// Longest name of a network, endpoint or alias: one DNS label.
pub const MAX_NAME: usize = 63;
/// Most aliases one endpoint may publish.
pub const MAX_ALIASES: usize = 8;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Smallest and largest MTU a network may be given.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9216;

/// A network's unique id: the node that created it and that node's
/// version counter at the time. Two networks created with the same name
/// have different ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkId {
    /// The node that created the network.
    pub creator: NodeId,
    /// The creator's version counter when it created it.
    pub serial: u64,
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.creator, self.serial)
    }
}

impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}-{}", self.creator, self.serial)
    }
}

/// How a network's endpoints reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Driver {
    /// One VXLAN segment spanning every host.
    Overlay,
    /// No connectivity: a sandbox with only loopback.
    Null,
    /// A Linux bridge on each host, with no VXLAN: a sandbox reaches only
    /// the sandboxes of its own host (and, through the host, the outside).
    Bridge,
}

impl Driver {
    /// The driver's name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overlay => "overlay",
            Self::Null => "null",
            Self::Bridge => "bridge",
        }
    }

    /// Whether its sandboxes get an interface on a bridge (overlay and
    /// bridge networks; a null network gives only loopback).
    pub fn is_bridged(self) -> bool {
        matches!(self, Self::Overlay | Self::Bridge)
    }
}

/// A network as its creator defined it (encoded as [`wire_network`] says).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkSpec {
    /// The name users and DNS know it by.
    pub name: String,
    /// Its driver.
    pub driver: Driver,
    /// Whether it has no way out (no route to the outside, no masquerade,
    /// no published port): Docker's `--internal`.
    pub internal: bool,
    /// Whether its VXLAN rides inside WireGuard between the hosts (overlay
    /// networks only; such a network needs protocol 2).
    pub encrypted: bool,
    /// VXLAN network identifier (0 for the null driver; a bridge network's
    /// names its bridge).
    pub vni: u32,
    /// Its IPv4 subnet (`None` for the null driver).
    pub subnet: Option<Ipv4Net>,
    /// The address kept for the network's gateway, never given to an endpoint.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of its interfaces; `None` means the underlay's minus the VXLAN overhead.
    pub mtu: Option<u16>,
    /// When it was created, in milliseconds since the Unix epoch (creator's clock).
    pub created_ms: u64,
}

/// An endpoint as its owner defined it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Name of the network it is on.
    pub network: String,
    /// Service names it publishes besides its own name.
    pub aliases: Vec<String>,
    /// Its address (`None` on a network without a subnet).
    pub ip: Option<Ipv4Addr>,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Whether the user chose the address (`--ip`); such an address is
    /// never changed by mesh, and wins a conflict over an allocated one.
    pub static_ip: bool,
    /// When it was created, in milliseconds since the Unix epoch (owner's clock).
    pub created_ms: u64,
    /// The address it had before mesh moved it to resolve a conflict.
    pub readdressed_from: Option<Ipv4Addr>,
}

/// What a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKey {
    /// A network.
    Network(NetworkId),
    /// An endpoint: one sandbox's attachment to one network.
    Endpoint {
        /// The host it lives on, the only node that may change it.
        owner: NodeId,
        /// Its name (the sandbox's name, unique on its owner).
        name: String,
        /// The network it is on (its spec names the same one).
        network: String,
    },
    /// The secret a join token must carry (one record: the latest
    /// rotation wins).
    JoinSecret,
    /// A member removed from the cluster for good.
    Removed(NodeId),
    /// The cluster CA since its latest rotation (one record: the latest
    /// rotation wins).
    ClusterCa,
    /// What a member announces for the encrypted data plane; only that
    /// member may write it.
    Member(NodeId),
    /// The cluster's encryption policy (one record: the latest wins).
    Policy,
}

impl RecordKey {
    /// What kind of record this is, in one word (for metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Network(_) => "network",
            Self::Endpoint { .. } => "endpoint",
            Self::JoinSecret => "join_secret",
            Self::Removed(_) => "removed_member",
            Self::ClusterCa => "cluster_ca",
            Self::Member(_) => "member",
            Self::Policy => "policy",
        }
    }

    /// The only node that may write this record, if only one may.
    pub fn writer(&self) -> Option<NodeId> {
        match self {
            Self::Network(id) => Some(id.creator),
            Self::Endpoint { owner, .. } | Self::Member(owner) => Some(*owner),
            Self::JoinSecret | Self::Removed(_) | Self::ClusterCa | Self::Policy => None,
        }
    }
}

/// A record's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A live network.
    Network(NetworkSpec),
    /// A live endpoint.
    Endpoint(EndpointSpec),
    /// A tombstone: the record was deleted at this time (milliseconds since
    /// the Unix epoch, deleter's clock) and is reaped some time after.
    Deleted {
        /// When it was deleted.
        at_ms: u64,
    },
    /// The join secret since a rotation.
    JoinSecret {
        /// The secret.
        secret: [u8; 32],
        /// When it was rotated (milliseconds since the Unix epoch, rotator's clock).
        rotated_ms: u64,
    },
    /// The member was removed at this time (milliseconds since the Unix
    /// epoch, remover's clock); the seal names who removed it.
    Removed {
        /// When it was removed.
        at_ms: u64,
    },
    /// The cluster CA since a rotation.
    ClusterCa(CaRotation),
    /// A member's end of the encrypted data plane.
    Member(MemberSpec),
    /// The cluster's encryption policy.
    Policy(PolicySpec),
}

/// Which members may be sent a record, and which digest it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Every member: a record an agent of 0.2 decodes.
    V1,
    /// Only members whose connection negotiated protocol 2 (`mesh/2`).
    V2,
}

/// A rotation of the cluster CA: the new CA's certificate (its key goes
/// only to the members listed, over their authenticated connections), and
/// for how long certificates from the CA it replaces still count, and
/// whose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CaRotation {
    /// The new CA's certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate of the CA it replaces, DER.
    pub previous_der: Vec<u8>,
    /// The new CA's certificate signed by the one it replaces, DER: members
    /// present it in the grace period, for members not yet switched.
    pub cross_der: Vec<u8>,
    /// The members at the rotation (removed ones left out): the only nodes
    /// that may fetch the new CA's key, and the only ones whose
    /// certificates from the previous CA count during the grace period.
    pub members: Vec<NodeId>,
    /// When it was rotated (milliseconds since the Unix epoch, rotator's clock).
    pub rotated_ms: u64,
    /// How long after `rotated_ms` certificates from the previous CA count.
    pub grace_ms: u64,
}

/// Largest CA certificate a rotation record may carry.
const MAX_CA_CERT_LEN: usize = 4096;
/// Most members a rotation record may list.
const MAX_ROTATION_MEMBERS: usize = 100_000;

impl CaRotation {
    /// When certificates from the previous CA stop counting (milliseconds
    /// since the Unix epoch).
    pub fn grace_ends_ms(&self) -> u64 {
        self.rotated_ms.saturating_add(self.grace_ms)
    }

    fn validate(&self) -> Result<(), InvalidRecord> {
        let usable = |der: &[u8]| der.len() <= MAX_CA_CERT_LEN && crate::pki::is_certificate(der);
        if !usable(&self.cert_der) || !usable(&self.previous_der) || !usable(&self.cross_der) {
            return Err(InvalidRecord(format!(
                "a CA certificate must be a certificate of at most {MAX_CA_CERT_LEN} bytes"
            )));
        }
        if self.members.len() > MAX_ROTATION_MEMBERS {
            return Err(InvalidRecord(format!("a CA rotation lists at most {MAX_ROTATION_MEMBERS} members")));
        }
        Ok(())
    }
}

/// One versioned record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// What it is about.
    pub key: RecordKey,
    /// Its version; see the module documentation for the ordering.
    pub version: u64,
    /// Its content.
    pub value: Value,
    /// Its writer's signature of the three fields above.
    pub seal: Seal,
}

/// A record writer's signature, and the public key that checks it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Seal {
    /// The writer's identity public key; its hash is the writer's node id.
    pub signer: [u8; PUBLIC_KEY_LEN],
    /// The Ed25519 signature in its two halves, R and S (serde encodes
    /// arrays of up to 32 elements).
    pub signature: ([u8; 32], [u8; 32]),
}

impl Seal {
    /// The node that wrote the record.
    pub fn signer(&self) -> NodeId {
        NodeId::of_public_key(&self.signer)
    }
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seal(by {:?})", self.signer())
    }
}

/// A record whose seal does not prove that a node entitled to write it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forged {
    /// The signature is not the signer's signature of this record.
    #[error("its signature does not match its content")]
    BadSignature,
    /// A node signed what only another may write.
    #[error("it was signed by node {signer}, but only node {entitled} may write it")]
    NotEntitled {
        /// Who signed it.
        signer: NodeId,
        /// Who alone may write it.
        entitled: NodeId,
    },
    /// Its signer was removed from the cluster.
    #[error("it was signed by node {0}, which was removed from the cluster")]
    Removed(NodeId),
}

/// Why a record from a peer was not merged. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It breaks the rules of well-formed records.
    #[error(transparent)]
    Invalid(#[from] InvalidRecord),
    /// It is not written by a node entitled to write it.
    #[error("forged record {key:?}: {why}")]
    Forged {
        /// The record's key.
        key: RecordKey,
        /// What is wrong with its seal.
        why: Forged,
    },
}

impl Record {
    /// A record written, and signed, by the node whose identity key is `writer`.
    pub fn signed(key: RecordKey, version: u64, value: Value, writer: &NodeKey) -> Self {
        let signature = writer.sign(&signed_bytes(&key, version, &value));
        let (r, s) = signature.split_at(32);
        let half = |bytes: &[u8]| <[u8; 32]>::try_from(bytes).unwrap_or_default();
        let seal = Seal { signer: writer.public_key(), signature: (half(r), half(s)) };
        Self { key, version, value, seal }
    }

    /// Checks that the seal is the signature of a node entitled to write
    /// this record (see the module documentation).
    pub fn check_seal(&self) -> Result<(), Forged> {
        let mut signature = [0; node_key::SIGNATURE_LEN];
        signature[..32].copy_from_slice(&self.seal.signature.0);
        signature[32..].copy_from_slice(&self.seal.signature.1);
        let entitled = match (&self.key, &self.value) {
            (RecordKey::Network(_), Value::Deleted { .. }) => None,
            (key, _) => key.writer(),
        };
        let signer = self.seal.signer();
        if let Some(entitled) = entitled.filter(|&entitled| entitled != signer) {
            return Err(Forged::NotEntitled { signer, entitled });
        }
        let message = signed_bytes(&self.key, self.version, &self.value);
        if !node_key::verify(&self.seal.signer, &message, &signature) {
            return Err(Forged::BadSignature);
        }
        Ok(())
    }

    /// Whether this record replaces `other` (which must have the same key).
    pub fn supersedes(&self, other: &Record) -> bool {
        self.order(other) == Ordering::Greater
    }

    fn order(&self, other: &Record) -> Ordering {
        let deleted = |r: &Record| matches!(r.value, Value::Deleted { .. });
        self.version
            .cmp(&other.version)
            .then_with(|| deleted(self).cmp(&deleted(other)))
            .then_with(|| encode(self).cmp(&encode(other)))
    }

    /// Whether this record is a tombstone.
    pub fn is_deleted(&self) -> bool {
        matches!(self.value, Value::Deleted { .. })
    }

    /// Whether only members speaking protocol 2 may be sent this record:
    /// member records and the policy (live or not), and live encrypted
    /// networks. A network's tombstone is for everyone: it does not say
    /// what the network was, and an agent that never held it keeps it
    /// harmlessly until it is reaped.
    pub fn needs_v2(&self) -> bool {
        match (&self.key, &self.value) {
            (RecordKey::Member(_) | RecordKey::Policy, _) => true,
            (_, Value::Network(spec)) => spec.encrypted,
            _ => false,
        }
    }

    /// The tier of this record (see [`Record::needs_v2`]).
    pub fn tier(&self) -> Tier {
        if self.needs_v2() {
            Tier::V2
        } else {
            Tier::V1
        }
    }

    /// Checks what a peer cannot be trusted to have checked: names, sizes,
    /// ranges and that the key and value agree.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        match (&self.key, &self.value) {
            (RecordKey::JoinSecret, Value::JoinSecret { .. }) | (RecordKey::Removed(_), Value::Removed { .. }) => {
                Ok(())
            }
            (RecordKey::ClusterCa, Value::ClusterCa(rotation)) => rotation.validate(),
            (RecordKey::Policy, Value::Policy(_)) => Ok(()),
            (RecordKey::JoinSecret | RecordKey::Removed(_) | RecordKey::ClusterCa | RecordKey::Policy, _) => {
                Err(InvalidRecord(
                    "a join secret, a removal, a CA rotation or the policy is never deleted or replaced by another kind"
                        .into(),
                ))
            }
            (_, Value::Deleted { .. }) => Ok(()),
            (RecordKey::Member(_), Value::Member(spec)) => spec.validate(),
            (RecordKey::Network(_), Value::Network(spec)) => spec.validate(),
            (RecordKey::Endpoint { name, network, .. }, Value::Endpoint(spec)) => {
                check_name("endpoint", name)?;
                if *network != spec.network {
                    return Err(InvalidRecord("the endpoint's key and value name different networks".into()));
                }
                spec.validate()
            }
            _ => Err(InvalidRecord("the record's key and value are of different kinds".into())),
        }
    }
}

impl NetworkSpec {
    /// An overlay network on `subnet`, its first host address kept for the
    /// gateway, with the default MTU.
    pub fn overlay(name: &str, vni: u32, subnet: Ipv4Net, created_ms: u64) -> Self {
        Self {
            name: name.to_owned(),
            driver: Driver::Overlay,
            internal: false,
            encrypted: false,
            vni,
            subnet: Some(subnet),
            gateway: subnet.hosts().next(),
            mtu: None,
            created_ms,
        }
    }

    /// Checks the name, VNI, subnet, gateway, MTU and options.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        check_name("network", &self.name)?;
        if self.encrypted && self.driver != Driver::Overlay {
            return Err(InvalidRecord(format!(
                "a {} network cannot be encrypted: only overlay ones",
                self.driver.as_str()
            )));
        }
        match self.driver {
            Driver::Overlay | Driver::Bridge if !(1..=MAX_VNI).contains(&self.vni) => {
                return Err(InvalidRecord(format!("VNI {} is out of range (1-{MAX_VNI})", self.vni)));
            }
            Driver::Null if self.vni != 0 => return Err(InvalidRecord("a null network has no VNI".into())),
            Driver::Null if self.internal => {
                return Err(InvalidRecord("a null network has no way out to close".into()))
            }
            _ => {}
        }
        if let Some(mtu) = self.mtu.filter(|mtu| !MTU_RANGE.contains(mtu)) {
            return Err(InvalidRecord(format!(
                "MTU {mtu} is out of range ({}-{})",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            )));
        }
        match (self.driver, self.subnet) {
            (Driver::Null, Some(_)) => Err(InvalidRecord("a null network has no subnet".into())),
            (Driver::Overlay | Driver::Bridge, None) => {
                Err(InvalidRecord(format!("{} networks need a subnet", self.driver.as_str())))
            }
            (Driver::Overlay | Driver::Bridge, Some(subnet)) if subnet.prefix_len() > 30 => {
                Err(InvalidRecord(format!("subnet {subnet} is too small: the longest prefix is /30")))
            }
            (_, Some(subnet)) if self.gateway.is_some_and(|gw| !usable(subnet, gw)) => {
                Err(InvalidRecord(format!("gateway {:?} is not a host address of {subnet}", self.gateway)))
            }
            _ => Ok(()),
        }
    }
}

impl EndpointSpec {
    /// The key of this endpoint as sandbox `name` of node `owner`.
    pub fn key(&self, owner: NodeId, name: &str) -> RecordKey {
        RecordKey::Endpoint { owner, name: name.to_owned(), network: self.network.clone() }
    }

    /// An endpoint on `network` with the allocated address `ip` (and the
    /// MAC derived from it), no aliases.
    pub fn allocated(network: &str, ip: Ipv4Addr, created_ms: u64) -> Self {
        Self {
            network: network.to_owned(),
            aliases: Vec::new(),
            ip: Some(ip),
            mac: mac_for(ip),
            static_ip: false,
            created_ms,
            readdressed_from: None,
        }
    }

    /// Checks the network name, the aliases and the address's form.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        check_name("network", &self.network)?;
        if self.aliases.len() > MAX_ALIASES {
            return Err(InvalidRecord(format!("at most {MAX_ALIASES} aliases per endpoint")));
        }
        for alias in &self.aliases {
            check_name("alias", alias)?;
        }
        Ok(())
    }
}

/// The MAC address an endpoint with address `ip` gets: a locally
/// administered address that embeds the IP (as Docker does), so an address
/// that moves between hosts keeps its MAC and peers' ARP caches stay right.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x6d, a, b, c, d]
}

/// Whether `ip` is a host address of `subnet` (not its network or broadcast address).
pub fn usable(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// Checks that `name` is one DNS label: 1-63 letters, digits and hyphens,
/// starting with a letter or digit and not ending with a hyphen.
pub fn check_name(what: &str, name: &str) -> Result<(), InvalidRecord> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(InvalidRecord(format!(
            "{what} name {name:?} is not valid: use 1-{MAX_NAME} letters, digits and hyphens, not starting or ending with a hyphen"
        )))
    }
}

/// A record that breaks the rules; it is refused and nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecord(pub String);

/// Logs that a record passed on by `peer` was refused: a forgery at warn
/// level (a member misbehaves, or relays for one that does), anything else
/// at debug level.
pub(crate) fn log_refused(peer: NodeId, error: &Refused) {
    match error {
        Refused::Forged { .. } => tracing::warn!(%peer, %error, "refused a record"),
        Refused::Invalid(_) => tracing::debug!(%peer, %error, "refused a record"),
    }
}

/// What a record's seal signs: a label, so that no other signed message of
/// mesh's can pass for a record, then the fields in canonical encoding.
fn signed_bytes(key: &RecordKey, version: u64, value: &Value) -> Vec<u8> {
    let mut bytes = b"mesh record 1\0".to_vec();
    // Serialising in-memory values into a Vec cannot fail.
    bytes.extend(postcard::to_allocvec(&(key, version, value)).unwrap_or_default());
    bytes
}

/// A record's canonical encoding (postcard is deterministic).
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    // Serialising an in-memory value into a Vec cannot fail.
    postcard::to_allocvec(record).unwrap_or_default()
}

/// FNV-1a, 64 bits: a hash every host computes the same way, whatever its
/// Rust version (the standard library's hasher is not stable across them).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Record fixtures for the tests of this module tree.

    use super::*;

    /// The identity key of test node `byte`.
    pub(crate) fn key(byte: u8) -> NodeKey {
        NodeKey::from_seed([byte; 32])
    }

    /// The id of test node `byte`.
    pub(crate) fn node(byte: u8) -> NodeId {
        key(byte).id()
    }

    /// An overlay network spec.
    pub(crate) fn network(name: &str, vni: u32, subnet: &str, created_ms: u64) -> NetworkSpec {
        NetworkSpec::overlay(name, vni, subnet.parse().expect("test subnet"), created_ms)
    }

    /// An endpoint spec with an allocated address.
    pub(crate) fn endpoint(network: &str, ip: &str, created_ms: u64) -> EndpointSpec {
        EndpointSpec::allocated(network, ip.parse().expect("test ip"), created_ms)
    }

    /// A live endpoint record.
    pub(crate) fn endpoint_record(owner: u8, name: &str, version: u64, spec: EndpointSpec) -> Record {
        Record::signed(spec.key(node(owner), name), version, Value::Endpoint(spec), &key(owner))
    }

    /// The tombstone of `record`, written by test node `writer`.
    pub(crate) fn tombstone(record: &Record, version: u64, at_ms: u64, writer: u8) -> Record {
        Record::signed(record.key.clone(), version, Value::Deleted { at_ms }, &key(writer))
    }

    /// A member spec with WireGuard key `[byte; 32]` on port 51820.
    pub(crate) fn member(byte: u8) -> MemberSpec {
        MemberSpec { wireguard_key: [byte; 32], wireguard_port: 51820, path: EncryptionPath::Kernel }
    }

    /// Test node `node`'s member record, signed by test node `writer`.
    pub(crate) fn member_record(node_byte: u8, version: u64, spec: MemberSpec, writer: u8) -> Record {
        Record::signed(RecordKey::Member(node(node_byte)), version, Value::Member(spec), &key(writer))
    }

    /// An encrypted overlay network created by test node `creator`.
    pub(crate) fn encrypted_network(creator: u8, serial: u64, name: &str, vni: u32, subnet: &str) -> Record {
        let spec = NetworkSpec { encrypted: true, ..network(name, vni, subnet, 1) };
        Record::signed(
            RecordKey::Network(NetworkId { creator: node(creator), serial }),
            1,
            Value::Network(spec),
            &key(creator),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn greater_version_wins_and_deletes_win_ties() {
        let add = endpoint_record(1, "a", 5, endpoint("dev", "10.0.0.2", 1));
        let newer = endpoint_record(1, "a", 6, endpoint("dev", "10.0.0.3", 1));
        let delete = tombstone(&add, 5, 9, 1);
        assert!(newer.supersedes(&add) && !add.supersedes(&newer));
        assert!(delete.supersedes(&add) && !add.supersedes(&delete));
        // A late delete (older version) never removes a newer add.
        assert!(newer.supersedes(&delete) && !delete.supersedes(&newer));
        assert!(!add.supersedes(&add));
    }

    #[test]
    fn equal_versions_are_ordered_the_same_way_everywhere() {
        let a = endpoint_record(1, "a", 5, endpoint("dev", "10.0.0.2", 1));
        let b = endpoint_record(1, "a", 5, endpoint("dev", "10.0.0.3", 1));
        assert_ne!(a.supersedes(&b), b.supersedes(&a));
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["svc1", "a", "web-2", &"x".repeat(63)] {
            assert!(check_name("endpoint", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert!(check_name("endpoint", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn network_specs_are_checked() {
        assert!(network("dev", 10, "10.0.0.0/24", 1).validate().is_ok());
        assert!(network("dev", 0, "10.0.0.0/24", 1).validate().is_err());
        assert!(network("dev", MAX_VNI + 1, "10.0.0.0/24", 1).validate().is_err());
        assert!(network("dev", 10, "10.0.0.0/31", 1).validate().is_err());
        let mut spec = network("dev", 10, "10.0.0.0/24", 1);
        spec.mtu = Some(100);
        assert!(spec.validate().is_err());
        spec.mtu = None;
        spec.gateway = Some("10.0.1.1".parse().expect("ip"));
        assert!(spec.validate().is_err());
    }

    #[test]
    fn a_key_and_value_of_different_kinds_are_refused() {
        let spec = network("dev", 10, "10.0.0.0/24", 1);
        let record = Record::signed(
            RecordKey::Endpoint { owner: node(1), name: "a".into(), network: "dev".into() },
            1,
            Value::Network(spec),
            &key(1),
        );
        assert!(record.validate().is_err());
    }

    #[test]
    fn only_the_owner_writes_an_endpoint_and_only_the_creator_a_network() {
        let own = endpoint_record(1, "a", 5, endpoint("dev", "10.0.0.2", 1));
        assert_eq!(own.check_seal(), Ok(()));
        // Node 2 writes node 1's endpoint, or deletes it: refused.
        let forged = Record::signed(own.key.clone(), 6, own.value.clone(), &key(2));
        assert_eq!(forged.check_seal(), Err(Forged::NotEntitled { signer: node(2), entitled: node(1) }));
        assert!(tombstone(&own, 6, 9, 2).check_seal().is_err());
        assert_eq!(tombstone(&own, 6, 9, 1).check_seal(), Ok(()));
        // Node 2 keeps node 1's seal but changes the content: refused.
        let mut altered = own.clone();
        altered.version = 7;
        assert_eq!(altered.check_seal(), Err(Forged::BadSignature));
        let mut moved = own;
        moved.value = Value::Endpoint(endpoint("dev", "10.0.0.66", 1));
        assert_eq!(moved.check_seal(), Err(Forged::BadSignature));

        let id = NetworkId { creator: node(1), serial: 1 };
        let spec = Value::Network(network("dev", 10, "10.0.0.0/24", 1));
        let created = Record::signed(RecordKey::Network(id), 1, spec.clone(), &key(1));
        assert_eq!(created.check_seal(), Ok(()));
        assert!(Record::signed(RecordKey::Network(id), 2, spec, &key(2)).check_seal().is_err());
        assert_eq!(tombstone(&created, 2, 9, 2).check_seal(), Ok(()), "any member may delete a network");
    }

    #[test]
    fn only_a_member_writes_its_member_record_and_any_member_the_policy() {
        let own = member_record(1, 4, member(9), 1);
        assert_eq!((own.check_seal(), own.validate()), (Ok(()), Ok(())));
        let forged = member_record(1, 5, member(8), 2);
        assert_eq!(forged.check_seal(), Err(Forged::NotEntitled { signer: node(2), entitled: node(1) }));
        assert!(tombstone(&own, 5, 9, 2).check_seal().is_err(), "nor deletes it");
        for writer in [1, 2] {
            let policy = Record::signed(
                RecordKey::Policy,
                1,
                Value::Policy(PolicySpec { encrypt_networks: true }),
                &key(writer),
            );
            assert_eq!((policy.check_seal(), policy.validate()), (Ok(()), Ok(())));
        }
    }

    #[test]
    fn member_and_policy_records_are_checked() {
        assert!(member_record(1, 1, MemberSpec { wireguard_key: [0; 32], ..member(9) }, 1).validate().is_err());
        assert!(member_record(1, 1, MemberSpec { wireguard_port: 0, ..member(9) }, 1).validate().is_err());
        let policy = Record::signed(RecordKey::Policy, 1, Value::Policy(PolicySpec::default()), &key(1));
        assert!(tombstone(&policy, 2, 9, 1).validate().is_err(), "the policy is never deleted");
        let mismatched = [
            Record::signed(RecordKey::Policy, 1, Value::Member(member(9)), &key(1)),
            Record::signed(RecordKey::Member(node(1)), 1, Value::Policy(PolicySpec::default()), &key(1)),
            Record::signed(RecordKey::JoinSecret, 1, Value::Policy(PolicySpec::default()), &key(1)),
        ];
        assert!(mismatched.iter().all(|r| r.validate().is_err()));
        let mut bridge = network("br", 10, "10.0.0.0/24", 1);
        bridge.driver = Driver::Bridge;
        bridge.encrypted = true;
        assert!(bridge.validate().is_err(), "only overlay networks are encrypted");
        assert!(encrypted_network(1, 1, "sec", 10, "10.0.0.0/24").validate().is_ok());
    }

    #[test]
    fn member_records_the_policy_and_live_encrypted_networks_need_protocol_2() {
        let live = encrypted_network(1, 1, "sec", 10, "10.0.0.0/24");
        let policy = Record::signed(RecordKey::Policy, 1, Value::Policy(PolicySpec::default()), &key(1));
        let member = member_record(1, 1, member(9), 1);
        for record in [&live, &policy, &member, &tombstone(&member, 2, 9, 1)] {
            assert!(record.needs_v2() && record.tier() == Tier::V2, "{record:?}");
        }
        let plain = Record::signed(live.key.clone(), 1, Value::Network(network("dev", 11, "10.1.0.0/24", 1)), &key(1));
        for record in [&plain, &tombstone(&live, 2, 9, 2), &endpoint_record(1, "a", 1, endpoint("dev", "10.1.0.2", 1))]
        {
            assert!(!record.needs_v2() && record.tier() == Tier::V1, "{record:?}");
        }
    }

    #[test]
    fn an_endpoint_keyed_under_another_network_is_refused() {
        let mut record = endpoint_record(1, "a", 1, endpoint("dev", "10.0.0.2", 1));
        assert!(record.validate().is_ok());
        record.key = RecordKey::Endpoint { owner: node(1), name: "a".into(), network: "web".into() };
        assert!(record.validate().is_err());
    }
}

#[cfg(test)]
mod golden {
    //! Every kind of record mesh 0.2 writes, encoded and sealed byte for
    //! byte as 0.2 does (the hashes were taken from 0.2's build): new
    //! kinds and options must leave them alone, or a 0.2 agent could
    //! neither check nor compare them.

    use super::testing::*;
    use super::*;

    fn records_of_0_2() -> Vec<Record> {
        let id = NetworkId { creator: node(1), serial: 3 };
        let mut internal = network("dev", 42, "10.1.0.0/24", 7);
        internal.internal = true;
        internal.mtu = Some(1400);
        let bridge = NetworkSpec { driver: Driver::Bridge, ..network("br", 43, "10.2.0.0/24", 8) };
        let null = NetworkSpec {
            driver: Driver::Null,
            vni: 0,
            subnet: None,
            gateway: None,
            ..network("nil", 0, "10.3.0.0/24", 9)
        };
        let mut endpoint = endpoint("dev", "10.1.0.5", 11);
        endpoint.aliases = vec!["web".into()];
        let rotation = CaRotation {
            cert_der: vec![1, 2, 3],
            previous_der: vec![4],
            cross_der: vec![5, 6],
            members: vec![node(1), node(2)],
            rotated_ms: 12,
            grace_ms: 13,
        };
        let live = endpoint_record(2, "svc", 5, endpoint);
        vec![
            Record::signed(RecordKey::Network(id), 1, Value::Network(internal), &key(1)),
            Record::signed(RecordKey::Network(NetworkId { serial: 4, ..id }), 1, Value::Network(bridge), &key(1)),
            Record::signed(RecordKey::Network(NetworkId { serial: 5, ..id }), 1, Value::Network(null), &key(1)),
            tombstone(&live, 6, 14, 2),
            live,
            Record::signed(RecordKey::JoinSecret, 2, Value::JoinSecret { secret: [7; 32], rotated_ms: 15 }, &key(1)),
            Record::signed(RecordKey::Removed(node(3)), 1, Value::Removed { at_ms: 16 }, &key(1)),
            Record::signed(RecordKey::ClusterCa, 1, Value::ClusterCa(rotation), &key(2)),
        ]
    }

    #[test]
    fn records_of_every_earlier_kind_encode_and_seal_as_before() {
        let hashes: Vec<u64> = records_of_0_2().iter().map(|r| stable_hash(&encode(r))).collect();
        let of_0_2: [u64; 8] = [
            0xcb28_0a39_b2e6_3d65,
            0x7fa1_697e_f44f_42a0,
            0xd3e1_fc8d_b927_78c4,
            0x1686_fbca_a8bc_0448,
            0x9efb_c4df_40ed_dce3,
            0xd4bb_32f0_cc3d_2af4,
            0x4cd0_4f47_6dcb_4d14,
            0x49e9_ef82_1575_9b17,
        ];
        assert_eq!(hashes, of_0_2);
        assert!(records_of_0_2().iter().all(|r| r.check_seal().is_ok() && !r.needs_v2()));
    }
}
