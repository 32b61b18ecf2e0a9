//! What the records mean once merged: for each network name the one network
//! that won, its endpoints, and every conflict with the rule that settled
//! it; the members' ends of the encrypted data plane and the cluster's
//! encryption policy. The view is a pure function of the records and of the owners'
//! liveness, so every host that holds the same records and sees the same
//! members derives the same view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::store::Store;
use super::{usable, EndpointSpec, MemberSpec, NetworkId, NetworkSpec, PolicySpec, RecordKey, Value};
use crate::identity::{NodeId, Status};

/// A network that won its name, VNI and subnet, with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// Its id.
    pub id: NetworkId,
    /// Its definition.
    pub spec: NetworkSpec,
    /// Its endpoints, by name then owner.
    pub endpoints: Vec<EndpointView>,
}

/// A network that lost to another, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostNetwork {
    /// Its id.
    pub id: NetworkId,
    /// Its definition.
    pub spec: NetworkSpec,
    /// The network it lost to.
    pub winner: NetworkId,
    /// What it lost: its name, VNI or subnet.
    pub reason: String,
}

/// One endpoint and whether it is in service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// The host it lives on.
    pub owner: NodeId,
    /// Its name.
    pub name: String,
    /// Its record's version.
    pub version: u64,
    /// Its definition.
    pub spec: EndpointSpec,
    /// Whether it is in service.
    pub state: EndpointState,
}

/// Whether an endpoint is in service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointState {
    /// Its owner is alive and its address is its own.
    Active,
    /// Its owner is down: not answered in DNS; restored if the owner returns.
    OwnerDown,
    /// Its owner left the cluster: withdrawn.
    OwnerLeft,
    /// Its address is taken by another endpoint that won, or is not usable
    /// on its network; its owner gives it a new one unless it is static.
    Conflict(String),
}

/// The merged view of every record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The winning network of each name.
    pub networks: BTreeMap<String, NetworkView>,
    /// Networks that lost their name, VNI or subnet to another.
    pub lost: Vec<LostNetwork>,
    /// Endpoints whose network does not exist (deleted while its owner was
    /// cut off), with their owner's liveness.
    pub orphans: Vec<EndpointView>,
    /// The member records of members not removed.
    #[serde(default)]
    members: BTreeMap<NodeId, MemberSpec>,
    /// The encryption policy, if a member ever set one.
    #[serde(default)]
    policy: Option<PolicySpec>,
    /// The members removed from the cluster.
    #[serde(default)]
    removed: BTreeSet<NodeId>,
}

impl View {
    /// Derives the view from `store`. `status` tells each owner's liveness
    /// (this node's own id must answer [`Status::Alive`]); an owner it does
    /// not know counts as down.
    pub fn derive(store: &Store, status: &HashMap<NodeId, Status>) -> Self {
        let mut networks: Vec<(NetworkId, &NetworkSpec)> = Vec::new();
        let mut endpoints: BTreeMap<&str, Vec<EndpointView>> = BTreeMap::new();
        let mut view = Self::default();
        for record in store.iter() {
            match (&record.key, &record.value) {
                (RecordKey::Network(id), Value::Network(spec)) => networks.push((*id, spec)),
                (RecordKey::Member(id), Value::Member(spec)) if !store.is_removed(*id) => {
                    view.members.insert(*id, *spec);
                }
                (RecordKey::Policy, Value::Policy(spec)) => view.policy = Some(*spec),
                (RecordKey::Removed(id), _) => {
                    view.removed.insert(*id);
                }
                // A removed member's endpoints are withdrawn at once.
                (RecordKey::Endpoint { owner, .. }, _) if store.is_removed(*owner) => {}
                (RecordKey::Endpoint { owner, name, .. }, Value::Endpoint(spec)) => {
                    let state = match status.get(owner).copied().unwrap_or(Status::Down) {
                        Status::Alive | Status::Suspect => EndpointState::Active,
                        Status::Down => EndpointState::OwnerDown,
                        Status::Left => EndpointState::OwnerLeft,
                    };
                    let view = EndpointView {
                        owner: *owner,
                        name: name.clone(),
                        version: record.version,
                        spec: spec.clone(),
                        state,
                    };
                    endpoints.entry(spec.network.as_str()).or_default().push(view);
                }
                _ => {}
            }
        }
        view.settle_networks(networks);
        for (network, mut members) in endpoints {
            match view.networks.get_mut(network) {
                Some(winner) => {
                    settle_addresses(&winner.spec, &mut members);
                    winner.endpoints = members;
                }
                None => view.orphans.extend(members),
            }
        }
        view
    }

