//! What the device counts: shared atomics the UDP and TUN ends bump (one
//! relaxed add per packet, no lock), and [`UserspaceStats`], a snapshot
//! of them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The device's counters, bumped by its UDP and TUN ends.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// WireGuard datagrams received on the port.
    pub(super) rx_packets: AtomicU64,
    /// Their bytes.
    pub(super) rx_bytes: AtomicU64,
    /// WireGuard datagrams sent.
    pub(super) tx_packets: AtomicU64,
    /// Their bytes.
    pub(super) tx_bytes: AtomicU64,
    /// Decrypted packets written to the TUN.
    pub(super) delivered_packets: AtomicU64,
    /// Their bytes.
    pub(super) delivered_bytes: AtomicU64,
    /// Packets read from the TUN (to be encrypted).
    pub(super) sent_packets: AtomicU64,
    /// Their bytes.
    pub(super) sent_bytes: AtomicU64,
    /// Datagrams that are no WireGuard message (type, length).
    pub(super) malformed: AtomicU64,
    /// Messages naming a receiver index no session or handshake of ours
    /// holds (a removed peer's, a stale session's, a forged one).
    pub(super) unknown_session: AtomicU64,
    /// Data messages with a payload for a session we hold.
    pub(super) data_in: AtomicU64,
    /// Handshake initiations received.
    pub(super) initiations_in: AtomicU64,
    /// Handshake responses and cookie replies sent (answers to initiations).
    pub(super) answers_out: AtomicU64,
    /// Packets read from the TUN that are no IP packet.
    pub(super) tun_malformed: AtomicU64,
}

/// Adds `n` to `counter`.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// A snapshot, with the peer count and handshakes the driver keeps.
    pub(super) fn snapshot(&self, peers: usize, handshakes: u64) -> UserspaceStats {
        // Read the later stage first, so a packet between the two reads
        // is never counted as delivered but not received.
        let delivered_packets = get(&self.delivered_packets);
        let answers_out = get(&self.answers_out);
        UserspaceStats {
            peers,
            handshakes,
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            delivered_packets,
            delivered_bytes: get(&self.delivered_bytes),
            sent_packets: get(&self.sent_packets),
            sent_bytes: get(&self.sent_bytes),
            dropped: Dropped {
                malformed: get(&self.malformed) + get(&self.tun_malformed),
                unknown_session: get(&self.unknown_session),
                rejected: get(&self.data_in).saturating_sub(delivered_packets),
                rejected_handshakes: get(&self.initiations_in).saturating_sub(answers_out),
            },
        }
    }
}

/// The userspace device's counters, as [`super::UserspaceWireguard::stats`]
/// reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UserspaceStats {
    /// Peers configured.
    pub(crate) peers: usize,
    /// Handshakes completed with any peer (either side initiating) since
    /// start, as seen when stats are read: two of one peer between two
    /// reads count once (a session lasts two minutes).
    pub(crate) handshakes: u64,
    /// WireGuard datagrams received on the port (every kind, valid or not).
    pub(crate) rx_packets: u64,
    /// Their bytes (UDP payload).
    pub(crate) rx_bytes: u64,
    /// WireGuard datagrams sent.
    pub(crate) tx_packets: u64,
    /// Their bytes (UDP payload).
    pub(crate) tx_bytes: u64,
    /// Decrypted packets written to the TUN.
    pub(crate) delivered_packets: u64,
    /// Their bytes.
    pub(crate) delivered_bytes: u64,
    /// Packets read from the TUN to be encrypted.
    pub(crate) sent_packets: u64,
    /// Their bytes.
    pub(crate) sent_bytes: u64,
    /// Packets dropped, by reason.
    pub(crate) dropped: Dropped,
}

/// Packets the device dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Datagrams at the port that are no WireGuard message (wrong type or
    /// length), and packets from the TUN that are no IP packet.
    pub(crate) malformed: u64,
    /// Messages for a receiver index that no session or handshake of this
    /// device holds: a removed peer's, an expired session's, a forged one.
    pub(crate) unknown_session: u64,
    /// Data messages for a held session that were not delivered: replayed
    /// or too old (counter), failing authentication (Poly1305), or from an
    /// inner source the peer may not use. Computed as data received minus
    /// data delivered, so while traffic flows it also holds the packets
    /// still queued inside the device (at most a few thousand, for
    /// milliseconds); exact when traffic pauses.
    pub(crate) rejected: u64,
    /// Handshake initiations not answered: bad MAC, unknown static key
    /// (a removed peer's), replayed timestamp; computed like `rejected`.
    pub(crate) rejected_handshakes: u64,
}
