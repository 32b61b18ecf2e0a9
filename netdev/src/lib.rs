//! Everything mesh does to the kernel's network stack, through rtnetlink:
//! per-network VXLAN devices and bridges, veth pairs into sandbox
//! namespaces, FDB and neighbour entries for remote endpoints, and the
//! reconciler that makes the kernel match a desired state by diffing
//! against what it dumps (never by flushing).
//!
//! This crate does not know about membership or records: the agent maps
//! its replicated view onto the plain desired-state types of [`reconcile`].
//!
//! - [`netns`]: named namespaces, and work run inside one;
//! - [`kernel`]: one idempotent verb per function over rtnetlink;
//! - [`reconcile`]: desired state against kernel state, by diff;
//! - [`firewall`]: the way in and out (NAT, filtering and forwarding),
//!   one nftables table that mesh owns;
//! - [`wireguard`]: the encrypted path between hosts (interface, port,
//!   tunnel addresses, MTU, peers);
//! - [`wg_genl`]: the kernel's WireGuard over generic netlink (a device's
//!   dump, changes to it);
//! - [`wg_kernel`]: the kernel path, `mwg0` kept as wanted by diff;
//! - `error`: [`NetdevError`], the error of them all.

mod error;
pub mod firewall;
pub mod kernel;
pub mod netns;
pub mod reconcile;
pub mod wg_genl;
pub mod wg_kernel;
pub mod wireguard;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressScope};

pub use error::NetdevError;

/// The IPv4 address this host would be reached at: the first global
/// address on the interface of the IPv4 default route, or else the first
/// global IPv4 address of any interface. `None` if the host has none.
pub async fn default_ipv4() -> Result<Option<Ipv4Addr>, NetdevError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let result = async {
        let default_oif = kernel::default_route_interface(&handle).await?;
        let mut by_interface: HashMap<u32, Vec<Ipv4Addr>> = HashMap::new();
        let mut addresses = handle.address().get().execute();
        while let Some(message) =
            addresses.try_next().await.map_err(|source| NetdevError::Netlink { what: "address dump", source })?
        {
            if message.header.scope != AddressScope::Universe {
                continue;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attribute {
                    by_interface.entry(message.header.index).or_default().push(*ip);
                }
            }
        }
        let preferred = default_oif.and_then(|oif| by_interface.get(&oif)).and_then(|ips| ips.first());
        let mut indexes: Vec<_> = by_interface.keys().copied().collect();
        indexes.sort_unstable();
        let any = indexes.first().and_then(|i| by_interface.get(i)).and_then(|ips| ips.first());
        Ok(preferred.or(any).copied())
    }
    .await;
    task.abort();
    result
}
