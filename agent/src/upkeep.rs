//! What the agent does whenever the view changes: it moves this node's
//! endpoints that lost an address conflict to a free address, logs every
//! conflict once, and saves this node's records (networks learnt from
//! peers included, so a lone node still knows them after a restart).

use std::collections::BTreeSet;

use mesh_membership::records::mac_for;
use mesh_membership::records::view::{EndpointState, View};
use mesh_membership::{Core, Membership, Owned};
use tokio_util::sync::CancellationToken;

use crate::datadir::DataDir;
use crate::ipam;

/// Most endpoints moved in one pass (a pass per view change).
const MAX_MOVES_PER_PASS: usize = 64;

/// Runs until `shutdown` fires or the membership stops.
pub(crate) async fn run(membership: Membership, datadir: DataDir, shutdown: CancellationToken) {
    let mut views = membership.watch_view();
    let mut reported = BTreeSet::new();
    let mut saved: Option<Owned> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
        }
        let current = views.borrow_and_update().clone();
        report_conflicts(&current.view, &mut reported);
        let Ok((generation, owned)) = membership
            .with_core(|core, now| {
                readdress(core, now);
                (core.generation(), core.owned())
            })
            .await
        else {
            return;
        };
        if saved.as_ref() != Some(&owned) {
            let writer = datadir.clone();
            let snapshot = owned.clone();
            match tokio::task::spawn_blocking(move || writer.save_records(generation, &snapshot)).await {
                Ok(Ok(())) => saved = Some(owned),
                Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "cannot save records"),
                Err(error) => tracing::warn!(%error, "cannot save records"),
            }
        }
    }
}

/// Moves this node's endpoints that lost their address (to an endpoint
/// that wins, or because it is not usable on the network that won their
/// network's name) to a free one. Static addresses are never moved: they
/// stay in conflict, reported, until the user acts.
fn readdress(core: &mut Core, now: std::time::Instant) {
    let me = core.identity().id;
    for _ in 0..MAX_MOVES_PER_PASS {
        let view = core.view();
        let losing = view.networks.values().find_map(|network| {
            let endpoint = network
                .endpoints
                .iter()
                .find(|e| e.owner == me && !e.spec.static_ip && matches!(e.state, EndpointState::Conflict(_)))?;
            Some((network, endpoint))
        });
        let Some((network, endpoint)) = losing else { return };
        let Some(ip) = ipam::allocate(network, me, &Default::default()) else {
            tracing::warn!(sandbox = %endpoint.name, network = %network.spec.name, "address conflict, and no free address to move to");
            return;
        };
        let mut spec = endpoint.spec.clone();
        spec.readdressed_from = spec.ip;
        spec.ip = Some(ip);
        spec.mac = mac_for(ip);
        tracing::warn!(sandbox = %endpoint.name, from = ?endpoint.spec.ip, to = %ip, "moved a sandbox that lost an address conflict");
        if let Err(error) = core.put_endpoint(now, &endpoint.name.clone(), spec) {
            tracing::warn!(%error, "could not move a sandbox");
            return;
        }
    }
}

/// Logs each conflict of the view once.
fn report_conflicts(view: &View, reported: &mut BTreeSet<String>) {
    let lost = view.lost.iter().map(|l| format!("network {} ({}) lost {}", l.spec.name, l.id, l.reason));
    let endpoints = view.endpoints().filter_map(|e| match &e.state {
        EndpointState::Conflict(reason) => Some(format!("sandbox {} of node {:?}: {reason}", e.name, e.owner)),
        _ => None,
    });
    let current: BTreeSet<String> = lost.chain(endpoints).collect();
    for conflict in current.difference(reported) {
        tracing::warn!(%conflict, "conflict");
    }
    *reported = current;
}
