//! libFuzzer's inputs into the harness's `DnsQuery` target.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_scenarios::hostile::feed(
    mesh_scenarios::hostile::Target::DnsQuery,
    data
));