    /// The member records (what each member announces for the encrypted
    /// data plane) of the members not removed, whatever their liveness.
    pub fn members(&self) -> &BTreeMap<NodeId, MemberSpec> {
        &self.members
    }

    /// The members removed from the cluster (for good: nothing they sign
    /// is taken).
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    /// The encryption policy, if a member ever set one (none: networks are
    /// plaintext unless created encrypted).
    pub fn policy(&self) -> Option<&PolicySpec> {
        self.policy.as_ref()
    }

    /// The winning network called `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkView> {
        self.networks.get(name)
    }

    /// The networks that lost to `name`'s winner, or that carry that name
    /// and lost their VNI or subnet.
    pub fn conflicts_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a LostNetwork> + 'a {
        let winner = self.networks.get(name).map(|n| n.id);
        self.lost.iter().filter(move |l| l.spec.name == name || Some(l.winner) == winner)
    }

    /// Every endpoint of every network, orphans included.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointView> {
        self.networks.values().flat_map(|n| n.endpoints.iter()).chain(&self.orphans)
    }

    /// Accepts networks oldest first; a later one loses if its name, VNI or
    /// subnet is already taken by an accepted one.
    fn settle_networks(&mut self, mut candidates: Vec<(NetworkId, &NetworkSpec)>) {
        candidates.sort_by_key(|(id, spec)| (spec.created_ms, *id));
        let mut by_vni: HashMap<u32, NetworkId> = HashMap::new();
        let mut subnets: Vec<(Ipv4Net, NetworkId)> = Vec::new();
        for (id, spec) in candidates {
            let taken = if let Some(winner) = self.networks.get(&spec.name) {
                Some((winner.id, format!("its name: network {} was created first (id {})", spec.name, winner.id)))
            } else if let Some(&winner) = by_vni.get(&spec.vni) {
                Some((winner, format!("VNI {} is taken by network {}", spec.vni, self.name_of(winner))))
            } else if let Some(&(subnet, winner)) =
                spec.subnet.and_then(|s| subnets.iter().find(|(o, _)| overlap(*o, s)))
            {
                Some((winner, format!("its subnet overlaps {subnet} of network {}", self.name_of(winner))))
            } else {
                None
            };
            match taken {
                Some((winner, reason)) => self.lost.push(LostNetwork { id, spec: spec.clone(), winner, reason }),
                None => {
                    if spec.driver.is_bridged() {
                        by_vni.insert(spec.vni, id);
                    }
                    subnets.extend(spec.subnet.map(|s| (s, id)));
                    let network = NetworkView { id, spec: spec.clone(), endpoints: Vec::new() };
                    self.networks.insert(spec.name.clone(), network);
                }
            }
        }
    }

    fn name_of(&self, id: NetworkId) -> &str {
        self.networks.values().find(|n| n.id == id).map_or("?", |n| n.spec.name.as_str())
    }
}

