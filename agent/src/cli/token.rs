//! `mesh token` and `mesh token rotate`.

use clap::{Args, Subcommand};

use crate::api::{self, TokenBody};

use super::ClientOpts;

/// `mesh token [rotate]`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    action: Option<TokenAction>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a new join secret on every member and print the new token:
    /// earlier tokens stop admitting new nodes (members stay members).
    Rotate,
}

/// Prints the cluster's join token, rotating it first if asked.
pub(crate) async fn run(args: &TokenArgs) -> anyhow::Result<()> {
    let body: TokenBody = match &args.action {
        None => args.client.client().get(api::TOKEN).await?,
        Some(TokenAction::Rotate) => args.client.client().post(api::TOKEN_ROTATE, &serde_json::json!({})).await?,
    };
    println!("{}", body.token);
    Ok(())
}
