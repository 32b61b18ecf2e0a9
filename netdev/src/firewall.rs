//! The way in and out of mesh's networks: masquerade for what leaves
//! through the host's default route, published ports, the closing of
//! internal networks and the isolation of networks from each other, all in
//! one nftables table, `ip mesh`, that mesh owns; and, on a host with an
//! encrypted path, the guard of the tunnel network in `ip6 mesh`: no packet
//! from a tunnel address, and no VXLAN packet to one, is taken unless it
//! came out of WireGuard (`mwg0`), so nothing forged on the underlay
//! reaches an encrypted network.
//!
//! Each table is made and replaced as a whole, in one `nft` transaction,
//! and deleted as a whole when no rule is wanted: rules of other tables are
//! never touched. Like the devices, they are reconciled, not just set: each
//! pass lists a table and compares it with the listing the last apply
//! left, so a table deleted or edited by hand is restored.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::NetdevError;

/// The nftables table mesh owns (family `ip`).
pub const TABLE: &str = "mesh";

/// Where the kernel's IPv4 forwarding switch is (per network namespace).
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What the tables must hold for this host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FirewallPlan {
    /// The networks programmed on this host.
    pub networks: Vec<RoutedNetwork>,
    /// Ports published at this host's addresses.
    pub ports: Vec<PortMapping>,
    /// The interface of the host's default route: what leaves through it
    /// from a network that is not internal is masqueraded.
    pub uplink: Option<String>,
    /// The tunnel network to guard, on a host with an encrypted path.
    pub tunnel: Option<TunnelGuard>,
}

/// The tunnel network as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelGuard {
    /// The tunnel network: prefix and length.
    pub network: (Ipv6Addr, u8),
    /// The WireGuard interface, the only way in for its packets.
    pub interface: String,
    /// VXLAN's UDP port.
    pub vxlan_port: u16,
}

impl TunnelGuard {
    /// The `ip6 mesh` table as an `nft` script. At raw priority, before
    /// conntrack; loopback is the host talking to itself.
    fn ruleset(&self) -> String {
        let ((prefix, length), interface, port) = (self.network, &self.interface, self.vxlan_port);
        format!(
            "table ip6 {TABLE} {{\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\
             \t\tiifname {{ \"lo\", \"{interface}\" }} accept\n\
             \t\tip6 saddr {prefix}/{length} counter drop\n\
             \t\tip6 daddr {prefix}/{length} udp dport {port} counter drop\n\t}}\n}}\n"
        )
    }
}

/// A network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedNetwork {
    /// Its bridge on this host.
    pub bridge: String,
    /// Its subnet: address and prefix length.
    pub subnet: (Ipv4Addr, u8),
    /// Whether it has no way out.
    pub internal: bool,
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Its name as nftables (and `--publish`) spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A port of a sandbox published at the host's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The protocol.
    pub protocol: Protocol,
    /// The port at the host's addresses.
    pub host_port: u16,
    /// The sandbox's address.
    pub address: Ipv4Addr,
    /// The port in the sandbox.
    pub port: u16,
}

impl FirewallPlan {
    /// Whether any network needs the host to forward (one that is not internal).
    pub fn needs_forwarding(&self) -> bool {
        self.networks.iter().any(|n| !n.internal)
    }

