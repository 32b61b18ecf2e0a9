//! `mesh sandbox create | ls | rm`: this host's endpoints and their
//! addresses. (The kernel side, a namespace and a veth, is the data
//! plane's.)

use std::net::Ipv4Addr;
use std::path::Path;

use mesh_membership::records::view::View;
use mesh_membership::records::{check_name, mac_for, Driver, EndpointSpec, RecordKey, MAX_ALIASES};
use mesh_membership::{Core, NodeId};

use super::bodies::{self, Names};
use super::networks::{no_such_network, publish_error};
use super::{unix_ms, Agent, AgentError};
use crate::api::{SandboxBody, SandboxCreateBody};
use crate::ipam;

/// How long `sandbox create` waits for the sandbox to be wired.
const WIRE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Agent {
    /// Creates a sandbox's endpoint on a network, with a free address or
    /// the one asked for.
    pub(crate) async fn sandbox_create(&self, body: SandboxCreateBody) -> Result<SandboxBody, AgentError> {
        let name = body.name.clone();
        check_name("sandbox", &name).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let network = body.network.clone();
        let vni = self
            .read(move |core| {
                let view = core.view();
                let network = view.network(&network).ok_or_else(|| no_such_network(&network))?;
                Ok::<_, AgentError>((network.spec.driver == Driver::Overlay).then_some(network.spec.vni))
            })
            .await??;
        self.dataplane.preflight(vni).await.map_err(AgentError::Conflict)?;
        let netns = body.netns.as_deref().map(Path::new);
        let netns = self.dataplane.create_sandbox(&name, netns).map_err(AgentError::Conflict)?;
        let created = self
            .change(move |core, now| {
                let spec = endpoint_spec(core, &body)?;
                core.put_endpoint(now, &body.name, spec).map_err(publish_error)?;
                own_sandbox(core, &body.name)
            })
            .await;
        let sandbox = match created {
            Ok(sandbox) => SandboxBody { netns: Some(netns.display().to_string()), ..sandbox },
            Err(error) => {
                if let Err(cleanup) = self.dataplane.remove_sandbox(&name) {
                    tracing::warn!(sandbox = %name, error = %cleanup, "could not remove the sandbox's namespace");
                }
                return Err(error);
            }
        };
        self.dataplane.poke();
        if vni.is_some() && !self.dataplane.wait_wired(&netns, WIRE_LIMIT).await {
            return Err(AgentError::Internal(anyhow::anyhow!(
                "sandbox {name} is created but not wired to its network yet (the agent log says why); it keeps trying"
            )));
        }
        tracing::info!(sandbox = %name, network = %sandbox.network, ip = ?sandbox.endpoint.ip, "created sandbox");
        Ok(sandbox)
    }

    /// This host's sandboxes, by name.
    pub(crate) async fn sandboxes(&self) -> Result<Vec<SandboxBody>, AgentError> {
        let mut own = self
            .read(|core| {
                let (view, names, me) = (core.view(), Names::new(&core.members()), core.identity().id);
                let own: Vec<SandboxBody> =
                    view.endpoints().filter(|e| e.owner == me).map(|e| bodies::sandbox(e, &names)).collect();
                own
            })
            .await?;
        for sandbox in &mut own {
            sandbox.netns = self.dataplane.netns_of(&sandbox.endpoint.name).map(|p| p.display().to_string());
        }
        own.sort_by(|a, b| a.endpoint.name.cmp(&b.endpoint.name));
        Ok(own)
    }

    /// Removes this host's sandbox `name`.
    pub(crate) async fn sandbox_rm(&self, name: &str) -> Result<(), AgentError> {
        let owned = name.to_owned();
        let deleted = self.change(move |core, now| core.delete_endpoint(now, &owned).map_err(publish_error)).await;
        let attached = self.dataplane.remove_sandbox(name).map_err(AgentError::Conflict)?;
        match deleted {
            Err(AgentError::NotFound(_)) if !attached => Err(AgentError::NotFound(format!(
                "no sandbox named {name} on this host (`mesh sandbox ls` lists them)"
            ))),
            Err(AgentError::NotFound(_)) | Ok(()) => {
                tracing::info!(sandbox = %name, "removed sandbox");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Checks a create request against the view and picks the address.
fn endpoint_spec(core: &Core, body: &SandboxCreateBody) -> Result<EndpointSpec, AgentError> {
    let bad = |e: String| AgentError::BadRequest(e);
    check_name("sandbox", &body.name).map_err(|e| bad(e.to_string()))?;
    if body.aliases.len() > MAX_ALIASES {
        return Err(bad(format!("at most {MAX_ALIASES} aliases per sandbox")));
    }
    for alias in &body.aliases {
        check_name("alias", alias).map_err(|e| bad(e.to_string()))?;
    }
    let me = core.identity().id;
    let key = RecordKey::Endpoint { owner: me, name: body.name.clone() };
    if core.record(&key).is_some_and(|r| !r.is_deleted()) {
        return Err(AgentError::Conflict(format!("a sandbox named {} already exists on this host", body.name)));
    }
    let view = core.view();
    let network = view.network(&body.network).ok_or_else(|| no_such_network(&body.network))?;
    if let Some(other) = network.endpoints.iter().find(|e| e.name == body.name) {
        let names = Names::new(&core.members());
        return Err(AgentError::Conflict(format!(
            "the name {} is already used on network {} by a sandbox on {}",
            body.name,
            body.network,
            names.of(other.owner)
        )));
    }
    let ip = address_for(&view, me, body)?;
    Ok(EndpointSpec {
        network: body.network.clone(),
        aliases: dedup(&body.aliases),
        ip,
        mac: ip.map_or_else(random_mac, mac_for),
        static_ip: body.ip.is_some(),
        created_ms: unix_ms(),
        readdressed_from: None,
    })
}

fn address_for(view: &View, me: NodeId, body: &SandboxCreateBody) -> Result<Option<Ipv4Addr>, AgentError> {
    let network = view.network(&body.network).ok_or_else(|| no_such_network(&body.network))?;
    match (&body.ip, network.spec.subnet) {
        (None, None) => Ok(None),
        (Some(text), _) => {
            let ip: Ipv4Addr = text
                .parse()
                .map_err(|_| AgentError::BadRequest(format!("malformed address {text:?}: give an IPv4 address")))?;
            ipam::check_static(network, ip).map_err(AgentError::Conflict)?;
            Ok(Some(ip))
        }
        (None, Some(subnet)) => ipam::allocate(network, me).map(Some).ok_or_else(|| {
            AgentError::Conflict(format!("network {} has no free address left in {subnet}", body.network))
        }),
    }
}

/// A sandbox of this node as the API shows it.
fn own_sandbox(core: &Core, name: &str) -> Result<SandboxBody, AgentError> {
    let (view, names, me) = (core.view(), Names::new(&core.members()), core.identity().id);
    let sandbox = view.endpoints().find(|e| e.owner == me && e.name == name).map(|e| bodies::sandbox(e, &names));
    sandbox.ok_or_else(|| AgentError::Internal(anyhow::anyhow!("sandbox {name} vanished from the view")))
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
