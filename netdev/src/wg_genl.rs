//! The kernel's WireGuard over generic netlink: the `wireguard` family's
//! id (`CTRL_CMD_GETFAMILY`), a device as the kernel holds it
//! (`WG_CMD_GET_DEVICE`, a dump), and changes to one (`WG_CMD_SET_DEVICE`).
//! A thin wrapper over netlink-proto 0.14, the connection type rtnetlink
//! already brings, rather than the `genetlink` crate (DESIGN.md, "Kernel
//! path"). Knows nothing of links or addresses: that is `kernel`'s.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use netlink_packet_core::{
    Emitable, NetlinkMessage, NetlinkPayload, ParseableParametrized, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd,
    WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_proto::sys::protocols::NETLINK_GENERIC;
use netlink_proto::ConnectionHandle;

use crate::error::NetdevError;
use crate::wireguard::Peer;

/// Most peers one `WG_CMD_SET_DEVICE` message carries: 200 peers are
/// about 26 KB, well inside a netlink socket's buffer.
pub const PEERS_PER_MESSAGE: usize = 200;

/// The kernel's "no such file or directory", its answer to a family it
/// does not know.
const ENOENT: i32 = 2;

/// A peer as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    /// Where the kernel sends to it (the last given, or where it roamed).
    pub endpoint: Option<SocketAddr>,
    /// Its allowed IPs with their prefix lengths, sorted.
    pub allowed_ips: Vec<(IpAddr, u8)>,
    /// Its latest handshake, since the Unix epoch; `None` if never.
    pub last_handshake: Option<Duration>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// A WireGuard device as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Its private key, if it has one.
    pub private_key: Option<[u8; 32]>,
    /// The public key of that private key.
    pub public_key: Option<[u8; 32]>,
    /// Its UDP port (0 until one is set and the device is up).
    pub port: u16,
    /// Its peers, by public key.
    pub peers: BTreeMap<[u8; 32], PeerState>,
}

/// One change to a device's peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// Adds the peer: its endpoint, and its tunnel address /128 as its
    /// only allowed IP.
    Add(Peer),
    /// Sets an existing peer's endpoint and allowed IP in place
    /// (`WGPEER_F_UPDATE_ONLY | WGPEER_F_REPLACE_ALLOWEDIPS`): its sessions
    /// stay.
    Update(Peer),
    /// Removes the peer with this public key (`WGPEER_F_REMOVE_ME`).
    Remove([u8; 32]),
}

/// What to change on a device, applied in order; nothing else is touched
/// (never `WGDEVICE_F_REPLACE_PEERS`, which would flush every peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChange {
    /// A new private key.
    pub private_key: Option<[u8; 32]>,
    /// A new UDP port.
    pub port: Option<u16>,
    /// Peer changes, in the order the kernel is to apply them.
    pub peers: Vec<PeerChange>,
}

impl DeviceChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.port.is_none() && self.peers.is_empty()
    }

    /// The change in pieces of at most `peers` peer changes each (at least
    /// one), in order, the private key and port in the first.
    pub fn split(&self, peers: usize) -> Vec<DeviceChange> {
        let mut pieces: Vec<DeviceChange> = self
            .peers
            .chunks(peers.max(1))
            .map(|chunk| DeviceChange { private_key: None, port: None, peers: chunk.to_vec() })
            .collect();
        match pieces.first_mut() {
            Some(first) => {
                first.private_key = self.private_key;
                first.port = self.port;
            }
            None if !self.is_empty() => pieces.push(self.clone()),
            None => {}
        }
        pieces
    }
}

/// A generic netlink connection to the kernel's WireGuard, in the
/// namespace it was opened in.
pub struct WireguardNetlink {
    handle: ConnectionHandle<GenlMessage<WireguardMessage>>,
    family: u16,
    connection: tokio::task::JoinHandle<()>,
}

impl WireguardNetlink {
    /// Resolves the `wireguard` family and opens the connection (inside a
    /// tokio runtime). A kernel that knows no such family (no module) is
    /// [`NetdevError::NoKernelWireguard`].
    pub async fn open() -> Result<Self, NetdevError> {
        let family = family_id(WireguardMessage::family_name()).await?;
        let (connection, handle, _) = netlink_proto::new_connection(NETLINK_GENERIC)?;
        Ok(Self { handle, family, connection: tokio::spawn(connection) })
    }

