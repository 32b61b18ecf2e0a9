//! One query in, one answer out: parsing, the table lookup, NXDOMAIN vs
//! NODATA, rotation of several addresses, EDNS sizes and truncation.
//! Pure functions of the packet and the table, so the query path can be
//! tested (and fuzzed) without sockets.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::table::{Lookup, NameTable, Scope, ZONE};

/// TTL of every answer mesh gives: a few seconds, so a withdrawn name
/// leaves caches almost at once.
pub const TTL: u32 = 2;
/// The UDP answer size every client takes.
const BASIC_UDP: usize = 512;
/// The largest UDP answer mesh sends (the DNS flag day 2020 value).
const MAX_UDP: u16 = 1232;
/// The header's length.
const HEADER: usize = 12;

/// What to do with a packet.
#[derive(Debug)]
pub enum Outcome {
    /// Send this answer, in at most `udp_limit` bytes over UDP.
    Reply {
        /// The answer.
        message: Message,
        /// The largest UDP answer the client takes.
        udp_limit: usize,
    },
    /// Ask the upstream resolvers `query`, on behalf of `request`.
    Forward {
        /// The client's request.
        request: Message,
        /// Its one question.
        query: Query,
        /// The largest UDP answer the client takes.
        udp_limit: usize,
    },
    /// Say nothing (not a query: too short to answer, or a response).
    Ignore,
}

/// Answers `packet` from `table` for a sandbox on the networks of `scope`;
/// `rotation` picks the first of several addresses.
pub fn answer(packet: &[u8], table: &NameTable, scope: &Scope, rotation: usize) -> Outcome {
    if packet.len() < HEADER || packet[2] & 0x80 != 0 {
        return Outcome::Ignore;
    }
    let Ok(request) = Message::from_vec(packet) else {
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        return Outcome::Reply { message: error(id, ResponseCode::FormErr), udp_limit: BASIC_UDP };
    };
    let udp_limit = udp_limit(&request);
    let reply = |message| Outcome::Reply { message, udp_limit };
    if request.metadata.op_code != OpCode::Query {
        return reply(respond(&request, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return reply(respond(&request, ResponseCode::FormErr));
    };
    if query.query_class() != DNSClass::IN {
        return reply(respond(&request, ResponseCode::Refused));
    }
    let lowered = query.name().to_lowercase();
    let labels: Vec<&str> = lowered.iter().map(|label| std::str::from_utf8(label).unwrap_or("\u{0}")).collect();
    let mut response = respond(&request, ResponseCode::NoError);
    let (name, qtype) = (query.name().clone(), query.query_type());
    let records = match table.lookup(&labels, scope) {
        Lookup::NotOurs => return Outcome::Forward { query: query.clone(), request, udp_limit },
        Lookup::NoSuchName => {
            response.metadata.response_code = ResponseCode::NXDomain;
            Vec::new()
        }
        Lookup::Addresses(addresses) => address_records(&name, qtype, &addresses, rotation),
        Lookup::Pointer(target) if matches!(qtype, RecordType::PTR | RecordType::ANY) => Name::from_ascii(format!(
            "{target}."
        ))
        .map_or_else(|_| Vec::new(), |target| vec![Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(target)))]),
        Lookup::Pointer(_) => Vec::new(),
    };
    response.metadata.authoritative = true;
    if records.is_empty() && qtype == RecordType::SOA && labels == [ZONE] {
        response.add_answer(soa());
    } else if records.is_empty() {
        response.add_authority(soa());
    } else {
        response.add_answers(records);
    }
    reply(response)
}

/// The records of `addresses` that answer `qtype`, starting at `rotation`.
fn address_records(name: &Name, qtype: RecordType, addresses: &[IpAddr], rotation: usize) -> Vec<Record> {
    let start = rotation % addresses.len().max(1);
    let rotated = addresses[start..].iter().chain(&addresses[..start]);
    rotated
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(ip), RecordType::A | RecordType::ANY) => Some(RData::A(A(*ip))),
            (IpAddr::V6(ip), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*ip))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(name.clone(), TTL, rdata))
        .collect()
}

