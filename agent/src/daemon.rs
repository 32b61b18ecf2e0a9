//! `mesh agent`: start-up checks, wiring, and shutdown.
//!
//! Start-up fails fast with a clear message for a bad data dir, a busy port
//! or socket, or no address to advertise. Shutdown on SIGTERM/SIGINT stops
//! every task; it leaves the cluster only with `leave_on_terminate`, so a
//! restart (an upgrade, systemd) disrupts nothing: peers keep this node as
//! it was and take its next incarnation when it comes back.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::config::Settings;
use crate::control::server;
use crate::datadir::DataDir;

/// Runs the agent until a termination signal.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let datadir = DataDir::open(&settings.data_dir)?;
    let socket = UdpSocket::bind(settings.bind).map_err(|e| {
        anyhow!(
            "cannot listen on {} for peers: {e} (is another agent running? pick another with --bind)",
            settings.bind
        )
    })?;
    let advertise = advertise_addr(&settings).await?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
        .context("cannot start the QUIC endpoint")?;
    let control = server::bind(&settings.socket).await?;

    let shutdown = CancellationToken::new();
    let agent = Agent::start(settings.name.clone(), advertise, datadir, endpoint, shutdown.clone())?;
    tracing::info!(name = %settings.name, %advertise, socket = %settings.socket.display(), "agent started");
    if let (false, Some(token)) = (settings.join.is_empty(), &settings.token) {
        tokio::spawn(Arc::clone(&agent).join_with_retry(settings.join.clone(), token.to_string()));
    }
    let api = tokio::spawn(server::serve(control, Arc::clone(&agent), shutdown.clone()));

    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
    }
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
    let _ = std::fs::remove_file(&settings.socket);
    tracing::info!("agent stopped");
    Ok(())
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
