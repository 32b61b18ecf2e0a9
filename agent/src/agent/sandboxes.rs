//! `mesh sandbox create | ls | rm`: this host's endpoints and their
//! addresses. (The kernel side, a namespace and a veth, is the data
//! plane's.)

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mesh_membership::records::view::{NetworkView, View};
use mesh_membership::records::{check_name, mac_for, Driver, EndpointSpec, MAX_ALIASES};
use mesh_membership::{Core, NodeId};

use super::bodies::{self, Names};
use super::networks::{no_such_network, publish_error};
use super::{Agent, AgentError};
use crate::api::{SandboxBody, SandboxCreateBody};
use crate::clock::unix_ms;
use crate::datadir::{Attachment, PublishedPort};
use crate::ipam;

/// How long `sandbox create` waits for the sandbox to be wired.
const WIRE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most networks one sandbox joins.
const MAX_NETWORKS: usize = 16;
/// Most ports one sandbox publishes.
const MAX_PORTS: usize = 64;

impl Agent {
    /// Creates a sandbox with an endpoint on each of its networks, with
    /// free addresses or the one asked for.
    pub(crate) async fn sandbox_create(&self, body: SandboxCreateBody) -> Result<SandboxBody, AgentError> {
        let name = body.name.clone();
        check_name("sandbox", &name).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        check_networks(&body.networks)?;
        check_interface(&body)?;
        let current = self.current_view()?;
        let bridged = bridged_networks(&current.view, &body.networks)?;
        let vnis: Vec<u32> = bridged.iter().map(|(vni, _)| *vni).collect();
        let ports = published_ports(&current.view, &body)?;
        self.dataplane.preflight(&bridged).await.map_err(AgentError::Conflict)?;
        let netns = body.netns.clone().map(PathBuf::from);
        self.dataplane.check_sandbox(&name, netns.as_deref(), &ports).map_err(AgentError::Conflict)?;
        // Published first: other hosts program it while this one builds
        // the namespace; withdrawn if the build fails.
        let (networks, interface) = (body.networks.clone(), body.interface.clone());
        self.change(move |core, now| publish_endpoints(core, now, &body)).await?;
        let built = self.build_sandbox(&name, netns.as_deref(), &networks, interface.as_deref(), &ports);
        let attachment = match built {
            Ok(attachment) => attachment,
            Err(error) => {
                let owned = name.clone();
                if let Err(cleanup) = self.change(move |core, now| withdraw_endpoints(core, now, &owned)).await {
                    tracing::warn!(sandbox = %name, error = %cleanup, "could not withdraw a sandbox that failed");
                }
                return Err(error);
            }
        };
        self.dataplane.poke();
        if !self.dataplane.wait_wired(&attachment.netns, &vnis, WIRE_LIMIT).await {
            return Err(AgentError::Internal(anyhow::anyhow!(
                "sandbox {name} is created but not wired to its networks yet (the agent log says why); it keeps trying"
            )));
        }
        let sandbox = self.sandbox(&name).await?;
        let addresses: Vec<_> = sandbox.endpoints.iter().map(|e| (&e.network, &e.endpoint.ip)).collect();
        tracing::info!(sandbox = %name, ?addresses, "created sandbox");
        Ok(sandbox)
    }

    /// Gives sandbox `name` its namespace, resolver and `ports`; on
    /// failure leaves none of them.
    fn build_sandbox(
        &self,
        name: &str,
        netns: Option<&Path>,
        networks: &[String],
        interface: Option<&str>,
        ports: &[PublishedPort],
    ) -> Result<Attachment, AgentError> {
        let attachment =
            self.dataplane.create_sandbox(name, netns, networks, interface, ports).map_err(AgentError::Conflict)?;
        if let Err(error) = self.dns.serve(name, &attachment) {
            self.dns.forget(name, &attachment);
            if let Err(cleanup) = self.dataplane.remove_sandbox(name) {
                tracing::warn!(sandbox = %name, error = %cleanup, "could not remove the sandbox's namespace");
            }
            return Err(AgentError::Conflict(error));
        }
        Ok(attachment)
    }

    /// This host's sandbox `name`.
    async fn sandbox(&self, name: &str) -> Result<SandboxBody, AgentError> {
        let attachment = self.dataplane.attachment(name);
        let owned = name.to_owned();
        self.read(move |core| {
            let (view, names, me) = (core.view(), Names::new(&core.members()), core.identity().id);
            bodies::sandbox(&view, me, &owned, attachment.as_ref(), &names)
        })
        .await
    }

