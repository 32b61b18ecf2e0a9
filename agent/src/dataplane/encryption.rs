//! This host's encrypted path (DESIGN.md, "Encrypted data plane"): which
//! WireGuard carries its encrypted networks, chosen at start-up (the
//! kernel's if it has one, else the agent's over a TUN device, else none,
//! with the reason), and its peers, kept equal to the members that
//! announce a key and are alive, suspect, or down for less than
//! [`DOWN_GRACE`].

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use mesh_membership::records::view::View;
use mesh_membership::records::{EncryptionPath, MemberSpec};
use mesh_membership::{MemberInfo, NodeId, Status};
use mesh_netdev::wg_genl::PeerState;
use mesh_netdev::wg_kernel::{self, KernelWireguard, WireguardDevice};
use mesh_netdev::wireguard::{self, Mode, Peer};
use mesh_netdev::NetdevError;

use super::userspace::{UserspaceConfig, UserspaceWireguard};
use super::DOWN_GRACE;
use crate::api::EncryptionBody;
use crate::config::{EncryptionSettings, WireguardMode};
use crate::datadir::WireguardKey;

/// This host's encrypted path.
pub(crate) struct Encryption {
    key: WireguardKey,
    port: u16,
    tunnel: Ipv6Addr,
    /// `mwg0`'s MTU.
    mtu: u32,
    path: Path,
    /// The keys this run has wanted as peers: one of them no longer wanted
    /// is known to be gone (removed, left, down too long), so even a pass
    /// in [`Mode::AddOnly`] removes it. (Add-only guards what a restarted
    /// agent does not know yet, not what it saw go.)
    known: Mutex<BTreeSet<[u8; 32]>>,
}

/// Which WireGuard runs here.
enum Path {
    /// The kernel's, on `mwg0`, configured over generic netlink.
    Kernel(KernelWireguard),
    /// The agent's, over the TUN `mwg0`.
    Userspace(UserspaceWireguard),
    /// None, and why.
    None(String),
}

