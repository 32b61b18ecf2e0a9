//! The userspace WireGuard path (DESIGN.md, "Encrypted data plane",
//! "Userspace path"): gotatun's tokio device over a TUN `mwg0` made with
//! tun-rs, for hosts whose kernel has no WireGuard. The only user of
//! gotatun and tun-rs, so their `unsafe` stays in those crates.
//!
//! [`UserspaceWireguard::start`] opens (or adopts) the persistent TUN,
//! gives it its tunnel address (`/64`, `nodad`), MTU and up, binds the UDP
//! port on every address and runs the device on a runtime of its own, one
//! worker per core, on a thread started by the caller: that thread and
//! its workers are in the caller's network namespace, and so are the TUN
//! and the socket. The handle's methods send commands to that runtime and
//! wait for the answer, so they may be called from any thread (inside
//! another runtime too: they block for the few milliseconds a command
//! takes). [`UserspaceWireguard::stop`] (or dropping the handle) stops
//! the device and leaves the TUN, its address and what is routed over it.
//!
//! Rooms: [`tun`] (the TUN end), [`udp`] (the UDP end), [`peers`] (the
//! diff), [`counters`] (what both ends count).

mod counters;
mod peers;
mod tun;
mod udp;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use gotatun::device::{Device, DeviceBuilder, Peer as DevicePeer};
use gotatun::noise::index_table::IndexTable;
use gotatun::udp::socket::UdpSocketFactory;
use gotatun::x25519::{PublicKey, StaticSecret};
use mesh_netdev::wireguard::{Peer, TUNNEL_PREFIX_LEN};
use mesh_netdev::{kernel, netns, NetdevError};
use tokio::sync::mpsc;

use self::counters::Counters;
pub(crate) use self::counters::UserspaceStats;
use self::peers::{diff, Held};
use self::tun::{TunReader, TunWriter};
use self::udp::CountingUdp;

/// The TUN control device tun-rs opens (whatever `tun_device` says).
const TUN_CONTROL: &str = "/dev/net/tun";

/// The smallest MTU that carries IPv6 (the kernel takes IPv6 off a link
/// with less).
const IPV6_MIN_MTU: u32 = 1280;

/// How long the initiation for a newly added peer is waited on (after
/// that, gotatun's timers retry when there is traffic): WireGuard's
/// `REKEY_TIMEOUT`.
const INITIATION_WAIT: Duration = Duration::from_secs(5);

/// The socket buffers asked for (the kernel caps them at `rmem_max` and
/// `wmem_max`): room for a burst of 64 KiB super-packets.
const SOCKET_BUFFER: usize = 4 << 20;

/// What the device needs to start.
#[derive(Debug, Clone)]
pub(crate) struct UserspaceConfig {
    /// The TUN's name ([`mesh_netdev::wireguard::INTERFACE`]).
    pub(crate) name: String,
    /// The TUN control device that must open (config `tun_device`;
    /// `/dev/net/tun`). tun-rs itself always opens `/dev/net/tun`, so
    /// another path only serves to refuse (tests give a missing one).
    pub(crate) tun_device: PathBuf,
    /// This host's static private key (X25519).
    pub(crate) private_key: [u8; 32],
    /// The UDP port, bound on every address (IPv4 and IPv6).
    pub(crate) port: u16,
    /// This host's tunnel address, put on the TUN as a /64, `nodad`.
    pub(crate) address: Ipv6Addr,
    /// The TUN's MTU ([`mesh_netdev::wireguard::interface_mtu`]).
    pub(crate) mtu: u32,
}

