//! What a member with a valid certificate cannot do to the others (see
//! SECURITY.md): the real `mesh` binary on lab hosts, with one host's
//! credentials used by the test as a rogue member. Needs root.

use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_membership::records::{EndpointSpec, NetworkId, NetworkSpec, Record, RecordKey, Value};
use mesh_membership::wire::Frame;
use mesh_membership::Owned;
use mesh_scenarios::{rogue, Lab};
use serde_json::Value as Json;

/// Generous bound on convergence waits: a bound on the test, not a
/// performance claim.
const CONVERGE: Duration = Duration::from_secs(30);

/// `mesh network inspect NAME --format json` on host `i`.
fn inspect(lab: &Lab, i: usize, network: &str) -> anyhow::Result<Json> {
    let out = lab.mesh_ok(i, &["network", "inspect", network, "--format", "json"])?;
    serde_json::from_str(&out).context("inspect prints JSON")
}

/// `(name, ip, node, state)` of every endpoint of `network` on host `i`.
fn endpoints(lab: &Lab, i: usize, network: &str) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let text = |v: &Json| v.as_str().unwrap_or_default().to_owned();
    let mut rows: Vec<_> = inspect(lab, i, network)?["endpoints"]
        .as_array()
        .context("inspect lists endpoints")?
        .iter()
        .map(|e| (text(&e["name"]), text(&e["ip"]), text(&e["node"]), text(&e["state"])))
        .collect();
    rows.sort();
    Ok(rows)
}

/// Host `i`'s saved endpoint called `name`, as its agent signed it.
fn saved_endpoint(lab: &Lab, i: usize, name: &str) -> anyhow::Result<Record> {
    let owned: Owned = serde_json::from_slice(&std::fs::read(lab.data_dir(i).join("records.json"))?)?;
    owned
        .endpoints
        .into_iter()
        .find(|r| matches!(&r.key, RecordKey::Endpoint { name: n, .. } if n == name))
        .with_context(|| format!("host {i} saved {name}"))
}

#[test]
fn a_member_cannot_forge_alter_or_delete_another_members_records() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev"])?;
    lab.wait_for("dev on every host", CONVERGE, |lab| Ok((1..=3).all(|i| inspect(lab, i, "dev").is_ok())))?;
    lab.mesh_ok(1, &["sandbox", "create", "web", "--network", "dev"])?;
    lab.wait_for("web active on h2", CONVERGE, |lab| {
        Ok(endpoints(lab, 2, "dev")?.iter().any(|e| e.0 == "web" && e.3 == "active"))
    })?;
    let before = endpoints(&lab, 2, "dev")?;

    // h3 turns rogue: with its own valid certificate and key it tells h2
    // things about h1's records that h1 never said.
    let rogue_key = rogue::node_key(&lab, 3)?;
    let h1 = rogue::node_key(&lab, 1)?.id();
    let genuine = saved_endpoint(&lab, 1, "web")?;
    let Value::Endpoint(spec) = &genuine.value else { anyhow::bail!("web is an endpoint") };
    let moved = Value::Endpoint(EndpointSpec { ip: Some("10.0.0.99".parse()?), ..spec.clone() });
    let far_ahead = genuine.version + 1_000;
    // 1. h1's endpoint moved to another address, signed by the rogue.
    let hijack = Record::signed(genuine.key.clone(), far_ahead, moved.clone(), &rogue_key);
    // 2. The same, carrying h1's genuine seal.
    let altered = Record { version: far_ahead, value: moved, ..genuine.clone() };
    // 3. h1's endpoint deleted, signed by the rogue.
    let deleted = Record::signed(genuine.key.clone(), far_ahead, Value::Deleted { at_ms: 1 }, &rogue_key);
    // 4. A sandbox published in h1's name.
    let planted_key = RecordKey::Endpoint { owner: h1, name: "planted".into(), network: "dev".into() };
    let planted_spec = EndpointSpec { ip: Some("10.0.0.98".parse()?), ..spec.clone() };
    let planted = Record::signed(planted_key, far_ahead, Value::Endpoint(planted_spec), &rogue_key);
    // 5. A network defined in h1's name.
    let spec_of = |name: &str, vni: u32| {
        NetworkSpec::overlay(name, vni, format!("10.{}.0.0/24", vni % 200).parse().expect("subnet"), 1)
    };
    let h1_net = RecordKey::Network(NetworkId { creator: h1, serial: far_ahead });
    let impersonated = Record::signed(h1_net, 1, Value::Network(spec_of("impersonated", 4242)), &rogue_key);
    // The control: what any member may do, a network of its own, sent last
    // on the same connection. Seeing it on h2 shows the forgeries arrived.
    let own_net = RecordKey::Network(NetworkId { creator: rogue_key.id(), serial: far_ahead });
    let control = Record::signed(own_net, 1, Value::Network(spec_of("rogue-own", 4243)), &rogue_key);
    let forgeries = vec![hijack, altered, deleted, planted, impersonated];
    // h1 would correct forgeries of its own records as soon as it heard of
    // them; frozen, it cannot, so what h2 shows is h2's own judgement.
    lab.freeze(1, true)?;
    let sent = rogue::send_as(
        &lab,
        3,
        2,
        &[Frame::Records(forgeries.clone()), Frame::SyncRecords(forgeries), Frame::Records(vec![control])],
    );
    let seen = sent.and_then(|()| {
        lab.wait_for("the rogue's own network on h2", CONVERGE, |lab| Ok(inspect(lab, 2, "rogue-own").is_ok()))?;
        endpoints(&lab, 2, "dev")
    });
    lab.freeze(1, false)?;
    // Nothing forged took: not on h2, and not anywhere a sync later.
    let seen = seen?;
    ensure!(seen == before, "h2 shows only h1's own word: {seen:?}");
    std::thread::sleep(Duration::from_secs(6));
    for i in 1..=3 {
        ensure!(
            endpoints(&lab, i, "dev")? == before,
            "h{i} shows only h1's own word: {:?}",
            endpoints(&lab, i, "dev")?
        );
        ensure!(inspect(&lab, i, "impersonated").is_err(), "h{i} has no network defined in h1's name");
    }
    let log = lab.log_tail(2, 400);
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("forged record")).collect();
    ensure!(refusals.len() >= 10, "h2 logs each forgery, both times: {refusals:#?}");
    ensure!(refusals.iter().all(|l| l.contains(&rogue_key.id().to_string())), "naming the rogue: {refusals:#?}");
    println!("h2 refused {} forged records from h3, e.g.\n{}", refusals.len(), refusals[0]);
    Ok(())
}
