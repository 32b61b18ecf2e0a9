//! WireGuard between hosts, what both paths share (DESIGN.md, "Encrypted
//! data plane"): the interface, the port, each host's tunnel address, the
//! MTU arithmetic, and a peer as the agent wants it. The kernel path
//! configures `mwg0` over generic netlink; the userspace path (in the
//! agent) runs WireGuard over a TUN of the same name. Both take the same
//! [`Peer`] list.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The WireGuard interface of every host.
pub const INTERFACE: &str = "mwg0";

/// WireGuard's UDP port unless configured otherwise.
pub const DEFAULT_PORT: u16 = 51820;

/// The first 64 bits of every tunnel address: `fd6d:6573:6800:1::/64`
/// (ULA; `6d 65 73 68` spells "mesh").
pub const TUNNEL_PREFIX: [u16; 4] = [0xfd6d, 0x6573, 0x6800, 0x0001];

/// Prefix length of the tunnel network.
pub const TUNNEL_PREFIX_LEN: u8 = 64;

/// WireGuard's overhead over an IPv4 underlay: IPv4 20, UDP 8, the data
/// header 16 (type, receiver index, counter) and the Poly1305 tag 16.
pub const WIREGUARD_OVERHEAD: u32 = 60;

/// WireGuard's overhead over an IPv6 underlay (IPv6 40 instead of 20).
pub const WIREGUARD6_OVERHEAD: u32 = 80;

/// The tunnel address of the node whose id is `node_id`: the tunnel
/// prefix and the id's first 64 bits, so every host computes every
/// other's with no allocation.
pub fn tunnel_address(node_id: &[u8; 16]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (i, word) in TUNNEL_PREFIX.iter().enumerate() {
        octets[2 * i..2 * i + 2].copy_from_slice(&word.to_be_bytes());
    }
    octets[8..].copy_from_slice(&node_id[..8]);
    Ipv6Addr::from(octets)
}

/// The tunnel network: its first address and prefix length.
pub fn tunnel_network() -> (Ipv6Addr, u8) {
    let [a, b, c, d] = TUNNEL_PREFIX;
    (Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0), TUNNEL_PREFIX_LEN)
}

/// Whether `ip` lies in the tunnel network (an advertise address there
/// would route the underlay through the tunnel: refused at start-up).
pub fn in_tunnel_network(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(ip) => ip.segments()[..4] == TUNNEL_PREFIX,
        IpAddr::V4(_) => false,
    }
}

/// WireGuard's overhead over an underlay whose addresses are of
/// `underlay`'s family.
pub fn overhead(underlay: IpAddr) -> u32 {
    if underlay.is_ipv4() {
        WIREGUARD_OVERHEAD
    } else {
        WIREGUARD6_OVERHEAD
    }
}

/// The MTU of `mwg0` over an underlay of `underlay_mtu` whose addresses
/// are of `underlay`'s family.
pub fn interface_mtu(underlay_mtu: u32, underlay: IpAddr) -> u32 {
    underlay_mtu.saturating_sub(overhead(underlay))
}

/// Whether a pass may remove what no plan wants (the VXLAN reconciler's
/// and the kernel WireGuard's: it lives here, below both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add and correct only.
    AddOnly,
    /// Add, correct and remove.
    Full,
}

/// Another host as this host's WireGuard must know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// Its static public key (X25519).
    pub public_key: [u8; 32],
    /// Where its WireGuard listens: its advertise address and port.
    pub endpoint: SocketAddr,
    /// Its tunnel address, its only allowed IP (as a /128).
    pub tunnel: Ipv6Addr,
}

/// Test host `d`'s peer: key `[d; 32]`, endpoint `198.18.0.d:51820`,
/// tunnel address `fd6d:6573:6800:1::d`.
#[cfg(test)]
pub(crate) fn test_peer(d: u8) -> Peer {
    Peer {
        public_key: [d; 32],
        endpoint: SocketAddr::from(([198, 18, 0, d], DEFAULT_PORT)),
        tunnel: Ipv6Addr::new(0xfd6d, 0x6573, 0x6800, 1, 0, 0, 0, u16::from(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_address_is_the_prefix_and_the_first_half_of_the_id() {
        let id = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8];
        let address = tunnel_address(&id);
        assert_eq!(address, Ipv6Addr::new(0xfd6d, 0x6573, 0x6800, 1, 0x1234, 0x5678, 0x9abc, 0xdef0));
        assert!(in_tunnel_network(address.into()));
        assert!(!in_tunnel_network(Ipv6Addr::new(0xfd6d, 0x6573, 0x6800, 2, 0, 0, 0, 1).into()));
    }

    #[test]
    fn interface_mtu_takes_the_underlay_family_into_account() {
        let (v4, v6) = (IpAddr::from([198, 18, 0, 1]), IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)));
        assert_eq!(interface_mtu(1500, v4), 1440);
        assert_eq!(interface_mtu(1500, v6), 1420);
        assert_eq!(interface_mtu(9000, v4), 8940);
    }
}
