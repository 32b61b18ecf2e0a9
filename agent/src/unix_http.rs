//! HTTP/1.1 over unix sockets: the owner-only socket the control API and
//! the Docker plugin serve on ([`bind`]), and one request, as the `mesh`
//! client reaches its agent and the agent reaches the Docker engine.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// Binds the unix socket at `path` (set by option `flag`), owner-only,
/// with the guard that removes its file. A stale socket file (no one
/// listening: the connection is refused) left by a crashed agent is
/// replaced; a live one, or anything that is not a socket, is an error and
/// is left as it is.
pub(crate) async fn bind(path: &Path, flag: &str) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            bail!("{} exists and is not a socket (move it away, or pick another {flag})", path.display());
        }
        match tokio::net::UnixStream::connect(path).await {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => {
                bail!("another agent is already serving {} (stop it, or pick another {flag})", path.display())
            }
            Err(error) => bail!("cannot tell whether another agent is serving {}: {error}", path.display()),
        }
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot bind socket {}", path.display()))?;
    let file = SocketFile::made(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok((listener, file))
}

/// A socket file this agent made: removed when dropped (at shutdown, or
/// when start-up fails after making it), unless the path has since come to
/// hold another file, such as the socket of an agent started after this one.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// The file's device and inode, as made.
    made: (u64, u64),
}

impl SocketFile {
    /// Takes charge of the socket just bound at `path`.
    fn made(path: &Path) -> anyhow::Result<Self> {
        match identity(path) {
            Ok(made) => Ok(Self { path: path.to_owned(), made }),
            Err(error) => {
                let _ = std::fs::remove_file(path);
                Err(error).with_context(|| format!("cannot read the socket just bound at {}", path.display()))
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if identity(&self.path).is_ok_and(|now| now == self.made) {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(%error, path = %self.path.display(), "cannot remove the socket file");
            }
        }
    }
}

/// The device and inode of the file at `path` (not following a symlink).
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::symlink_metadata(path).map(|metadata| (metadata.dev(), metadata.ino()))
}

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
