//! The control API's paths and messages, shared by the agent (server) and
//! the `mesh` client commands. HTTP+JSON over the agent's unix socket;
//! errors are a non-2xx status with an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// `POST`: make this agent a new cluster. Answers [`TokenBody`].
pub(crate) const INIT: &str = "/v1/init";
/// `POST` [`JoinBody`]: enrol (if needed) and join through a member.
pub(crate) const JOIN: &str = "/v1/join";
/// `GET`: the join token. Answers [`TokenBody`].
pub(crate) const TOKEN: &str = "/v1/token";
/// `POST`: rotate the join secret (on every member). Answers the new [`TokenBody`].
pub(crate) const TOKEN_ROTATE: &str = "/v1/token/rotate";
/// `POST` [`CaRotateBody`]: rotate the cluster CA (on every member) and
/// the join secret. Answers the new [`TokenBody`].
pub(crate) const CA_ROTATE: &str = "/v1/ca/rotate";
/// `POST`: leave the cluster gracefully.
pub(crate) const LEAVE: &str = "/v1/leave";
/// `GET`: every known member. Answers a list of [`MemberBody`].
pub(crate) const MEMBERS: &str = "/v1/members";
/// `DELETE`: remove the member (name or node id) from the cluster for good.
/// Answers [`Done`].
pub(crate) const MEMBER: &str = "/v1/members/{name}";
/// `GET`: this node and the cluster at a glance. Answers [`StatusBody`].
pub(crate) const STATUS: &str = "/v1/status";

/// An error, as the agent reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
}

/// `mesh init`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct InitBody {
    /// Every network of the new cluster encrypted (its policy).
    #[serde(default)]
    pub(crate) encrypt_networks: bool,
}

/// A join token.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TokenBody {
    pub(crate) token: String,
}

/// How a CA rotation goes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CaRotateBody {
    /// How long members' certificates from the replaced CA still count,
    /// in seconds.
    pub(crate) grace_secs: u64,
}

/// Where to join and with what token.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JoinBody {
    /// `HOST[:PORT]` of a member.
    pub(crate) peer: String,
    pub(crate) token: String,
}

/// One member, as `mesh members` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberBody {
    pub(crate) name: String,
    pub(crate) addr: String,
    /// `alive`, `suspect`, `down` or `left`.
    pub(crate) status: String,
    pub(crate) id: String,
}

/// `mesh status`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatusBody {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) addr: String,
    /// `uninitialized` (neither `init` nor `join` yet), `member` or `left`.
    pub(crate) state: String,
    /// Members alive or suspect, this node included.
    pub(crate) cluster_size: usize,
    pub(crate) members: Vec<MemberBody>,
    /// Equal on every host of a converged cluster: a hash of the records
    /// held, then of the members seen active (16 hex digits each).
    #[serde(default)]
    pub(crate) digest: Option<String>,
    /// The latest anti-entropy round this node took part in.
    #[serde(default)]
    pub(crate) last_sync: Option<LastSyncBody>,
    /// Conflicts in the view: networks that lost their name, VNI or
    /// subnet, endpoints whose address another won.
    #[serde(default)]
    pub(crate) conflicts: Vec<String>,
    /// The encrypted path between hosts.
    #[serde(default)]
    pub(crate) encryption: EncryptionBody,
}

/// This host's encrypted path, as `mesh status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct EncryptionBody {
    /// `kernel`, `userspace` or `none`.
    pub(crate) path: String,
    /// Why there is none.
    pub(crate) reason: Option<String>,
    /// WireGuard's UDP port.
    pub(crate) port: u16,
    /// This host's tunnel address.
    pub(crate) tunnel: String,
    /// This host's public key (base64, as `wg pubkey` prints it).
    pub(crate) public_key: String,
    /// How many peers its WireGuard has.
    pub(crate) peers: usize,
    /// Packets it dropped, by reason.
    pub(crate) dropped: std::collections::BTreeMap<String, u64>,
    /// Packets the tunnel guard (nftables `ip6 mesh`) dropped, by rule:
    /// tunnel traffic forged on the underlay.
    #[serde(default)]
    pub(crate) guard_dropped: std::collections::BTreeMap<String, u64>,
}

/// An anti-entropy round, as `mesh status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LastSyncBody {
    /// The member's name (its id if unknown).
    pub(crate) peer: String,
    /// When, in milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// Whether both held the same records.
    pub(crate) in_step: bool,
}

/// `GET`: membership and record changes as they happen, one
/// [`EventBody`] as JSON per line, until the client hangs up.
pub(crate) const EVENTS: &str = "/v1/events";

/// One change, as `mesh events` streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventBody {
    /// When this node saw it, in milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// What happened: `member-up`, `member-down`, `member-left`,
    /// `member-restarted`, `member-removed`, `network-created`,
    /// `network-removed`, `network-conflict`, `endpoint-added`,
    /// `endpoint-changed` or `endpoint-removed`.
    pub(crate) event: String,
    /// The member it is about, or the host of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) member: Option<String>,
    /// The network it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) network: Option<String>,
    /// The endpoint it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) endpoint: Option<String>,
    /// The rest, in words (an address, a state, a reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) detail: String,
}

