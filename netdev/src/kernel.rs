//! One idempotent verb per function over rtnetlink: read the links, FDB
//! and neighbour entries mesh owns; create, adopt or remove bridges, VXLAN
//! devices, veth pairs and the WireGuard interface; set and remove entries. "Already exists" and
//! "not found" are success where that is the intent.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAttribute, RouteHeader};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, LinkWireguard, RouteMessageBuilder};

use crate::error::NetdevError;

/// A link as mesh cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its kind (`bridge`, `vxlan`, `veth`...), if it has one.
    pub kind: Option<String>,
    /// For a VXLAN device: its VNI, local address (`local` or `local6`)
    /// and UDP port.
    pub vxlan: Option<(u32, Option<IpAddr>, Option<u16>)>,
    /// The index of the bridge it is enslaved to.
    pub controller: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
}

/// How to build a VXLAN device.
#[derive(Debug, Clone, Copy)]
pub struct VxlanSpec {
    /// Its VNI.
    pub vni: u32,
    /// The local VTEP address, IPv4 (`local`) or IPv6 (`local6`, with
    /// zero UDP checksums sent and accepted: `udp6zerocsumtx`,
    /// `udp6zerocsumrx`). Its FDB entries point at VTEPs of this family.
    pub local: IpAddr,
    /// The underlay interface (the one holding `local`), the device's
    /// `dev`; `None` for an encrypted network's device, whose `local` is
    /// the tunnel address on `mwg0` (the kernel deletes a VXLAN device
    /// whose `dev` goes, and the userspace `mwg0` is a TUN that may be
    /// replaced).
    pub underlay: Option<u32>,
    /// UDP port.
    pub port: u16,
    /// MTU.
    pub mtu: u32,
    /// The bridge to enslave it to.
    pub bridge: u32,
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetdevError {
    move |source| NetdevError::Netlink { what, source }
}

/// Whether a netlink error is the kernel's "not found" (ENOENT, ENODEV).
fn is_missing(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if matches!(e.raw_code().abs(), 2 | 19))
}

/// Every link of the namespace the handle belongs to, by name.
pub async fn links(handle: &Handle) -> Result<BTreeMap<String, Link>, NetdevError> {
    let mut out = BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(message) = stream.try_next().await.map_err(netlink("link dump"))? {
        let link = link_of(&message);
        out.insert(link.name.clone(), link);
    }
    Ok(out)
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        kind: None,
        vxlan: None,
        controller: None,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(index) => link.controller = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                        LinkInfo::Data(InfoData::Vxlan(data)) => link.vxlan = Some(vxlan_of(data)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn vxlan_of(data: &[InfoVxlan]) -> (u32, Option<IpAddr>, Option<u16>) {
    let mut out = (0, None, None);
    for item in data {
        match item {
            InfoVxlan::Id(vni) => out.0 = *vni,
            InfoVxlan::Local(ip) => out.1 = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => out.1 = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(port) => out.2 = Some(*port),
            _ => {}
        }
    }
    out
}

/// The interface that holds `ip` (either family), with its MTU.
pub async fn interface_with(handle: &Handle, ip: IpAddr) -> Result<Option<(u32, u32)>, NetdevError> {
    let mut addresses = handle.address().get().execute();
    let mut index = None;
    while let Some(message) = addresses.try_next().await.map_err(netlink("address dump"))? {
        if message.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(a) if *a == ip)) {
            index = Some(message.header.index);
        }
    }
    let Some(index) = index else { return Ok(None) };
    let mtu = links(handle).await?.into_values().find(|l| l.index == index).map_or(1500, |l| l.mtu);
    Ok(Some((index, mtu)))
}

/// The interface of the IPv4 default route (the last one dumped, if the
/// main table has several), by index.
pub async fn default_route_interface(handle: &Handle) -> Result<Option<u32>, NetdevError> {
    let mut routes = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    let mut oif = None;
    while let Some(route) = routes.try_next().await.map_err(netlink("route dump"))? {
        if route.header.destination_prefix_length == 0 && route.header.table == RouteHeader::RT_TABLE_MAIN {
            oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
        }
    }
    Ok(oif)
}

