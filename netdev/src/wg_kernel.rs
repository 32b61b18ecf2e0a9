//! The kernel path of WireGuard (DESIGN.md, "Kernel path"): `mwg0` of
//! kind `wireguard` holding this host's tunnel address, and its private
//! key, port and peers kept as the agent wants them by diff against the
//! kernel's dump, peer by peer, never by flushing. The interface outlives
//! the agent: a restarted agent adopts it (passing in [`Mode::AddOnly`]
//! until it holds its peers' records), so its sessions never stop.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rtnetlink::Handle;

use crate::error::NetdevError;
use crate::kernel::{self, Link};
use crate::wg_genl::{DeviceChange, DeviceState, PeerChange, PeerState, WireguardNetlink, PEERS_PER_MESSAGE};
use crate::wireguard::{Mode, Peer, INTERFACE, TUNNEL_PREFIX_LEN};

/// What `mwg0` must be on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardDevice {
    /// This host's static private key (X25519), clamped or not: it is
    /// compared and set clamped, as the kernel keeps it.
    pub private_key: [u8; 32],
    /// The UDP port it listens on.
    pub port: u16,
    /// This host's tunnel address (held as `/64`, the tunnel network).
    pub address: Ipv6Addr,
    /// The interface's MTU ([`crate::wireguard::interface_mtu`]).
    pub mtu: u32,
    /// The other hosts.
    pub peers: Vec<Peer>,
}

/// What a pass changed, and what it could not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WireguardReport {
    /// What was created or corrected: the interface, its MTU and state,
    /// its address, the private key, the port, each peer added or updated.
    pub set: usize,
    /// Peers removed.
    pub removed: usize,
    /// What failed or was refused (the rest of the pass went on).
    pub errors: Vec<String>,
}

/// What `mwg0` carried, for `mesh status` and the metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WireguardStats {
    /// Its peers.
    pub peers: usize,
    /// Bytes received from all peers.
    pub rx_bytes: u64,
    /// Bytes sent to all peers.
    pub tx_bytes: u64,
    /// Each peer's latest handshake, since the Unix epoch (`None`: never).
    pub handshakes: BTreeMap<[u8; 32], Option<Duration>>,
    /// The interface's `rx_errors` (packets WireGuard refused).
    pub rx_errors: u64,
    /// The interface's `rx_dropped`.
    pub rx_dropped: u64,
}

/// What a pass must change on the device, and the desired peers it will
/// not program.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WireguardDiff {
    /// The change, removals first (a new key of a node takes over the
    /// allowed IP of its old one).
    pub change: DeviceChange,
    /// Why each refused peer was refused.
    pub refused: Vec<String>,
}

/// What must change for a device holding `kernel` to be `desired`: key
/// and port only if they differ; a missing peer added, one whose endpoint
/// or allowed IPs differ updated in place, and (in [`Mode::Full`] only)
/// one not desired removed. A second peer with the tunnel address of
/// another, a key given twice, or the device's own key is refused.
pub fn diff_device(desired: &WireguardDevice, kernel: &DeviceState, mode: Mode) -> WireguardDiff {
    let mut diff = WireguardDiff::default();
    let private_key = clamped(desired.private_key);
    if kernel.private_key != Some(private_key) {
        diff.change.private_key = Some(private_key);
    }
    if kernel.port != desired.port {
        diff.change.port = Some(desired.port);
    }
    // The kernel silently ignores a peer with the device's own key.
    let own = kernel.public_key.filter(|_| diff.change.private_key.is_none());
    let mut sorted = desired.peers.clone();
    sorted.sort_unstable();
    let mut wanted: BTreeMap<[u8; 32], Peer> = BTreeMap::new();
    let mut by_tunnel: BTreeMap<Ipv6Addr, [u8; 32]> = BTreeMap::new();
    for peer in sorted {
        let refusal = if Some(peer.public_key) == own {
            Some("has this host's own key".to_owned())
        } else if wanted.contains_key(&peer.public_key) {
            Some("is given twice with other settings".to_owned())
        } else {
            by_tunnel
                .get(&peer.tunnel)
                .map(|other| format!("has the tunnel address {} of peer {}", peer.tunnel, short(other)))
        };
        match refusal {
            Some(why) => diff.refused.push(format!("peer {} refused: it {why}", short(&peer.public_key))),
            None => {
                by_tunnel.insert(peer.tunnel, peer.public_key);
                wanted.insert(peer.public_key, peer);
            }
        }
    }
    if mode == Mode::Full {
        let unwanted = kernel.peers.keys().filter(|key| !wanted.contains_key(*key));
        diff.change.peers.extend(unwanted.map(|key| PeerChange::Remove(*key)));
    }
    for peer in wanted.into_values() {
        match kernel.peers.get(&peer.public_key) {
            None => diff.change.peers.push(PeerChange::Add(peer)),
            Some(state) if !holds(state, &peer) => diff.change.peers.push(PeerChange::Update(peer)),
            Some(_) => {}
        }
    }
    diff
}

