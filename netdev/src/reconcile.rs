//! The reconciler: makes the kernel match a desired state by diffing it
//! against what the kernel holds, never by flushing. Devices mesh owns are
//! recognised by name (derived from the VNI, or from the sandbox for
//! veths), so what a previous run left is adopted, what someone deleted is
//! restored, and what is no longer wanted is removed, entry by entry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use rtnetlink::{Handle, LinkUnspec};

use crate::error::NetdevError;
use crate::kernel::{self, Link, VxlanSpec};
use crate::netns;
use crate::wireguard;

/// Most netlink requests a pass keeps in flight.
const IN_FLIGHT: usize = 256;

/// VXLAN encapsulation overhead over IPv4 (IPv4 20, UDP 8, VXLAN 8 and
/// the inner Ethernet header 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// VXLAN encapsulation overhead over IPv6 (IPv6 40, UDP 8, VXLAN 8 and
/// the inner Ethernet header 14).
pub const VXLAN6_OVERHEAD: u32 = 70;

/// This host's end of the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    /// The advertise address: the local VTEP, IPv4 or IPv6. Every remote
    /// VTEP of a plan must be of its family ([`NetdevError::MixedFamilies`]).
    pub local: IpAddr,
    /// VXLAN's UDP port.
    pub port: u16,
    /// This host's tunnel address on `mwg0`, if it has an encrypted path
    /// (the local VTEP of its encrypted networks).
    pub tunnel: Option<Ipv6Addr>,
}

impl Underlay {
    /// The local VTEP and `dev` of a network's VXLAN device on an
    /// underlay interface of `index`: the advertise address over that
    /// interface, or, for an encrypted network, the tunnel address with
    /// no `dev`.
    fn vtep_of(&self, encrypted: bool, index: u32) -> Result<(IpAddr, Option<u32>), NetdevError> {
        match (encrypted, self.tunnel) {
            (true, Some(tunnel)) => Ok((IpAddr::V6(tunnel), None)),
            (true, None) => Err(NetdevError::NoEncryptedPath),
            (false, _) => Ok((self.local, Some(index))),
        }
    }
}

/// What one network must look like on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Its VNI (its devices are named after it).
    pub vni: u32,
    /// Whether it spans hosts through a VXLAN device (an overlay network)
    /// or stays on this host's bridge (a bridge network, with no remotes).
    pub vxlan: bool,
    /// Whether its VXLAN runs inside WireGuard: between tunnel addresses
    /// ([`Underlay::tunnel`] here, the remotes' VTEPs there).
    pub encrypted: bool,
    /// Its MTU; when `None`, [`default_mtu`].
    pub mtu: Option<u32>,
    /// Addresses the host holds on the network's bridge (the same on every
    /// host: each answers for them locally, the VXLAN device's ARP proxy
    /// never floods a request for them).
    pub bridge_addresses: Vec<(Ipv4Addr, u8)>,
    /// Its sandboxes on this host.
    pub locals: Vec<LocalPlan>,
    /// Its interfaces on this host that another manager (a container
    /// engine) moves into its sandboxes.
    pub handoffs: Vec<Handoff>,
    /// Its endpoints on other hosts.
    pub remotes: Vec<Remote>,
}

/// A sandbox of this host on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPlan {
    /// The sandbox's namespace.
    pub netns: PathBuf,
    /// The name of its interface on this network inside the sandbox
    /// (`eth0`, `eth1`... in the order the sandbox joined its networks).
    pub interface: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its address and prefix length.
    pub address: Option<(Ipv4Addr, u8)>,
    /// Its default gateway.
    pub gateway: Option<Ipv4Addr>,
}

/// An interface of this host handed to another manager: mesh makes the
/// veth pair and attaches one end to the network's bridge; the manager
/// (Docker, through the plugin's `Join`) moves the other end into its
/// sandbox and configures it. Once moved, the pair is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// Who the interface is for (Docker's endpoint id): the veth names
    /// derive from it.
    pub id: String,
    /// The MAC of the end handed over.
    pub mac: [u8; 6],
}

