//! Docker integration: the agent is a libnetwork remote network driver
//! and IPAM driver named `mesh`, on the socket `mesh.sock` in Docker's
//! plugin directory. `docker network create -d mesh --ipam-driver mesh
//! NAME` makes mesh network NAME; every host's engine gets it (see
//! [`sync`]); `docker run --network NAME` puts the container on it under
//! its name and aliases.

mod driver;
mod engine;
mod plugin;
pub(crate) mod protocol;
mod sync;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use driver::Driver;
use engine::Engine;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::datadir::DataDir;
use crate::dataplane::Dataplane;
use crate::unix_http::SocketFile;

/// The driver's name: `docker network create -d mesh --ipam-driver mesh`.
pub(crate) const DRIVER: &str = "mesh";

/// Serves the plugin socket in `plugin_dir` and keeps `engine_socket`'s
/// networks in step with mesh's, until `shutdown`; the socket's file goes
/// with the guard returned (at once if this fails).
pub(crate) async fn start(
    plugin_dir: &Path,
    engine_socket: &Path,
    agent: Arc<Agent>,
    dataplane: Arc<Dataplane>,
    datadir: DataDir,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketFile> {
    let path = plugin_dir.join(format!("{DRIVER}.sock"));
    let (listener, file) = crate::unix_http::bind(&path, "--docker-plugin-dir").await?;
    let driver = Driver::new(Arc::clone(&agent), Engine::new(engine_socket), dataplane, datadir)?;
    driver.resume();
    tokio::spawn(plugin::serve(listener, Arc::clone(&driver), shutdown.clone()));
    tokio::spawn(follow_sessions(driver, agent, shutdown));
    tracing::info!(socket = %path.display(), engine = %engine_socket.display(), "serving Docker's network plugin protocol");
    Ok(file)
}

/// Runs the engine sync once the agent is in a cluster.
async fn follow_sessions(driver: Arc<Driver>, agent: Arc<Agent>, shutdown: CancellationToken) {
    loop {
        if let Some(membership) = agent.membership() {
            return sync::run(driver, membership, shutdown).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The name a Docker endpoint is published under when its container's
/// name is taken on the network: unique, from the endpoint id.
fn fallback_name(endpoint_id: &str) -> String {
    format!("docker-{}", endpoint_id.get(..12).unwrap_or(endpoint_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_names_come_from_the_endpoint_id() {
        assert_eq!(fallback_name("0123456789abcdef"), "docker-0123456789ab");
    }
}
