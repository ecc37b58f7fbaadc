#![no_main]
//! Fuzz target: see `keel::fuzzing::manifest_decoding` for the invariants it checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel::fuzzing::manifest_decoding(data));
