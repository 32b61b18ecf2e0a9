//! `mesh run`: a sandbox for the length of one command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::ClientOpts;
use crate::api::{self, Done, SandboxBody, SandboxCreateBody};
use crate::unix_http::percent_encode;

/// Flags of `mesh run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// A network to attach the sandbox to (repeatable).
    #[arg(long = "network", value_name = "NET", required = true)]
    networks: Vec<String>,
    /// The sandbox's name [default: run-XXXXXX].
    #[arg(long)]
    name: Option<String>,
    /// A service name it publishes besides its own (repeatable).
    #[arg(long = "alias", value_name = "SVC")]
    aliases: Vec<String>,
    /// Publish PORT of the sandbox at HOSTPORT of this host's addresses
    /// (repeatable; TCP unless /udp is given).
    #[arg(long, value_name = "HOSTPORT:PORT[/tcp|udp]")]
    publish: Vec<String>,
    #[command(flatten)]
    client: ClientOpts,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Creates the sandbox, runs the command inside it, removes the sandbox
/// (whatever the command's fate), and exits with the command's status.
pub(crate) async fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client();
    let name = args.name.clone().unwrap_or_else(|| format!("run-{:06x}", rand::random::<u32>() & 0xff_ffff));
    let body = SandboxCreateBody {
        name: name.clone(),
        networks: args.networks.clone(),
        aliases: args.aliases.clone(),
        ip: None,
        netns: None,
        interface: None,
        publish: args.publish.clone(),
    };
    let sandbox: SandboxBody = client.post(api::SANDBOXES, &body).await?;
    // Ctrl-C goes to the command (same process group); this process stays
    // to remove the sandbox once the command has exited.
    let _interrupts =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("cannot take over SIGINT")?;
    let status = match sandbox.netns.map(PathBuf::from) {
        Some(netns) => {
            let command = args.command.clone();
            tokio::task::spawn_blocking(move || {
                mesh_netdev::netns::run_as_exec(&netns, move || {
                    std::process::Command::new(&command[0]).args(&command[1..]).status().map_err(|source| {
                        mesh_netdev::NetdevError::Io { what: "cannot run", path: command[0].clone().into(), source }
                    })
                })
            })
            .await
            .context("the command's thread failed")?
            .map_err(anyhow::Error::from)
        }
        None => Err(anyhow::anyhow!("the agent gave the sandbox no namespace")),
    };
    let removed: anyhow::Result<Done> = client.delete(&api::path_of(api::SANDBOX, &percent_encode(&name))).await;
    let status = status?;
    removed.with_context(|| format!("the command ran, but sandbox {name} could not be removed"))?;
    Ok(status.code().and_then(|c| u8::try_from(c).ok()).map_or(ExitCode::FAILURE, ExitCode::from))
}
