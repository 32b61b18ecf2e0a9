//! The control API server: routes on the agent's owner-only unix socket,
//! each a thin mapping from HTTP to an [`Agent`] operation.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentError};
use crate::api::{
    self, CaRotateBody, ChangesBody, ChangesQuery, Done, ErrorBody, InitBody, JoinBody, MemberBody, NetworkBody,
    NetworkCreateBody, SandboxBody, SandboxCreateBody, StatusBody, TokenBody,
};

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::Peer(_) => StatusCode::BAD_GATEWAY,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

type Reply<T> = Result<Json<T>, AgentError>;

async fn init(State(agent): State<Arc<Agent>>, body: Result<Json<InitBody>, JsonRejection>) -> Reply<TokenBody> {
    let Json(body) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    let token = agent.init(body.encrypt_networks).await?;
    Ok(Json(TokenBody { token: token.to_string() }))
}

async fn join(
    State(agent): State<Arc<Agent>>,
    body: Result<Json<JoinBody>, JsonRejection>,
) -> Reply<serde_json::Value> {
    let Json(body) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    agent.join(&body.peer, &body.token).await?;
    Ok(Json(serde_json::json!({})))
}

async fn token(State(agent): State<Arc<Agent>>) -> Reply<TokenBody> {
    Ok(Json(TokenBody { token: agent.token()?.to_string() }))
}

async fn token_rotate(State(agent): State<Arc<Agent>>) -> Reply<TokenBody> {
    Ok(Json(TokenBody { token: agent.rotate_token().await?.to_string() }))
}

async fn ca_rotate(
    State(agent): State<Arc<Agent>>,
    body: Result<Json<CaRotateBody>, JsonRejection>,
) -> Reply<TokenBody> {
    let Json(body) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    let grace = std::time::Duration::from_secs(body.grace_secs);
    Ok(Json(TokenBody { token: agent.rotate_ca(grace).await?.to_string() }))
}

async fn member_remove(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Reply<Done> {
    agent.remove_member(&name).await?;
    Ok(Json(Done {}))
}

async fn leave(State(agent): State<Arc<Agent>>) -> Reply<serde_json::Value> {
    agent.leave().await?;
    Ok(Json(serde_json::json!({})))
}

async fn members(State(agent): State<Arc<Agent>>) -> Reply<Vec<MemberBody>> {
    Ok(Json(agent.members().await?))
}

async fn status(State(agent): State<Arc<Agent>>) -> Reply<StatusBody> {
    Ok(Json(agent.status().await?))
}

async fn network_create(
    State(agent): State<Arc<Agent>>,
    body: Result<Json<NetworkCreateBody>, JsonRejection>,
) -> Reply<NetworkBody> {
    let Json(body) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    Ok(Json(agent.network_create(body).await?))
}

async fn networks(State(agent): State<Arc<Agent>>) -> Reply<Vec<NetworkBody>> {
    Ok(Json(agent.networks().await?))
}

async fn network(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Reply<NetworkBody> {
    Ok(Json(agent.network(&name).await?))
}

async fn network_rm(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Reply<Done> {
    agent.network_rm(&name).await?;
    Ok(Json(Done {}))
}

async fn sandbox_create(
    State(agent): State<Arc<Agent>>,
    body: Result<Json<SandboxCreateBody>, JsonRejection>,
) -> Reply<SandboxBody> {
    let Json(body) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    Ok(Json(agent.sandbox_create(body).await?))
}

async fn sandboxes(State(agent): State<Arc<Agent>>) -> Reply<Vec<SandboxBody>> {
    Ok(Json(agent.sandboxes().await?))
}

async fn sandbox_rm(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Reply<Done> {
    agent.sandbox_rm(&name).await?;
    Ok(Json(Done {}))
}

async fn changes(
    State(agent): State<Arc<Agent>>,
    query: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply<ChangesBody> {
    let Query(query) = query.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    Ok(Json(agent.changes(query).await?))
}

/// Streams changes, one JSON line each, while the client listens.
async fn events(State(agent): State<Arc<Agent>>) -> Result<Response, AgentError> {
    let lines = agent.events().await?;
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        lines.recv().await.map(|line| (Ok::<_, std::convert::Infallible>(line), lines))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(stream))
        .into_response())
}

/// Serves the control API until `shutdown` fires.
pub(crate) async fn serve(
    listener: UnixListener,
    agent: Arc<Agent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = Router::new()
        .route(api::INIT, post(init))
        .route(api::JOIN, post(join))
        .route(api::TOKEN, get(token))
        .route(api::TOKEN_ROTATE, post(token_rotate))
        .route(api::CA_ROTATE, post(ca_rotate))
        .route(api::MEMBER, delete(member_remove))
        .route(api::LEAVE, post(leave))
        .route(api::MEMBERS, get(members))
        .route(api::STATUS, get(status))
        .route(api::NETWORKS, post(network_create).get(networks))
        .route(api::NETWORK, get(network).delete(network_rm))
        .route(api::SANDBOXES, post(sandbox_create).get(sandboxes))
        .route(api::SANDBOX, delete(sandbox_rm))
        .route(api::CHANGES, get(changes))
        .route(api::EVENTS, get(events))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(ErrorBody { error: "no such API path (is the `mesh` client newer than the agent?)".into() }),
            )
        })
        .with_state(agent);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("control API")
}
