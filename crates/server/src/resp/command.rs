//! RESP commands: what each one does to the store and what it answers.
//!
//! Writes are *deferred*: [`execute`] queues them in the log
//! ([`Db::put_deferred`] and friends), writes their success reply into the
//! output buffer and returns [`Outcome::Deferred`]. The event loop commits
//! every write of its turn with one fdatasync before it sends any of those
//! replies, and replaces them with an error if the commit fails. So a reply
//! to a write never leaves the server before the write is durable under the
//! sync policy.
//!
//! Ordering: a connection's commands run in the order it sent them. A
//! command that reads the store must not run while the same connection has
//! a write not yet committed (it would not see it), so [`can_run`] says when
//! the loop must commit first. DEL reads (its reply counts the keys that
//! existed) and writes, so it waits until no write of any connection is
//! pending: its count and its delete then see the same state. (A write
//! arriving over HTTP at that moment is not ordered with it: with both
//! protocols writing one key at once, DEL's count is best effort; what is
//! stored is always right.)

use super::frame::{array_len, bulk, error, integer, simple};
use keel::{Db, WriteBatch};

/// What became of one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The reply is complete in the output buffer.
    Done,
    /// A read of the store; its reply is complete in the output buffer.
    Read,
    /// A write was queued with this LSN; its reply, in the output buffer,
    /// stands only once the write is committed.
    Deferred(u64),
    /// Reply written; close the connection after sending it.
    Close,
}

/// The command name in upper case, for dispatch, in `buf` (no allocation
/// per command). A name too long for it is no command keel knows.
pub fn upper_name<'a>(name: &[u8], buf: &'a mut [u8; 16]) -> &'a [u8] {
    if name.len() > buf.len() {
        return b"";
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name);
    out.make_ascii_uppercase();
    out
}

/// Whether `args` may run now, given whether this connection (`own`) and
/// any connection (`any`) have writes queued but not yet committed. Writes
/// that read nothing (SET, MSET, FLUSHDB) may always run: the log orders
/// them. Everything else waits for this connection's writes; DEL waits for
/// everyone's.
pub fn can_run(args: &[Vec<u8>], own_pending: bool, any_pending: bool) -> bool {
    if !own_pending && !any_pending {
        return true;
    }
    let Some(first) = args.first() else {
        return true;
    };
    let blind = [
        &b"SET"[..],
        b"MSET",
        b"FLUSHDB",
        b"FLUSHALL",
        b"PING",
        b"ECHO",
    ]
    .iter()
    .any(|c| first.eq_ignore_ascii_case(c));
    if blind {
        return true;
    }
    if first.eq_ignore_ascii_case(b"DEL") {
        return !any_pending;
    }
    !own_pending
}

/// The reply for a write refused by the store (validation or fail-stop).
pub fn db_error(out: &mut Vec<u8>, e: &keel::Error) {
    error(out, &format!("ERR {}", crate::refusal::message(e)));
}

fn deferred(
    out: &mut Vec<u8>,
    queued: keel::Result<keel::Deferred>,
    ok: impl FnOnce(&mut Vec<u8>),
) -> Outcome {
    match queued {
        Ok(d) => {
            ok(out);
            Outcome::Deferred(d.lsn())
        }
        Err(e) => {
            db_error(out, &e);
            Outcome::Done
        }
    }
}

