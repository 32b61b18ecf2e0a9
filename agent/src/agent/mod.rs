//! The agent's operations, whatever asks for them (the control API, the
//! `--join` flag at boot, a signal): init, join, leave, and reading the
//! membership here; networks and sandboxes in [`networks`] and
//! [`sandboxes`]. It owns this node's cluster session, if any.

mod bodies;
mod changes;
mod containers;
mod events;
mod networks;
mod sandboxes;

pub(crate) use networks::check_network_create;

pub(crate) use containers::{mesh_name, ContainerEndpoint};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use mesh_membership::enrol::Enroller;
use mesh_membership::pki::{certificate_request, ClusterCa, ClusterSecret, JoinToken, NodeCredentials};
use mesh_membership::records::view::{EndpointState, View};
use mesh_membership::records::{MemberSpec, PolicySpec};
use mesh_membership::transport::{enrol, Transport};
use mesh_membership::{Core, Event, Membership, NodeId, NodeIdentity, NodeKey, RotateError, Status};
use tokio_util::sync::CancellationToken;

use crate::api::{EncryptionBody, LastSyncBody, MemberBody, StatusBody};
use crate::bootstrap::ClusterSeed;
use crate::clock::unix_ms;
use crate::config::DEFAULT_PORT;
use crate::datadir::{ClusterFiles, DataDir, State};
use crate::dataplane::Dataplane;
use crate::names::SandboxDns;

/// How many peer addresses the data dir remembers for rejoining.
const MAX_REMEMBERED_PEERS: usize = 256;
/// Shortest and longest grace period of a CA rotation.
const MIN_CA_GRACE: Duration = Duration::from_secs(1);
const MAX_CA_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// Why an operation failed, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    /// The request itself is wrong; nothing changed.
    #[error("{0}")]
    BadRequest(String),
    /// The request does not fit this node's state; nothing changed.
    #[error("{0}")]
    Conflict(String),
    /// A peer could not be reached or refused; nothing changed here.
    #[error("{0}")]
    Peer(String),
    /// The thing asked for does not exist; nothing changed.
    #[error("{0}")]
    NotFound(String),
    /// Something failed on this host (disk, keys).
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

const NOT_IN_CLUSTER: &str =
    "this agent is not in a cluster yet: run `mesh init` to start one, or `mesh join PEER --token TOKEN` to join one";

/// This node's session in its cluster.
struct Session {
    membership: Membership,
    token: JoinToken,
}

/// Who this node is to its peers.
pub(crate) struct NodeSettings {
    /// Its name.
    pub(crate) name: String,
    /// Where peers reach it (also its VTEP address).
    pub(crate) advertise: SocketAddr,
    /// How long the certificates it issues are valid.
    pub(crate) cert_lifetime: Duration,
    /// Whether a cluster it founds encrypts every network.
    pub(crate) encrypt_networks: bool,
}

/// What the agent is and holds.
pub(crate) struct Agent {
    name: String,
    /// Whether a cluster this node founds encrypts every network (config).
    encrypt_networks: bool,
    /// This node's identity key; its id is `key.id()`.
    key: NodeKey,
    /// How long the certificates this node issues are valid.
    cert_lifetime: Duration,
    advertise: SocketAddr,
    datadir: DataDir,
    state: Arc<Mutex<State>>,
    endpoint: quinn::Endpoint,
    session: RwLock<Option<Session>>,
    /// Serialises init and join, which may take seconds (enrolment).
    joining: tokio::sync::Mutex<()>,
    /// This host's sandboxes and kernel state.
    dataplane: Arc<Dataplane>,
    /// The resolver in each sandbox.
    dns: Arc<SandboxDns>,
    /// This host's endpoints (name, network) that are Docker's containers
    /// (`mesh sandbox rm` leaves them to Docker).
    containers: Mutex<std::collections::BTreeSet<(String, String)>>,
    shutdown: CancellationToken,
}

