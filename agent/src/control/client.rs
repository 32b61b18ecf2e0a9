//! A minimal HTTP/1.1 client over the agent's unix socket.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use hyper::body::Bytes;
use hyper::Method;
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

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<T> {
        let (status, bytes) = crate::unix_http::request(&self.socket, method, path, body).await.map_err(|e| {
            match e.downcast_ref::<std::io::Error>() {
                Some(io) => anyhow!(
                    "cannot reach the mesh agent at {}: {io} (is `mesh agent` running? point --socket or MESH_SOCKET at its socket)",
                    self.socket.display()
                ),
                None => e.context("the agent closed the connection"),
            }
        })?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => bail!("{}", body.error),
                Err(_) => bail!("the agent answered {status}"),
            }
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the agent: {}", String::from_utf8_lossy(&bytes)))
    }
}
