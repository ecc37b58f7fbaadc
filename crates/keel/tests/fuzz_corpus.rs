//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/`) through
//! the same functions the fuzz targets call, on the stable toolchain.

fn replay(target: &str, run: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let n = keel_wal::fuzzing::replay_corpus(&root, target, run);
    println!("{target}: {n} seeds replayed");
}

#[test]
fn op_decoding_seeds() {
    replay("op_decoding", keel::fuzzing::op_decoding);
}

#[test]
fn checkpoint_decoding_seeds() {
    replay("checkpoint_decoding", keel::fuzzing::checkpoint_decoding);
}

#[test]
fn engine_ops_seeds() {
    replay("engine_ops", keel::fuzzing::engine_ops);
}

#[test]
fn table_decoding_seeds() {
    replay("table_decoding", keel::fuzzing::table_decoding);
}

#[test]
fn manifest_decoding_seeds() {
    replay("manifest_decoding", keel::fuzzing::manifest_decoding);
}
