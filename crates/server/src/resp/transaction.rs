//! MULTI / EXEC / DISCARD over keel's atomic batches.
//!
//! After `MULTI` a connection's commands are queued (`+QUEUED`) instead of
//! run. `EXEC` runs them as one: every write among them goes into one
//! `WriteBatch`, which is one log record, so after any crash all of them
//! are there or none; reads among them see the transaction's own earlier
//! writes (an overlay of the batch on the store). Its reply, an array of
//! the queued commands' replies, is held like any write's until the commit.
//!
//! Differences from Redis, each answered with a clear error: `WATCH` is not
//! supported (no optimistic locking); `FLUSHALL`/`FLUSHDB` cannot be queued
//! (a batch holds puts and deletes only); a command refused at queue time
//! (unknown, wrong arity) makes `EXEC` answer `-EXECABORT`, as in Redis; a
//! batch the store refuses (an empty value, a limit) discards the whole
//! transaction with `-EXECABORT` instead of running part of it.

use super::command::{execute, Outcome};
use super::frame::{array_len, bulk, error, integer, simple};
use keel::{Db, WriteBatch};
use std::collections::HashMap;

/// A transaction being queued on one connection.
#[derive(Default)]
pub struct Transaction {
    queued: Vec<Vec<Vec<u8>>>,
    /// A queued command was refused: EXEC must abort.
    refused: bool,
}

/// Queued commands at most: a transaction lives in memory until EXEC.
const MAX_QUEUED: usize = 100_000;

/// Handles MULTI, EXEC, DISCARD and WATCH, and queues commands while a
/// transaction is open. `None`: not a transaction matter, run it as usual.
pub fn intercept(
    tx: &mut Option<Transaction>,
    db: &Db,
    args: &[Vec<u8>],
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    let name = args.first()?.to_ascii_uppercase();
    match (name.as_slice(), tx.as_mut()) {
        (b"MULTI", None) => {
            *tx = Some(Transaction::default());
            simple(out, "OK");
        }
        (b"MULTI", Some(_)) => error(out, "ERR MULTI calls can not be nested"),
        (b"EXEC", None) => error(out, "ERR EXEC without MULTI"),
        (b"DISCARD", None) => error(out, "ERR DISCARD without MULTI"),
        (b"DISCARD", Some(_)) => {
            *tx = None;
            simple(out, "OK");
        }
        (b"WATCH", _) => error(out, "ERR WATCH is not supported by keel: MULTI/EXEC apply atomically as one log record, without optimistic locking"),
        (b"UNWATCH", _) => simple(out, "OK"),
        (b"EXEC", Some(_)) => {
            let t = tx.take()?;
            return Some(exec(db, t, out));
        }
        (b"QUIT" | b"POST" | b"HOST:", _) | (_, None) => return None,
        (_, Some(t)) => {
            match refusal(&name, args.len()) {
                Some(why) => {
                    t.refused = true;
                    error(out, &why);
                }
                None if t.queued.len() >= MAX_QUEUED => {
                    t.refused = true;
                    error(out, "ERR too many commands queued in this transaction");
                }
                None => {
                    t.queued.push(args.to_vec());
                    simple(out, "QUEUED");
                }
            }
        }
    }
    Some(Outcome::Done)
}

/// Why a command cannot be queued, if it cannot.
fn refusal(name: &[u8], argc: usize) -> Option<String> {
    let arity_ok = match name {
        b"SET" => argc == 3,
        b"GET" => argc == 2,
        b"DEL" | b"EXISTS" | b"MGET" => argc >= 2,
        b"MSET" => argc >= 3 && argc % 2 == 1,
        b"DBSIZE" => argc == 1,
        b"PING" => argc <= 2,
        b"ECHO" => argc == 2,
        b"FLUSHALL" | b"FLUSHDB" => {
            return Some("ERR FLUSHALL and FLUSHDB cannot be queued in a keel transaction (a batch holds puts and deletes only)".into())
        }
        _ => {
            return Some(format!(
                "ERR unknown or unsupported command in a transaction '{}'",
                String::from_utf8_lossy(name).to_ascii_lowercase()
            ))
        }
    };
    (!arity_ok).then(|| {
        format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(name).to_ascii_lowercase()
        )
    })
}

