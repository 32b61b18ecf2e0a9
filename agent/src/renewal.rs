//! Certificate renewal: a node's certificate is replaced, from its own
//! copy of the cluster CA, when a third of its lifetime is left, so the
//! one it presents never expires. Connections up keep going; new ones use
//! the new certificate. Its identity key, hence its node id, stays.

use std::time::{Duration, SystemTime};

use mesh_membership::pki::validity;
use mesh_membership::{Membership, NodeKey};
use tokio_util::sync::CancellationToken;

use crate::datadir::DataDir;

/// Longest wait before trying again after a failed renewal (or an
/// unreadable certificate); short-lived certificates retry sooner.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Renews this node's certificate whenever it is due, until `shutdown`.
pub(crate) async fn run(membership: Membership, datadir: DataDir, key: NodeKey, shutdown: CancellationToken) {
    loop {
        let wait = match schedule(&datadir) {
            Ok(Schedule { due_in, .. }) if !due_in.is_zero() => due_in,
            // After a renewal, a pause: a certificate that is due at once
            // again (issued for less than expected) must not spin this loop.
            Ok(Schedule { lifetime, .. }) => match renew(&membership, &datadir, &key) {
                Ok(()) => lifetime / 20,
                Err(error) => {
                    tracing::warn!(%error, "could not renew this node's certificate; retrying");
                    RETRY_AFTER.min(lifetime / 20)
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot read this node's certificate to renew it");
                RETRY_AFTER
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// When the certificate is due for renewal.
struct Schedule {
    /// How long until it is due (zero: now).
    due_in: Duration,
    /// Its whole lifetime.
    lifetime: Duration,
}

fn schedule(datadir: &DataDir) -> anyhow::Result<Schedule> {
    let cert = datadir.node_cert()?.ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    let (from, until) = validity(&cert)?;
    let lifetime = until.duration_since(from).unwrap_or_default();
    let due = until.checked_sub(lifetime / 3).unwrap_or(until);
    Ok(Schedule { due_in: due.duration_since(SystemTime::now()).unwrap_or_default(), lifetime })
}

fn renew(membership: &Membership, datadir: &DataDir, key: &NodeKey) -> anyhow::Result<()> {
    let cert = membership.renew_certificate(key)?;
    datadir.save_node_cert(&cert)?;
    tracing::info!(valid_until = ?validity(&cert)?.1, "renewed this node's certificate");
    Ok(())
}
