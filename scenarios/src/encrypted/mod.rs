//! The encrypted-network scenarios (DESIGN.md, "Encrypted data plane") as
//! stories told on a [`cluster`] whose hosts are on a given WireGuard
//! path, so that one story runs on both: natively in `tests/encryption.rs`
//! (this machine's kernel has no WireGuard, so the userspace path, unless
//! [`WireguardPath::ENV`] says `kernel`), a cluster per story; and inside
//! the kernel VM, where `tests/stock_kernel.rs` runs its own test binary
//! for its ignored tests, which tell them one after another on one
//! cluster with [`WireguardPath::Kernel`] (a cluster takes a minute to
//! form under emulation). A cluster checks the path each host took; what
//! an attacker on the underlay sees is checked with tcpdump on it. Need
//! root.

use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;

use mesh_netdev::wg_genl::WireguardNetlink;
use mesh_netdev::wireguard::INTERFACE;
use mesh_netdev::{netns, NetdevError};

use crate::lab::Lab;

mod faults;
mod lifecycle;
mod traffic;

pub use faults::{
    a_host_with_no_way_to_encrypt_refuses_sandboxes, a_removed_host_is_no_peer_within_a_second,
    an_agent_restart_keeps_an_encrypted_ping, garbage_replays_and_forgeries_are_dropped,
};
pub use lifecycle::{
    a_cluster_made_with_encrypt_networks_refuses_plaintext,
    a_host_that_leaves_is_no_peer_at_once_and_one_cut_off_only_after_the_grace,
    vxlan_forged_to_a_tunnel_address_reaches_no_sandbox,
};
pub use traffic::{a_kernel_host_and_a_userspace_host_share_an_encrypted_network, the_underlay_shows_only_wireguard};

/// Generous bound on convergence waits (not a performance claim).
const CONVERGE: Duration = Duration::from_secs(30);

/// WireGuard's port (the default).
const WIREGUARD_PORT: &str = "51820";

/// Which WireGuard carries a scenario's encrypted network on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireguardPath {
    /// The kernel's (`mwg0` of kind `wireguard`).
    Kernel,
    /// The agent's own, over a TUN `mwg0`.
    Userspace,
}

impl WireguardPath {
    /// The environment variable naming the path the native scenarios
    /// expect: `kernel` or `userspace` (the default: this machine's
    /// kernel has no WireGuard).
    pub const ENV: &'static str = "MESH_TEST_WIREGUARD";

    /// The path [`Self::ENV`] names, [`Self::Userspace`] when unset.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(Self::ENV).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("userspace") => Ok(Self::Userspace),
            Ok("kernel") => Ok(Self::Kernel),
            Ok(other) => anyhow::bail!("{}={other:?}: say kernel or userspace", Self::ENV),
            Err(error) => anyhow::bail!("{}: {error}", Self::ENV),
        }
    }

    /// As `mesh status` names it (`encryption.path`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        }
    }
}

/// A cluster of `n` hosts (at least the story's) that must all be on
/// `path`, with encrypted network `sec` (10.30.0.0/24) and on host I
/// sandbox `sI` on it; checked: each host's path, and its peers.
pub fn cluster(n: usize, path: WireguardPath) -> anyhow::Result<Lab> {
    let lab = Lab::converged(n)?;
    create_sec(&lab)?;
    for i in 1..=n {
        lab.mesh_ok(i, &["sandbox", "create", &format!("s{i}"), "--network", "sec"])?;
    }
    for i in 1..=n {
        expect_path(&lab, i, path)?;
    }
    Ok(lab)
}

/// Creates the encrypted network `sec` on host 1 and waits until every
/// host has it.
fn create_sec(lab: &Lab) -> anyhow::Result<()> {
    // Refused until every member's key has reached h1 (milliseconds
    // after it joined): then encrypted.
    lab.wait_for("sec created", CONVERGE, |lab| {
        Ok(lab.mesh(1, &["network", "create", "sec", "--encrypted", "--subnet", "10.30.0.0/24"])?.success)
    })?;
    everywhere(lab, "sec")
}

