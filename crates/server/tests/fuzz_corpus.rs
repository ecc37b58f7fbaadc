//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/`) through
//! the same functions the fuzz targets call, on the stable toolchain.

fn replay(target: &str, run: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let n = keel_wal::fuzzing::replay_corpus(&root, target, run);
    println!("{target}: {n} seeds replayed");
}

#[test]
fn http_request_seeds() {
    replay("http_request", keel_server::fuzzing::http_request);
}

#[test]
fn http_head_seeds() {
    replay("http_head", keel_server::fuzzing::http_head);
}

#[test]
fn resp_stream_seeds() {
    replay("resp_stream", keel_server::fuzzing::resp_stream);
}
