//! The QUIC transport: one endpoint (one UDP port) per agent carries SWIM
//! packets as datagrams, other frames on unidirectional streams, and
//! enrolment on a bidirectional stream. Connections are opened lazily, one
//! per peer, and identified by the node id in the peer's certificate.
//!
//! The transport also follows CA rotations (see [`crate::keyring`]): it
//! trusts what the keyring trusts, fetches a rotated CA's key from peers,
//! re-issues this node's certificate from it, and closes connections whose
//! certificates stopped counting.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::enrol::{CaKeyRequest, CaKeyResponse, EnrolRequest, EnrolResponse, Enroller, MAX_ENROL_MESSAGE};
use crate::identity::{NodeId, NodeIdentity};
use crate::keyring::unix_ms;
use crate::node_key::NodeKey;
use crate::pki::{
    certificate_request, issued_by, node_id_of, ClusterCa, ClusterSecret, Fingerprint, JoinToken, NodeCredentials,
    PkiError, SERVER_NAME,
};
use crate::records::CaRotation;
use crate::tls::{self, TlsError};
use crate::traffic::{Channel, Traffic, TrafficSnapshot};
use crate::wire::{Protocol, PROTOCOL_VERSION};

/// How long a connection attempt or an enrolment may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed attempt, packets for that peer are dropped this long
/// before the next attempt, so a dead peer does not cause a connect storm.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Datagrams kept for a peer while its connection is being set up.
const MAX_QUEUED: usize = 32;
/// Largest frame read from a stream.
const MAX_STREAM_FRAME: usize = 1024 * 1024;
/// Within this time of each other, two connections between the same two
/// members are a simultaneous dial (both ends keep one of them); further
/// apart, the newer one replaces the older. It is also how long a replaced
/// connection stays open for what was already sent on it.
const SIMULTANEOUS_DIAL: Duration = Duration::from_secs(3);
/// How often a member lacking a rotated CA's key asks its peers again.
const FETCH_EVERY: Duration = Duration::from_secs(1);

/// A frame received from an authenticated member.
#[derive(Debug)]
pub struct Inbound {
    /// The node named by the sender's certificate.
    pub from: NodeId,
    /// The frame's bytes.
    pub payload: Vec<u8>,
    /// What the frame's connection negotiated.
    pub protocol: Protocol,
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

/// This node's cluster credentials as they should be saved: the CA it
/// signs with and its own certificate. They change on renewal and when a
/// rotated CA is adopted.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The CA's certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA's key, PEM.
    pub ca_key_pem: String,
    /// This node's certificate, DER.
    pub node_cert: CertificateDer<'static>,
}

/// What this node presents and trusts, derived from its keyring.
struct Presented {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    saved: Credentials,
}

enum Slot {
    /// A connection, and when it was registered.
    Up(Connection, Instant),
    Connecting(Vec<(Vec<u8>, bool)>),
    Failed(Instant),
}

/// The running transport of a member node.
pub struct Transport {
    endpoint: Endpoint,
    /// What this node presents when it connects (replaced on renewal).
    client: Mutex<quinn::ClientConfig>,
    /// This node's identity key, to re-issue its certificate.
    key: NodeKey,
    /// Its credentials as presented; the lock also orders their changes.
    credentials: Mutex<watch::Sender<Credentials>>,
    /// Whether a task is fetching a rotated CA's key.
    fetching: AtomicBool,
    pool: Mutex<HashMap<NodeId, Slot>>,
    /// Members removed from the cluster, whose connections are refused.
    denied: Mutex<HashSet<NodeId>>,
    inbound: mpsc::Sender<Inbound>,
    enroller: Enroller,
    /// What members' connections carried.
    traffic: Traffic,
    shutdown: CancellationToken,
}

