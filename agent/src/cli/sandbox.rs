//! `mesh sandbox create | ls | rm`.

use clap::{Args, Subcommand};

use super::{print_json, table, ClientOpts, Format, OutputOpts};
use crate::api::{self, Done, SandboxBody, SandboxCreateBody};

/// This host's sandboxes (a container's network stack) and their endpoints.
#[derive(Debug, Args)]
pub(crate) struct SandboxArgs {
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Create a sandbox on a network; its name and aliases resolve cluster-wide.
    Create(CreateArgs),
    /// List this host's sandboxes.
    Ls(OutputOpts),
    /// Remove one of this host's sandboxes.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The sandbox's name (a DNS label, unique on its network).
    name: String,
    /// A network to attach it to (repeatable: its interfaces are eth0,
    /// eth1... in the order given).
    #[arg(long = "network", value_name = "NET", required = true)]
    networks: Vec<String>,
    /// A service name it publishes besides its own (repeatable).
    #[arg(long = "alias", value_name = "SVC")]
    aliases: Vec<String>,
    /// A static address on the first network's subnet; allocated by default.
    #[arg(long)]
    ip: Option<String>,
    /// Attach this existing network namespace (a container's, e.g.
    /// /proc/PID/ns/net) instead of creating one named after the sandbox.
    #[arg(long)]
    netns: Option<String>,
    /// Publish PORT of the sandbox at HOSTPORT of this host's addresses
    /// (repeatable; TCP unless /udp is given).
    #[arg(long, value_name = "HOSTPORT:PORT[/tcp|udp]")]
    publish: Vec<String>,
    #[command(flatten)]
    output: OutputOpts,
}

#[derive(Debug, Args)]
struct RmArgs {
    /// The sandbox's name.
    name: String,
    #[command(flatten)]
    client: ClientOpts,
}

/// Runs a sandbox subcommand.
pub(crate) async fn run(args: &SandboxArgs) -> anyhow::Result<()> {
    match &args.command {
        SandboxCommand::Create(create) => {
            let body = SandboxCreateBody {
                name: create.name.clone(),
                networks: create.networks.clone(),
                aliases: create.aliases.clone(),
                ip: create.ip.clone(),
                netns: create.netns.clone(),
                interface: None,
                publish: create.publish.clone(),
            };
            let sandbox: SandboxBody = create.output.client.client().post(api::SANDBOXES, &body).await?;
            match create.output.format {
                Format::Json => print_json(&sandbox),
                Format::Table => {
                    let on: Vec<String> = sandbox
                        .endpoints
                        .iter()
                        .map(|e| format!("{} ({})", e.network, e.endpoint.ip.as_deref().unwrap_or("no address")))
                        .collect();
                    let publishing = if sandbox.ports.is_empty() {
                        String::new()
                    } else {
                        format!(", publishing {}", sandbox.ports.join(", "))
                    };
                    println!("created sandbox {} on {}{publishing}", sandbox.name, on.join(", "));
                    Ok(())
                }
            }
        }
        SandboxCommand::Ls(opts) => {
            let sandboxes: Vec<SandboxBody> = opts.client.client().get(api::SANDBOXES).await?;
            match opts.format {
                Format::Json => print_json(&sandboxes),
                Format::Table => {
                    print!("{}", sandbox_table(&sandboxes));
                    Ok(())
                }
            }
        }
        SandboxCommand::Rm(rm) => {
            let path = api::path_of(api::SANDBOX, &crate::unix_http::percent_encode(&rm.name));
            let _: Done = rm.client.client().delete(&path).await?;
            Ok(())
        }
    }
}

/// One row per endpoint of each sandbox.
fn sandbox_table(sandboxes: &[SandboxBody]) -> String {
    let rows = sandboxes.iter().flat_map(|sandbox| {
        sandbox.endpoints.iter().map(|e| {
            vec![
                sandbox.name.clone(),
                e.network.clone(),
                e.interface.clone().unwrap_or_else(|| "-".into()),
                e.endpoint.ip.clone().unwrap_or_else(|| "-".into()),
                if e.endpoint.aliases.is_empty() { "-".into() } else { e.endpoint.aliases.join(",") },
                super::network::state_of(&e.endpoint),
            ]
        })
    });
    table::render(&["SANDBOX", "NETWORK", "INTERFACE", "IP", "ALIASES", "STATE"], rows)
}
