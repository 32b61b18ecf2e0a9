//! libFuzzer's inputs into the harness's `CniConfig` target.
#![no_main]

use mesh_scenarios::hostile::{feed, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| feed(Target::CniConfig, data));
