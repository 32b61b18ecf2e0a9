//! The data plane: this host's sandboxes (their namespaces) and the
//! mapping of the replicated view onto netdev's desired state, reconciled
//! on every view change and every [`RECONCILE_EVERY`].
//!
//! For each overlay or bridge network with a sandbox on this host: a bridge
//! and a veth per local sandbox (or per Docker endpoint, whose end Docker
//! moves into the container: a hand-off); for an overlay network also a
//! VXLAN device, and for every active endpoint on another host an FDB entry
//! (MAC → its host's VTEP) and a neighbour entry (IP → MAC). The bridge
//! holds the network's gateway address and [`crate::config::HOST_DNS`], so
//! sandboxes reach this host's resolver (Docker's containers do, through a
//! route the plugin gives them) and, unless the network is internal, the
//! outside: a sandbox's default route goes through the gateway of its first
//! such network, and the host masquerades what leaves through its own
//! default route and forwards its published ports ([`firewall`]).
//! Endpoints whose host is down stay programmed for
//! [`DOWN_GRACE`] (a host that is only briefly unreachable loses nothing),
//! then are withdrawn; endpoints in conflict are never programmed.
//! Published ports are held by sockets ([`holds`]).

mod encryption;
mod holds;
mod userspace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_membership::records::view::{EndpointState, View};
use mesh_membership::records::Driver;
use mesh_membership::records::MemberSpec;
use mesh_membership::{MemberInfo, Membership, NodeId, Status};
use mesh_netdev::firewall::{self, Firewall, FirewallPlan, PortMapping, RoutedNetwork, TunnelGuard};
use mesh_netdev::netns;
use mesh_netdev::reconcile::{self, Handoff, LocalPlan, Mode, NetworkPlan, Reconciler, Remote, Underlay};
use mesh_netdev::wireguard;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub(crate) use self::encryption::Encryption;
use self::holds::PortHolds;
use crate::api::EncryptionBody;
use crate::clock::unix_ms;
use crate::config::HOST_DNS;
use crate::datadir::{Attachment, DataDir, PublishedPort};
use crate::metrics::Metrics;

/// How often the kernel is compared with the view even if nothing changed
/// (to restore what someone deleted by hand).
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How long a down host's endpoints stay programmed.
pub(crate) const DOWN_GRACE: Duration = Duration::from_secs(15);
/// After start, how long the agent must have had an active peer (a sync
/// round takes milliseconds) before it removes kernel entries: until then
/// it only adds, so a restart never withdraws what its peers still hold.
const WARM_AFTER_PEER: Duration = Duration::from_secs(2);
/// After start, how long a node with no peer waits before removing.
const WARM_ALONE: Duration = Duration::from_secs(20);

/// This host's sandboxes and its end of the underlay.
pub(crate) struct Dataplane {
    datadir: DataDir,
    prefix: String,
    underlay: Underlay,
    attachments: Mutex<BTreeMap<String, Attachment>>,
    changed: Notify,
    /// The sandbox interfaces (namespace, VNI) wired by the last pass.
    wired: watch::Sender<Vec<(PathBuf, u32)>>,
    /// Interfaces made for another manager (Docker) to move into its
    /// sandboxes, by id: the network and the MAC.
    handoffs: Mutex<BTreeMap<String, (String, [u8; 6])>>,
    /// The hand-offs whose interface existed after the last pass.
    handed: watch::Sender<Vec<String>>,
    /// Where passes are counted.
    metrics: Arc<Metrics>,
    /// The sockets holding the sandboxes' published ports.
    ports: Mutex<PortHolds>,
    /// The encrypted path between hosts.
    encryption: Encryption,
    /// The underlay interface's MTU as the last pass found it (0: no pass yet).
    underlay_mtu: AtomicU32,
}

