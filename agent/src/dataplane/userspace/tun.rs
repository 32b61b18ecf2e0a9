//! The TUN end: `mwg0` opened (or adopted: a persistent TUN of that name
//! is attached to, not recreated) with tun-rs, `IFF_NO_PI`, made
//! persistent; gotatun reads it through [`TunReader`] and writes it
//! through [`TunWriter`], which count what passes.
//!
//! No virtio-net header or offloads: measured with them (TSO/USO reads
//! split by tun-rs into gotatun's buffers), one TCP stream between two
//! namespaces went no faster (median 0.44 against 0.45 Gbit/s, five and
//! four runs on a loaded 2-core machine), since gotatun encrypts and
//! writes one packet at a time; and VXLAN inside gets no TSO without
//! `TUN_F_UDP_TUNNEL_GSO` (DESIGN.md). The device is created
//! `IFF_MULTI_QUEUE` with one queue, so a later version may attach a queue
//! per core to the same device (the flag cannot change on adoption).

use std::io;
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tun_rs::{AsyncDevice, DeviceBuilder};

use super::counters::{add, Counters};

/// Opens the TUN `name` (creating it, or attaching to the persistent one
/// of that name), up, with `mtu`, and makes it persistent. Inside a tokio
/// runtime; the TUN belongs to the calling thread's network namespace.
pub(super) fn open(name: &str, mtu: u16) -> io::Result<Arc<AsyncDevice>> {
    let device = DeviceBuilder::new()
        .name(name)
        .packet_information(false)
        .multi_queue(true)
        .offload(false)
        .mtu(mtu)
        .enable(true)
        .build_async()?;
    device.persist()?;
    Ok(Arc::new(device))
}

/// What gotatun reads outgoing packets from.
pub(super) struct TunReader {
    device: Arc<AsyncDevice>,
    counters: Arc<Counters>,
    mtu: MtuWatcher,
}

impl TunReader {
    /// The reader of `device`, whose MTU is `mtu`.
    pub(super) fn new(device: Arc<AsyncDevice>, mtu: u16, counters: Arc<Counters>) -> Self {
        Self { device, counters, mtu: MtuWatcher::new(mtu) }
    }
}

impl IpRecv for TunReader {
    /// The next IP packet from the TUN, in a pooled buffer; what is no IP
    /// packet is counted and skipped.
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        loop {
            let mut packet = pool.get();
            let n = self.device.recv(&mut packet).await?;
            packet.truncate(n);
            match packet.try_into_ip() {
                Ok(packet) => {
                    add(&self.counters.sent_packets, 1);
                    add(&self.counters.sent_bytes, n as u64);
                    return Ok(std::iter::once(packet));
                }
                Err(_) => add(&self.counters.tun_malformed, 1),
            }
        }
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
        match self.device.send(&packet).await {
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
