//! This node's credentials, kept current and saved. Its certificate is
//! renewed, from its own copy of the cluster CA, when a third of its
//! lifetime is left, so the one it presents never expires. Whatever the
//! transport presents, after a renewal or after adopting a rotated CA, is
//! saved to the data dir. Connections up keep going; the identity key,
//! hence the node id, stays.

use std::time::{Duration, Instant, SystemTime};

use mesh_membership::pki::validity;
use mesh_membership::transport::Credentials;
use mesh_membership::Membership;
use tokio_util::sync::CancellationToken;

use crate::datadir::DataDir;

/// Longest wait before trying again after a failed renewal (or an
/// unreadable certificate); short-lived certificates retry sooner.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Renews this node's certificate whenever it is due, and saves its
/// credentials whenever they change, until `shutdown`.
pub(crate) async fn run(membership: Membership, datadir: DataDir, shutdown: CancellationToken) {
    let mut credentials = membership.watch_credentials();
    let mut saved: Option<Credentials> = None;
    // After a renewal, a pause: a certificate that is due at once again
    // (issued for less than expected) must not spin this loop.
    let mut renew_after = Instant::now();
    loop {
        let current = credentials.borrow_and_update().clone();
        if saved.as_ref().is_none_or(|s| s.node_cert != current.node_cert || s.ca_key_pem != current.ca_key_pem) {
            match save(&datadir, &current) {
                Ok(()) => saved = Some(current.clone()),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot save this node's credentials"),
            }
        }
        let wait = match schedule(&current) {
            Ok(Schedule { due_in, .. }) if !due_in.is_zero() => due_in,
            Ok(Schedule { lifetime, .. }) if Instant::now() >= renew_after => {
                renew_after = Instant::now() + lifetime / 20;
                match membership.renew_certificate() {
                    Ok(cert) => {
                        tracing::info!(valid_until = ?validity(&cert).map(|v| v.1).ok(), "renewed this node's certificate");
                        Duration::ZERO
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not renew this node's certificate; retrying");
                        RETRY_AFTER.min(lifetime / 20)
                    }
                }
            }
            Ok(_) => renew_after.saturating_duration_since(Instant::now()),
            Err(error) => {
                tracing::warn!(%error, "cannot read this node's certificate to renew it");
                RETRY_AFTER
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            changed = credentials.changed() => if changed.is_err() { return },
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

fn schedule(credentials: &Credentials) -> anyhow::Result<Schedule> {
    let (from, until) = validity(&credentials.node_cert)?;
    let lifetime = until.duration_since(from).unwrap_or_default();
    let due = until.checked_sub(lifetime / 3).unwrap_or(until);
    Ok(Schedule { due_in: due.duration_since(SystemTime::now()).unwrap_or_default(), lifetime })
}

fn save(datadir: &DataDir, credentials: &Credentials) -> anyhow::Result<()> {
    datadir.save_ca(&credentials.ca_cert_pem, &credentials.ca_key_pem)?;
    datadir.save_node_cert(&credentials.node_cert)
}
