//! A minimal blocking HTTP/1.1 client for an agent's control socket, for
//! watchers that poll many hosts at once without starting processes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// How long an ordinary request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path`; returns the body of a 200 answer.
pub fn get(socket: &Path, path: &str) -> anyhow::Result<String> {
    request(socket, "GET", path, "", TIMEOUT)
}

/// `GET path` that may wait up to `wait` (a long poll).
pub fn get_waiting(socket: &Path, path: &str, wait: Duration) -> anyhow::Result<String> {
    request(socket, "GET", path, "", wait + TIMEOUT)
}

/// `POST path` with a JSON body; returns the body of a 200 answer.
pub fn post(socket: &Path, path: &str, json: &str) -> anyhow::Result<String> {
    request(socket, "POST", path, json, TIMEOUT)
}

/// `DELETE path`; returns the body of a 200 answer.
pub fn delete(socket: &Path, path: &str) -> anyhow::Result<String> {
    request(socket, "DELETE", path, "", TIMEOUT)
}

fn request(socket: &Path, method: &str, path: &str, body: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}: {body}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}
