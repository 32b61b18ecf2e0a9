//! libFuzzer's inputs into the harness's `Config` target.
#![no_main]

use mesh_scenarios::hostile::{feed, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| feed(Target::Config, data));
