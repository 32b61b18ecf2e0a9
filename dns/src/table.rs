//! The name table: every name mesh answers for, built from plain data the
//! agent takes from its view, and looked up without allocating per label.
//!
//! Names (case-insensitive):
//! - `NAME` (an endpoint's name or alias), scoped to the asking sandbox's
//!   networks;
//! - `NAME.NETWORK` and `NAME.NETWORK.mesh.` on that network only;
//! - `NODE.node.mesh.` for a host's advertise address;
//! - `d.c.b.a.in-addr.arpa.` for an endpoint's address (its
//!   `NAME.NETWORK.mesh.` name).
//!
//! Under `mesh.` the table is the authority: a name it does not hold does
//! not exist. A short name or `NAME.NETWORK` it does not hold is not
//! claimed (it may be a real name: `.dev` is a top-level domain) and goes
//! to the upstream resolvers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

/// The zone mesh is the authority for.
pub const ZONE: &str = "mesh";

/// An endpoint with an address, as the table takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its name (the sandbox's).
    pub name: String,
    /// The network it is on.
    pub network: String,
    /// Service names it publishes besides its name.
    pub aliases: Vec<String>,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A host of the cluster, as the table takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Its advertise address.
    pub ip: IpAddr,
}

/// Which networks a short name is looked up in: those of the sandbox that
/// asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every network (a resolver that serves no one sandbox).
    All,
    /// These networks.
    Networks(Vec<String>),
}

impl Scope {
    fn covers(&self, network: &str) -> bool {
        match self {
            Self::All => true,
            Self::Networks(networks) => networks.iter().any(|n| n == network),
        }
    }
}

/// What the table says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name exists with these addresses (maybe none: the name exists
    /// but has no address record, such as `mesh.` itself).
    Addresses(Vec<IpAddr>),
    /// The name is an endpoint's address: its name, `NAME.NETWORK.mesh`.
    Pointer(String),
    /// The name is under `mesh.` and does not exist.
    NoSuchName,
    /// Not a name mesh claims: ask the upstream resolvers.
    NotOurs,
}

/// Every name mesh answers, from one view of the cluster.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    /// Name or alias → (network, address) of each endpoint that has it.
    names: HashMap<String, Vec<(String, Ipv4Addr)>>,
    networks: HashSet<String>,
    nodes: HashMap<String, IpAddr>,
    pointers: HashMap<Ipv4Addr, String>,
}

impl NameTable {
    /// The table of `endpoints` and `nodes`.
    pub fn new(endpoints: &[Endpoint], nodes: &[Node]) -> Self {
        let mut table = Self::default();
        for endpoint in endpoints {
            let network = endpoint.network.to_ascii_lowercase();
            let name = endpoint.name.to_ascii_lowercase();
            for label in std::iter::once(&endpoint.name).chain(&endpoint.aliases) {
                let holders = table.names.entry(label.to_ascii_lowercase()).or_default();
                if !holders.contains(&(network.clone(), endpoint.ip)) {
                    holders.push((network.clone(), endpoint.ip));
                }
            }
            table.pointers.insert(endpoint.ip, format!("{name}.{network}.{ZONE}"));
            table.networks.insert(network);
        }
        for holders in table.names.values_mut() {
            holders.sort();
        }
        table.nodes = nodes.iter().map(|n| (n.name.to_ascii_lowercase(), n.ip)).collect();
        table
    }

    /// How many names (endpoint names and aliases) it holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it holds no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Looks up `labels` (most specific first, lower case, no root label)
    /// for a sandbox whose networks are `scope`.
    pub fn lookup(&self, labels: &[&str], scope: &Scope) -> Lookup {
        if let Some(ip) = reverse_v4(labels) {
            return self.pointers.get(&ip).map_or(Lookup::NotOurs, |name| Lookup::Pointer(name.clone()));
        }
        match labels {
            [.., last] if *last == ZONE => self.lookup_zone(&labels[..labels.len() - 1]),
            [name] => self.addresses(name, |network| scope.covers(network)),
            [name, network] if self.networks.contains(*network) => self.addresses(name, |n| n == *network),
            _ => Lookup::NotOurs,
        }
    }

    /// `labels` under `mesh.` (the zone label removed).
    fn lookup_zone(&self, labels: &[&str]) -> Lookup {
        let found = match labels {
            [] | ["node"] => Lookup::Addresses(Vec::new()),
            [node, "node"] => self.nodes.get(*node).map_or(Lookup::NoSuchName, |ip| Lookup::Addresses(vec![*ip])),
            [network] if self.networks.contains(*network) => Lookup::Addresses(Vec::new()),
            [name, network] if self.networks.contains(*network) => self.addresses(name, |n| n == *network),
            _ => Lookup::NoSuchName,
        };
        match found {
            Lookup::NotOurs => Lookup::NoSuchName,
            found => found,
        }
    }

