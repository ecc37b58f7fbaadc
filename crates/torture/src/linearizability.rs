//! A linearizability checker for one register whose writes carry unique
//! values, after Porcupine (Athalye) and Wing & Gong / Lowe: a depth-first
//! search over the history's call and return events, linearizing a call when
//! the register allows it, backtracking when a return is reached before its
//! call was linearized, and caching (linearized set, state) pairs so no
//! configuration is explored twice.
//!
//! Operations whose outcome is unknown (`Op::unknown`) get the latest
//! possible return time (for a killed server, when its successor was
//! ready) and two alternatives: they took effect inside their window, or
//! never did. The search tries both.

use std::collections::HashSet;

/// What an operation does to the register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Sets the value (`None`: deletes it).
    Write(Option<String>),
    /// Reads the value and saw this.
    Read(Option<String>),
}

/// One operation on the register, with its real-time window.
#[derive(Clone, Debug)]
pub struct Op {
    /// Invocation time (any monotonic unit).
    pub call: u64,
    /// Return time (`>= call`).
    pub ret: u64,
    /// What it did.
    pub action: Action,
    /// The outcome is unknown: it may also have had no effect at all.
    pub unknown: bool,
}

const NIL: usize = usize::MAX;

struct Node {
    op: usize,
    is_call: bool,
    partner: usize,
    prev: usize,
    next: usize,
}

/// Whether `ops` is linearizable as a register starting empty.
///
/// One piece (about 110 lines) on purpose: the search (Wing & Gong with
/// Lowe's cache, as Porcupine does) lifts and unlifts entries of one linked
/// list and one stack; split apart, each part would need all of that state.
pub fn check(ops: &[Op]) -> bool {
    let n = ops.len();
    if n == 0 {
        return true;
    }
    // Events sorted by time; at equal times calls first (concurrent).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, true, i));
        events.push((op.ret.max(op.call), false, i));
    }
    events.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // Node 0 is the head sentinel.
    let mut nodes: Vec<Node> = vec![Node {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: NIL,
    }];
    let mut call_node = vec![NIL; n];
    let mut ret_node = vec![NIL; n];
    for (_, is_call, i) in &events {
        let idx = nodes.len();
        let prev = idx - 1;
        nodes[prev].next = idx;
        nodes.push(Node {
            op: *i,
            is_call: *is_call,
            partner: NIL,
            prev,
            next: NIL,
        });
        if *is_call {
            call_node[*i] = idx;
        } else {
            ret_node[*i] = idx;
        }
    }
    for i in 0..n {
        nodes[call_node[i]].partner = ret_node[i];
    }
    let lift = |nodes: &mut Vec<Node>, c: usize| {
        for x in [c, nodes[c].partner] {
            let (p, nx) = (nodes[x].prev, nodes[x].next);
            nodes[p].next = nx;
            if nx != NIL {
                nodes[nx].prev = p;
            }
        }
    };
    let unlift = |nodes: &mut Vec<Node>, c: usize| {
        for x in [nodes[c].partner, c] {
            let (p, nx) = (nodes[x].prev, nodes[x].next);
            nodes[p].next = x;
            if nx != NIL {
                nodes[nx].prev = x;
            }
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // (call node, state before it, which alternative was taken)
    let mut stack: Vec<(usize, Option<String>, usize)> = Vec::new();
    let mut state: Option<String> = None;
    let mut entry = nodes[0].next;
    let mut first_alt = 0;
    while nodes[0].next != NIL {
        if entry != NIL && nodes[entry].is_call {
            let op = nodes[entry].op;
            // Alternative 0: the operation's effect; alternative 1 (unknown
            // outcomes only): no effect at all.
            let alts = if ops[op].unknown { 2 } else { 1 };
            let mut lifted = false;
            for alt in first_alt..alts {
                let next_state = match (&ops[op].action, alt) {
                    (_, 1) => Some(state.clone()),
                    (Action::Write(v), _) => Some(v.clone()),
                    (Action::Read(v), _) => (v == &state).then(|| state.clone()),
                };
                let Some(ns) = next_state else { continue };
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), ns.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, ns), alt));
                    linearized = lin;
                    lift(&mut nodes, entry);
                    entry = nodes[0].next;
                    lifted = true;
                    break;
                }
            }
            first_alt = 0;
            if !lifted {
                entry = nodes[entry].next;
            }
            continue;
        }
        // A return whose call is not linearized (or nothing left to try):
        // undo the last choice and try its next alternative.
        let Some((c, prev, alt)) = stack.pop() else {
            return false;
        };
        let op = nodes[c].op;
        linearized[op / 64] &= !(1 << (op % 64));
        state = prev;
        unlift(&mut nodes, c);
        entry = c;
        first_alt = alt + 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: u64, v: &str) -> Op {
        Op {
            call,
            ret,
            action: Action::Write(Some(v.into())),
            unknown: false,
        }
    }
    fn r(call: u64, ret: u64, v: Option<&str>) -> Op {
        Op {
            call,
            ret,
            action: Action::Read(v.map(Into::into)),
            unknown: false,
        }
    }

    #[test]
    fn sequential_histories() {
        assert!(check(&[w(0, 1, "a"), r(2, 3, Some("a"))]));
        assert!(!check(&[w(0, 1, "a"), r(2, 3, Some("b"))]));
        assert!(
            !check(&[w(0, 1, "a"), r(2, 3, None)]),
            "read went back before the write"
        );
        assert!(check(&[r(0, 1, None), w(2, 3, "a")]));
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = [w(0, 10, "a"), w(1, 11, "b"), r(12, 13, Some("a"))];
        assert!(check(&h));
        let h = [w(0, 10, "a"), w(1, 11, "b"), r(12, 13, Some("b"))];
        assert!(check(&h));
        // But two later reads cannot see them in both orders.
        let h = [
            w(0, 10, "a"),
            w(1, 11, "b"),
            r(12, 13, Some("b")),
            r(14, 15, Some("a")),
        ];
        assert!(!check(&h), "a value came back after being overwritten");
    }

    #[test]
    fn a_read_concurrent_with_a_write_sees_either_value() {
        let h = [
            w(0, 1, "a"),
            w(2, 10, "b"),
            r(3, 4, Some("a")),
            r(5, 6, Some("b")),
            r(7, 8, Some("b")),
        ];
        assert!(check(&h));
        let h = [
            w(0, 1, "a"),
            w(2, 10, "b"),
            r(3, 4, Some("b")),
            r(5, 6, Some("a")),
        ];
        assert!(!check(&h), "stale read after a newer one");
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        // Unknown write with a window up to t=100.
        let unknown = Op {
            unknown: true,
            ..w(0, 100, "x")
        };
        assert!(check(&[unknown.clone(), r(101, 102, Some("x"))]));
        assert!(check(&[
            unknown.clone(),
            r(50, 51, None),
            r(101, 102, None)
        ]));
        assert!(!check(&[
            unknown.clone(),
            r(50, 51, Some("x")),
            r(101, 102, None)
        ]));
        // A known write must have happened.
        assert!(!check(&[w(0, 100, "x"), r(101, 102, None)]));
    }

    #[test]
    fn many_sequential_ops_are_fast() {
        let mut h = vec![];
        for i in 0..5000u64 {
            h.push(w(i * 4, i * 4 + 1, &i.to_string()));
            h.push(r(i * 4 + 2, i * 4 + 3, Some(&i.to_string())));
        }
        assert!(check(&h));
    }
}