/// An X25519 private key as the kernel keeps it: clamped (RFC 7748 §5).
/// A key given unclamped (x25519-dalek's `StaticSecret` bytes may be)
/// would differ from the dump at every pass, and the kernel expires every
/// session when it is given a key other than its own.
fn clamped(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

/// Whether the kernel's `state` of a peer is `peer`: its endpoint (address
/// and port), and its tunnel address as its only allowed IP.
fn holds(state: &PeerState, peer: &Peer) -> bool {
    let endpoint = |e: SocketAddr| (e.ip(), e.port());
    state.endpoint.map(endpoint) == Some(endpoint(peer.endpoint))
        && state.allowed_ips == [(IpAddr::V6(peer.tunnel), 128)]
}

/// A key as errors name it: its first 8 bytes in hex.
fn short(key: &[u8; 32]) -> String {
    key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Netlink connections to the kernel's WireGuard and links, in the
/// namespace they were opened in.
pub struct KernelWireguard {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    genl: WireguardNetlink,
}

impl KernelWireguard {
    /// Opens the connections (inside a tokio runtime), creating `mwg0` if
    /// it is missing (down, with no address, until [`Self::reconcile`]):
    /// a kernel without WireGuard is [`NetdevError::NoKernelWireguard`],
    /// and an `mwg0` of another kind (a TUN left by the userspace path) is
    /// [`NetdevError::Conflict`] ([`remove_other_kind`] clears the way).
    /// An existing `mwg0` is adopted as it is.
    pub async fn open() -> Result<Self, NetdevError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        let connection = tokio::spawn(connection);
        let genl = async {
            ensure_link(&handle).await?;
            WireguardNetlink::open().await
        }
        .await;
        match genl {
            Ok(genl) => Ok(Self { handle, connection, genl }),
            Err(error) => {
                connection.abort();
                Err(error)
            }
        }
    }

    /// Makes `mwg0` match `desired`: the interface (recreated if someone
    /// deleted it), up with its MTU and the tunnel address `/64` (`nodad`),
    /// then the key, port and peers by [`diff_device`], in messages of at
    /// most [`PEERS_PER_MESSAGE`] peers. With [`Mode::AddOnly`] no peer is
    /// removed. Nothing is ever flushed, and the interface is never deleted.
    pub async fn reconcile(&self, desired: &WireguardDevice, mode: Mode) -> Result<WireguardReport, NetdevError> {
        let mut report = WireguardReport::default();
        let link = ensure_link(&self.handle).await?;
        report.set += usize::from(link.created);
        report.set += self.ensure_interface(&link.link, desired).await?;
        let diff = diff_device(desired, &self.genl.device(INTERFACE).await?, mode);
        report.errors.extend(diff.refused);
        for piece in diff.change.split(PEERS_PER_MESSAGE) {
            let removals = piece.peers.iter().filter(|p| matches!(p, PeerChange::Remove(_))).count();
            let sets = piece.peers.len() - removals
                + usize::from(piece.private_key.is_some())
                + usize::from(piece.port.is_some());
            match self.genl.set(INTERFACE, &piece).await {
                Ok(()) => {
                    report.set += sets;
                    report.removed += removals;
                }
                Err(error) => report.errors.push(format!("{INTERFACE}: {error}")),
            }
        }
        Ok(report)
    }

    /// `mwg0` as the kernel holds it: keys, port, and each peer's
    /// endpoint, allowed IPs, latest handshake and byte counts.
    pub async fn device(&self) -> Result<DeviceState, NetdevError> {
        self.genl.device(INTERFACE).await
    }

    /// What `mwg0` carried: its peers, their bytes and handshakes, and
    /// what the interface dropped on receipt.
    pub async fn stats(&self) -> Result<WireguardStats, NetdevError> {
        let device = self.device().await?;
        let index = kernel::links(&self.handle)
            .await?
            .get(INTERFACE)
            .map(|l| l.index)
            .ok_or(NetdevError::Missing(INTERFACE))?;
        let (rx_errors, rx_dropped) = kernel::receive_drops(&self.handle, index).await?.unwrap_or_default();
        Ok(WireguardStats {
            peers: device.peers.len(),
            rx_bytes: device.peers.values().map(|p| p.rx_bytes).sum(),
            tx_bytes: device.peers.values().map(|p| p.tx_bytes).sum(),
            handshakes: device.peers.iter().map(|(key, peer)| (*key, peer.last_handshake)).collect(),
            rx_errors,
            rx_dropped,
        })
    }

    /// Brings `link` (`mwg0`) up with the MTU of `desired` and gives it the
    /// tunnel address; answers how many of those it had to set.
    async fn ensure_interface(&self, link: &Link, desired: &WireguardDevice) -> Result<usize, NetdevError> {
        let mut set = 0;
        if link.mtu != desired.mtu || !link.up {
            kernel::set_mtu_up(&self.handle, link.index, desired.mtu).await?;
            set += 1;
        }
        let held = kernel::addresses6_of(&self.handle, link.index).await?;
        if !held.contains(&(desired.address, TUNNEL_PREFIX_LEN)) {
            kernel::ensure_address6(&self.handle, link.index, desired.address, TUNNEL_PREFIX_LEN).await?;
            set += 1;
        }
        Ok(set)
    }
}

/// The name of the link [`remove_other_kind`] makes to learn whether the
/// kernel has WireGuard.
const PROBE: &str = "mwg0probe";

/// Deletes an `mwg0` of another kind than `wireguard` (the TUN a
/// userspace run left), once the kernel has shown that it has WireGuard
/// by making a link of that kind ([`PROBE`], deleted at once), so that
/// [`KernelWireguard::open`] can make a kernel one. Answers the kind
/// deleted; `None` when there was nothing to delete (no `mwg0`, or one of
/// kind `wireguard`). A kernel without WireGuard is
/// [`NetdevError::NoKernelWireguard`], and `mwg0` stays as it was.
pub async fn remove_other_kind() -> Result<Option<String>, NetdevError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let removed = async {
        let links = kernel::links(&handle).await?;
        let Some(link) = links.get(INTERFACE).filter(|l| l.kind.as_deref() != Some("wireguard")) else {
            return Ok(None);
        };
        if !links.contains_key(PROBE) {
            kernel::add_wireguard(&handle, PROBE).await?;
        }
        if let Some(probe) = kernel::links(&handle).await?.get(PROBE) {
            kernel::remove_link(&handle, probe.index).await?;
        }
        kernel::remove_link(&handle, link.index).await?;
        Ok(Some(link.kind.clone().unwrap_or_else(|| "none".into())))
    }
    .await;
    connection.abort();
    removed
}