/// An endpoint on another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Remote {
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its host's VTEP address, of the family of the plan's local VTEP
    /// (its tunnel address on an encrypted network).
    pub vtep: IpAddr,
}

/// What a pass changed, and what it could not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Devices and entries created or corrected.
    pub set: usize,
    /// Devices and entries removed.
    pub removed: usize,
    /// What failed (the rest of the pass went on).
    pub errors: Vec<String>,
    /// The sandbox interfaces wired after the pass: namespace and VNI.
    pub wired: Vec<(PathBuf, u32)>,
    /// The hand-offs whose pair exists after the pass, by id.
    pub handed: Vec<String>,
    /// The MTU of the underlay interface (the one holding the advertise
    /// address).
    pub underlay_mtu: u32,
}

/// The MTU a network's interfaces get when none is given, over an
/// underlay interface of `underlay_mtu` holding `local`, and the sum that
/// makes it (as `mesh network inspect` shows it).
pub fn default_mtu(underlay_mtu: u32, local: IpAddr, vxlan: bool, encrypted: bool) -> (u32, String) {
    let vxlan_overhead = if local.is_ipv4() { VXLAN_OVERHEAD } else { VXLAN6_OVERHEAD };
    let wireguard = wireguard::overhead(local);
    let (overhead, sum) = match (vxlan, encrypted) {
        (false, _) => (0, format!("underlay {underlay_mtu}")),
        (true, false) => (vxlan_overhead, format!("underlay {underlay_mtu} - VXLAN {vxlan_overhead}")),
        (true, true) => (
            wireguard + VXLAN6_OVERHEAD,
            format!("underlay {underlay_mtu} - WireGuard {wireguard} - VXLAN/IPv6 {VXLAN6_OVERHEAD}"),
        ),
    };
    (underlay_mtu.saturating_sub(overhead), sum)
}

/// The bridge of network `vni`.
pub fn bridge_name(vni: u32) -> String {
    format!("mbr{vni}")
}

/// The VXLAN device of network `vni`.
pub fn vxlan_name(vni: u32) -> String {
    format!("mvx{vni}")
}

/// The host and sandbox ends of the veth pair of sandbox `local` on
/// network `vni`. The name covers the sandbox's MAC and address, so a
/// sandbox whose address changes (after a conflict) gets a new pair.
pub fn veth_names(local: &LocalPlan, vni: u32) -> (String, String) {
    let address = local.address.map(|(ip, prefix)| (ip.octets(), prefix));
    let identity = wiring_bytes(&local.mac, address, vni);
    pair_names(local.netns.as_os_str().as_encoded_bytes(), &identity)
}

/// The host end and the end handed over of hand-off `handoff` on network
/// `vni`.
pub fn handoff_names(handoff: &Handoff, vni: u32) -> (String, String) {
    pair_names(handoff.id.as_bytes(), &wiring_bytes(&handoff.mac, None, vni))
}

fn pair_names(whose: &[u8], identity: &[u8]) -> (String, String) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in whose.iter().chain(identity) {
        hash = (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193);
    }
    (format!("mve{hash:08x}"), format!("mvp{hash:08x}"))
}

/// The bytes that tell one wiring of a sandbox from another.
fn wiring_bytes(mac: &[u8; 6], address: Option<([u8; 4], u8)>, vni: u32) -> Vec<u8> {
    let mut bytes = mac.to_vec();
    if let Some((ip, prefix)) = address {
        bytes.extend(ip);
        bytes.push(prefix);
    }
    bytes.extend(vni.to_le_bytes());
    bytes
}

/// Entry changes on one VXLAN device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntryDiff {
    /// FDB entries to create or repoint.
    pub set_fdb: Vec<([u8; 6], IpAddr)>,
    /// FDB entries to remove.
    pub remove_fdb: Vec<([u8; 6], IpAddr)>,
    /// Neighbour entries to create or correct.
    pub set_neighbours: Vec<(Ipv4Addr, [u8; 6])>,
    /// Neighbour entries to remove.
    pub remove_neighbours: Vec<Ipv4Addr>,
}

