//! `mesh init`.

use crate::api::{self, TokenBody};

use super::ClientOpts;

/// Makes the agent a new cluster and prints its join token.
pub(crate) async fn run(opts: &ClientOpts) -> anyhow::Result<()> {
    let body: TokenBody = opts.client().post(api::INIT, &serde_json::json!({})).await?;
    println!("{}", body.token);
    Ok(())
}
