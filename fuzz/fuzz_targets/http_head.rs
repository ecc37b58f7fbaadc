#![no_main]
//! Fuzz target: see `keel_server::fuzzing::http_head` for the invariants it checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_server::fuzzing::http_head(data));
