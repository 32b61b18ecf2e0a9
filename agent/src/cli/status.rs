//! `mesh status`.

use std::collections::BTreeMap;

use super::{print_json, Format, OutputOpts};
use crate::api::{self, StatusBody};

/// Shows this node and the cluster at a glance.
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
    println!("node     {} ({})", status.name, status.id);
    println!("address  {}", status.addr);
    println!("state    {}", status.state);
    println!("cluster  {} active; {}", status.cluster_size, counts.join(", "));
    Ok(())
}
