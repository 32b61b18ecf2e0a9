//! Published ports (`--publish HOSTPORT:PORT[/tcp|udp]`): how they are
//! written, and how this host holds them. Each published port is held by a
//! socket bound to it on every address (as Docker's proxy holds it), for as
//! long as its sandbox exists: a port some program listens on cannot be
//! published, and a published one cannot be taken by a program.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use mesh_netdev::firewall::Protocol;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

/// A sandbox port published at the host's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub(crate) struct PublishedPort {
    /// The protocol.
    pub(crate) protocol: Protocol,
    /// The port at the host's addresses.
    pub(crate) host_port: u16,
    /// The port in the sandbox.
    pub(crate) port: u16,
}

impl FromStr for PublishedPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("malformed port {text:?}: give HOSTPORT:PORT, HOSTPORT:PORT/tcp or HOSTPORT:PORT/udp");
        let (ports, protocol) = match text.split_once('/') {
            None => (text, Protocol::Tcp),
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad()),
        };
        let (host_port, port) = ports.split_once(':').ok_or_else(bad)?;
        let number = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(Self { protocol, host_port: number(host_port)?, port: number(port)? })
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.protocol.as_str())
    }
}

impl From<PublishedPort> for String {
    fn from(port: PublishedPort) -> Self {
        port.to_string()
    }
}

impl TryFrom<String> for PublishedPort {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl PublishedPort {
    /// The host's side of it, as a user names it (`8080/tcp`).
    pub(crate) fn host_side(&self) -> String {
        format!("{}/{}", self.host_port, self.protocol.as_str())
    }
}

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
    fn ports_are_parsed_with_tcp_by_default_and_refused_when_malformed() {
        let parsed = |text: &str| text.parse::<PublishedPort>();
        assert_eq!(parsed("8080:80"), Ok(PublishedPort { protocol: Protocol::Tcp, host_port: 8080, port: 80 }));
        assert_eq!(parsed("5353:53/udp"), Ok(PublishedPort { protocol: Protocol::Udp, host_port: 5353, port: 53 }));
        assert_eq!(parsed("8080:80/tcp").map(|p| p.to_string()), Ok("8080:80/tcp".to_owned()));
        for bad in ["80", "0:80", "80:0", "70000:80", "80:80/sctp", "a:b", ":80", "80:80/", "8080:80/udp/x"] {
            assert!(parsed(bad).is_err(), "{bad} is refused");
        }
    }

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