    /// This host's sandboxes, by name.
    pub(crate) async fn sandboxes(&self) -> Result<Vec<SandboxBody>, AgentError> {
        let attachments = self.dataplane.attachments();
        self.read(move |core| {
            let (view, names, me) = (core.view(), Names::new(&core.members()), core.identity().id);
            let mut own: BTreeSet<String> = attachments.keys().cloned().collect();
            own.extend(view.endpoints().filter(|e| e.owner == me).map(|e| e.name.clone()));
            own.iter().map(|name| bodies::sandbox(&view, me, name, attachments.get(name), &names)).collect()
        })
        .await
    }

    /// Removes this host's sandbox `name`: its endpoints, then its namespace.
    pub(crate) async fn sandbox_rm(&self, name: &str) -> Result<(), AgentError> {
        if self.is_container(name) {
            return Err(AgentError::Conflict(format!(
                "{name} is a Docker container: remove it with `docker stop` or `docker rm`"
            )));
        }
        let owned = name.to_owned();
        let deleted = self.change(move |core, now| withdraw_endpoints(core, now, &owned)).await?;
        let attached = self.dataplane.remove_sandbox(name).map_err(AgentError::Conflict)?;
        if let Some(attachment) = &attached {
            self.dns.forget(name, attachment);
        }
        if deleted == 0 && attached.is_none() {
            return Err(AgentError::NotFound(format!(
                "no sandbox named {name} on this host (`mesh sandbox ls` lists them)"
            )));
        }
        tracing::info!(sandbox = %name, "removed sandbox");
        Ok(())
    }
}

/// Deletes every endpoint of this node's sandbox `name`; returns how many.
fn withdraw_endpoints(core: &mut Core, now: Instant, name: &str) -> Result<usize, AgentError> {
    let me = core.identity().id;
    let networks: Vec<String> =
        core.view().endpoints().filter(|e| e.owner == me && e.name == name).map(|e| e.spec.network.clone()).collect();
    for network in &networks {
        core.delete_endpoint(now, name, network).map_err(publish_error)?;
    }
    Ok(networks.len())
}

/// Checks the list of networks a sandbox is to join.
fn check_networks(networks: &[String]) -> Result<(), AgentError> {
    let bad = |e: String| Err(AgentError::BadRequest(e));
    if networks.is_empty() {
        return bad("a sandbox needs at least one network".into());
    }
    if networks.len() > MAX_NETWORKS {
        return bad(format!("a sandbox joins at most {MAX_NETWORKS} networks"));
    }
    if let Some(twice) = networks.iter().enumerate().find_map(|(i, n)| networks[..i].contains(n).then_some(n)) {
        return bad(format!("network {twice} is given twice"));
    }
    Ok(())
}