    /// The table as an `nft` script, or `None` when no rule is wanted.
    pub fn ruleset(&self) -> Option<String> {
        if self.networks.is_empty() && self.ports.is_empty() {
            return None;
        }
        let mut dnat = String::new();
        for port in &self.ports {
            let (protocol, host_port, address, to) = (port.protocol.as_str(), port.host_port, port.address, port.port);
            let _ = writeln!(
                dnat,
                "\t\tip daddr != 127.0.0.0/8 fib daddr type local {protocol} dport {host_port} dnat to {address}:{to}"
            );
        }
        let mut masquerade = String::new();
        let mut forward = String::new();
        for network in &self.networks {
            let (bridge, (ip, prefix)) = (&network.bridge, network.subnet);
            if network.internal {
                let _ = writeln!(forward, "\t\tiifname \"{bridge}\" oifname != \"{bridge}\" drop");
                let _ = writeln!(forward, "\t\toifname \"{bridge}\" iifname != \"{bridge}\" drop");
                continue;
            }
            let _ = writeln!(forward, "\t\tiifname \"{bridge}\" oifname != \"{bridge}\" oifname \"mbr*\" drop");
            if let Some(uplink) = &self.uplink {
                let _ = writeln!(masquerade, "\t\tip saddr {ip}/{prefix} oifname \"{uplink}\" masquerade");
            }
        }
        // Numeric priorities (dstnat, srcnat, filter): nft 1.0.6 takes no
        // name for the output hook's.
        let chain = |name: &str, hook: &str, kind: &str, priority: &str, rules: &str| {
            format!("\tchain {name} {{\n\t\ttype {kind} hook {hook} priority {priority}; policy accept;\n{rules}\t}}\n")
        };
        Some(format!(
            "table ip {TABLE} {{\n{}{}{}{}}}\n",
            chain("prerouting", "prerouting", "nat", "-100", &dnat),
            chain("output", "output", "nat", "-100", &dnat),
            chain("postrouting", "postrouting", "nat", "100", &masquerade),
            chain("forward", "forward", "filter", "0", &forward),
        ))
    }
}

/// What a pass did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It was as wanted.
    None,
    /// It was made, replaced or restored.
    Set,
    /// It was deleted.
    Removed,
}

/// Keeps mesh's tables in step with a plan, in the namespace of the process.
#[derive(Debug)]
pub struct Firewall {
    /// `ip mesh`: networks and ports.
    ip: Table,
    /// `ip6 mesh`: the tunnel guard.
    ip6: Table,
}

impl Default for Firewall {
    fn default() -> Self {
        Self { ip: Table::new("ip"), ip6: Table::new("ip6") }
    }
}

impl Firewall {
    /// Makes the tables match `plan`: replaces each if the plan changed or
    /// the table is not as the last apply left it, deletes it if no rule is
    /// wanted, and turns the host's IPv4 forwarding on if a network needs
    /// it (never off: other software may rely on it). Answers what
    /// happened to `ip mesh`, then to `ip6 mesh`.
    pub async fn reconcile(&mut self, plan: &FirewallPlan) -> Result<(Change, Change), NetdevError> {
        if plan.needs_forwarding() {
            enable_forwarding()?;
        }
        let ip = self.ip.reconcile(plan.ruleset()).await?;
        let ip6 = self.ip6.reconcile(plan.tunnel.as_ref().map(TunnelGuard::ruleset)).await?;
        Ok((ip, ip6))
    }
}

/// How many packets each counting rule of the tunnel guard (`ip6 mesh`)
/// has dropped, by the rule's match (none when there is no such table).
pub async fn guard_drops() -> Result<Vec<(String, u64)>, NetdevError> {
    Ok(Table::new("ip6").list().await?.map(|listing| counters(&listing)).unwrap_or_default())
}

/// One of mesh's tables, in one family.
#[derive(Debug)]
struct Table {
    /// `ip` or `ip6`.
    family: &'static str,
    /// The last script applied, and the table's listing right after.
    applied: Option<(String, String)>,
    /// Whether the table was found absent with none wanted since: an idle
    /// host does not run `nft` on every pass.
    absent: bool,
}

impl Table {
    fn new(family: &'static str) -> Self {
        Self { family, applied: None, absent: false }
    }

