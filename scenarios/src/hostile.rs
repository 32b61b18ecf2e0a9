//! Hostile input: every decoder that takes bytes from a peer or a user,
//! fed whatever the caller gives. The cargo-fuzz targets in
//! `scenarios/fuzz` call [`feed`] with libFuzzer's inputs for as long as
//! one likes; CI calls [`run`], which feeds a bounded number of mutations
//! of valid inputs ([`seeds`]) from a fixed seed. Either way the contract
//! is the same: an error, never a panic, and the receiver keeps working.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use mesh_agent::hostile as agent;
use mesh_dns::answer::{answer, encode as encode_dns, Outcome};
use mesh_dns::table::{Endpoint as DnsEndpoint, NameTable, Scope};
use mesh_membership::enrol::{EnrolRequest, Enroller};
use mesh_membership::pki::{certificate_request, ClusterCa, ClusterSecret, JoinToken};
use mesh_membership::records::{CaRotation, EndpointSpec, NetworkId, NetworkSpec, Record, RecordKey, Value};
use mesh_membership::wire::{self, Frame, PROTOCOL_VERSION};
use mesh_membership::{Core, Owned};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::sim::{identity, node_key};

/// A decoder under attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Agent-to-agent frames (SWIM packets, records, sync, accusations)
    /// into a member's core, from an authenticated member.
    Frame,
    /// An enrolment request, from anyone who can reach the agent's port.
    Enrol,
    /// A DNS query to a sandbox's resolver.
    DnsQuery,
    /// A join token, as a user types it.
    Token,
    /// The records an agent saved in its data dir.
    SavedRecords,
    /// The agent's TOML config file.
    Config,
    /// A control API request body (the first byte picks which).
    ControlJson,
    /// A Docker plugin call's body (the first byte picks which).
    DockerJson,
    /// A CNI network configuration on `mesh-cni`'s stdin.
    CniConfig,
}

impl Target {
    /// Every target.
    pub const ALL: [Self; 9] = [
        Self::Frame,
        Self::Enrol,
        Self::DnsQuery,
        Self::Token,
        Self::SavedRecords,
        Self::Config,
        Self::ControlJson,
        Self::DockerJson,
        Self::CniConfig,
    ];
}

/// Feeds `data` to `target`'s decoder and whatever acts on what it decodes.
pub fn feed(target: Target, data: &[u8]) {
    match target {
        Target::Frame => frame(data),
        Target::Enrol => enrol(data),
        Target::DnsQuery => dns_query(data),
        Target::Token => {
            let _ = JoinToken::from_str(&String::from_utf8_lossy(data));
        }
        Target::SavedRecords => saved_records(data),
        Target::Config => {
            let _ = agent::config_toml(data);
        }
        Target::ControlJson => {
            if let Some((which, body)) = data.split_first() {
                let _ = agent::control_body(usize::from(*which), body);
            }
        }
        Target::DockerJson => {
            if let Some((which, body)) = data.split_first() {
                let _ = agent::docker_call(usize::from(*which), body);
            }
        }
        Target::CniConfig => {
            let _ = agent::cni_config(data);
        }
    }
}

/// A member (node 0) that knows node 1 receives `data` from node 1, then
/// lets its timers run for a few seconds of virtual time.
fn frame(data: &[u8]) {
    let now = Instant::now();
    let mut core = Core::new(identity(0, 1), node_key(0), 0);
    let _ = core.announce(now, identity(1, 1));
    let _ = core.handle_datagram(now, identity(1, 1).id, data);
    for step in 1..=5 {
        core.handle_timeout(now + Duration::from_secs(step));
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
    }
}

/// The enroller every enrolment input goes to (a CA takes milliseconds to make).
fn enroller() -> &'static Option<Enroller> {
    static ENROLLER: OnceLock<Option<Enroller>> = OnceLock::new();
    ENROLLER.get_or_init(|| Some(Enroller::new(ClusterCa::generate().ok()?, ClusterSecret([7; 32]))))
}

fn enrol(data: &[u8]) {
    if let (Ok(request), Some(enroller)) = (postcard::from_bytes::<EnrolRequest>(data), enroller()) {
        let _ = enroller.admit(&request);
    }
}

/// The names a sandbox's resolver serves in the harness.
fn name_table() -> &'static NameTable {
    static TABLE: OnceLock<NameTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let endpoint = |name: &str, ip: [u8; 4]| DnsEndpoint {
            name: name.into(),
            network: "dev".into(),
            aliases: vec!["web".into()],
            ip: Ipv4Addr::from(ip),
        };
        NameTable::new(&[endpoint("svc1", [10, 0, 0, 2]), endpoint("svc2", [10, 0, 0, 3])], &[])
    })
}

