//! The command line: one file per subcommand, the doc comments are the help.

mod agent;
mod ca;
mod events;
mod generate;
mod init;
mod join;
mod leave;
mod logging;
mod members;
mod network;
mod remove;
mod run;
mod sandbox;
mod status;
mod table;
mod token;

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_SOCKET;
use crate::control::client::Client;

/// mesh: one overlay network for containers on many hosts, with no central store.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (one per host, as root).
    Agent(Box<agent::AgentArgs>),
    /// Make this agent a new cluster; prints the join token (one line).
    Init(init::InitArgs),
    /// Make a new cluster offline, for unattended first boots: prints a
    /// bundle (the cluster CA and join secret; keep it secret) that agents
    /// given `--bootstrap FILE` become members with by themselves.
    Bootstrap,
    /// Join a cluster through one of its members.
    Join(join::JoinArgs),
    /// Print the join token of this agent's cluster (`rotate`: replace it).
    Token(token::TokenArgs),
    /// Leave the cluster gracefully (peers show this node as left).
    Leave(ClientOpts),
    /// List the cluster's members and their status.
    Members(OutputOpts),
    /// Remove a member from the cluster for good: its certificate is
    /// refused everywhere and its sandboxes are withdrawn. Then `mesh ca
    /// rotate`: the node still holds the cluster CA and the token.
    Remove(remove::RemoveArgs),
    /// Rotate the cluster CA (`rotate`).
    Ca(ca::CaArgs),
    /// Show this node and the cluster at a glance.
    Status(OutputOpts),
    /// Print membership and record changes as they happen (`--format
    /// json`: one JSON object a line).
    Events(OutputOpts),
    /// Create, list, inspect and remove networks.
    Network(network::NetworkArgs),
    /// Create, list and remove this host's sandboxes.
    Sandbox(sandbox::SandboxArgs),
    /// Run a command in a fresh sandbox on a network; the sandbox is
    /// removed when the command exits.
    Run(run::RunArgs),
    /// Print a shell completion script (e.g. `mesh completions bash >
    /// /usr/share/bash-completion/completions/mesh`).
    Completions(generate::CompletionsArgs),
    /// Print the man page mesh(1), in roff.
    #[command(hide = true)]
    Manpage,
}

/// How a client command reaches its agent.
#[derive(Debug, Args)]
struct ClientOpts {
    /// The agent's control socket.
    #[arg(long, env = "MESH_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
}

impl ClientOpts {
    fn client(&self) -> Client {
        Client::new(&self.socket)
    }
}

/// Output choice of listing commands.
#[derive(Debug, Args)]
struct OutputOpts {
    #[command(flatten)]
    client: ClientOpts,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Parses the command line and runs the command.
pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => return agent::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Completions(args) => {
            generate::completions(&args);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Manpage => return generate::manpage().map(|()| ExitCode::SUCCESS),
        Command::Bootstrap => {
            print!("{}", crate::bootstrap::ClusterSeed::generate()?.to_text()?);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let done = match cli.command {
            Command::Agent(_) | Command::Completions(_) | Command::Manpage | Command::Bootstrap => {
                unreachable!("handled above")
            }
            Command::Init(args) => init::run(&args).await,
            Command::Join(args) => join::run(&args).await,
            Command::Token(args) => token::run(&args).await,
            Command::Leave(opts) => leave::run(&opts).await,
            Command::Members(opts) => members::run(&opts).await,
            Command::Remove(args) => remove::run(&args).await,
            Command::Ca(args) => ca::run(&args).await,
            Command::Status(opts) => status::run(&opts).await,
            Command::Events(opts) => events::run(&opts).await,
            Command::Network(args) => network::run(&args).await,
            Command::Sandbox(args) => sandbox::run(&args).await,
            Command::Run(args) => return run::run(&args).await,
        };
        done.map(|()| ExitCode::SUCCESS)
    })
}

/// Prints a value as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
