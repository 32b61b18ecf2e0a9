//! The metrics listener: `GET /metrics` over plain HTTP on
//! `--metrics-addr`, for Prometheus to scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::metrics::{render, EncryptionFigures, Metrics, CONTENT_TYPE};

/// Binds the metrics listener (at start-up, so a busy port fails the start).
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr} (is the port taken? pick another with --metrics-addr)")
    })
}

/// Serves the metrics until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    agent: Arc<Agent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "mesh serves its metrics at /metrics\n") })
        .with_state((agent, metrics));
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("metrics listener")
}

async fn scrape(State((agent, metrics)): State<(Arc<Agent>, Arc<Metrics>)>) -> impl IntoResponse {
    let encryption = agent.encryption().await;
    let figures = EncryptionFigures {
        path: encryption.path,
        peers: encryption.peers,
        dropped: encryption.dropped,
        guard_dropped: encryption.guard_dropped.into_iter().collect(),
    };
    let text = render(&metrics, agent.membership(), &figures).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}
