//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/`) through
//! the same functions the fuzz targets call, on the stable toolchain.

fn replay(target: &str, run: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let n = keel_wal::fuzzing::replay_corpus(&root, target, run);
    println!("{target}: {n} seeds replayed");
}

#[test]
fn record_decoding_seeds() {
    replay("record_decoding", keel_wal::fuzzing::record_decoding);
}

#[test]
fn record_decompression_seeds() {
    replay(
        "record_decompression",
        keel_wal::fuzzing::record_decompression,
    );
}

#[test]
fn segment_reading_seeds() {
    replay("segment_reading", keel_wal::fuzzing::segment_reading);
}