/// Why the userspace device cannot start or do what it was asked; the
/// device's state is unchanged by a failed call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UserspaceError {
    /// The TUN control device cannot be opened: the host (or the
    /// container the agent runs in) gives no TUN.
    #[error("this host cannot carry encrypted networks: cannot open {}: {source}: load the wireguard module (modprobe wireguard) or give the agent /dev/net/tun", path.display())]
    NoTunDevice {
        /// The control device.
        path: PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The TUN could not be created or attached to (another kind of
    /// device of that name, or one made with other flags).
    #[error("cannot create or adopt the TUN {name}: {source}")]
    Tun {
        /// Its name.
        name: String,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The MTU cannot carry IPv6 or is no TUN MTU.
    #[error("MTU {0} is out of range: the tunnel carries IPv6, which needs at least 1280 (and a TUN at most 65535)")]
    Mtu(u32),
    /// IPv6 cannot be turned on for the TUN (a kernel without IPv6).
    #[error("cannot enable IPv6 on {name} ({}): {source}: a host without IPv6 has no encrypted path", path.display())]
    NoIpv6 {
        /// The TUN's name.
        name: String,
        /// The sysctl written.
        path: PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The tunnel address could not be given to the TUN.
    #[error("cannot give {name} its tunnel address: {source}")]
    Address {
        /// The TUN's name.
        name: String,
        /// The kernel's answer.
        source: NetdevError,
    },
    /// Another program (or the kernel's WireGuard) holds the UDP port.
    #[error("UDP port {port} is in use (by another WireGuard, kernel or userspace, or another program): free it or set wireguard_port")]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// The UDP port could not be bound for another reason.
    #[error("cannot bind UDP port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The device's threads could not be started.
    #[error("cannot start the userspace WireGuard threads: {0}")]
    Runtime(#[source] std::io::Error),
    /// gotatun refused a configuration.
    #[error("userspace WireGuard: {0}")]
    Device(#[source] gotatun::device::Error),
    /// A peer list with two peers of one key or one tunnel address;
    /// nothing was changed.
    #[error("refused peer list: {0}")]
    DuplicatePeer(String),
    /// The device's thread is gone (it panicked); stop and start again.
    #[error("the userspace WireGuard device has stopped")]
    Stopped,
}

/// A command for the device's runtime, with where to answer.
enum Command {
    /// Make the peers exactly these.
    SetPeers(Vec<Peer>, std_mpsc::SyncSender<Result<PeerChanges, UserspaceError>>),
    /// Count peers and handshakes.
    Stats(std_mpsc::SyncSender<(usize, u64)>),
}

/// The device as gotatun types it.
type WgDevice = Device<(CountingUdp, TunWriter, TunReader)>;

/// What a [`UserspaceWireguard::set_peers`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerChanges {
    /// Peers added or updated.
    pub(crate) set: usize,
    /// Peers removed.
    pub(crate) removed: usize,
}

/// A running userspace WireGuard device.
pub(crate) struct UserspaceWireguard {
    /// Where commands go; dropped to stop the device.
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// What the device's ends count.
    counters: Arc<Counters>,
    /// The thread that owns the device's runtime.
    thread: Option<JoinHandle<()>>,
}

impl UserspaceWireguard {
    /// Opens (or adopts, if a persistent TUN of that name exists) the TUN,
    /// sets its address, MTU and up, binds UDP `port` on all addresses and
    /// starts the WireGuard device on its own runtime (one worker per
    /// core), all in the calling thread's network namespace. Blocks until
    /// the device runs or has failed.
    pub(crate) fn start(config: UserspaceConfig) -> Result<Self, UserspaceError> {
        check_tun_device(&config.tun_device)?;
        let mtu = u16::try_from(config.mtu)
            .ok()
            .filter(|mtu| u32::from(*mtu) >= IPV6_MIN_MTU)
            .ok_or(UserspaceError::Mtu(config.mtu))?;
        let counters = Arc::new(Counters::default());
        let (commands, received) = mpsc::unbounded_channel();
        let (ready, started) = std_mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(config.name.clone())
            .spawn({
                let counters = Arc::clone(&counters);
                move || run(&config, mtu, counters, received, &ready)
            })
            .map_err(UserspaceError::Runtime)?;
        match started.recv() {
            Ok(Ok(())) => Ok(Self { commands: Some(commands), counters, thread: Some(thread) }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(UserspaceError::Stopped)
            }
        }
    }

    /// Makes the device's peers exactly `peers` by diff: adds missing
    /// ones, updates changed endpoints (keeping sessions), removes
    /// unwanted ones (first; their sessions die at once). Each peer's only
    /// allowed IP is `tunnel/128`. Newly added peers get a handshake
    /// initiated at once. Blocks until applied; answers what changed.
    pub(crate) fn set_peers(&self, peers: &[Peer]) -> Result<PeerChanges, UserspaceError> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.send(Command::SetPeers(peers.to_vec(), reply))?;
        answer.recv().map_err(|_| UserspaceError::Stopped)?
    }

    /// The device's counters: peers, handshakes, packets and bytes each
    /// way, drops by reason. A stopped device's thread gives its counters
    /// with no peers.
    pub(crate) fn stats(&self) -> UserspaceStats {
        let (reply, answer) = std_mpsc::sync_channel(1);
        let (peers, handshakes) = match self.send(Command::Stats(reply)) {
            Ok(()) => answer.recv().unwrap_or_default(),
            Err(_) => (0, 0),
        };
        self.counters.snapshot(peers, handshakes)
    }

    fn send(&self, command: Command) -> Result<(), UserspaceError> {
        self.commands.as_ref().and_then(|commands| commands.send(command).ok()).ok_or(UserspaceError::Stopped)
    }
}

impl Drop for UserspaceWireguard {
    fn drop(&mut self) {
        // A closed command channel is the driver's signal to stop.
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether the TUN control devices open (without them tun-rs would try
/// to make `/dev/net/tun`).
fn check_tun_device(path: &Path) -> Result<(), UserspaceError> {
    for path in [path, Path::new(TUN_CONTROL)] {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| UserspaceError::NoTunDevice { path: path.to_owned(), source })?;
    }
    Ok(())
}

/// The device's thread: builds the runtime and the device, says whether
/// that worked through `ready`, then serves commands until the handle
/// goes. The runtime is dropped here, outside any runtime, so every task
/// (and every socket and TUN queue they hold) is gone when the thread ends.
fn run(
    config: &UserspaceConfig,
    mtu: u16,
    counters: Arc<Counters>,
    commands: mpsc::UnboundedReceiver<Command>,
    ready: &std_mpsc::SyncSender<Result<(), UserspaceError>>,
) {
    let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(format!("{}-worker", config.name))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(UserspaceError::Runtime(error)));
            return;
        }
    };
    // The TUN registers with the runtime's reactor; its set-up blocks (a
    // netlink helper thread), so it runs in the runtime's context but not
    // on it.
    let opened = {
        let _context = runtime.enter();
        open_tun(config, mtu)
    };
    match opened.and_then(|tun| runtime.block_on(build(config, tun, mtu, counters))) {
        Ok(device) => {
            let _ = ready.send(Ok(()));
            runtime.block_on(drive(device, commands));
        }
        Err(error) => {
            let _ = ready.send(Err(error));
        }
    }
}

/// Opens the TUN, enables IPv6 on it and gives it its address, from the
/// device's thread (so in its namespace).
fn open_tun(config: &UserspaceConfig, mtu: u16) -> Result<Arc<tun_rs::AsyncDevice>, UserspaceError> {
    let name = &config.name;
    let tun = tun::open(name, mtu).map_err(|source| UserspaceError::Tun { name: name.clone(), source })?;
    let sysctl = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"));
    std::fs::write(&sysctl, "0").map_err(|source| UserspaceError::NoIpv6 {
        name: name.clone(),
        path: sysctl,
        source,
    })?;
    let (interface, address) = (name.clone(), config.address);
    // The netlink socket must be in this thread's namespace: the helper's
    // thread enters the namespace this thread is in.
    netns::netlink_in(Path::new("/proc/thread-self/ns/net"), move |handle| async move {
        let links = kernel::links(&handle).await?;
        let index = links.get(&interface).ok_or(NetdevError::Missing("the TUN just opened"))?.index;
        kernel::ensure_address6(&handle, index, address, TUNNEL_PREFIX_LEN).await
    })
    .map_err(|source| UserspaceError::Address { name: name.clone(), source })?;
    Ok(tun)
}

/// Builds the device over the TUN and binds its port.
async fn build(
    config: &UserspaceConfig,
    tun: Arc<tun_rs::AsyncDevice>,
    mtu: u16,
    counters: Arc<Counters>,
) -> Result<WgDevice, UserspaceError> {
    let sessions: IndexTable = IndexTable::from_os_rng();
    let udp = CountingUdp {
        inner: UdpSocketFactory { recv_buffer_size: Some(SOCKET_BUFFER), send_buffer_size: Some(SOCKET_BUFFER) },
        counters: Arc::clone(&counters),
        sessions: sessions.clone(),
    };
    let device = DeviceBuilder::new()
        .with_udp(udp)
        .with_ip_pair(TunWriter::new(Arc::clone(&tun), Arc::clone(&counters)), TunReader::new(tun, mtu, counters))
        .with_private_key(StaticSecret::from(config.private_key))
        .with_listen_port(config.port)
        .with_index_table(sessions)
        .build()
        .await
        .map_err(UserspaceError::Device)?;
    // gotatun binds its socket with the first reconfiguration (or peer at
    // build): ask for one now, so a port in use is said at start.
    let port = config.port;
    device.write(async |device| device.clear_peers()).await.map_err(|error| match error {
        gotatun::device::Error::Bind(source, _) if source.kind() == std::io::ErrorKind::AddrInUse => {
            UserspaceError::PortInUse { port }
        }
        gotatun::device::Error::Bind(source, _) => UserspaceError::Bind { port, source },
        error => UserspaceError::Device(error),
    })?;
    Ok(device)
}

/// Serves commands until the handle is dropped, then stops the device.
async fn drive(device: WgDevice, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut initiations = FuturesUnordered::new();
    let mut handshakes = Handshakes::default();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::SetPeers(peers, reply)) => {
                    let result = set_peers(&device, &peers).await;
                    if let Ok((added, _)) = &result {
                        for key in added {
                            initiations.push(initiate(&device, *key));
                        }
                    }
                    let _ = reply.send(result.map(|(_, changes)| changes));
                }
                Some(Command::Stats(reply)) => {
                    let peers = handshakes.update(&device).await;
                    let _ = reply.send((peers, handshakes.total));
                }
            },
            Some(()) = initiations.next(), if !initiations.is_empty() => {}
        }
    }
    drop(initiations);
    device.stop().await;
}