/// The SOA of the `mesh.` zone: its minimum is the TTL of a negative answer.
fn soa() -> Record {
    let zone = Name::from_ascii(format!("{ZONE}.")).unwrap_or_else(|_| Name::root());
    let mname = Name::from_ascii(format!("ns.{ZONE}.")).unwrap_or_else(|_| Name::root());
    let rname = Name::from_ascii(format!("hostmaster.{ZONE}.")).unwrap_or_else(|_| Name::root());
    let soa = SOA::new(mname, rname, 1, 60, 10, 600, TTL);
    Record::from_rdata(zone, TTL, RData::SOA(soa))
}

/// An empty response to `request` with `code` (its question and EDNS kept).
pub fn respond(request: &Message, code: ResponseCode) -> Message {
    let mut response =
        Message::new(request.metadata.id, hickory_proto::op::MessageType::Response, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP);
        response.set_edns(edns);
    }
    response
}

/// A bare error answer to a query that could not be parsed.
fn error(id: u16, code: ResponseCode) -> Message {
    Message::error_msg(id, OpCode::Query, code)
}

/// The largest UDP answer the client of `request` takes.
fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(BASIC_UDP, |edns| usize::from(edns.max_payload().clamp(512, MAX_UDP)))
}

/// Encodes `message` in at most `limit` bytes: if it does not fit, the
/// answer goes and the truncation bit tells the client to retry over TCP.
pub fn encode(message: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = message.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut truncated = message.truncate();
    truncated.metadata.id = message.metadata.id;
    truncated.metadata.message_type = message.metadata.message_type;
    truncated.to_vec().ok().filter(|b| b.len() <= limit)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::table::Endpoint;

    fn table() -> NameTable {
        let endpoints: Vec<Endpoint> = (0..60)
            .map(|i| Endpoint {
                name: format!("svc{i}"),
                network: "dev".into(),
                aliases: vec!["web".into()],
                ip: Ipv4Addr::new(10, 0, 0, 2 + i),
            })
            .collect();
        NameTable::new(&endpoints, &[])
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            message.set_edns(e);
        }
        message.to_vec().expect("encode")
    }

    fn reply(packet: &[u8]) -> (Message, usize) {
        match answer(packet, &table(), &Scope::All, 7) {
            Outcome::Reply { message, udp_limit } => (message, udp_limit),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_name_answers_its_address_and_other_types_get_nodata() {
        let (message, _) = reply(&query("SVC1.dev.mesh.", RecordType::A, None));
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert_eq!(message.answers.len(), 1);
        assert!(message.metadata.authoritative);
        let (message, _) = reply(&query("svc1.dev.mesh.", RecordType::AAAA, None));
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.answers.is_empty() && message.authorities.len() == 1, "NODATA with the SOA");
        let (message, _) = reply(&query("nope.dev.mesh.", RecordType::A, None));
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn a_shared_alias_rotates_and_truncates_over_plain_udp() {
        let (message, limit) = reply(&query("web.", RecordType::A, Some(4096)));
        assert_eq!(limit, usize::from(MAX_UDP));
        assert_eq!(message.answers.len(), 60);
        assert_eq!(message.answers[0].data, RData::A(A(Ipv4Addr::new(10, 0, 0, 9))), "rotated by 7");
        let bytes = encode(&message, BASIC_UDP).expect("fits once truncated");
        let truncated = Message::from_vec(&bytes).expect("decode");
        assert!(truncated.metadata.truncation && truncated.answers.is_empty());
        assert_eq!(truncated.metadata.id, message.metadata.id);
    }

    #[test]
    fn unknown_names_are_forwarded_and_garbage_is_answered_or_ignored() {
        assert!(matches!(
            answer(&query("example.com.", RecordType::A, None), &table(), &Scope::All, 0),
            Outcome::Forward { .. }
        ));
        assert!(matches!(answer(&[0; 5], &table(), &Scope::All, 0), Outcome::Ignore));
        let mut garbage = query("svc1.", RecordType::A, None);
        garbage.truncate(garbage.len() - 3);
        let (message, _) = reply(&garbage);
        assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn random_packets_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let table = table();
        let valid = query("svc1.dev.", RecordType::A, Some(1232));
        for round in 0..20_000 {
            let mut packet = if round % 2 == 0 { valid.clone() } else { vec![0; (round % 300) + 1] };
            for byte in &mut packet {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(5) || round % 2 == 1 {
                    *byte = state.to_le_bytes()[0];
                }
            }
            if let Outcome::Reply { message, udp_limit } = answer(&packet, &table, &Scope::All, round) {
                let _ = encode(&message, udp_limit);
            }
        }
    }
}
