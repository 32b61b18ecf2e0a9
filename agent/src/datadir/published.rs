//! Published ports (`--publish HOSTPORT:PORT[/tcp|udp]`): how they are
//! written, and kept with a sandbox's attachment. How this host holds them
//! is the data plane's ([`crate::dataplane`]).

use std::fmt;
use std::str::FromStr;

use mesh_netdev::firewall::Protocol;
use serde::{Deserialize, Serialize};

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
}
