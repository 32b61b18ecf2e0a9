//! Names mesh does not hold go to the upstream resolvers: tried in order,
//! over UDP (TCP when an answer comes back truncated), with a cap on
//! queries in flight, a bounded deadline, and SERVFAIL when every upstream
//! fails.
//!
//! Each query asks each upstream from a UDP socket of its own, connected to
//! that upstream, as glibc's resolver does: the kernel then takes only the
//! upstream's datagrams, and an ICMP port (or host) unreachable comes back
//! as an error on the next receive, so an upstream that is down is given up
//! at once and the next one asked. (hickory-resolver's sockets are not
//! connected and cannot see ICMP errors: a closed port looked like a silent
//! server, and both took two 2 s time-outs, 4.0 s in the lab, before
//! SERVFAIL; with more upstreams, past the 5 s after which glibc gives up.) A silent upstream gets
//! [`ATTEMPT_TIMEOUT`]; the upstreams that stayed silent are asked once
//! more, the same question on the same socket, so a late answer to the
//! first send still counts; and the whole exchange ends at [`DEADLINE`].
//! One silent upstream: SERVFAIL after 2 × 800 ms = 1.6 s; two or more:
//! at 1.8 s.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use crate::answer::respond;

/// Most forwarded queries in flight for the whole agent (Docker's
/// embedded resolver allows 1,024 too).
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long one send to a silent upstream is waited for.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(800);
/// How many times a silent upstream is asked.
const ATTEMPTS: usize = 2;
/// The most one forwarded query takes, across every upstream and attempt:
/// well inside glibc's 5 s, so a client sees SERVFAIL, not a time-out.
pub const DEADLINE: Duration = Duration::from_millis(1800);
/// The UDP answer size mesh asks upstreams for (the DNS flag day 2020 value).
const UPSTREAM_UDP: u16 = 1232;
/// The largest answer read from an upstream.
const MAX_ANSWER: usize = 65_535;
/// The addresses mesh's own resolvers listen on: never an upstream (a
/// query forwarded there would come back to mesh).
pub const OWN_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// The upstream resolvers.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    permits: Arc<Semaphore>,
}

/// Why one upstream gave no answer.
#[derive(Debug)]
enum Failure {
    /// Nothing came back in time: worth asking again.
    Silent,
    /// It cannot be reached (ICMP unreachable, a refused connection): not
    /// worth asking again for this query.
    Unreachable(io::Error),
    /// It answered, but with an error of its own (SERVFAIL, REFUSED...).
    Failed(ResponseCode),
}

impl Forwarder {
    /// A forwarder to `upstreams`, asked in this order (none: every
    /// forwarded name fails). Upstreams that are mesh's own address are
    /// dropped.
    pub fn new(upstreams: &[SocketAddr]) -> Self {
        let upstreams = upstreams.iter().copied().filter(|upstream| upstream.ip() != OWN_ADDRESS).collect();
        Self { upstreams, permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) }
    }

    /// A place among the queries in flight, if one is free.
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The upstreams' answer to `query`, as a response to `request`: the
    /// first answer of an upstream (its answers and authority records, and
    /// its response code: NXDOMAIN passes through), else SERVFAIL.
    pub async fn forward(&self, request: &Message, query: &Query) -> Message {
        let deadline = Instant::now() + DEADLINE;
        let question = question(query, request.metadata.recursion_desired);
        let Ok(bytes) = question.to_vec() else { return respond(request, ResponseCode::ServFail) };
        let mut sockets: Vec<Option<UdpSocket>> = self.upstreams.iter().map(|_| None).collect();
        let mut worth_asking = vec![true; self.upstreams.len()];
        for _ in 0..ATTEMPTS {
            for (i, upstream) in self.upstreams.iter().enumerate() {
                if !worth_asking[i] {
                    continue;
                }
                if Instant::now() >= deadline {
                    break;
                }
                match ask(*upstream, &mut sockets[i], &bytes, &question, deadline).await {
                    Ok(answer) => return relay(request, answer),
                    Err(Failure::Silent) => tracing::debug!(%upstream, name = %query.name(), "upstream silent"),
                    Err(Failure::Unreachable(error)) => {
                        tracing::debug!(%upstream, %error, name = %query.name(), "upstream unreachable");
                        worth_asking[i] = false;
                    }
                    Err(Failure::Failed(code)) => {
                        tracing::debug!(%upstream, ?code, name = %query.name(), "upstream answered an error");
                        worth_asking[i] = false;
                    }
                }
            }
        }
        tracing::debug!(name = %query.name(), "every upstream resolver failed");
        respond(request, ResponseCode::ServFail)
    }
}