    /// The device `name` as the kernel holds it; a peer the kernel spread
    /// over two messages (many allowed IPs) is merged back by its key.
    pub async fn device(&self, name: &str) -> Result<DeviceState, NetdevError> {
        let message = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(name.to_owned())],
        };
        let replies = request(&self.handle, self.family, message, NLM_F_REQUEST | NLM_F_DUMP)
            .await
            .map_err(|failure| failure.into_error("device dump"))?;
        Ok(device_of(replies.iter().map(|reply| reply.attributes.as_slice())))
    }

    /// Applies `change` to the device `name` in one message: the caller
    /// keeps it to [`PEERS_PER_MESSAGE`] peers ([`DeviceChange::split`]).
    /// On an error, the peers before the failing one are changed.
    pub async fn set(&self, name: &str, change: &DeviceChange) -> Result<(), NetdevError> {
        let message = message_of(name, change);
        request(&self.handle, self.family, message, NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(drop)
            .map_err(|failure| failure.into_error("device set"))
    }
}

impl Drop for WireguardNetlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The id the kernel gave the generic netlink family `name`, over a
/// connection of its own.
async fn family_id(name: &str) -> Result<u16, NetdevError> {
    const WHAT: &str = "family lookup";
    let (connection, handle, _) = netlink_proto::new_connection(NETLINK_GENERIC)?;
    let task = tokio::spawn(connection);
    let message = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())] };
    let replies = request(&handle, 0, message, NLM_F_REQUEST).await;
    task.abort();
    let replies = match replies {
        Ok(replies) => replies,
        Err(Failure { errno: Some(ENOENT), .. }) => {
            return Err(NetdevError::NoKernelWireguard(format!("no generic netlink family {name}")));
        }
        Err(failure) => return Err(failure.into_error(WHAT)),
    };
    let id = replies.iter().flat_map(|reply| &reply.nlas).find_map(|nla| match nla {
        GenlCtrlAttrs::FamilyId(id) => Some(*id),
        _ => None,
    });
    id.ok_or(NetdevError::Wireguard { what: WHAT, reason: format!("no id in the answer for {name}") })
}

/// Why a request failed: the kernel's errno if it answered with one.
struct Failure {
    errno: Option<i32>,
    reason: String,
}

impl Failure {
    fn into_error(self, what: &'static str) -> NetdevError {
        NetdevError::Wireguard { what, reason: self.reason }
    }
}

/// Sends `payload` (to family `family`, or the payload's own fixed one)
/// with `flags` and collects the answers until the kernel's last.
async fn request<F>(
    handle: &ConnectionHandle<GenlMessage<F>>,
    family: u16,
    payload: F,
    flags: u16,
) -> Result<Vec<F>, Failure>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
{
    let mut message = GenlMessage::from_payload(payload);
    message.set_resolved_family_id(family);
    let mut message = NetlinkMessage::from(message);
    message.header.flags = flags;
    message.finalize();
    let destination = netlink_proto::sys::SocketAddr::new(0, 0);
    let mut replies =
        handle.request(message, destination).map_err(|error| Failure { errno: None, reason: error.to_string() })?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(message) => out.push(message.payload),
            NetlinkPayload::Error(error) if error.code.is_some() => {
                return Err(Failure { errno: Some(error.raw_code().abs()), reason: error.to_string() });
            }
            NetlinkPayload::Overrun(_) => {
                return Err(Failure { errno: None, reason: "the socket overran: answers were lost".into() });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The `WG_CMD_SET_DEVICE` message that makes `change` on device `name`.
fn message_of(name: &str, change: &DeviceChange) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfName(name.to_owned())];
    attributes.extend(change.private_key.map(WireguardAttribute::PrivateKey));
    attributes.extend(change.port.map(WireguardAttribute::ListenPort));
    if !change.peers.is_empty() {
        attributes.push(WireguardAttribute::Peers(change.peers.iter().map(peer_of).collect()));
    }
    WireguardMessage { cmd: WireguardCmd::SetDevice, attributes }
}