impl Encryption {
    /// Finds this host's path as `settings` allow, over an underlay whose
    /// interface holding `underlay` has MTU `underlay_mtu`: an existing
    /// kernel `mwg0` or a new one, else the agent's own WireGuard, else
    /// none (with the reason, which the log, `mesh status` and refused
    /// sandboxes give).
    pub(crate) async fn start(
        settings: &EncryptionSettings,
        key: WireguardKey,
        me: NodeId,
        underlay: IpAddr,
        underlay_mtu: u32,
    ) -> Self {
        let tunnel = wireguard::tunnel_address(&me.0);
        let mtu = wireguard::interface_mtu(underlay_mtu, underlay);
        let mut reasons = Vec::new();
        let path = 'found: {
            if settings.mode == WireguardMode::Off {
                break 'found Path::None("encryption is off on this host (wireguard = \"off\")".into());
            }
            if matches!(settings.mode, WireguardMode::Auto | WireguardMode::Kernel) {
                match open_kernel().await {
                    Ok(kernel) => break 'found Path::Kernel(kernel),
                    Err(error) => reasons.push(format!("kernel WireGuard: {error}")),
                }
            }
            if matches!(settings.mode, WireguardMode::Auto | WireguardMode::Userspace) {
                let config = UserspaceConfig {
                    name: wireguard::INTERFACE.into(),
                    tun_device: settings.tun_device.clone(),
                    private_key: key.private(),
                    port: settings.port,
                    address: tunnel,
                    mtu,
                };
                match UserspaceWireguard::start(config) {
                    Ok(device) => break 'found Path::Userspace(device),
                    Err(error) => reasons.push(format!("userspace WireGuard: {error}")),
                }
            }
            Path::None(format!("this host cannot carry encrypted networks: {}", reasons.join("; ")))
        };
        match &path {
            Path::None(reason) => tracing::warn!(%reason, "no encrypted path"),
            Path::Kernel(_) => tracing::info!(%tunnel, port = settings.port, "encrypted path: kernel WireGuard"),
            Path::Userspace(_) => {
                tracing::info!(%tunnel, port = settings.port, reasons = %reasons.join("; "), "encrypted path: the agent's WireGuard")
            }
        }
        if !matches!(path, Path::None(_)) {
            enable_ipv6(wireguard::INTERFACE);
        }
        Self { key, port: settings.port, tunnel, mtu, path, known: Mutex::default() }
    }

    /// This host's tunnel address, if it has an encrypted path.
    pub(crate) fn tunnel(&self) -> Option<Ipv6Addr> {
        (!matches!(self.path, Path::None(_))).then_some(self.tunnel)
    }

    /// What this host announces in its member record.
    pub(crate) fn member_spec(&self) -> MemberSpec {
        MemberSpec { wireguard_key: self.key.public(), wireguard_port: self.port, path: self.kind() }
    }

    fn kind(&self) -> EncryptionPath {
        match self.path {
            Path::Kernel(_) => EncryptionPath::Kernel,
            Path::Userspace(_) => EncryptionPath::Userspace,
            Path::None(_) => EncryptionPath::None,
        }
    }

    /// Makes the WireGuard's peers `peers`; with `mode` [`Mode::AddOnly`]
    /// none is removed that this run did not see go or that is not of a
    /// member in `removed`. Answers how many were set and removed.
    pub(crate) async fn reconcile(
        &self,
        peers: &[Peer],
        removed: &BTreeSet<NodeId>,
        mode: Mode,
    ) -> Result<(usize, usize), String> {
        let known: BTreeSet<[u8; 32]> = {
            let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            known.extend(peers.iter().map(|p| p.public_key));
            known.clone()
        };
        match &self.path {
            Path::Kernel(kernel) => {
                let mode = match mode {
                    Mode::Full => Mode::Full,
                    Mode::AddOnly => {
                        let held = kernel.device().await.map_err(|e| e.to_string())?;
                        // A removed member's tunnel address names its
                        // peer, whose key the view no longer holds.
                        let gone: BTreeSet<IpAddr> =
                            removed.iter().map(|id| IpAddr::V6(wireguard::tunnel_address(&id.0))).collect();
                        let mut unwanted =
                            held.peers.iter().filter(|(k, _)| !peers.iter().any(|p| p.public_key == **k));
                        let seen_go = |(key, state): (&[u8; 32], &PeerState)| {
                            known.contains(key) || state.allowed_ips.iter().any(|(ip, _)| gone.contains(ip))
                        };
                        match unwanted.all(seen_go) {
                            true => Mode::Full,
                            false => Mode::AddOnly,
                        }
                    }
                };
                let desired = WireguardDevice {
                    private_key: self.key.private(),
                    port: self.port,
                    address: self.tunnel,
                    mtu: self.mtu,
                    peers: peers.to_vec(),
                };
                let report = kernel.reconcile(&desired, mode).await.map_err(|e| e.to_string())?;
                match report.errors.is_empty() {
                    true => Ok((report.set, report.removed)),
                    false => Err(report.errors.join("; ")),
                }
            }
            // Its device starts empty with each run: every peer it holds
            // was set by this run, knowingly, so it never needs add-only.
            Path::Userspace(device) => {
                // The device answers from its own thread within microseconds.
                let changes = tokio::task::block_in_place(|| device.set_peers(peers)).map_err(|e| e.to_string())?;
                Ok((changes.set, changes.removed))
            }
            Path::None(_) => Ok((0, 0)),
        }
    }

    /// What `mesh status` shows.
    pub(crate) async fn body(&self) -> EncryptionBody {
        let mut body = EncryptionBody {
            path: self.kind().as_str().into(),
            reason: None,
            port: self.port,
            tunnel: self.tunnel.to_string(),
            public_key: self.key.public_base64(),
            ..EncryptionBody::default()
        };
        if !matches!(self.path, Path::None(_)) {
            match mesh_netdev::firewall::guard_drops().await {
                Ok(drops) => body.guard_dropped = drops.into_iter().collect(),
                Err(error) => tracing::debug!(%error, "cannot read the tunnel guard's counters"),
            }
        }
        match &self.path {
            Path::None(reason) => body.reason = Some(reason.clone()),
            Path::Userspace(device) => {
                let stats = tokio::task::block_in_place(|| device.stats());
                let dropped = stats.dropped;
                body.peers = stats.peers;
                body.dropped = [
                    ("malformed", dropped.malformed),
                    ("unknown_session", dropped.unknown_session),
                    ("rejected", dropped.rejected),
                    ("rejected_handshakes", dropped.rejected_handshakes),
                ]
                .into_iter()
                .map(|(reason, n)| (reason.to_owned(), n))
                .collect();
            }
            Path::Kernel(kernel) => match kernel.stats().await {
                Ok(stats) => {
                    body.peers = stats.peers;
                    body.dropped = [("receive_errors", stats.rx_errors), ("receive_dropped", stats.rx_dropped)]
                        .into_iter()
                        .map(|(reason, n)| (reason.to_owned(), n))
                        .collect();
                }
                Err(error) => body.reason = Some(format!("cannot read the kernel's counters: {error}")),
            },
        }
        body
    }
}

