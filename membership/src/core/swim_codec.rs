//! How SWIM packets are encoded: foca's packets, with a compact header.
//!
//! Every SWIM packet travels on a QUIC connection between two members, so
//! both ends are known before a byte is read. The receiver is the
//! connection's other end, and the sender is the node its certificate
//! names. foca's header names both in full (node id, bump, name and
//! address: most of a probe's 62-byte frame; 21 bytes with this codec),
//! so it is cut to what the receiver cannot know:
//!
//! - the sender's node id comes from the connection;
//! - the receiver is named by its bump alone. foca still refuses a packet
//!   addressed to an earlier identity of the receiver, since a renewed
//!   identity differs in its bump only.
//!
//! An announce keeps the full header: it is addressed to whatever node
//! listens at an address, by an identity that may not be the node's.
//! Member updates riding on a packet stay in full too, because they are
//! news about third nodes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NodeIdentity};

/// foca's codec for mesh: compact headers on member connections.
#[derive(Debug, Clone)]
pub(crate) struct SwimCodec {
    /// This node's identity, less the bump (which foca may renew).
    me: NodeIdentity,
    /// The node whose packet is being handled (set by the core before it
    /// hands foca a packet).
    sender: Arc<Mutex<Option<NodeId>>>,
}

/// Why a packet's header could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwimCodecError {
    /// Malformed bytes.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    /// A compact header arrived with no sender known.
    #[error("a compact SWIM header with no known sender")]
    NoSender,
}

/// The sender as a compact header gives it: all but its node id.
#[derive(Serialize, Deserialize)]
struct Sender {
    bump: u16,
    name: String,
    addr: SocketAddr,
}

#[derive(Serialize, Deserialize)]
enum WireHeader {
    /// foca's header as it is.
    Full(Header<NodeIdentity>),
    /// Between the two ends of a member connection.
    Compact { src: Sender, src_incarnation: u16, dst_bump: u16, message: Message<NodeIdentity> },
}

impl SwimCodec {
    /// The codec of the node whose identity is `me`.
    pub(crate) fn new(me: NodeIdentity) -> Self {
        Self { me, sender: Arc::new(Mutex::new(None)) }
    }

    /// A handle that sets the sender of the packets decoded next.
    pub(crate) fn sender_handle(&self) -> Arc<Mutex<Option<NodeId>>> {
        Arc::clone(&self.sender)
    }

    /// The sender a packet names, if its header is a full one: the core
    /// refuses a packet naming another sender than its connection's.
    pub(crate) fn claimed_sender(packet: &[u8]) -> Result<Option<NodeId>, postcard::Error> {
        Ok(match postcard::take_from_bytes::<WireHeader>(packet)?.0 {
            WireHeader::Full(header) => Some(header.src.id),
            WireHeader::Compact { .. } => None,
        })
    }
}

impl Codec<NodeIdentity> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(&mut self, header: &Header<NodeIdentity>, buf: impl BufMut) -> Result<(), Self::Error> {
        let wire = if header.message == Message::Announce {
            WireHeader::Full(header.clone())
        } else {
            WireHeader::Compact {
                src: Sender { bump: header.src.bump, name: header.src.name.clone(), addr: header.src.addr },
                src_incarnation: header.src_incarnation,
                dst_bump: header.dst.bump,
                message: header.message.clone(),
            }
        };
        postcard::serialize_with_flavor(&wire, Flavor(buf))?;
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity>, Self::Error> {
        let remaining = buf.remaining();
        let (wire, rest) = postcard::take_from_bytes::<WireHeader>(buf.chunk())?;
        let read = remaining - rest.len();
        buf.advance(read);
        match wire {
            WireHeader::Full(header) => Ok(header),
            WireHeader::Compact { src, src_incarnation, dst_bump, message } => {
                let sender = *self.sender.lock().unwrap_or_else(PoisonError::into_inner);
                let id = sender.ok_or(SwimCodecError::NoSender)?;
                Ok(Header {
                    src: NodeIdentity { id, bump: src.bump, name: src.name, addr: src.addr },
                    src_incarnation,
                    dst: NodeIdentity { bump: dst_bump, ..self.me.clone() },
                    message,
                })
            }
        }
    }

    fn encode_member(&mut self, member: &Member<NodeIdentity>, buf: impl BufMut) -> Result<(), Self::Error> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, Self::Error> {
        Ok(PostcardCodec.decode_member(buf)?)
    }
}

/// postcard's output into a `BufMut`, refusing to write past its end.
struct Flavor<B>(B);

impl<B: BufMut> postcard::ser_flavors::Flavor for Flavor<B> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if !self.0.has_remaining_mut() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.0.remaining_mut() < data.len() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.0.put_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: u8, bump: u16, name: &str) -> NodeIdentity {
        NodeIdentity { id: NodeId([id; 16]), bump, name: name.into(), addr: SocketAddr::from(([198, 18, 0, 1], 7950)) }
    }

    #[test]
    fn a_probe_header_shrinks_and_decodes_to_what_was_sent() -> Result<(), SwimCodecError> {
        let (a, b) = (identity(1, 3, "edge-site-1"), identity(2, 5, "edge-site-2"));
        let mut sender = SwimCodec::new(a.clone());
        let mut receiver = SwimCodec::new(NodeIdentity { bump: 0, ..b.clone() });
        let header = Header { src: a.clone(), src_incarnation: 7, dst: b.clone(), message: Message::Ping(9) };
        let mut compact = Vec::new();
        sender.encode_header(&header, &mut compact)?;
        let mut full = Vec::new();
        PostcardCodec.encode_header(&header, &mut full).map_err(SwimCodecError::from)?;
        assert!(compact.len() + 30 < full.len(), "{} vs {} bytes", compact.len(), full.len());

        assert!(matches!(receiver.decode_header(&compact[..]), Err(SwimCodecError::NoSender)));
        *receiver.sender_handle().lock().unwrap_or_else(PoisonError::into_inner) = Some(a.id);
        let decoded = receiver.decode_header(&compact[..])?;
        assert_eq!((decoded.src, decoded.dst, decoded.message), (a.clone(), b.clone(), Message::Ping(9)));
        assert_eq!(SwimCodec::claimed_sender(&compact)?, None);

        let announce =
            Header { src: a.clone(), src_incarnation: 7, dst: identity(2, 0, ""), message: Message::Announce };
        let mut bytes = Vec::new();
        sender.encode_header(&announce, &mut bytes)?;
        assert_eq!(receiver.decode_header(&bytes[..])?.dst, identity(2, 0, ""), "an announce keeps its full header");
        assert_eq!(SwimCodec::claimed_sender(&bytes)?, Some(a.id));
        Ok(())
    }
}
