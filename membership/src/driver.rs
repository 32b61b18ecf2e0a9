//! The tokio driver: one task owns the [`Core`], feeds it datagrams,
//! commands and timer deadlines, and hands what it produces to the
//! transport and to event subscribers. `select!` only classifies what
//! arrived; a plain `match` handles it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, Event, MemberInfo, PublishError};
use crate::identity::{NodeId, NodeIdentity, Status};
use crate::pki::{ClusterCa, ClusterSecret, Fingerprint};
use crate::records::view::View;
use crate::records::{CaRotation, MemberSpec, PolicySpec};
use crate::transport::{Credentials, EnrolError, Inbound, Transport, TransportError};
use rustls::pki_types::CertificateDer;

/// While this node knows no live member, it re-announces to the peers it
/// knows this often (after a restart, a heal, or with `--join` at boot).
const REJOIN_EVERY: Duration = Duration::from_secs(2);
/// How many known peers each re-announce round tries.
const REJOIN_FANOUT: usize = 3;
/// How long `join` waits for the cluster to accept this node.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `join` repeats its announce while waiting for an answer.
const REANNOUNCE_EVERY: Duration = Duration::from_millis(500);

enum Command {
    /// Announce to a member and ask for its member list.
    Announce(NodeIdentity),
    Leave(oneshot::Sender<()>),
    Members(oneshot::Sender<Vec<MemberInfo>>),
    /// Run a closure on the core (record changes and reads).
    Run(CoreTask),
}

/// A closure the driver runs on its core.
type CoreTask = Box<dyn FnOnce(&mut Core, Instant) + Send>;

enum Input {
    Datagram(Inbound),
    Command(Command),
    Timeout,
    Rejoin,
    Stop,
}

/// The view as last published, with the core's generation when it was
/// derived (see [`Core::generation`]).
#[derive(Debug)]
pub struct CurrentView {
    /// The core's generation when the view was derived.
    pub generation: u64,
    /// The view.
    pub view: View,
    /// The join secret since its latest rotation, if it was ever rotated.
    pub join_secret: Option<[u8; 32]>,
}

impl CurrentView {
    fn of(core: &Core) -> Self {
        Self { generation: core.generation(), view: core.view(), join_secret: core.join_secret() }
    }
}

/// Joining through a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The peer could not be reached or is not a member of this cluster.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer was reached but did not take this node in.
    #[error("{0} did not accept this node within {JOIN_TIMEOUT:?}")]
    NotAccepted(SocketAddr),
    /// The membership task has stopped.
    #[error("the membership task has stopped")]
    Stopped,
}

/// A CA rotation failed. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The record could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The new CA could not be installed.
    #[error("{0}")]
    Keyring(String),
    /// The membership task has stopped.
    #[error("the membership task has stopped")]
    Stopped,
}

/// A record change through [`Membership`] failed. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The record could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The membership task has stopped.
    #[error("the membership task has stopped")]
    Stopped,
}

/// A handle on the running membership of this node.
#[derive(Clone)]
pub struct Membership {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    view: watch::Receiver<Arc<CurrentView>>,
    transport: Arc<Transport>,
}

impl Membership {
    /// Starts the driver task for `core`, announcing to `known_peers`
    /// until some member answers.
    pub fn spawn(
        mut core: Core,
        transport: Arc<Transport>,
        inbound: mpsc::Receiver<Inbound>,
        known_peers: Vec<SocketAddr>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (commands_tx, commands) = mpsc::channel(64);
        let (events, _) = broadcast::channel(1024);
        let (view_tx, view) = watch::channel(Arc::new(CurrentView::of(&core)));
        let handle = Self { commands: commands_tx, events: events.clone(), view, transport: Arc::clone(&transport) };
        // Starts the core's own periodic timers (sync, reaping).
        core.handle_timeout(Instant::now());
        let mut known: BTreeSet<SocketAddr> = known_peers.into_iter().collect();
        known.remove(&core.identity().addr);
        let driver =
            Driver { core, transport, inbound, commands, events, view: view_tx, known, handle: handle.clone() };
        (handle, tokio::spawn(driver.run(shutdown)))
    }