impl Agent {
    /// An agent that resumes its cluster session if its data dir has one.
    pub(crate) fn start(
        node: NodeSettings,
        datadir: DataDir,
        endpoint: quinn::Endpoint,
        dataplane: Arc<Dataplane>,
        dns: Arc<SandboxDns>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let NodeSettings { name, advertise, cert_lifetime, encrypt_networks } = node;
        for (name, attachment) in dataplane.attachments() {
            if let Err(error) = dns.serve(&name, &attachment) {
                tracing::warn!(%error, "no DNS in a sandbox");
            }
        }
        let agent = Arc::new(Self {
            name,
            encrypt_networks,
            key: datadir.node_key()?,
            cert_lifetime,
            advertise,
            state: Arc::new(Mutex::new(datadir.state()?)),
            datadir,
            endpoint,
            session: RwLock::new(None),
            joining: tokio::sync::Mutex::new(()),
            dataplane,
            dns,
            containers: Mutex::default(),
            shutdown,
        });
        if let Some(files) = agent.datadir.cluster(&agent.key)? {
            agent.begin_session(files)?;
            tracing::info!("resumed cluster membership from the data dir");
        }
        Ok(agent)
    }

    /// Makes this node a new, one-member cluster and returns its join
    /// token; with `encrypt_networks` (or the config's), the cluster
    /// encrypts every network.
    pub(crate) async fn init(&self, encrypt_networks: bool) -> Result<JoinToken, AgentError> {
        let token = self.found(ClusterSeed::generate()?, encrypt_networks).await?;
        tracing::info!(encrypt_networks = encrypt_networks || self.encrypt_networks, "initialised a new cluster");
        Ok(token)
    }

    /// At start with a cluster bundle: makes this node a member of the
    /// bundle's cluster by itself, unless it is in a cluster already or
    /// left one (`mesh join` brings it back).
    pub(crate) async fn bootstrap(&self, seed: ClusterSeed) -> Result<(), AgentError> {
        if self.membership().is_some() {
            tracing::debug!("already in a cluster: the bootstrap bundle is not needed");
            return Ok(());
        }
        if self.state.lock().unwrap_or_else(PoisonError::into_inner).left {
            tracing::info!("this node left its cluster: not bootstrapping (`mesh join` to come back)");
            return Ok(());
        }
        self.found(seed, false).await?;
        tracing::info!("joined the bundle's cluster by itself");
        Ok(())
    }

    /// Makes this node a member of `seed`'s cluster, issuing its
    /// certificate from the CA; returns the join token.
    async fn found(&self, seed: ClusterSeed, encrypt_networks: bool) -> Result<JoinToken, AgentError> {
        let _guard = self.joining.lock().await;
        if self.membership().is_some() {
            return Err(AgentError::Conflict(
                "this agent is already in a cluster; `mesh token` prints its join token".into(),
            ));
        }
        let ClusterSeed { ca, secret } = seed;
        let request = certificate_request(&self.key).map_err(anyhow::Error::from)?;
        let cert = ca.issue(self.key.id(), &request, self.cert_lifetime).map_err(anyhow::Error::from)?;
        let creds = NodeCredentials::new(cert, &self.key, ca.cert_der().clone());
        let files = ClusterFiles { creds, ca, secret };
        self.datadir.save_cluster(&files)?;
        let token = files.token();
        let membership = self.begin_session(files)?;
        if encrypt_networks || self.encrypt_networks {
            membership
                .set_policy(PolicySpec { encrypt_networks: true })
                .await
                .map_err(|e| AgentError::Internal(anyhow::anyhow!("cannot set the cluster's policy: {e}")))?;
        }
        Ok(token)
    }