/// Marks the active endpoints whose address is unusable on `network` or
/// held by an endpoint that wins: static before allocated, then oldest,
/// then by owner and name. Sorts the endpoints by name then owner.
fn settle_addresses(network: &NetworkSpec, endpoints: &mut [EndpointView]) {
    endpoints.sort_by(|a, b| {
        (!a.spec.static_ip, a.spec.created_ms, a.owner, &a.name).cmp(&(
            !b.spec.static_ip,
            b.spec.created_ms,
            b.owner,
            &b.name,
        ))
    });
    let mut holders: HashMap<Ipv4Addr, usize> = HashMap::new();
    for i in 0..endpoints.len() {
        if endpoints[i].state != EndpointState::Active {
            continue;
        }
        let conflict = match (network.subnet, endpoints[i].spec.ip) {
            (None, None) => None,
            (None, Some(ip)) => Some(format!("network {} has no subnet for address {ip}", network.name)),
            (Some(subnet), None) => Some(format!("it has no address on {subnet}")),
            (Some(subnet), Some(ip)) if !usable(subnet, ip) || Some(ip) == network.gateway => {
                Some(format!("address {ip} is not a usable address of {subnet}"))
            }
            (Some(_), Some(ip)) => holders.get(&ip).map(|&winner| {
                let winner = &endpoints[winner];
                format!("address {ip} is held by {} on node {:?}, which wins", winner.name, winner.owner)
            }),
        };
        match conflict {
            Some(reason) => endpoints[i].state = EndpointState::Conflict(reason),
            None => {
                holders.extend(endpoints[i].spec.ip.map(|ip| (ip, i)));
            }
        }
    }
    endpoints.sort_by(|a, b| a.name.cmp(&b.name).then(a.owner.cmp(&b.owner)));
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Record;
    use super::*;

    fn network_record(creator: u8, serial: u64, spec: NetworkSpec) -> Record {
        Record::signed(
            RecordKey::Network(NetworkId { creator: node(creator), serial }),
            1,
            Value::Network(spec),
            &key(creator),
        )
    }

    fn store_of(records: Vec<Record>) -> Store {
        let mut store = Store::default();
        for record in records {
            store.apply(record, 0).expect("valid record");
        }
        store
    }

    fn all_alive(nodes: &[u8]) -> HashMap<NodeId, Status> {
        nodes.iter().map(|&n| (node(n), Status::Alive)).collect()
    }

    #[test]
    fn the_first_created_network_wins_its_name_vni_and_subnet() {
        let store = store_of(vec![
            network_record(2, 1, network("dev", 10, "10.1.0.0/24", 200)),
            network_record(1, 1, network("dev", 11, "10.2.0.0/24", 100)),
            network_record(3, 1, network("ops", 11, "10.3.0.0/24", 300)),
            network_record(3, 2, network("web", 12, "10.2.0.0/16", 400)),
        ]);
        let view = View::derive(&store, &all_alive(&[1, 2, 3]));
        assert_eq!(view.networks.len(), 1);
        assert_eq!(view.network("dev").map(|n| n.spec.vni), Some(11));
        let reasons: Vec<&str> = view.lost.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("its name"), "{reasons:?}");
        assert!(reasons[1].contains("VNI 11"), "{reasons:?}");
        assert!(reasons[2].contains("overlaps 10.2.0.0/24"), "{reasons:?}");
    }

    #[test]
    fn endpoints_follow_the_winning_network_by_name() {
        let store = store_of(vec![
            network_record(1, 1, network("dev", 10, "10.1.0.0/24", 100)),
            network_record(2, 1, network("dev", 11, "10.1.0.0/24", 200)),
            endpoint_record(2, "b", 2, endpoint("dev", "10.1.0.5", 250)),
        ]);
        let view = View::derive(&store, &all_alive(&[1, 2]));
        let dev = view.network("dev").expect("dev");
        assert_eq!(dev.endpoints.len(), 1);
        assert_eq!(dev.endpoints[0].state, EndpointState::Active);
    }

    #[test]
    fn a_duplicate_address_goes_to_the_static_then_oldest_endpoint() {
        let mut late_static = endpoint("dev", "10.1.0.5", 300);
        late_static.static_ip = true;
        let store = store_of(vec![
            network_record(1, 1, network("dev", 10, "10.1.0.0/24", 100)),
            endpoint_record(1, "a", 2, endpoint("dev", "10.1.0.5", 200)),
            endpoint_record(2, "b", 2, late_static),
            endpoint_record(3, "c", 2, endpoint("dev", "10.1.0.6", 200)),
            endpoint_record(3, "d", 3, endpoint("dev", "10.1.0.6", 100)),
        ]);
        let view = View::derive(&store, &all_alive(&[1, 2, 3]));
        let states: Vec<(&str, bool)> = view
            .network("dev")
            .expect("dev")
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.state == EndpointState::Active))
            .collect();
        assert_eq!(states, vec![("a", false), ("b", true), ("c", false), ("d", true)]);
    }

    #[test]
    fn endpoints_of_down_or_left_owners_are_hidden_and_hold_no_address() {
        let store = store_of(vec![
            network_record(1, 1, network("dev", 10, "10.1.0.0/24", 100)),
            endpoint_record(2, "old", 2, endpoint("dev", "10.1.0.5", 100)),
            endpoint_record(3, "gone", 2, endpoint("dev", "10.1.0.6", 100)),
            endpoint_record(1, "new", 2, endpoint("dev", "10.1.0.5", 200)),
        ]);
        let status = HashMap::from([(node(1), Status::Alive), (node(2), Status::Down), (node(3), Status::Left)]);
        let view = View::derive(&store, &status);
        let states: Vec<EndpointState> =
            view.network("dev").expect("dev").endpoints.iter().map(|e| e.state.clone()).collect();
        assert_eq!(states, vec![EndpointState::OwnerLeft, EndpointState::Active, EndpointState::OwnerDown]);
    }

    #[test]
    fn member_records_of_members_not_removed_and_the_latest_policy_are_seen() {
        let mut store = store_of(vec![
            member_record(1, 1, member(1), 1),
            member_record(2, 1, member(2), 2),
            member_record(2, 3, member(3), 2),
            member_record(3, 1, member(4), 3),
        ]);
        assert_eq!(View::derive(&store, &all_alive(&[1])).policy(), None);
        for (version, encrypt_networks) in [(1, true), (2, false)] {
            let policy = Value::Policy(PolicySpec { encrypt_networks });
            store.apply(Record::signed(RecordKey::Policy, version, policy, &key(3)), 0).expect("valid");
        }
        // Node 3 is removed after it wrote: its member record goes, its policy stays.
        store
            .apply(Record::signed(RecordKey::Removed(node(3)), 1, Value::Removed { at_ms: 1 }, &key(1)), 0)
            .expect("valid");
        let view = View::derive(&store, &all_alive(&[1]));
        let members: Vec<(NodeId, MemberSpec)> = view.members().iter().map(|(id, spec)| (*id, *spec)).collect();
        let mut expected = vec![(node(1), member(1)), (node(2), member(3))];
        expected.sort_by_key(|(id, _)| *id);
        assert_eq!(members, expected, "down members' too: liveness is the data plane's to weigh");
        assert_eq!(view.policy(), Some(&PolicySpec { encrypt_networks: false }));
    }

    #[test]
    fn unusable_addresses_and_missing_networks_are_reported() {
        let store = store_of(vec![
            network_record(1, 1, network("dev", 10, "10.1.0.0/24", 100)),
            endpoint_record(1, "gw", 2, endpoint("dev", "10.1.0.1", 200)),
            endpoint_record(1, "out", 3, endpoint("dev", "10.9.0.1", 200)),
            endpoint_record(1, "lost", 4, endpoint("gone", "10.9.0.1", 200)),
        ]);
        let view = View::derive(&store, &all_alive(&[1]));
        let dev = view.network("dev").expect("dev");
        assert!(dev.endpoints.iter().all(|e| matches!(e.state, EndpointState::Conflict(_))));
        assert_eq!(view.orphans.len(), 1);
    }
}