    /// Joins the cluster through the member at `addr`. The announce is a
    /// datagram, so it is repeated until the member answers.
    pub async fn join(&self, addr: SocketAddr) -> Result<(), JoinError> {
        let node = self.transport.connect(addr, None).await?;
        let deadline = Instant::now() + JOIN_TIMEOUT;
        while Instant::now() < deadline {
            self.announce(node, addr).await?;
            let round = Instant::now() + REANNOUNCE_EVERY;
            while Instant::now() < round {
                let members = self.members().await?;
                if members.iter().skip(1).any(|m| m.identity.id == node && m.status == Status::Alive) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(JoinError::NotAccepted(addr))
    }

    /// Leaves the cluster gracefully; returns once peers have been told.
    pub async fn leave(&self) -> Result<(), JoinError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Leave(tx)).await.map_err(|_| JoinError::Stopped)?;
        rx.await.map_err(|_| JoinError::Stopped)
    }

    /// Every known member, this node first.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, JoinError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Members(tx)).await.map_err(|_| JoinError::Stopped)?;
        rx.await.map_err(|_| JoinError::Stopped)
    }

    /// Runs `f` on the core, in the driver's task, and returns its result:
    /// record changes and reads go through here, in order with everything
    /// else the core handles.
    pub async fn with_core<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core, Instant) -> R + Send + 'static,
    ) -> Result<R, JoinError> {
        let (tx, rx) = oneshot::channel();
        let run = Box::new(move |core: &mut Core, now: Instant| {
            let _ = tx.send(f(core, now));
        });
        self.commands.send(Command::Run(run)).await.map_err(|_| JoinError::Stopped)?;
        rx.await.map_err(|_| JoinError::Stopped)
    }

    /// The merged view, kept up to date as records and members change.
    pub fn watch_view(&self) -> watch::Receiver<Arc<CurrentView>> {
        self.view.clone()
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Gives this node a fresh certificate (see
    /// [`Transport::renew_certificate`]); returns it.
    pub fn renew_certificate(&self) -> Result<CertificateDer<'static>, EnrolError> {
        self.transport.renew_certificate()
    }

    /// This node's credentials as they should be saved, kept current
    /// through renewals and CA rotations.
    pub fn watch_credentials(&self) -> watch::Receiver<Credentials> {
        self.transport.watch_credentials()
    }

    /// The fingerprint of the CA this node signs with (the one its join
    /// tokens pin).
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.transport.ca_fingerprint()
    }

    /// Rotates the cluster CA to `ca` on every member; certificates from
    /// the CA it replaces count for `grace` more, for the members known now.
    pub async fn rotate_ca(&self, ca: ClusterCa, grace: Duration) -> Result<(), RotateError> {
        let transport = Arc::clone(&self.transport);
        let rotation = CaRotation {
            cert_der: ca.cert_der().to_vec(),
            previous_der: transport.ca_cert().to_vec(),
            cross_der: transport.cross_sign(&ca).map_err(|e| RotateError::Keyring(e.to_string()))?.to_vec(),
            members: Vec::new(),
            rotated_ms: 0,
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        self.with_core(move |core, now| {
            let rotation = core.rotate_ca(now, rotation)?;
            transport.rotate_ca(ca, rotation).map_err(RotateError::Keyring)
        })
        .await
        .map_err(|_| RotateError::Stopped)?
    }

    /// Writes or updates this node's member record (see
    /// [`Core::announce_member`]: no new version if `spec` is what it holds).
    pub async fn announce_member(&self, spec: MemberSpec) -> Result<(), ChangeError> {
        self.with_core(move |core, now| core.announce_member(now, spec)).await.map_err(|_| ChangeError::Stopped)??;
        Ok(())
    }

    /// Sets the cluster's encryption policy (see [`Core::set_policy`]).
    pub async fn set_policy(&self, spec: PolicySpec) -> Result<(), ChangeError> {
        self.with_core(move |core, now| core.set_policy(now, spec)).await.map_err(|_| ChangeError::Stopped)??;
        Ok(())
    }

    /// What this node's connections to members carried so far.
    pub fn traffic(&self) -> crate::traffic::TrafficSnapshot {
        self.transport.traffic()
    }

    /// Closes all connections (peers are not told the node left).
    pub async fn close(&self) {
        self.transport.close().await;
    }

    async fn announce(&self, node: NodeId, addr: SocketAddr) -> Result<(), JoinError> {
        let peer = NodeIdentity { id: node, bump: 0, name: String::new(), addr };
        self.commands.send(Command::Announce(peer)).await.map_err(|_| JoinError::Stopped)
    }
}

struct Driver {
    core: Core,
    transport: Arc<Transport>,
    inbound: mpsc::Receiver<Inbound>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    view: watch::Sender<Arc<CurrentView>>,
    /// Addresses of every member seen, to re-announce to when alone.
    known: BTreeSet<SocketAddr>,
    handle: Membership,
}

