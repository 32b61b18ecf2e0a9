//! `mesh ca rotate`.

use clap::{Args, Subcommand};

use crate::api::{self, CaRotateBody, TokenBody};

use super::ClientOpts;

/// `mesh ca rotate`.
#[derive(Debug, Args)]
pub(crate) struct CaArgs {
    #[command(subcommand)]
    action: CaAction,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Make a new cluster CA and a new join secret on every member, and
    /// print the new token. Members switch to the new CA within seconds;
    /// a node removed before the rotation cannot use its copy of the old
    /// CA to come back under a new identity.
    Rotate {
        /// How long members' certificates from the old CA still count
        /// (only members known at the rotation's; a member down for
        /// longer joins again with the new token).
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
        grace_secs: u64,
    },
}

/// Rotates the cluster CA.
pub(crate) async fn run(args: &CaArgs) -> anyhow::Result<()> {
    let CaAction::Rotate { grace_secs } = args.action;
    let body: TokenBody = args.client.client().post(api::CA_ROTATE, &CaRotateBody { grace_secs }).await?;
    println!("{}", body.token);
    Ok(())
}
