//! One HTTP/1.1 request over a unix socket: how the `mesh` client reaches
//! its agent and how the agent reaches the Docker engine.

use std::path::Path;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Sends `method path` with a JSON `body` to the server on `socket` and
/// returns its status and body. The error of an unreachable socket is
/// the I/O error, for the caller to explain.
pub(crate) async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await.context("the server closed the connection")?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// Sends `GET path` to the server on `socket` and returns its status and
/// its body as it arrives (for streams). Errors as for [`request`].
pub(crate) async fn get_streaming(socket: &Path, path: &str) -> anyhow::Result<(StatusCode, Incoming)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await.context("the server closed the connection")?;
    Ok((response.status(), response.into_body()))
}

/// `text` made safe as one URL path segment or query value
/// (percent-encoding all but letters, digits, `-`, `.`, `_` and `~`).
pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
