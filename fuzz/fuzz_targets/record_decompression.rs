#![no_main]
//! Fuzz target: see `keel_wal::fuzzing::record_decompression` for the invariants it checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_wal::fuzzing::record_decompression(data));