/// What must change for the device holding `fdb` and `neighbours` to hold
/// exactly `remotes`.
pub fn diff_entries(
    remotes: &[Remote],
    fdb: &BTreeMap<[u8; 6], IpAddr>,
    neighbours: &BTreeMap<Ipv4Addr, [u8; 6]>,
) -> EntryDiff {
    let want_fdb: BTreeMap<[u8; 6], IpAddr> = remotes.iter().map(|r| (r.mac, r.vtep)).collect();
    let want_neighbours: BTreeMap<Ipv4Addr, [u8; 6]> = remotes.iter().map(|r| (r.ip, r.mac)).collect();
    EntryDiff {
        set_fdb: want_fdb.iter().filter(|(mac, vtep)| fdb.get(*mac) != Some(vtep)).map(|(m, v)| (*m, *v)).collect(),
        remove_fdb: fdb.iter().filter(|(mac, _)| !want_fdb.contains_key(*mac)).map(|(m, v)| (*m, *v)).collect(),
        set_neighbours: want_neighbours
            .iter()
            .filter(|(ip, mac)| neighbours.get(*ip) != Some(mac))
            .map(|(i, m)| (*i, *m))
            .collect(),
        remove_neighbours: neighbours.keys().filter(|ip| !want_neighbours.contains_key(*ip)).copied().collect(),
    }
}

/// Refuses remotes whose VTEP is not of the family of `local`: a VXLAN
/// device sends to one family only (the kernel would refuse their FDB
/// entries one by one, with EAFNOSUPPORT).
pub fn check_families(local: IpAddr, remotes: &[Remote]) -> Result<(), NetdevError> {
    match remotes.iter().find(|r| r.vtep.is_ipv4() != local.is_ipv4()) {
        Some(remote) => Err(NetdevError::MixedFamilies { local, vtep: remote.vtep }),
        None => Ok(()),
    }
}

pub use crate::wireguard::Mode;

/// A netlink connection to the kernel of the namespace it was opened in.
pub struct Reconciler {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Reconciler {
    /// Opens the connection (inside a tokio runtime).
    pub fn open() -> Result<Self, NetdevError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        Ok(Self { handle, connection: tokio::spawn(connection) })
    }

    /// Makes the kernel match `plans`. With `mode` [`Mode::AddOnly`]
    /// nothing is removed: for an agent that just started and does not
    /// yet hold its peers' records, so its restart loses no packet.
    pub async fn reconcile(
        &self,
        underlay: Underlay,
        plans: &[NetworkPlan],
        mode: Mode,
    ) -> Result<Report, NetdevError> {
        reconcile(&self.handle, underlay, plans, mode).await
    }
}

impl Reconciler {
    /// The name of the interface of the IPv4 default route, if there is one.
    pub async fn uplink(&self) -> Result<Option<String>, NetdevError> {
        let Some(index) = kernel::default_route_interface(&self.handle).await? else { return Ok(None) };
        Ok(kernel::links(&self.handle).await?.into_values().find(|l| l.index == index).map(|l| l.name))
    }

    /// The MTU of the interface holding the advertise address `local`.
    pub async fn underlay_mtu(&self, local: IpAddr) -> Result<u32, NetdevError> {
        let (_, mtu) = kernel::interface_with(&self.handle, local).await?.ok_or(NetdevError::NoUnderlay(local))?;
        Ok(mtu)
    }

