//! Any bytes through the query path: parse, look up, answer, encode. It
//! must never panic, and every answer must encode within its size limit.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use mesh_dns::answer::{answer, encode, Outcome};
use mesh_dns::{Endpoint, NameTable, Scope};

fuzz_target!(|packet: &[u8]| {
    let endpoints: Vec<Endpoint> = (0..40u8)
        .map(|i| Endpoint {
            name: format!("svc{i}"),
            network: "dev".into(),
            aliases: vec!["web".into()],
            ip: Ipv4Addr::new(10, 0, 0, i + 2),
        })
        .collect();
    let table = NameTable::new(&endpoints, &[]);
    if let Outcome::Reply { message, udp_limit } = answer(packet, &table, &Scope::Networks(vec!["dev".into()]), 3) {
        if let Some(bytes) = encode(&message, udp_limit) {
            assert!(bytes.len() <= udp_limit);
        }
    }
});
