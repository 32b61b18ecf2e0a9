//! `mesh network create | ls | inspect | rm`.

use clap::{Args, Subcommand};

use super::{print_json, table, ClientOpts, Format, OutputOpts};
use crate::api::{self, Done, EndpointBody, NetworkBody, NetworkCreateBody};

/// Cluster-scoped networks.
#[derive(Debug, Args)]
pub(crate) struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// Create a network on every host of the cluster.
    Create(CreateArgs),
    /// List the networks.
    Ls(OutputOpts),
    /// Show a network, its endpoints and its conflicts.
    Inspect(NamedOutput),
    /// Remove a network (it must have no endpoints left).
    Rm(Named),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The network's name (a DNS label).
    name: String,
    /// IPv4 subnet in CIDR form; a free /24 of 10.128.0.0/9 by default.
    #[arg(long)]
    subnet: Option<String>,
    /// VXLAN network identifier (1-16777215; a bridge network's names its
    /// bridge); a free one by default.
    #[arg(long)]
    vni: Option<u32>,
    /// MTU of the network's interfaces; by default the underlay's, minus 50
    /// on an overlay network.
    #[arg(long)]
    mtu: Option<u16>,
    /// `overlay` (one segment across all hosts), `bridge` (a segment on
    /// each host, its names resolving there only) or `null` (loopback only).
    #[arg(long, default_value = "overlay")]
    driver: String,
    /// No way out: sandboxes get no default route, the host forwards
    /// nothing from or to the network, and no port is published on it.
    #[arg(long)]
    internal: bool,
    /// Carry its packets between hosts inside WireGuard (`--encrypted`,
    /// or `--encrypted=false` for plaintext) [default: the cluster's
    /// policy: plaintext unless `mesh init --encrypt-networks`].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    encrypted: Option<bool>,
    #[command(flatten)]
    output: OutputOpts,
}

#[derive(Debug, Args)]
struct Named {
    /// The network's name.
    name: String,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Debug, Args)]
struct NamedOutput {
    /// The network's name.
    name: String,
    #[command(flatten)]
    output: OutputOpts,
}

/// Runs a network subcommand.
pub(crate) async fn run(args: &NetworkArgs) -> anyhow::Result<()> {
    match &args.command {
        NetworkCommand::Create(create) => {
            let body = NetworkCreateBody {
                name: create.name.clone(),
                driver: Some(create.driver.clone()),
                subnet: create.subnet.clone(),
                vni: create.vni,
                mtu: create.mtu,
                internal: create.internal,
                encrypted: create.encrypted,
            };
            let network: NetworkBody = create.output.client.client().post(api::NETWORKS, &body).await?;
            match create.output.format {
                Format::Json => print_json(&network),
                Format::Table => {
                    let subnet = network.subnet.as_deref().unwrap_or("no subnet");
                    let encrypted = if network.encrypted { ", encrypted" } else { "" };
                    println!("created network {} (vni {}, {subnet}{encrypted})", network.name, network.vni);
                    Ok(())
                }
            }
        }
        NetworkCommand::Ls(opts) => {
            let networks: Vec<NetworkBody> = opts.client.client().get(api::NETWORKS).await?;
            match opts.format {
                Format::Json => print_json(&networks),
                Format::Table => {
                    let rows = networks.iter().map(|n| {
                        vec![
                            n.name.clone(),
                            n.driver.clone(),
                            n.vni.to_string(),
                            n.subnet.clone().unwrap_or_else(|| "-".into()),
                            n.endpoints.len().to_string(),
                            n.conflicts.len().to_string(),
                        ]
                    });
                    print!("{}", table::render(&["NAME", "DRIVER", "VNI", "SUBNET", "ENDPOINTS", "CONFLICTS"], rows));
                    Ok(())
                }
            }
        }
        NetworkCommand::Inspect(named) => {
            let path = api::path_of(api::NETWORK, &crate::unix_http::percent_encode(&named.name));
            let network: NetworkBody = named.output.client.client().get(&path).await?;
            match named.output.format {
                Format::Json => print_json(&network),
                Format::Table => {
                    print!("{}", describe(&network));
                    Ok(())
                }
            }
        }
        NetworkCommand::Rm(named) => {
            let path = api::path_of(api::NETWORK, &crate::unix_http::percent_encode(&named.name));
            let _: Done = named.client.client().delete(&path).await?;
            Ok(())
        }
    }
}

/// What a network's MTU is on the answering host, and how it was found.
fn mtu_text(network: &NetworkBody) -> String {
    match (network.mtu_effective, &network.mtu_from) {
        (Some(mtu), Some(from)) => format!("{mtu} ({from})"),
        (Some(mtu), None) => mtu.to_string(),
        _ => match (network.mtu, network.driver.as_str(), network.encrypted) {
            (Some(mtu), _, _) => mtu.to_string(),
            (None, "overlay", true) => "underlay - WireGuard 60 - VXLAN/IPv6 70".into(),
            (None, "overlay", false) => "underlay - VXLAN 50".into(),
            (None, _, _) => "underlay".into(),
        },
    }
}

/// A network for a terminal: its fields, its conflicts, its endpoints.
fn describe(network: &NetworkBody) -> String {
    let none = || "-".to_owned();
    let fields = [
        ("name", network.name.clone()),
        ("id", network.id.clone()),
        ("driver", network.driver.clone()),
        ("way out", if network.internal { "none (internal)".into() } else { "through each host (masquerade)".into() }),
        ("encrypted", if network.encrypted { "yes (WireGuard between hosts)".into() } else { "no".into() }),
        ("vni", network.vni.to_string()),
        ("subnet", network.subnet.clone().unwrap_or_else(none)),
        ("gateway", network.gateway.clone().unwrap_or_else(none)),
        ("mtu", mtu_text(network)),
        ("created by", network.created_by.clone()),
    ];
    let mut out: String = fields.iter().map(|(k, v)| format!("{:<11} {v}\n", format!("{k}:"))).collect();
    for conflict in &network.conflicts {
        out.push_str(&format!("conflict:   {conflict}\n"));
    }
    out.push('\n');
    out.push_str(&endpoint_table(&network.endpoints));
    out
}

/// Endpoints as an aligned table.
pub(crate) fn endpoint_table(endpoints: &[EndpointBody]) -> String {
    let rows = endpoints.iter().map(|e| {
        vec![
            e.name.clone(),
            e.ip.clone().unwrap_or_else(|| "-".into()),
            e.mac.clone(),
            e.node.clone(),
            if e.aliases.is_empty() { "-".into() } else { e.aliases.join(",") },
            state_of(e),
        ]
    });
    table::render(&["ENDPOINT", "IP", "MAC", "NODE", "ALIASES", "STATE"], rows)
}

/// An endpoint's state with its conflict and former address, if any.
pub(crate) fn state_of(endpoint: &EndpointBody) -> String {
    let mut state = endpoint.state.clone();
    if let Some(conflict) = &endpoint.conflict {
        state = format!("{state}: {conflict}");
    }
    if let Some(from) = &endpoint.readdressed_from {
        state = format!("{state} (moved from {from})");
    }
    state
}