impl Transport {
    /// Starts serving members and enrolments on `endpoint` as the node
    /// whose identity key is `key` and certificate `cert` (re-issued if it
    /// is not from the CA `enroller` signs with). Frames from members
    /// arrive on the returned receiver.
    pub fn start(
        endpoint: Endpoint,
        key: &NodeKey,
        cert: CertificateDer<'static>,
        enroller: Enroller,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Inbound>), EnrolError> {
        let presented = present(key, cert, &enroller, false)?;
        endpoint.set_server_config(Some(presented.server));
        let (tx, rx) = mpsc::channel(4096);
        let transport = Arc::new(Self {
            endpoint,
            client: Mutex::new(presented.client),
            key: key.clone(),
            credentials: Mutex::new(watch::Sender::new(presented.saved)),
            fetching: AtomicBool::new(false),
            pool: Mutex::new(HashMap::new()),
            denied: Mutex::new(HashSet::new()),
            inbound: tx,
            enroller,
            traffic: Traffic::default(),
            shutdown,
        });
        tokio::spawn(Arc::clone(&transport).accept_loop());
        Ok((transport, rx))
    }

    /// Replaces the secret enrolling nodes must present (a rotation).
    pub fn set_join_secret(&self, secret: ClusterSecret) {
        self.enroller.set_secret(secret);
    }

