//! `mesh network create | ls | inspect | rm`: cluster-scoped networks,
//! checked against this node's view before anything is published.

use ipnet::Ipv4Net;
use mesh_membership::records::view::View;
use mesh_membership::records::{check_name, Driver, NetworkSpec, MAX_VNI, MTU_RANGE};
use mesh_membership::{MemberInfo, PublishError, Status};

use super::bodies::{self, Names};
use super::{Agent, AgentError};
use crate::api::{NetworkBody, NetworkCreateBody};
use crate::clock::unix_ms;
use crate::ipam;

impl Agent {
    /// Creates a network; any member may.
    pub(crate) async fn network_create(&self, body: NetworkCreateBody) -> Result<NetworkBody, AgentError> {
        let name = self
            .change(move |core, now| {
                let view = core.view();
                let spec = network_spec(&view, body)?;
                if spec.encrypted {
                    check_every_member_encrypts(&view, &core.members())?;
                }
                let name = spec.name.clone();
                core.create_network(now, spec).map_err(publish_error)?;
                Ok(name)
            })
            .await?;
        tracing::info!(network = %name, "created network");
        self.network(&name).await
    }

    /// Every network, by name.
    pub(crate) async fn networks(&self) -> Result<Vec<NetworkBody>, AgentError> {
        let networks: Vec<NetworkBody> = self
            .read(|core| {
                let (view, names) = (core.view(), Names::new(&core.members()));
                view.networks.values().map(|n| bodies::network(&view, n, &names)).collect()
            })
            .await?;
        Ok(networks.into_iter().map(|n| self.with_mtu(n)).collect())
    }

    /// One network by name.
    pub(crate) async fn network(&self, name: &str) -> Result<NetworkBody, AgentError> {
        let name = name.to_owned();
        let network = self
            .read(move |core| {
                let (view, names) = (core.view(), Names::new(&core.members()));
                let network = view.network(&name).ok_or_else(|| no_such_network(&name))?;
                Ok::<_, AgentError>(bodies::network(&view, network, &names))
            })
            .await??;
        Ok(self.with_mtu(network))
    }

    /// `network` with the MTU its interfaces get on this host, and why.
    fn with_mtu(&self, mut network: NetworkBody) -> NetworkBody {
        match network.mtu {
            Some(mtu) => network.mtu_effective = Some(u32::from(mtu)),
            None if network.driver == Driver::Null.as_str() => {}
            None => {
                let vxlan = network.driver == Driver::Overlay.as_str();
                if let Some((mtu, from)) = self.dataplane.default_mtu(vxlan, network.encrypted) {
                    (network.mtu_effective, network.mtu_from) = (Some(mtu), Some(from));
                }
            }
        }
        network
    }

    /// Removes a network, refused while it has endpoints. Networks that lost
    /// the name to it go too.
    pub(crate) async fn network_rm(&self, name: &str) -> Result<(), AgentError> {
        let name = name.to_owned();
        let removed = name.clone();
        self.change(move |core, now| {
            let view = core.view();
            let network = view.network(&name).ok_or_else(|| no_such_network(&name))?;
            if !network.endpoints.is_empty() {
                let names = Names::new(&core.members());
                let endpoints: Vec<String> =
                    network.endpoints.iter().map(|e| format!("{} on {}", e.name, names.of(e.owner))).collect();
                return Err(AgentError::Conflict(format!(
                    "network {name} still has {} endpoint(s): {}; remove them first (`mesh sandbox rm NAME` on their hosts)",
                    endpoints.len(),
                    endpoints.join(", ")
                )));
            }
            let losers = view.lost.iter().filter(|l| l.spec.name == name).map(|l| l.id);
            std::iter::once(network.id).chain(losers).try_for_each(|id| core.delete_network(now, id)).map_err(publish_error)
        })
        .await?;
        tracing::info!(network = %removed, "removed network");
        Ok(())
    }
}

pub(super) fn no_such_network(name: &str) -> AgentError {
    AgentError::NotFound(format!("no network named {name} (`mesh network ls` lists them)"))
}

pub(super) fn publish_error(error: PublishError) -> AgentError {
    match error {
        PublishError::Invalid(invalid) => AgentError::BadRequest(invalid.to_string()),
        PublishError::NotFound => AgentError::NotFound("it no longer exists".into()),
        forged @ PublishError::Forged(_) => AgentError::Internal(forged.into()),
    }
}

/// Checks a create request as on a cluster with no network yet.
pub(crate) fn check_network_create(body: NetworkCreateBody) -> Result<(), AgentError> {
    network_spec(&View::default(), body).map(drop)
}

