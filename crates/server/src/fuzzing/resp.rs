//! Fuzz entry point for the Redis protocol: any bytes as a client's stream,
//! through the parser and the commands, into a store on simulated storage,
//! with the event loop's discipline (writes deferred, then committed).
//!
//! The first two bytes choose how the rest is split into reads; the rest is
//! the stream.
//!
//! Invariants:
//! - the parser never panics;
//! - the incremental parser's model: any split of the same bytes gives the
//!   same commands and the same ending (bytes left, or the same protocol
//!   error) as the whole stream parsed at once;
//! - re-encoding a command's arguments parses back to them;
//! - every reply is one well-formed RESP2 value (but for the first line of
//!   an HTTP request, which closes the connection without one);
//! - after each commit, the store agrees with a model of SET, MSET, DEL and
//!   FLUSHALL on every key the stream touched, and a refused command changed
//!   nothing.

use crate::resp::command::{execute, Outcome};
use crate::resp::frame::{encode_command, reply_len};
use crate::resp::parser::parse_split;
use crate::resp::RespLimits;
use keel::{Db, Options};
use keel_storage::SimStorage;
use std::collections::BTreeMap;
use std::sync::Arc;

const LIMITS: RespLimits = RespLimits {
    max_bulk: 4096,
    max_args: 64,
    max_pending: 1 << 16,
};

/// Applies a command the store acknowledged to the model.
fn model_apply(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, args: &[Vec<u8>]) {
    let name = args[0].to_ascii_uppercase();
    match (name.as_slice(), args.len()) {
        (b"SET", 3) => {
            model.insert(args[1].clone(), args[2].clone());
        }
        (b"MSET", n) if n >= 3 && n % 2 == 1 => {
            for p in args[1..].chunks(2) {
                model.insert(p[0].clone(), p[1].clone());
            }
        }
        (b"DEL", n) if n >= 2 => {
            for k in &args[1..] {
                model.remove(k);
            }
        }
        (b"FLUSHDB" | b"FLUSHALL", n) if n <= 2 => model.clear(),
        _ => {}
    }
}

/// Feeds `data` as one connection's byte stream.
pub fn resp_stream(data: &[u8]) {
    let [a, b, stream @ ..] = data else {
        return;
    };
    let whole = parse_split(stream, &[stream.len()], &LIMITS);
    let pieces = [usize::from(*a % 17) + 1, usize::from(*b) + 1];
    assert_eq!(
        parse_split(stream, &pieces, &LIMITS),
        whole,
        "split into reads of {pieces:?}, the stream parsed differently"
    );
    let (commands, _) = whole;
    let s = SimStorage::new(1);
    keel_storage::create_dir_durable(&s, std::path::Path::new("/fuzz")).expect("sim dir");
    let opts = {
        let mut o = Options::default();
        o.max_key_len = 64;
        o.max_value_len = 1024;
        o.max_batch_bytes = 1 << 14;
        o.segment_size = 1 << 14;
        o.checkpoint_log_bytes = Some(1 << 13);
        o
    };
    let (db, _) = Db::builder("/fuzz")
        .options(crate::refusal::server_options(opts))
        .storage(Arc::new(s))
        .open()
        .expect("open");
    let mut model = BTreeMap::new();
    let mut touched: Vec<Vec<u8>> = Vec::new();
    for args in commands {
        assert!(!args.is_empty(), "the parser returned an empty command");
        let again = encode_command(&args);
        assert_eq!(
            parse_split(&again, &[again.len()], &LIMITS),
            (vec![args.clone()], Ok(0)),
            "a command did not survive re-encoding"
        );
        let mut out = Vec::new();
        let outcome = execute(&db, args.clone(), &mut out);
        // An HTTP request's first line (POST, Host:) closes the connection
        // with no reply at all; every other reply is one RESP value.
        let silent_close = outcome == Outcome::Close && out.is_empty();
        if !silent_close {
            assert_eq!(
                reply_len(&out),
                Some(out.len()),
                "not one RESP value: {out:?}"
            );
        }
        match outcome {
            Outcome::Deferred(lsn) => {
                db.commit_through(lsn).expect("commit on healthy storage");
                model_apply(&mut model, &args);
            }
            Outcome::Close => return,
            Outcome::Done | Outcome::Read => {}
        }
        touched.extend(args.iter().skip(1).take(8).cloned());
        for k in &touched {
            let got = db.get(k).unwrap_or(None);
            assert_eq!(
                got.as_ref(),
                model.get(k),
                "key {k:?} disagrees with the model"
            );
        }
        assert_eq!(db.len(), model.len(), "DBSIZE disagrees with the model");
    }
}
