//! `mesh leave`.

use super::ClientOpts;
use crate::api;

/// Leaves the cluster gracefully.
pub(crate) async fn run(opts: &ClientOpts) -> anyhow::Result<()> {
    let _: serde_json::Value = opts.client().post(api::LEAVE, &serde_json::json!({})).await?;
    println!("left the cluster");
    Ok(())
}