/// Applies the diff from the device's peers to `desired`; the keys added.
async fn set_peers(device: &WgDevice, desired: &[Peer]) -> Result<(Vec<[u8; 32]>, PeerChanges), UserspaceError> {
    let held: Vec<Held> = device
        .peers()
        .await
        .into_iter()
        .map(|held| Held {
            public_key: held.peer.public_key.to_bytes(),
            endpoint: held.peer.endpoint,
            allowed: held.peer.allowed_ips.iter().map(|network| (network.ip(), network.prefix())).collect(),
        })
        .collect();
    let diff = diff(&held, desired)?;
    if diff.is_empty() {
        return Ok((Vec::new(), PeerChanges::default()));
    }
    let added = diff.add.iter().map(|peer| peer.public_key).collect();
    let changes = PeerChanges { set: diff.add.len() + diff.update.len(), removed: diff.remove.len() };
    device
        .write(async |device| {
            for key in &diff.remove {
                device.remove_peer(&PublicKey::from(*key)).await;
            }
            for peer in &diff.update {
                device
                    .modify_peer(&PublicKey::from(peer.public_key), |held| {
                        held.set_endpoint(Some(peer.endpoint));
                        held.clear_allowed_ips();
                        held.add_allowed_ip(IpAddr::V6(peer.tunnel));
                    })
                    .await;
            }
            for peer in &diff.add {
                let new = DevicePeer::new(PublicKey::from(peer.public_key))
                    .with_endpoint(peer.endpoint)
                    .with_allowed_ip(IpAddr::V6(peer.tunnel).into());
                device.add_peer(new);
            }
        })
        .await
        .map_err(UserspaceError::Device)?;
    Ok((added, changes))
}

