//! The membership and record core in the simulator: virtual time, no
//! sockets, the same code the agent runs. No root needed.

use std::net::Ipv4Addr;
use std::time::Duration;

use mesh_membership::core::CoreError;
use mesh_membership::core::SYNC_EVERY;
use mesh_membership::records::{EndpointSpec, NetworkSpec, RecordKey};
use mesh_membership::{Core, Status};
use mesh_scenarios::sim::{identity, Sim, SimConfig};

fn formed(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    sim.join_all_through_first();
    sim.run_for(Duration::from_secs(3));
    sim
}

fn network(name: &str, vni: u32, subnet: &str, created_ms: u64) -> NetworkSpec {
    NetworkSpec::overlay(name, vni, subnet.parse().expect("subnet"), created_ms)
}

fn endpoint(network: &str, ip: Ipv4Addr) -> EndpointSpec {
    EndpointSpec { aliases: vec!["svc".into()], ..EndpointSpec::allocated(network, ip, 1) }
}

/// Has node `origin` publish an endpoint; returns when the last node got
/// it, if every node did within `within`.
fn last_arrival(sim: &mut Sim, origin: usize, within: Duration) -> Option<Duration> {
    let delays =
        sim.spread_endpoint(origin, "web", endpoint("dev", Ipv4Addr::new(10, 1, 0, 5)), within).expect("published");
    delays.iter().copied().collect::<Option<Vec<_>>>()?.into_iter().max()
}

fn roots(sim: &Sim) -> Vec<Option<u64>> {
    (0..sim.len()).map(|i| sim.get(i).map(Core::records_root)).collect()
}

#[test]
fn joins_through_one_member_reach_everyone() {
    let sim = formed(8, 1);
    for observer in 0..8 {
        for of in 0..8 {
            assert_eq!(sim.status(observer, of), Some(Status::Alive), "n{observer} on n{of}");
        }
    }
}

#[test]
fn graceful_leave_is_left_and_a_crash_is_down() {
    let mut sim = formed(5, 2);
    sim.with_node(3, |core, now| core.leave(now)).expect("leave");
    sim.crash(4);
    sim.run_for(Duration::from_millis(50));
    for observer in 0..3 {
        assert_eq!(sim.status(observer, 3), Some(Status::Left), "n{observer} sees n3 left at once");
    }
    sim.run_for(Duration::from_secs(15));
    for observer in 0..3 {
        assert_eq!(sim.status(observer, 3), Some(Status::Left), "n3 stays left");
        assert_eq!(sim.status(observer, 4), Some(Status::Down), "n{observer} sees n4 down");
    }
    sim.restart(4);
    sim.join(4, 0);
    sim.run_for(Duration::from_secs(3));
    for observer in 0..3 {
        assert_eq!(sim.status(observer, 4), Some(Status::Alive), "n{observer} sees n4 back");
    }
    assert_eq!(sim.false_downs(), 0);
}

#[test]
fn a_packet_naming_another_sender_is_refused() {
    let mut sim = Sim::new(SimConfig::new(2, 3));
    let now = sim.now();
    sim.node(1).announce(now, identity(0, 0)).expect("announce");
    let announce = sim.node(1).poll_transmit().expect("an announce to send");
    let err = sim.node(0).handle_datagram(now, identity(7, 0).id, &announce.payload).expect_err("spoofed");
    assert!(matches!(err, CoreError::Spoofed { .. }), "{err}");
    assert_eq!(sim.status(0, 1), None, "the spoofed announce added nobody");
    assert!(sim.node(0).handle_datagram(now, identity(1, 0).id, b"\x01garbage").is_err());
}

#[test]
fn a_late_joiner_learns_every_member_even_past_one_feed_packet() {
    // 40 members do not fit one SWIM feed (about 30 do): the member list a
    // joiner asks for fills in the rest at once.
    let mut sim = Sim::new(SimConfig::new(41, 4));
    for i in 1..40 {
        sim.join(i, 0);
    }
    sim.run_for(Duration::from_secs(5));
    sim.join(40, 0);
    sim.run_for(Duration::from_millis(20));
    let known = (0..40).filter(|&of| sim.status(40, of) == Some(Status::Alive)).count();
    assert_eq!(known, 40, "the late joiner knows everyone within a few round trips");
}

#[test]
fn a_change_reaches_every_node_in_one_push() {
    let mut sim = formed(20, 5);
    let last = last_arrival(&mut sim, 7, Duration::from_secs(1)).expect("every node holds the change");
    assert!(last <= Duration::from_millis(3), "one push: {last:?}");
    assert_eq!(roots(&sim).iter().collect::<std::collections::HashSet<_>>().len(), 1);
}

