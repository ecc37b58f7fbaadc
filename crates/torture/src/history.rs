//! The recorded history of a torture run and the checks made on it.

use keel_torture::linearizability;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// 2xx (or 404 for a GET): it happened.
    Ok,
    /// Refused before sending: it did not happen.
    Fail,
    /// Sent, no answer (timeout, reset, 5xx): it may or may not have happened.
    Unknown,
}

/// What an operation touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    /// A put (`Some`) or delete (`None`) of a key.
    Write(String, Option<String>),
    /// A read of a key and what it saw.
    Read(String, Option<String>),
    /// Removal of every key.
    Clear,
}

/// One operation.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Client id (fresh after an unknown outcome).
    pub client: u64,
    /// Invocation time, ns since the run began.
    pub call: u64,
    /// Return time; for unknown outcomes, the end of the window in which it
    /// could take effect (when the next server was ready).
    pub ret: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What it touched (several for a batch).
    pub targets: Vec<Target>,
}

/// Counters for the report.
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
    pub acked_writes: u64,
}

/// All operations, in the order they were recorded.
/// What a recovered state shows that no correct store could.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A key holds a value no client ever wrote.
    #[error("key {key} holds {value:?}, a value no client wrote (phantom)")]
    Phantom {
        /// The key.
        key: String,
        /// What it holds.
        value: String,
    },
    /// An acknowledged write is gone and nothing later explains it.
    #[error("key {key} holds {holds:?}, but the acknowledged write of {acknowledged:?} (completed at {completed_ns} ns) is not superseded by anything that could explain it: acknowledged write lost")]
    Lost {
        /// The key.
        key: String,
        /// What it holds.
        holds: Option<String>,
        /// The last acknowledged write's value.
        acknowledged: Option<String>,
        /// When that write completed.
        completed_ns: u64,
    },
    /// Part of a batch is visible and part is not.
    #[error(
        "a batch was applied in part: key {key} holds {holds:?} instead of the batch's {batch:?}"
    )]
    PartialBatch {
        /// The key.
        key: String,
        /// What it holds.
        holds: Option<String>,
        /// What the batch wrote to it.
        batch: Option<String>,
    },
}

#[derive(Default)]
pub struct History {
    events: Vec<Event>,
    /// Unknown events whose window is still open.
    open_unknown: Vec<usize>,
}

/// Parses `GET /kv?limit=..` into key -> value.
pub fn parse_listing(body: &[u8]) -> anyhow::Result<BTreeMap<String, String>> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let mut out = BTreeMap::new();
    for item in v["items"].as_array().into_iter().flatten() {
        let k = item["key"].as_str().unwrap_or_default().to_string();
        let val = item["value"].as_str().unwrap_or_default().to_string();
        out.insert(k, val);
    }
    Ok(out)
}

impl History {
    /// Records an operation.
    pub fn push(&mut self, e: Event) {
        if e.outcome == Outcome::Unknown {
            self.open_unknown.push(self.events.len());
        }
        self.events.push(e);
    }

    /// Unknown operations could take effect only until `t` (a new server
    /// was ready then): their windows end there.
    pub fn close_unknown_windows(&mut self, t: u64) {
        for i in self.open_unknown.drain(..) {
            self.events[i].ret = self.events[i].ret.max(t);
        }
    }

    /// Records a read of every key at one instant (the read-back).
    pub fn push_snapshot(
        &mut self,
        call: u64,
        ret: u64,
        state: &BTreeMap<String, String>,
        keys: u64,
        key: fn(u64) -> String,
    ) {
        let targets = (0..keys)
            .map(|i| {
                let k = key(i);
                let v = state.get(&k).cloned();
                Target::Read(k, v)
            })
            .collect();
        self.events.push(Event {
            client: u64::MAX,
            call,
            ret,
            outcome: Outcome::Ok,
            targets,
        });
    }