/// The question sent upstream for `query`: a fresh random id, EDNS for
/// answers up to [`UPSTREAM_UDP`] bytes.
fn question(query: &Query, recursion_desired: bool) -> Message {
    let mut question = Message::query();
    question.metadata.recursion_desired = recursion_desired;
    let mut query = query.clone();
    let mut name = query.name().clone();
    name.set_fqdn(true);
    query.set_name(name);
    question.add_query(query);
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_UDP);
    question.set_edns(edns);
    question
}

/// `answer` as the response to the client's `request`.
fn relay(request: &Message, answer: Message) -> Message {
    let mut response = respond(request, answer.metadata.response_code);
    response.add_answers(answer.answers);
    response.add_authorities(answer.authorities);
    response
}

/// Asks `upstream` over UDP on `socket` (connected to it on first use),
/// waiting at most [`ATTEMPT_TIMEOUT`] and never past `deadline`; a
/// truncated answer is asked again over TCP, until `deadline`.
async fn ask(
    upstream: SocketAddr,
    socket: &mut Option<UdpSocket>,
    bytes: &[u8],
    question: &Message,
    deadline: Instant,
) -> Result<Message, Failure> {
    let socket = match socket {
        Some(socket) => socket,
        None => socket.insert(connect_udp(upstream).await.map_err(Failure::Unreachable)?),
    };
    socket.send(bytes).await.map_err(Failure::Unreachable)?;
    let wait = Instant::now() + ATTEMPT_TIMEOUT;
    let answer = timeout_at(wait.min(deadline), receive_udp(socket, question)).await.map_err(|_| Failure::Silent)??;
    let answer = if answer.metadata.truncation { ask_tcp(upstream, bytes, question, deadline).await? } else { answer };
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer),
        code => Err(Failure::Failed(code)),
    }
}

