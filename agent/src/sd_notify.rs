//! systemd's readiness protocol (`Type=notify`): when a service manager
//! started the agent with `$NOTIFY_SOCKET`, tell it when the agent is
//! ready (its control socket answers) and when it is stopping.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`...), if the
/// agent runs under one. A failure is logged: it never stops the agent.
pub(crate) fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(error) = notify_to(Path::new(&socket), state) {
        tracing::warn!(%error, socket = %socket.to_string_lossy(), "cannot notify the service manager");
    }
}

/// Sends `state` to the notification socket at `socket` (a path, or an
/// abstract name written with a leading `@`).
fn notify_to(socket: &Path, state: &str) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    let name = socket.as_os_str().as_encoded_bytes();
    let addr = match name.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    sender.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reaches_a_path_socket_and_an_abstract_one() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path)?;
        notify_to(&path, "READY=1")?;
        let mut buffer = [0u8; 64];
        let n = manager.recv(&mut buffer)?;
        assert_eq!(&buffer[..n], b"READY=1");

        let name = format!("mesh-test-{}", std::process::id());
        let manager = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        notify_to(Path::new(&format!("@{name}")), "STOPPING=1")?;
        let n = manager.recv(&mut buffer)?;
        assert_eq!(&buffer[..n], b"STOPPING=1");
        Ok(())
    }
}
