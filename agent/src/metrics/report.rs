//! One scrape: the agent's own counters, and what the membership, the
//! records, the view and the transport say at that moment.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use mesh_membership::records::view::EndpointState;
use mesh_membership::traffic::{Flow, Wire};
use mesh_membership::{Membership, Status};

use super::exposition::{count_value, Exposition, Kind};
use super::{as_count, Metrics, DNS_RESULTS, DNS_SOURCES};

/// The encrypted path at the time of a scrape.
#[derive(Debug, Default)]
pub(crate) struct EncryptionFigures {
    /// `kernel`, `userspace` or `none`.
    pub(crate) path: String,
    /// Its WireGuard's peers.
    pub(crate) peers: usize,
    /// Packets its WireGuard dropped, by reason.
    pub(crate) dropped: BTreeMap<String, u64>,
    /// Packets the tunnel guard (`ip6 mesh`) dropped, by rule.
    pub(crate) guard_dropped: Vec<(String, u64)>,
}

/// The text of a scrape.
pub(crate) async fn render(
    metrics: &Metrics,
    membership: Option<Membership>,
    encryption: &EncryptionFigures,
) -> String {
    let mut out = Exposition::default();
    out.family("mesh_build_info", Kind::Gauge, "The running mesh agent's version (always 1).")
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    out.family("mesh_cluster_joined", Kind::Gauge, "Whether this agent has a cluster session (1) or not (0).")
        .sample(&[], if membership.is_some() { 1.0 } else { 0.0 });
    if let Some(membership) = membership {
        cluster(&mut out, &membership).await;
    }
    dataplane(&mut out, metrics);
    wireguard(&mut out, encryption);
    dns(&mut out, metrics);
    out.finish()
}

fn wireguard(out: &mut Exposition, encryption: &EncryptionFigures) {
    out.family("mesh_wireguard_path", Kind::Gauge, "Which WireGuard carries encrypted networks here (always 1).")
        .sample(&[("path", &encryption.path)], 1.0);
    out.family("mesh_wireguard_peers", Kind::Gauge, "Peers of this host's WireGuard.")
        .sample(&[], count_value(as_count(encryption.peers)));
    out.family("mesh_wireguard_dropped_total", Kind::Counter, "Packets this host's WireGuard dropped, by reason.");
    for (reason, n) in &encryption.dropped {
        out.sample(&[("reason", reason)], count_value(*n));
    }
    out.family(
        "mesh_nft_dropped_total",
        Kind::Counter,
        "Packets the tunnel guard dropped (forged tunnel traffic from the underlay), by rule.",
    );
    for (rule, n) in &encryption.guard_dropped {
        out.sample(&[("rule", rule)], count_value(*n));
    }
}

async fn cluster(out: &mut Exposition, membership: &Membership) {
    if let Ok(members) = membership.members().await {
        let mut by_status: BTreeMap<&str, u64> =
            [Status::Alive, Status::Suspect, Status::Down, Status::Left].iter().map(|s| (s.as_str(), 0)).collect();
        for member in &members {
            *by_status.entry(member.status.as_str()).or_default() += 1;
        }
        out.family("mesh_members", Kind::Gauge, "Members this node knows, itself included, by status.");
        for (status, n) in by_status {
            out.sample(&[("status", status)], count_value(n));
        }
    }
    if let Ok(stats) = membership.with_core(|core, _| core.record_stats()).await {
        out.family("mesh_records", Kind::Gauge, "Replicated records held, by kind; state deleted is a tombstone.");
        for ((kind, deleted), n) in &stats.records {
            let state = if *deleted { "deleted" } else { "live" };
            out.sample(&[("kind", kind), ("state", state)], count_value(as_count(*n)));
        }
        out.family("mesh_sync_rounds_total", Kind::Counter, "Anti-entropy rounds, by whether the records matched.")
            .sample(&[("result", "in_step")], count_value(stats.sync.in_step))
            .sample(&[("result", "differed")], count_value(stats.sync.differed));
        if let Some(last) = stats.sync.last {
            out.family(
                "mesh_last_sync_timestamp_seconds",
                Kind::Gauge,
                "When this node last compared its records with a member (Unix time).",
            )
            .sample(&[], count_value(last.at_ms) / 1000.0);
        }
    }
    let view = membership.watch_view().borrow().clone();
    let mut endpoints: BTreeMap<&str, u64> =
        ["active", "owner_down", "owner_left", "conflict"].iter().map(|s| (*s, 0)).collect();
    for endpoint in view.view.endpoints() {
        let state = match endpoint.state {
            EndpointState::Active => "active",
            EndpointState::OwnerDown => "owner_down",
            EndpointState::OwnerLeft => "owner_left",
            EndpointState::Conflict(_) => "conflict",
        };
        *endpoints.entry(state).or_default() += 1;
    }
    out.family("mesh_networks", Kind::Gauge, "Networks in the view.")
        .sample(&[], count_value(as_count(view.view.networks.len())));
    out.family("mesh_network_conflicts", Kind::Gauge, "Networks that lost their name, VNI or subnet to another.")
        .sample(&[], count_value(as_count(view.view.lost.len())));
    out.family("mesh_endpoints", Kind::Gauge, "Endpoints in the view, by state.");
    for (state, n) in endpoints {
        out.sample(&[("state", state)], count_value(n));
    }
    traffic(out, membership);
}

