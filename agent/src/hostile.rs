//! The agent's decoders of user and runtime bytes, callable without a
//! running agent, for the hostile-input harness (`mesh_scenarios::hostile`)
//! and its cargo-fuzz targets. Each answers any bytes with a value or an
//! error, never a panic, and has no side effect.

use serde::de::DeserializeOwned;

use crate::api::{CaRotateBody, ChangesQuery, JoinBody, NetworkCreateBody, SandboxCreateBody};
use crate::cni::conf::NetConf;
use crate::cni::result::{result, Attached};
use crate::config::Config;
use crate::docker::protocol as docker;

/// The control API's request bodies, in the order [`control_body`] takes.
pub const CONTROL_BODIES: [&str; 5] = ["join", "network create", "sandbox create", "ca rotate", "changes query"];
/// The Docker plugin calls with a body, in the order [`docker_call`] takes.
pub const DOCKER_CALLS: [&str; 9] = [
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.DeleteEndpoint",
];

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A config file: parsed, then resolved (defaults and checks) as the
/// agent does at start. A missing name or upstream server is filled in,
/// so that nothing is read from the host.
pub fn config_toml(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let mut config = Config::parse(text).map_err(|e| format!("{e:#}"))?;
    config.name.get_or_insert_with(|| "fuzz".into());
    if config.upstream_dns.is_empty() {
        config.upstream_dns.push("192.0.2.53".into());
    }
    config.resolve().map(drop).map_err(|e| format!("{e:#}"))
}

/// Control API body `which` (an index into [`CONTROL_BODIES`]): decoded,
/// and checked as far as it can be without a cluster (a token parsed, a
/// network's spec derived as on an empty cluster).
pub fn control_body(which: usize, bytes: &[u8]) -> Result<(), String> {
    match which % CONTROL_BODIES.len() {
        0 => {
            let body: JoinBody = decode(bytes)?;
            body.token.parse::<mesh_membership::pki::JoinToken>().map(drop).map_err(|e| e.to_string())
        }
        1 => crate::agent::check_network_create(decode::<NetworkCreateBody>(bytes)?).map_err(|e| e.to_string()),
        2 => decode::<SandboxCreateBody>(bytes).map(drop),
        3 => decode::<CaRotateBody>(bytes).map(drop),
        _ => decode::<ChangesQuery>(bytes).map(drop),
    }
}

/// Docker plugin call `which` (an index into [`DOCKER_CALLS`]): its JSON
/// body decoded.
pub fn docker_call(which: usize, bytes: &[u8]) -> Result<(), String> {
    match which % DOCKER_CALLS.len() {
        0 => decode::<docker::PoolRequest>(bytes).map(drop),
        1 => decode::<docker::PoolRelease>(bytes).map(drop),
        2 => decode::<docker::AddressRequest>(bytes).map(drop),
        3 => decode::<docker::AddressRelease>(bytes).map(drop),
        4 => decode::<docker::NetworkCreate>(bytes).map(drop),
        5 => decode::<docker::NetworkDelete>(bytes).map(drop),
        6 => decode::<docker::EndpointCreate>(bytes).map(drop),
        7 => decode::<docker::JoinRequest>(bytes).map(drop),
        _ => decode::<docker::EndpointRef>(bytes).map(drop),
    }
}

/// A CNI network configuration (stdin): parsed and checked, its aliases
/// gathered, and a result built on its `prevResult`, as `mesh-cni ADD` does.
pub fn cni_config(bytes: &[u8]) -> Result<(), String> {
    let conf = NetConf::parse(bytes).map_err(|e| e.to_json("1.0.0"))?;
    let _aliases = conf.all_aliases();
    let attached = Attached {
        interface: "eth0".into(),
        mac: "02:00:00:00:00:01".into(),
        address: "10.0.0.2/24".into(),
        sandbox: "/run/netns/fuzz".into(),
        gateway: Some("10.0.0.1".into()),
    };
    result(&conf.cni_version, &attached, conf.prev_result.as_ref()).map(drop).map_err(|e| e.to_json("1.0.0"))
}
