//! What the transport carried, counted since it started: frames (SWIM
//! datagrams and stream frames) by direction, and the UDP datagrams and
//! bytes QUIC put on the wire for them (encryption, acknowledgements and
//! keep-alives included). The counts only grow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use quinn::Connection;

/// How a frame travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A QUIC datagram (SWIM, sync hellos): may be lost.
    Datagram,
    /// A QUIC stream: delivered or failed.
    Stream,
}

/// Frames and their bytes (payload only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// Frames.
    pub frames: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// UDP datagrams and their bytes (without IP and UDP headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    /// Datagrams.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    /// Datagram frames sent.
    pub datagrams_sent: Flow,
    /// Datagram frames received.
    pub datagrams_received: Flow,
    /// Stream frames sent (delivered or not).
    pub streams_sent: Flow,
    /// Stream frames received.
    pub streams_received: Flow,
    /// What QUIC sent on the wire, over every member connection.
    pub wire_sent: Wire,
    /// What QUIC received from the wire, over every member connection.
    pub wire_received: Wire,
    /// Member connections open.
    pub connections: usize,
}

#[derive(Debug, Default)]
struct FlowCounter {
    frames: AtomicU64,
    bytes: AtomicU64,
}

impl FlowCounter {
    fn add(&self, bytes: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn read(&self) -> Flow {
        Flow { frames: self.frames.load(Ordering::Relaxed), bytes: self.bytes.load(Ordering::Relaxed) }
    }
}

/// The transport's counters.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    datagrams_sent: FlowCounter,
    datagrams_received: FlowCounter,
    streams_sent: FlowCounter,
    streams_received: FlowCounter,
    /// Member connections being read, by QUIC's stable id: their wire
    /// counts are read live.
    open: Mutex<HashMap<usize, Connection>>,
    /// The wire counts of connections that closed: sent, received.
    closed: Mutex<(Wire, Wire)>,
}

impl Traffic {
    /// Counts a frame sent.
    pub(crate) fn sent(&self, channel: Channel, bytes: usize) {
        match channel {
            Channel::Datagram => self.datagrams_sent.add(bytes),
            Channel::Stream => self.streams_sent.add(bytes),
        }
    }

    /// Counts a frame received.
    pub(crate) fn received(&self, channel: Channel, bytes: usize) {
        match channel {
            Channel::Datagram => self.datagrams_received.add(bytes),
            Channel::Stream => self.streams_received.add(bytes),
        }
    }

    /// Starts counting a member connection's wire traffic.
    pub(crate) fn opened(&self, conn: &Connection) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).insert(conn.stable_id(), conn.clone());
    }

    /// Keeps a closed connection's wire traffic in the totals.
    pub(crate) fn closed(&self, conn: &Connection) {
        // Under the `open` lock, so a reading sees it in one place or the other.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.remove(&conn.stable_id()).is_some() {
            let (sent, received) = wire_of(conn);
            let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
            closed.0 = closed.0.plus(sent);
            closed.1 = closed.1.plus(received);
        }
    }

    /// Reads every counter.
    pub(crate) fn snapshot(&self) -> TrafficSnapshot {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut wire_sent, mut wire_received) = *self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        for conn in open.values() {
            let (sent, received) = wire_of(conn);
            wire_sent = wire_sent.plus(sent);
            wire_received = wire_received.plus(received);
        }
        TrafficSnapshot {
            datagrams_sent: self.datagrams_sent.read(),
            datagrams_received: self.datagrams_received.read(),
            streams_sent: self.streams_sent.read(),
            streams_received: self.streams_received.read(),
            wire_sent,
            wire_received,
            connections: open.len(),
        }
    }
}

impl Wire {
    fn plus(self, other: Self) -> Self {
        Self { datagrams: self.datagrams + other.datagrams, bytes: self.bytes + other.bytes }
    }
}

/// A connection's UDP traffic so far: sent, received.
fn wire_of(conn: &Connection) -> (Wire, Wire) {
    let stats = conn.stats();
    (
        Wire { datagrams: stats.udp_tx.datagrams, bytes: stats.udp_tx.bytes },
        Wire { datagrams: stats.udp_rx.datagrams, bytes: stats.udp_rx.bytes },
    )
}