    /// Checks, before anything is built, that network `vni` (`encrypted`
    /// or not) can be built here: an interface holds the advertise
    /// address, the host has an encrypted path if it must, and no device
    /// in the way has other settings.
    pub async fn preflight(&self, underlay: Underlay, vni: u32, encrypted: bool) -> Result<(), NetdevError> {
        let (index, _) = kernel::interface_with(&self.handle, underlay.local)
            .await?
            .ok_or(NetdevError::NoUnderlay(underlay.local))?;
        let (local, dev) = underlay.vtep_of(encrypted, index)?;
        let wanted = VxlanSpec { vni, local, underlay: dev, port: underlay.port, mtu: 0, bridge: 0 };
        check_in_the_way(&kernel::links(&self.handle).await?, &wanted)
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Makes the kernel (the namespace of `handle`) match `plans`.
async fn reconcile(
    handle: &Handle,
    underlay: Underlay,
    plans: &[NetworkPlan],
    mode: Mode,
) -> Result<Report, NetdevError> {
    let (underlay_index, underlay_mtu) =
        kernel::interface_with(handle, underlay.local).await?.ok_or(NetdevError::NoUnderlay(underlay.local))?;
    let mut report = Report { underlay_mtu, ..Report::default() };
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for plan in plans {
        wanted.insert(bridge_name(plan.vni));
        if plan.vxlan {
            wanted.insert(vxlan_name(plan.vni));
        }
        wanted.extend(plan.locals.iter().map(|local| veth_names(local, plan.vni).0));
        wanted.extend(plan.handoffs.iter().map(|handoff| handoff_names(handoff, plan.vni).0));
    }
    // Removals first: a sandbox whose address changed gets a new veth, and
    // its old one (holding `eth0` in the sandbox) must go before.
    if mode == Mode::Full {
        remove_unwanted(handle, underlay, &wanted, &mut report).await?;
    }
    for plan in plans {
        let built = underlay.vtep_of(plan.encrypted, underlay_index).map(|(local, dev)| {
            let mtu = plan.mtu.unwrap_or(default_mtu(underlay_mtu, underlay.local, plan.vxlan, plan.encrypted).0);
            let spec =
                move |bridge| VxlanSpec { vni: plan.vni, local, underlay: dev, port: underlay.port, mtu, bridge };
            (mtu, spec)
        });
        let result = match built {
            Ok((mtu, spec)) => reconcile_network(handle, plan, mtu, spec, mode, &mut report).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            report.errors.push(format!("network vni {}: {error}", plan.vni));
        }
    }
    Ok(report)
}

async fn reconcile_network(
    handle: &Handle,
    plan: &NetworkPlan,
    mtu: u32,
    spec: impl Fn(u32) -> VxlanSpec,
    mode: Mode,
    report: &mut Report,
) -> Result<(), NetdevError> {
    let (bridge, vxlan) = (bridge_name(plan.vni), vxlan_name(plan.vni));
    if plan.vxlan {
        check_families(spec(0).local, &plan.remotes)?;
    }
    let mut links = kernel::links(handle).await?;
    check_in_the_way(&links, &spec(0))?;
    let bridge_index = match links.get(&bridge) {
        Some(link) => link.index,
        None => {
            kernel::add_bridge(handle, &bridge, mtu).await?;
            report.set += 1;
            links = kernel::links(handle).await?;
            links.get(&bridge).map(|l| l.index).ok_or(NetdevError::Missing("the new bridge"))?
        }
    };
    let held = kernel::addresses_of(handle, bridge_index).await?;
    for (ip, prefix) in plan.bridge_addresses.iter().filter(|a| !held.contains(a)) {
        kernel::add_address(handle, bridge_index, *ip, *prefix).await?;
        report.set += 1;
    }
    let vxlan_index = if plan.vxlan {
        Some(ensure_vxlan(handle, &vxlan, spec(bridge_index), &mut links, report).await?)
    } else {
        None
    };
    for local in &plan.locals {
        let (host, _) = veth_names(local, plan.vni);
        if links.contains_key(&host) {
            report.wired.push((local.netns.clone(), plan.vni));
            continue;
        }
        match attach(handle, local, plan.vni, bridge_index, mtu).await {
            Ok(()) => {
                report.set += 1;
                report.wired.push((local.netns.clone(), plan.vni));
            }
            Err(error) => report.errors.push(format!("sandbox {}: {error}", local.netns.display())),
        }
    }
    for handoff in &plan.handoffs {
        let (host, peer) = handoff_names(handoff, plan.vni);
        if !links.contains_key(&host) {
            if let Err(error) = kernel::add_handoff_veth(handle, &host, &peer, handoff.mac, bridge_index, mtu).await {
                report.errors.push(format!("interface for {}: {error}", handoff.id));
                continue;
            }
            report.set += 1;
        }
        report.handed.push(handoff.id.clone());
    }
    let Some(vxlan_index) = vxlan_index else { return Ok(()) };
    let mut diff = diff_entries(
        &plan.remotes,
        &kernel::fdb(handle, vxlan_index).await?,
        &kernel::neighbours(handle, vxlan_index).await?,
    );
    if mode == Mode::AddOnly {
        diff.remove_fdb.clear();
        diff.remove_neighbours.clear();
    }
    apply_entries(handle, vxlan_index, diff, report).await
}

/// Makes the VXLAN device `name` as `wanted` if it is missing, enslaved to
/// its bridge and up; answers its index.
async fn ensure_vxlan(
    handle: &Handle,
    name: &str,
    wanted: VxlanSpec,
    links: &mut BTreeMap<String, Link>,
    report: &mut Report,
) -> Result<u32, NetdevError> {
    if !links.contains_key(name) {
        kernel::add_vxlan(handle, name, wanted).await?;
        report.set += 1;
        *links = kernel::links(handle).await?;
    }
    let link = links.get(name).ok_or(NetdevError::Missing("the new VXLAN device"))?;
    if link.controller != Some(wanted.bridge) {
        let message = LinkUnspec::new_with_index(link.index).controller(wanted.bridge).up().build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|source| NetdevError::Netlink { what: "vxlan enslave", source })?;
        report.set += 1;
    }
    Ok(link.index)
}

/// Refuses a bridge of the network's name that is not a bridge, or a
/// VXLAN device of its name with other settings than `wanted`; devices
/// that are absent or match are fine (they are made or adopted).
fn check_in_the_way(links: &BTreeMap<String, Link>, wanted: &VxlanSpec) -> Result<(), NetdevError> {
    if let Some(bridge) = links.get(&bridge_name(wanted.vni)).filter(|l| l.kind.as_deref() != Some("bridge")) {
        return Err(NetdevError::Conflict(format!("{} exists and is not a bridge; remove it", bridge.name)));
    }
    links.get(&vxlan_name(wanted.vni)).map_or(Ok(()), |link| check_vxlan(link, wanted))
}

fn check_vxlan(link: &Link, wanted: &VxlanSpec) -> Result<(), NetdevError> {
    let expected = (wanted.vni, Some(wanted.local), Some(wanted.port));
    match (link.kind.as_deref(), link.vxlan) {
        (Some("vxlan"), Some(actual)) if actual == expected => Ok(()),
        (_, actual) => Err(NetdevError::Conflict(format!(
            "{} exists with other settings ({:?}, vni/local/port {:?}; mesh wants {:?}): remove it or use another VNI",
            link.name, link.kind, actual, expected
        ))),
    }
}

/// Readies a fresh sandbox namespace: loopback up.
pub fn prepare_sandbox(netns: &Path) -> Result<(), NetdevError> {
    netns::netlink_in(netns, |handle| async move { kernel::loopback_up(&handle).await })
}

/// Creates the sandbox's veth pair and configures its end inside the
/// sandbox; removes what it made if any step fails.
async fn attach(handle: &Handle, local: &LocalPlan, vni: u32, bridge: u32, mtu: u32) -> Result<(), NetdevError> {
    if !netns::is_netns(&local.netns) {
        return Err(NetdevError::Namespace { path: local.netns.clone(), reason: "is not a network namespace".into() });
    }
    let (host, peer) = veth_names(local, vni);
    kernel::add_veth(handle, &host, &peer, bridge, mtu).await?;
    let configured = async {
        kernel::move_to_netns(handle, &peer, &local.netns).await?;
        let (interface, mac, address, gateway) = (local.interface.clone(), local.mac, local.address, local.gateway);
        netns::netlink_in(&local.netns, move |handle| async move {
            kernel::configure_sandbox_end(&handle, &peer, &interface, mac, mtu, address, gateway).await
        })
    }
    .await;
    if configured.is_err() {
        if let Some(link) = kernel::links(handle).await?.get(&host) {
            kernel::remove_link(handle, link.index).await?;
        }
    }
    configured
}

/// Applies an entry diff, up to [`IN_FLIGHT`] requests at a time (the
/// kernel answers each; waiting for one before sending the next would
/// make 10,000 entries 20,000 round trips).
async fn apply_entries(handle: &Handle, index: u32, diff: EntryDiff, report: &mut Report) -> Result<(), NetdevError> {
    let sets = diff.set_fdb.len() + diff.set_neighbours.len();
    let removals = diff.remove_fdb.len() + diff.remove_neighbours.len();
    let requests: Vec<BoxFuture<'_, Result<(), NetdevError>>> = diff
        .set_fdb
        .into_iter()
        .map(|(mac, vtep)| kernel::set_fdb(handle, index, mac, vtep).boxed())
        .chain(diff.set_neighbours.into_iter().map(|(ip, mac)| kernel::set_neighbour(handle, index, ip, mac).boxed()))
        .chain(diff.remove_fdb.into_iter().map(|(mac, vtep)| kernel::remove_fdb(handle, index, mac, vtep).boxed()))
        .chain(diff.remove_neighbours.into_iter().map(|ip| kernel::remove_neighbour(handle, index, ip).boxed()))
        .collect();
    let mut results = futures_util::stream::iter(requests).buffer_unordered(IN_FLIGHT);
    let mut first_error = None;
    while let Some(result) = results.next().await {
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => {
            report.set += sets;
            report.removed += removals;
            Ok(())
        }
    }
}

/// Removes mesh's devices that no plan wants: VXLAN devices first (only
/// those with this host's VTEP address, or tunnel address, and port: a
/// device someone else made is left alone), then host ends of veths (their sandbox ends go
/// with them), then bridges.
async fn remove_unwanted(
    handle: &Handle,
    underlay: Underlay,
    wanted: &BTreeSet<String>,
    report: &mut Report,
) -> Result<(), NetdevError> {
    let links = kernel::links(handle).await?;
    let tunnel = underlay.tunnel.map(IpAddr::V6);
    let ours = |link: &Link| match link.vxlan {
        Some((_, local, port)) => {
            (local == Some(underlay.local) || (local.is_some() && local == tunnel)) && port == Some(underlay.port)
        }
        None => true,
    };
    for prefix in ["mvx", "mve", "mbr"] {
        for link in links.values().filter(|l| l.name.starts_with(prefix) && !wanted.contains(&l.name) && ours(l)) {
            kernel::remove_link(handle, link.index).await?;
            report.removed += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv6Addr;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn mac(d: u8) -> [u8; 6] {
        [2, 0x6d, 10, 0, 0, d]
    }

    /// Host `d`'s VTEP on an IPv4 underlay.
    fn vtep4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, d))
    }