    fn writes_to<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = (&'a Event, Option<&'a String>)> + 'a {
        self.events
            .iter()
            .filter(|e| e.outcome != Outcome::Fail)
            .flat_map(move |e| {
                e.targets.iter().filter_map(move |t| match t {
                    Target::Write(k, v) if k == key => Some((e, v.as_ref())),
                    Target::Clear => Some((e, None)),
                    _ => None,
                })
            })
    }

    /// The invariants, with clear messages: nothing acknowledged lost, no
    /// phantom value, batches all-or-nothing.
    pub fn check_snapshot(&self, state: &BTreeMap<String, String>) -> Result<(), Violation> {
        let written: HashSet<&String> = self
            .events
            .iter()
            .flat_map(|e| e.targets.iter())
            .filter_map(|t| match t {
                Target::Write(_, Some(v)) => Some(v),
                _ => None,
            })
            .collect();
        let mut keys: HashSet<String> = state.keys().cloned().collect();
        for e in &self.events {
            for t in &e.targets {
                if let Target::Write(k, _) | Target::Read(k, _) = t {
                    keys.insert(k.clone());
                }
            }
        }
        for k in &keys {
            let got = state.get(k);
            if let Some(v) = got {
                if !written.contains(v) {
                    return Err(Violation::Phantom {
                        key: k.clone(),
                        value: v.clone(),
                    });
                }
            }
            let writes: Vec<(&Event, Option<&String>)> = self.writes_to(k).collect();
            // A write can be the last one unless an acknowledged write to
            // the key began after it had ended.
            let latest_acked_call = writes
                .iter()
                .filter(|(w, _)| w.outcome == Outcome::Ok)
                .map(|(w, _)| w.call)
                .max();
            let candidates: Vec<Option<&String>> = writes
                .iter()
                .filter(|(w, _)| latest_acked_call.is_none_or(|c| c <= w.ret))
                .map(|(_, v)| *v)
                .collect();
            let any_acked = writes.iter().any(|(w, _)| w.outcome == Outcome::Ok);
            let ok = candidates.contains(&got) || (got.is_none() && !any_acked);
            if !ok {
                let last = writes
                    .iter()
                    .filter(|(w, _)| w.outcome == Outcome::Ok)
                    .max_by_key(|(w, _)| w.ret);
                return Err(Violation::Lost {
                    key: k.clone(),
                    holds: got.cloned(),
                    acknowledged: last.and_then(|(_, v)| v.cloned()),
                    completed_ns: last.map_or(0, |(w, _)| w.ret),
                });
            }
        }
        self.check_batches(state)
    }

    /// Batches: one key showing a batch's value means all of it happened.
    fn check_batches(&self, state: &BTreeMap<String, String>) -> Result<(), Violation> {
        for b in self
            .events
            .iter()
            .filter(|e| e.outcome != Outcome::Fail && e.targets.len() > 1)
        {
            let shows = b.targets.iter().any(|t| match t {
                Target::Write(k, Some(v)) => state.get(k) == Some(v),
                _ => false,
            });
            if !shows {
                continue;
            }
            for t in &b.targets {
                let Target::Write(k, v) = t else { continue };
                let got = state.get(k);
                let explained = got == v.as_ref()
                    || self
                        .writes_to(k)
                        .any(|(w, wv)| w.ret > b.call && !std::ptr::eq(w, b) && wv == got);
                if !explained {
                    return Err(Violation::PartialBatch {
                        key: k.clone(),
                        holds: got.cloned(),
                        batch: v.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Per key: is the whole history linearizable as a register?
    pub fn check_linearizable(&self) -> Vec<(String, bool)> {
        let mut per_key: BTreeMap<String, Vec<linearizability::Op>> = BTreeMap::new();
        let mut keys: HashSet<String> = HashSet::new();
        for e in &self.events {
            for t in &e.targets {
                if let Target::Write(k, _) | Target::Read(k, _) = t {
                    keys.insert(k.clone());
                }
            }
        }
        for e in self.events.iter().filter(|e| e.outcome != Outcome::Fail) {
            for t in &e.targets {
                let (k, action) = match t {
                    Target::Write(k, v) => (k.clone(), linearizability::Action::Write(v.clone())),
                    Target::Read(k, v) if e.outcome == Outcome::Ok => {
                        (k.clone(), linearizability::Action::Read(v.clone()))
                    }
                    Target::Read(..) => continue,
                    Target::Clear => {
                        for k in &keys {
                            per_key
                                .entry(k.clone())
                                .or_default()
                                .push(linearizability::Op {
                                    call: e.call,
                                    ret: e.ret,
                                    action: linearizability::Action::Write(None),
                                    unknown: e.outcome == Outcome::Unknown,
                                });
                        }
                        continue;
                    }
                };
                per_key.entry(k).or_default().push(linearizability::Op {
                    call: e.call,
                    ret: e.ret,
                    action,
                    unknown: e.outcome == Outcome::Unknown,
                });
            }
        }
        per_key
            .into_iter()
            .map(|(k, ops)| {
                let ok = linearizability::check(&ops);
                (k, ok)
            })
            .collect()
    }

    /// Counters for the report.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            ok: 0,
            fail: 0,
            unknown: 0,
            acked_writes: 0,
        };
        for e in self.events.iter().filter(|e| e.client != u64::MAX) {
            match e.outcome {
                Outcome::Ok => {
                    c.ok += 1;
                    c.acked_writes += e
                        .targets
                        .iter()
                        .filter(|t| matches!(t, Target::Write(..) | Target::Clear))
                        .count() as u64;
                }
                Outcome::Fail => c.fail += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
        c
    }

    /// Writes the history as JSON lines.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::new();
        for e in &self.events {
            out.push_str(&serde_json::to_string(e)?);
            out.push('\n');
        }
        std::fs::write(path, out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(call: u64, ret: u64, outcome: Outcome, targets: Vec<Target>) -> Event {
        Event {
            client: 0,
            call,
            ret,
            outcome,
            targets,
        }
    }
    fn put(k: &str, v: &str) -> Target {
        Target::Write(k.into(), Some(v.into()))
    }
    fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let mut h = History::default();
        h.push(ev(0, 1, Outcome::Ok, vec![put("a", "1")]));
        h.push(ev(2, 3, Outcome::Ok, vec![put("a", "2")]));
        assert!(h.check_snapshot(&state(&[("a", "2")])).is_ok());
        let err = h.check_snapshot(&state(&[("a", "1")])).unwrap_err();
        assert!(matches!(err, Violation::Lost { .. }), "{err}");
        assert!(h.check_snapshot(&state(&[])).is_err());
    }

    #[test]
    fn unknown_and_concurrent_writes_explain_values() {
        let mut h = History::default();
        h.push(ev(0, 10, Outcome::Ok, vec![put("a", "1")]));
        h.push(ev(5, 15, Outcome::Ok, vec![put("a", "2")]));
        h.push(ev(20, 100, Outcome::Unknown, vec![put("a", "3")]));
        for v in ["1", "2", "3"] {
            assert!(h.check_snapshot(&state(&[("a", v)])).is_ok(), "{v}");
        }
        assert!(h
            .check_snapshot(&state(&[("a", "9")]))
            .unwrap_err()
            .to_string()
            .contains("phantom"));
    }

    #[test]
    fn a_partial_batch_is_caught() {
        let mut h = History::default();
        h.push(ev(
            0,
            10,
            Outcome::Unknown,
            vec![put("a", "x"), put("b", "y")],
        ));
        assert!(h.check_snapshot(&state(&[("a", "x"), ("b", "y")])).is_ok());
        assert!(h.check_snapshot(&state(&[])).is_ok());
        let err = h.check_snapshot(&state(&[("a", "x")])).unwrap_err();
        assert!(matches!(err, Violation::PartialBatch { .. }), "{err}");
    }

    #[test]
    fn stale_reads_fail_linearizability() {
        let mut h = History::default();
        h.push(ev(0, 1, Outcome::Ok, vec![put("a", "1")]));
        h.push(ev(2, 3, Outcome::Ok, vec![put("a", "2")]));
        h.push(ev(
            4,
            5,
            Outcome::Ok,
            vec![Target::Read("a".into(), Some("2".into()))],
        ));
        assert!(h.check_linearizable().iter().all(|(_, ok)| *ok));
        h.push(ev(
            6,
            7,
            Outcome::Ok,
            vec![Target::Read("a".into(), Some("1".into()))],
        ));
        assert!(h.check_linearizable().iter().any(|(_, ok)| !ok));
    }
}
