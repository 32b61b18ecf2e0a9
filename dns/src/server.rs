//! The resolver: one name table and one forwarder shared by every
//! listener, each listener (a sandbox's UDP and TCP sockets) with its own
//! scope and tasks, so a flood from one sandbox does not stall another.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::answer::{self, encode, respond, Outcome};
use crate::forward::Forwarder;
use crate::table::{NameTable, Scope};

/// UDP sockets per listener, each read by one task (the machines this runs
/// on have a few cores). They share the address with `SO_REUSEPORT`, so the
/// kernel hands each datagram to one of them: two tasks waiting on one
/// socket were both woken by every datagram, which cost light-load latency.
/// The task of socket `i` of every listener runs on UDP thread `i`, a
/// single-threaded runtime of its own, as dnsmasq's loop does: on the
/// agent's shared runtime, a datagram woke one worker and was often served
/// by another, and the p99 at 40,000 queries a second was 0.13-0.24 ms
/// (0.08-0.15 ms on threads of their own, dnsmasq's 0.13-0.39 in the same
/// runs).
const UDP_WORKERS: usize = 2;
/// Most TCP connections one listener serves at once.
const MAX_TCP: usize = 64;
/// How long a TCP connection may sit idle.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest TCP message.
const MAX_TCP_MESSAGE: usize = 65_535;
/// Largest UDP datagram read.
const MAX_DATAGRAM: usize = 4096;

/// A listener's sockets, bound (in the namespace they serve) but not yet served.
#[derive(Debug)]
pub struct Sockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
}

/// Binds UDP and TCP sockets on `addr` in the calling thread's network
/// namespace. The address need not exist yet (`IP_FREEBIND`): the host's
/// resolver address appears with the first network's bridge.
pub fn bind(addr: SocketAddr) -> io::Result<Sockets> {
    let open = |kind| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), kind, None)?;
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        }
        socket.set_reuse_address(true)?;
        if kind == Type::DGRAM {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket)
    };
    let udp = (0..UDP_WORKERS).map(|_| open(Type::DGRAM).map(Into::into)).collect::<io::Result<_>>()?;
    let tcp = open(Type::STREAM)?;
    tcp.listen(128)?;
    Ok(Sockets { udp, tcp: tcp.into() })
}

/// Where the answer to a query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The name table.
    Mesh,
    /// The upstream resolvers (or their stand-in SERVFAIL).
    Upstream,
}

/// Told of every packet a resolver handled, for metrics.
pub trait Observer: Send + Sync {
    /// A packet was answered with `code` after `elapsed`; `None` when it
    /// got no answer (not a query, or unparseable).
    fn answered(&self, source: Source, code: Option<ResponseCode>, elapsed: Duration);
}

/// The names mesh answers and the way to every other name.
pub struct Resolver {
    table: watch::Sender<Arc<NameTable>>,
    forwarder: Forwarder,
    rotation: AtomicUsize,
    observer: Option<Arc<dyn Observer>>,
    /// The UDP threads' runtimes (see [`UDP_WORKERS`]).
    udp_threads: Vec<tokio::runtime::Handle>,
    /// Stops the UDP threads when the resolver goes.
    _stop_udp_threads: DropGuard,
}

impl Resolver {
    /// A resolver with an empty table, forwarding to `upstreams`, telling
    /// `observer` of every packet.
    pub fn new(upstreams: &[SocketAddr], observer: Option<Arc<dyn Observer>>) -> Arc<Self> {
        let (table, _) = watch::channel(Arc::new(NameTable::default()));
        let stop = CancellationToken::new();
        let udp_threads = (0..UDP_WORKERS).filter_map(|i| udp_thread(i, stop.clone())).collect();
        Arc::new(Self {
            table,
            forwarder: Forwarder::new(upstreams),
            rotation: AtomicUsize::new(0),
            observer,
            udp_threads,
            _stop_udp_threads: stop.drop_guard(),
        })
    }

    /// Answers from `table` from now on.
    pub fn set_table(&self, table: NameTable) {
        self.table.send_replace(Arc::new(table));
    }

    /// The table answered from now.
    pub fn table(&self) -> Arc<NameTable> {
        self.table.borrow().clone()
    }