fn traffic(out: &mut Exposition, membership: &Membership) {
    let traffic = membership.traffic();
    let flows: [(&str, &str, Flow); 4] = [
        ("sent", "datagram", traffic.datagrams_sent),
        ("received", "datagram", traffic.datagrams_received),
        ("sent", "stream", traffic.streams_sent),
        ("received", "stream", traffic.streams_received),
    ];
    out.family("mesh_gossip_messages_total", Kind::Counter, "Frames exchanged with members (SWIM, records, sync).");
    for (direction, channel, flow) in flows {
        out.sample(&[("direction", direction), ("channel", channel)], count_value(flow.frames));
    }
    out.family("mesh_gossip_message_bytes_total", Kind::Counter, "Payload bytes of the frames exchanged with members.");
    for (direction, channel, flow) in flows {
        out.sample(&[("direction", direction), ("channel", channel)], count_value(flow.bytes));
    }
    let wire: [(&str, Wire); 2] = [("sent", traffic.wire_sent), ("received", traffic.wire_received)];
    out.family(
        "mesh_gossip_udp_bytes_total",
        Kind::Counter,
        "UDP payload bytes QUIC exchanged with members (encryption, acknowledgements and keep-alives included).",
    );
    for (direction, wire) in wire {
        out.sample(&[("direction", direction)], count_value(wire.bytes));
    }
    out.family("mesh_gossip_udp_datagrams_total", Kind::Counter, "UDP datagrams QUIC exchanged with members.");
    for (direction, wire) in wire {
        out.sample(&[("direction", direction)], count_value(wire.datagrams));
    }
    out.family("mesh_gossip_connections", Kind::Gauge, "QUIC connections open to members.")
        .sample(&[], count_value(as_count(traffic.connections)));
}

fn dataplane(out: &mut Exposition, metrics: &Metrics) {
    let d = &metrics.dataplane;
    let read = |counter: &std::sync::atomic::AtomicU64| count_value(counter.load(Ordering::Relaxed));
    out.family("mesh_reconcile_runs_total", Kind::Counter, "Passes of the reconciler over the kernel.")
        .sample(&[], read(&d.runs));
    out.family("mesh_reconcile_errors_total", Kind::Counter, "What the reconciler failed to do (a pass goes on).")
        .sample(&[], read(&d.errors));
    out.family("mesh_kernel_changes_total", Kind::Counter, "Devices and entries the reconciler set or removed.")
        .sample(&[("change", "set")], read(&d.set))
        .sample(&[("change", "removed")], read(&d.removed));
    out.family(
        "mesh_kernel_remote_endpoints",
        Kind::Gauge,
        "Endpoints of other hosts programmed in this host's kernel (an FDB and a neighbour entry each).",
    )
    .sample(&[], read(&d.remote_endpoints));
    out.family(
        "mesh_convergence_lag_seconds",
        Kind::Histogram,
        "From an endpoint's creation on its host to its entries in this host's kernel (clocks of both hosts).",
    )
    .histogram(&[], &d.lag.snapshot());
}

fn dns(out: &mut Exposition, metrics: &Metrics) {
    out.family("mesh_dns_queries_total", Kind::Counter, "DNS packets handled, by answer source and response code.");
    for (s, source) in DNS_SOURCES.iter().enumerate() {
        for (r, result) in DNS_RESULTS.iter().enumerate() {
            let n = metrics.dns.answers(s, r);
            out.sample(&[("source", source), ("result", result)], count_value(n));
        }
    }
    out.family("mesh_dns_query_duration_seconds", Kind::Histogram, "Time to answer a DNS query, by answer source.");
    for (s, source) in DNS_SOURCES.iter().enumerate() {
        out.histogram(&[("source", source)], &metrics.dns.latency(s));
    }
}
