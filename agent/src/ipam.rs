//! Address management without a central store: every choice is made from
//! the replicated view by the node that needs it.
//!
//! - An endpoint's address is the first free one scanning from an offset
//!   derived from the node's id, so hosts creating sandboxes at the same
//!   moment (before they see each other's records) start in different
//!   places and rarely collide. When they do (or after a partition), the
//!   view's deterministic rule picks the winner and the loser's owner moves
//!   its endpoint ([`crate::upkeep`]).
//! - A network's default subnet and VNI are the first free ones scanning
//!   from an offset derived from its name, so two hosts creating the same
//!   name on both sides of a partition pick the same subnet (the loser's
//!   endpoints keep their addresses in the winner) and two different names
//!   rarely pick the same one.
//! - Addresses of endpoints whose owner is down stay taken: they return
//!   with their owner.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mesh_membership::records::view::{NetworkView, View};
use mesh_membership::records::{stable_hash, MAX_VNI};
use mesh_membership::NodeId;

/// Where default subnets come from: /24s of 10.128.0.0/9.
const DEFAULT_POOL: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 128, 0, 0), 9) {
    Ok(net) => net,
    Err(_) => panic!("a valid pool"),
};
/// Prefix length of default subnets.
const DEFAULT_PREFIX: u8 = 24;
/// Lowest VNI given by default (lower ones are left for users' choices).
const FIRST_DEFAULT_VNI: u32 = 4096;
/// How many VNIs default choices range over (4096-69631: short to read).
const DEFAULT_VNIS: u32 = 65536;

/// A free address on `network` for an endpoint of `node`, if any is left,
/// besides those `reserved` here but not yet in the view.
pub(crate) fn allocate(network: &NetworkView, node: NodeId, reserved: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let subnet = network.spec.subnet?;
    let mut used: HashSet<Ipv4Addr> =
        network.endpoints.iter().filter_map(|e| e.spec.ip).chain(network.spec.gateway).collect();
    used.extend(reserved);
    let first = u32::from(subnet.network()) + 1;
    let count = u32::from(subnet.broadcast()).checked_sub(first)?;
    let offset = offset_in(&node.0, count);
    (0..count).map(|k| Ipv4Addr::from(first + (offset + k) % count)).find(|ip| !used.contains(ip))
}

/// Why an address asked for cannot be had, if it cannot.
pub(crate) fn check_static(network: &NetworkView, ip: Ipv4Addr) -> Result<(), String> {
    let Some(subnet) = network.spec.subnet else {
        return Err(format!("network {} has no subnet: it takes no --ip", network.spec.name));
    };
    if !mesh_membership::records::usable(subnet, ip) {
        return Err(format!("{ip} is not a host address of network {}'s subnet {subnet}", network.spec.name));
    }
    if network.spec.gateway == Some(ip) {
        return Err(format!("{ip} is network {}'s gateway address", network.spec.name));
    }
    match network.endpoints.iter().find(|e| e.spec.ip == Some(ip)) {
        Some(holder) => Err(format!("{ip} is already used by {} on network {}", holder.name, network.spec.name)),
        None => Ok(()),
    }
}

/// A free /24 of the default pool for a network called `name`, besides
/// those `reserved` here but not yet in the view.
pub(crate) fn default_subnet(view: &View, name: &str, reserved: &[Ipv4Net]) -> Option<Ipv4Net> {
    let mut taken = taken_subnets(view);
    taken.extend(reserved);
    let count = 1u32 << (DEFAULT_PREFIX - DEFAULT_POOL.prefix_len());
    let offset = offset_in(name.as_bytes(), count);
    let base = u32::from(DEFAULT_POOL.network());
    (0..count)
        .filter_map(|k| Ipv4Net::new(Ipv4Addr::from(base + ((offset + k) % count) * 256), DEFAULT_PREFIX).ok())
        .find(|candidate| !taken.iter().any(|t| overlap(*t, *candidate)))
}

/// The network, if any, whose subnet overlaps `subnet`.
pub(crate) fn overlapping(view: &View, subnet: Ipv4Net) -> Option<String> {
    all_networks(view).find(|(_, s)| s.is_some_and(|s| overlap(s, subnet))).map(|(name, _)| name.to_owned())
}

/// A free VNI for a network called `name`.
pub(crate) fn default_vni(view: &View, name: &str) -> Option<u32> {
    let taken: HashSet<u32> = all_vnis(view).collect();
    let count = DEFAULT_VNIS.min(MAX_VNI - FIRST_DEFAULT_VNI + 1);
    let offset = offset_in(name.as_bytes(), count);
    (0..count).map(|k| FIRST_DEFAULT_VNI + (offset + k) % count).find(|vni| !taken.contains(vni))
}

