//! The QUIC transport: one endpoint (one UDP port) per agent carries SWIM
//! packets as datagrams, other frames on unidirectional streams, and
//! enrolment on a bidirectional stream. Connections are opened lazily, one
//! per peer, and identified by the node id in the peer's certificate.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::enrol::{EnrolRequest, EnrolResponse, Enroller, MAX_ENROL_MESSAGE};
use crate::identity::{NodeId, NodeIdentity};
use crate::node_key::NodeKey;
use crate::pki::{
    certificate_request, node_id_of, ClusterCa, ClusterSecret, JoinToken, NodeCredentials, PkiError, SERVER_NAME,
};
use crate::tls::{self, TlsError};
use crate::wire::PROTOCOL_VERSION;

/// How long a connection attempt or an enrolment may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed attempt, packets for that peer are dropped this long
/// before the next attempt, so a dead peer does not cause a connect storm.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Datagrams kept for a peer while its connection is being set up.
const MAX_QUEUED: usize = 32;
/// Largest frame read from a stream.
const MAX_STREAM_FRAME: usize = 1024 * 1024;

/// A frame received from an authenticated member.
#[derive(Debug)]
pub struct Inbound {
    /// The node named by the sender's certificate.
    pub from: NodeId,
    /// The frame's bytes.
    pub payload: Vec<u8>,
}

/// A transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No connection could be made to the address.
    #[error("could not reach a mesh agent at {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The peer answered but presented no node certificate.
    #[error("the agent at {0} presented no mesh node certificate")]
    NotANode(SocketAddr),
}