    /// Host `d`'s VTEP on an IPv6 underlay.
    fn vtep6(d: u8) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x6d, 0, 0, 0, 0, 0, u16::from(d)))
    }

    /// Remotes 2 and 3 against a device that points 2 elsewhere and
    /// holds a stale 4: 2 is repointed, 3 added, 4 removed, entry by
    /// entry; once settled, nothing changes.
    fn entries_converge(vtep: fn(u8) -> IpAddr) {
        let remotes =
            [Remote { mac: mac(2), ip: ip(2), vtep: vtep(2) }, Remote { mac: mac(3), ip: ip(3), vtep: vtep(3) }];
        let fdb = BTreeMap::from([(mac(2), vtep(9)), (mac(4), vtep(4))]);
        let neighbours = BTreeMap::from([(ip(2), mac(2)), (ip(4), mac(4))]);
        let diff = diff_entries(&remotes, &fdb, &neighbours);
        assert_eq!(diff.set_fdb, vec![(mac(2), vtep(2)), (mac(3), vtep(3))]);
        assert_eq!(diff.remove_fdb, vec![(mac(4), vtep(4))]);
        assert_eq!(diff.set_neighbours, vec![(ip(3), mac(3))]);
        assert_eq!(diff.remove_neighbours, vec![ip(4)]);
        let settled = diff_entries(
            &remotes,
            &remotes.iter().map(|r| (r.mac, r.vtep)).collect(),
            &remotes.iter().map(|r| (r.ip, r.mac)).collect(),
        );
        assert_eq!(settled, EntryDiff::default(), "a settled device needs nothing");
    }

    #[test]
    fn entries_are_added_repointed_and_removed_one_by_one() {
        entries_converge(vtep4);
    }

    #[test]
    fn ipv6_vteps_are_added_repointed_and_removed_one_by_one() {
        entries_converge(vtep6);
    }

    #[test]
    fn a_remote_of_the_other_family_is_an_error_of_the_plan() {
        let remote = |vtep| Remote { mac: mac(2), ip: ip(2), vtep };
        assert!(check_families(vtep6(1), &[remote(vtep6(2)), remote(vtep6(3))]).is_ok());
        assert!(check_families(vtep4(1), &[remote(vtep4(2))]).is_ok());
        assert!(check_families(vtep6(1), &[]).is_ok());
        let mixed = check_families(vtep6(1), &[remote(vtep6(2)), remote(vtep4(3))]);
        assert!(
            matches!(mixed, Err(NetdevError::MixedFamilies { local, vtep }) if local == vtep6(1) && vtep == vtep4(3)),
            "{mixed:?}"
        );
        assert!(matches!(check_families(vtep4(1), &[remote(vtep6(2))]), Err(NetdevError::MixedFamilies { .. })));
    }

    #[test]
    fn an_adopted_device_must_have_the_local_of_the_plan_in_either_family() {
        let link = |local| Link {
            index: 7,
            name: vxlan_name(42),
            mtu: 1450,
            kind: Some("vxlan".into()),
            vxlan: Some((42, Some(local), Some(4789))),
            controller: None,
            up: true,
        };
        let wanted = |local| VxlanSpec { vni: 42, local, underlay: Some(2), port: 4789, mtu: 0, bridge: 0 };
        assert!(check_vxlan(&link(vtep6(1)), &wanted(vtep6(1))).is_ok());
        assert!(check_vxlan(&link(vtep4(1)), &wanted(vtep4(1))).is_ok());
        assert!(matches!(check_vxlan(&link(vtep4(1)), &wanted(vtep6(1))), Err(NetdevError::Conflict(_))));
        assert!(matches!(check_vxlan(&link(vtep6(2)), &wanted(vtep6(1))), Err(NetdevError::Conflict(_))));
    }

    #[test]
    fn the_default_mtu_takes_off_each_header_in_the_way() {
        assert_eq!(default_mtu(1500, vtep4(1), false, false), (1500, "underlay 1500".into()));
        assert_eq!(default_mtu(1500, vtep4(1), true, false), (1450, "underlay 1500 - VXLAN 50".into()));
        assert_eq!(default_mtu(1500, vtep6(1), true, false).0, 1430);
        let encrypted = default_mtu(1500, vtep4(1), true, true);
        assert_eq!(encrypted, (1370, "underlay 1500 - WireGuard 60 - VXLAN/IPv6 70".into()));
        assert_eq!(default_mtu(1500, vtep6(1), true, true).0, 1350);
        assert_eq!(default_mtu(9000, vtep4(1), true, true).0, 8870);
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        assert!(vxlan_name(16_777_215).len() <= 15 && bridge_name(16_777_215).len() <= 15);
        let local = LocalPlan {
            netns: "/run/netns/a-very-long-sandbox-name-indeed".into(),
            interface: "eth0".into(),
            mac: [2, 0x6d, 10, 0, 0, 2],
            address: Some((Ipv4Addr::new(10, 0, 0, 2), 24)),
            gateway: None,
        };
        let (host, peer) = veth_names(&local, 16_777_215);
        assert!(host.len() <= 15 && peer.len() <= 15 && host != peer);
        let moved = LocalPlan { address: Some((Ipv4Addr::new(10, 0, 0, 3), 24)), ..local.clone() };
        assert_ne!(veth_names(&moved, 16_777_215).0, host, "a new address gets a new pair");
    }
}