fn dns_query(data: &[u8]) {
    let scope = Scope::Networks(vec!["dev".into()]);
    if let Outcome::Reply { message, udp_limit } = answer(data, name_table(), &scope, 1) {
        let _ = encode_dns(&message, udp_limit);
    }
}

fn saved_records(data: &[u8]) {
    if let Ok(owned) = serde_json::from_slice::<Owned>(data) {
        let mut core = Core::new(identity(0, 1), node_key(0), 0);
        core.restore(owned);
        let _ = core.view();
    }
}

/// Valid inputs of `target`, to mutate from.
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    match target {
        Target::Frame => frame_seeds(),
        Target::Enrol => enrol_seeds(),
        Target::DnsQuery => dns_seeds(),
        Target::Token => vec![sample_token().into_bytes()],
        Target::Config => vec![format!(
            "name = \"edge-1\"\nadvertise = \"198.18.0.1\"\nbind = \"0.0.0.0:7950\"\njoin = [\"198.18.0.2\"]\n\
             token = \"{}\"\nlog_format = \"json\"\nupstream_dns = [\"192.0.2.53:53\"]\n\
             cert_lifetime_secs = 86400\nnetns_prefix = \"m-\"\n",
            sample_token()
        )
        .into_bytes()],
        Target::ControlJson => [
            format!(r#"{{"peer":"198.18.0.1","token":"{}"}}"#, sample_token()),
            r#"{"name":"dev","driver":"overlay","subnet":"10.1.0.0/24","vni":42,"mtu":1450}"#.into(),
            r#"{"name":"s1","networks":["dev"],"aliases":["web"],"ip":"10.1.0.9","netns":null}"#.into(),
            r#"{"grace_secs":60}"#.into(),
            r#"{"after":3,"network":"dev","timeout_ms":100}"#.into(),
        ]
        .into_iter()
        .enumerate()
        .map(|(which, body)| tagged(which, &body))
        .collect(),
        Target::DockerJson => [
            r#"{"AddressSpace":"mesh","Pool":"10.32.0.0/24","SubPool":"","Options":{},"V6":false}"#,
            r#"{"PoolID":"10.32.0.0/24"}"#,
            r#"{"PoolID":"10.32.0.0/24","Address":"","Options":{}}"#,
            r#"{"PoolID":"10.32.0.0/24","Address":"10.32.0.5"}"#,
            r#"{"NetworkID":"abc","Options":{"com.docker.network.generic":{"mesh.network":"dev"}},"IPv4Data":[{"AddressSpace":"mesh","Pool":"10.32.0.0/24","Gateway":"10.32.0.1/24"}],"IPv6Data":[]}"#,
            r#"{"NetworkID":"abc"}"#,
            r#"{"NetworkID":"abc","EndpointID":"def","Interface":{"Address":"10.32.0.5/24","AddressIPv6":"","MacAddress":""},"Options":{}}"#,
            r#"{"NetworkID":"abc","EndpointID":"def","SandboxKey":"/var/run/docker/netns/x","Options":{}}"#,
            r#"{"NetworkID":"abc","EndpointID":"def"}"#,
        ]
        .into_iter()
        .enumerate()
        .map(|(which, body)| tagged(which, body))
        .collect(),
        Target::CniConfig => vec![br#"{"cniVersion":"1.0.0","name":"podman","type":"mesh-cni","network":"dev","aliases":["web"],"runtimeConfig":{"aliases":{"podman":["api"]}},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"lo"}],"ips":[],"dns":{"nameservers":["192.0.2.53"]}}}"#.to_vec()],
        Target::SavedRecords => {
            let records = sample_records();
            let owned = Owned { next_version: 9, endpoints: records[..1].to_vec(), networks: records[1..].to_vec() };
            vec![serde_json::to_vec(&owned).unwrap_or_default()]
        }
    }
}

/// A well-formed join token.
fn sample_token() -> String {
    JoinToken { ca_fingerprint: [3; 32], secret: ClusterSecret([7; 32]) }.to_string()
}

/// `body` behind the byte that picks which kind of body it is.
fn tagged(which: usize, body: &str) -> Vec<u8> {
    [u8::try_from(which).unwrap_or_default()].into_iter().chain(body.bytes()).collect()
}

/// A network and an endpoint of node 1, signed by it.
fn sample_records() -> Vec<Record> {
    let key = node_key(1);
    let spec = EndpointSpec::allocated("dev", Ipv4Addr::new(10, 0, 0, 2), 1);
    let endpoint = Record::signed(spec.key(key.id(), "svc1"), 3, Value::Endpoint(spec), &key);
    let network = NetworkSpec::overlay("dev", 10, "10.0.0.0/24".parse().unwrap_or_default(), 1);
    let id = NetworkId { creator: key.id(), serial: 1 };
    let mut records = vec![endpoint, Record::signed(RecordKey::Network(id), 1, Value::Network(network), &key)];
    records.extend(sample_rotation().map(|rotation| Record::signed(RecordKey::ClusterCa, 1, rotation, &key)));
    records
}

/// A CA rotation listing node 1.
fn sample_rotation() -> Option<Value> {
    let (old, new) = (ClusterCa::generate().ok()?, ClusterCa::generate().ok()?);
    Some(Value::ClusterCa(CaRotation {
        cert_der: new.cert_der().to_vec(),
        previous_der: old.cert_der().to_vec(),
        cross_der: old.cross_sign(&new).ok()?.to_vec(),
        members: vec![node_key(1).id()],
        rotated_ms: 1,
        grace_ms: 1_000,
    }))
}

fn frame_seeds() -> Vec<Vec<u8>> {
    // Node 1's first SWIM packet to node 0, as the wire carries it.
    let mut sender = Core::new(identity(1, 1), node_key(1), 1);
    let _ = sender.announce(Instant::now(), identity(0, 1));
    let mut seeds: Vec<Vec<u8>> = std::iter::from_fn(|| sender.poll_transmit()).map(|t| t.payload).collect();
    let records = sample_records();
    seeds.extend(
        [
            Frame::Records(records.clone()),
            Frame::SyncRecords(records),
            Frame::SyncHello { records: 1, members: 2 },
            Frame::SyncDigest(vec![5; 256]),
            Frame::SyncPull(vec![0, 7, 255]),
            Frame::Members(vec![foca::Member::alive(identity(2, 1))]),
            Frame::MembersRequest(identity(1, 1)),
            Frame::Suspect { target: identity(2, 1), incarnation: 0, accuser: identity(1, 1).id },
            Frame::Leave,
        ]
        .iter()
        .map(wire::encode),
    );
    seeds
}

fn enrol_seeds() -> Vec<Vec<u8>> {
    let key = node_key(5);
    let Ok(csr_der) = certificate_request(&key) else { return Vec::new() };
    let request = EnrolRequest { version: PROTOCOL_VERSION, secret: [7; 32], node: key.id(), csr_der };
    vec![postcard::to_allocvec(&request).unwrap_or_default()]
}

fn dns_seeds() -> Vec<Vec<u8>> {
    let query = |name: &str, kind: RecordType, edns: bool| {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        if let Ok(name) = Name::from_ascii(name) {
            message.add_query(Query::query(name, kind));
        }
        if edns {
            message.set_edns(Edns::new());
        }
        message.to_vec().unwrap_or_default()
    };
    vec![
        query("svc1.", RecordType::A, false),
        query("web.dev.mesh.", RecordType::A, true),
        query("2.0.0.10.in-addr.arpa.", RecordType::PTR, false),
        query("svc2.", RecordType::AAAA, true),
        query("example.org.", RecordType::MX, false),
    ]
}

/// One mutation of `seed`: bits flipped, bytes changed, inserted or
/// removed, a run duplicated, a tail cut, or, now and then, random bytes.
pub fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    if rng.random_range(0..20) == 0 || data.is_empty() {
        let len = rng.random_range(0..512);
        return (0..len).map(|_| rng.random()).collect();
    }
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..data.len().max(1));
        match rng.random_range(0..6) {
            0 => {
                if let Some(byte) = data.get_mut(at) {
                    *byte ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                if let Some(byte) = data.get_mut(at) {
                    *byte = [0, 0x7f, 0x80, 0xff][rng.random_range(0..4)];
                }
            }
            2 => data.insert(at.min(data.len()), rng.random()),
            3 if !data.is_empty() => {
                data.remove(at.min(data.len() - 1));
            }
            4 => {
                let end = (at + rng.random_range(1..16)).min(data.len());
                let run = data[at.min(end)..end].to_vec();
                data.splice(at.min(end)..at.min(end), run);
            }
            _ => data.truncate(at),
        }
    }
    data
}

/// Feeds `target` `count` mutations of its seeds (and the seeds
/// themselves), from `seed`; returns how many inputs it fed.
pub fn run(target: Target, count: usize, seed: u64) -> usize {
    let seeds = seeds(target);
    let mut rng = StdRng::seed_from_u64(seed);
    for input in &seeds {
        feed(target, input);
    }
    let mutations = seeds.iter().cycle().take(count).map(|s| mutate(&mut rng, s)).collect::<Vec<_>>();
    for input in &mutations {
        feed(target, input);
    }
    seeds.len() + mutations.len()
}