/// The transaction's writes so far, over the store, for its reads.
struct Overlay<'a> {
    db: &'a Db,
    batch: WriteBatch,
    changed: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Overlay<'_> {
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        match self.changed.get(k) {
            Some(v) => v.clone(),
            None => self.db.get(k).ok().flatten(),
        }
    }

    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.batch.put(k.to_vec(), v.to_vec());
        self.changed.insert(k.to_vec(), Some(v.to_vec()));
    }

    fn delete(&mut self, k: &[u8]) {
        self.batch.delete(k.to_vec());
        self.changed.insert(k.to_vec(), None);
    }

    fn len(&self) -> i64 {
        let mut n = self.db.len() as i64;
        for (k, v) in &self.changed {
            let before = matches!(self.db.get(k), Ok(Some(_)));
            n += i64::from(v.is_some()) - i64::from(before);
        }
        n
    }
}

/// The queued commands of `t`, for `EXEC` run elsewhere (a cluster node
/// hands it to Raft); `None`, after answering `EXECABORT`, if one was
/// refused when queued.
pub fn queued_for_exec(t: Transaction, out: &mut Vec<u8>) -> Option<Vec<Vec<Vec<u8>>>> {
    if t.refused {
        error(out, ABORTED);
        return None;
    }
    Some(t.queued)
}

const ABORTED: &str = "EXECABORT Transaction discarded because of previous errors.";

/// What a transaction's queued commands answer and write, run over `db`:
/// the replies (one array) and the batch of its writes. The reads see the
/// transaction's own earlier writes.
pub fn plan(db: &Db, queued: &[Vec<Vec<u8>>]) -> (Vec<u8>, WriteBatch) {
    let mut o = Overlay {
        db,
        batch: WriteBatch::new(),
        changed: HashMap::new(),
    };
    let mut replies = Vec::new();
    array_len(&mut replies, queued.len());
    for args in queued {
        let name = args[0].to_ascii_uppercase();
        match name.as_slice() {
            b"SET" => {
                o.put(&args[1], &args[2]);
                simple(&mut replies, "OK");
            }
            b"MSET" => {
                for p in args[1..].chunks(2) {
                    o.put(&p[0], &p[1]);
                }
                simple(&mut replies, "OK");
            }
            b"DEL" => {
                let mut n = 0;
                for k in &args[1..] {
                    n += i64::from(o.get(k).is_some());
                    o.delete(k);
                }
                integer(&mut replies, n);
            }
            b"GET" => bulk(&mut replies, o.get(&args[1]).as_deref()),
            b"MGET" => {
                array_len(&mut replies, args.len() - 1);
                for k in &args[1..] {
                    bulk(&mut replies, o.get(k).as_deref());
                }
            }
            b"EXISTS" => {
                let n = args[1..].iter().filter(|k| o.get(k).is_some()).count();
                integer(&mut replies, n as i64);
            }
            b"DBSIZE" => integer(&mut replies, o.len()),
            // PING, ECHO: they touch nothing.
            _ => {
                execute(db, args.clone(), &mut replies);
            }
        }
    }
    (replies, o.batch)
}

/// Runs a queued transaction: one batch for its writes, replies in order.
fn exec(db: &Db, t: Transaction, out: &mut Vec<u8>) -> Outcome {
    if t.refused {
        error(out, ABORTED);
        return Outcome::Done;
    }
    let (replies, batch) = plan(db, &t.queued);
    if batch.is_empty() {
        out.extend_from_slice(&replies);
        return Outcome::Read;
    }
    match db.write_deferred(batch) {
        Ok(d) => {
            out.extend_from_slice(&replies);
            Outcome::Deferred(d.lsn())
        }
        Err(e) => {
            aborted(out, &crate::refusal::message(&e));
            Outcome::Done
        }
    }
}

