//! `mesh init`.

use clap::Args;

use crate::api::{self, InitBody, TokenBody};

use super::ClientOpts;

/// Flags of `mesh init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Encrypt every network of the cluster: new networks are encrypted
    /// and `--encrypted=false` is refused (also the agent's config key
    /// `encrypt_networks`).
    #[arg(long)]
    encrypt_networks: bool,
    #[command(flatten)]
    client: ClientOpts,
}

/// Makes the agent a new cluster and prints its join token.
pub(crate) async fn run(args: &InitArgs) -> anyhow::Result<()> {
    let request = InitBody { encrypt_networks: args.encrypt_networks };
    let body: TokenBody = args.client.client().post(api::INIT, &request).await?;
    println!("{}", body.token);
    Ok(())
}
