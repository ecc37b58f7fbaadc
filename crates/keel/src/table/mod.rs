//! Tables: immutable sorted files of keys with their values or tombstones,
//! the on-disk half of the LSM tree (issue 12). docs/FORMAT.md, "Table
//! files", is the byte-level specification; a unit test here pins its worked
//! example.
//!
//! A table is data blocks of about [`DATA_BLOCK_SIZE`] (keys
//! prefix-compressed, restart points for binary search), a bloom filter, a
//! properties block (counts, key and LSN range) and an index block (each
//! data block's last key and position), then a fixed footer. Every block
//! carries a CRC32C, the footer its own; so every flipped bit and every
//! truncation is detected, and reported with the file and block
//! ([`TableError::Damaged`]), never read as a wrong value.
//!
//! Invariants: keys in a table are non-empty and strictly increasing; a
//! table under its final name is whole and durable ([`write_table`] goes
//! through the durable-replace sequence); tables are never modified, only
//! replaced.

mod block;
mod bloom;
mod builder;
mod cache;
mod footer;
mod reader;

pub use block::Stored;
pub use builder::{TableBuilder, DATA_BLOCK_SIZE, PACED_SYNC_BYTES, RESTART_INTERVAL};
pub use cache::{BlockCache, CacheStats};
pub use footer::{Compression, Properties, FOOTER_LEN};
pub use reader::{Entry, LostBlock, Table, TableIter};

use keel_storage::{IoError, Storage};
use std::path::{Path, PathBuf};

/// Why a table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Reading the file failed.
    #[error("cannot read table {}: {source}; check the disk and permissions", path.display())]
    Io {
        /// The table file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid table (damage, or not a keel table).
    #[error("table {} is damaged in {at}: {why}; it cannot be trusted (keel verify lists what it holds)", path.display())]
    Damaged {
        /// The table file.
        path: PathBuf,
        /// Where: the footer, or which block.
        at: String,
        /// What is wrong.
        why: String,
    },
}

impl TableError {
    fn damaged(path: &Path, at: &str, why: &str) -> TableError {
        TableError::Damaged {
            path: path.to_path_buf(),
            at: at.to_string(),
            why: why.to_string(),
        }
    }
}

/// Writes a table of `entries` (key, value or tombstone, LSN; keys strictly
/// increasing) at `path`, durably: temp file, fdatasync, rename, directory
/// fsync. Returns its properties and length.
pub fn write_table<'e>(
    storage: &dyn Storage,
    path: &Path,
    entries: impl IntoIterator<Item = (&'e [u8], Stored<'e>, u64)>,
) -> Result<(Properties, u64), IoError> {
    write_table_spanning(storage, path, None, entries)
}

