#![no_main]
//! Fuzz target: see `keel::fuzzing::checkpoint_decoding` for the invariants it checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel::fuzzing::checkpoint_decoding(data));
