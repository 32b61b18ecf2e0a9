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
/// `POST`: leave the cluster gracefully.
pub(crate) const LEAVE: &str = "/v1/leave";
/// `GET`: every known member. Answers a list of [`MemberBody`].
pub(crate) const MEMBERS: &str = "/v1/members";
/// `GET`: this node and the cluster at a glance. Answers [`StatusBody`].
pub(crate) const STATUS: &str = "/v1/status";

/// An error, as the agent reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
}

/// A join token.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TokenBody {
    pub(crate) token: String,
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
}