    /// Joins the cluster `token` is for through `peer` (`HOST[:PORT]`),
    /// enrolling first if this node has no certificate yet.
    pub(crate) async fn join(&self, peer: &str, token: &str) -> Result<(), AgentError> {
        let token: JoinToken = token.parse().map_err(|e| AgentError::BadRequest(format!("bad join token: {e}")))?;
        let addr = resolve(peer).await?;
        let _guard = self.joining.lock().await;
        let membership = match self.token().ok() {
            Some(ours) if ours.ca_fingerprint != token.ca_fingerprint => {
                return Err(AgentError::Conflict(
                    "this agent is already in another cluster (its token is for a different CA); a node belongs to one cluster".into(),
                ))
            }
            Some(ours) if !ours.secret.matches(&token.secret) => {
                return Err(AgentError::BadRequest("the join token is not valid for this cluster (wrong secret)".into()))
            }
            Some(_) => self.require_membership()?,
            None => {
                let enrolled = enrol(&self.endpoint, addr, &token, &self.key)
                    .await
                    .map_err(|e| AgentError::Peer(e.to_string()))?;
                let files = ClusterFiles {
                    creds: enrolled.creds,
                    ca: enrolled.ca,
                    secret: token.secret.clone(),
                };
                self.datadir.save_cluster(&files)?;
                tracing::info!(%addr, "enrolled into the cluster");
                self.begin_session(files)?
            }
        };
        membership.join(addr).await.map_err(|e| AgentError::Peer(e.to_string()))?;
        self.update_state(|state| state.left = false)?;
        tracing::info!(%addr, "joined the cluster");
        Ok(())
    }

