//! A rogue member: credentials taken from a lab host's data dir (its own
//! identity key and certificate, or a new identity minted with its copy of
//! the cluster CA) used by the test instead of by the host's agent, to do
//! what no honest agent does. It runs the real transport (or a bare QUIC
//! connection) from a second port in the host's namespace, so the
//! receiving agent sees an ordinary connection from that host.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use mesh_membership::enrol::Enroller;
use mesh_membership::pki::{certificate_request, pem_cert, pem_key, ClusterCa, ClusterSecret, NodeCredentials};
use mesh_membership::tls;
use mesh_membership::transport::{self, Transport};
use mesh_membership::wire::{self, Frame};
use mesh_membership::{NodeIdentity, NodeKey};
use mesh_netdev::netns;
use quinn::rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::lab::{host_ip, Lab, AGENT_PORT};

/// How long a connection must stay open to count as kept.
const KEPT_FOR: Duration = Duration::from_secs(2);
/// How long a connection stays open after the agent acknowledged what was
/// sent on it: QUIC acknowledges a stream's data before the agent reads
/// it, and closing the connection at once drops what is still unread.
const LINGER: Duration = Duration::from_millis(500);

/// Host `i`'s identity key, read from its data dir.
pub fn node_key(lab: &Lab, i: usize) -> anyhow::Result<NodeKey> {
    let pem = std::fs::read_to_string(lab.data_dir(i).join("node-key.pem")).context("node-key.pem")?;
    Ok(NodeKey::from_pkcs8(pem_key(&pem)?.secret_pkcs8_der())?)
}

/// What a rogue connects with.
pub struct RogueCredentials {
    key: NodeKey,
    cert: CertificateDer<'static>,
    ca: ClusterCa,
}

impl RogueCredentials {
    /// Host `i`'s own: its identity key, its certificate, its CA copy.
    pub fn of_host(lab: &Lab, i: usize) -> anyhow::Result<Self> {
        let ca = host_ca(lab, i)?;
        let cert = pem_cert(&read(lab, i, "pki/node.pem")?)?;
        Ok(Self { key: node_key(lab, i)?, cert, ca })
    }

    /// A new identity, with a certificate minted from host `i`'s copy of
    /// the cluster CA (what a removed member could do).
    pub fn minted_with(lab: &Lab, i: usize) -> anyhow::Result<Self> {
        let ca = host_ca(lab, i)?;
        let key = NodeKey::generate();
        let cert = ca.issue(key.id(), &certificate_request(&key)?, Duration::from_secs(3600))?;
        Ok(Self { key, cert, ca })
    }

    fn node_credentials(&self) -> NodeCredentials {
        NodeCredentials::new(self.cert.clone(), &self.key, self.ca.cert_der().clone())
    }
}

fn read(lab: &Lab, i: usize, name: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(lab.data_dir(i).join(name)).with_context(|| format!("host {i}'s {name}"))
}

fn host_ca(lab: &Lab, i: usize) -> anyhow::Result<ClusterCa> {
    Ok(ClusterCa::from_pem(&read(lab, i, "pki/ca.pem")?, &read(lab, i, "pki/ca-key.pem")?)?)
}

/// Sends `frames`, each on its own stream, to host `to`'s agent as host
/// `from`'s node, and returns once the agent has them.
pub fn send_as(lab: &Lab, from: usize, to: usize, frames: &[Frame]) -> anyhow::Result<()> {
    let creds = RogueCredentials::of_host(lab, from)?;
    let payloads: Vec<Vec<u8>> = frames.iter().map(wire::encode).collect();
    let (local, peer) = addresses(from, to);
    netns::run_in(&netns::path_of(lab.netns(from)), move || Ok(deliver(local, peer, creds, payloads)))?
}

/// What an agent did with a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Reception {
    /// It kept the connection open, and answered a request for the
    /// rotated CA's key with this (the key, or why not).
    Kept(Result<(), String>),
    /// It refused the handshake or closed the connection, with this reason.
    Refused(String),
}

/// Connects to host `to`'s agent with `creds` from host `from`'s namespace,
/// asks it for the CA key whose certificate is host `to`'s, and reports
/// what the agent did.
pub fn connect_as(lab: &Lab, from: usize, to: usize, creds: &RogueCredentials) -> anyhow::Result<Reception> {
    let client = tls::member_client_config(&creds.node_credentials(), &[creds.ca.cert_der().clone()])?;
    let wanted = mesh_membership::pki::fingerprint(&pem_cert(&read(lab, to, "pki/ca.pem")?)?);
    let (local, peer) = addresses(from, to);
    netns::run_in(&netns::path_of(lab.netns(from)), move || Ok(probe(local, peer, client, wanted)))?
}

fn addresses(from: usize, to: usize) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(IpAddr::V4(host_ip(from)), 0), SocketAddr::new(IpAddr::V4(host_ip(to)), AGENT_PORT))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Connects from `local` to the agent at `peer` with `creds` and sends each
/// payload on a stream; runs on a thread inside the sender's namespace.
fn deliver(local: SocketAddr, peer: SocketAddr, creds: RogueCredentials, payloads: Vec<Vec<u8>>) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let endpoint = quinn::Endpoint::client(local)?;
        let enroller = Enroller::new(creds.ca, ClusterSecret::random());
        let (transport, _inbound) = Transport::start(endpoint, &creds.key, creds.cert, enroller, shutdown.clone())?;
        let id = transport.connect(peer, None).await?;
        let to = NodeIdentity { id, bump: 0, name: String::new(), addr: peer };
        for payload in payloads {
            if let Some(delivery) = transport.send(&to, payload, true) {
                delivery.await?;
            }
        }
        tokio::time::sleep(LINGER).await;
        transport.close().await;
        shutdown.cancel();
        Ok(())
    })
}

/// A bare QUIC connection with `client`: refused, or kept for
/// [`KEPT_FOR`] and asked for a CA key.
fn probe(
    local: SocketAddr,
    peer: SocketAddr,
    client: quinn::ClientConfig,
    wanted: mesh_membership::pki::Fingerprint,
) -> anyhow::Result<Reception> {
    runtime()?.block_on(async move {
        let endpoint = quinn::Endpoint::client(local)?;
        let connecting = endpoint.connect_with(client, peer, mesh_membership::pki::SERVER_NAME)?;
        let conn = match tokio::time::timeout(KEPT_FOR, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => return Ok(Reception::Refused(error.to_string())),
            Err(_) => return Ok(Reception::Refused("no handshake".into())),
        };
        if let Ok(reason) = tokio::time::timeout(KEPT_FOR, conn.closed()).await {
            return Ok(Reception::Refused(reason.to_string()));
        }
        let answer = transport::request_ca_key(&conn, wanted).await.map(drop);
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok(Reception::Kept(answer))
    })
}
