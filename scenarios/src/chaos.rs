//! The chaos suite's bookkeeping: sandboxes churned on a lab network while
//! faults are on, the state every host must converge to once they clear
//! (computed from what the churn did, not read from any agent), and the
//! check of each host's view and kernel tables against it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::lab::{host_ip, Lab};

/// Most sandboxes the churn keeps at once; beyond it, it removes the oldest.
const MAX_LIVE: usize = 8;

/// Sandboxes created and removed on one overlay network, and what every
/// host must show for them.
#[derive(Debug)]
pub struct Churn {
    network: String,
    device: String,
    /// Live sandboxes: name → the host that created it, oldest first by
    /// the number in their name.
    live: BTreeMap<u32, (String, usize)>,
    next: u32,
    /// Hosts the churn leaves alone (frozen or restarting agents).
    skip: BTreeSet<usize>,
}

impl Churn {
    /// Churn on `network`, whose VXLAN device is `mvx{vni}`.
    pub fn new(network: &str, vni: u32) -> Self {
        Self {
            network: network.to_owned(),
            device: format!("mvx{vni}"),
            live: BTreeMap::new(),
            next: 0,
            skip: BTreeSet::new(),
        }
    }

    /// Leaves host `i` alone (`true`) or churns on it again (`false`).
    pub fn skip(&mut self, i: usize, skipped: bool) {
        if skipped {
            self.skip.insert(i);
        } else {
            self.skip.remove(&i);
        }
    }

    /// One step: removes the oldest sandbox if `MAX_LIVE` are up (on its
    /// own host, if that host is churned), else creates one on the next
    /// churned host. Commands go to the local agent, which answers whatever
    /// the network does.
    pub fn step(&mut self, lab: &Lab) -> anyhow::Result<()> {
        if self.live.len() >= MAX_LIVE {
            let oldest = self.live.iter().find(|(_, (_, host))| !self.skip.contains(host)).map(|(k, _)| *k);
            if let Some(key) = oldest {
                let (name, host) = self.live.remove(&key).context("the oldest sandbox")?;
                lab.mesh_ok(host, &["sandbox", "rm", &name])?;
                return Ok(());
            }
        }
        let hosts: Vec<usize> = (1..=lab.len()).filter(|i| !self.skip.contains(i)).collect();
        let Some(&host) = hosts.get(self.next as usize % hosts.len().max(1)) else { return Ok(()) };
        let name = format!("c{}", self.next);
        lab.mesh_ok(host, &["sandbox", "create", &name, "--network", &self.network])?;
        self.live.insert(self.next, (name, host));
        self.next += 1;
        Ok(())
    }

    /// Number of sandboxes that should be up.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no sandbox should be up.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Whether every host shows exactly the expected state: the same view
    /// everywhere holding each live sandbox once, active, owned by its
    /// host, with distinct addresses; and on each host holding a sandbox
    /// an FDB entry (MAC → owner's underlay address) and a neighbour entry
    /// for every remote sandbox, and nothing else (nothing at all on a
    /// host holding none).
    pub fn converged(&self, lab: &Lab) -> anyhow::Result<bool> {
        let first = self.inspect(lab, 1)?;
        for i in 2..=lab.len() {
            if self.inspect(lab, i)? != first {
                return Ok(false);
            }
        }
        let endpoints = first["endpoints"].as_array().context("endpoints")?;
        let mut seen = BTreeMap::new();
        for endpoint in endpoints {
            let name = endpoint["name"].as_str().context("name")?;
            let ip = endpoint["ip"].as_str().context("ip")?;
            let mac = endpoint["mac"].as_str().context("mac")?;
            if endpoint["state"] != "active" || seen.insert(name.to_owned(), (ip.to_owned(), mac.to_owned())).is_some()
            {
                return Ok(false);
            }
        }
        let expected: BTreeMap<&str, usize> = self.live.values().map(|(name, host)| (name.as_str(), *host)).collect();
        if seen.keys().map(String::as_str).ne(expected.keys().copied()) {
            return Ok(false);
        }
        let ips: BTreeSet<&String> = seen.values().map(|(ip, _)| ip).collect();
        ensure!(ips.len() == seen.len(), "two sandboxes share an address: {seen:?}");
        for i in 1..=lab.len() {
            // A host builds a network only while it holds a sandbox on it,
            // as Docker's overlay does: with none, its tables stay empty.
            let holds_one = expected.values().any(|&host| host == i);
            let remote = expected.iter().filter(|(_, &host)| holds_one && host != i);
            let want_neigh: BTreeSet<String> = remote.clone().map(|(name, _)| seen[*name].0.clone()).collect();
            let want_fdb: BTreeSet<String> =
                remote.map(|(name, &host)| format!("{} dst {}", seen[*name].1, host_ip(host))).collect();
            if lab.vxlan_tables(i, &self.device)? != (want_fdb, want_neigh) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What each host shows, for a report when [`Churn::converged`] never
    /// came true: the expected sandboxes, then each host's endpoint rows
    /// and VXLAN tables.
    pub fn describe(&self, lab: &Lab) -> String {
        let mut out = format!("expected: {:?}\n", self.live.values().collect::<Vec<_>>());
        for i in 1..=lab.len() {
            let rows: Vec<String> = self.inspect(lab, i).map_or_else(
                |e| vec![format!("inspect failed: {e}")],
                |view| {
                    view["endpoints"]
                        .as_array()
                        .map(|endpoints| {
                            endpoints
                                .iter()
                                .map(|e| format!("{} {} {} {}", e["name"], e["ip"], e["node"], e["state"]))
                                .collect()
                        })
                        .unwrap_or_default()
                },
            );
            out.push_str(&format!("h{i} view: {rows:?}\n"));
            match lab.vxlan_tables(i, &self.device) {
                Ok((fdb, neigh)) => out.push_str(&format!("h{i} fdb: {fdb:?}\nh{i} neigh: {neigh:?}\n")),
                Err(e) => out.push_str(&format!("h{i} tables: {e}\n")),
            }
        }
        out
    }

    /// `mesh network inspect` on host `i`, as JSON.
    fn inspect(&self, lab: &Lab, i: usize) -> anyhow::Result<Value> {
        let out = lab.mesh_ok(i, &["network", "inspect", &self.network, "--format", "json"])?;
        serde_json::from_str(&out).context("inspect prints JSON")
    }
}

/// How many "member down" verdicts the agents logged about hosts other
/// than `faulted` (hosts the fault could rightly get declared down).
pub fn false_verdicts(lab: &Lab, faulted: &[usize]) -> usize {
    let healthy: Vec<String> =
        (1..=lab.len()).filter(|i| !faulted.contains(i)).map(|i| format!("member=h{i}(")).collect();
    (1..=lab.len())
        .map(|i| {
            lab.log_tail(i, usize::MAX)
                .lines()
                .filter(|line| line.contains("member down") && healthy.iter().any(|h| line.contains(h.as_str())))
                .count()
        })
        .sum()
}