/// Runs one command and writes its reply into `out`.
///
/// One `match` with an arm per command (about 95 lines): the dispatch table
/// reads best whole, and each arm is a few lines.
pub fn execute(db: &Db, args: Vec<Vec<u8>>, out: &mut Vec<u8>) -> Outcome {
    let Some(name) = args.first() else {
        return Outcome::Done;
    };
    let mut buf = [0u8; 16];
    let cmd = upper_name(name, &mut buf);
    let argc = args.len();
    let arity = |out: &mut Vec<u8>| wrong_arity(out, cmd);
    if is_http_line(cmd) {
        return Outcome::Close;
    }
    match cmd {
        b"PING" => match argc {
            1 => simple(out, "PONG"),
            2 => bulk(out, Some(&args[1])),
            _ => arity(out),
        },
        b"ECHO" if argc == 2 => bulk(out, Some(&args[1])),
        b"QUIT" => {
            simple(out, "OK");
            return Outcome::Close;
        }
        b"SELECT" if argc == 2 => {
            if args[1] == b"0" {
                simple(out, "OK")
            } else {
                error(
                    out,
                    "ERR DB index is out of range (keel has one database, 0)",
                )
            }
        }
        b"SET" if argc == 3 => {
            return deferred(out, db.put_deferred(&args[1], &args[2]), |o| {
                simple(o, "OK")
            })
        }
        b"SET" if argc > 3 => error(out, SET_OPTIONS),
        b"GET" if argc == 2 => {
            match db.get(&args[1]) {
                Ok(v) => bulk(out, v.as_deref()),
                Err(e) => db_error(out, &e),
            }
            return Outcome::Read;
        }
        b"DEL" if argc >= 2 => {
            let mut present = 0;
            let mut batch = WriteBatch::new();
            for k in &args[1..] {
                if matches!(db.get(k), Ok(Some(_))) {
                    present += 1;
                }
                batch.delete(k.clone());
            }
            return deferred(out, db.write_deferred(batch), |o| integer(o, present));
        }
        b"EXISTS" if argc >= 2 => {
            let n = args[1..]
                .iter()
                .filter(|k| matches!(db.get(k), Ok(Some(_))))
                .count();
            integer(out, n as i64);
            return Outcome::Read;
        }
        b"MSET" if argc >= 3 && argc % 2 == 1 => {
            let mut batch = WriteBatch::new();
            let mut it = args.into_iter().skip(1);
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                batch.put(k, v);
            }
            return deferred(out, db.write_deferred(batch), |o| simple(o, "OK"));
        }
        b"MGET" if argc >= 2 => {
            array_len(out, argc - 1);
            for k in &args[1..] {
                bulk(out, db.get(k).ok().flatten().as_deref());
            }
            return Outcome::Read;
        }
        b"FLUSHDB" | b"FLUSHALL" if argc <= 2 => return flush(db, &args, out),
        b"DBSIZE" if argc == 1 => integer(out, db.len() as i64),
        b"INFO" => bulk(
            out,
            Some(info_text(db, &format!("{:?}", db.options().sync)).as_bytes()),
        ),
        b"COMMAND" => array_len(out, 0),
        b"CONFIG" if argc == 3 && args[1].eq_ignore_ascii_case(b"GET") => {
            config_get(db.options().sync, &args[2], out)
        }
        b"HELLO" => error(
            out,
            "NOPROTO keel speaks RESP2 only; HELLO is not supported",
        ),
        b"ECHO" | b"SELECT" | b"SET" | b"GET" | b"DEL" | b"EXISTS" | b"MSET" | b"MGET"
        | b"FLUSHDB" | b"FLUSHALL" | b"DBSIZE" | b"CONFIG" => arity(out),
        _ => unknown(&args, out),
    }
    Outcome::Done
}

/// The reply to command `cmd` with the wrong number of arguments.
pub fn wrong_arity(out: &mut Vec<u8>, cmd: &[u8]) {
    error(
        out,
        &format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(cmd).to_ascii_lowercase()
        ),
    );
}

/// The reply to `SET` with options (keel takes none).
pub const SET_OPTIONS: &str = "ERR syntax error: SET options (NX, XX, EX, PX, KEEPTTL, GET) are not supported by keel; use plain SET key value";

/// Whether `FLUSHALL`/`FLUSHDB`'s arguments are a mode keel takes (none,
/// `ASYNC` or `SYNC`: both mean durably, now).
pub fn flush_mode_ok(args: &[Vec<u8>]) -> bool {
    args.get(1)
        .is_none_or(|m| m.eq_ignore_ascii_case(b"ASYNC") || m.eq_ignore_ascii_case(b"SYNC"))
}