/// Checks a create request against the view and fills in the defaults.
fn network_spec(view: &View, body: NetworkCreateBody) -> Result<NetworkSpec, AgentError> {
    let bad = AgentError::BadRequest;
    check_name("network", &body.name).map_err(|e| bad(e.to_string()))?;
    if view.network(&body.name).is_some() {
        return Err(AgentError::Conflict(format!("network {} already exists", body.name)));
    }
    let driver = match body.driver.as_deref().unwrap_or("overlay") {
        "overlay" => Driver::Overlay,
        "bridge" => Driver::Bridge,
        "null" => Driver::Null,
        other => return Err(bad(format!("unknown driver {other:?}: use overlay, bridge or null"))),
    };
    if let Some(mtu) = body.mtu.filter(|mtu| !MTU_RANGE.contains(mtu)) {
        return Err(bad(format!("MTU {mtu} is out of range ({}-{})", MTU_RANGE.start(), MTU_RANGE.end())));
    }
    let encrypted = encrypted_for(view, driver, body.encrypted)?;
    let (subnet, vni) = match driver {
        Driver::Null if body.subnet.is_some() || body.vni.is_some() => {
            return Err(bad("a null network has no subnet or VNI".into()));
        }
        Driver::Null if body.internal => return Err(bad("a null network has no way out to close".into())),
        Driver::Null => (None, 0),
        Driver::Overlay | Driver::Bridge => (Some(subnet_for(view, &body)?), vni_for(view, &body)?),
    };
    let spec = match subnet {
        Some(subnet) => NetworkSpec {
            driver,
            internal: body.internal,
            encrypted,
            mtu: body.mtu,
            ..NetworkSpec::overlay(&body.name, vni, subnet, unix_ms())
        },
        None => NetworkSpec {
            name: body.name,
            driver,
            internal: false,
            encrypted: false,
            vni,
            subnet: None,
            gateway: None,
            mtu: body.mtu,
            created_ms: unix_ms(),
        },
    };
    spec.validate().map_err(|e| bad(e.to_string()))?;
    Ok(spec)
}

/// Whether a new network of `driver` is encrypted, as asked
/// (`requested`) or, if not asked, as the cluster's policy says.
fn encrypted_for(view: &View, driver: Driver, requested: Option<bool>) -> Result<bool, AgentError> {
    let policy = view.policy().is_some_and(|p| p.encrypt_networks);
    match (requested, driver) {
        (Some(false), _) if policy => Err(AgentError::BadRequest(
            "this cluster encrypts every network (mesh init --encrypt-networks): --encrypted=false is refused".into(),
        )),
        (Some(true), Driver::Overlay) => Ok(true),
        (Some(true), other) => Err(AgentError::BadRequest(format!(
            "only an overlay network crosses hosts: a {} network cannot be encrypted",
            other.as_str()
        ))),
        (None, Driver::Overlay) => Ok(policy),
        (_, _) => Ok(false),
    }
}

/// Refuses an encrypted network while a member that has not left
/// announces no WireGuard key: it runs a mesh from before encryption, and
/// would never receive the network. (A member that announces a key but
/// has no way to carry encrypted networks refuses sandboxes on them
/// itself, saying why.)
fn check_every_member_encrypts(view: &View, members: &[MemberInfo]) -> Result<(), AgentError> {
    let old = members.iter().find(|m| m.status != Status::Left && !view.members().contains_key(&m.identity.id));
    match old {
        Some(member) => Err(AgentError::Conflict(format!(
            "{} announces no WireGuard key: it runs a mesh from before encryption; upgrade it first",
            member.identity.name
        ))),
        None => Ok(()),
    }
}

fn subnet_for(view: &View, body: &NetworkCreateBody) -> Result<Ipv4Net, AgentError> {
    let Some(text) = &body.subnet else {
        return ipam::default_subnet(view, &body.name, &[]).ok_or_else(|| {
            AgentError::Conflict("the default pool 10.128.0.0/9 has no free /24 left: give --subnet".into())
        });
    };
    let subnet: Ipv4Net = text.parse().map_err(|_| {
        AgentError::BadRequest(format!("malformed subnet {text:?}: give an IPv4 CIDR such as 10.1.0.0/24"))
    })?;
    if subnet.trunc() != subnet {
        return Err(AgentError::BadRequest(format!(
            "{subnet} is not a network address: did you mean {}?",
            subnet.trunc()
        )));
    }
    if subnet.prefix_len() > 30 {
        return Err(AgentError::BadRequest(format!("subnet {subnet} is too small: the longest prefix is /30")));
    }
    if let Some(other) = ipam::overlapping(view, subnet) {
        return Err(AgentError::Conflict(format!("subnet {subnet} overlaps network {other}'s")));
    }
    Ok(subnet)
}

fn vni_for(view: &View, body: &NetworkCreateBody) -> Result<u32, AgentError> {
    let Some(vni) = body.vni else {
        return ipam::default_vni(view, &body.name).ok_or_else(|| AgentError::Conflict("no VNI is free".into()));
    };
    if !(1..=MAX_VNI).contains(&vni) {
        return Err(AgentError::BadRequest(format!("VNI {vni} is out of range (1-{MAX_VNI})")));
    }
    match ipam::vni_user(view, vni) {
        Some(other) => Err(AgentError::Conflict(format!("VNI {vni} is already used by network {other}"))),
        None => Ok(vni),
    }
}
