//! Keeps the local engine's networks of driver mesh the same as mesh's
//! overlay networks: a network created anywhere (by `docker network
//! create` on another host, or `mesh network create`) appears in this
//! engine with its subnet, and one removed anywhere disappears, so
//! `docker run --network NAME` works on every host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use mesh_membership::records::Driver as NetworkDriver;
use mesh_membership::Membership;
use tokio_util::sync::CancellationToken;

use super::driver::Driver;
use super::DRIVER;

/// How often the engine is compared even if the view did not change (it
/// may have restarted, or someone removed a network by hand).
const SYNC_EVERY: Duration = Duration::from_secs(10);

/// Runs until `shutdown`.
pub(crate) async fn run(driver: Arc<Driver>, membership: Membership, shutdown: CancellationToken) {
    let mut views = membership.watch_view();
    let mut synced: Option<BTreeMap<String, Ipv4Net>> = None;
    let mut last_error = String::new();
    loop {
        let wanted = wanted(&views.borrow_and_update().view);
        if synced.as_ref() != Some(&wanted) && driver.engine().installed() {
            match sync(&driver, &wanted).await {
                Ok(()) => {
                    synced = Some(wanted);
                    last_error.clear();
                }
                Err(error) => {
                    let error = format!("{error:#}");
                    if error != last_error {
                        tracing::warn!(%error, "cannot bring Docker's networks in step with mesh's");
                        last_error = error;
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(SYNC_EVERY) => synced = None,
        }
    }
}

/// Mesh's overlay networks: name and subnet.
fn wanted(view: &mesh_membership::records::view::View) -> BTreeMap<String, Ipv4Net> {
    view.networks
        .values()
        .filter(|n| n.spec.driver == NetworkDriver::Overlay)
        .filter_map(|n| Some((n.spec.name.clone(), n.spec.subnet?)))
        .collect()
}

/// One comparison: creates what the engine lacks, removes what mesh no
/// longer has. An engine network still being bound (just created by
/// `docker network create`) is left alone.
async fn sync(driver: &Driver, wanted: &BTreeMap<String, Ipv4Net>) -> anyhow::Result<()> {
    let engine = driver.engine();
    let present = engine.networks(DRIVER).await?;
    let bound = driver.bound_networks();
    let binding = |id: &str| bound.iter().find(|(b, _)| b == id).map(|(_, mesh)| mesh.clone());
    for network in &present {
        let subnet = network.subnet().and_then(|s| s.parse::<Ipv4Net>().ok());
        let keep = match (wanted.get(&network.name), binding(&network.id)) {
            (_, Some(None)) => true,
            (Some(want), _) => subnet == Some(*want),
            (None, _) => false,
        };
        if !keep {
            tracing::info!(network = %network.name, "removing a mesh network from Docker");
            if let Err(error) = engine.remove_network(&network.id).await {
                tracing::warn!(network = %network.name, error = format!("{error:#}"), "cannot remove it from Docker");
            }
        }
    }
    let present = engine.networks(DRIVER).await?;
    for (name, subnet) in wanted.iter().filter(|(name, _)| !present.iter().any(|n| &n.name == *name)) {
        tracing::info!(network = %name, %subnet, "adding a mesh network to Docker");
        engine.create_network(name, DRIVER, &subnet.to_string()).await?;
    }
    Ok(())
}