/// Whether a command name is the first word of an HTTP request line or
/// header (POST, Host:): an HTTP request sent to this port, which any web
/// page can make a browser send; its lines would run as inline commands.
/// Redis treats them as an attack and closes the connection; so does keel.
fn is_http_line(cmd: &[u8]) -> bool {
    let http = cmd == b"POST" || cmd == b"HOST:";
    if http {
        tracing::warn!(
            "possible security attack: an HTTP request ({}) on the Redis port; connection closed",
            String::from_utf8_lossy(cmd)
        );
    }
    http
}

/// FLUSHALL / FLUSHDB [ASYNC|SYNC]: both modes mean durably, now.
fn flush(db: &Db, args: &[Vec<u8>], out: &mut Vec<u8>) -> Outcome {
    if !flush_mode_ok(args) {
        error(out, "ERR syntax error");
        return Outcome::Done;
    }
    deferred(out, db.clear_deferred(), |o| simple(o, "OK"))
}

/// `INFO`'s text for `db`; `sync`: the sync policy that acknowledges
/// writes (a cluster node's is its Raft log's).
pub fn info_text(db: &Db, sync: &str) -> String {
    let st = db.stats();
    let text = format!(
        "# Server\r\nkeel_version:{}\r\n# Keyspace\r\ndb0:keys={}\r\n# Persistence\r\nsync_policy:{}\r\napplied_lsn:{}\r\ndurable_lsn:{}\r\nwal_fsyncs:{}\r\nwal_appends:{}\r\nwal_bytes_written:{}\r\nwal_segments:{}\r\ncheckpoint_lsn:{}\r\nstopped:{}\r\nlast_recovery:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        st.keys,
        sync,
        st.applied_lsn,
        st.durable_lsn,
        st.wal.syncs,
        st.wal.appends,
        st.wal.bytes_written,
        st.log_segments,
        st.checkpoint_lsn.unwrap_or(0),
        st.stopped,
        st.recovery.to_string().replace(['\r', '\n'], " ")
    );
    match &st.tables {
        Some(t) => text + &tables_info(t, db.options().exact_key_count),
        None => text,
    }
}

/// INFO's `# Tables` section (a store on tables); `exact`: whether
/// `keys` is exact or an estimate (`exact_key_count`).
fn tables_info(t: &keel::TablesStats, exact: bool) -> String {
    let mut s = String::from("# Tables\r\n");
    s += if exact {
        "key_count:exact\r\n"
    } else {
        "key_count:estimate\r\n"
    };
    for (level, (tables, bytes)) in t.levels.iter().enumerate() {
        s += &format!("level{level}:tables={tables},bytes={bytes}\r\n");
    }
    s += &format!(
        "memtable_bytes:{}\r\nfrozen_memtables:{}\r\nflushes:{}\r\ncompactions:{}\r\ncompaction_bytes_read:{}\r\ncompaction_bytes_written:{}\r\nwrite_amplification:{:.2}\r\nwrite_stall_seconds:{:.3}\r\nblock_cache_hit_ratio:{:.3}\r\n",
        t.memtable_bytes,
        t.frozen,
        t.flushes,
        t.compactions,
        t.compaction_bytes_read,
        t.compaction_bytes_written,
        t.write_amplification(),
        t.stall_micros as f64 / 1e6,
        t.cache_hit_ratio()
    );
    s
}

/// `CONFIG GET param`; `sync`: the sync policy that acknowledges writes.
pub fn config_get(sync: keel::SyncPolicy, param: &[u8], out: &mut Vec<u8>) {
    let param = String::from_utf8_lossy(param).to_ascii_lowercase();
    let value = match param.as_str() {
        "save" => Some(""),
        "appendonly" => Some("yes"),
        "appendfsync" => Some(match sync {
            keel::SyncPolicy::Always => "always",
            keel::SyncPolicy::Interval(_) => "everysec",
            keel::SyncPolicy::Never => "no",
        }),
        "databases" => Some("1"),
        _ => None,
    };
    match value {
        Some(v) => {
            array_len(out, 2);
            bulk(out, Some(param.as_bytes()));
            bulk(out, Some(v.as_bytes()));
        }
        None => array_len(out, 0),
    }
}