#[test]
fn a_healed_partition_converges_on_one_winner_everywhere() {
    let mut sim = formed(5, 6);
    sim.partition(vec![0, 0, 1, 1, 1]);
    sim.run_for(Duration::from_secs(20));
    // Both sides create "dev", with different subnets, and endpoints on it.
    sim.with_node(0, |core, now| core.create_network(now, network("dev", 100, "10.1.0.0/24", 1000))).expect("left dev");
    sim.with_node(3, |core, now| core.create_network(now, network("dev", 200, "10.2.0.0/24", 2000)))
        .expect("right dev");
    sim.with_node(1, |core, now| core.put_endpoint(now, "a", endpoint("dev", Ipv4Addr::new(10, 1, 0, 5)))).expect("a");
    sim.with_node(4, |core, now| core.put_endpoint(now, "b", endpoint("dev", Ipv4Addr::new(10, 2, 0, 5)))).expect("b");
    sim.run_for(Duration::from_secs(1));
    assert_ne!(roots(&sim)[0], roots(&sim)[4], "the sides differ while cut");
    sim.heal();
    sim.run_for(Duration::from_secs(10) + SYNC_EVERY);
    let roots = roots(&sim);
    assert!(roots.iter().all(|r| *r == roots[0]), "every store converged: {roots:?}");
    for i in 0..5 {
        let view = sim.node(i).view();
        let dev = view.network("dev").expect("dev exists");
        assert_eq!(dev.spec.vni, 100, "the first created wins on n{i}");
        assert_eq!(dev.endpoints.len(), 2, "no endpoint lost on n{i}");
        assert_eq!(view.lost.len(), 1, "the loser is reported on n{i}");
    }
    assert_eq!(sim.false_downs(), 0);
}

#[test]
fn a_node_cut_off_during_changes_catches_up_by_sync() {
    let mut sim = formed(6, 7);
    sim.partition(vec![0, 0, 0, 0, 0, 1]);
    // Shorter than failure detection: nobody is declared down, so only
    // sync (not a member coming back up) can bring the change over.
    let record = sim
        .with_node(2, |core, now| core.put_endpoint(now, "web", endpoint("dev", Ipv4Addr::new(10, 1, 0, 9))))
        .expect("published");
    sim.run_for(Duration::from_millis(500));
    sim.heal();
    sim.watch(record.key.clone(), record.version);
    let caught_up = sim.run_until(SYNC_EVERY * 2 + Duration::from_secs(1), |sim| sim.arrivals()[5].is_some());
    assert!(caught_up, "the cut node holds the change within a sync round or gossip");
}

#[test]
fn two_members_that_come_back_to_each_other_at_once_send_their_records_once() {
    const EACH: usize = 300;
    let mut sim = formed(2, 12);
    sim.partition(vec![0, 1]);
    sim.run_for(Duration::from_secs(12));
    assert_eq!(sim.status(0, 1), Some(Status::Down), "the cut is found");
    for (node, third) in [(0, 1), (1, 2)] {
        for k in 0..EACH {
            let ip = Ipv4Addr::new(10, third, (k / 200) as u8, (k % 200 + 2) as u8);
            sim.with_node(node, |core, now| core.put_endpoint(now, &format!("e{k}"), endpoint("dev", ip)))
                .expect("published");
        }
    }
    let one_copy: u64 = (0..2).flat_map(|i| sim.node(i).records()).map(|r| postcard_len(&r)).sum();
    let before = sim.traffic().bytes_by_kind[SYNC_RECORDS];
    sim.heal();
    // Alone, each re-announces to the members it knew (the agent's driver does).
    sim.join(1, 0);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.status(0, 1), Some(Status::Alive), "n1 is back");
    let roots = roots(&sim);
    assert_eq!(roots[0], roots[1], "both hold every record");
    let sent = sim.traffic().bytes_by_kind[SYNC_RECORDS] - before;
    // Both come up to each other at once and start a round each; each
    // round asks for the same buckets.
    assert!(sent < one_copy * 3 / 2, "sync sent {sent} bytes of records; one copy is {one_copy}");
}

/// The frame kind (its variant's index) of a page of records.
const SYNC_RECORDS: usize = 8;

fn postcard_len(record: &mesh_membership::records::Record) -> u64 {
    postcard::to_allocvec(record).map_or(0, |bytes| bytes.len() as u64)
}

#[test]
fn a_restarted_owner_restores_its_endpoints_and_retracts_forgotten_ones() {
    let mut sim = formed(4, 8);
    sim.with_node(1, |core, now| core.put_endpoint(now, "kept", endpoint("dev", Ipv4Addr::new(10, 1, 0, 2))))
        .expect("kept");
    sim.with_node(1, |core, now| core.put_endpoint(now, "forgotten", endpoint("dev", Ipv4Addr::new(10, 1, 0, 3))))
        .expect("forgotten");
    sim.run_for(Duration::from_millis(100));
    // The restart keeps "kept" (persisted) but not "forgotten".
    let mut owned = sim.node(1).owned();
    owned.endpoints.retain(|r| matches!(&r.key, RecordKey::Endpoint { name, .. } if name == "kept"));
    sim.crash(1);
    sim.run_for(Duration::from_millis(200));
    sim.restart(1).restore(owned);
    sim.join(1, 0);
    sim.run_for(Duration::from_secs(3));
    let key = |name: &str| RecordKey::Endpoint { owner: identity(1, 0).id, name: name.into(), network: "dev".into() };
    for i in 0..4 {
        let core = sim.node(i);
        assert!(core.record(&key("kept")).is_some_and(|r| !r.is_deleted()), "n{i} keeps the persisted endpoint");
        assert!(core.record(&key("forgotten")).is_some_and(|r| r.is_deleted()), "n{i} drops the forgotten one");
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut config = SimConfig::new(12, seed);
        config.loss = 0.05;
        config.jitter = Duration::from_millis(3);
        let mut sim = Sim::new(config);
        sim.join_all_through_first();
        sim.run_for(Duration::from_secs(5));
        sim.traffic()
    };
    assert_eq!(run(9), run(9));
}