    /// `--join` at boot, when peers may be down: keeps trying [`Agent::join`]
    /// through each of `peers`, with backoff, until each has answered once
    /// (or is a member already). Reaching every one, not just the first,
    /// is what makes hosts that boot in any order with a bundle one
    /// cluster rather than islands. A node that left its cluster does not
    /// join back by itself.
    pub(crate) async fn join_with_retry(self: Arc<Self>, peers: Vec<String>, token: String) {
        if self.state.lock().unwrap_or_else(PoisonError::into_inner).left {
            return tracing::info!("this node left its cluster: not joining at start (`mesh join` to come back)");
        }
        let mut pending = peers;
        let mut delay = Duration::from_millis(500);
        let mut joined = false;
        while !pending.is_empty() {
            let members: Vec<SocketAddr> = match self.membership() {
                Some(membership) => membership.members().await.unwrap_or_default(),
                None => Vec::new(),
            }
            .iter()
            .filter(|m| m.status == Status::Alive)
            .map(|m| m.identity.addr)
            .collect();
            let mut still = Vec::new();
            for peer in pending {
                if resolve(&peer).await.is_ok_and(|addr| addr == self.advertise || members.contains(&addr)) {
                    continue;
                }
                match self.join(&peer, &token).await {
                    Ok(()) => joined = true,
                    Err(error @ (AgentError::BadRequest(_) | AgentError::Conflict(_))) => {
                        return tracing::error!(%peer, %error, "cannot join");
                    }
                    Err(error) if joined => {
                        tracing::debug!(%peer, %error, "peer not reached yet; will retry");
                        still.push(peer);
                    }
                    Err(error) => {
                        tracing::warn!(%peer, %error, "join attempt failed; will retry");
                        still.push(peer);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        tracing::info!("reached every --join peer");
    }

    /// Leaves the cluster gracefully; the node will not rejoin by itself.
    pub(crate) async fn leave(&self) -> Result<(), AgentError> {
        let membership = self.require_membership()?;
        membership.leave().await.map_err(|e| AgentError::Internal(e.into()))?;
        self.update_state(|state| state.left = true)?;
        tracing::info!("left the cluster");
        Ok(())
    }

    /// The join token of this node's cluster, with the secret of the latest
    /// rotation.
    pub(crate) fn token(&self) -> Result<JoinToken, AgentError> {
        let token = self.session_token().ok_or_else(|| AgentError::Conflict(NOT_IN_CLUSTER.into()))?;
        let membership = self.require_membership()?;
        let rotated = membership.watch_view().borrow().join_secret;
        Ok(JoinToken {
            ca_fingerprint: membership.ca_fingerprint(),
            secret: rotated.map_or(token.secret, ClusterSecret),
        })
    }

    /// Rotates the join secret on every member; returns the new token.
    pub(crate) async fn rotate_token(&self) -> Result<JoinToken, AgentError> {
        let membership = self.require_membership()?;
        let secret = ClusterSecret::random();
        let new = secret.0;
        membership
            .with_core(move |core, now| core.rotate_join_secret(now, new))
            .await
            .map_err(|e| AgentError::Internal(e.into()))?
            .map_err(networks::publish_error)?;
        tracing::info!("rotated the join secret: earlier tokens admit no one");
        Ok(JoinToken { secret, ..self.token()? })
    }

    /// Rotates the cluster CA, then the join secret, on every member;
    /// certificates from the old CA count for `grace` more (for members
    /// known now). Returns the new token.
    pub(crate) async fn rotate_ca(&self, grace: Duration) -> Result<JoinToken, AgentError> {
        if !(MIN_CA_GRACE..=MAX_CA_GRACE).contains(&grace) {
            return Err(AgentError::BadRequest(format!(
                "the grace period must be {} to {} seconds",
                MIN_CA_GRACE.as_secs(),
                MAX_CA_GRACE.as_secs()
            )));
        }
        let membership = self.require_membership()?;
        let ca = ClusterCa::generate().map_err(anyhow::Error::from)?;
        membership.rotate_ca(ca, grace).await.map_err(|error| match error {
            RotateError::Publish(error) => networks::publish_error(error),
            other => AgentError::Internal(other.into()),
        })?;
        tracing::info!(grace_secs = grace.as_secs(), "rotated the cluster CA");
        self.rotate_token().await
    }

    /// Removes a member (by name or node id) from the cluster for good.
    pub(crate) async fn remove_member(&self, node: &str) -> Result<(), AgentError> {
        let membership = self.require_membership()?;
        let members = membership.members().await.map_err(|e| AgentError::Internal(e.into()))?;
        let matching: Vec<NodeId> = members
            .iter()
            .filter(|m| m.identity.name == node || m.identity.id.to_string() == node)
            .map(|m| m.identity.id)
            .collect();
        let id = match matching.as_slice() {
            [] => return Err(AgentError::NotFound(format!("no member named {node} (`mesh members` lists them)"))),
            [id] if *id == self.key.id() => {
                return Err(AgentError::Conflict("this is the node itself: use `mesh leave`".into()))
            }
            [id] => *id,
            _ => {
                let ids: Vec<String> = matching.iter().map(ToString::to_string).collect();
                return Err(AgentError::Conflict(format!(
                    "several members are named {node}; give a node id: {}",
                    ids.join(", ")
                )));
            }
        };
        membership
            .with_core(move |core, now| core.remove_member(now, id))
            .await
            .map_err(|e| AgentError::Internal(e.into()))?
            .map_err(networks::publish_error)?;
        tracing::info!(%node, "removed a member from the cluster");
        Ok(())
    }

    /// This node's id.
    pub(crate) fn node(&self) -> NodeId {
        self.key.id()
    }

    /// Every known member, this node first.
    pub(crate) async fn members(&self) -> Result<Vec<MemberBody>, AgentError> {
        let membership = self.require_membership()?;
        let members = membership.members().await.map_err(|e| AgentError::Internal(e.into()))?;
        Ok(members
            .into_iter()
            .map(|m| MemberBody {
                name: m.identity.name,
                addr: m.identity.addr.to_string(),
                status: m.status.as_str().to_owned(),
                id: m.identity.id.to_string(),
            })
            .collect())
    }

    /// This node and the cluster at a glance.
    pub(crate) async fn status(&self) -> Result<StatusBody, AgentError> {
        let members = match self.members().await {
            Ok(members) => members,
            Err(AgentError::Conflict(_)) => Vec::new(),
            Err(error) => return Err(error),
        };
        let left = self.state.lock().unwrap_or_else(PoisonError::into_inner).left;
        let state = match (members.is_empty(), left) {
            (true, _) => "uninitialized",
            (false, true) => "left",
            (false, false) => "member",
        };
        let (digest, last_sync, conflicts) = match self.membership() {
            Some(membership) => {
                let stats = membership
                    .with_core(|core, _| core.record_stats())
                    .await
                    .map_err(|e| AgentError::Internal(e.into()))?;
                let digest = format!("{:016x}-{:016x}", stats.records_root, stats.members_root);
                let last_sync = stats.sync.last.map(|last| LastSyncBody {
                    peer: name_of(&members, last.peer),
                    at_ms: last.at_ms,
                    in_step: last.in_step,
                });
                (Some(digest), last_sync, conflicts(&membership.watch_view().borrow().view, &members))
            }
            None => (None, None, Vec::new()),
        };
        Ok(StatusBody {
            name: self.name.clone(),
            id: self.key.id().to_string(),
            addr: self.advertise.to_string(),
            state: state.into(),
            cluster_size: members.iter().filter(|m| m.status == "alive" || m.status == "suspect").count(),
            members,
            digest,
            last_sync,
            conflicts,
            encryption: self.encryption().await,
        })
    }

    /// This host's encrypted path, as `mesh status` shows it.
    pub(crate) async fn encryption(&self) -> EncryptionBody {
        self.dataplane.encryption_body().await
    }

    /// This node's membership, or the error that says how to get one.
    fn require_membership(&self) -> Result<Membership, AgentError> {
        self.membership().ok_or_else(|| AgentError::Conflict(NOT_IN_CLUSTER.into()))
    }

    /// Runs a record change on the core, then saves this node's own
    /// records before answering, so a change reported done survives a
    /// crash. The check and the change run as one step in the core's task,
    /// so two changes never see the same view (two sandboxes never get
    /// one address).
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core, std::time::Instant) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let membership = self.require_membership()?;
        let (result, owned) = membership
            .with_core(move |core, now| {
                let result = f(core, now);
                let owned = result.is_ok().then(|| (core.generation(), core.owned()));
                (result, owned)
            })
            .await
            .map_err(|e| AgentError::Internal(e.into()))?;
        if let Some((generation, owned)) = owned {
            // An fsync takes milliseconds: off the runtime's threads, so
            // the push already queued goes out meanwhile.
            let datadir = self.datadir.clone();
            tokio::task::spawn_blocking(move || datadir.save_records(generation, &owned))
                .await
                .map_err(anyhow::Error::from)??;
        }
        result
    }

    /// Reads something from the core.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Core) -> T + Send + 'static) -> Result<T, AgentError> {
        let membership = self.require_membership()?;
        membership.with_core(move |core, _| f(core)).await.map_err(|e| AgentError::Internal(e.into()))
    }

    /// The view as the membership task last derived it (no new derivation).
    pub(crate) fn current_view(&self) -> Result<Arc<mesh_membership::CurrentView>, AgentError> {
        Ok(self.require_membership()?.watch_view().borrow().clone())
    }

    /// Whether this node is in a cluster.
    pub(crate) fn membership(&self) -> Option<Membership> {
        let session = self.session.read().unwrap_or_else(PoisonError::into_inner);
        session.as_ref().map(|s| s.membership.clone())
    }

    fn session_token(&self) -> Option<JoinToken> {
        let session = self.session.read().unwrap_or_else(PoisonError::into_inner);
        session.as_ref().map(|s| s.token.clone())
    }

    /// Starts the transport and the membership driver with a bumped identity.
    fn begin_session(&self, files: ClusterFiles) -> Result<Membership, AgentError> {
        let state = self.update_state(|state| state.bump = state.bump.wrapping_add(1))?;
        let identity =
            NodeIdentity { id: self.key.id(), bump: state.bump, name: self.name.clone(), addr: self.advertise };
        let token = files.token();
        let enroller = Enroller::new(files.ca, files.secret).with_cert_lifetime(self.cert_lifetime);
        let (transport, inbound) =
            Transport::start(self.endpoint.clone(), &self.key, files.creds.cert, enroller, self.shutdown.child_token())
                .map_err(anyhow::Error::from)?;
        let mut core = Core::new(identity, self.key.clone(), rand::random());
        core.set_wall_clock(std::time::Instant::now(), unix_ms());
        core.restore(self.datadir.records()?);
        if state.left {
            core.stay_out();
        }
        let (membership, _task) = Membership::spawn(core, transport, inbound, state.peers, self.shutdown.child_token());
        tokio::spawn(remember_peers(membership.subscribe(), self.datadir.clone(), Arc::clone(&self.state)));
        tokio::spawn(crate::upkeep::run(membership.clone(), self.datadir.clone(), self.shutdown.child_token()));
        tokio::spawn(crate::credentials::run(membership.clone(), self.datadir.clone(), self.shutdown.child_token()));
        tokio::spawn(announce_member(membership.clone(), self.dataplane.member_spec()));
        tokio::spawn(Arc::clone(&self.dataplane).run(membership.clone(), self.shutdown.child_token()));
        tokio::spawn(Arc::clone(&self.dns).follow(membership.clone()));
        *self.session.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Session { membership: membership.clone(), token });
        Ok(membership)
    }

