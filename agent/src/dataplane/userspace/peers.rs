//! The peers of the device, reconciled by diff: what the device holds
//! against what the agent wants, as a plain value testable without a
//! kernel (STYLE.md 4).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use mesh_netdev::wireguard::Peer;

use super::UserspaceError;

/// A peer as the device holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    /// Its static public key.
    pub(super) public_key: [u8; 32],
    /// Its endpoint, if it has one (it may have roamed).
    pub(super) endpoint: Option<SocketAddr>,
    /// Its allowed IPs, with their prefix lengths.
    pub(super) allowed: Vec<(IpAddr, u8)>,
}

/// What to change so the device holds exactly the desired peers.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PeerDiff {
    /// Peers it does not hold: add them (and initiate a handshake).
    pub(super) add: Vec<Peer>,
    /// Peers it holds with another endpoint or allowed IPs: set those,
    /// keeping their sessions.
    pub(super) update: Vec<Peer>,
    /// Peers it holds that are not wanted: remove them (first, so a new
    /// key of a host takes over its tunnel address).
    pub(super) remove: Vec<[u8; 32]>,
}

impl PeerDiff {
    /// Whether nothing is to change.
    pub(super) fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

/// The diff from `held` to `desired`; two desired peers with one key or
/// one tunnel address are refused (nothing is to change then).
pub(super) fn diff(held: &[Held], desired: &[Peer]) -> Result<PeerDiff, UserspaceError> {
    let mut wanted = BTreeMap::new();
    let mut tunnels = BTreeSet::new();
    for peer in desired {
        if wanted.insert(peer.public_key, peer).is_some() {
            return Err(UserspaceError::DuplicatePeer(format!(
                "two peers have one public key (tunnel address {})",
                peer.tunnel
            )));
        }
        if !tunnels.insert(peer.tunnel) {
            return Err(UserspaceError::DuplicatePeer(format!("two peers have the tunnel address {}", peer.tunnel)));
        }
    }
    let mut diff = PeerDiff::default();
    let mut seen = BTreeSet::new();
    for peer in held {
        seen.insert(peer.public_key);
        match wanted.get(&peer.public_key) {
            None => diff.remove.push(peer.public_key),
            Some(want) => {
                if peer.endpoint != Some(want.endpoint) || peer.allowed != [(IpAddr::V6(want.tunnel), 128)] {
                    diff.update.push(**want);
                }
            }
        }
    }
    diff.add = desired.iter().filter(|peer| !seen.contains(&peer.public_key)).copied().collect();
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u8, endpoint: &str, tunnel: &str) -> Peer {
        Peer {
            public_key: [key; 32],
            endpoint: endpoint.parse().expect("an address"),
            tunnel: tunnel.parse().expect("an address"),
        }
    }

    fn held(peer: &Peer) -> Held {
        Held {
            public_key: peer.public_key,
            endpoint: Some(peer.endpoint),
            allowed: vec![(IpAddr::V6(peer.tunnel), 128)],
        }
    }

    #[test]
    fn missing_peers_are_added_changed_ones_updated_unwanted_ones_removed() {
        let a = peer(1, "198.18.0.1:51820", "fd6d:6573:6800:1::a");
        let b = peer(2, "198.18.0.2:51820", "fd6d:6573:6800:1::b");
        let c = peer(3, "198.18.0.3:51820", "fd6d:6573:6800:1::c");
        let moved = Peer { endpoint: "198.18.0.22:51820".parse().expect("an address"), ..b };
        let diff =
            diff(&[held(&a), held(&b), held(&c)], &[a, moved, peer(4, "198.18.0.4:51820", "fd6d:6573:6800:1::d")])
                .expect("no conflict");
        assert_eq!(diff.add, [peer(4, "198.18.0.4:51820", "fd6d:6573:6800:1::d")]);
        assert_eq!(diff.update, [moved]);
        assert_eq!(diff.remove, [[3; 32]]);
    }

    #[test]
    fn a_roamed_endpoint_or_a_widened_allowed_ip_is_put_back() {
        let a = peer(1, "198.18.0.1:51820", "fd6d:6573:6800:1::a");
        let roamed = Held { endpoint: Some("198.18.9.9:4000".parse().expect("an address")), ..held(&a) };
        assert_eq!(diff(&[roamed], &[a]).expect("no conflict").update, [a]);
        let wide = Held { allowed: vec![(IpAddr::V6(a.tunnel), 64)], ..held(&a) };
        assert_eq!(diff(&[wide], &[a]).expect("no conflict").update, [a]);
        assert!(diff(&[held(&a)], &[a]).expect("no conflict").is_empty());
    }

    #[test]
    fn two_peers_with_one_key_or_one_tunnel_address_are_refused() {
        let a = peer(1, "198.18.0.1:51820", "fd6d:6573:6800:1::a");
        let same_key = peer(1, "198.18.0.2:51820", "fd6d:6573:6800:1::b");
        let same_tunnel = peer(2, "198.18.0.2:51820", "fd6d:6573:6800:1::a");
        assert!(diff(&[], &[a, same_key]).is_err());
        assert!(diff(&[], &[a, same_tunnel]).is_err());
    }
}