#[test]
fn a_change_reaches_a_large_cluster_through_relays_and_gossip() {
    // Above the direct-push limit the origin pushes to a few members, who
    // relay; gossip and sync catch what lost datagrams missed.
    let mut config = SimConfig::new(300, 10);
    config.loss = 0.01;
    let mut sim = Sim::new(config);
    sim.bootstrap();
    sim.run_for(Duration::from_secs(2));
    assert!(last_arrival(&mut sim, 17, Duration::from_secs(2)).is_some(), "every node holds the change within 2 s");
    assert_eq!(sim.false_downs(), 0);
}

#[test]
fn ten_thousand_nodes_hold_a_change_within_a_few_hops() {
    // SWIM cannot run 10,000 full member lists in one process: the record
    // layer runs alone, its peers from an oracle.
    let mut config = SimConfig::new(10_000, 11);
    config.loss = 0.01;
    let mut sim = Sim::new(config);
    sim.use_peer_oracle();
    let last = last_arrival(&mut sim, 4321, Duration::from_secs(10)).expect("every node holds the change");
    assert!(last < Duration::from_secs(1), "took {last:?}");
}

/// A formed cluster of `n` on a lossy, slow network: `loss` of the
/// datagrams dropped, each frame delayed 50 to 200 ms.
fn lossy_wan(n: usize, loss: f64, seed: u64) -> Sim {
    let mut config = SimConfig::new(n, seed);
    config.loss = loss;
    config.latency = Duration::from_millis(50);
    config.jitter = Duration::from_millis(150);
    let mut sim = Sim::new(config);
    sim.join_all_through_first();
    sim.run_for(Duration::from_secs(10));
    sim
}

/// How long until every running node but `crashed` sees it down.
fn detection_time(sim: &mut Sim, crashed: usize, within: Duration) -> Option<Duration> {
    let start = sim.now();
    sim.crash(crashed);
    let others: Vec<usize> = (0..sim.len()).filter(|&i| i != crashed).collect();
    let seen = sim.run_until(within, |sim| others.iter().all(|&i| sim.status(i, crashed) == Some(Status::Down)));
    seen.then(|| sim.now() - start)
}

#[test]
fn loss_and_wan_delay_bring_no_false_verdict_and_a_crash_is_still_found() {
    for (loss, seed) in [(0.1, 21), (0.3, 22)] {
        let mut sim = lossy_wan(20, loss, seed);
        sim.run_for(Duration::from_secs(600));
        assert_eq!(sim.false_downs(), 0, "false verdicts in 10 minutes at {loss} loss");
        let found = detection_time(&mut sim, 7, Duration::from_secs(60));
        eprintln!("loss {loss}: crash found everywhere after {found:?}");
        assert!(found.is_some(), "a crash is found at {loss} loss");
    }
}

#[test]
fn a_frozen_agent_that_resumes_accuses_nobody_and_within_the_suspicion_time_stays_up() {
    let mut sim = lossy_wan(20, 0.1, 23);
    // Shorter than the least suspicion time (4.55 s on 20 nodes): no verdict at all.
    for _ in 0..10 {
        sim.freeze(19);
        sim.run_for(Duration::from_secs(3));
        sim.resume(19);
        sim.run_for(Duration::from_secs(27));
    }
    assert_eq!(sim.false_downs(), 0, "verdicts about the frozen node or by it");
    // At the edge of it: the node may be declared down (a probe lost just
    // before it froze starts the suspicion early), but accuses nobody.
    for _ in 0..10 {
        sim.freeze(19);
        sim.run_for(Duration::from_secs(5));
        sim.resume(19);
        sim.run_for(Duration::from_secs(25));
    }
    let about_frozen = sim.false_downs_about(19);
    eprintln!("5 s freezes: {about_frozen} verdicts about the frozen node");
    assert_eq!(sim.false_downs() - about_frozen, 0, "verdicts by the frozen node about others");
}

#[test]
fn a_cpu_starved_agent_accuses_nobody_and_stays_up() {
    // Like a cgroup's CPU quota: 20 ms of every second to run.
    let mut sim = lossy_wan(20, 0.1, 24);
    for _ in 0..600 {
        sim.run_for(Duration::from_millis(20));
        sim.freeze(19);
        sim.run_for(Duration::from_millis(980));
        sim.resume(19);
    }
    assert_eq!(sim.false_downs(), 0, "verdicts about the starved node or by it");
}
