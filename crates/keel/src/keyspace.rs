//! [`Keyspace`]: the store's state in memory.
//!
//! Two views of the same entries, always updated together:
//! - an ordered persistent map ([`Tree`], `imbl::OrdMap`) for scans and for
//!   checkpoints, which snapshot it in O(1) and serialise it while writes go
//!   on;
//! - a hash index for point reads. A lookup in the ordered map compares the
//!   key with about log2(n) stored keys, each behind a pointer (a cache miss
//!   apiece at a million keys: most of a GET's CPU time in profiles); the
//!   index needs one hash and one comparison.
//!
//! Keys ([`Key`]: inline head, shared bytes) and values (`Arc`) are shared
//! between the two, so the index costs
//! a hash-table slot per key (about 50 bytes), not a copy of the data.
//!
//! Invariant: `index` and `tree` hold exactly the same entries.

use crate::checkpoint::{Bytes, Key, Tree};
use crate::metadata::Metadata;
use crate::op::{BatchOp, Op};
use std::collections::HashMap;
use std::sync::Arc;

/// The entries of the store, ordered and indexed.
#[derive(Default)]
pub(crate) struct Keyspace {
    tree: Tree,
    index: HashMap<Key, Bytes>,
}

impl Keyspace {
    /// A keyspace holding what `tree` holds (a loaded checkpoint).
    pub(crate) fn from_tree(tree: Tree) -> Self {
        let mut index = HashMap::with_capacity(tree.len());
        for (k, v) in tree.iter() {
            index.insert(k.clone(), Arc::clone(v));
        }
        Keyspace { tree, index }
    }