    fn update_state(&self, change: impl FnOnce(&mut State)) -> Result<State, AgentError> {
        update_state(&self.datadir, &self.state, change).map_err(AgentError::Internal)
    }
}

/// Announces this host's WireGuard key and path in its member record (a
/// new version only if they changed since the last run).
async fn announce_member(membership: Membership, spec: MemberSpec) {
    if let Err(error) = membership.announce_member(spec).await {
        tracing::error!(%error, "cannot announce this host's WireGuard key: no host will accept its encrypted packets");
    }
}

fn update_state(datadir: &DataDir, state: &Mutex<State>, change: impl FnOnce(&mut State)) -> anyhow::Result<State> {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let before = state.clone();
    change(&mut state);
    if *state != before {
        datadir.save_state(&state)?;
    }
    Ok(state.clone())
}

/// Persists what the data dir must know from membership events: peers to
/// find the way back through, and the bump after a rejoin.
async fn remember_peers(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    datadir: DataDir,
    state: Arc<Mutex<State>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let saved = update_state(&datadir, &state, |state| match event {
            Event::MemberUp(id) | Event::MemberRenamed { new: id, .. } if !state.peers.contains(&id.addr) => {
                state.peers.push(id.addr);
                if state.peers.len() > MAX_REMEMBERED_PEERS {
                    state.peers.remove(0);
                }
            }
            Event::MemberLeft(id) => state.peers.retain(|addr| *addr != id.addr),
            Event::Rejoined(id) => state.bump = id.bump,
            _ => {}
        });
        if let Err(error) = saved {
            tracing::warn!(error = format!("{error:#}"), "cannot save state");
        }
    }
}

