#![no_main]
//! Fuzz target: see `keel::fuzzing::table_decoding` for the invariants it checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel::fuzzing::table_decoding(data));