    /// The ordered view: scans, and O(1) snapshots (`clone`) for checkpoints.
    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The value of `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.index.get(key)
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Applies one logged operation, and the metadata it sets.
    pub(crate) fn apply(&mut self, op: Op, metadata: &mut Metadata) {
        apply_op(self, op, metadata)
    }
}

/// The ordered map alone, while recovery replays the log: millions of
/// replayed writes, most overwriting each other, cost less without the
/// index, which [`Replay::finish`] then builds once.
pub(crate) struct Replay {
    tree: Tree,
}

impl Replay {
    /// Replay on top of `tree` (a loaded checkpoint, or empty).
    pub(crate) fn new(tree: Tree) -> Self {
        Replay { tree }
    }

    /// Applies one logged operation, and the metadata it sets.
    pub(crate) fn apply(&mut self, op: Op, metadata: &mut Metadata) {
        apply_op(self, op, metadata)
    }

    /// The keyspace, indexed.
    pub(crate) fn finish(self) -> Keyspace {
        Keyspace::from_tree(self.tree)
    }
}

/// What applying an operation needs of a store of entries.
trait Entries {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>);
    fn delete(&mut self, k: Vec<u8>);
    fn clear(&mut self);
}

impl Entries for Keyspace {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        let (k, v): (Key, Bytes) = (Key::from(k), Arc::from(v));
        self.index.insert(k.clone(), Arc::clone(&v));
        self.tree.insert(k, v);
    }

    fn delete(&mut self, k: Vec<u8>) {
        if self.index.remove(k.as_slice()).is_some() {
            // By `Key`, not by slice: comparisons use the inline head.
            self.tree.remove(&Key::from(k));
        }
    }

    fn clear(&mut self) {
        *self = Keyspace::default();
    }
}

impl Entries for Replay {
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.tree.insert(Key::from(k), Arc::from(v));
    }

    fn delete(&mut self, k: Vec<u8>) {
        self.tree.remove(&Key::from(k));
    }

    fn clear(&mut self) {
        self.tree = Tree::new();
    }
}

fn apply_op(e: &mut impl Entries, op: Op, metadata: &mut Metadata) {
    match op {
        Op::WithMetadata { metadata: set, op } => {
            crate::metadata::set_all(metadata, crate::metadata::pairs(&set));
            if let Some(op) = op {
                apply_op(e, *op, metadata);
            }
        }
        Op::Put(k, v) => e.put(k, v),
        Op::Delete(k) => e.delete(k),
        Op::Clear => e.clear(),
        Op::Batch(ops) => {
            for op in ops {
                match op {
                    BatchOp::Put(k, v) => e.put(k, v),
                    BatchOp::Delete(k) => e.delete(k),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn op() -> impl Strategy<Value = Op> {
        let key = prop::collection::vec(0u8..4, 1..3);
        let val = prop::collection::vec(any::<u8>(), 0..3);
        let plain = prop_oneof![
            6 => (key.clone(), val.clone()).prop_map(|(k, v)| Op::Put(k, v)),
            3 => key.clone().prop_map(Op::Delete),
            1 => Just(Op::Clear),
            2 => prop::collection::vec(
                prop_oneof![
                    (key.clone(), val.clone()).prop_map(|(k, v)| BatchOp::Put(k, v)),
                    key.prop_map(BatchOp::Delete),
                ],
                0..4
            )
            .prop_map(Op::Batch),
        ];
        prop_oneof![
            6 => plain.clone(),
            1 => (0u8..3, val, prop::option::of(plain)).prop_map(|(n, v, op)| {
                Op::WithMetadata { metadata: vec![(vec![b'm', n], v)], op: op.map(Box::new) }
            }),
        ]
    }

    /// What `op` does to a plain model of the keys and the metadata.
    fn model_apply(op: &Op, keys: &mut BTreeMap<Vec<u8>, Vec<u8>>, meta: &mut Metadata) {
        match op {
            Op::Put(k, v) => {
                keys.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                keys.remove(k);
            }
            Op::Clear => keys.clear(),
            Op::Batch(b) => {
                for e in b {
                    match e {
                        BatchOp::Put(k, v) => {
                            keys.insert(k.clone(), v.clone());
                        }
                        BatchOp::Delete(k) => {
                            keys.remove(k);
                        }
                    }
                }
            }
            Op::WithMetadata { metadata, op } => {
                for (n, v) in metadata {
                    meta.insert(n.clone(), v.clone());
                }
                if let Some(op) = op {
                    model_apply(op, keys, meta);
                }
            }
        }
    }

    proptest! {
        /// The index and the ordered map never disagree, and both match a
        /// plain model, including after a reload from the ordered map alone
        /// (what recovery from a checkpoint does).
        #[test]
        fn index_and_tree_hold_the_same_entries(ops in prop::collection::vec(op(), 0..60)) {
            let mut ks = Keyspace::default();
            let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
            let (mut meta, mut model_meta) = (Metadata::new(), Metadata::new());
            let replayed = ops.clone();
            for op in ops {
                model_apply(&op, &mut model, &mut model_meta);
                ks.apply(op, &mut meta);
                prop_assert_eq!(&meta, &model_meta);
                prop_assert_eq!(ks.len(), model.len());
                prop_assert_eq!(ks.tree().len(), model.len());
                for (k, v) in &model {
                    prop_assert_eq!(ks.get(k).map(|b| b.to_vec()), Some(v.clone()));
                }
                let ordered: Vec<(Vec<u8>, Vec<u8>)> =
                    ks.tree().iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
                prop_assert_eq!(ordered, want);
            }
            let reloaded = Keyspace::from_tree(ks.tree().clone());
            let mut replay = Replay::new(Tree::new());
            let mut replayed_meta = Metadata::new();
            for op in &replayed {
                replay.apply(op.clone(), &mut replayed_meta);
            }
            prop_assert_eq!(replayed_meta, model_meta);
            let replayed = replay.finish();
            prop_assert_eq!(replayed.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(replayed.get(k).map(|b| b.to_vec()), Some(v.clone()));
            }
            prop_assert_eq!(replayed.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(reloaded.get(k).map(|b| b.to_vec()), Some(v.clone()));
            }
            prop_assert_eq!(reloaded.len(), model.len());
        }
    }
}