impl Dataplane {
    /// The data plane of a host on `underlay`, with its encrypted path
    /// `encryption` (whose tunnel address it takes), counting its passes
    /// in `metrics`.
    pub(crate) fn open(
        datadir: DataDir,
        prefix: String,
        underlay: Underlay,
        encryption: Encryption,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let underlay = Underlay { tunnel: encryption.tunnel(), ..underlay };
        let attachments = datadir.attachments()?;
        let mut ports = PortHolds::default();
        for (name, attachment) in &attachments {
            if let Err(error) = ports.hold(name, &attachment.ports) {
                tracing::warn!(sandbox = %name, %error, "its published ports are forwarded but not held");
            }
        }
        let (wired, _) = watch::channel(Vec::new());
        let (handed, _) = watch::channel(Vec::new());
        Ok(Self {
            datadir,
            prefix,
            underlay,
            attachments: Mutex::new(attachments),
            changed: Notify::new(),
            wired,
            handoffs: Mutex::new(BTreeMap::new()),
            handed,
            metrics,
            ports: Mutex::new(ports),
            encryption,
            underlay_mtu: AtomicU32::new(0),
        })
    }

    /// What this host announces in its member record.
    pub(crate) fn member_spec(&self) -> MemberSpec {
        self.encryption.member_spec()
    }

    /// What `mesh status` says of the encrypted path.
    pub(crate) async fn encryption_body(&self) -> EncryptionBody {
        self.encryption.body().await
    }

    /// The MTU a network's interfaces get on this host when none is given,
    /// and the sum that makes it, once a pass has found the underlay's.
    pub(crate) fn default_mtu(&self, vxlan: bool, encrypted: bool) -> Option<(u32, String)> {
        let underlay_mtu = self.underlay_mtu.load(AtomicOrdering::Relaxed);
        (underlay_mtu > 0).then(|| reconcile::default_mtu(underlay_mtu, self.underlay.local, vxlan, encrypted))
    }

