//! The network and IPAM driver behind the plugin socket: each call of
//! Docker's remote driver protocol mapped onto mesh's networks, addresses,
//! data plane and records.
//!
//! - IPAM pools are mesh subnets (the pool id is the subnet), chosen from
//!   the replicated view like `mesh network create` chooses them;
//!   addresses come from mesh's IPAM, so they never collide with another
//!   host's.
//! - Docker never tells a driver a network's name, so after
//!   `CreateNetwork` the driver asks the engine, then creates the mesh
//!   network of that name (or binds to the existing one).
//! - `Join` hands Docker a veth whose other end the data plane keeps on
//!   the network's bridge; the endpoint is then published under the
//!   container's name (asked of the engine: Docker does not pass it
//!   either), with its `--network-alias`es.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::Ipv4Net;
use mesh_membership::records::mac_for;
use mesh_membership::records::view::{NetworkView, View};
use mesh_netdev::reconcile::{handoff_names, Handoff};

use super::engine::Engine;
use super::fallback_name;
use super::protocol::{self as proto, Empty};
use crate::agent::{mesh_name, Agent, AgentError, ContainerEndpoint};
use crate::api::NetworkCreateBody;
use crate::datadir::{Bindings, BoundEndpoint, BoundNetwork, DataDir};
use crate::dataplane::Dataplane;
use crate::ipam;

/// How long `Join` waits for the interface it hands over.
const HANDOFF_LIMIT: Duration = Duration::from_secs(10);
/// How long the driver keeps asking the engine for a new network's or
/// endpoint's name (the engine stores it just after the driver answers).
const LOOKUP_LIMIT: Duration = Duration::from_secs(10);
/// Between two such questions.
const LOOKUP_EVERY: Duration = Duration::from_millis(10);
/// The address containers reach mesh's DNS at (see [`crate::config::HOST_DNS`]).
const DNS_ROUTE: &str = "169.254.53.53/32";

/// A failed call: Docker shows the message to the user.
#[derive(Debug)]
pub(crate) struct CallError(pub(crate) String);

