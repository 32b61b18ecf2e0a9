//! `mesh token`.

use crate::api::{self, TokenBody};

use super::ClientOpts;

/// Prints the cluster's join token.
pub(crate) async fn run(opts: &ClientOpts) -> anyhow::Result<()> {
    let body: TokenBody = opts.client().get(api::TOKEN).await?;
    println!("{}", body.token);
    Ok(())
}
