//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/`) through
//! the same functions the fuzz targets call, on the stable toolchain.

fn replay(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
    println!("{target}: {n} seeds replayed");
}

#[test]
fn http_request_seeds() {
    replay("http_request", keel_server::fuzzing::http_request);
}