/// `EXECABORT` for a batch refused whole (`why`: the refusal).
pub fn aborted(out: &mut Vec<u8>, why: &str) {
    error(out, &format!("EXECABORT Transaction discarded: {why}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(db: &Db, tx: &mut Option<Transaction>, a: &[&str]) -> (Option<Outcome>, String) {
        let args: Vec<Vec<u8>> = a.iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut out = Vec::new();
        let o = intercept(tx, db, &args, &mut out);
        (o, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn exec_applies_every_write_as_one_batch_and_reads_its_own_writes() {
        let t = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(t.path(), keel::Options::default()).unwrap();
        db.put("old", "1").unwrap();
        let mut tx = None;
        assert_eq!(
            run(&db, &mut tx, &["GET", "x"]).0,
            None,
            "no transaction: run as usual"
        );
        assert_eq!(run(&db, &mut tx, &["MULTI"]).1, "+OK\r\n");
        assert_eq!(run(&db, &mut tx, &["SET", "a", "1"]).1, "+QUEUED\r\n");
        assert_eq!(run(&db, &mut tx, &["GET", "a"]).1, "+QUEUED\r\n");
        assert_eq!(run(&db, &mut tx, &["DEL", "old", "none"]).1, "+QUEUED\r\n");
        assert_eq!(run(&db, &mut tx, &["DBSIZE"]).1, "+QUEUED\r\n");
        assert_eq!(db.get("a").unwrap(), None, "queued, not run");
        let lsn = db.stats().applied_lsn;
        let (o, reply) = run(&db, &mut tx, &["EXEC"]);
        let Some(Outcome::Deferred(at)) = o else {
            panic!("{o:?}")
        };
        assert_eq!(reply, "*4\r\n+OK\r\n$1\r\n1\r\n:1\r\n:1\r\n");
        assert_eq!(at, lsn + 1, "one log record for the whole transaction");
        db.commit_through(at).unwrap();
        assert_eq!(db.get("a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(db.get("old").unwrap(), None);
        assert!(tx.is_none());
    }

    #[test]
    fn errors_abort_and_nothing_is_applied() {
        let t = tempfile::tempdir().unwrap();
        let opts = crate::refusal::server_options(keel::Options::default());
        let (db, _) = Db::open(t.path(), opts).unwrap();
        let mut tx = None;
        assert_eq!(
            run(&db, &mut tx, &["EXEC"]).1,
            "-ERR EXEC without MULTI\r\n"
        );
        run(&db, &mut tx, &["MULTI"]);
        assert!(run(&db, &mut tx, &["MULTI"])
            .1
            .starts_with("-ERR MULTI calls can not be nested"));
        run(&db, &mut tx, &["SET", "a", "1"]);
        assert!(run(&db, &mut tx, &["NOSUCH"]).1.starts_with("-ERR unknown"));
        assert!(run(&db, &mut tx, &["EXEC"]).1.starts_with("-EXECABORT"));
        run(&db, &mut tx, &["MULTI"]);
        run(&db, &mut tx, &["SET", "a", "1"]);
        run(&db, &mut tx, &["SET", "b", ""]);
        let (o, reply) = run(&db, &mut tx, &["EXEC"]);
        assert_eq!(o, Some(Outcome::Done));
        assert!(
            reply.contains("EXECABORT") && reply.contains("empty"),
            "{reply}"
        );
        run(&db, &mut tx, &["MULTI"]);
        run(&db, &mut tx, &["SET", "a", "1"]);
        assert_eq!(run(&db, &mut tx, &["DISCARD"]).1, "+OK\r\n");
        assert!(run(&db, &mut tx, &["WATCH", "a"])
            .1
            .contains("not supported"));
        assert!(db.is_empty(), "an aborted transaction wrote");
    }
}