    /// Makes the table hold `ruleset` (a whole `table FAMILY mesh`
    /// script), or not exist when `None`.
    async fn reconcile(&mut self, ruleset: Option<String>) -> Result<Change, NetdevError> {
        if ruleset.is_none() && self.absent {
            return Ok(Change::None);
        }
        self.absent = false;
        let family = self.family;
        let present = self.list().await?;
        let Some(ruleset) = ruleset else {
            self.applied = None;
            if present.is_some() {
                nft(&["delete", "table", family, TABLE], None).await?;
            }
            self.absent = true;
            return Ok(if present.is_some() { Change::Removed } else { Change::None });
        };
        if let (Some((script, listing)), Some(present)) = (&self.applied, &present) {
            if *script == ruleset && strip_counters(listing) == strip_counters(present) {
                return Ok(Change::None);
            }
        }
        // One transaction: the old table (made empty first, so that the
        // delete cannot fail) goes and the new one comes at once.
        let transaction = format!("table {family} {TABLE}\ndelete table {family} {TABLE}\n{ruleset}");
        nft(&["-f", "-"], Some(&transaction)).await?;
        let listing = self.list().await?.ok_or(NetdevError::Missing("the nftables table just made"))?;
        // A rule someone added between the apply and the listing would be
        // taken for ours: such a listing is not kept, and the next pass
        // sets the table again.
        self.applied = (rule_count(&listing) == rule_count(&ruleset)).then_some((ruleset, listing));
        Ok(Change::Set)
    }