/// The addresses of either family (with prefix lengths) of the interface `index`.
async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, NetdevError> {
    let mut dump = handle.address().get().set_link_index_filter(index).execute();
    let mut found = Vec::new();
    while let Some(message) = dump.try_next().await.map_err(netlink("address dump"))? {
        for attribute in &message.attributes {
            if let AddressAttribute::Address(ip) = attribute {
                found.push((*ip, message.header.prefix_len));
            }
        }
    }
    Ok(found)
}

/// The IPv4 addresses (with prefix lengths) of the interface `index`.
pub async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetdevError> {
    let all = addresses(handle, index).await?;
    Ok(all
        .into_iter()
        .filter_map(|(ip, prefix)| if let IpAddr::V4(ip) = ip { Some((ip, prefix)) } else { None })
        .collect())
}

/// Adds `ip/prefix` to the interface `index`.
pub async fn add_address(handle: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetdevError> {
    handle.address().add(index, IpAddr::V4(ip), prefix).execute().await.map_err(netlink("address add"))
}

/// Gives the interface `index` the IPv6 address `ip/prefix` without
/// duplicate address detection (`nodad`: a tunnel address is derived from
/// a node id, never shared, and must work at once); an address it has
/// already is set again, not an error.
pub async fn ensure_address6(handle: &Handle, index: u32, ip: Ipv6Addr, prefix: u8) -> Result<(), NetdevError> {
    let mut request = handle.address().add(index, IpAddr::V6(ip), prefix).replace();
    request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    request.execute().await.map_err(netlink("address add"))
}

/// Creates the bridge `name`, up, with `mtu`.
pub async fn add_bridge(handle: &Handle, name: &str, mtu: u32) -> Result<(), NetdevError> {
    let message = LinkBridge::new(name).mtu(mtu).up().build();
    handle.link().add(message).execute().await.map_err(netlink("bridge add"))
}

/// Creates a VXLAN device: learning off, ARP proxy on, enslaved and up;
/// with an IPv6 `local`, zero UDP checksums sent and accepted.
pub async fn add_vxlan(handle: &Handle, name: &str, spec: VxlanSpec) -> Result<(), NetdevError> {
    let device = LinkVxlan::new(name, spec.vni);
    let device = match spec.underlay {
        Some(index) => device.dev(index),
        None => device,
    };
    let device = match spec.local {
        IpAddr::V4(local) => device.local(local),
        IpAddr::V6(local) => device.local6(local).udp_zero_csum6_tx(true).udp_zero_csum6_rx(true),
    };
    let message = device.port(spec.port).learning(false).proxy(true).mtu(spec.mtu).controller(spec.bridge).up().build();
    handle.link().add(message).execute().await.map_err(netlink("vxlan add"))
}

/// Creates the WireGuard interface `name` (down, no address): a kernel
/// without WireGuard is [`NetdevError::NoKernelWireguard`].
pub async fn add_wireguard(handle: &Handle, name: &str) -> Result<(), NetdevError> {
    match handle.link().add(LinkWireguard::new(name).build()).execute().await {
        // EOPNOTSUPP: the kernel's answer to a kind it has no driver for.
        Err(rtnetlink::Error::NetlinkError(refusal)) if refusal.raw_code().abs() == 95 => {
            Err(NetdevError::NoKernelWireguard(format!("a link of kind wireguard: {refusal}")))
        }
        result => result.map_err(netlink("wireguard add")),
    }
}

/// Sets the MTU of the link `index` and brings it up.
pub async fn set_mtu_up(handle: &Handle, index: u32, mtu: u32) -> Result<(), NetdevError> {
    let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
    handle.link().set(message).execute().await.map_err(netlink("link mtu and up"))
}

/// The IPv6 addresses (with prefix lengths) of the interface `index`.
pub async fn addresses6_of(handle: &Handle, index: u32) -> Result<Vec<(Ipv6Addr, u8)>, NetdevError> {
    let all = addresses(handle, index).await?;
    Ok(all
        .into_iter()
        .filter_map(|(ip, prefix)| if let IpAddr::V6(ip) = ip { Some((ip, prefix)) } else { None })
        .collect())
}

/// What the link `index` dropped on receipt: its `rx_errors` and
/// `rx_dropped` counters (`None` if there is no such link).
pub async fn receive_drops(handle: &Handle, index: u32) -> Result<Option<(u64, u64)>, NetdevError> {
    let mut stream = handle.link().get().match_index(index).execute();
    let mut drops = None;
    loop {
        match stream.try_next().await {
            Ok(Some(message)) => {
                drops = drops.or(message.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Stats64(stats) => Some((stats.rx_errors, stats.rx_dropped)),
                    _ => None,
                }));
            }
            Ok(None) => return Ok(drops),
            Err(error) if is_missing(&error) => return Ok(None),
            Err(error) => return Err(NetdevError::Netlink { what: "link get", source: error }),
        }
    }
}