/// [`write_table`], its properties' LSN range widened to `lsns` (a
/// memtable's: its entries carry only its last LSN).
pub fn write_table_spanning<'e>(
    storage: &dyn Storage,
    path: &Path,
    lsns: Option<(u64, u64)>,
    entries: impl IntoIterator<Item = (&'e [u8], Stored<'e>, u64)>,
) -> Result<(Properties, u64), IoError> {
    let mut out = None;
    keel_storage::write_atomic(storage, path, |file, _| {
        let mut b = TableBuilder::new(file);
        if let Some((lo, hi)) = lsns {
            b.extend_lsn_range(lo, hi);
        }
        for (k, v, lsn) in entries {
            b.add(k, v, lsn)?;
        }
        out = Some(b.finish()?);
        Ok(())
    })?;
    Ok(out.expect("set when the write succeeded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::{OpenMode, SimStorage};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

    fn write(model: &Model) -> (Arc<SimStorage>, PathBuf) {
        let s = Arc::new(SimStorage::new(7));
        keel_storage::create_dir_durable(&*s, Path::new("/t")).unwrap();
        let path = PathBuf::from("/t/1.sst");
        let entries = model.iter().enumerate().map(|(i, (k, v))| {
            let v = v.as_deref().map_or(Stored::Tombstone, Stored::Put);
            (k.as_slice(), v, 10 + i as u64)
        });
        write_table(&*s, &path, entries).unwrap();
        (s, path)
    }

    fn open(s: &SimStorage, path: &Path) -> Result<Table, TableError> {
        Table::open(s.open(path, OpenMode::Read).unwrap(), path)
    }

    fn as_model(t: &Table) -> Model {
        t.iter_from(&[])
            .map(|r| {
                let (k, e) = r.unwrap();
                let v = match e {
                    Entry::Put(v) => Some(v),
                    Entry::Tombstone => None,
                };
                (k, v)
            })
            .collect()
    }

    /// The worked example of docs/FORMAT.md, "Table files".
    #[test]
    fn the_worked_example_in_format_md_is_what_the_builder_writes() {
        let mut m = Model::new();
        m.insert(b"apple".to_vec(), Some(b"red".to_vec()));
        m.insert(b"apricot".to_vec(), None);
        let (s, path) = write(&m);
        let f = s.open(&path, OpenMode::Read).unwrap();
        let mut bytes = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut bytes, 0).unwrap();
        let hex: Vec<String> = bytes
            .chunks(16)
            .enumerate()
            .map(|(i, c)| {
                let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
                format!("{:08x}  {}", i * 16, h.join(" "))
            })
            .collect();
        let want = "\
00000000  00 05 03 01 61 70 70 6c 65 72 65 64 02 05 00 02
00000010  72 69 63 6f 74 00 00 00 00 01 00 00 00 00 57 f0
00000020  cd 6f 00 95 00 02 88 2e 10 40 07 00 f2 a3 83 ac
00000030  02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
00000040  01 00 00 00 00 00 00 00 0a 00 00 00 00 00 00 00
00000050  0b 00 00 00 00 00 00 00 05 00 00 00 61 70 70 6c
00000060  65 07 00 00 00 61 70 72 69 63 6f 74 00 71 39 f8
00000070  64 00 07 0c 01 61 70 72 69 63 6f 74 00 00 00 00
00000080  00 00 00 00 1d 00 00 00 00 00 00 00 01 00 00 00
00000090  00 f4 6d d3 6a 4b 45 45 4c 53 53 54 00 01 00 00
000000a0  00 00 00 00 00 22 00 00 00 00 00 00 00 30 00 00
000000b0  00 00 00 00 00 71 00 00 00 00 00 00 00 09 00 00
000000c0  00 3c 00 00 00 1f 00 00 00 07 43 40 01";
        let got = hex.join("\n");
        assert!(
            got == want,
            "the example in docs/FORMAT.md no longer matches:\n{got}"
        );
        let t = open(&s, &path).unwrap();
        t.verify().unwrap();
        assert_eq!(as_model(&t), m);
        assert_eq!(t.get(b"apple").unwrap(), Some(Entry::Put(b"red".to_vec())));
        assert_eq!(t.get(b"apricot").unwrap(), Some(Entry::Tombstone));
        assert_eq!(t.get(b"banana").unwrap(), None);
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_of_a_small_table_is_detected() {
        let mut m = Model::new();
        for i in 0..40u32 {
            let v = (i % 7 != 0).then(|| format!("value-{i}").into_bytes());
            m.insert(format!("key-{i:03}").into_bytes(), v);
        }
        let (s, path) = write(&m);
        let f = s.open(&path, OpenMode::Read).unwrap();
        let mut good = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut good, 0).unwrap();
        let check = |bytes: &[u8], what: &str| {
            let damaged = PathBuf::from("/t/damaged.sst");
            if s.exists(&damaged).unwrap() {
                s.remove(&damaged).unwrap();
            }
            let file = s.open(&damaged, OpenMode::CreateNew).unwrap();
            file.write_at(bytes, 0).unwrap();
            let err = match Table::open(file, &damaged) {
                Err(e) => e,
                Ok(t) => {
                    // Opened: then reading must fail, or give exactly the
                    // table's entries.
                    for (k, v) in &m {
                        match t.get(k) {
                            Err(_) => {}
                            Ok(got) => {
                                let want = v.clone().map_or(Entry::Tombstone, Entry::Put);
                                assert_eq!(got, Some(want), "{what}: a wrong answer");
                            }
                        }
                    }
                    t.verify().expect_err(what)
                }
            };
            assert!(
                err.to_string().contains("damaged.sst"),
                "{what}: the error names the file: {err}"
            );
        };
        for bit in 0..good.len() * 8 {
            let mut d = good.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            check(&d, &format!("bit {bit}"));
        }
        for len in 0..good.len() {
            check(&good[..len], &format!("cut at {len}"));
        }
        println!(
            "{} bit flips and {} truncations of a {}-byte table: all detected",
            good.len() * 8,
            good.len(),
            good.len()
        );
    }

    #[test]
    fn a_cached_table_reads_a_block_once_and_answers_the_same() {
        let mut m = Model::new();
        for i in 0..2_000u32 {
            m.insert(format!("k{i:05}").into_bytes(), Some(vec![b'v'; 40]));
        }
        let (s, path) = write(&m);
        let cache = BlockCache::new(1 << 20);
        let file = s.open(&path, OpenMode::Read).unwrap();
        let t = Table::open_cached(file, &path, Some(Arc::clone(&cache))).unwrap();
        assert_eq!(t.get(b"k00010").unwrap(), Some(Entry::Put(vec![b'v'; 40])));
        assert_eq!(t.get(b"k00011").unwrap(), Some(Entry::Put(vec![b'v'; 40])));
        let st = cache.stats();
        assert_eq!((st.hits, st.misses), (1, 1), "same block: one read");
        assert_eq!(as_model(&t), m);
        assert!(t.pinned_bytes() > 0);
        // A second table has its own keys in the shared cache.
        let file = s.open(&path, OpenMode::Read).unwrap();
        let t2 = Table::open_cached(file, &path, Some(Arc::clone(&cache))).unwrap();
        let before = cache.stats().misses;
        t2.get(b"k00010").unwrap();
        assert_eq!(cache.stats().misses, before + 1);
    }

    #[test]
    fn a_paced_build_syncs_as_it_goes_and_keeps_to_its_rate() {
        let s = SimStorage::new(1);
        keel_storage::create_dir_durable(&s, Path::new("/t")).unwrap();
        let build = |name: &str, rate: Option<u64>| {
            let f = s
                .open(&Path::new("/t").join(name), OpenMode::CreateNew)
                .unwrap();
            let syncs = s.sync_count();
            let started = std::time::Instant::now();
            let mut b = TableBuilder::with_compression(&*f, Compression::None).paced(rate);
            for i in 0..20_000u32 {
                b.add(format!("{i:08}").as_bytes(), Stored::Put(&[7u8; 40]), 1)
                    .unwrap();
            }
            let (_, len) = b.finish().unwrap();
            (len, s.sync_count() - syncs, started.elapsed())
        };
        let (len, syncs, _) = build("fast", None);
        // A sync at the first block boundary past each 64 KiB.
        assert!(
            syncs >= len / (PACED_SYNC_BYTES + 2 * DATA_BLOCK_SIZE as u64),
            "{syncs} syncs for {len} bytes"
        );
        // About 1 MiB at 8 MiB/s: the data blocks (over 80% of the file;
        // the filter and index follow unpaced) take at least that long, as
        // sleeping is never shorter.
        let (len, _, took) = build("slow", Some(8 << 20));
        let floor = std::time::Duration::from_secs_f64(0.8 * len as f64 / (8 << 20) as f64);
        assert!(took >= floor, "{len} bytes in {took:?}, under {floor:?}");
    }

    #[test]
    fn keys_must_be_non_empty_and_increasing() {
        let s = SimStorage::new(1);
        keel_storage::create_dir_durable(&s, Path::new("/t")).unwrap();
        let f = s.open(Path::new("/t/x"), OpenMode::CreateNew).unwrap();
        let mut b = TableBuilder::new(&*f);
        assert!(b.add(b"", Stored::Put(b"v"), 1).is_err());
        b.add(b"b", Stored::Put(b"v"), 1).unwrap();
        assert!(b.add(b"b", Stored::Put(b"v"), 2).is_err());
        assert!(b.add(b"a", Stored::Put(b"v"), 2).is_err());
    }

    fn model() -> impl Strategy<Value = Model> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..24),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            0..400,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn tables_read_back_what_was_written(
            m in model(),
            probes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 0..40),
        ) {
            let (s, path) = write(&m);
            let t = open(&s, &path).unwrap();
            t.verify().unwrap();
            prop_assert_eq!(as_model(&t), m.clone());
            prop_assert_eq!(t.properties().entries, m.len() as u64);
            for (k, v) in &m {
                let want = v.clone().map_or(Entry::Tombstone, Entry::Put);
                prop_assert_eq!(t.get(k).unwrap(), Some(want));
            }
            for p in &probes {
                let want = m.get(p).map(|v| v.clone().map_or(Entry::Tombstone, Entry::Put));
                prop_assert_eq!(t.get(p).unwrap(), want);
                let tail: Model = m.range(p.clone()..).map(|(k, v)| (k.clone(), v.clone())).collect();
                let got: Model = t.iter_from(p).map(|r| {
                    let (k, e) = r.unwrap();
                    (k, match e { Entry::Put(v) => Some(v), Entry::Tombstone => None })
                }).collect();
                prop_assert_eq!(got, tail);
            }
        }
    }
}