    /// Serves `sockets` for a sandbox on the networks of `scope` until
    /// `shutdown`. Must be called within a Tokio runtime.
    pub fn serve(self: &Arc<Self>, sockets: Sockets, scope: Scope, shutdown: CancellationToken) -> io::Result<()> {
        let tcp = TcpListener::from_std(sockets.tcp)?;
        let scope = Arc::new(scope);
        for (i, udp) in sockets.udp.into_iter().enumerate() {
            // Without its thread (it could not start), the caller's runtime.
            let handle = self.udp_threads.get(i).cloned().unwrap_or_else(tokio::runtime::Handle::current);
            let _entered = handle.enter();
            let udp = Arc::new(UdpSocket::from_std(udp)?);
            let (resolver, scope, shutdown) = (self.clone(), scope.clone(), shutdown.clone());
            handle.spawn(async move { shutdown.run_until_cancelled(resolver.serve_udp(udp, scope)).await });
        }
        let resolver = self.clone();
        tokio::spawn(async move {
            let stop = shutdown.clone();
            stop.run_until_cancelled(resolver.serve_tcp(tcp, scope, shutdown)).await
        });
        Ok(())
    }

    fn next_rotation(&self) -> usize {
        self.rotation.fetch_add(1, Ordering::Relaxed)
    }

    fn observe(&self, source: Source, answer: Option<&Message>, started: Instant) {
        if let Some(observer) = &self.observer {
            observer.answered(source, answer.map(|message| message.metadata.response_code), started.elapsed());
        }
    }

    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>, scope: Arc<Scope>) {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, peer) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "dns: receive failed");
                    continue;
                }
            };
            let started = Instant::now();
            let outcome = answer::answer(&buffer[..len], &self.table(), &scope, self.next_rotation());
            match outcome {
                Outcome::Ignore => self.observe(Source::Mesh, None, started),
                Outcome::Reply { message, udp_limit } => {
                    send_udp(&socket, &message, udp_limit, peer).await;
                    self.observe(Source::Mesh, Some(&message), started);
                }
                Outcome::Forward { request, query, udp_limit } => {
                    let Some(permit) = self.forwarder.permit() else {
                        let message = respond(&request, ResponseCode::ServFail);
                        send_udp(&socket, &message, udp_limit, peer).await;
                        self.observe(Source::Upstream, Some(&message), started);
                        continue;
                    };
                    let (resolver, socket) = (self.clone(), socket.clone());
                    tokio::spawn(async move {
                        let message = resolver.forwarder.forward(&request, &query).await;
                        send_udp(&socket, &message, udp_limit, peer).await;
                        resolver.observe(Source::Upstream, Some(&message), started);
                        drop(permit);
                    });
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener, scope: Arc<Scope>, shutdown: CancellationToken) {
        let connections = Arc::new(Semaphore::new(MAX_TCP));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "dns: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
            let (resolver, scope, shutdown) = (self.clone(), scope.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.run_until_cancelled(resolver.serve_connection(stream, &scope)).await;
                drop(permit);
            });
        }
    }

    /// Answers the queries of one TCP connection until it closes or idles.
    async fn serve_connection(&self, mut stream: TcpStream, scope: &Scope) {
        let mut buffer = vec![0u8; MAX_TCP_MESSAGE];
        loop {
            let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return };
            let len = usize::from(len);
            if tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buffer[..len])).await.is_err() {
                return;
            }
            let started = Instant::now();
            let (source, message) = match answer::answer(&buffer[..len], &self.table(), scope, self.next_rotation()) {
                Outcome::Ignore => return self.observe(Source::Mesh, None, started),
                Outcome::Reply { message, .. } => (Source::Mesh, message),
                Outcome::Forward { request, query, .. } => (Source::Upstream, self.forward_one(&request, &query).await),
            };
            self.observe(source, Some(&message), started);
            let Some(bytes) = encode(&message, MAX_TCP_MESSAGE) else { return };
            let Ok(len) = u16::try_from(bytes.len()) else { return };
            let mut framed = Vec::with_capacity(bytes.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&bytes);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }

    async fn forward_one(&self, request: &Message, query: &Query) -> Message {
        match self.forwarder.permit() {
            Some(_permit) => self.forwarder.forward(request, query).await,
            None => respond(request, ResponseCode::ServFail),
        }
    }
}

/// Starts UDP thread `i`: a single-threaded runtime that runs until `stop`.
fn udp_thread(i: usize, stop: CancellationToken) -> Option<tokio::runtime::Handle> {
    let started = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || runtime.block_on(stop.cancelled()))
            .map(|_| handle)
    });
    started.map_err(|error| tracing::warn!(%error, "dns: no UDP thread {i}; its sockets are served with the rest")).ok()
}

async fn send_udp(socket: &UdpSocket, message: &Message, limit: usize, peer: SocketAddr) {
    let Some(bytes) = encode(message, limit) else { return };
    if let Err(error) = socket.send_to(&bytes, peer).await {
        tracing::debug!(%error, "dns: send failed");
    }
}