/// Checks the interface name a runtime chose, if it did: for an existing
/// namespace on one network, a valid Linux interface name.
fn check_interface(body: &SandboxCreateBody) -> Result<(), AgentError> {
    let Some(interface) = &body.interface else { return Ok(()) };
    let bad = |e: String| Err(AgentError::BadRequest(e));
    if body.netns.is_none() || body.networks.len() != 1 {
        return bad("an interface name is given only with --netns and one network".into());
    }
    let valid = (1..=15).contains(&interface.len())
        && interface.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && interface != "lo";
    if !valid {
        return bad(format!("interface name {interface:?} is not valid: 1-15 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// The VNIs of `networks` (overlay and bridge ones; a null network has
/// none), each with whether it is encrypted. Refuses a network that does not exist, and a null network beside
/// others (it means loopback only).
fn bridged_networks(view: &View, networks: &[String]) -> Result<Vec<(u32, bool)>, AgentError> {
    let mut vnis = Vec::new();
    for name in networks {
        let network = view.network(name).ok_or_else(|| no_such_network(name))?;
        match network.spec.driver {
            Driver::Overlay | Driver::Bridge => vnis.push((network.spec.vni, network.spec.encrypted)),
            Driver::Null if networks.len() > 1 => {
                return Err(AgentError::BadRequest(format!(
                    "network {name} is a null network (loopback only) and cannot be joined with others"
                )))
            }
            Driver::Null => {}
        }
    }
    Ok(vnis)
}

/// The ports the sandbox publishes, checked: well formed, each host port
/// once, and a network with a way in (bridged and not internal) to
/// forward them to.
fn published_ports(view: &View, body: &SandboxCreateBody) -> Result<Vec<PublishedPort>, AgentError> {
    if body.publish.len() > MAX_PORTS {
        return Err(AgentError::BadRequest(format!("a sandbox publishes at most {MAX_PORTS} ports")));
    }
    let ports = body.publish.iter().map(|p| p.parse()).collect::<Result<Vec<PublishedPort>, _>>();
    let ports = ports.map_err(AgentError::BadRequest)?;
    if let Some(twice) = ports.iter().enumerate().find_map(|(i, p)| {
        ports[..i].iter().any(|q| (q.protocol, q.host_port) == (p.protocol, p.host_port)).then_some(p)
    }) {
        return Err(AgentError::BadRequest(format!("host port {} is published twice", twice.host_side())));
    }
    let way_in = |name: &String| view.network(name).is_some_and(|n| n.spec.driver.is_bridged() && !n.spec.internal);
    if !ports.is_empty() && !body.networks.iter().any(way_in) {
        return Err(AgentError::BadRequest(format!(
            "sandbox {} has no network with a way in (its networks are internal or null): publish on one that is not",
            body.name
        )));
    }
    Ok(ports)
}

/// Publishes the sandbox's endpoint on each of its networks: all or none.
fn publish_endpoints(core: &mut Core, now: Instant, body: &SandboxCreateBody) -> Result<(), AgentError> {
    let bad = |e: String| AgentError::BadRequest(e);
    if body.aliases.len() > MAX_ALIASES {
        return Err(bad(format!("at most {MAX_ALIASES} aliases per sandbox")));
    }
    for alias in &body.aliases {
        check_name("alias", alias).map_err(|e| bad(e.to_string()))?;
    }
    let me = core.identity().id;
    let view = core.view();
    if view.endpoints().any(|e| e.owner == me && e.name == body.name) {
        return Err(AgentError::Conflict(format!("a sandbox named {} already exists on this host", body.name)));
    }
    let mut specs = Vec::new();
    for (i, network) in body.networks.iter().enumerate() {
        let ip = if i == 0 { body.ip.as_deref() } else { None };
        specs.push(endpoint_spec(core, &view, me, &body.name, network, ip, &body.aliases)?);
    }
    for (i, spec) in specs.into_iter().enumerate() {
        if let Err(error) = core.put_endpoint(now, &body.name, spec) {
            for network in &body.networks[..i] {
                let _ = core.delete_endpoint(now, &body.name, network);
            }
            return Err(publish_error(error));
        }
    }
    Ok(())
}

/// Checks sandbox `name`'s endpoint on `network` against the view and
/// picks its address (`ip` if given).
fn endpoint_spec(
    core: &Core,
    view: &View,
    me: NodeId,
    name: &str,
    network: &str,
    ip: Option<&str>,
    aliases: &[String],
) -> Result<EndpointSpec, AgentError> {
    let on = view.network(network).ok_or_else(|| no_such_network(network))?;
    if let Some(other) = on.endpoints.iter().find(|e| e.name == name) {
        let names = Names::new(&core.members());
        return Err(AgentError::Conflict(format!(
            "the name {name} is already used on network {network} by a sandbox on {}",
            names.of(other.owner)
        )));
    }
    let static_ip = ip.is_some();
    let ip = address_for(on, me, ip)?;
    Ok(EndpointSpec {
        network: network.to_owned(),
        aliases: dedup(aliases),
        ip,
        mac: ip.map_or_else(random_mac, mac_for),
        static_ip,
        created_ms: unix_ms(),
        readdressed_from: None,
    })
}

fn address_for(network: &NetworkView, me: NodeId, ip: Option<&str>) -> Result<Option<Ipv4Addr>, AgentError> {
    match (ip, network.spec.subnet) {
        (None, None) => Ok(None),
        (Some(text), _) => {
            let ip: Ipv4Addr = text
                .parse()
                .map_err(|_| AgentError::BadRequest(format!("malformed address {text:?}: give an IPv4 address")))?;
            ipam::check_static(network, ip).map_err(AgentError::Conflict)?;
            Ok(Some(ip))
        }
        (None, Some(subnet)) => ipam::allocate(network, me, &Default::default()).map(Some).ok_or_else(|| {
            AgentError::Conflict(format!("network {} has no free address left in {subnet}", network.spec.name))
        }),
    }
}

fn dedup(aliases: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for alias in aliases {
        if !out.contains(alias) {
            out.push(alias.clone());
        }
    }
    out
}

/// A random locally administered unicast MAC (for an endpoint without an address).
fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}
