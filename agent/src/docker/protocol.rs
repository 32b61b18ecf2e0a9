//! The messages of Docker's remote network driver and IPAM driver
//! protocols (libnetwork's `drivers/remote/api` and `ipams/remote/api`):
//! JSON with Go's field names. Fields Docker may leave out default to
//! empty; fields mesh does not use are not decoded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The content type Docker's plugin client speaks.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// The IPAM option that says which address Docker asks for.
pub(crate) const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value when Docker asks for a network's gateway.
pub(crate) const GATEWAY_ADDRESS: &str = "com.docker.network.gateway";
/// The name the driver's interface gets in the container (`eth0`...).
pub(crate) const INTERFACE_PREFIX: &str = "eth";

/// Every answer that fails: `{"Err": "..."}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorAnswer {
    #[serde(rename = "Err")]
    pub(crate) err: String,
}

/// `/Plugin.Activate`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Activated {
    pub(crate) implements: Vec<&'static str>,
}

/// `/NetworkDriver.GetCapabilities`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Capabilities {
    pub(crate) scope: &'static str,
    pub(crate) connectivity_scope: &'static str,
}

/// `/IpamDriver.GetCapabilities`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub(crate) requires_mac_address: bool,
    pub(crate) requires_request_replay: bool,
}

/// `/IpamDriver.GetDefaultAddressSpaces`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddressSpaces {
    pub(crate) local_default_address_space: &'static str,
    pub(crate) global_default_address_space: &'static str,
}

/// `/IpamDriver.RequestPool`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PoolRequest {
    /// The subnet asked for (`--subnet`); empty for any.
    #[serde(default)]
    pub(crate) pool: String,
    #[serde(default)]
    pub(crate) sub_pool: String,
    #[serde(default, rename = "V6")]
    pub(crate) v6: bool,
}

/// The answer to [`PoolRequest`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PoolAnswer {
    #[serde(rename = "PoolID")]
    pub(crate) pool_id: String,
    pub(crate) pool: String,
    pub(crate) data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleasePool`.
#[derive(Debug, Deserialize)]
pub(crate) struct PoolRelease {
    #[serde(rename = "PoolID")]
    pub(crate) pool_id: String,
}

/// `/IpamDriver.RequestAddress`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddressRequest {
    #[serde(rename = "PoolID")]
    pub(crate) pool_id: String,
    /// The address asked for (`--ip`, `--gateway`); empty for any.
    #[serde(default)]
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) options: Option<BTreeMap<String, String>>,
}

/// The answer to [`AddressRequest`]: `IP/PREFIX`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddressAnswer {
    pub(crate) address: String,
    pub(crate) data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleaseAddress`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddressRelease {
    #[serde(rename = "PoolID")]
    pub(crate) pool_id: String,
    pub(crate) address: String,
}

/// One address pool of a network, as Docker passes it to the driver.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamData {
    pub(crate) pool: String,
}

/// `/NetworkDriver.CreateNetwork`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NetworkCreate {
    #[serde(rename = "NetworkID")]
    pub(crate) network_id: String,
    #[serde(default, rename = "IPv4Data")]
    pub(crate) ipv4_data: Option<Vec<IpamData>>,
    #[serde(default, rename = "IPv6Data")]
    pub(crate) ipv6_data: Option<Vec<IpamData>>,
    /// The network's options: `docker network create --opt K=V` arrive
    /// under `com.docker.network.generic`.
    #[serde(default, rename = "Options")]
    pub(crate) options: Option<serde_json::Value>,
}

impl NetworkCreate {
    /// What `--opt encrypted` asks: `Some(true)` for `--opt encrypted`
    /// (Docker's overlay spelling, with no value) or `encrypted=true`,
    /// `Some(false)` for `encrypted=false`, `None` when absent; an
    /// error for any other value.
    pub(crate) fn encrypted(&self) -> Result<Option<bool>, String> {
        let generic = self.options.as_ref().and_then(|o| o.get("com.docker.network.generic"));
        match generic.and_then(|g| g.get("encrypted")) {
            None => Ok(None),
            Some(value) => match value.as_str() {
                Some("" | "true") => Ok(Some(true)),
                Some("false") => Ok(Some(false)),
                _ => Err(format!("--opt encrypted takes no value, true or false, not {value}")),
            },
        }
    }
}

/// `/NetworkDriver.DeleteNetwork`.
#[derive(Debug, Deserialize)]
pub(crate) struct NetworkDelete {
    #[serde(rename = "NetworkID")]
    pub(crate) network_id: String,
}

/// An endpoint's interface as Docker describes it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Interface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) address: String,
    #[serde(default, rename = "AddressIPv6", skip_serializing_if = "String::is_empty")]
    pub(crate) address_ipv6: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) mac_address: String,
}

/// `/NetworkDriver.CreateEndpoint`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EndpointCreate {
    #[serde(rename = "NetworkID")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID")]
    pub(crate) endpoint_id: String,
    #[serde(default)]
    pub(crate) interface: Option<Interface>,
}

/// The answer to [`EndpointCreate`]: what the driver adds (the MAC).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EndpointCreated {
    pub(crate) interface: Option<Interface>,
}

/// `/NetworkDriver.DeleteEndpoint`, `EndpointOperInfo`, `Leave`,
/// `ProgramExternalConnectivity`, `RevokeExternalConnectivity`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID")]
    pub(crate) endpoint_id: String,
}

/// The answer to `EndpointOperInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct OperInfo {
    pub(crate) value: BTreeMap<String, String>,
}

/// `/NetworkDriver.Join`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub(crate) network_id: String,
    #[serde(rename = "EndpointID")]
    pub(crate) endpoint_id: String,
    /// The container's network namespace (as dockerd's mount namespace
    /// sees it): the same for each network the container joins.
    #[serde(default)]
    pub(crate) sandbox_key: String,
}

/// The interface Docker moves into the container and renames.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct InterfaceName {
    pub(crate) src_name: String,
    pub(crate) dst_prefix: &'static str,
}

/// A route Docker adds in the container.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StaticRoute {
    pub(crate) destination: String,
    /// 1: the destination is on the link (no next hop).
    pub(crate) route_type: u8,
}

/// The answer to [`JoinRequest`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Joined {
    pub(crate) interface_name: InterfaceName,
    pub(crate) static_routes: Vec<StaticRoute>,
    /// The default route's next hop (the network's gateway; none on an
    /// internal network): the container's way out, through its host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gateway: Option<String>,
    /// No second interface on Docker's `docker_gwbridge`: the way out is
    /// mesh's.
    pub(crate) disable_gateway_service: bool,
}

/// An empty success answer.
#[derive(Debug, Serialize)]
pub(crate) struct Empty {}