/// A UDP socket on an ephemeral port (the kernel picks it at random),
/// connected to `upstream`.
async fn connect_udp(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let any = match upstream {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Reads datagrams until the answer to `question` comes: others (a stale
/// or forged id, another question) are dropped.
async fn receive_udp(socket: &UdpSocket, question: &Message) -> Result<Message, Failure> {
    let mut buffer = vec![0u8; usize::from(UPSTREAM_UDP).max(4096)];
    loop {
        let len = socket.recv(&mut buffer).await.map_err(Failure::Unreachable)?;
        if let Some(answer) = answer_to(question, &buffer[..len]) {
            return Ok(answer);
        }
    }
}

/// Asks `upstream` over TCP, until `deadline`.
async fn ask_tcp(
    upstream: SocketAddr,
    bytes: &[u8],
    question: &Message,
    deadline: Instant,
) -> Result<Message, Failure> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.map_err(Failure::Unreachable)?;
        let len = u16::try_from(bytes.len()).map_err(|_| Failure::Failed(ResponseCode::FormErr))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await.map_err(Failure::Unreachable)?;
        let len = usize::from(stream.read_u16().await.map_err(Failure::Unreachable)?);
        let mut buffer = vec![0u8; len.min(MAX_ANSWER)];
        stream.read_exact(&mut buffer).await.map_err(Failure::Unreachable)?;
        answer_to(question, &buffer).ok_or(Failure::Failed(ResponseCode::FormErr))
    };
    timeout_at(deadline, exchange).await.map_err(|_| Failure::Silent)?
}

/// `packet` parsed, if it is a response to `question` (same id, same question).
fn answer_to(question: &Message, packet: &[u8]) -> Option<Message> {
    let answer = Message::from_vec(packet).ok()?;
    let ours = answer.metadata.id == question.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries == question.queries;
    ours.then_some(answer)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    /// The query of a client for `name`, and its one question.
    fn request(name: &str) -> (Message, Query) {
        let query = Query::query(Name::from_ascii(name).expect("name"), RecordType::A);
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        request.add_query(query.clone());
        (request, query)
    }

    /// Forwards a client's query for `name` to `upstreams`: the client's
    /// request, the answer, and how long it took.
    async fn forward_timed(upstreams: &[SocketAddr], name: &str) -> (Message, Message, Duration) {
        let (request, query) = request(name);
        let started = Instant::now();
        let answer = Forwarder::new(upstreams).forward(&request, &query).await;
        (request, answer, started.elapsed())
    }

    /// A port on 127.0.0.1 nothing listens on (UDP or TCP).
    fn closed_port() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    }

    /// An upstream on 127.0.0.1 that answers every question with
    /// 198.18.7.7, after first sending a forged answer (a wrong id).
    async fn answering_upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, peer)) = socket.recv_from(&mut buffer).await {
                let Ok(question) = Message::from_vec(&buffer[..len]) else { continue };
                let mut answer = respond(&question, ResponseCode::NoError);
                let name = question.queries[0].name().clone();
                answer.add_answer(Record::from_rdata(name, 5, RData::A(A::new(198, 18, 7, 7))));
                let mut forged = answer.clone();
                forged.metadata.id = answer.metadata.id.wrapping_add(1);
                forged.answers.clear();
                forged.metadata.response_code = ResponseCode::NXDomain;
                for message in [forged, answer] {
                    let _ = socket.send_to(&message.to_vec().expect("encode"), peer).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_closed_upstream_port_fails_at_once() {
        let (request, answer, took) = forward_timed(&[closed_port()], "closed.example.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(answer.metadata.id, request.metadata.id);
        // The ICMP port unreachable comes back on loopback in microseconds.
        assert!(took < Duration::from_millis(200), "SERVFAIL at once, not after a time-out: {took:?}");
    }

    #[tokio::test]
    async fn a_silent_upstream_fails_within_the_deadline() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (_, answer, took) = forward_timed(&[silent.local_addr().expect("addr")], "silent.example.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert!(took >= ATTEMPT_TIMEOUT * 2, "both attempts were waited for: {took:?}");
        assert!(took <= DEADLINE + Duration::from_millis(200), "SERVFAIL by the deadline: {took:?}");
        let mut buffer = [0u8; 512];
        silent.set_nonblocking(true).expect("nonblocking");
        let mut asked = 0;
        while silent.recv(&mut buffer).is_ok() {
            asked += 1;
        }
        assert_eq!(asked, ATTEMPTS, "the silent upstream was asked again once");
    }

    #[tokio::test]
    async fn a_closed_upstream_is_skipped_for_the_next_and_forged_answers_are_dropped() {
        let (request, answer, took) =
            forward_timed(&[closed_port(), answering_upstream().await], "Outside.Example.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.metadata.id, request.metadata.id);
        assert_eq!(answer.queries, request.queries);
        let addresses: Vec<_> = answer.answers.iter().map(|record| record.data.clone()).collect();
        assert_eq!(addresses, [RData::A(A::new(198, 18, 7, 7))]);
        assert!(took < ATTEMPT_TIMEOUT, "the closed one cost no time-out: {took:?}");
    }

    #[tokio::test]
    async fn a_silent_upstream_is_skipped_after_one_attempt() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (_, answer, took) =
            forward_timed(&[silent.local_addr().expect("addr"), answering_upstream().await], "outside.example.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(took >= ATTEMPT_TIMEOUT && took < DEADLINE, "one attempt's wait: {took:?}");
    }

    #[tokio::test]
    async fn a_truncated_answer_is_asked_again_over_tcp() {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = udp.local_addr().expect("addr");
        let tcp = tokio::net::TcpListener::bind(addr).await.expect("bind TCP on the same port");
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, peer)) = udp.recv_from(&mut buffer).await {
                let Ok(question) = Message::from_vec(&buffer[..len]) else { continue };
                let mut truncated = respond(&question, ResponseCode::NoError);
                truncated.metadata.truncation = true;
                let _ = udp.send_to(&truncated.to_vec().expect("encode"), peer).await;
            }
        });
        tokio::spawn(async move {
            let Ok((mut stream, _)) = tcp.accept().await else { return };
            let len = usize::from(stream.read_u16().await.expect("length"));
            let mut buffer = vec![0u8; len];
            stream.read_exact(&mut buffer).await.expect("question");
            let question = Message::from_vec(&buffer).expect("parse");
            let mut answer = respond(&question, ResponseCode::NoError);
            let name = question.queries[0].name().clone();
            answer.add_answer(Record::from_rdata(name, 5, RData::A(A::new(198, 18, 8, 8))));
            let bytes = answer.to_vec().expect("encode");
            let len = u16::try_from(bytes.len()).expect("short").to_be_bytes();
            stream.write_all(&[&len[..], &bytes].concat()).await.expect("answer");
        });
        let (request, query) = request("big.example.");
        let answer = Forwarder::new(&[addr]).forward(&request, &query).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(!answer.metadata.truncation);
        let addresses: Vec<_> = answer.answers.iter().map(|record| record.data.clone()).collect();
        assert_eq!(addresses, [RData::A(A::new(198, 18, 8, 8))]);
    }

    #[tokio::test]
    async fn no_upstream_is_servfail_and_mesh_itself_is_never_one() {
        let own = SocketAddr::from((OWN_ADDRESS, 53));
        let forwarder = Forwarder::new(&[own]);
        let (request, query) = request("anything.example.");
        assert_eq!(forwarder.forward(&request, &query).await.metadata.response_code, ResponseCode::ServFail);
    }
}