/// The name of member `id` among `members`, else its id.
fn name_of(members: &[MemberBody], id: NodeId) -> String {
    let id = id.to_string();
    members.iter().find(|m| m.id == id).map_or(id, |m| m.name.clone())
}

/// The conflicts `view` holds, one line each.
fn conflicts(view: &View, members: &[MemberBody]) -> Vec<String> {
    let networks = view.lost.iter().map(|lost| {
        format!("network {} (made on {}) lost {}", lost.spec.name, name_of(members, lost.id.creator), lost.reason)
    });
    let endpoints = view.endpoints().filter_map(|e| match &e.state {
        EndpointState::Conflict(why) => {
            Some(format!("endpoint {} on {} ({}): {why}", e.name, name_of(members, e.owner), e.spec.network))
        }
        _ => None,
    });
    networks.chain(endpoints).collect()
}

/// Resolves `HOST[:PORT]` (default port [`DEFAULT_PORT`]).
async fn resolve(peer: &str) -> Result<SocketAddr, AgentError> {
    if let Ok(addr) = crate::config::parse_addr(peer, DEFAULT_PORT) {
        return Ok(addr);
    }
    let with_port = if peer.contains(':') { peer.to_owned() } else { format!("{peer}:{DEFAULT_PORT}") };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| AgentError::BadRequest(format!("cannot resolve peer {peer:?}: {e}")))?;
    addrs.next().ok_or_else(|| AgentError::BadRequest(format!("peer {peer:?} has no address")))
}
