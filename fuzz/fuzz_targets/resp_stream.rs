#![no_main]
//! Fuzz target: see `keel_server::fuzzing::resp_stream` for the invariants it checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_server::fuzzing::resp_stream(data));
