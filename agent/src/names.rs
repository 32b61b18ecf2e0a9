//! DNS for sandboxes: the name table kept in step with the view, a
//! resolver inside each sandbox's namespace at 127.0.0.11:53 (Docker's
//! address; a socket opened inside the namespace needs no NAT), and the
//! resolv.conf that points an agent-made namespace at it.
//!
//! Only active endpoints are named: one whose host is down, or that lost
//! its address in a conflict, stops resolving with the view change that
//! says so.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use mesh_dns::{Endpoint, NameTable, Node, Resolver, Scope, OWN_ADDRESS};
use mesh_membership::records::view::{EndpointState, View};
use mesh_membership::records::Driver;
use mesh_membership::{MemberInfo, Membership, NodeId, Status};
use mesh_netdev::netns;
use tokio_util::sync::CancellationToken;

use crate::config::HOST_DNS;
use crate::datadir::Attachment;
use crate::metrics::Metrics;

/// What an agent-made sandbox's resolv.conf says.
const RESOLV_CONF: &str = "# Written by mesh: names resolve through the agent's resolver in this namespace.\nnameserver 127.0.0.11\noptions ndots:0\n";

/// The resolver and its listeners, one per sandbox.
pub(crate) struct SandboxDns {
    resolver: Arc<Resolver>,
    listeners: Mutex<HashMap<String, CancellationToken>>,
    shutdown: CancellationToken,
}

impl SandboxDns {
    /// Resolvers that forward to `upstreams`, counting their answers in
    /// `metrics`, until `shutdown`.
    pub(crate) fn new(upstreams: &[SocketAddr], metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let observer: Arc<dyn mesh_dns::Observer> = metrics;
        Self { resolver: Resolver::new(upstreams, Some(observer)), listeners: Mutex::new(HashMap::new()), shutdown }
    }

    /// Serves names inside sandbox `name`'s namespace (again, if it was
    /// served already) and, if the agent made the namespace, points its
    /// resolv.conf there.
    pub(crate) fn serve(&self, name: &str, attachment: &Attachment) -> Result<(), String> {
        self.stop(name);
        let listen = SocketAddr::new(IpAddr::V4(OWN_ADDRESS), 53);
        let sockets = netns::run_in(&attachment.netns, move || {
            let io = |source| mesh_netdev::NetdevError::Io {
                what: "cannot serve DNS on",
                path: listen.to_string().into(),
                source,
            };
            mesh_dns::bind(listen).map_err(io)
        });
        let sockets = match sockets {
            Ok(sockets) => sockets,
            Err(error) => return Err(format!("sandbox {name}: {error}")),
        };
        let token = self.shutdown.child_token();
        let scope = Scope::Networks(attachment.networks.clone());
        self.resolver.serve(sockets, scope, token.clone()).map_err(|e| format!("sandbox {name}: DNS: {e}"))?;
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), token);
        if attachment.created {
            write_resolv_conf(&attachment.netns).map_err(|e| format!("sandbox {name}: {e}"))?;
        }
        Ok(())
    }

    /// Serves every network's names on [`HOST_DNS`] port 53 in the
    /// agent's own namespace.
    pub(crate) fn serve_host(&self) -> Result<(), String> {
        let listen = SocketAddr::new(IpAddr::V4(HOST_DNS), 53);
        let sockets = mesh_dns::bind(listen).map_err(|e| format!("cannot serve DNS on {listen}: {e}"))?;
        self.resolver
            .serve(sockets, Scope::All, self.shutdown.child_token())
            .map_err(|e| format!("cannot serve DNS on {listen}: {e}"))
    }

    /// Stops serving sandbox `name`.
    fn stop(&self, name: &str) {
        if let Some(token) = self.listeners.lock().unwrap_or_else(PoisonError::into_inner).remove(name) {
            token.cancel();
        }
    }

    /// Stops serving sandbox `name`, gone from `attachment`, and removes
    /// the resolv.conf written for it.
    pub(crate) fn forget(&self, name: &str, attachment: &Attachment) {
        self.stop(name);
        if attachment.created {
            remove_resolv_conf(&attachment.netns);
        }
    }

    /// Keeps the name table in step with the view until the session ends.
    pub(crate) async fn follow(self: Arc<Self>, membership: Membership) {
        let mut views = membership.watch_view();
        loop {
            let view = views.borrow_and_update().view.clone();
            let Ok((members, me)) = membership.with_core(|core, _| (core.members(), core.identity().id)).await else {
                return;
            };
            self.resolver.set_table(table_of(&view, &members, me));
            if views.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The names of `view`'s active endpoints (on a bridge network, only those
/// of this host, `me`: the others cannot be reached from here) and of the
/// live `members`.
fn table_of(view: &View, members: &[MemberInfo], me: NodeId) -> NameTable {
    let endpoints: Vec<Endpoint> = view
        .networks
        .values()
        .flat_map(|network| {
            let host_local = network.spec.driver == Driver::Bridge;
            network.endpoints.iter().filter(move |e| !host_local || e.owner == me)
        })
        .filter(|e| e.state == EndpointState::Active)
        .filter_map(|e| {
            Some(Endpoint {
                name: e.name.clone(),
                network: e.spec.network.clone(),
                aliases: e.spec.aliases.clone(),
                ip: e.spec.ip?,
            })
        })
        .collect();
    let nodes: Vec<Node> = members
        .iter()
        .filter(|m| matches!(m.status, Status::Alive | Status::Suspect))
        .map(|m| Node { name: m.identity.name.clone(), ip: m.identity.addr.ip() })
        .collect();
    NameTable::new(&endpoints, &nodes)
}

/// Writes the resolv.conf `ip netns exec` gives the named namespace at `netns`.
fn write_resolv_conf(netns: &Path) -> std::io::Result<()> {
    let Some(dir) = netns::etc_of(netns) else { return Ok(()) };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("resolv.conf"), RESOLV_CONF)
}

/// Removes the resolv.conf (and its directory) written for the named
/// namespace at `netns`.
fn remove_resolv_conf(netns: &Path) {
    let Some(dir) = netns::etc_of(netns) else { return };
    let _ = std::fs::remove_file(dir.join("resolv.conf"));
    let _ = std::fs::remove_dir(&dir);
}