impl Driver {
    async fn run(mut self, shutdown: CancellationToken) {
        // What a restart restored: removed members, a rotated secret or CA.
        self.follow_control_records();
        self.flush();
        let mut rejoin = tokio::time::interval(REJOIN_EVERY);
        loop {
            let deadline = self.core.poll_timeout();
            // In this order: the agent's own requests (each task waits for
            // its answer, so they are few), then due timers (probes keep
            // their schedule), then frames from peers. Picked at random, a
            // request waited behind a queue of sync pages (5 ms each): the
            // data plane's, 60 ms behind six.
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => Input::Stop,
                Some(command) = self.commands.recv() => Input::Command(command),
                () = sleep_until(deadline) => Input::Timeout,
                Some(datagram) = self.inbound.recv() => Input::Datagram(datagram),
                _ = rejoin.tick() => Input::Rejoin,
            };
            let now = Instant::now();
            match input {
                Input::Datagram(Inbound { from, payload, protocol }) => {
                    self.core.set_protocol(from, protocol);
                    if let Err(error) = self.core.handle_datagram(now, from, &payload) {
                        tracing::debug!(peer = ?from, %error, "dropped a frame");
                    }
                }
                Input::Command(Command::Announce(peer)) => {
                    if let Err(error) = self.core.announce(now, peer.clone()) {
                        tracing::warn!(%error, "announce failed");
                    }
                    self.core.request_members(peer);
                }
                Input::Command(Command::Members(reply)) => {
                    let _ = reply.send(self.core.members());
                }
                Input::Command(Command::Run(run)) => run(&mut self.core, now),
                Input::Command(Command::Leave(reply)) => {
                    if let Err(error) = self.core.leave(now) {
                        tracing::warn!(%error, "leave");
                    }
                    let deliveries = self.flush();
                    tokio::spawn(async move {
                        for delivery in deliveries {
                            let _ = delivery.await;
                        }
                        let _ = reply.send(());
                    });
                    continue;
                }
                Input::Timeout => self.core.handle_timeout(now),
                Input::Rejoin => self.rejoin(),
                Input::Stop => break,
            }
            self.flush();
        }
    }

    /// Sends what the core produced and publishes its events. Returns the
    /// pending reliable deliveries.
    fn flush(&mut self) -> Vec<JoinHandle<()>> {
        let mut deliveries = Vec::new();
        while let Some(transmit) = self.core.poll_transmit() {
            deliveries.extend(self.transport.send(&transmit.to, transmit.payload, transmit.reliable));
        }
        let mut view_changed = false;
        while let Some(event) = self.core.poll_event() {
            view_changed |= matches!(event, Event::RecordsChanged);
            match &event {
                Event::MemberUp(id) => {
                    self.known.insert(id.addr);
                    tracing::info!(member = ?id, "member up");
                }
                Event::MemberDown(id) => tracing::info!(member = ?id, "member down"),
                Event::MemberLeft(id) => tracing::info!(member = ?id, "member left"),
                Event::Removed(id) => self.transport.deny(*id),
                Event::RecordsChanged => {}
                other => tracing::debug!(event = ?other, "membership"),
            }
            let _ = self.events.send(event);
        }
        if view_changed {
            self.view.send_replace(Arc::new(CurrentView::of(&self.core)));
            self.follow_control_records();
        }
        deliveries
    }

    /// Hands the transport the latest join secret and CA rotation.
    fn follow_control_records(&self) {
        if let Some(secret) = self.core.join_secret() {
            self.transport.set_join_secret(ClusterSecret(secret));
        }
        if let Some(rotation) = self.core.ca_rotation() {
            self.transport.set_ca_rotation(rotation);
        }
    }

    /// Re-announces to a few known peers while no member is alive.
    fn rejoin(&self) {
        if self.core.active_members() > 0 || self.core.has_left() {
            return;
        }
        let peers = rand::seq::IteratorRandom::sample(self.known.iter().copied(), &mut rand::rng(), REJOIN_FANOUT);
        for addr in peers {
            let handle = self.handle.clone();
            tokio::spawn(async move {
                match handle.transport.connect(addr, None).await {
                    Ok(node) => {
                        let _ = handle.announce(node, addr).await;
                    }
                    Err(error) => tracing::debug!(%addr, %error, "rejoin attempt"),
                }
            });
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