/// The network, if any, that uses `vni`.
pub(crate) fn vni_user(view: &View, vni: u32) -> Option<String> {
    let winners = view.networks.values().map(|n| (&n.spec.name, n.spec.vni));
    let losers = view.lost.iter().map(|l| (&l.spec.name, l.spec.vni));
    winners.chain(losers).find(|(_, v)| *v == vni).map(|(name, _)| name.clone())
}

fn all_vnis(view: &View) -> impl Iterator<Item = u32> + '_ {
    view.networks.values().map(|n| n.spec.vni).chain(view.lost.iter().map(|l| l.spec.vni))
}

fn all_networks(view: &View) -> impl Iterator<Item = (&str, Option<Ipv4Net>)> {
    let winners = view.networks.values().map(|n| (n.spec.name.as_str(), n.spec.subnet));
    winners.chain(view.lost.iter().map(|l| (l.spec.name.as_str(), l.spec.subnet)))
}

fn taken_subnets(view: &View) -> Vec<Ipv4Net> {
    all_networks(view).filter_map(|(_, subnet)| subnet).collect()
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A stable offset in `0..count` derived from `seed`.
fn offset_in(seed: &[u8], count: u32) -> u32 {
    // The remainder is below `count`, a u32.
    #[allow(clippy::cast_possible_truncation)]
    let offset = (stable_hash(seed) % u64::from(count.max(1))) as u32;
    offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_membership::records::view::{EndpointState, EndpointView};
    use mesh_membership::records::{EndpointSpec, NetworkId, NetworkSpec};

    fn network(subnet: &str) -> NetworkView {
        let subnet: Ipv4Net = subnet.parse().expect("subnet");
        NetworkView {
            id: NetworkId { creator: NodeId([1; 16]), serial: 1 },
            spec: NetworkSpec::overlay("dev", 4097, subnet, 1),
            endpoints: Vec::new(),
        }
    }

    fn holding(ip: Ipv4Addr) -> EndpointView {
        EndpointView {
            owner: NodeId([2; 16]),
            name: format!("e{ip}"),
            version: 1,
            spec: EndpointSpec::allocated("dev", ip, 1),
            state: EndpointState::OwnerDown,
        }
    }

    #[test]
    fn allocation_skips_the_gateway_and_every_held_address_then_runs_out() {
        let mut dev = network("10.1.0.0/29");
        let node = NodeId([7; 16]);
        let mut given = Vec::new();
        while let Some(ip) = allocate(&dev, node, &HashSet::new()) {
            assert!(dev.spec.subnet.is_some_and(|s| mesh_membership::records::usable(s, ip)));
            assert_ne!(Some(ip), dev.spec.gateway);
            given.push(ip);
            dev.endpoints.push(holding(ip));
        }
        assert_eq!(given.len(), 5, "a /29 has six host addresses, one is the gateway");
    }

    #[test]
    fn different_nodes_start_in_different_places() {
        let dev = network("10.1.0.0/24");
        let picks: HashSet<Ipv4Addr> =
            (0..8u8).filter_map(|b| allocate(&dev, NodeId([b; 16]), &HashSet::new())).collect();
        assert!(picks.len() >= 7, "{picks:?}");
    }

    #[test]
    fn static_addresses_are_checked() {
        let mut dev = network("10.1.0.0/24");
        dev.endpoints.push(holding(Ipv4Addr::new(10, 1, 0, 9)));
        assert!(check_static(&dev, Ipv4Addr::new(10, 1, 0, 10)).is_ok());
        for bad in [[10, 1, 0, 9], [10, 1, 0, 1], [10, 1, 0, 0], [10, 1, 0, 255], [10, 2, 0, 5]] {
            assert!(check_static(&dev, Ipv4Addr::from(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_subnets_and_vnis_follow_the_name_and_avoid_taken_ones() {
        let mut view = View::default();
        let first = default_subnet(&view, "dev", &[]).expect("a subnet");
        assert_eq!(default_subnet(&view, "dev", &[]), Some(first), "same name, same choice");
        assert!(DEFAULT_POOL.contains(&first));
        let mut dev = network(&first.to_string());
        dev.spec.vni = default_vni(&view, "dev").expect("a vni");
        view.networks.insert("dev".into(), dev.clone());
        assert_ne!(default_subnet(&view, "dev", &[]), Some(first), "a taken subnet is skipped");
        assert_ne!(default_vni(&view, "dev"), Some(dev.spec.vni), "a taken VNI is skipped");
        assert_eq!(overlapping(&view, "10.0.0.0/8".parse().expect("net")).as_deref(), Some("dev"));
        assert_eq!(vni_user(&view, dev.spec.vni).as_deref(), Some("dev"));
    }
}