impl From<AgentError> for CallError {
    fn from(error: AgentError) -> Self {
        Self(error.to_string())
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, CallError> {
    Err(CallError(message.into()))
}

/// What the driver holds between calls.
#[derive(Debug, Default)]
struct Working {
    bindings: Bindings,
    /// Pools handed to Docker whose network is not created yet.
    pools: Vec<Ipv4Net>,
    /// Addresses handed to Docker and not yet published or released.
    reserved: HashSet<Ipv4Addr>,
}

/// The driver.
pub(crate) struct Driver {
    agent: Arc<Agent>,
    engine: Engine,
    dataplane: Arc<Dataplane>,
    datadir: DataDir,
    working: Mutex<Working>,
}

impl Driver {
    /// The driver, with what it bound before a restart.
    pub(crate) fn new(
        agent: Arc<Agent>,
        engine: Engine,
        dataplane: Arc<Dataplane>,
        datadir: DataDir,
    ) -> anyhow::Result<Arc<Self>> {
        let bindings = datadir.docker_bindings()?;
        dataplane.set_handoffs(bindings.handoffs());
        for endpoint in bindings.endpoints.values() {
            if let (Some(name), Some(network)) = (&endpoint.published, bindings.mesh_network(&endpoint.network)) {
                agent.claim_container(name, network);
            }
        }
        let working = Mutex::new(Working { bindings, ..Working::default() });
        Ok(Arc::new(Self { agent, engine, dataplane, datadir, working }))
    }

    /// The engine this driver asks.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Publishes the endpoints that joined but were not published (the
    /// agent stopped before it could).
    pub(crate) fn resume(self: &Arc<Self>) {
        let pending: Vec<String> = self.with(|w| {
            w.bindings
                .endpoints
                .iter()
                .filter(|(_, e)| e.joined && e.published.is_none())
                .map(|(id, _)| id.clone())
                .collect()
        });
        for id in pending {
            tokio::spawn(Arc::clone(self).publish(id));
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Working) -> T) -> T {
        f(&mut self.working.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Changes the bindings, saves them and tells the data plane; all or
    /// nothing.
    fn rebind<T>(&self, f: impl FnOnce(&mut Bindings) -> Result<T, CallError>) -> Result<T, CallError> {
        let mut working = self.working.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bindings = working.bindings.clone();
        let result = f(&mut bindings)?;
        if bindings != working.bindings {
            self.datadir.save_docker_bindings(&bindings).map_err(|e| CallError(format!("{e:#}")))?;
            self.dataplane.set_handoffs(bindings.handoffs());
            working.bindings = bindings;
        }
        Ok(result)
    }

    /// The Docker network ids and mesh names bound now.
    pub(crate) fn bound_networks(&self) -> Vec<(String, Option<String>)> {
        self.with(|w| w.bindings.networks.iter().map(|(id, n)| (id.clone(), n.mesh.clone())).collect())
    }

    fn view(&self) -> Result<Arc<mesh_membership::CurrentView>, CallError> {
        Ok(self.agent.current_view()?)
    }

    // IPAM.

    /// `RequestPool`: the subnet asked for, or a free one.
    pub(crate) fn request_pool(&self, request: proto::PoolRequest) -> Result<proto::PoolAnswer, CallError> {
        if request.v6 {
            return fail("mesh networks are IPv4 only: create the network without --ipv6");
        }
        if !request.sub_pool.is_empty() {
            return fail("mesh allocates from the whole subnet: leave out --ip-range");
        }
        let current = self.view()?;
        let view = &current.view;
        let subnet = self.with(|working| -> Result<Ipv4Net, CallError> {
            let subnet = if request.pool.is_empty() {
                let seed = format!("docker-{:016x}", rand::random::<u64>());
                ipam::default_subnet(view, &seed, &working.pools).ok_or_else(|| {
                    CallError("the default pool 10.128.0.0/9 has no free /24 left: give --subnet".into())
                })?
            } else {
                let subnet = parse_subnet(&request.pool)?;
                let exact = network_with(view, subnet).is_some();
                if !exact {
                    if let Some(other) = ipam::overlapping(view, subnet) {
                        return fail(format!("subnet {subnet} overlaps mesh network {other}'s"));
                    }
                }
                subnet
            };
            if !working.pools.contains(&subnet) {
                working.pools.push(subnet);
            }
            Ok(subnet)
        })?;
        Ok(proto::PoolAnswer { pool_id: subnet.to_string(), pool: subnet.to_string(), data: Default::default() })
    }

    /// `ReleasePool`.
    pub(crate) fn release_pool(&self, request: proto::PoolRelease) -> Result<Empty, CallError> {
        let subnet = parse_subnet(&request.pool_id)?;
        self.with(|working| working.pools.retain(|p| *p != subnet));
        Ok(Empty {})
    }

    /// `RequestAddress`: the network's gateway, or a free address.
    pub(crate) async fn request_address(
        &self,
        request: proto::AddressRequest,
    ) -> Result<proto::AddressAnswer, CallError> {
        let subnet = parse_subnet(&request.pool_id)?;
        let options = request.options.unwrap_or_default();
        let asked = match request.address.as_str() {
            "" => None,
            text => Some(text.parse::<Ipv4Addr>().map_err(|_| CallError(format!("malformed address {text:?}")))?),
        };
        if options.get(proto::REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(proto::GATEWAY_ADDRESS) {
            let current = self.view()?;
            let gateway = network_with(&current.view, subnet)
                .and_then(|n| n.spec.gateway)
                .or_else(|| subnet.hosts().next())
                .ok_or_else(|| CallError(format!("subnet {subnet} has no host address")))?;
            if asked.is_some_and(|ip| ip != gateway) {
                return fail(format!("a mesh network's gateway is its first address ({gateway}): leave out --gateway"));
            }
            return Ok(address_answer(gateway, subnet));
        }
        let mesh = self.mesh_network_of_pool(subnet).await?;
        let current = self.view()?;
        let network = current.view.network(&mesh).ok_or_else(|| CallError(format!("no mesh network {mesh}")))?;
        let me = self.agent.node();
        let ip = self.with(|working| -> Result<Ipv4Addr, CallError> {
            let ip = match asked {
                Some(ip) if working.reserved.contains(&ip) => return fail(format!("{ip} is already given out")),
                Some(ip) => {
                    ipam::check_static(network, ip).map_err(CallError)?;
                    ip
                }
                None => ipam::allocate(network, me, &working.reserved)
                    .ok_or_else(|| CallError(format!("network {mesh} has no free address left in {subnet}")))?,
            };
            working.reserved.insert(ip);
            Ok(ip)
        })?;
        Ok(address_answer(ip, subnet))
    }

    /// `ReleaseAddress`.
    pub(crate) fn release_address(&self, request: proto::AddressRelease) -> Result<Empty, CallError> {
        parse_subnet(&request.pool_id)?;
        let ip: Ipv4Addr =
            request.address.parse().map_err(|_| CallError(format!("malformed address {:?}", request.address)))?;
        self.with(|working| working.reserved.remove(&ip));
        Ok(Empty {})
    }

    // Networks.

    /// `CreateNetwork`: remembers the network and learns its name.
    pub(crate) fn create_network(self: &Arc<Self>, request: proto::NetworkCreate) -> Result<Empty, CallError> {
        check_id("network", &request.network_id)?;
        if request.ipv6_data.as_ref().is_some_and(|d| !d.is_empty()) {
            return fail("mesh networks are IPv4 only: create the network without --ipv6");
        }
        let encrypted = request.encrypted().or_else(fail)?;
        let pools = request.ipv4_data.unwrap_or_default();
        let [pool] = pools.as_slice() else {
            return fail("a mesh network has exactly one subnet: create it with --ipam-driver mesh");
        };
        let subnet = parse_subnet(&pool.pool)?;
        let id = request.network_id.clone();
        self.rebind(|bindings| {
            if bindings.networks.contains_key(&id) {
                return fail(format!("network {id} exists already"));
            }
            bindings.networks.insert(id.clone(), BoundNetwork { subnet, mesh: None, encrypted });
            Ok(())
        })?;
        self.with(|working| working.pools.retain(|p| *p != subnet));
        let driver = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = driver.bind(&id).await {
                tracing::warn!(network = %id, error = %error.0, "a Docker network is not a mesh network");
            }
        });
        Ok(Empty {})
    }

    /// `DeleteNetwork`: removes the mesh network too (refused while it has
    /// endpoints on any host), unless it is gone already.
    pub(crate) async fn delete_network(&self, request: proto::NetworkDelete) -> Result<Empty, CallError> {
        check_id("network", &request.network_id)?;
        let id = request.network_id;
        let Some(bound) = self.with(|w| w.bindings.networks.get(&id).cloned()) else {
            return fail(format!("no Docker network {id} is a mesh network here"));
        };
        if let Some(mesh) = &bound.mesh {
            let current = self.view()?;
            let same = current.view.network(mesh).is_some_and(|n| n.spec.subnet == Some(bound.subnet));
            if same {
                match self.agent.network_rm(mesh).await {
                    Ok(()) | Err(AgentError::NotFound(_)) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        self.rebind(|bindings| {
            bindings.networks.remove(&id);
            Ok(())
        })?;
        Ok(Empty {})
    }

    /// The mesh network Docker network `id` is, learning it if needed:
    /// the engine's name for it, then the mesh network of that name
    /// (created if there is none). An engine network whose name is a
    /// mesh network with another subnet is removed from the engine (the
    /// engine sync makes it again with the right subnet).
    pub(crate) async fn bind(&self, id: &str) -> Result<String, CallError> {
        let Some(bound) = self.with(|w| w.bindings.networks.get(id).cloned()) else {
            return fail(format!("no Docker network {id} is a mesh network here"));
        };
        if let Some(mesh) = bound.mesh {
            return Ok(mesh);
        }
        let name = self.engine_name(id).await?;
        let mesh = mesh_name(&name);
        if mesh != name {
            self.drop_from_engine(id).await;
            return fail(format!(
                "Docker network {name:?} cannot be a mesh network: use letters, digits and hyphens (removed from Docker)"
            ));
        }
        let existing = self.view()?.view.network(&mesh).map(|n| n.spec.subnet);
        match existing {
            Some(subnet) if subnet == Some(bound.subnet) => {}
            Some(_) => {
                self.drop_from_engine(id).await;
                return fail(format!(
                    "mesh network {mesh} exists with another subnet: Docker's copy was removed and is made again with mesh's"
                ));
            }
            None => {
                let body = NetworkCreateBody {
                    name: mesh.clone(),
                    subnet: Some(bound.subnet.to_string()),
                    vni: None,
                    mtu: None,
                    driver: None,
                    internal: false,
                    encrypted: bound.encrypted,
                };
                match self.agent.network_create(body).await {
                    Ok(_) => {}
                    // Created meanwhile by a concurrent call: the same network if the subnet matches.
                    Err(AgentError::Conflict(_))
                        if self.view()?.view.network(&mesh).is_some_and(|n| n.spec.subnet == Some(bound.subnet)) => {}
                    Err(error) => {
                        self.drop_from_engine(id).await;
                        return Err(error.into());
                    }
                }
            }
        }
        self.rebind(|bindings| {
            if let Some(network) = bindings.networks.get_mut(id) {
                network.mesh = Some(mesh.clone());
            }
            Ok(())
        })?;
        tracing::info!(network = %mesh, docker_id = %id, "Docker network bound to its mesh network");
        Ok(mesh)
    }

    async fn engine_name(&self, id: &str) -> Result<String, CallError> {
        let deadline = tokio::time::Instant::now() + LOOKUP_LIMIT;
        loop {
            match self.engine.network(id).await {
                Ok(Some(network)) => return Ok(network.name),
                Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(LOOKUP_EVERY).await,
                Ok(None) => return fail(format!("the Docker engine does not know network {id}")),
                Err(error) => return fail(format!("{error:#}")),
            }
        }
    }

    async fn drop_from_engine(&self, id: &str) {
        if let Err(error) = self.engine.remove_network(id).await {
            tracing::warn!(docker_id = %id, error = format!("{error:#}"), "cannot remove a network from Docker");
        }
    }

    /// The mesh network whose subnet is `subnet`, binding a Docker network
    /// on it if that is still to do.
    async fn mesh_network_of_pool(&self, subnet: Ipv4Net) -> Result<String, CallError> {
        if let Some(network) = network_with(&self.view()?.view, subnet) {
            return Ok(network.spec.name.clone());
        }
        let unbound = self.with(|w| {
            w.bindings.networks.iter().find(|(_, n)| n.subnet == subnet && n.mesh.is_none()).map(|(id, _)| id.clone())
        });
        match unbound {
            Some(id) => self.bind(&id).await,
            None => fail(format!("no mesh network has the pool {subnet}")),
        }
    }

    // Endpoints.

    /// `CreateEndpoint`: remembers the endpoint and has its interface made.
    pub(crate) async fn create_endpoint(
        &self,
        request: proto::EndpointCreate,
    ) -> Result<proto::EndpointCreated, CallError> {
        check_id("network", &request.network_id)?;
        check_id("endpoint", &request.endpoint_id)?;
        let mesh = self.bind(&request.network_id).await?;
        let interface = request.interface.unwrap_or_default();
        let Some((ip, prefix)) = interface.address.split_once('/') else {
            return fail("the endpoint has no IPv4 address: create its network with --ipam-driver mesh");
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| CallError(format!("malformed address {:?}", interface.address)))?;
        let current = self.view()?;
        let network = current.view.network(&mesh).map(|n| (n.spec.vni, n.spec.encrypted, n.spec.subnet));
        let Some((vni, encrypted, subnet)) = network else {
            return fail(format!("mesh network {mesh} is gone"));
        };
        if !subnet.is_some_and(|s| s.contains(&ip) && prefix == s.prefix_len().to_string()) {
            return fail(format!("{} is not an address of mesh network {mesh}", interface.address));
        }
        self.dataplane.preflight(&[(vni, encrypted)]).await.or_else(fail)?;
        let (mac, tell_mac) = match interface.mac_address.as_str() {
            "" => (mac_for(ip), true),
            text => (parse_mac(text)?, false),
        };
        let id = request.endpoint_id;
        self.rebind(|bindings| {
            if bindings.endpoints.contains_key(&id) {
                return fail(format!("endpoint {id} exists already"));
            }
            let endpoint = BoundEndpoint {
                network: request.network_id.clone(),
                ip,
                mac,
                joined: false,
                sandbox: String::new(),
                published: None,
            };
            bindings.endpoints.insert(id.clone(), endpoint);
            Ok(())
        })?;
        let answer = tell_mac.then(|| proto::Interface { mac_address: format_mac(mac), ..Default::default() });
        Ok(proto::EndpointCreated { interface: answer })
    }

    /// `EndpointOperInfo`.
    pub(crate) fn endpoint_info(&self, request: proto::EndpointRef) -> Result<proto::OperInfo, CallError> {
        let endpoint = self.endpoint(&request)?;
        let value = [("ip".to_owned(), endpoint.ip.to_string()), ("mac".to_owned(), format_mac(endpoint.mac))];
        Ok(proto::OperInfo { value: value.into_iter().collect() })
    }

    /// `DeleteEndpoint`: withdraws it and removes its interface.
    pub(crate) async fn delete_endpoint(&self, request: proto::EndpointRef) -> Result<Empty, CallError> {
        let endpoint = self.endpoint(&request)?;
        self.withdraw(&request.network_id, &endpoint).await?;
        self.rebind(|bindings| {
            bindings.endpoints.remove(&request.endpoint_id);
            Ok(())
        })?;
        self.with(|working| working.reserved.remove(&endpoint.ip));
        Ok(Empty {})
    }

    /// `Join`: hands over the endpoint's interface, then publishes it.
    pub(crate) async fn join(self: &Arc<Self>, request: proto::JoinRequest) -> Result<proto::Joined, CallError> {
        let sandbox = request.sandbox_key;
        let reference = proto::EndpointRef { network_id: request.network_id, endpoint_id: request.endpoint_id };
        let endpoint = self.endpoint(&reference)?;
        let mesh = self.bind(&reference.network_id).await?;
        let (vni, gateway) = self
            .view()?
            .view
            .network(&mesh)
            .map(|n| (n.spec.vni, n.spec.gateway.filter(|_| !n.spec.internal)))
            .ok_or_else(|| CallError(format!("no mesh network {mesh}")))?;
        let id = reference.endpoint_id;
        self.dataplane.poke();
        if !self.dataplane.wait_handed(&id, HANDOFF_LIMIT).await {
            return fail(format!("the interface for endpoint {id} could not be made (the mesh agent's log says why)"));
        }
        // The route to mesh's resolver goes on the container's first mesh
        // interface only: a second one would clash with it.
        let routed = self.rebind(|bindings| {
            let routed = bindings.endpoints.values().any(|e| e.joined && !sandbox.is_empty() && e.sandbox == sandbox);
            if let Some(endpoint) = bindings.endpoints.get_mut(&id) {
                endpoint.joined = true;
                endpoint.sandbox.clone_from(&sandbox);
            }
            Ok(routed)
        })?;
        tokio::spawn(Arc::clone(self).publish(id.clone()));
        let (_, handed) = handoff_names(&Handoff { id, mac: endpoint.mac }, vni);
        Ok(proto::Joined {
            interface_name: proto::InterfaceName { src_name: handed, dst_prefix: proto::INTERFACE_PREFIX },
            static_routes: if routed {
                Vec::new()
            } else {
                vec![proto::StaticRoute { destination: DNS_ROUTE.into(), route_type: 1 }]
            },
            gateway: gateway.map(|g| g.to_string()),
            disable_gateway_service: true,
        })
    }

    /// `Leave`: withdraws the endpoint (its interface goes with `DeleteEndpoint`).
    pub(crate) async fn leave(&self, request: proto::EndpointRef) -> Result<Empty, CallError> {
        let endpoint = self.endpoint(&request)?;
        self.withdraw(&request.network_id, &endpoint).await?;
        self.rebind(|bindings| {
            if let Some(endpoint) = bindings.endpoints.get_mut(&request.endpoint_id) {
                endpoint.joined = false;
                endpoint.published = None;
                endpoint.sandbox.clear();
            }
            Ok(())
        })?;
        Ok(Empty {})
    }

    /// Calls that name an endpoint and need nothing done: checks the names.
    pub(crate) fn acknowledge(&self, request: proto::EndpointRef) -> Result<Empty, CallError> {
        self.endpoint(&request).map(|_| Empty {})
    }

    fn endpoint(&self, reference: &proto::EndpointRef) -> Result<BoundEndpoint, CallError> {
        check_id("network", &reference.network_id)?;
        check_id("endpoint", &reference.endpoint_id)?;
        let found = self.with(|w| w.bindings.endpoints.get(&reference.endpoint_id).cloned());
        match found {
            Some(endpoint) if endpoint.network == reference.network_id => Ok(endpoint),
            Some(_) => fail(format!("endpoint {} is not on network {}", reference.endpoint_id, reference.network_id)),
            None => fail(format!("no endpoint {} here", reference.endpoint_id)),
        }
    }

    async fn withdraw(&self, network_id: &str, endpoint: &BoundEndpoint) -> Result<(), CallError> {
        let (Some(name), Some(mesh)) =
            (&endpoint.published, self.with(|w| w.bindings.mesh_network(network_id).map(str::to_owned)))
        else {
            return Ok(());
        };
        match self.agent.withdraw_container(name, &mesh).await {
            Ok(()) | Err(AgentError::NotFound(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Publishes joined endpoint `id` under its container's name and
    /// aliases, asked of the engine; logs what fails.
    async fn publish(self: Arc<Self>, id: String) {
        if let Err(error) = self.try_publish(&id).await {
            tracing::warn!(endpoint = %id, error = %error.0, "cannot publish a Docker endpoint");
        }
    }

    /// Publishes endpoint `id` under its container's name as soon as the
    /// engine lists it (during the container's start, so other hosts
    /// program it before the container runs), then again with its aliases
    /// (which the engine tells once the start is done).
    async fn try_publish(&self, id: &str) -> Result<(), CallError> {
        let Some(endpoint) = self.with(|w| w.bindings.endpoints.get(id).cloned()) else { return Ok(()) };
        let mesh = self.bind(&endpoint.network).await?;
        let (container, docker_network) = self.container_of(&endpoint.network, id).await?;
        let names = vec![mesh_name(&container), fallback_name(id)];
        let Some(name) = self.publish_as(id, &endpoint, &mesh, names, Vec::new()).await? else { return Ok(()) };
        let aliases = match self.engine.aliases(&container, &docker_network).await {
            Ok(aliases) => aliases.unwrap_or_default(),
            Err(error) => return fail(format!("{error:#}")),
        };
        if !aliases.is_empty() {
            let aliases = aliases.iter().map(|a| mesh_name(a)).collect();
            self.publish_as(id, &endpoint, &mesh, vec![name], aliases).await?;
        }
        tracing::info!(container = %container, network = %mesh, ip = %endpoint.ip, "published a Docker endpoint");
        Ok(())
    }

    /// Publishes endpoint `id` under the first free of `names`, unless it
    /// left meanwhile; returns the name, if published.
    async fn publish_as(
        &self,
        id: &str,
        endpoint: &BoundEndpoint,
        mesh: &str,
        names: Vec<String>,
        aliases: Vec<String>,
    ) -> Result<Option<String>, CallError> {
        let published = self
            .agent
            .publish_container(ContainerEndpoint {
                names,
                network: mesh.to_owned(),
                ip: endpoint.ip,
                mac: endpoint.mac,
                aliases,
            })
            .await?;
        let kept = self.rebind(|bindings| {
            Ok(match bindings.endpoints.get_mut(id).filter(|e| e.joined) {
                Some(endpoint) => {
                    endpoint.published = Some(published.clone());
                    true
                }
                None => false,
            })
        })?;
        if !kept {
            // It left while this was in flight.
            let _ = self.agent.withdraw_container(&published, mesh).await;
            return Ok(None);
        }
        self.with(|working| working.reserved.remove(&endpoint.ip));
        Ok(Some(published))
    }

    /// The name of the container on endpoint `id` of Docker network
    /// `network`, and the network's Docker name.
    async fn container_of(&self, network: &str, id: &str) -> Result<(String, String), CallError> {
        let deadline = tokio::time::Instant::now() + LOOKUP_LIMIT;
        loop {
            let found = match self.engine.network(network).await {
                Ok(Some(listing)) => listing
                    .containers
                    .unwrap_or_default()
                    .into_values()
                    .find(|e| e.endpoint_id == id)
                    .map(|e| (e.name, listing.name)),
                Ok(None) => None,
                Err(error) if tokio::time::Instant::now() >= deadline => return fail(format!("{error:#}")),
                Err(_) => None,
            };
            match found {
                Some(found) => return Ok(found),
                None if tokio::time::Instant::now() >= deadline => {
                    return fail(format!("the Docker engine lists no container on endpoint {id}"))
                }
                None => tokio::time::sleep(LOOKUP_EVERY).await,
            }
        }
    }
}

/// The network of `view` whose subnet is `subnet`.
fn network_with(view: &View, subnet: Ipv4Net) -> Option<&NetworkView> {
    view.networks.values().find(|n| n.spec.subnet == Some(subnet))
}

fn address_answer(ip: Ipv4Addr, subnet: Ipv4Net) -> proto::AddressAnswer {
    proto::AddressAnswer { address: format!("{ip}/{}", subnet.prefix_len()), data: Default::default() }
}

fn parse_subnet(text: &str) -> Result<Ipv4Net, CallError> {
    let subnet: Ipv4Net = text.parse().map_err(|_| CallError(format!("malformed pool {text:?}: give an IPv4 CIDR")))?;
    if subnet.trunc() != subnet {
        return fail(format!("{subnet} is not a network address: did you mean {}?", subnet.trunc()));
    }
    if subnet.prefix_len() > 30 {
        return fail(format!("subnet {subnet} is too small: the longest prefix is /30"));
    }
    Ok(subnet)
}

/// Docker's ids are 64 hex digits; anything else is refused before it
/// reaches a file name or a log line.
fn check_id(what: &str, id: &str) -> Result<(), CallError> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        fail(format!("malformed {what} id {id:?}: Docker's ids are hex digits"))
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], CallError> {
    let bad = || CallError(format!("malformed MAC address {text:?}"));
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked() {
        assert!(check_id("network", &"ab".repeat(32)).is_ok());
        for bad in ["", "../x", &"a".repeat(65), "zz"] {
            assert!(check_id("network", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_mac("02:6d:0a:00:00:01").ok(), Some([2, 0x6d, 10, 0, 0, 1]));
        for bad in ["", "02:6d", "02:6d:0a:00:00:01:02", "zz:6d:0a:00:00:01"] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(format_mac([2, 0x6d, 10, 0, 0, 1]), "02:6d:0a:00:00:01");
        assert!(parse_subnet("10.1.0.0/24").is_ok());
        for bad in ["10.1.0.1/24", "10.1.0.0/31", "x", "fd00::/64"] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
    }
}
