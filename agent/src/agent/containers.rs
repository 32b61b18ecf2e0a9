//! Docker's containers as mesh endpoints: the plugin (`crate::docker`)
//! wires them, and here they are published under their container names.
//! Docker holds their addresses (it configures them in the container), so
//! they are static: a conflict leaves them unprogrammed rather than moved.

use std::net::Ipv4Addr;
use std::sync::PoisonError;

use mesh_membership::records::{check_name, EndpointSpec, MAX_ALIASES};

use super::networks::{no_such_network, publish_error};
use super::{Agent, AgentError};
use crate::clock::unix_ms;

/// A container's endpoint on one mesh network.
#[derive(Debug, Clone)]
pub(crate) struct ContainerEndpoint {
    /// The names to try, in order: the first one no other endpoint of the
    /// network holds is published.
    pub(crate) names: Vec<String>,
    pub(crate) network: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) mac: [u8; 6],
    pub(crate) aliases: Vec<String>,
}

impl Agent {
    /// Publishes a container's endpoint; returns the name it got.
    pub(crate) async fn publish_container(&self, endpoint: ContainerEndpoint) -> Result<String, AgentError> {
        let network = endpoint.network.clone();
        self.change(move |core, now| {
            let view = core.view();
            let me = core.identity().id;
            let network = view.network(&endpoint.network).ok_or_else(|| no_such_network(&endpoint.network))?;
            let free = |name: &String| {
                check_name("endpoint", name).is_ok()
                    && !network.endpoints.iter().any(|e| &e.name == name && e.owner != me)
            };
            let name = endpoint.names.iter().find(|n| free(n)).cloned().ok_or_else(|| {
                AgentError::Conflict(format!(
                    "none of the names {:?} is free on network {}",
                    endpoint.names, endpoint.network
                ))
            })?;
            let mut aliases: Vec<String> = Vec::new();
            for alias in endpoint.aliases.iter().filter(|a| check_name("alias", a).is_ok() && **a != name) {
                if !aliases.contains(alias) && aliases.len() < MAX_ALIASES {
                    aliases.push(alias.clone());
                }
            }
            let spec = EndpointSpec {
                network: endpoint.network.clone(),
                aliases,
                ip: Some(endpoint.ip),
                mac: endpoint.mac,
                static_ip: true,
                created_ms: unix_ms(),
                readdressed_from: None,
            };
            core.put_endpoint(now, &name, spec).map_err(publish_error)?;
            Ok(name)
        })
        .await
        .inspect(|name| self.claim_container(name, &network))
    }

    /// Notes that this host's endpoint `name` on `network` is a Docker container's.
    pub(crate) fn claim_container(&self, name: &str, network: &str) {
        let mut containers = self.containers.lock().unwrap_or_else(PoisonError::into_inner);
        containers.insert((name.to_owned(), network.to_owned()));
    }

    /// Whether any of this host's endpoints named `name` is a Docker container's.
    pub(crate) fn is_container(&self, name: &str) -> bool {
        self.containers.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|(n, _)| n == name)
    }

    /// Withdraws this node's endpoint `name` on `network`.
    pub(crate) async fn withdraw_container(&self, name: &str, network: &str) -> Result<(), AgentError> {
        let (name, network) = (name.to_owned(), network.to_owned());
        self.containers.lock().unwrap_or_else(PoisonError::into_inner).remove(&(name.clone(), network.clone()));
        self.change(move |core, now| core.delete_endpoint(now, &name, &network).map_err(publish_error)).await
    }
}

/// A mesh name for a container runtime's name: Docker and podman allow
/// `_` and `.`, which DNS labels (and mesh names) do not, so they become
/// `-`; letters are lowered.
pub(crate) fn mesh_name(docker: &str) -> String {
    let mapped: String = docker
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(mesh_membership::records::MAX_NAME)
        .collect();
    mapped.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_become_dns_labels() {
        assert_eq!(mesh_name("/eager_turing"), "eager-turing");
        assert_eq!(mesh_name("Web.1"), "web-1");
        assert_eq!(mesh_name("_x_"), "x");
        assert_eq!(mesh_name(&"a".repeat(100)).len(), mesh_membership::records::MAX_NAME);
    }
}
