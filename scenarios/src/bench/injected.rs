//! Many endpoints without many sandboxes: a stopped agent's saved records
//! gain endpoints of its own, as if it had published them before a
//! restart. When it starts it holds and publishes them like any other
//! (with no namespace to build for them on its host), so the benchmarks
//! can give a cluster thousands of endpoints in seconds.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use mesh_membership::pki::pem_key;
use mesh_membership::records::{mac_for, EndpointSpec, Record, RecordKey, Value};
use mesh_membership::{NodeKey, Owned};

use crate::lab::Lab;

/// The name of the `k`th added endpoint.
pub(super) fn name(k: usize) -> String {
    format!("e{k}")
}

/// The address of the `k`th added endpoint.
pub(super) fn address(first: Ipv4Addr, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first).saturating_add(u32::try_from(k).unwrap_or(u32::MAX)))
}

/// Adds `count` endpoints ([`name`]`(k)` at [`address`]`(first, k)`) to the
/// saved records of host `i`'s stopped agent, on the network of the one
/// endpoint it already holds, signed with the agent's key.
pub(super) fn add(lab: &Lab, i: usize, first: Ipv4Addr, count: usize) -> anyhow::Result<()> {
    let key_pem = std::fs::read_to_string(lab.data_dir(i).join("node-key.pem"))?;
    let node_key = NodeKey::from_pkcs8(pem_key(&key_pem)?.secret_pkcs8_der())?;
    let path = lab.data_dir(i).join("records.json");
    let mut owned: Owned = serde_json::from_slice(&std::fs::read(&path)?).context("records.json")?;
    let seed = owned.endpoints.first().context("the host holds one endpoint to copy")?.clone();
    let (RecordKey::Endpoint { owner, .. }, Value::Endpoint(spec)) = (&seed.key, &seed.value) else {
        bail!("the seed record is not an endpoint");
    };
    for k in 0..count {
        let ip = address(first, k);
        let spec = EndpointSpec { ip: Some(ip), mac: mac_for(ip), static_ip: true, ..spec.clone() };
        let key = spec.key(*owner, &name(k));
        owned.endpoints.push(Record::signed(key, owned.next_version, Value::Endpoint(spec), &node_key));
        owned.next_version += 1;
    }
    std::fs::write(&path, serde_json::to_vec(&owned)?)?;
    Ok(())
}
