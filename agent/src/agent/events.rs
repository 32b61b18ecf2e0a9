//! `mesh events`: membership changes as the membership task reports them,
//! and record changes as differences between successive views.

use std::collections::{BTreeMap, HashMap};

use mesh_membership::records::view::{EndpointState, EndpointView, View};
use mesh_membership::{Event, NodeId, NodeIdentity};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{Agent, AgentError};
use crate::api::EventBody;
use crate::clock::unix_ms;

/// Lines buffered for a slow client before the stream stops.
const BACKLOG: usize = 1024;

impl Agent {
    /// Streams changes from now on, one JSON line each, until the receiver
    /// is dropped, the session ends or the client falls [`BACKLOG`]
    /// lines behind.
    pub(crate) async fn events(&self) -> Result<mpsc::Receiver<String>, AgentError> {
        let membership = self.require_membership()?;
        let mut events = membership.subscribe();
        let mut views = membership.watch_view();
        let members = membership.members().await.map_err(|e| AgentError::Internal(e.into()))?;
        let mut names: HashMap<NodeId, String> =
            members.into_iter().map(|m| (m.identity.id, m.identity.name)).collect();
        let (lines, receiver) = mpsc::channel(BACKLOG);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut before = views.borrow_and_update().view.clone();
            loop {
                let bodies = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = lines.closed() => return,
                    event = events.recv() => match event {
                        Ok(event) => member_event(&event, &mut names).into_iter().collect(),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    },
                    changed = views.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let after = views.borrow_and_update().view.clone();
                        let bodies = view_changes(&before, &after, &names);
                        before = after;
                        bodies
                    }
                };
                for body in bodies {
                    let Ok(line) = serde_json::to_string(&body) else { continue };
                    if lines.try_send(line + "\n").is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }
}

/// The event an operator sees for a membership event, if any; keeps
/// `names` current.
fn member_event(event: &Event, names: &mut HashMap<NodeId, String>) -> Option<EventBody> {
    let (kind, who): (&str, &NodeIdentity) = match event {
        Event::MemberUp(id) => ("member-up", id),
        Event::MemberDown(id) => ("member-down", id),
        Event::MemberLeft(id) => ("member-left", id),
        Event::MemberRenamed { new, .. } => ("member-restarted", new),
        Event::Removed(id) => {
            let name = names.get(id).cloned().unwrap_or_else(|| id.to_string());
            return Some(body("member-removed", Some(name), None, None, String::new()));
        }
        _ => return None,
    };
    names.insert(who.id, who.name.clone());
    Some(body(kind, Some(who.name.clone()), None, None, who.addr.to_string()))
}

/// The record changes from view `before` to view `after`.
fn view_changes(before: &View, after: &View, names: &HashMap<NodeId, String>) -> Vec<EventBody> {
    let mut bodies = Vec::new();
    for (name, network) in &after.networks {
        if before.networks.get(name).is_none_or(|old| old.id != network.id) {
            let subnet = network.spec.subnet.map(|s| format!(" subnet {s}")).unwrap_or_default();
            let detail = format!("{} vni {}{subnet}", network.spec.driver.as_str(), network.spec.vni);
            bodies.push(body("network-created", None, Some(name.clone()), None, detail));
        }
    }
    for (name, network) in &before.networks {
        if after.networks.get(name).is_none_or(|new| new.id != network.id) {
            bodies.push(body("network-removed", None, Some(name.clone()), None, String::new()));
        }
    }
    for lost in after.lost.iter().filter(|lost| !before.lost.iter().any(|old| old.id == lost.id)) {
        bodies.push(body("network-conflict", None, Some(lost.spec.name.clone()), None, lost.reason.clone()));
    }
    let (old, new) = (endpoints(before), endpoints(after));
    let name_of = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    for (key, endpoint) in &new {
        let (network, owner, name) = key;
        let event = |kind: &str, detail: String| {
            body(kind, Some(name_of(owner)), Some((*network).to_owned()), Some((*name).to_owned()), detail)
        };
        match old.get(key) {
            None => bodies.push(event("endpoint-added", describe(endpoint))),
            Some(was) if was.state != endpoint.state || was.spec.ip != endpoint.spec.ip => {
                bodies.push(event("endpoint-changed", describe(endpoint)));
            }
            Some(_) => {}
        }
    }
    for (network, owner, name) in old.keys().filter(|key| !new.contains_key(*key)) {
        let (network, name) = ((*network).to_owned(), (*name).to_owned());
        bodies.push(body("endpoint-removed", Some(name_of(owner)), Some(network), Some(name), String::new()));
    }
    bodies
}

/// Every endpoint of `view`, orphans included, by network, owner and name.
fn endpoints(view: &View) -> BTreeMap<(&str, NodeId, &str), &EndpointView> {
    view.endpoints().map(|e| ((e.spec.network.as_str(), e.owner, e.name.as_str()), e)).collect()
}

/// An endpoint's address and state, in words.
fn describe(endpoint: &EndpointView) -> String {
    let ip = endpoint.spec.ip.map_or_else(|| "no address".to_owned(), |ip| ip.to_string());
    let state = match &endpoint.state {
        EndpointState::Active => "active".to_owned(),
        EndpointState::OwnerDown => "its host is down".to_owned(),
        EndpointState::OwnerLeft => "its host left".to_owned(),
        EndpointState::Conflict(why) => format!("conflict: {why}"),
    };
    format!("{ip}, {state}")
}

fn body(
    event: &str,
    member: Option<String>,
    network: Option<String>,
    endpoint: Option<String>,
    detail: String,
) -> EventBody {
    EventBody { at_ms: unix_ms(), event: event.to_owned(), member, network, endpoint, detail }
}
