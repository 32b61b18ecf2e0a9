//! Encrypted networks (DESIGN.md, "Encrypted data plane"): the stories of
//! `mesh_scenarios::encrypted`, each on a cluster of its own, on the path
//! `MESH_TEST_WIREGUARD` names (`kernel` or `userspace`; by default
//! `userspace`, since this machine's kernel has no WireGuard and every
//! agent falls back to its own over a TUN device). On the kernel path
//! they run inside the kernel VM: `tests/stock_kernel.rs`. Needs root.

use mesh_scenarios::encrypted::{self, cluster, WireguardPath};

#[test]
fn an_encrypted_network_shows_the_underlay_only_wireguard_and_a_plaintext_one_its_bytes() -> anyhow::Result<()> {
    let path = WireguardPath::from_env()?;
    encrypted::the_underlay_shows_only_wireguard(&mut cluster(3, path)?, path)
}

#[test]
fn a_removed_host_is_no_peer_within_a_second_and_its_packets_reach_no_sandbox() -> anyhow::Result<()> {
    let path = WireguardPath::from_env()?;
    encrypted::a_removed_host_is_no_peer_within_a_second(&mut cluster(3, path)?, path)
}

#[test]
fn an_agent_restart_interrupts_an_encrypted_ping_for_under_a_second() -> anyhow::Result<()> {
    let path = WireguardPath::from_env()?;
    encrypted::an_agent_restart_keeps_an_encrypted_ping(&mut cluster(2, path)?, path)
}

#[test]
fn garbage_replays_and_forgeries_at_the_wireguard_port_are_dropped_and_counted() -> anyhow::Result<()> {
    let path = WireguardPath::from_env()?;
    encrypted::garbage_replays_and_forgeries_are_dropped(&mut cluster(2, path)?, path)
}

#[test]
fn a_host_with_no_way_to_encrypt_refuses_sandboxes_on_encrypted_networks() -> anyhow::Result<()> {
    encrypted::a_host_with_no_way_to_encrypt_refuses_sandboxes()
}

#[test]
fn vxlan_forged_on_the_underlay_to_a_tunnel_address_reaches_no_sandbox() -> anyhow::Result<()> {
    let path = WireguardPath::from_env()?;
    encrypted::vxlan_forged_to_a_tunnel_address_reaches_no_sandbox(&cluster(2, path)?)
}

#[test]
fn a_host_that_leaves_is_no_peer_at_once_and_one_cut_off_only_after_the_grace() -> anyhow::Result<()> {
    let path = WireguardPath::from_env()?;
    encrypted::a_host_that_leaves_is_no_peer_at_once_and_one_cut_off_only_after_the_grace(&cluster(3, path)?)
}

#[test]
fn a_cluster_made_with_encrypt_networks_encrypts_every_network_and_refuses_plaintext() -> anyhow::Result<()> {
    encrypted::a_cluster_made_with_encrypt_networks_refuses_plaintext()
}
