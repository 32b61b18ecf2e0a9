//! The few Docker engine API calls the plugin needs: a network's name,
//! the container behind an endpoint and its aliases, and creating or
//! removing the engine's record of a mesh network. Docker passes none of
//! these to drivers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use hyper::body::Bytes;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The engine's API version mesh speaks (Docker 20.10 serves 1.41; newer
/// engines accept older versions).
const API: &str = "/v1.41";

/// A network as the engine lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EngineNetwork {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(default, rename = "IPAM")]
    pub(crate) ipam: Ipam,
    /// Its endpoints, by container id (or `ep-ID` before the container
    /// is attached).
    #[serde(default)]
    pub(crate) containers: Option<BTreeMap<String, EngineEndpoint>>,
}

impl EngineNetwork {
    /// Its first IPv4 subnet, as written.
    pub(crate) fn subnet(&self) -> Option<&str> {
        self.ipam.config.as_deref()?.iter().map(|c| c.subnet.as_str()).find(|s| s.contains('.'))
    }
}

/// A network's address management.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Ipam {
    #[serde(default)]
    pub(crate) config: Option<Vec<IpamConfig>>,
}

/// One pool of a network.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamConfig {
    #[serde(default)]
    pub(crate) subnet: String,
}

/// An endpoint in a network's listing.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EngineEndpoint {
    /// The container's name (the endpoint is named after it).
    pub(crate) name: String,
    #[serde(rename = "EndpointID")]
    pub(crate) endpoint_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    #[serde(default)]
    network_settings: Option<ContainerNetworks>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerNetworks {
    #[serde(default)]
    networks: BTreeMap<String, ContainerEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerEndpoint {
    #[serde(default)]
    aliases: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct EngineError {
    message: String,
}

/// A client of the engine on one unix socket.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    socket: PathBuf,
}

impl Engine {
    /// The engine serving `socket`.
    pub(crate) fn new(socket: &Path) -> Self {
        Self { socket: socket.to_owned() }
    }

    /// Whether the engine's socket exists (a host without Docker has none).
    pub(crate) fn installed(&self) -> bool {
        self.socket.exists()
    }

    /// Network `id`, if the engine has it.
    pub(crate) async fn network(&self, id: &str) -> anyhow::Result<Option<EngineNetwork>> {
        self.call_optional(Method::GET, &format!("/networks/{id}"), Bytes::new()).await
    }

    /// The engine's networks of driver `driver`.
    pub(crate) async fn networks(&self, driver: &str) -> anyhow::Result<Vec<EngineNetwork>> {
        let filters = serde_json::json!({ "driver": [driver] }).to_string();
        let path = format!("/networks?filters={}", crate::unix_http::percent_encode(&filters));
        self.call(Method::GET, &path, Bytes::new()).await
    }

    /// Creates network `name` with driver and IPAM driver `driver` on `subnet`.
    pub(crate) async fn create_network(&self, name: &str, driver: &str, subnet: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "Name": name,
            "Driver": driver,
            "CheckDuplicate": true,
            "IPAM": { "Driver": driver, "Config": [{ "Subnet": subnet }] },
        });
        let _: serde_json::Value = self.call(Method::POST, "/networks/create", Bytes::from(body.to_string())).await?;
        Ok(())
    }

    /// Removes network `id` from the engine.
    pub(crate) async fn remove_network(&self, id: &str) -> anyhow::Result<()> {
        let _: Option<serde_json::Value> =
            self.call_optional(Method::DELETE, &format!("/networks/{id}"), Bytes::new()).await?;
        Ok(())
    }

    /// The aliases container `name` has on the network called `network`
    /// (its `--network-alias`es and its short id), if the container
    /// exists. The engine answers once the container has started.
    pub(crate) async fn aliases(&self, name: &str, network: &str) -> anyhow::Result<Option<Vec<String>>> {
        let path = format!("/containers/{}/json", crate::unix_http::percent_encode(name));
        let Some(container) = self.call_optional::<Container>(Method::GET, &path, Bytes::new()).await? else {
            return Ok(None);
        };
        let mut networks = container.network_settings.map(|s| s.networks).unwrap_or_default();
        Ok(Some(networks.remove(network).and_then(|e| e.aliases).unwrap_or_default()))
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<T> {
        self.call_optional(method, path, body).await?.ok_or_else(|| anyhow!("the Docker engine has no {path}"))
    }

    /// A call whose "not found" is an answer (`None`), not an error.
    async fn call_optional<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Option<T>> {
        let (status, bytes) = crate::unix_http::request(&self.socket, method, &format!("{API}{path}"), body)
            .await
            .with_context(|| format!("cannot reach the Docker engine at {}", self.socket.display()))?;
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            match serde_json::from_slice::<EngineError>(&bytes) {
                Ok(error) => bail!("the Docker engine refused {path}: {}", error.message),
                Err(_) => bail!("the Docker engine answered {status} to {path}"),
            }
        }
        if bytes.is_empty() {
            return Ok(Some(serde_json::from_slice(b"null")?));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("unexpected answer from the Docker engine to {path}"))
    }
}