fn unknown(args: &[Vec<u8>], out: &mut Vec<u8>) {
    let name = &args[0];
    let preview: Vec<String> = args[1..]
        .iter()
        .take(3)
        .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(32)])))
        .collect();
    error(
        out,
        &format!(
            "ERR unknown command '{}', with args beginning with: {}",
            String::from_utf8_lossy(&name[..name.len().min(64)]),
            preview.join(" ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn reads_wait_for_their_own_connections_writes_and_del_for_everyones() {
        for (cmd, own, any, expect) in [
            (&["GET", "k"][..], false, false, true),
            (&["GET", "k"], false, true, true),
            (&["GET", "k"], true, true, false),
            (&["set", "k", "v"], true, true, true),
            (&["MSET", "a", "1"], true, true, true),
            (&["FLUSHALL"], true, true, true),
            (&["DEL", "k"], false, true, false),
            (&["DEL", "k"], false, false, true),
            (&["EXISTS", "k"], true, true, false),
            (&["DBSIZE"], true, true, false),
            (&["QUIT"], true, true, false),
        ] {
            assert_eq!(
                can_run(&args(cmd), own, any),
                expect,
                "{cmd:?} own={own} any={any}"
            );
        }
    }

    #[test]
    fn writes_are_deferred_and_invisible_until_committed() {
        let t = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(t.path(), keel::Options::default()).unwrap();
        let mut out = Vec::new();
        let Outcome::Deferred(lsn) = execute(&db, args(&["SET", "k", "v"]), &mut out) else {
            panic!("SET was not deferred");
        };
        assert_eq!(out, b"+OK\r\n");
        assert_eq!(db.get("k").unwrap(), None, "visible before commit");
        db.commit_through(lsn).unwrap();
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        out.clear();
        let o = execute(&db, args(&["SET", "", "v"]), &mut out);
        assert_eq!(o, Outcome::Done, "an invalid write is refused at once");
        assert!(
            out.starts_with(b"-ERR key cannot be empty"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn empty_values_are_refused_as_over_http_and_change_nothing() {
        let t = tempfile::tempdir().unwrap();
        let opts = crate::refusal::server_options(keel::Options::default());
        let (db, _) = Db::open(t.path(), opts).unwrap();
        for cmd in [&["SET", "k", ""][..], &["MSET", "a", "1", "k", ""]] {
            let mut out = Vec::new();
            assert_eq!(execute(&db, args(cmd), &mut out), Outcome::Done, "{cmd:?}");
            assert_eq!(out, b"-ERR value cannot be empty\r\n", "{cmd:?}");
        }
        assert!(db.is_empty(), "a refused MSET wrote part of itself");
    }

    #[test]
    fn flushall_takes_only_async_or_sync_and_http_lines_close_the_connection() {
        let t = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(t.path(), keel::Options::default()).unwrap();
        db.put("k", "v").unwrap();
        let mut out = Vec::new();
        assert_eq!(
            execute(&db, args(&["FLUSHALL", "BOGUS"]), &mut out),
            Outcome::Done
        );
        assert_eq!(out, b"-ERR syntax error\r\n");
        assert_eq!(db.len(), 1, "a refused FLUSHALL flushed");
        for ok in ["async", "SYNC"] {
            out.clear();
            let o = execute(&db, args(&["flushall", ok]), &mut out);
            assert!(matches!(o, Outcome::Deferred(_)), "{ok}");
        }
        for attack in [&["POST", "/", "HTTP/1.1"][..], &["Host:", "localhost"]] {
            out.clear();
            assert_eq!(execute(&db, args(attack), &mut out), Outcome::Close);
            assert!(out.is_empty(), "an HTTP line got a reply");
        }
    }
}