    /// Gives this node a fresh certificate from its copy of the cluster
    /// CA, and presents it from now on, to peers that connect and to peers
    /// it connects to. Connections up keep going: nothing is interrupted.
    /// Returns the certificate.
    pub fn renew_certificate(&self) -> Result<CertificateDer<'static>, EnrolError> {
        self.install(true)
    }

    /// This node's credentials as they should be saved, kept current.
    pub fn watch_credentials(&self) -> watch::Receiver<Credentials> {
        self.credentials.lock().unwrap_or_else(PoisonError::into_inner).subscribe()
    }

    /// The fingerprint of the CA this node signs with (the one its join
    /// tokens pin).
    pub fn ca_fingerprint(&self) -> Fingerprint {
        crate::pki::fingerprint(&self.ca_cert())
    }

    /// The certificate of the CA this node signs with.
    pub fn ca_cert(&self) -> CertificateDer<'static> {
        self.enroller.ca_cert()
    }

    /// `newer`'s certificate signed by the CA this node signs with.
    pub fn cross_sign(&self, newer: &ClusterCa) -> Result<CertificateDer<'static>, PkiError> {
        self.enroller.keyring(|k| k.signer().cross_sign(newer))
    }

    /// Presents and trusts what the keyring says now; re-issues this node's
    /// certificate if `reissue`, or if it is not from the CA it signs with.
    fn install(&self, reissue: bool) -> Result<CertificateDer<'static>, EnrolError> {
        let credentials = self.credentials.lock().unwrap_or_else(PoisonError::into_inner);
        let cert = credentials.borrow().node_cert.clone();
        let presented = present(&self.key, cert, &self.enroller, reissue)?;
        self.endpoint.set_server_config(Some(presented.server));
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = presented.client;
        let cert = presented.saved.node_cert.clone();
        credentials.send_if_modified(|saved| {
            let changed =
                saved.node_cert != presented.saved.node_cert || saved.ca_key_pem != presented.saved.ca_key_pem;
            *saved = presented.saved;
            changed
        });
        Ok(cert)
    }

    /// Follows the latest CA rotation record: trusts the new CA, fetches
    /// its key from peers if this node lacks it, and stops trusting the
    /// previous CA when the grace period ends.
    pub fn set_ca_rotation(self: &Arc<Self>, rotation: CaRotation) {
        if !self.enroller.set_rotation(rotation.clone()) {
            return;
        }
        tracing::info!(grace_ends_ms = rotation.grace_ends_ms(), "the cluster CA was rotated");
        self.after_rotation(rotation.grace_ends_ms());
    }

    /// Starts a CA rotation made on this node: `ca` is the new CA, which
    /// `rotation` names.
    pub fn rotate_ca(self: &Arc<Self>, ca: ClusterCa, rotation: CaRotation) -> Result<(), String> {
        let grace_ends_ms = rotation.grace_ends_ms();
        self.enroller.keyring(|k| k.rotate(ca, rotation)).map_err(|e| e.to_string())?;
        self.after_rotation(grace_ends_ms);
        Ok(())
    }

    fn after_rotation(self: &Arc<Self>, grace_ends_ms: u64) {
        if let Err(error) = self.install(false) {
            tracing::warn!(%error, "cannot present a certificate from the rotated CA yet");
        }
        if self.enroller.missing().is_some() && !self.fetching.swap(true, Ordering::SeqCst) {
            tokio::spawn(Arc::clone(self).fetch_ca_key());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let wait = Duration::from_millis(grace_ends_ms.saturating_sub(unix_ms()));
            tokio::select! {
                () = this.shutdown.cancelled() => {}
                () = tokio::time::sleep(wait) => this.end_grace(),
            }
        });
    }

    /// After a rotation's grace period: only the rotated CA counts, and
    /// connections with certificates from another close.
    fn end_grace(&self) {
        if let Err(error) = self.install(false) {
            tracing::warn!(%error, "cannot drop the previous CA");
        }
        if self.enroller.missing().is_some() {
            tracing::warn!(
                "the CA rotation's grace period is over and this node never got the new CA: \
                 members refuse it now; move its data dir away and join again with a new token"
            );
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.retain(|&node, slot| match slot {
            Slot::Up(conn, _) if !peer_cert(conn).is_some_and(|cert| self.enroller.admits(node, &cert)) => {
                conn.close(0u32.into(), b"certificate from a replaced cluster CA");
                false
            }
            _ => true,
        });
    }

    /// Asks connected peers for the rotated CA's key until one gives it.
    async fn fetch_ca_key(self: Arc<Self>) {
        while let Some(wanted) = self.enroller.missing() {
            let peers: Vec<(NodeId, Connection)> = {
                let pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                pool.iter()
                    .filter_map(|(node, slot)| match slot {
                        Slot::Up(conn, _) => Some((*node, conn.clone())),
                        _ => None,
                    })
                    .collect()
            };
            for (node, conn) in peers {
                match request_ca_key(&conn, wanted).await {
                    Ok(key_pem) => match self.enroller.adopt(&key_pem) {
                        Ok(()) => {
                            tracing::info!(from = %node, "adopted the rotated cluster CA");
                            if let Err(error) = self.install(false) {
                                tracing::warn!(%error, "cannot present a certificate from the rotated CA");
                            }
                            break;
                        }
                        Err(error) => tracing::warn!(from = %node, %error, "a peer sent an unusable CA key"),
                    },
                    Err(error) => tracing::debug!(peer = %node, %error, "no CA key from this peer"),
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(FETCH_EVERY) => {}
            }
        }
        self.fetching.store(false, Ordering::SeqCst);
    }

    /// Answers a member's request for the rotated CA's key.
    async fn serve_ca_key(self: Arc<Self>, node: NodeId, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let served = async {
            let bytes = recv.read_to_end(MAX_ENROL_MESSAGE).await?;
            let response = match postcard::from_bytes::<CaKeyRequest>(&bytes) {
                Ok(request) => match self.enroller.key_for(node, request.wanted) {
                    Ok(key_pem) => {
                        tracing::info!(to = %node, "handed the rotated cluster CA's key to a member");
                        CaKeyResponse::Key(key_pem)
                    }
                    Err(why) => CaKeyResponse::Refused(why.to_string()),
                },
                Err(error) => CaKeyResponse::Refused(format!("malformed request: {error}")),
            };
            send.write_all(&postcard::to_allocvec(&response)?).await?;
            send.finish()?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, served).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(peer = %node, %error, "CA key request failed"),
            Err(_) => tracing::debug!(peer = %node, "CA key request timed out"),
        }
    }

    /// Refuses member `node` from now on: its connection is closed, and
    /// any new one is closed at once (it was removed from the cluster).
    pub fn deny(&self, node: NodeId) {
        self.denied.lock().unwrap_or_else(PoisonError::into_inner).insert(node);
        if let Some(Slot::Up(conn, _)) = self.pool.lock().unwrap_or_else(PoisonError::into_inner).remove(&node) {
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
            Some(Slot::Up(conn, _)) if conn.close_reason().is_none() => {
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
        self.register(node, conn, true);
        Ok(node)
    }

    /// What members' connections carried so far.
    pub fn traffic(&self) -> TrafficSnapshot {
        self.traffic.snapshot()
    }

    /// Closes every connection, telling peers this endpoint is going away.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"agent stopping");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    fn send_on(&self, conn: Connection, payload: Vec<u8>, reliable: bool) -> Option<JoinHandle<()>> {
        if !reliable {
            let len = payload.len();
            match conn.send_datagram(payload.into()) {
                Ok(()) => self.traffic.sent(Channel::Datagram, len),
                Err(error) => tracing::debug!(%error, "datagram not sent"),
            }
            return None;
        }
        self.traffic.sent(Channel::Stream, payload.len());
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

    /// Puts a live connection (`dialled_here` or accepted) in the pool,
    /// flushes what was queued for it, and starts reading from it. Of two
    /// connections with one member, the pool keeps one (see below) and the
    /// other is closed shortly.
    fn register(self: &Arc<Self>, node: NodeId, conn: Connection, dialled_here: bool) {
        if self.is_denied(node) {
            tracing::debug!(peer = ?node, "refused a removed member's connection");
            conn.close(0u32.into(), b"removed from the cluster");
            self.pool.lock().unwrap_or_else(PoisonError::into_inner).remove(&node);
            return;
        }
        if !peer_cert(&conn).is_some_and(|cert| self.enroller.admits(node, &cert)) {
            tracing::info!(peer = %node, "refused a certificate from a replaced cluster CA");
            conn.close(0u32.into(), b"certificate from a replaced cluster CA");
            self.pool.lock().unwrap_or_else(PoisonError::into_inner).remove(&node);
            return;
        }
        // The connection that is not kept, closed shortly (either way the
        // new one is read until it closes).
        let spare = {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            match pool.get(&node) {
                // Two members dialled each other at once: both keep the
                // connection the one with the smaller id dialled, so that
                // a probe and its answer share one connection and each
                // carries the acknowledgement of the other. (With a
                // connection each way, every SWIM datagram drew an ACK
                // packet of its own, and both stayed up on keep-alives.)
                Some(Slot::Up(existing, since))
                    if existing.close_reason().is_none()
                        && since.elapsed() < SIMULTANEOUS_DIAL
                        && dialled_here != (self.key.id() < node) =>
                {
                    Some(conn.clone())
                }
                _ => match pool.insert(node, Slot::Up(conn.clone(), Instant::now())) {
                    Some(Slot::Connecting(queue)) => {
                        for (payload, reliable) in queue {
                            self.send_on(conn.clone(), payload, reliable);
                        }
                        None
                    }
                    // A newer connection replaces an older one (a restarted
                    // peer's, or the other of a simultaneous pair).
                    Some(Slot::Up(older, _)) if older.stable_id() != conn.stable_id() => Some(older),
                    _ => None,
                },
            }
        };
        if let Some(spare) = spare {
            // Kept open a little for what was already sent on it.
            tokio::spawn(async move {
                tokio::time::sleep(SIMULTANEOUS_DIAL).await;
                spare.close(0u32.into(), b"a newer or preferred connection replaced this one");
            });
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
                    Some(node) => this.register(node, conn, false),
                    None => this.serve_enrolment(conn).await,
                }
            });
        }
    }

    async fn read_loop(self: Arc<Self>, node: NodeId, conn: Connection) {
        self.traffic.opened(&conn);
        let protocol = negotiated(&conn);
        loop {
            let (channel, payload) = tokio::select! {
                () = self.shutdown.cancelled() => break,
                datagram = conn.read_datagram() => match datagram {
                    Ok(bytes) => (Channel::Datagram, bytes.to_vec()),
                    Err(_) => break,
                },
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        tokio::spawn(Arc::clone(&self).serve_ca_key(node, send, recv));
                        continue;
                    }
                    Err(_) => break,
                },
                stream = conn.accept_uni() => match stream {
                    Ok(mut stream) => match stream.read_to_end(MAX_STREAM_FRAME).await {
                        Ok(bytes) => (Channel::Stream, bytes),
                        Err(error) => {
                            tracing::debug!(peer = ?node, %error, "bad stream frame");
                            continue;
                        }
                    },
                    Err(_) => break,
                },
            };
            self.traffic.received(channel, payload.len());
            if self.inbound.send(Inbound { from: node, payload, protocol }).await.is_err() {
                break;
            }
        }
        self.traffic.closed(&conn);
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(pool.get(&node), Some(Slot::Up(c, _)) if c.stable_id() == conn.stable_id()) {
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

/// What a connection negotiated: protocol 2 if its ALPN name is `mesh/2`,
/// else protocol 1 (`mesh/1`, or none).
fn negotiated(conn: &Connection) -> Protocol {
    let alpn = conn
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if alpn.as_deref() == Some(tls::ALPN_V2) {
        Protocol::V2
    } else {
        Protocol::V1
    }
}

/// The certificate a connection's peer presented.
fn peer_cert(conn: &Connection) -> Option<CertificateDer<'static>> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

/// The node named by the certificate a connection's peer presented.
fn peer_node(conn: &Connection) -> Option<NodeId> {
    node_id_of(&peer_cert(conn)?).ok()
}

/// What the node whose key is `key` presents and trusts, from its keyring:
/// `cert`, or a new certificate if `reissue` or if `cert` is not from the
/// CA it signs with.
fn present(
    key: &NodeKey,
    cert: CertificateDer<'static>,
    enroller: &Enroller,
    reissue: bool,
) -> Result<Presented, EnrolError> {
    let (ca_cert, (ca_cert_pem, ca_key_pem), roots, cross) = enroller.keyring(|k| {
        let signer = k.signer();
        let now_ms = unix_ms();
        (signer.cert_der().clone(), (signer.cert_pem(), signer.key_pem()), k.roots(now_ms), k.cross(now_ms))
    });
    let cert = if reissue || !issued_by(&cert, &ca_cert) { enroller.issue(key)? } else { cert };
    let creds = NodeCredentials::new(cert.clone(), key, ca_cert).with_cross(cross);
    let tls = |e: crate::tls::TlsError| EnrolError::Transport(TransportError::Tls(e));
    Ok(Presented {
        server: tls::server_config(&creds, &roots).map_err(tls)?,
        client: tls::member_client_config(&creds, &roots).map_err(tls)?,
        saved: Credentials { ca_cert_pem, ca_key_pem, node_cert: cert },
    })
}

/// Asks the member at the other end of `conn` for the key of the CA whose
/// fingerprint is `wanted`; the error is the member's refusal or what
/// went wrong.
pub async fn request_ca_key(conn: &Connection, wanted: Fingerprint) -> Result<String, String> {
    let asked = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let request = postcard::to_allocvec(&CaKeyRequest { wanted }).map_err(|e| e.to_string())?;
        send.write_all(&request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = recv.read_to_end(MAX_ENROL_MESSAGE).await.map_err(|e| e.to_string())?;
        match postcard::from_bytes::<CaKeyResponse>(&answer).map_err(|e| e.to_string())? {
            CaKeyResponse::Key(key_pem) => Ok(key_pem),
            CaKeyResponse::Refused(why) => Err(why),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, asked).await.map_err(|_| "no answer in time".to_owned())?
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