    /// The addresses of `name` on the networks `wanted` accepts.
    fn addresses(&self, name: &str, wanted: impl Fn(&str) -> bool) -> Lookup {
        let Some(holders) = self.names.get(name) else { return Lookup::NotOurs };
        let mut addresses: Vec<IpAddr> = Vec::with_capacity(holders.len());
        for (_, ip) in holders.iter().filter(|(network, _)| wanted(network)) {
            let ip = IpAddr::V4(*ip);
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        if addresses.is_empty() {
            Lookup::NotOurs
        } else {
            Lookup::Addresses(addresses)
        }
    }
}

/// The address `d.c.b.a.in-addr.arpa` names.
fn reverse_v4(labels: &[&str]) -> Option<Ipv4Addr> {
    let [d, c, b, a, "in-addr", "arpa"] = labels else { return None };
    let octet = |label: &str| label.parse::<u8>().ok().filter(|_| !label.starts_with('0') || label == "0");
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, network: &str, aliases: &[&str], ip: [u8; 4]) -> Endpoint {
        Endpoint {
            name: name.into(),
            network: network.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            ip: ip.into(),
        }
    }

    fn table() -> NameTable {
        NameTable::new(
            &[
                endpoint("svc1", "dev", &["web"], [10, 0, 0, 2]),
                endpoint("svc2", "dev", &["web"], [10, 0, 0, 3]),
                endpoint("db", "back", &[], [10, 1, 0, 2]),
            ],
            &[Node { name: "h1".into(), ip: IpAddr::V4([198, 18, 0, 1].into()) }],
        )
    }

    fn v4(ip: [u8; 4]) -> IpAddr {
        IpAddr::V4(ip.into())
    }

    #[test]
    fn short_names_are_scoped_to_the_askers_networks() {
        let dev = Scope::Networks(vec!["dev".into()]);
        assert_eq!(table().lookup(&["svc1"], &dev), Lookup::Addresses(vec![v4([10, 0, 0, 2])]));
        assert_eq!(table().lookup(&["db"], &dev), Lookup::NotOurs);
        assert_eq!(table().lookup(&["db"], &Scope::All), Lookup::Addresses(vec![v4([10, 1, 0, 2])]));
        assert_eq!(table().lookup(&["web"], &dev), Lookup::Addresses(vec![v4([10, 0, 0, 2]), v4([10, 0, 0, 3])]));
    }

    #[test]
    fn qualified_names_and_the_zone() {
        let dev = Scope::Networks(vec!["dev".into()]);
        let table = table();
        assert_eq!(table.lookup(&["db", "back"], &dev), Lookup::Addresses(vec![v4([10, 1, 0, 2])]));
        assert_eq!(table.lookup(&["db", "back", "mesh"], &dev), Lookup::Addresses(vec![v4([10, 1, 0, 2])]));
        assert_eq!(table.lookup(&["nope", "back"], &dev), Lookup::NotOurs, "x.NETWORK may be a real name");
        assert_eq!(table.lookup(&["nope", "back", "mesh"], &dev), Lookup::NoSuchName);
        assert_eq!(table.lookup(&["back", "mesh"], &dev), Lookup::Addresses(Vec::new()));
        assert_eq!(table.lookup(&["mesh"], &dev), Lookup::Addresses(Vec::new()));
        assert_eq!(table.lookup(&["h1", "node", "mesh"], &dev), Lookup::Addresses(vec![v4([198, 18, 0, 1])]));
        assert_eq!(table.lookup(&["h9", "node", "mesh"], &dev), Lookup::NoSuchName);
        assert_eq!(table.lookup(&["a", "b", "c", "mesh"], &dev), Lookup::NoSuchName);
        assert_eq!(table.lookup(&["example", "com"], &dev), Lookup::NotOurs);
    }

    #[test]
    fn pointers_name_the_endpoint() {
        let table = table();
        let ptr = table.lookup(&["2", "0", "0", "10", "in-addr", "arpa"], &Scope::All);
        assert_eq!(ptr, Lookup::Pointer("svc1.dev.mesh".into()));
        assert_eq!(table.lookup(&["9", "0", "0", "10", "in-addr", "arpa"], &Scope::All), Lookup::NotOurs);
        assert_eq!(table.lookup(&["02", "0", "0", "10", "in-addr", "arpa"], &Scope::All), Lookup::NotOurs);
    }
}