fn peer_of(change: &PeerChange) -> WireguardPeer {
    let (peer, flags) = match change {
        PeerChange::Remove(key) => {
            return WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ]);
        }
        // An added peer replaces allowed IPs too: if it appeared since the
        // dump, it still ends with exactly its own.
        PeerChange::Add(peer) => (peer, WireguardPeerFlags::ReplaceAllowedIps),
        PeerChange::Update(peer) => (peer, WireguardPeerFlags::UpdateOnly | WireguardPeerFlags::ReplaceAllowedIps),
    };
    let allowed = WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
        WireguardAllowedIpAttr::IpAddr(IpAddr::V6(peer.tunnel)),
        WireguardAllowedIpAttr::Cidr(128),
    ]);
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(peer.public_key),
        WireguardPeerAttribute::Flags(flags),
        WireguardPeerAttribute::Endpoint(peer.endpoint),
        WireguardPeerAttribute::AllowedIps(vec![allowed]),
    ])
}

/// A device from the messages of its dump: the device's own attributes
/// come in the first, peers in any, one peer possibly in two.
fn device_of<'a>(messages: impl IntoIterator<Item = &'a [WireguardAttribute]>) -> DeviceState {
    let mut device = DeviceState::default();
    for attribute in messages.into_iter().flatten() {
        match attribute {
            WireguardAttribute::PrivateKey(key) => device.private_key = Some(*key).filter(|k| *k != [0; 32]),
            WireguardAttribute::PublicKey(key) => device.public_key = Some(*key).filter(|k| *k != [0; 32]),
            WireguardAttribute::ListenPort(port) => device.port = *port,
            WireguardAttribute::Peers(peers) => {
                for peer in peers {
                    merge_peer(&mut device.peers, peer);
                }
            }
            _ => {}
        }
    }
    for peer in device.peers.values_mut() {
        peer.allowed_ips.sort_unstable();
        peer.allowed_ips.dedup();
    }
    device
}

/// Adds what `peer` says to the peer of its key in `peers`.
fn merge_peer(peers: &mut BTreeMap<[u8; 32], PeerState>, peer: &WireguardPeer) {
    let Some(key) = peer.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(key) => Some(*key),
        _ => None,
    }) else {
        return;
    };
    let state = peers.entry(key).or_default();
    for attribute in peer.iter() {
        match attribute {
            WireguardPeerAttribute::Endpoint(endpoint) => state.endpoint = Some(*endpoint),
            WireguardPeerAttribute::LastHandshake(time) => {
                let since = u64::try_from(time.seconds).ok().zip(u32::try_from(time.nano_seconds).ok());
                state.last_handshake =
                    since.map(|(s, n)| Duration::new(s, n)).filter(|since| !since.is_zero()).or(state.last_handshake);
            }
            WireguardPeerAttribute::RxBytes(bytes) => state.rx_bytes = *bytes,
            WireguardPeerAttribute::TxBytes(bytes) => state.tx_bytes = *bytes,
            WireguardPeerAttribute::AllowedIps(ips) => state.allowed_ips.extend(ips.iter().filter_map(allowed_ip_of)),
            _ => {}
        }
    }
}