/// Creates the veth pair `host`/`peer`: `host` enslaved to `bridge`, up.
pub async fn add_veth(handle: &Handle, host: &str, peer: &str, bridge: u32, mtu: u32) -> Result<(), NetdevError> {
    handle.link().add(LinkVeth::new(host, peer).mtu(mtu).build()).execute().await.map_err(netlink("veth add"))?;
    let message = LinkUnspec::new_with_name(host).controller(bridge).up().build();
    handle.link().set(message).execute().await.map_err(netlink("veth enslave"))
}

/// Creates a veth pair whose end `host` is up on the bridge `bridge` and
/// whose end `peer` (MAC `mac`, both ends MTU `mtu`, down) waits to be moved into a sandbox by
/// someone else; removes the pair if the second step fails.
pub async fn add_handoff_veth(
    handle: &Handle,
    host: &str,
    peer: &str,
    mac: [u8; 6],
    bridge: u32,
    mtu: u32,
) -> Result<(), NetdevError> {
    add_veth(handle, host, peer, bridge, mtu).await?;
    // The peer end takes no MTU from the pair's creation: it would keep
    // 1500 and send frames the overlay cannot carry.
    let message = LinkUnspec::new_with_name(peer).address(mac.to_vec()).mtu(mtu).build();
    if let Err(error) = handle.link().set(message).execute().await {
        if let Some(link) = links(handle).await?.get(host) {
            remove_link(handle, link.index).await?;
        }
        return Err(NetdevError::Netlink { what: "veth address", source: error });
    }
    Ok(())
}

/// Moves the link `name` into the namespace at `netns`.
pub async fn move_to_netns(handle: &Handle, name: &str, netns: &Path) -> Result<(), NetdevError> {
    let file = std::fs::File::open(netns).map_err(|source| NetdevError::Io {
        what: "cannot open",
        path: netns.to_owned(),
        source,
    })?;
    let message = LinkUnspec::new_with_name(name).setns_by_fd(file.as_raw_fd()).build();
    handle.link().set(message).execute().await.map_err(netlink("veth move"))
}

/// Removes the link with index `index`; a link already gone is fine.
pub async fn remove_link(handle: &Handle, index: u32) -> Result<(), NetdevError> {
    match handle.link().del(index).execute().await {
        Err(error) if !is_missing(&error) => Err(NetdevError::Netlink { what: "link delete", source: error }),
        _ => Ok(()),
    }
}

/// Brings the loopback interface up.
pub async fn loopback_up(handle: &Handle) -> Result<(), NetdevError> {
    let lo = links(handle).await?.get("lo").map(|l| l.index).ok_or(NetdevError::Missing("lo"))?;
    handle.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await.map_err(netlink("loopback up"))
}

/// Inside a sandbox namespace: renames `peer` to `name` (`eth0`...) with
/// `mac` and `mtu`, brings it up, gives it `address`, and a default route
/// through `gateway` if there is one.
pub async fn configure_sandbox_end(
    handle: &Handle,
    peer: &str,
    name: &str,
    mac: [u8; 6],
    mtu: u32,
    address: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetdevError> {
    let index =
        links(handle).await?.get(peer).map(|l| l.index).ok_or(NetdevError::Missing("the veth in the sandbox"))?;
    let message = LinkUnspec::new_with_index(index).name(name.to_owned()).address(mac.to_vec()).mtu(mtu).up().build();
    handle.link().set(message).execute().await.map_err(netlink("sandbox interface"))?;
    if let Some((ip, prefix)) = address {
        handle.address().add(index, IpAddr::V4(ip), prefix).execute().await.map_err(netlink("sandbox address"))?;
    }
    if let Some(gateway) = gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index).gateway(gateway).build();
        handle.route().add(route).execute().await.map_err(netlink("sandbox default route"))?;
    }
    Ok(())
}