/// Enrolment through a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The peer could not be reached or its certificate did not match the token.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer refused to enrol this node.
    #[error("{addr} refused to enrol this node: {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// The conversation broke off or was not understood.
    #[error("enrolment through {addr} failed: {reason}")]
    Protocol {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Keys or certificates could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// What enrolment gives a new node.
pub struct Enrolled {
    /// Its certificate and key.
    pub creds: NodeCredentials,
    /// The cluster CA, so it can enrol others.
    pub ca: ClusterCa,
}

enum Slot {
    Up(Connection),
    Connecting(Vec<(Vec<u8>, bool)>),
    Failed(Instant),
}

/// The running transport of a member node.
pub struct Transport {
    endpoint: Endpoint,
    /// What this node presents when it connects (replaced on renewal).
    client: Mutex<quinn::ClientConfig>,
    pool: Mutex<HashMap<NodeId, Slot>>,
    /// Members removed from the cluster, whose connections are refused.
    denied: Mutex<HashSet<NodeId>>,
    inbound: mpsc::Sender<Inbound>,
    enroller: Enroller,
    shutdown: CancellationToken,
}

impl Transport {
    /// Starts serving members and enrolments on `endpoint` with this node's
    /// credentials. Frames from members arrive on the returned receiver.
    pub fn start(
        endpoint: Endpoint,
        creds: &NodeCredentials,
        enroller: Enroller,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Inbound>), TransportError> {
        endpoint.set_server_config(Some(tls::server_config(creds)?));
        let (tx, rx) = mpsc::channel(4096);
        let transport = Arc::new(Self {
            endpoint,
            client: Mutex::new(tls::member_client_config(creds)?),
            pool: Mutex::new(HashMap::new()),
            denied: Mutex::new(HashSet::new()),
            inbound: tx,
            enroller,
            shutdown,
        });
        tokio::spawn(Arc::clone(&transport).accept_loop());
        Ok((transport, rx))
    }

    /// Replaces the secret enrolling nodes must present (a rotation).
    pub fn set_join_secret(&self, secret: ClusterSecret) {
        self.enroller.set_secret(secret);
    }

    /// Gives this node (whose identity key is `key`) a fresh certificate
    /// from its copy of the cluster CA, and presents it from now on, to
    /// peers that connect and to peers it connects to. Connections up keep
    /// going: nothing is interrupted. Returns the certificate, to be saved.
    pub fn renew_certificate(&self, key: &NodeKey) -> Result<CertificateDer<'static>, EnrolError> {
        let cert = self.enroller.issue(key)?;
        let creds = NodeCredentials::new(cert.clone(), key, self.enroller.ca_cert().clone());
        self.endpoint.set_server_config(Some(tls::server_config(&creds).map_err(TransportError::from)?));
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) =
            tls::member_client_config(&creds).map_err(TransportError::from)?;
        Ok(cert)
    }

    /// Refuses member `node` from now on: its connection is closed, and
    /// any new one is closed at once (it was removed from the cluster).
    pub fn deny(&self, node: NodeId) {
        self.denied.lock().unwrap_or_else(PoisonError::into_inner).insert(node);
        if let Some(Slot::Up(conn)) = self.pool.lock().unwrap_or_else(PoisonError::into_inner).remove(&node) {
            conn.close(0u32.into(), b"removed from the cluster");
        }
    }

    fn is_denied(&self, node: NodeId) -> bool {
        self.denied.lock().unwrap_or_else(PoisonError::into_inner).contains(&node)
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Sends `payload` to `to`, connecting first if need be. Datagrams are
    /// best effort; a `reliable` frame goes on a stream, and the returned
    /// task finishes when the peer has it (or it failed).
    pub fn send(self: &Arc<Self>, to: &NodeIdentity, payload: Vec<u8>, reliable: bool) -> Option<JoinHandle<()>> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        match pool.get_mut(&to.id) {
            Some(Slot::Up(conn)) if conn.close_reason().is_none() => {
                return self.send_on(conn.clone(), payload, reliable);
            }
            Some(Slot::Connecting(queue)) => {
                if queue.len() < MAX_QUEUED {
                    queue.push((payload, reliable));
                }
                return None;
            }
            Some(Slot::Failed(at)) if at.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        pool.insert(to.id, Slot::Connecting(vec![(payload, reliable)]));
        let (this, to) = (Arc::clone(self), to.clone());
        tokio::spawn(async move {
            if let Err(error) = this.connect(to.addr, Some(to.id)).await {
                tracing::debug!(peer = ?to, %error, "connect failed");
                let mut pool = this.pool.lock().unwrap_or_else(PoisonError::into_inner);
                if matches!(pool.get(&to.id), Some(Slot::Connecting(_))) {
                    pool.insert(to.id, Slot::Failed(Instant::now()));
                }
            }
        });
        None
    }

    /// Connects to the member at `addr` and returns its node id (from its
    /// certificate), checking it is `expected` when given.
    pub async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<NodeId, TransportError> {
        let client = self.client.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let conn = dial(&self.endpoint, client, addr).await?;
        let node = peer_node(&conn).ok_or(TransportError::NotANode(addr))?;
        if expected.is_some_and(|expected| expected != node) {
            conn.close(0u32.into(), b"unexpected node");
            return Err(TransportError::Unreachable {
                addr,
                reason: format!("found node {node} instead of {expected:?}"),
            });
        }
        self.register(node, conn);
        Ok(node)
    }

    /// Closes every connection, telling peers this endpoint is going away.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"agent stopping");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    fn send_on(&self, conn: Connection, payload: Vec<u8>, reliable: bool) -> Option<JoinHandle<()>> {
        if !reliable {
            if let Err(error) = conn.send_datagram(payload.into()) {
                tracing::debug!(%error, "datagram not sent");
            }
            return None;
        }
        Some(tokio::spawn(async move {
            let sent = async {
                let mut stream = conn.open_uni().await?;
                stream.write_all(&payload).await?;
                stream.finish()?;
                stream.stopped().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "stream frame not delivered"),
                Err(_) => tracing::debug!("stream frame timed out"),
            }
        }))
    }

    /// Puts a live connection in the pool, flushes what was queued for it,
    /// and starts reading from it.
    fn register(self: &Arc<Self>, node: NodeId, conn: Connection) {
        if self.is_denied(node) {
            tracing::debug!(peer = ?node, "refused a removed member's connection");
            conn.close(0u32.into(), b"removed from the cluster");
            self.pool.lock().unwrap_or_else(PoisonError::into_inner).remove(&node);
            return;
        }
        let previous = self.pool.lock().unwrap_or_else(PoisonError::into_inner).insert(node, Slot::Up(conn.clone()));
        if let Some(Slot::Connecting(queue)) = previous {
            for (payload, reliable) in queue {
                self.send_on(conn.clone(), payload, reliable);
            }
        }
        tokio::spawn(Arc::clone(self).read_loop(node, conn));
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                () = self.shutdown.cancelled() => return,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => return,
                },
            };
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(error) => return tracing::debug!(%error, "inbound handshake failed"),
                };
                match peer_node(&conn) {
                    Some(node) => this.register(node, conn),
                    None => this.serve_enrolment(conn).await,
                }
            });
        }
    }

    async fn read_loop(self: Arc<Self>, node: NodeId, conn: Connection) {
        loop {
            let payload = tokio::select! {
                () = self.shutdown.cancelled() => break,
                datagram = conn.read_datagram() => match datagram {
                    Ok(bytes) => bytes.to_vec(),
                    Err(_) => break,
                },
                stream = conn.accept_uni() => match stream {
                    Ok(mut stream) => match stream.read_to_end(MAX_STREAM_FRAME).await {
                        Ok(bytes) => bytes,
                        Err(error) => {
                            tracing::debug!(peer = ?node, %error, "bad stream frame");
                            continue;
                        }
                    },
                    Err(_) => break,
                },
            };
            if self.inbound.send(Inbound { from: node, payload }).await.is_err() {
                break;
            }
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(pool.get(&node), Some(Slot::Up(c)) if c.stable_id() == conn.stable_id()) {
            pool.remove(&node);
        }
    }

    /// Answers one enrolment request from a connection without a certificate.
    async fn serve_enrolment(&self, conn: Connection) {
        let remote = conn.remote_address();
        let served = async {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let bytes = recv.read_to_end(MAX_ENROL_MESSAGE).await?;
            let response = match postcard::from_bytes::<EnrolRequest>(&bytes) {
                Ok(request) => self.enroller.admit(&request),
                Err(error) => EnrolResponse::Refused(format!("malformed enrolment request: {error}")),
            };
            match &response {
                EnrolResponse::Admitted { .. } => tracing::info!(%remote, "enrolled a new node"),
                EnrolResponse::Refused(reason) => tracing::warn!(%remote, %reason, "refused enrolment"),
            }
            send.write_all(&postcard::to_allocvec(&response)?).await?;
            send.finish()?;
            let _ = send.stopped().await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, served).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%remote, %error, "enrolment conversation failed"),
            Err(_) => tracing::debug!(%remote, "enrolment timed out"),
        }
        conn.close(0u32.into(), b"enrolment done");
    }
}

