//! `mesh join PEER[:PORT] --token TOKEN`.

use clap::Args;

use super::ClientOpts;
use crate::api::{self, JoinBody};

/// Arguments of `mesh join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// A member of the cluster, HOST or HOST:PORT.
    peer: String,
    /// The cluster's join token (`mesh token` on a member prints it).
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    client: ClientOpts,
}

/// Asks the agent to join through `peer`.
pub(crate) async fn run(args: &JoinArgs) -> anyhow::Result<()> {
    let body = JoinBody { peer: args.peer.clone(), token: args.token.clone() };
    let _: serde_json::Value = args.client.client().post(api::JOIN, &body).await?;
    println!("joined the cluster through {}", args.peer);
    Ok(())
}
