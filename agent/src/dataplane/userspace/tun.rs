//! The TUN end: `mwg0` opened (or adopted: a persistent TUN of that name
//! is attached to, not recreated) with tun-rs, `IFF_NO_PI`, made
//! persistent; gotatun reads it through [`TunReader`] and writes it
//! through [`TunWriter`], which count what passes.
//!
//! With [`OFFLOAD`] the TUN carries a virtio-net header (`IFF_VNET_HDR`,
//! `TUNSETOFFLOAD` with checksum, TSO and USO): the kernel hands over TCP
//! and UDP super-packets of up to 64 KiB, one read for up to
//! [`BATCH`] segments, which tun-rs splits (its GSO code, from
//! wireguard-go) into gotatun's pooled buffers; every write gets a header
//! saying "no offload". The device is created `IFF_MULTI_QUEUE` so a
//! later version may attach a queue per core to the same device; this one
//! attaches one (gotatun encrypts in one task, so more queues bring
//! nothing yet).

use std::io::{self, IoSlice};
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tun_rs::{AsyncDevice, DeviceBuilder, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::counters::{add, Counters};

/// Whether the TUN carries virtio-net headers and offloads (see the module
/// documentation; the measured figures are in DESIGN.md, "Userspace path").
pub(super) const OFFLOAD: bool = true;

/// Segments one read may yield.
const BATCH: usize = IDEAL_BATCH_SIZE;

/// The largest read: a 64 KiB super-packet and its header.
const READ_BUFFER: usize = 65_535 + VIRTIO_NET_HDR_LEN;

/// The virtio-net header of every write: no checksum to finish, no GSO.
const NO_OFFLOAD: [u8; VIRTIO_NET_HDR_LEN] = [0; VIRTIO_NET_HDR_LEN];

/// Opens the TUN `name` (creating it, or attaching to the persistent one
/// of that name), up, with `mtu`, and makes it persistent. Inside a tokio
/// runtime; the TUN belongs to the calling thread's network namespace.
pub(super) fn open(name: &str, mtu: u16) -> io::Result<Arc<AsyncDevice>> {
    let device = DeviceBuilder::new()
        .name(name)
        .packet_information(false)
        .multi_queue(true)
        .offload(OFFLOAD)
        .mtu(mtu)
        .enable(true)
        .build_async()?;
    device.persist()?;
    Ok(Arc::new(device))
}

/// Wraps a datagram buffer for tun-rs's batch read.
struct Slot(Packet);

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// What gotatun reads outgoing packets from.
pub(super) struct TunReader {
    device: Arc<AsyncDevice>,
    counters: Arc<Counters>,
    mtu: MtuWatcher,
    /// With offload: the raw read, before splitting.
    read: Vec<u8>,
    /// With offload: the buffers segments are split into (pool buffers,
    /// replaced from the pool as they are handed on).
    slots: Vec<Slot>,
    sizes: Vec<usize>,
    /// The packets of the last read, handed on.
    out: Vec<Packet<Ip>>,
}

impl TunReader {
    /// The reader of `device`, whose MTU is `mtu`.
    pub(super) fn new(device: Arc<AsyncDevice>, mtu: u16, counters: Arc<Counters>) -> Self {
        let offload = device.tcp_gso();
        Self {
            device,
            counters,
            mtu: MtuWatcher::new(mtu),
            read: if offload { vec![0; READ_BUFFER] } else { Vec::new() },
            slots: Vec::with_capacity(BATCH),
            sizes: vec![0; BATCH],
            out: Vec::with_capacity(BATCH),
        }
    }

    /// Reads once into `out`. Errors of the system are returned; a packet
    /// tun-rs cannot split (or no IP packet) is counted and skipped, so
    /// nothing the host sends can stop the reader.
    async fn read(&mut self, pool: &PacketBufPool) -> io::Result<()> {
        if !self.device.tcp_gso() {
            let mut packet = pool.get();
            let n = self.device.recv(&mut packet).await?;
            packet.truncate(n);
            self.hand_on(packet);
            return Ok(());
        }
        while self.slots.len() < BATCH {
            self.slots.push(Slot(pool.get()));
        }
        match self.device.recv_multiple(&mut self.read, &mut self.slots, &mut self.sizes, 0).await {
            Ok(n) => {
                for i in 0..n {
                    let mut packet = std::mem::replace(&mut self.slots[i].0, pool.get());
                    packet.truncate(self.sizes[i]);
                    self.hand_on(packet);
                }
                Ok(())
            }
            Err(error) if error.raw_os_error().is_some() => Err(error),
            Err(_) => {
                add(&self.counters.tun_malformed, 1);
                Ok(())
            }
        }
    }

    fn hand_on(&mut self, packet: Packet) {
        let len = packet.len() as u64;
        match packet.try_into_ip() {
            Ok(packet) => {
                add(&self.counters.sent_packets, 1);
                add(&self.counters.sent_bytes, len);
                self.out.push(packet);
            }
            Err(_) => add(&self.counters.tun_malformed, 1),
        }
    }
}

impl IpRecv for TunReader {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        self.out.clear();
        while self.out.is_empty() {
            self.read(pool).await?;
        }
        Ok(self.out.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

/// What gotatun writes decrypted packets to.
pub(super) struct TunWriter {
    device: Arc<AsyncDevice>,
    counters: Arc<Counters>,
}

impl TunWriter {
    /// The writer of `device`.
    pub(super) fn new(device: Arc<AsyncDevice>, counters: Arc<Counters>) -> Self {
        Self { device, counters }
    }
}

impl IpSend for TunWriter {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        let packet = packet.into_bytes();
        let written = if self.device.tcp_gso() {
            self.device.send_vectored(&[IoSlice::new(&NO_OFFLOAD), IoSlice::new(&packet)]).await
        } else {
            self.device.send(&packet).await
        };
        match written {
            Ok(_) => {
                add(&self.counters.delivered_packets, 1);
                add(&self.counters.delivered_bytes, packet.len() as u64);
                Ok(())
            }
            // The device is gone: gotatun stops writing.
            Err(error) if matches!(error.raw_os_error(), Some(errno::EBADF | errno::ENODEV | errno::EBADFD)) => {
                Err(error)
            }
            // The kernel refused this packet (a peer's odd inner packet):
            // dropped, counted as not delivered, the next one goes on.
            Err(_) => Ok(()),
        }
    }
}

/// The errno values that mean the TUN is gone (Linux's, the same on every
/// architecture mesh builds for).
mod errno {
    /// Bad file descriptor.
    pub(super) const EBADF: i32 = 9;
    /// No such device.
    pub(super) const ENODEV: i32 = 19;
    /// File descriptor in bad state.
    pub(super) const EBADFD: i32 = 77;
}
