//! What the Docker plugin must remember across restarts of the agent and
//! of dockerd (the data dir keeps it as `docker.json`): which mesh network
//! each Docker network is, and each Docker endpoint's address, MAC and
//! published name.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Docker's mesh networks and endpoints on this host.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bindings {
    /// By Docker network id.
    pub(crate) networks: BTreeMap<String, BoundNetwork>,
    /// By Docker endpoint id.
    pub(crate) endpoints: BTreeMap<String, BoundEndpoint>,
}

/// A Docker network of driver mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BoundNetwork {
    /// Its pool, as Docker was given it.
    pub(crate) subnet: Ipv4Net,
    /// The mesh network it is, once known (Docker does not tell drivers a
    /// network's name: the agent asks the engine after `CreateNetwork`).
    pub(crate) mesh: Option<String>,
    /// What `--opt encrypted` asked (`None`: the cluster's policy).
    #[serde(default)]
    pub(crate) encrypted: Option<bool>,
}

/// A Docker endpoint on a mesh network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BoundEndpoint {
    /// Its Docker network's id.
    pub(crate) network: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) mac: [u8; 6],
    /// Whether a container joined it (its interface was handed over).
    pub(crate) joined: bool,
    /// The joined container's sandbox key (its namespace's path).
    #[serde(default)]
    pub(crate) sandbox: String,
    /// The name it is published under, once published.
    pub(crate) published: Option<String>,
}

impl Bindings {
    /// The mesh network of Docker network `id`, if bound.
    pub(crate) fn mesh_network(&self, id: &str) -> Option<&str> {
        self.networks.get(id)?.mesh.as_deref()
    }

    /// The hand-offs the data plane must hold: each endpoint of a bound
    /// network, by endpoint id, with its mesh network and MAC.
    pub(crate) fn handoffs(&self) -> BTreeMap<String, (String, [u8; 6])> {
        self.endpoints
            .iter()
            .filter_map(|(id, e)| Some((id.clone(), (self.mesh_network(&e.network)?.to_owned(), e.mac))))
            .collect()
    }
}
