//! A minimal HTTP/1.1 client over the agent's unix socket.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ErrorBody;

/// Talks to one agent.
pub(crate) struct Client {
    socket: PathBuf,
}

impl Client {
    pub(crate) fn new(socket: &Path) -> Self {
        Self { socket: socket.to_owned() }
    }

    /// `GET path`, decoding the JSON answer.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `POST path` with a JSON body, decoding the JSON answer.
    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.call(Method::POST, path, Bytes::from(serde_json::to_vec(body)?)).await
    }

    /// `DELETE path`, decoding the JSON answer.
    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::DELETE, path, Bytes::new()).await
    }

    /// `GET path` of a stream: calls `started` once the agent accepted,
    /// then `line` with each line as it arrives, until the agent ends the
    /// stream.
    pub(crate) async fn stream_lines(
        &self,
        path: &str,
        started: impl FnOnce(),
        mut line: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        let (status, mut body) =
            crate::unix_http::get_streaming(&self.socket, path).await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return Err(error_of(status, &bytes));
        }
        started();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.context("the agent broke off the stream")?.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let text: Vec<u8> = pending.drain(..=end).collect();
                line(String::from_utf8_lossy(&text[..end]).as_ref());
            }
        }
        Ok(())
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<T> {
        let (status, bytes) =
            crate::unix_http::request(&self.socket, method, path, body).await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(error_of(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the agent: {}", String::from_utf8_lossy(&bytes)))
    }

    /// Explains a failed request: an unreachable socket says what to check.
    /// No socket file and a stale one (no one listening: refused) mean the
    /// same to the user, and say the same.
    fn unreachable(&self, error: anyhow::Error) -> anyhow::Error {
        use std::io::ErrorKind;
        let socket = self.socket.display();
        let hint = "is `mesh agent` running? point --socket or MESH_SOCKET at its socket";
        match error.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
            Some(ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                anyhow!("cannot reach the mesh agent at {socket}: no agent is listening there ({hint})")
            }
            Some(ErrorKind::PermissionDenied) => {
                anyhow!("cannot reach the mesh agent at {socket}: permission denied (the socket is owner-only: run as the agent's user, usually root)")
            }
            Some(_) => anyhow!("cannot reach the mesh agent at {socket}: {error} ({hint})"),
            None => error.context("the agent closed the connection"),
        }
    }
}

/// The error an agent's non-2xx answer carries.
fn error_of(status: StatusCode, bytes: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => anyhow!("{}", body.error),
        Err(_) => anyhow!("the agent answered {status}"),
    }
}
