//! A rogue member: a lab host's own credentials (a valid certificate from
//! the cluster CA, and its identity key) used by the test instead of by
//! the host's agent, to send agents frames no honest agent sends. It runs
//! the real transport from a second port in the host's namespace, so the
//! receiving agent sees an ordinary authenticated connection from that host.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use mesh_membership::enrol::Enroller;
use mesh_membership::pki::{pem_cert, pem_key, ClusterCa, ClusterSecret, NodeCredentials};
use mesh_membership::transport::Transport;
use mesh_membership::wire::{self, Frame};
use mesh_membership::{NodeIdentity, NodeKey};
use mesh_netdev::netns;
use tokio_util::sync::CancellationToken;

use crate::lab::{host_ip, Lab, AGENT_PORT};

/// Host `i`'s identity key, read from its data dir.
pub fn node_key(lab: &Lab, i: usize) -> anyhow::Result<NodeKey> {
    let pem = std::fs::read_to_string(lab.data_dir(i).join("node-key.pem")).context("node-key.pem")?;
    Ok(NodeKey::from_pkcs8(pem_key(&pem)?.secret_pkcs8_der())?)
}

/// Sends `frames`, each on its own stream, to host `to`'s agent as host
/// `from`'s node, and returns once the agent has them.
pub fn send_as(lab: &Lab, from: usize, to: usize, frames: &[Frame]) -> anyhow::Result<()> {
    let dir = lab.data_dir(from);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("host {from}'s {name}"));
    let ca = ClusterCa::from_pem(&read("pki/ca.pem")?, &read("pki/ca-key.pem")?)?;
    let key = node_key(lab, from)?;
    let creds = NodeCredentials::new(pem_cert(&read("pki/node.pem")?)?, &key, ca.cert_der().clone());
    let enroller = Enroller::new(ca, ClusterSecret::random());
    let payloads: Vec<Vec<u8>> = frames.iter().map(wire::encode).collect();
    let local = SocketAddr::new(IpAddr::V4(host_ip(from)), 0);
    let peer = SocketAddr::new(IpAddr::V4(host_ip(to)), AGENT_PORT);
    netns::run_in(&netns::path_of(lab.netns(from)), move || Ok(deliver(local, peer, &creds, enroller, payloads)))?
}

/// Connects from `local` to the agent at `peer` with `creds` and sends each
/// payload on a stream; runs on a thread inside the sender's namespace.
fn deliver(
    local: SocketAddr,
    peer: SocketAddr,
    creds: &NodeCredentials,
    enroller: Enroller,
    payloads: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let endpoint = quinn::Endpoint::client(local)?;
        let (transport, _inbound) = Transport::start(endpoint, creds, enroller, shutdown.clone())?;
        let id = transport.connect(peer, None).await?;
        let to = NodeIdentity { id, bump: 0, name: String::new(), addr: peer };
        for payload in payloads {
            if let Some(delivery) = transport.send(&to, payload, true) {
                delivery.await?;
            }
        }
        transport.close().await;
        shutdown.cancel();
        Ok(())
    })
}