/// Connects with a deadline, turning every failure into [`TransportError::Unreachable`].
async fn dial(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<Connection, TransportError> {
    let unreachable = |reason: String| TransportError::Unreachable { addr, reason };
    let connecting = endpoint.connect_with(config, addr, SERVER_NAME).map_err(|e| unreachable(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {}s (is a mesh agent listening there?)",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The node named by the certificate a connection's peer presented.
fn peer_node(conn: &Connection) -> Option<NodeId> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of(certs.first()?).ok()
}

/// Enrols this node (whose identity key is `key`) into the cluster `token`
/// is for, through the member at `peer`: verifies the member against the
/// token's CA fingerprint, proves the token's secret, and returns the
/// certificate the member issued.
pub async fn enrol(
    endpoint: &Endpoint,
    peer: SocketAddr,
    token: &JoinToken,
    key: &NodeKey,
) -> Result<Enrolled, EnrolError> {
    let conn =
        dial(endpoint, tls::enrol_client_config(token.ca_fingerprint).map_err(TransportError::from)?, peer).await?;
    let node = key.id();
    let csr_der = certificate_request(key)?;
    let protocol = |reason: String| EnrolError::Protocol { addr: peer, reason };
    let conversation = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| protocol(e.to_string()))?;
        let message = EnrolRequest { version: PROTOCOL_VERSION, secret: token.secret.0, node, csr_der };
        let bytes = postcard::to_allocvec(&message).map_err(|e| protocol(e.to_string()))?;
        send.write_all(&bytes).await.map_err(|e| protocol(e.to_string()))?;
        send.finish().map_err(|e| protocol(e.to_string()))?;
        let answer = recv.read_to_end(MAX_ENROL_MESSAGE).await.map_err(|e| protocol(e.to_string()))?;
        postcard::from_bytes::<EnrolResponse>(&answer).map_err(|e| protocol(format!("unreadable answer: {e}")))
    };
    let response = tokio::time::timeout(CONNECT_TIMEOUT, conversation)
        .await
        .map_err(|_| protocol("no answer in time".into()))??;
    conn.close(0u32.into(), b"enrolled");
    match response {
        EnrolResponse::Refused(reason) => Err(EnrolError::Refused { addr: peer, reason }),
        EnrolResponse::Admitted { cert_der, ca_cert_der, ca_key_pem } => {
            let ca_cert_pem = crate::pki::to_pem("CERTIFICATE", &ca_cert_der);
            let ca = ClusterCa::from_pem(&ca_cert_pem, &ca_key_pem)?;
            if ca.fingerprint() != token.ca_fingerprint || node_id_of(&cert_der)? != node {
                return Err(protocol("the member answered with credentials for another cluster or node".into()));
            }
            let creds = NodeCredentials::new(cert_der.into(), key, ca_cert_der.into());
            Ok(Enrolled { creds, ca })
        }
    }
}