fn allowed_ip_of(ip: &WireguardAllowedIp) -> Option<(IpAddr, u8)> {
    let address = ip.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::IpAddr(address) => Some(*address),
        _ => None,
    })?;
    let prefix = ip.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::Cidr(prefix) => Some(*prefix),
        _ => None,
    })?;
    Some((address, prefix))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use netlink_packet_wireguard::WireguardTimeSpec;

    use super::*;

    use crate::wireguard::test_peer as peer;

    fn allowed(ip: Ipv6Addr, prefix: u8) -> WireguardAllowedIp {
        WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
            WireguardAllowedIpAttr::IpAddr(IpAddr::V6(ip)),
            WireguardAllowedIpAttr::Cidr(prefix),
        ])
    }

    #[test]
    fn a_peer_spread_over_two_messages_is_one_peer() {
        let (one, two) = (Ipv6Addr::new(0xfd6d, 0, 0, 0, 0, 0, 0, 1), Ipv6Addr::new(0xfd6d, 0, 0, 0, 0, 0, 0, 2));
        let first = vec![
            WireguardAttribute::PrivateKey([7; 32]),
            WireguardAttribute::PublicKey([8; 32]),
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey([2; 32]),
                WireguardPeerAttribute::Endpoint(peer(2).endpoint),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec { seconds: 1_700_000_000, nano_seconds: 5 }),
                WireguardPeerAttribute::RxBytes(10),
                WireguardPeerAttribute::AllowedIps(vec![allowed(two, 128)]),
            ])]),
        ];
        let second = vec![WireguardAttribute::Peers(vec![
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey([2; 32]),
                WireguardPeerAttribute::AllowedIps(vec![allowed(one, 128)]),
            ]),
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey([3; 32]),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
            ]),
        ])];
        let device = device_of([first.as_slice(), second.as_slice()]);
        assert_eq!((device.private_key, device.public_key, device.port), (Some([7; 32]), Some([8; 32]), 51820));
        assert_eq!(device.peers.len(), 2);
        let merged = &device.peers[&[2; 32]];
        assert_eq!(merged.allowed_ips, vec![(IpAddr::V6(one), 128), (IpAddr::V6(two), 128)]);
        assert_eq!(merged.endpoint, Some(peer(2).endpoint));
        assert_eq!(merged.last_handshake, Some(Duration::new(1_700_000_000, 5)), "kept across the messages");
        assert_eq!(merged.rx_bytes, 10);
        assert_eq!(device.peers[&[3; 32]].last_handshake, None, "a zero time is never");
    }

    #[test]
    fn a_device_without_keys_has_none() {
        let device =
            device_of([[WireguardAttribute::PrivateKey([0; 32]), WireguardAttribute::PublicKey([0; 32])].as_slice()]);
        assert_eq!((device.private_key, device.public_key), (None, None));
    }

    #[test]
    fn changes_carry_the_flags_of_their_kind_and_never_replace_peers() {
        let change = DeviceChange {
            private_key: Some([9; 32]),
            port: Some(51821),
            peers: vec![PeerChange::Remove([4; 32]), PeerChange::Add(peer(2)), PeerChange::Update(peer(3))],
        };
        let message = message_of("mwg0", &change);
        assert_eq!(message.cmd, WireguardCmd::SetDevice);
        assert!(!message.attributes.iter().any(|a| matches!(a, WireguardAttribute::Flags(_))), "no device flags");
        let Some(WireguardAttribute::Peers(peers)) = message.attributes.last() else { panic!("no peers") };
        let flags: Vec<_> = peers
            .iter()
            .map(|p| {
                p.iter().find_map(|a| match a {
                    WireguardPeerAttribute::Flags(flags) => Some(*flags),
                    _ => None,
                })
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                Some(WireguardPeerFlags::RemoveMe),
                Some(WireguardPeerFlags::ReplaceAllowedIps),
                Some(WireguardPeerFlags::UpdateOnly | WireguardPeerFlags::ReplaceAllowedIps),
            ]
        );
        assert_eq!(peers[0].len(), 2, "a removal names the key only");
        assert!(peers[2].contains(&WireguardPeerAttribute::AllowedIps(vec![allowed(peer(3).tunnel, 128)])));
    }

    #[test]
    fn a_change_splits_into_messages_of_at_most_the_limit() {
        let change = DeviceChange {
            private_key: Some([9; 32]),
            port: None,
            peers: (0..=200).map(|d| PeerChange::Add(peer(d))).collect(),
        };
        let pieces = change.split(PEERS_PER_MESSAGE);
        assert_eq!(pieces.iter().map(|p| p.peers.len()).collect::<Vec<_>>(), vec![200, 1]);
        assert_eq!((pieces[0].private_key, pieces[1].private_key), (Some([9; 32]), None));
        assert_eq!(pieces.into_iter().flat_map(|p| p.peers).collect::<Vec<_>>(), change.peers, "in order");
        let key_only = DeviceChange { port: Some(1), ..DeviceChange::default() };
        assert_eq!(key_only.split(PEERS_PER_MESSAGE), vec![key_only.clone()]);
        assert!(DeviceChange::default().split(PEERS_PER_MESSAGE).is_empty());
    }
}