/// The permanent FDB entries (MAC → VTEP, either family) on the device `index`.
pub async fn fdb(handle: &Handle, index: u32) -> Result<BTreeMap<[u8; 6], IpAddr>, NetdevError> {
    let entries = permanent_entries(handle, AddressFamily::Bridge, index, "fdb dump").await?;
    Ok(entries.into_iter().collect())
}

/// The permanent IPv4 neighbour entries (IP → MAC) on the device `index`.
pub async fn neighbours(handle: &Handle, index: u32) -> Result<BTreeMap<Ipv4Addr, [u8; 6]>, NetdevError> {
    let entries = permanent_entries(handle, AddressFamily::Inet, index, "neighbour dump").await?;
    Ok(entries
        .into_iter()
        .filter_map(|(mac, ip)| match ip {
            IpAddr::V4(ip) => Some((ip, mac)),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// The (MAC, address) pairs of the permanent entries of `family` on the
/// device `index`.
async fn permanent_entries(
    handle: &Handle,
    family: AddressFamily,
    index: u32,
    what: &'static str,
) -> Result<Vec<([u8; 6], IpAddr)>, NetdevError> {
    let mut out = Vec::new();
    let mut stream = handle.neighbours().get().set_address_family(family).execute();
    while let Some(message) = stream.try_next().await.map_err(netlink(what))? {
        if message.header.ifindex != index || message.header.state != NeighbourState::Permanent {
            continue;
        }
        if let (Some(mac), Some(ip)) = (mac_of(&message), destination_of(&message)) {
            out.push((mac, ip));
        }
    }
    Ok(out)
}

/// Points `mac` at `vtep` on the VXLAN device `index` (create or replace);
/// `vtep` must be of the family of the device's local address.
pub async fn set_fdb(handle: &Handle, index: u32, mac: [u8; 6], vtep: IpAddr) -> Result<(), NetdevError> {
    let mut request = handle.neighbours().add_bridge(index, &mac).destination(vtep).replace();
    request.message_mut().header.flags = NeighbourFlags::Own;
    request.execute().await.map_err(netlink("fdb set"))
}

/// Removes the FDB entry for `mac` on the device `index` (gone is fine).
pub async fn remove_fdb(handle: &Handle, index: u32, mac: [u8; 6], vtep: IpAddr) -> Result<(), NetdevError> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.flags = NeighbourFlags::Own;
    message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::from(vtep)));
    match handle.neighbours().del(message).execute().await {
        Err(error) if !is_missing(&error) => Err(NetdevError::Netlink { what: "fdb delete", source: error }),
        _ => Ok(()),
    }
}

/// Maps `ip` to `mac` on the device `index` (create or replace).
pub async fn set_neighbour(handle: &Handle, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetdevError> {
    let request = handle.neighbours().add(index, IpAddr::V4(ip)).link_layer_address(&mac).replace();
    request.execute().await.map_err(netlink("neighbour set"))
}

/// Removes the neighbour entry for `ip` on the device `index` (gone is fine).
pub async fn remove_neighbour(handle: &Handle, index: u32, ip: Ipv4Addr) -> Result<(), NetdevError> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = index;
    message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match handle.neighbours().del(message).execute().await {
        Err(error) if !is_missing(&error) => Err(NetdevError::Netlink { what: "neighbour delete", source: error }),
        _ => Ok(()),
    }
}

fn mac_of(message: &NeighbourMessage) -> Option<[u8; 6]> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

fn destination_of(message: &NeighbourMessage) -> Option<IpAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        // In an FDB (AF_BRIDGE) message the VTEP is not parsed as an
        // address: its family shows only in its length.
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => vtep_of(bytes),
        _ => None,
    })
}

/// The VTEP of an AF_BRIDGE `NDA_DST`: 4 bytes IPv4, 16 bytes IPv6.
fn vtep_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn an_fdb_destination_is_read_by_its_length() {
        let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6d, 2);
        assert_eq!(vtep_of(&[198, 18, 0, 2]), Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))));
        assert_eq!(vtep_of(&v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(vtep_of(&[1, 2, 3]), None, "neither family");
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Other(v6.octets().to_vec())));
        assert_eq!(destination_of(&message), Some(IpAddr::V6(v6)));
    }
}