    /// Checks that the networks `networks` (VNI, and whether encrypted)
    /// can be built on this host.
    pub(crate) async fn preflight(&self, networks: &[(u32, bool)]) -> Result<(), String> {
        if networks.is_empty() {
            return Ok(());
        }
        let kernel = Reconciler::open().map_err(|e| e.to_string())?;
        for (vni, encrypted) in networks {
            kernel.preflight(self.underlay, *vni, *encrypted).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Gives sandbox `name` a network stack for `networks` (its
    /// interfaces in that order, named `interface` if given): the
    /// namespace at `netns` if given (a container's, its loopback brought
    /// up), else a new one named `PREFIX` + `name`; and holds its `ports`.
    pub(crate) fn create_sandbox(
        &self,
        name: &str,
        netns: Option<&Path>,
        networks: &[String],
        interface: Option<&str>,
        ports: &[PublishedPort],
    ) -> Result<Attachment, String> {
        let mut attachments = self.attachments.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_new(&attachments, name, netns)?;
        self.ports.lock().unwrap_or_else(PoisonError::into_inner).hold(name, ports)?;
        let made = self.namespace_for(name, netns).and_then(|(netns, created)| {
            let networks = networks.to_vec();
            let (interface, ports) = (interface.map(str::to_owned), ports.to_vec());
            self.keep(&mut attachments, name, Attachment { netns, created, networks, interface, ports })
        });
        if made.is_err() {
            self.ports.lock().unwrap_or_else(PoisonError::into_inner).release(name);
        }
        made
    }

    /// Sandbox `name`'s namespace, and whether the agent made it: `netns`
    /// readied if given, else a new one.
    fn namespace_for(&self, name: &str, netns: Option<&Path>) -> Result<(PathBuf, bool), String> {
        match netns {
            Some(path) => {
                reconcile::prepare_sandbox(path).map_err(|e| e.to_string())?;
                Ok((path.to_owned(), false))
            }
            None => Ok((self.make_netns(name)?, true)),
        }
    }

    /// Saves `attachment` as sandbox `name`'s; on failure removes the
    /// namespace if the agent made it.
    fn keep(
        &self,
        attachments: &mut BTreeMap<String, Attachment>,
        name: &str,
        attachment: Attachment,
    ) -> Result<Attachment, String> {
        attachments.insert(name.to_owned(), attachment.clone());
        if let Err(error) = self.save(attachments) {
            if let Some(made) = attachments.remove(name).filter(|a| a.created) {
                let _ = netns::remove(&made.netns);
            }
            return Err(error);
        }
        Ok(attachment)
    }

    /// Checks that sandbox `name` can be given a network stack and hold
    /// `ports` (see [`Dataplane::create_sandbox`]) without making anything.
    pub(crate) fn check_sandbox(
        &self,
        name: &str,
        netns: Option<&Path>,
        ports: &[PublishedPort],
    ) -> Result<(), String> {
        self.check_new(&self.attachments.lock().unwrap_or_else(PoisonError::into_inner), name, netns)?;
        self.ports.lock().unwrap_or_else(PoisonError::into_inner).check(ports)
    }

    fn check_new(
        &self,
        attachments: &BTreeMap<String, Attachment>,
        name: &str,
        netns: Option<&Path>,
    ) -> Result<(), String> {
        if attachments.contains_key(name) {
            return Err(format!("a sandbox named {name} already exists on this host"));
        }
        match netns {
            Some(path) if !netns::is_netns(path) => Err(format!(
                "{} is not a network namespace (give a path such as /proc/PID/ns/net or /run/netns/NAME)",
                path.display()
            )),
            Some(_) => Ok(()),
            None => {
                let netns_name = format!("{}{name}", self.prefix);
                if netns::path_of(&netns_name).exists() {
                    return Err(format!(
                        "a network namespace named {netns_name} already exists (`ip netns del {netns_name}` if it is stale)"
                    ));
                }
                Ok(())
            }
        }
    }

    fn make_netns(&self, name: &str) -> Result<PathBuf, String> {
        let netns_name = format!("{}{name}", self.prefix);
        let path = netns::create(&netns_name).map_err(|e| e.to_string())?;
        if let Err(error) = reconcile::prepare_sandbox(&path) {
            let _ = netns::remove(&path);
            return Err(error.to_string());
        }
        Ok(path)
    }

    /// Forgets sandbox `name` and removes its namespace if the agent made
    /// it. Returns where it was attached, if it was.
    pub(crate) fn remove_sandbox(&self, name: &str) -> Result<Option<Attachment>, String> {
        let mut attachments = self.attachments.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(attachment) = attachments.remove(name) else { return Ok(None) };
        self.save(&attachments)?;
        self.ports.lock().unwrap_or_else(PoisonError::into_inner).release(name);
        self.changed.notify_one();
        if attachment.created {
            netns::remove(&attachment.netns).map_err(|e| e.to_string())?;
        }
        Ok(Some(attachment))
    }

    /// Every sandbox's attachment, by name.
    pub(crate) fn attachments(&self) -> BTreeMap<String, Attachment> {
        self.attachments.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Where sandbox `name` is attached, if it is.
    pub(crate) fn attachment(&self, name: &str) -> Option<Attachment> {
        let attachments = self.attachments.lock().unwrap_or_else(PoisonError::into_inner);
        attachments.get(name).cloned()
    }

    /// Waits until the sandbox at `netns` is wired to every network of
    /// `vnis` (at most `limit`); returns whether it is.
    pub(crate) async fn wait_wired(&self, netns: &Path, vnis: &[u32], limit: Duration) -> bool {
        let mut wired = self.wired.subscribe();
        let all_wired =
            |done: &Vec<(PathBuf, u32)>| vnis.iter().all(|vni| done.iter().any(|(p, v)| p == netns && v == vni));
        let waited = tokio::time::timeout(limit, wired.wait_for(all_wired)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Sets the interfaces to make for another manager: by id, the network
    /// and the MAC. Ids no longer given have their interface removed.
    pub(crate) fn set_handoffs(&self, handoffs: BTreeMap<String, (String, [u8; 6])>) {
        *self.handoffs.lock().unwrap_or_else(PoisonError::into_inner) = handoffs;
        self.changed.notify_one();
    }

    /// Waits until hand-off `id`'s interface exists (at most `limit`).
    pub(crate) async fn wait_handed(&self, id: &str, limit: Duration) -> bool {
        let mut handed = self.handed.subscribe();
        let waited = tokio::time::timeout(limit, handed.wait_for(|ids| ids.iter().any(|i| i == id))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Reconciles now rather than at the next period.
    pub(crate) fn poke(&self) {
        self.changed.notify_one();
    }

    fn save(&self, attachments: &BTreeMap<String, Attachment>) -> Result<(), String> {
        self.datadir.save_attachments(attachments).map_err(|e| format!("{e:#}"))
    }

    /// Keeps the kernel in step with the view until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, membership: Membership, shutdown: CancellationToken) {
        let kernel = match Reconciler::open() {
            Ok(kernel) => kernel,
            Err(error) => return tracing::error!(%error, "no netlink socket: the data plane is off"),
        };
        let mut views = membership.watch_view();
        let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
        let mut members_down: HashMap<NodeId, Instant> = HashMap::new();
        let mut last_peers = Vec::new();
        let started = Instant::now();
        let started_ms = unix_ms();
        let mut first_peer: Option<Instant> = None;
        let mut last_errors = Vec::new();
        let mut programmed = Programmed::default();
        let mut firewall = Firewall::default();
        loop {
            let current = views.borrow_and_update().clone();
            let view = &current.view;
            let Ok((members, me)) = membership.with_core(|core, _| (core.members(), core.identity().id)).await else {
                break;
            };
            track_down(view, &mut down_since);
            track_members_down(&members, &mut members_down);
            if members.iter().skip(1).any(|m| matches!(m.status, Status::Alive | Status::Suspect)) {
                first_peer.get_or_insert_with(Instant::now);
            }
            let warm = first_peer.is_some_and(|at| at.elapsed() >= WARM_AFTER_PEER) || started.elapsed() >= WARM_ALONE;
            let mode = if warm { Mode::Full } else { Mode::AddOnly };
            // Peers before the networks: an encrypted network's FDB
            // entries point at tunnel addresses only its peers hold.
            let peers = encryption::desired_peers(view, &members, me, &members_down);
            match self.encryption.reconcile(&peers, view.removed(), mode).await {
                // When a removed host stopped being a peer, for operators
                // (and the kernel-path removal test).
                Ok((set, removed)) if removed > 0 => {
                    tracing::info!(set, removed, peers = peers.len(), "WireGuard peers removed");
                }
                Ok((set, removed)) if set > 0 => {
                    tracing::debug!(set, removed, peers = peers.len(), "WireGuard peers reconciled");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "WireGuard peers"),
            }
            if peers != last_peers {
                tracing::info!(peers = peers.len(), "WireGuard peers changed");
                last_peers = peers;
            }
            let (plans, firewall_plan) = self.plans(view, &members, me, &down_since);
            let planned = Programmed::of(&plans);
            let result = kernel.reconcile(self.underlay, &plans, mode).await;
            self.metrics.dataplane.pass(result.as_ref().ok(), planned.remotes.len());
            match result {
                Ok(mut report) => {
                    self.underlay_mtu.store(report.underlay_mtu, AtomicOrdering::Relaxed);
                    if report.errors.is_empty() {
                        self.count_convergence(view, &programmed, &planned, started_ms);
                        programmed = planned;
                    }
                    // Before the sandboxes count as wired: a published port
                    // is forwarded once `sandbox create` returns.
                    if let Err(error) = reconcile_firewall(&kernel, &mut firewall, firewall_plan).await {
                        report.errors.push(error);
                    }
                    self.wired.send_replace(report.wired.clone());
                    self.handed.send_replace(report.handed.clone());
                    if report.set + report.removed > 0 {
                        tracing::debug!(set = report.set, removed = report.removed, "kernel reconciled");
                    }
                    if report.errors != last_errors {
                        for error in &report.errors {
                            tracing::warn!(%error, "data plane");
                        }
                        last_errors = report.errors;
                    }
                }
                Err(error) => tracing::warn!(%error, "data plane"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = views.changed() => if changed.is_err() { break },
                () = self.changed.notified() => {}
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }

    /// Counts how long the remote endpoints programmed for the first time
    /// (in `now`, not in `before`) took from their creation, for those
    /// created since this agent started on a network this host already
    /// had (a host programs a network once it has a sandbox on it: an
    /// endpoint older than that did not wait on the cluster).
    fn count_convergence(&self, view: &View, before: &Programmed, now: &Programmed, started_ms: u64) {
        let now_ms = unix_ms();
        let on_known_network =
            |network: &str| view.network(network).is_some_and(|n| before.networks.contains(&n.spec.vni));
        let new =
            view.endpoints().filter(|e| now.remotes.contains(&e.spec.mac) && !before.remotes.contains(&e.spec.mac));
        for endpoint in new.filter(|e| e.spec.created_ms >= started_ms && on_known_network(&e.spec.network)) {
            let lag = Duration::from_millis(now_ms.saturating_sub(endpoint.spec.created_ms));
            self.metrics.dataplane.converged(lag);
        }
    }

    /// The desired kernel state for `view`: the networks, and the firewall
    /// (all but its uplink).
    fn plans(
        &self,
        view: &View,
        members: &[MemberInfo],
        me: NodeId,
        down_since: &HashMap<NodeId, Instant>,
    ) -> (Vec<NetworkPlan>, FirewallPlan) {
        // The underlay is IPv4 (the advertise address): a member
        // advertising IPv6 is no VTEP of it.
        let vteps: HashMap<NodeId, IpAddr> = members
            .iter()
            .filter_map(|m| match m.identity.addr.ip() {
                IpAddr::V4(ip) => Some((m.identity.id, IpAddr::V4(ip))),
                IpAddr::V6(_) => None,
            })
            .collect();
        let attachments = self.attachments.lock().unwrap_or_else(PoisonError::into_inner);
        let handoffs = self.handoffs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut plans = Vec::new();
        let mut firewall = FirewallPlan {
            tunnel: self.underlay.tunnel.map(|_| TunnelGuard {
                network: wireguard::tunnel_network(),
                interface: wireguard::INTERFACE.into(),
                vxlan_port: self.underlay.port,
            }),
            ..FirewallPlan::default()
        };
        for network in view.networks.values().filter(|n| n.spec.driver.is_bridged()) {
            let prefix = network.spec.subnet.map(|s| s.prefix_len());
            let own = network.endpoints.iter().filter(|e| e.owner == me && e.state == EndpointState::Active);
            let mut locals = Vec::new();
            for endpoint in own {
                let Some(attachment) = attachments.get(&endpoint.name) else { continue };
                let Some(interface) = attachment.interface(&endpoint.spec.network) else { continue };
                let way_out = way_out(view, attachment) == Some(network.spec.name.as_str());
                if way_out {
                    firewall.ports.extend(endpoint.spec.ip.into_iter().flat_map(|address| {
                        attachment.ports.iter().map(move |p| PortMapping {
                            protocol: p.protocol,
                            host_port: p.host_port,
                            address,
                            port: p.port,
                        })
                    }));
                }
                locals.push(LocalPlan {
                    netns: attachment.netns.clone(),
                    interface,
                    mac: endpoint.spec.mac,
                    address: endpoint.spec.ip.zip(prefix),
                    gateway: network.spec.gateway.filter(|_| way_out),
                });
            }
            let handoffs: Vec<Handoff> = handoffs
                .iter()
                .filter(|(_, (on, _))| *on == network.spec.name)
                .map(|(id, (_, mac))| Handoff { id: id.clone(), mac: *mac })
                .collect();
            if locals.is_empty() && handoffs.is_empty() {
                continue;
            }
            let in_grace = |owner: &NodeId| down_since.get(owner).is_some_and(|at| at.elapsed() < DOWN_GRACE);
            let vxlan = network.spec.driver == Driver::Overlay;
            let encrypted = network.spec.encrypted;
            // An encrypted network's remote VTEP is its host's tunnel
            // address, for hosts that announce a key (a WireGuard peer).
            let vtep_of = |owner: &NodeId| match encrypted {
                true => view.members().contains_key(owner).then(|| IpAddr::V6(wireguard::tunnel_address(&owner.0))),
                false => vteps.get(owner).copied(),
            };
            let remotes = network
                .endpoints
                .iter()
                .filter(|e| vxlan && e.owner != me)
                .filter(|e| {
                    e.state == EndpointState::Active || (e.state == EndpointState::OwnerDown && in_grace(&e.owner))
                })
                .filter_map(|e| Some(Remote { mac: e.spec.mac, ip: e.spec.ip?, vtep: vtep_of(&e.owner)? }))
                .collect();
            let mtu = network.spec.mtu.map(u32::from);
            let gateway = network.spec.gateway.zip(prefix);
            let bridge_addresses = gateway.into_iter().chain([(HOST_DNS, 32)]).collect();
            let vni = network.spec.vni;
            if let Some(subnet) = network.spec.subnet {
                let (bridge, internal) = (reconcile::bridge_name(vni), network.spec.internal);
                firewall.networks.push(RoutedNetwork {
                    bridge,
                    subnet: (subnet.network(), subnet.prefix_len()),
                    internal,
                });
            }
            plans.push(NetworkPlan { vni, vxlan, encrypted, mtu, bridge_addresses, locals, handoffs, remotes });
        }
        (plans, firewall)
    }
}

/// Makes the nftables table match `plan`, masquerading through the
/// interface of the host's default route as it is now.
async fn reconcile_firewall(
    kernel: &Reconciler,
    firewall: &mut Firewall,
    mut plan: FirewallPlan,
) -> Result<(), String> {
    plan.uplink = kernel.uplink().await.map_err(|e| format!("the default route: {e}"))?;
    let (ip, ip6) = firewall.reconcile(&plan).await.map_err(|e| format!("nftables: {e}"))?;
    for (family, change) in [("ip", ip), ("ip6", ip6)] {
        if change != firewall::Change::None {
            tracing::debug!(?change, "nftables table {family} {} reconciled", firewall::TABLE);
        }
    }
    Ok(())
}

/// The network through which a sandbox attached at `attachment` reaches
/// the outside: the first of its networks that is bridged and not internal.
fn way_out<'a>(view: &View, attachment: &'a Attachment) -> Option<&'a str> {
    attachment
        .networks
        .iter()
        .find(|name| view.network(name).is_some_and(|n| n.spec.driver.is_bridged() && !n.spec.internal))
        .map(String::as_str)
}

/// What a pass programs: networks (by VNI) and remote endpoints (by MAC).
#[derive(Debug, Default)]
struct Programmed {
    networks: HashSet<u32>,
    remotes: HashSet<[u8; 6]>,
}

impl Programmed {
    fn of(plans: &[NetworkPlan]) -> Self {
        Self {
            networks: plans.iter().map(|p| p.vni).collect(),
            remotes: plans.iter().flat_map(|p| p.remotes.iter().map(|r| r.mac)).collect(),
        }
    }
}

/// Notes when each member was first seen down, and forgets members that
/// are back (or gone).
fn track_members_down(members: &[MemberInfo], down_since: &mut HashMap<NodeId, Instant>) {
    let down: Vec<NodeId> = members.iter().filter(|m| m.status == Status::Down).map(|m| m.identity.id).collect();
    down_since.retain(|id, _| down.contains(id));
    for id in down {
        down_since.entry(id).or_insert_with(Instant::now);
    }
}

/// Notes when each owner of a hidden endpoint was first seen down, and
/// forgets owners that are back.
fn track_down(view: &View, down_since: &mut HashMap<NodeId, Instant>) {
    let down: Vec<NodeId> = view.endpoints().filter(|e| e.state == EndpointState::OwnerDown).map(|e| e.owner).collect();
    down_since.retain(|owner, _| down.contains(owner));
    for owner in down {
        down_since.entry(owner).or_insert_with(Instant::now);
    }
}