/// `POST` [`NetworkCreateBody`]: create a network; answers [`NetworkBody`].
/// `GET`: every network; answers a list of [`NetworkBody`].
pub(crate) const NETWORKS: &str = "/v1/networks";
/// `GET`: one network by name; answers [`NetworkBody`]. `DELETE`: remove it.
pub(crate) const NETWORK: &str = "/v1/networks/{name}";
/// `POST` [`SandboxCreateBody`]: create a sandbox; answers [`SandboxBody`].
/// `GET`: this host's sandboxes; answers a list of [`SandboxBody`].
pub(crate) const SANDBOXES: &str = "/v1/sandboxes";
/// `DELETE`: remove this host's sandbox `name`.
pub(crate) const SANDBOX: &str = "/v1/sandboxes/{name}";

/// The path of one network or sandbox, from its route pattern.
pub(crate) fn path_of(route: &str, name: &str) -> String {
    route.replace("{name}", name)
}

/// `mesh network create`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct NetworkCreateBody {
    pub(crate) name: String,
    /// `overlay` (default), `bridge` or `null`.
    pub(crate) driver: Option<String>,
    /// IPv4 CIDR; a free /24 of 10.128.0.0/9 when absent.
    pub(crate) subnet: Option<String>,
    /// A free VNI from 4096 up when absent.
    pub(crate) vni: Option<u32>,
    pub(crate) mtu: Option<u16>,
    /// No way out (Docker's `--internal`).
    #[serde(default)]
    pub(crate) internal: bool,
    /// Inside WireGuard between hosts; absent: the cluster's policy
    /// (plaintext unless `mesh init --encrypt-networks`).
    #[serde(default)]
    pub(crate) encrypted: Option<bool>,
}

/// A network, as `mesh network inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NetworkBody {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) driver: String,
    pub(crate) vni: u32,
    pub(crate) subnet: Option<String>,
    pub(crate) gateway: Option<String>,
    pub(crate) mtu: Option<u16>,
    /// Whether it has no way out.
    #[serde(default)]
    pub(crate) internal: bool,
    /// Whether its packets travel inside WireGuard between hosts.
    #[serde(default)]
    pub(crate) encrypted: bool,
    /// The MTU its interfaces get on the answering host (the given one,
    /// or the underlay's minus the overheads), if it has interfaces.
    #[serde(default)]
    pub(crate) mtu_effective: Option<u32>,
    /// How [`NetworkBody::mtu_effective`] was computed.
    #[serde(default)]
    pub(crate) mtu_from: Option<String>,
    /// The node that created it.
    pub(crate) created_by: String,
    /// Milliseconds since the Unix epoch, creator's clock.
    pub(crate) created_ms: u64,
    pub(crate) endpoints: Vec<EndpointBody>,
    /// Networks that lost to this one (or under its name), and why.
    pub(crate) conflicts: Vec<String>,
}

/// One endpoint of a network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndpointBody {
    pub(crate) name: String,
    pub(crate) ip: Option<String>,
    pub(crate) mac: String,
    /// Name of the host it lives on.
    pub(crate) node: String,
    pub(crate) node_id: String,
    pub(crate) aliases: Vec<String>,
    /// Whether the user chose the address.
    #[serde(rename = "static")]
    pub(crate) static_ip: bool,
    /// `active`, `owner-down`, `owner-left` or `conflict`.
    pub(crate) state: String,
    /// What the conflict is, when `state` is `conflict`.
    pub(crate) conflict: Option<String>,
    /// The address mesh moved it from to resolve a conflict.
    pub(crate) readdressed_from: Option<String>,
}

/// `mesh sandbox create`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SandboxCreateBody {
    pub(crate) name: String,
    /// The networks to join, in the order of the sandbox's interfaces.
    pub(crate) networks: Vec<String>,
    pub(crate) aliases: Vec<String>,
    /// A static address on the first network; allocated when absent.
    pub(crate) ip: Option<String>,
    /// An existing network namespace to attach (a container's); a new
    /// one named after the sandbox when absent.
    pub(crate) netns: Option<String>,
    /// The interface's name in an attached namespace on one network (a
    /// CNI runtime's `CNI_IFNAME`); `eth0`, `eth1`... when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interface: Option<String>,
    /// Ports to publish at the host's addresses: `HOSTPORT:PORT[/tcp|udp]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) publish: Vec<String>,
}

/// A sandbox of this host: its namespace and its endpoint on each network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SandboxBody {
    pub(crate) name: String,
    /// The sandbox's network namespace on this host.
    pub(crate) netns: Option<String>,
    /// Its ports published at the host's addresses (`HOSTPORT:PORT/PROTO`).
    #[serde(default)]
    pub(crate) ports: Vec<String>,
    /// One per network, in the order of its interfaces.
    pub(crate) endpoints: Vec<SandboxEndpointBody>,
}

/// A sandbox's endpoint on one network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SandboxEndpointBody {
    pub(crate) network: String,
    /// Its interface inside the sandbox (`eth0`...); none on a null network.
    pub(crate) interface: Option<String>,
    #[serde(flatten)]
    pub(crate) endpoint: EndpointBody,
}

/// An empty answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Done {}

/// `GET ?after=G[&network=NAME][&timeout_ms=T]`: waits until the view's
/// generation exceeds `G` (at most `T`, default 30 s), then answers
/// [`ChangesBody`]. A long poll for watchers (tests, benchmarks, scripts).
pub(crate) const CHANGES: &str = "/v1/changes";

/// The query of [`CHANGES`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ChangesQuery {
    #[serde(default)]
    pub(crate) after: u64,
    pub(crate) network: Option<String>,
    pub(crate) timeout_ms: Option<u64>,
}

/// The view's generation, and the active endpoints of the network asked
/// about (empty if none was, or it does not exist).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ChangesBody {
    pub(crate) generation: u64,
    pub(crate) endpoints: Vec<String>,
}