    /// The table's listing, or `None` if there is no such table.
    async fn list(&self) -> Result<Option<String>, NetdevError> {
        match nft(&["list", "table", self.family, TABLE], None).await {
            Ok(listing) => Ok(Some(listing)),
            Err(NetdevError::Firewall(message)) if message.contains("No such file or directory") => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// A listing with its counters' values blanked, so that traffic does not
/// read as a hand edit.
fn strip_counters(listing: &str) -> String {
    listing.lines().map(|line| line.split(" counter packets ").next().unwrap_or(line)).collect::<Vec<_>>().join("\n")
}

/// Each counting rule of a listing, as its match and its packet count.
fn counters(listing: &str) -> Vec<(String, u64)> {
    listing
        .lines()
        .filter_map(|line| {
            let (rule, rest) = line.trim().split_once(" counter packets ")?;
            let packets = rest.split_whitespace().next()?.parse().ok()?;
            Some((rule.to_owned(), packets))
        })
        .collect()
}

/// How many rules a table's text (a script of [`FirewallPlan::ruleset`]
/// or `nft`'s listing) holds: its lines that are not a table, a chain, a
/// chain's type or a closing brace.
fn rule_count(text: &str) -> usize {
    let structure = |line: &str| {
        line.is_empty() || line == "}" || ["table ", "chain ", "type "].iter().any(|p| line.starts_with(p))
    };
    text.lines().map(str::trim).filter(|line| !structure(line)).count()
}

/// Runs `nft ARGS` with `input` on its standard input; answers its output.
async fn nft(args: &[&str], input: Option<&str>) -> Result<String, NetdevError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            NetdevError::Firewall(format!("cannot run nft ({e}): install nftables for the way in and out of networks"))
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await.map_err(|e| NetdevError::Firewall(format!("nft: {e}")))?;
    }
    let output = child.wait_with_output().await.map_err(|e| NetdevError::Firewall(format!("nft: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(NetdevError::Firewall(format!("nft {}: {}", args.join(" "), stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Turns IPv4 forwarding on in this namespace if it is off.
fn enable_forwarding() -> Result<(), NetdevError> {
    let io = |source| NetdevError::Io { what: "cannot turn IPv4 forwarding on at", path: IP_FORWARD.into(), source };
    if std::fs::read_to_string(IP_FORWARD).map_err(io)?.trim() != "1" {
        std::fs::write(IP_FORWARD, "1").map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_network_and_no_port_wants_no_table() {
        let plan = FirewallPlan { uplink: Some("eth0".into()), ..FirewallPlan::default() };
        assert_eq!(plan.ruleset(), None);
        assert!(!plan.needs_forwarding());
    }

    #[test]
    fn networks_are_masqueraded_isolated_or_closed_and_ports_forwarded() {
        let network = |bridge: &str, third, internal| RoutedNetwork {
            bridge: bridge.into(),
            subnet: (Ipv4Addr::new(10, 0, third, 0), 24),
            internal,
        };
        let plan = FirewallPlan {
            networks: vec![network("mbr1", 1, false), network("mbr2", 2, true)],
            ports: vec![PortMapping {
                protocol: Protocol::Udp,
                host_port: 5353,
                address: Ipv4Addr::new(10, 0, 1, 2),
                port: 53,
            }],
            uplink: Some("eth1".into()),
            tunnel: None,
        };
        let ruleset = plan.ruleset().expect("rules");
        let lines: Vec<&str> = ruleset.lines().map(str::trim).collect();
        for wanted in [
            "ip saddr 10.0.1.0/24 oifname \"eth1\" masquerade",
            "iifname \"mbr1\" oifname != \"mbr1\" oifname \"mbr*\" drop",
            "iifname \"mbr2\" oifname != \"mbr2\" drop",
            "oifname \"mbr2\" iifname != \"mbr2\" drop",
        ] {
            assert_eq!(lines.iter().filter(|l| **l == wanted).count(), 1, "{wanted} in\n{ruleset}");
        }
        let dnat = "ip daddr != 127.0.0.0/8 fib daddr type local udp dport 5353 dnat to 10.0.1.2:53";
        assert_eq!(lines.iter().filter(|l| **l == dnat).count(), 2, "in prerouting and output:\n{ruleset}");
        assert!(!ruleset.contains("10.0.2.0/24"), "an internal network is never masqueraded");
        assert!(plan.needs_forwarding());
        let closed = FirewallPlan { networks: vec![network("mbr2", 2, true)], ..plan };
        assert!(!closed.needs_forwarding());
        assert!(!closed.ruleset().expect("rules").contains("masquerade"));
    }

    #[test]
    fn rules_are_counted_alike_in_a_script_and_in_nfts_listing() {
        let plan = FirewallPlan {
            networks: vec![RoutedNetwork {
                bridge: "mbr1".into(),
                subnet: (Ipv4Addr::new(10, 0, 1, 0), 24),
                internal: false,
            }],
            ports: Vec::new(),
            uplink: Some("eth1".into()),
            tunnel: None,
        };
        // As nft 1.0.6 lists that table.
        let listing = "table ip mesh {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n\n\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t}\n\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.0.1.0/24 oifname \"eth1\" masquerade\n\t}\n\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"mbr1\" oifname != \"mbr1\" oifname \"mbr*\" drop\n\t}\n}\n";
        assert_eq!(rule_count(&plan.ruleset().expect("rules")), 2);
        assert_eq!(rule_count(listing), 2);
    }

    #[test]
    fn the_guard_drops_tunnel_sources_and_vxlan_to_tunnel_addresses_not_from_wireguard() {
        let guard = TunnelGuard {
            network: ("fd6d:6573:6800:1::".parse().expect("prefix"), 64),
            interface: "mwg0".into(),
            vxlan_port: 4789,
        };
        let ruleset = guard.ruleset();
        let lines: Vec<&str> = ruleset.lines().map(str::trim).collect();
        assert!(ruleset.starts_with("table ip6 mesh {"), "{ruleset}");
        let accept = lines.iter().position(|l| *l == "iifname { \"lo\", \"mwg0\" } accept");
        let drop = lines.iter().position(|l| *l == "ip6 saddr fd6d:6573:6800:1::/64 counter drop");
        assert!(matches!((accept, drop), (Some(a), Some(d)) if a < d), "{ruleset}");
        assert!(lines.contains(&"ip6 daddr fd6d:6573:6800:1::/64 udp dport 4789 counter drop"), "{ruleset}");
        assert_eq!(rule_count(&ruleset), 3);
    }

    #[test]
    fn counters_are_read_and_blanked_from_a_listing() {
        let listing = "table ip6 mesh {\n\tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tiifname { \"lo\", \"mwg0\" } accept\n\t\tip6 saddr fd6d:6573:6800:1::/64 counter packets 3 bytes 300 drop\n\t}\n}\n";
        assert_eq!(counters(listing), vec![("ip6 saddr fd6d:6573:6800:1::/64".to_owned(), 3)]);
        let zero = listing.replace("packets 3 bytes 300", "packets 0 bytes 0");
        assert_eq!(strip_counters(listing), strip_counters(&zero));
    }
}