/// Sends a handshake initiation to the peer `key` now, and waits a while
/// for the response (a new peer's sessions are then ready before its
/// first packet).
async fn initiate(device: &WgDevice, key: [u8; 32]) {
    let _ = tokio::time::timeout(INITIATION_WAIT, device.force_handshake(&PublicKey::from(key))).await;
}

/// Handshakes counted from the peers' last-handshake times.
#[derive(Default)]
struct Handshakes {
    /// Counted since start.
    total: u64,
    /// When each peer's last counted handshake was.
    last: HashMap<[u8; 32], Instant>,
}

impl Handshakes {
    /// Counts the handshakes made since the last call; the number of peers.
    async fn update(&mut self, device: &WgDevice) -> usize {
        let now = Instant::now();
        let peers = device.peers().await;
        let mut last = HashMap::with_capacity(peers.len());
        for held in &peers {
            let key = held.peer.public_key.to_bytes();
            let Some(at) = held.stats.last_handshake.and_then(|since| now.checked_sub(since)) else { continue };
            // The same handshake read twice gives nearly the same instant.
            let new = self.last.get(&key).is_none_or(|seen| at > *seen + Duration::from_secs(1));
            if new {
                self.total += 1;
            }
            last.insert(key, if new { at } else { self.last[&key] });
        }
        self.last = last;
        peers.len()
    }
}