/// The kernel's WireGuard on `mwg0`, made or adopted; an `mwg0` of
/// another kind (the TUN a userspace run left) is replaced once the kernel
/// has shown it has WireGuard, and stays if it has not.
async fn open_kernel() -> Result<KernelWireguard, NetdevError> {
    match KernelWireguard::open().await {
        Err(NetdevError::Conflict(conflict)) => {
            let Some(kind) = wg_kernel::remove_other_kind().await? else {
                return Err(NetdevError::Conflict(conflict));
            };
            tracing::info!(kind, "replaced the {kind} mwg0 a userspace run left with a kernel WireGuard one");
            KernelWireguard::open().await
        }
        opened => opened,
    }
}

/// Turns IPv6 on for `interface` (the tunnel is IPv6 even on a host
/// booted with IPv6 off by default for new interfaces).
fn enable_ipv6(interface: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    match std::fs::read_to_string(&path) {
        Ok(value) if value.trim() == "0" => {}
        Ok(_) => {
            if let Err(error) = std::fs::write(&path, "0") {
                tracing::warn!(%error, path, "cannot turn IPv6 on for the tunnel");
            }
        }
        Err(error) => tracing::warn!(%error, path, "this host has no IPv6: encrypted networks will not work"),
    }
}

/// The peers this host's WireGuard should have: every other member with
/// a member record (a removed member has none in the view) that is alive
/// or suspect, or down for less than [`DOWN_GRACE`] (`down_since`), at its
/// advertise address and announced port.
pub(crate) fn desired_peers(
    view: &View,
    members: &[MemberInfo],
    me: NodeId,
    down_since: &HashMap<NodeId, Instant>,
) -> Vec<Peer> {
    let mut peers: Vec<Peer> = members
        .iter()
        .filter(|m| m.identity.id != me)
        .filter(|m| match m.status {
            Status::Alive | Status::Suspect => true,
            Status::Down => down_since.get(&m.identity.id).is_some_and(|at| at.elapsed() < DOWN_GRACE),
            Status::Left => false,
        })
        .filter_map(|m| {
            let spec = view.members().get(&m.identity.id)?;
            Some(Peer {
                public_key: spec.wireguard_key,
                endpoint: SocketAddr::new(m.identity.addr.ip(), spec.wireguard_port),
                tunnel: wireguard::tunnel_address(&m.identity.id.0),
            })
        })
        .collect();
    peers.sort();
    // Two members with one tunnel address (a 64-bit collision) would
    // steal each other's packets: neither is programmed.
    let mut count: HashMap<Ipv6Addr, usize> = HashMap::new();
    for peer in &peers {
        *count.entry(peer.tunnel).or_default() += 1;
    }
    peers.retain(|p| {
        let unique = count.get(&p.tunnel).copied() == Some(1);
        if !unique {
            tracing::error!(tunnel = %p.tunnel, "two members share a tunnel address: neither is a WireGuard peer");
        }
        unique
    });
    peers
}
