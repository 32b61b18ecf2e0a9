//! `mesh remove NODE`.

use clap::Args;

use super::ClientOpts;
use crate::api::{self, Done};

/// `mesh remove NODE`.
#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// The member's name, or its node id if several share the name.
    node: String,
    #[command(flatten)]
    client: ClientOpts,
}

/// Removes a member from the cluster for good.
pub(crate) async fn run(args: &RemoveArgs) -> anyhow::Result<()> {
    let path = api::path_of(api::MEMBER, &crate::unix_http::percent_encode(&args.node));
    let _: Done = args.client.client().delete(&path).await?;
    println!("removed {} from the cluster", args.node);
    Ok(())
}
