//! The replicated view as the control API shows it.

use std::collections::HashMap;

use mesh_membership::records::view::{EndpointState, EndpointView, NetworkView, View};
use mesh_membership::{MemberInfo, NodeId};

use crate::api::{EndpointBody, NetworkBody, SandboxBody, SandboxEndpointBody};
use crate::datadir::Attachment;

/// Node names by id, from the member list.
pub(super) struct Names(HashMap<NodeId, String>);

impl Names {
    pub(super) fn new(members: &[MemberInfo]) -> Self {
        Self(members.iter().map(|m| (m.identity.id, m.identity.name.clone())).collect())
    }

    /// The node's name, or its short id if it is not a known member.
    pub(super) fn of(&self, id: NodeId) -> String {
        self.0.get(&id).cloned().unwrap_or_else(|| format!("{id:?}"))
    }
}

/// A network with its endpoints and conflicts.
pub(super) fn network(view: &View, network: &NetworkView, names: &Names) -> NetworkBody {
    let spec = &network.spec;
    NetworkBody {
        name: spec.name.clone(),
        id: network.id.to_string(),
        driver: spec.driver.as_str().into(),
        vni: spec.vni,
        subnet: spec.subnet.map(|s| s.to_string()),
        gateway: spec.gateway.map(|g| g.to_string()),
        mtu: spec.mtu,
        internal: spec.internal,
        encrypted: spec.encrypted,
        mtu_effective: None,
        mtu_from: None,
        created_by: names.of(network.id.creator),
        created_ms: spec.created_ms,
        endpoints: network.endpoints.iter().map(|e| endpoint(e, names)).collect(),
        conflicts: view
            .conflicts_of(&spec.name)
            .map(|lost| {
                format!(
                    "network {} (vni {}, subnet {}) created on {} lost {}",
                    lost.spec.name,
                    lost.spec.vni,
                    lost.spec.subnet.map_or_else(|| "none".into(), |s| s.to_string()),
                    names.of(lost.id.creator),
                    lost.reason
                )
            })
            .collect(),
    }
}

/// One endpoint.
pub(super) fn endpoint(endpoint: &EndpointView, names: &Names) -> EndpointBody {
    let (state, conflict) = match &endpoint.state {
        EndpointState::Active => ("active", None),
        EndpointState::OwnerDown => ("owner-down", None),
        EndpointState::OwnerLeft => ("owner-left", None),
        EndpointState::Conflict(reason) => ("conflict", Some(reason.clone())),
    };
    let spec = &endpoint.spec;
    EndpointBody {
        name: endpoint.name.clone(),
        ip: spec.ip.map(|ip| ip.to_string()),
        mac: spec.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
        node: names.of(endpoint.owner),
        node_id: endpoint.owner.to_string(),
        aliases: spec.aliases.clone(),
        static_ip: spec.static_ip,
        state: state.into(),
        conflict,
        readdressed_from: spec.readdressed_from.map(|ip| ip.to_string()),
    }
}

/// Sandbox `name` of this host (`me`), attached as `attachment`: its
/// endpoints in the order of its interfaces.
pub(super) fn sandbox(
    view: &View,
    me: NodeId,
    name: &str,
    attachment: Option<&Attachment>,
    names: &Names,
) -> SandboxBody {
    let order = |network: &str| attachment.and_then(|a| a.networks.iter().position(|n| n == network));
    let mut endpoints: Vec<SandboxEndpointBody> = view
        .endpoints()
        .filter(|e| e.owner == me && e.name == name)
        .map(|e| {
            let bridged = view.network(&e.spec.network).is_some_and(|n| n.spec.driver.is_bridged());
            SandboxEndpointBody {
                network: e.spec.network.clone(),
                interface: attachment.filter(|_| bridged).and_then(|a| a.interface(&e.spec.network)),
                endpoint: endpoint(e, names),
            }
        })
        .collect();
    endpoints.sort_by_key(|e| (order(&e.network).unwrap_or(usize::MAX), e.network.clone()));
    SandboxBody {
        name: name.to_owned(),
        netns: attachment.map(|a| a.netns.display().to_string()),
        ports: attachment.map(|a| a.ports.iter().map(ToString::to_string).collect()).unwrap_or_default(),
        endpoints,
    }
}
