//! How this host holds published ports: each by a socket bound to it on
//! every address (as Docker's proxy holds it), for as long as its sandbox
//! exists: a port some program listens on cannot be published, and a
//! published one cannot be taken by a program.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use mesh_netdev::firewall::Protocol;
use socket2::{Domain, Socket, Type};

use crate::datadir::PublishedPort;

/// The sockets that hold published ports, by sandbox.
#[derive(Debug, Default)]
pub(crate) struct PortHolds {
    held: BTreeMap<String, Vec<Socket>>,
}

impl PortHolds {
    /// Holds `ports` for sandbox `sandbox`: all of them, or none and an
    /// error naming the first that is taken.
    pub(crate) fn hold(&mut self, sandbox: &str, ports: &[PublishedPort]) -> Result<(), String> {
        if ports.is_empty() {
            return Ok(());
        }
        let sockets = ports.iter().map(|port| self.claim(port)).collect::<Result<Vec<_>, _>>()?;
        self.held.insert(sandbox.to_owned(), sockets);
        Ok(())
    }

    /// Checks that `ports` could be held now.
    pub(crate) fn check(&self, ports: &[PublishedPort]) -> Result<(), String> {
        ports.iter().try_for_each(|port| self.claim(port).map(drop))
    }

    /// A socket holding `port`, or why it is taken.
    fn claim(&self, port: &PublishedPort) -> Result<Socket, String> {
        if let Some(owner) = self.holder_of(port) {
            return Err(format!("host port {} is taken: sandbox {owner} publishes it", port.host_side()));
        }
        bind(port).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "host port {} is taken by a program on this host (`ss -lntup` shows which): choose another",
                port.host_side()
            ),
            _ => format!("cannot hold host port {}: {e}", port.host_side()),
        })
    }

    /// Lets sandbox `sandbox`'s ports go.
    pub(crate) fn release(&mut self, sandbox: &str) {
        self.held.remove(sandbox);
    }

    /// The sandbox holding `port`, if one does.
    fn holder_of(&self, port: &PublishedPort) -> Option<&str> {
        let wanted = (port.protocol, port.host_port);
        self.held
            .iter()
            .find(|(_, sockets)| sockets.iter().any(|s| held_port(s) == Some(wanted)))
            .map(|(name, _)| name.as_str())
    }
}

/// A socket bound to `port` on every address, not listening (without
/// `SO_REUSEADDR`: no other socket can bind the port while it is held).
fn bind(port: &PublishedPort) -> std::io::Result<Socket> {
    let kind = match port.protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let socket = Socket::new(Domain::IPV4, kind, None)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port.host_port)).into())?;
    Ok(socket)
}

/// The protocol and port a holding socket is bound to.
fn held_port(socket: &Socket) -> Option<(Protocol, u16)> {
    let protocol = match socket.r#type().ok()? {
        Type::STREAM => Protocol::Tcp,
        _ => Protocol::Udp,
    };
    Some((protocol, socket.local_addr().ok()?.as_socket()?.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_cannot_be_held_again_and_is_free_once_released() {
        let mut holds = PortHolds::default();
        // A port the kernel picks: free now.
        let probe = std::net::TcpListener::bind("0.0.0.0:0").expect("a free port");
        let free = probe.local_addr().expect("address").port();
        drop(probe);
        let port = PublishedPort { protocol: Protocol::Tcp, host_port: free, port: 80 };
        holds.hold("web", &[port]).expect("free");
        let taken = holds.hold("other", &[port]).expect_err("held by web");
        assert!(taken.contains("sandbox web"), "{taken}");
        assert!(std::net::TcpListener::bind(("0.0.0.0", free)).is_err(), "no program can take it");
        holds.release("web");
        holds.hold("other", &[port]).expect("free again");
        let udp = PublishedPort { protocol: Protocol::Udp, ..port };
        holds.hold("dns", &[udp]).expect("the same number over UDP is another port");
    }
}