/// Waits until every host of `lab` has network `network`.
fn everywhere(lab: &Lab, network: &str) -> anyhow::Result<()> {
    lab.wait_for(&format!("{network} everywhere"), CONVERGE, |lab| {
        (1..=lab.len()).try_fold(true, |ok, i| Ok(ok && lab.mesh(i, &["network", "inspect", network])?.success))
    })?;
    Ok(())
}

/// Checks that host `i` carries encrypted networks on `path`, with every
/// other host as a peer: in `mesh status`, and on the kernel path in
/// `wg show mwg0` too (the other hosts' public keys, no other).
fn expect_path(lab: &Lab, i: usize, path: WireguardPath) -> anyhow::Result<()> {
    let others: Vec<String> = (1..=lab.len())
        .filter(|j| *j != i)
        .map(|j| Ok(encryption(lab, j)?["public_key"].as_str().context("a public key")?.to_owned()))
        .collect::<anyhow::Result<_>>()?;
    lab.wait_for(&format!("h{i} to have its {} peers", others.len()), CONVERGE, |lab| {
        Ok(encryption(lab, i)?["peers"] == others.len())
    })?;
    let status = encryption(lab, i)?;
    ensure!(status["path"] == path.as_str(), "h{i} is not on the {} path: {status}", path.as_str());
    if path == WireguardPath::Kernel {
        let mut listed = wg_peers(lab, i)?;
        let mut wanted = others;
        listed.sort();
        wanted.sort();
        ensure!(listed == wanted, "h{i}'s wg show mwg0 lists {listed:?}, not the other hosts' keys {wanted:?}");
    }
    Ok(())
}

/// The public keys `wg show mwg0 peers` lists on host `i`.
fn wg_peers(lab: &Lab, i: usize) -> anyhow::Result<Vec<String>> {
    let shown = lab.exec(i, "wg", &["show", "mwg0", "peers"])?;
    ensure!(shown.success, "h{i}: wg show mwg0 peers: {}", shown.stderr);
    Ok(shown.stdout.split_whitespace().map(str::to_owned).collect())
}

/// How many peers host `i`'s WireGuard has: on the kernel path from the
/// kernel's dump (in this process: milliseconds, where a `mesh status`
/// takes most of a second under emulation), else from `mesh status`.
fn peer_count(lab: &Lab, i: usize, path: WireguardPath) -> anyhow::Result<usize> {
    if path == WireguardPath::Userspace {
        let peers = encryption(lab, i)?["peers"].as_u64().context("a peer count")?;
        return Ok(usize::try_from(peers)?);
    }
    let device = netns::run_in(&netns::path_of(lab.netns(i)), || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetdevError::Socket)?;
        runtime.block_on(async { WireguardNetlink::open().await?.device(INTERFACE).await })
    })?;
    Ok(device.peers.len())
}

/// The address of endpoint `name` on `network`, from host 1's view.
fn ip_of(lab: &Lab, network: &str, name: &str) -> anyhow::Result<String> {
    let inspect: Value = serde_json::from_str(&lab.mesh_ok(1, &["network", "inspect", network, "--format", "json"])?)?;
    let endpoint = inspect["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == name));
    Ok(endpoint.and_then(|e| e["ip"].as_str()).context("endpoint has an address")?.to_owned())
}

/// Whether sandbox `from` on host `i` gets an answer from `target`.
fn pings(lab: &Lab, i: usize, from: &str, target: &str) -> anyhow::Result<bool> {
    Ok(lab.sandbox_exec(i, from, "ping", &["-c", "1", "-W", "1", target])?.success)
}

/// Host `i`'s `mesh status` encryption section.
fn encryption(lab: &Lab, i: usize) -> anyhow::Result<Value> {
    let status: Value = serde_json::from_str(&lab.mesh_ok(i, &["status", "--format", "json"])?)?;
    Ok(status["encryption"].clone())
}

/// Packets host `i` dropped at its WireGuard port or in its WireGuard,
/// all reasons together: `mesh status`'s `dropped` and `guard_dropped`.
fn dropped(lab: &Lab, i: usize) -> anyhow::Result<u64> {
    let status = encryption(lab, i)?;
    let sum = |counts: &Value| counts.as_object().map_or(0, |c| c.values().filter_map(Value::as_u64).sum::<u64>());
    Ok(sum(&status["dropped"]) + sum(&status["guard_dropped"]))
}