impl Drop for KernelWireguard {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// `mwg0`, and whether it was just created.
struct EnsuredLink {
    link: Link,
    created: bool,
}

/// Creates `mwg0` of kind `wireguard` if it is missing; refuses one of
/// another kind.
async fn ensure_link(handle: &Handle) -> Result<EnsuredLink, NetdevError> {
    let (link, created) = match kernel::links(handle).await?.remove(INTERFACE) {
        Some(link) => (link, false),
        None => {
            kernel::add_wireguard(handle, INTERFACE).await?;
            let link = kernel::links(handle).await?.remove(INTERFACE).ok_or(NetdevError::Missing("the new mwg0"))?;
            (link, true)
        }
    };
    if link.kind.as_deref() != Some("wireguard") {
        return Err(NetdevError::Conflict(format!(
            "{INTERFACE} exists and is of kind {}, not wireguard: remove it (ip link del {INTERFACE}) for the kernel path",
            link.kind.as_deref().unwrap_or("none")
        )));
    }
    Ok(EnsuredLink { link, created })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wireguard::test_peer as peer;

    /// What the kernel holds once it has `peer`, with a handshake.
    fn state(peer: &Peer) -> PeerState {
        PeerState {
            endpoint: Some(peer.endpoint),
            allowed_ips: vec![(IpAddr::V6(peer.tunnel), 128)],
            last_handshake: Some(Duration::from_secs(1_700_000_000)),
            rx_bytes: 1,
            tx_bytes: 1,
        }
    }

    /// A private key, clamped.
    const KEY: [u8; 32] = {
        let mut key = [0x41; 32];
        key[0] = 0x40;
        key
    };

    fn desired(peers: Vec<Peer>) -> WireguardDevice {
        WireguardDevice { private_key: KEY, port: 51820, address: peer(1).tunnel, mtu: 1420, peers }
    }

    /// The device once it is `desired` with peers `peers`.
    fn settled(peers: &[Peer]) -> DeviceState {
        DeviceState {
            private_key: Some(KEY),
            public_key: Some([0xaa; 32]),
            port: 51820,
            peers: peers.iter().map(|p| (p.public_key, state(p))).collect(),
        }
    }

    #[test]
    fn a_settled_device_needs_nothing() {
        let diff = diff_device(&desired(vec![peer(2), peer(3)]), &settled(&[peer(2), peer(3)]), Mode::Full);
        assert_eq!(diff, WireguardDiff::default());
    }

    #[test]
    fn a_fresh_device_gets_its_key_port_and_every_peer() {
        let diff = diff_device(&desired(vec![peer(3), peer(2)]), &DeviceState::default(), Mode::Full);
        assert_eq!(diff.change.private_key, Some(KEY));
        assert_eq!(diff.change.port, Some(51820));
        assert_eq!(diff.change.peers, vec![PeerChange::Add(peer(2)), PeerChange::Add(peer(3))]);
        assert!(diff.refused.is_empty());
    }

    #[test]
    fn a_moved_endpoint_or_other_allowed_ips_is_updated_in_place() {
        let mut kernel = settled(&[peer(2), peer(3)]);
        let moved = Peer { endpoint: SocketAddr::from(([198, 18, 1, 2], 51820)), ..peer(2) };
        if let Some(three) = kernel.peers.get_mut(&[3; 32]) {
            three.allowed_ips.push((IpAddr::V6(peer(9).tunnel), 128));
        }
        let diff = diff_device(&desired(vec![moved, peer(3)]), &kernel, Mode::Full);
        assert_eq!(diff.change.peers, vec![PeerChange::Update(moved), PeerChange::Update(peer(3))]);
        assert_eq!((diff.change.private_key, diff.change.port), (None, None), "key and port unchanged");
    }

    #[test]
    fn unwanted_peers_go_first_and_only_in_full_mode() {
        let kernel = settled(&[peer(2), peer(4)]);
        let full = diff_device(&desired(vec![peer(2), peer(3)]), &kernel, Mode::Full);
        assert_eq!(full.change.peers, vec![PeerChange::Remove([4; 32]), PeerChange::Add(peer(3))]);
        let add_only = diff_device(&desired(vec![peer(2), peer(3)]), &kernel, Mode::AddOnly);
        assert_eq!(add_only.change.peers, vec![PeerChange::Add(peer(3))]);
    }

    #[test]
    fn a_new_key_or_port_is_set_and_only_then() {
        let mut kernel = settled(&[peer(2)]);
        kernel.private_key = Some([5; 32]);
        kernel.port = 40000;
        let diff = diff_device(&desired(vec![peer(2)]), &kernel, Mode::Full);
        assert_eq!((diff.change.private_key, diff.change.port), (Some(KEY), Some(51820)));
        assert!(diff.change.peers.is_empty());
    }

    #[test]
    fn a_key_is_compared_as_the_kernel_keeps_it_clamped() {
        let unclamped = WireguardDevice { private_key: [0xff; 32], ..desired(vec![peer(2)]) };
        let mut key = [0xff; 32];
        key[0] = 0xf8;
        key[31] = 0x7f;
        let kernel = DeviceState { private_key: Some(key), ..settled(&[peer(2)]) };
        assert_eq!(diff_device(&unclamped, &kernel, Mode::Full), WireguardDiff::default());
        let fresh = diff_device(&unclamped, &DeviceState::default(), Mode::Full);
        assert_eq!(fresh.change.private_key, Some(key), "sent clamped");
    }

    #[test]
    fn a_second_peer_with_one_tunnel_address_and_the_own_key_are_refused() {
        let twin = Peer { tunnel: peer(2).tunnel, ..peer(5) };
        let own = Peer { public_key: [0xaa; 32], ..peer(6) };
        let kernel = settled(&[peer(2)]);
        let diff = diff_device(&desired(vec![twin, peer(2), own]), &kernel, Mode::Full);
        assert_eq!(diff.change, DeviceChange::default(), "the first by key stays, nothing else is programmed");
        assert_eq!(diff.refused.len(), 2, "{:?}", diff.refused);
        assert!(diff.refused.iter().any(|r| r.contains("tunnel address") && r.starts_with("peer 0505")));
        assert!(diff.refused.iter().any(|r| r.contains("own key")));
    }
}
