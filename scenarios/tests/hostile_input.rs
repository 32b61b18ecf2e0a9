//! Bounded runs of the hostile-input harness (`mesh_scenarios::hostile`):
//! mutations of valid inputs into every decoder that takes bytes from a
//! peer or a user. Longer runs use cargo-fuzz (`scenarios/fuzz`). A panic
//! fails the test; the figure printed is the inputs fed per target.

use std::time::Instant;

use mesh_scenarios::hostile::{self, Target};

/// Inputs per target and run: a few seconds each in a debug build.
const INPUTS: usize = 20_000;

#[test]
fn every_decoder_takes_mutated_and_random_input_without_panicking() {
    for target in Target::ALL {
        let started = Instant::now();
        let fed = hostile::run(target, INPUTS, 0x6d65_7368);
        println!("{target:?}: {fed} inputs in {:?}", started.elapsed());
        assert!(fed > INPUTS, "{target:?} has seeds to mutate");
    }
}
