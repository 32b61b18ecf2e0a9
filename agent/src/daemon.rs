//! `mesh agent`: start-up checks, wiring, and shutdown.
//!
//! Start-up fails fast with a clear message for a bad data dir, a busy port
//! or socket, or no address to advertise, and removes the socket files it
//! made (never another live agent's). Shutdown on SIGTERM/SIGINT stops
//! every task; it leaves the cluster only with `leave_on_terminate`, so a
//! restart (an upgrade, systemd) disrupts nothing: peers keep this node as
//! it was and take its next incarnation when it comes back.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, NodeSettings};
use crate::bootstrap::ClusterSeed;
use crate::config::Settings;
use crate::control::server;
use crate::datadir::DataDir;
use crate::dataplane::{Dataplane, Encryption};
use crate::metrics::Metrics;
use crate::names::SandboxDns;
use mesh_netdev::reconcile::{Reconciler, Underlay};

/// Runs the agent until a termination signal.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let datadir = DataDir::open(&settings.data_dir)?;
    let seed = settings.bootstrap.as_deref().map(ClusterSeed::load).transpose()?;
    let socket = bind_peer_socket(settings.bind)?;
    let advertise = advertise_addr(&settings).await?;
    let endpoint =
        quinn::Endpoint::new(mesh_membership::tls::endpoint_config(), None, socket, Arc::new(quinn::TokioRuntime))
            .context("cannot start the QUIC endpoint")?;
    // Watched before the control socket exists: a supervisor that sees the
    // socket may signal at once, and must get a clean stop.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let metrics_listener = match settings.metrics_addr {
        Some(addr) => Some(crate::metrics_http::bind(addr).await?),
        None => None,
    };
    // From here, a failed start-up removes the socket files it made (the
    // guards drop), so no socket file is left without a listener.
    let (control, _control_file) = crate::unix_http::bind(&settings.socket, "--socket").await?;

    let shutdown = CancellationToken::new();
    let local = match advertise.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => anyhow::bail!("the advertise address must be IPv4: it is also the VXLAN tunnel endpoint"),
    };
    let underlay = Underlay { local: IpAddr::V4(local), port: settings.vxlan_port, tunnel: None };
    let encryption = start_encryption(&settings, &datadir, underlay.local).await?;
    let metrics = Arc::new(Metrics::default());
    let dataplane = Arc::new(Dataplane::open(
        datadir.clone(),
        settings.netns_prefix.clone(),
        underlay,
        encryption,
        Arc::clone(&metrics),
    )?);
    let dns = Arc::new(SandboxDns::new(&settings.upstream_dns, Arc::clone(&metrics), shutdown.clone()));
    if settings.docker_plugin_dir.is_some() {
        if let Err(error) = dns.serve_host() {
            tracing::warn!(%error, "no DNS for Docker's containers");
        }
    }
    let node = NodeSettings {
        name: settings.name.clone(),
        advertise,
        cert_lifetime: settings.cert_lifetime,
        encrypt_networks: settings.encrypt_networks,
    };
    let agent = Agent::start(node, datadir.clone(), endpoint, Arc::clone(&dataplane), dns, shutdown.clone())?;
    let _plugin_file = match &settings.docker_plugin_dir {
        Some(dir) => {
            let agent = Arc::clone(&agent);
            Some(crate::docker::start(dir, &settings.docker_socket, agent, dataplane, datadir, shutdown.clone()).await?)
        }
        None => None,
    };
    tracing::info!(name = %settings.name, %advertise, socket = %settings.socket.display(), "agent started");
    let token = settings.token.clone().or_else(|| seed.as_ref().map(ClusterSeed::token));
    if let Some(seed) = seed {
        agent.bootstrap(seed).await.map_err(|e| anyhow!("cannot bootstrap from the cluster bundle: {e}"))?;
    }
    if let (false, Some(token)) = (settings.join.is_empty(), token) {
        tokio::spawn(Arc::clone(&agent).join_with_retry(settings.join.clone(), token.to_string()));
    }
    let api = tokio::spawn(server::serve(control, Arc::clone(&agent), shutdown.clone()));
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
        tokio::spawn(crate::metrics_http::serve(listener, Arc::clone(&agent), metrics, shutdown.clone()));
    }

    crate::sd_notify::notify("READY=1");

    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
    }
    crate::sd_notify::notify("STOPPING=1");
    if let Some(membership) = agent.membership() {
        if settings.leave_on_terminate {
            match tokio::time::timeout(Duration::from_secs(3), agent.leave()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not leave"),
                Err(_) => tracing::warn!("leaving timed out"),
            }
        }
        shutdown.cancel();
        membership.close().await;
    }
    shutdown.cancel();
    let _ = api.await;
    tracing::info!("agent stopped");
    Ok(())
}

/// Finds this host's encrypted path, over the underlay interface holding
/// `local`, with its WireGuard key (made on first use).
async fn start_encryption(settings: &Settings, datadir: &DataDir, local: IpAddr) -> anyhow::Result<Encryption> {
    if mesh_netdev::wireguard::in_tunnel_network(local) {
        anyhow::bail!("the advertise address {local} lies in the tunnel network, which only WireGuard may carry");
    }
    let key = datadir.wireguard_key()?;
    let id = datadir.node_key()?.id();
    let underlay_mtu = match Reconciler::open()?.underlay_mtu(local).await {
        Ok(mtu) => mtu,
        Err(error) => {
            tracing::warn!(%error, "the underlay's MTU is unknown: WireGuard's interface assumes 1500");
            1500
        }
    };
    Ok(Encryption::start(&settings.encryption, key, id, local, underlay_mtu).await)
}

/// Socket buffers asked of the kernel (it caps them at `net.core.rmem_max`
/// and `wmem_max`): a burst of joins or probes must not overflow the
/// default ~200 KiB and lose handshakes and SWIM packets.
const PEER_SOCKET_BUFFER: usize = 4 << 20;

/// Binds the UDP socket peers talk to, with room for bursts.
fn bind_peer_socket(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).map_err(|e| {
        anyhow!("cannot listen on {addr} for peers: {e} (is another agent running? pick another with --bind)")
    })?;
    let tuned = socket2::SockRef::from(&socket);
    for (what, result) in [
        ("receive", tuned.set_recv_buffer_size(PEER_SOCKET_BUFFER)),
        ("send", tuned.set_send_buffer_size(PEER_SOCKET_BUFFER)),
    ] {
        if let Err(error) = result {
            tracing::warn!(%error, "cannot enlarge the peer socket's {what} buffer");
        }
    }
    Ok(socket)
}

/// The address peers reach this node at: the configured one, else the bind
/// address if it is specific, else the host's main IPv4 address.
async fn advertise_addr(settings: &Settings) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = settings.advertise {
        return Ok(addr);
    }
    if !settings.bind.ip().is_unspecified() {
        return Ok(settings.bind);
    }
    let ip = mesh_netdev::default_ipv4()
        .await
        .context("cannot list this host's addresses")?
        .ok_or_else(|| anyhow!("this host has no IPv4 address to advertise; pass --advertise IP"))?;
    Ok(SocketAddr::new(IpAddr::V4(ip), settings.bind.port()))
}
