//! The UDP end: gotatun's own socket (`recvmmsg` with UDP GRO, `sendmmsg`),
//! wrapped to count what passes. Each datagram received is classified
//! from its header alone (type, length, receiver index), without
//! copying, before gotatun parses it the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use gotatun::noise::index_table::IndexTable;
use gotatun::packet::{Packet, PacketBufPool};
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};

use super::counters::{add, Counters};

/// Binds gotatun's socket and wraps both ends in counters.
pub(super) struct CountingUdp {
    /// gotatun's factory (a dual-stack socket on `[::]:port`).
    pub(super) inner: UdpSocketFactory,
    /// Where to count.
    pub(super) counters: Arc<Counters>,
    /// The device's session indices, to tell a message for a session of
    /// ours from one for none.
    pub(super) sessions: IndexTable,
}

impl UdpTransportFactory for CountingUdp {
    type Send = CountingSend;
    type Recv = CountingRecv;

    async fn bind(&mut self, params: &UdpTransportFactoryParams) -> io::Result<(CountingSend, CountingRecv)> {
        let (send, recv) = self.inner.bind(params).await?;
        let counters = Arc::clone(&self.counters);
        let send = CountingSend { inner: send, counters: Arc::clone(&counters) };
        Ok((send, CountingRecv { inner: recv, counters, sessions: self.sessions.clone() }))
    }
}

/// The sending end, counting datagrams and answers to initiations.
#[derive(Clone)]
pub(super) struct CountingSend {
    inner: UdpSocket,
    counters: Arc<Counters>,
}

/// Datagrams, bytes and answers to initiations among `packets`.
fn tally<'a>(packets: impl Iterator<Item = &'a Packet>) -> (u64, u64, u64) {
    packets.fold((0, 0, 0), |(n, bytes, answers), packet| {
        let answer = matches!(classify(packet), Message::Response { .. } | Message::Cookie { .. });
        (n + 1, bytes + packet.len() as u64, answers + u64::from(answer))
    })
}

impl CountingSend {
    fn count(&self, (n, bytes, answers): (u64, u64, u64)) {
        add(&self.counters.tx_packets, n);
        add(&self.counters.tx_bytes, bytes);
        add(&self.counters.answers_out, answers);
    }
}

impl UdpSend for CountingSend {
    type SendManyBuf = <UdpSocket as UdpSend>::SendManyBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        let sent = tally(std::iter::once(&packet));
        self.inner.send_to(packet, destination).await?;
        self.count(sent);
        Ok(())
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.inner.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        // On an error gotatun drops the batch, part of which may have gone:
        // counted as not sent.
        let batch = tally(packets.iter().map(|(packet, _)| packet));
        self.inner.send_many_to(buf, packets).await?;
        self.count(batch);
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.inner)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.inner.set_fwmark(mark)
    }
}

/// The receiving end, counting and classifying every datagram.
pub(super) struct CountingRecv {
    inner: UdpSocket,
    counters: Arc<Counters>,
    sessions: IndexTable,
}

impl CountingRecv {
    fn count(&self, packet: &[u8]) {
        let counters = &*self.counters;
        add(&counters.rx_packets, 1);
        add(&counters.rx_bytes, packet.len() as u64);
        let ours = |index: u32| self.sessions.in_use(index);
        match classify(packet) {
            Message::Malformed => add(&counters.malformed, 1),
            Message::Initiation => add(&counters.initiations_in, 1),
            Message::Response { receiver } | Message::Cookie { receiver } | Message::Data { receiver, empty: true } => {
                if !ours(receiver) {
                    add(&counters.unknown_session, 1);
                }
            }
            Message::Data { receiver, empty: false } => {
                add(if ours(receiver) { &counters.data_in } else { &counters.unknown_session }, 1);
            }
        }
    }
}

impl UdpRecv for CountingRecv {
    type RecvManyBuf = <UdpSocket as UdpRecv>::RecvManyBuf;

    async fn recv_from(&mut self, pool: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        let (packet, from) = self.inner.recv_from(pool).await?;
        self.count(&packet);
        Ok((packet, from))
    }

    async fn recv_many_from(
        &mut self,
        buf: &mut Self::RecvManyBuf,
        pool: &mut PacketBufPool,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        let start = packets.len();
        self.inner.recv_many_from(buf, pool, packets).await?;
        for (packet, _) in &packets[start..] {
            self.count(packet);
        }
        Ok(())
    }

    fn enable_udp_gro(&self) -> io::Result<()> {
        self.inner.enable_udp_gro()
    }
}

/// A WireGuard message as its header tells it (the whitepaper's §5.4:
/// one type byte, three reserved, then fixed lengths; indices are
/// little-endian), judged as gotatun judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Message {
    /// Type 1, 148 bytes.
    Initiation,
    /// Type 2, 92 bytes: the receiver is our initiation's index.
    Response {
        /// The index it is for.
        receiver: u32,
    },
    /// Type 3, 64 bytes.
    Cookie {
        /// The index it is for.
        receiver: u32,
    },
    /// Type 4, at least 32 bytes (header 16 and tag 16).
    Data {
        /// The session index it is for.
        receiver: u32,
        /// A keepalive (no payload).
        empty: bool,
    },
    /// Anything else.
    Malformed,
}

/// The header of a datagram at the WireGuard port.
pub(super) fn classify(bytes: &[u8]) -> Message {
    let index = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    match (bytes.first(), bytes.len()) {
        (Some(1), 148) => Message::Initiation,
        (Some(2), 92) => index(8).map_or(Message::Malformed, |receiver| Message::Response { receiver }),
        (Some(3), 64) => index(4).map_or(Message::Malformed, |receiver| Message::Cookie { receiver }),
        (Some(4), len) if len >= 32 => {
            index(4).map_or(Message::Malformed, |receiver| Message::Data { receiver, empty: len == 32 })
        }
        _ => Message::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_by_type_and_length_and_carry_their_receiver() {
        let mut data = vec![4, 0, 0, 0, 0x78, 0x56, 0x34, 0x12];
        data.resize(48, 0);
        assert_eq!(classify(&data), Message::Data { receiver: 0x1234_5678, empty: false });
        data.truncate(32);
        assert_eq!(classify(&data), Message::Data { receiver: 0x1234_5678, empty: true });
        data.truncate(31);
        assert_eq!(classify(&data), Message::Malformed);

        let mut response = vec![2, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0];
        response.resize(92, 0);
        assert_eq!(classify(&response), Message::Response { receiver: 9 });
        response.push(0);
        assert_eq!(classify(&response), Message::Malformed);

        assert_eq!(classify(&[1; 148]), Message::Initiation);
        assert_eq!(classify(&[3; 64]), Message::Cookie { receiver: 0x0303_0303 });
        assert_eq!(classify(&[]), Message::Malformed);
        assert_eq!(classify(&[5; 100]), Message::Malformed);
    }
}
