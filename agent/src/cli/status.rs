//! `mesh status`.

use std::collections::BTreeMap;

use super::{print_json, Format, OutputOpts};
use crate::api::{self, StatusBody};

/// Shows this node and the cluster at a glance: its digest of the view is
/// equal on every host of a converged cluster.
pub(crate) async fn run(opts: &OutputOpts) -> anyhow::Result<()> {
    let status: StatusBody = opts.client.client().get(api::STATUS).await?;
    if opts.format == Format::Json {
        return print_json(&status);
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for member in &status.members {
        *counts.entry(member.status.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(status, n)| format!("{n} {status}")).collect();
    println!("node       {} ({})", status.name, status.id);
    println!("address    {}", status.addr);
    println!("state      {}", status.state);
    println!("cluster    {} active; {}", status.cluster_size, counts.join(", "));
    let encryption = &status.encryption;
    match &encryption.reason {
        Some(reason) if encryption.path == "none" => println!("encryption none: {reason}"),
        _ => println!(
            "encryption {} WireGuard, port {}, tunnel {}, {} peer(s), {} packet(s) dropped",
            encryption.path,
            encryption.port,
            encryption.tunnel,
            encryption.peers,
            encryption.dropped.values().sum::<u64>()
        ),
    }
    if let Some(digest) = &status.digest {
        println!("digest     {digest}  (records-members; equal on every converged host)");
    }
    match &status.last_sync {
        Some(sync) => {
            let ago = crate::clock::unix_ms().saturating_sub(sync.at_ms) / 1000;
            let result = if sync.in_step { "in step" } else { "differed, records exchanged" };
            println!("last sync  {ago}s ago with {}: {result}", sync.peer);
        }
        None if status.digest.is_some() => println!("last sync  none yet"),
        None => {}
    }
    if status.conflicts.is_empty() {
        if status.digest.is_some() {
            println!("conflicts  none");
        }
    } else {
        println!("conflicts  {}", status.conflicts.len());
        for conflict in &status.conflicts {
            println!("  {conflict}");
        }
    }
    Ok(())
}
