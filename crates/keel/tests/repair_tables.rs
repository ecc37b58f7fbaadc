//! `keel repair` on tables (issue 12): a damaged live table is moved aside,
//! never deleted; what of it still reads back is kept, in its place among
//! the tables; what is lost is said before anything changes; the store then
//! verifies, opens and counts its keys right.

use keel::inspect::{self, Repair, Target};
use keel::storage::{CrashMode, Fault, FaultKind, FaultOp, FsStorage, SimStorage, Storage};
use keel::{Db, Options};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const KEYS: usize = 300;
const NEWER: usize = 150;

fn opts() -> Options {
    let mut o = Options::default();
    // No flush but the two the test asks for.
    o.memtable_size = Some(1 << 20);
    o.segment_size = 4096;
    o
}

fn key(i: usize) -> String {
    format!("k{i:03}")
}

fn value(round: &str, i: usize) -> String {
    format!("{round}-{i}-{}", "v".repeat(50))
}

/// Two level-0 tables: the older holds `a` values of every key, the newer
/// `b` values of the first [`NEWER`]. Returns them, older first.
fn two_tables(dir: &Path) -> (PathBuf, PathBuf) {
    two_tables_on(Arc::new(FsStorage::new()), dir)
}

fn two_tables_on(s: Arc<dyn Storage>, dir: &Path) -> (PathBuf, PathBuf) {
    let (db, _) = Db::builder(dir)
        .options(opts())
        .storage(Arc::clone(&s))
        .open()
        .unwrap();
    for i in 0..KEYS {
        db.put(key(i), value("a", i)).unwrap();
    }
    db.checkpoint().unwrap();
    for i in 0..NEWER {
        db.put(key(i), value("b", i)).unwrap();
    }
    db.checkpoint().unwrap();
    db.close().unwrap();
    let mut tables: Vec<PathBuf> = s
        .list(&dir.join("tables"))
        .unwrap()
        .into_iter()
        .map(|name| dir.join("tables").join(name))
        .collect();
    tables.sort();
    assert_eq!(tables.len(), 2, "{tables:?}");
    (tables[0].clone(), tables[1].clone())
}

fn flip(path: &Path, at: impl Fn(usize) -> usize) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn prepare(dir: &Path) -> Repair {
    prepare_on(Arc::new(FsStorage::new()), dir).unwrap()
}

fn prepare_on(s: Arc<dyn Storage>, dir: &Path) -> keel::Result<Repair> {
    let target = Target::resolve(&*s, dir)?;
    Repair::prepare(s, &target)
}

fn is_sound(dir: &Path) -> bool {
    let fs = FsStorage::new();
    let report = inspect::verify(&fs, &Target::resolve(&fs, dir).unwrap()).unwrap();
    for p in &report.problems {
        eprintln!("{p}");
    }
    report.is_sound()
}

fn in_range(k: &str, from: &Bound<Vec<u8>>, through: &[u8]) -> bool {
    let k = k.as_bytes();
    let above = match from {
        Bound::Included(f) => k >= f.as_slice(),
        Bound::Excluded(f) => k > f.as_slice(),
        Bound::Unbounded => true,
    };
    above && k <= through
}

/// Checks every key of the reopened store against `expect(i)`.
fn check(dir: &Path, expect: impl Fn(usize) -> Option<String>) {
    check_on(Arc::new(FsStorage::new()), dir, expect)
}

fn check_on(s: Arc<dyn Storage>, dir: &Path, expect: impl Fn(usize) -> Option<String>) {
    let (db, _) = Db::builder(dir).options(opts()).storage(s).open().unwrap();
    let mut live = 0;
    for i in 0..KEYS {
        let want = expect(i);
        live += usize::from(want.is_some());
        let got = db
            .get(key(i))
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap());
        assert_eq!(got, want, "{}", key(i));
    }
    assert_eq!(db.len(), live, "the key count, recounted by the repair");
    db.close().unwrap();
}

/// Damage in the older table's first data block: its intact blocks are
/// kept, behind the newer table (ordered by LSN: with the new number it
/// gets, ordered by number, the `a` values would hide the newer `b`s).
#[test]
fn a_damaged_block_is_lost_and_the_rest_of_the_table_kept_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (older, _) = two_tables(dir.path());
    let damaged = flip(&older, |_| 10);
    assert!(!is_sound(dir.path()));

    let repair = prepare(dir.path());
    assert!(repair.is_needed());
    let [t] = repair.damaged_tables() else {
        panic!("one damaged table: {:?}", repair.damaged_tables());
    };
    assert_eq!(t.path, older);
    assert!(t.present);
    let [lost] = t.lost.as_slice() else {
        panic!("one block lost: {:?}", t.lost);
    };
    assert_eq!(lost.from, Bound::Included(key(0).into_bytes()));
    let through = String::from_utf8(lost.through.clone()).unwrap();
    assert!(
        through < key(NEWER),
        "the first block ends before k150: {through}"
    );
    let lost_keys = (0..KEYS).filter(|i| key(*i) <= through).count() as u64;
    assert_eq!(t.kept, KEYS as u64 - lost_keys);
    assert_eq!(t.lost_entries(), lost_keys);
    let plan = repair.to_string();
    assert!(
        plan.contains("LOSES") && plan.contains("will move it aside"),
        "{plan}"
    );
    let moved_to = t.moved_to(dir.path());

    repair.apply().unwrap();
    assert_eq!(
        std::fs::read(&moved_to).unwrap(),
        damaged,
        "moved aside whole"
    );
    assert!(!older.exists());
    assert!(is_sound(dir.path()));
    // The lost block held only keys the newer table overwrote.
    check(dir.path(), |i| {
        Some(value(if i < NEWER { "b" } else { "a" }, i))
    });
    assert!(!prepare(dir.path()).is_needed(), "nothing left to repair");
}

/// Damage in the newer table: the keys of its lost block show their older
/// values again, as the plan warns.
#[test]
fn a_lost_block_of_a_newer_table_uncovers_older_values() {
    let dir = tempfile::tempdir().unwrap();
    let (_, newer) = two_tables(dir.path());
    flip(&newer, |_| 10);
    let repair = prepare(dir.path());
    let [t] = repair.damaged_tables() else {
        panic!("one damaged table");
    };
    let lost = t.lost[0].clone();
    assert!(repair.to_string().contains("shows again"));
    repair.apply().unwrap();
    assert!(is_sound(dir.path()));
    check(dir.path(), |i| {
        let uncovered = in_range(&key(i), &lost.from, &lost.through);
        Some(value(if i < NEWER && !uncovered { "b" } else { "a" }, i))
    });
}

/// A damaged footer: nothing of the table can be placed, its whole key
/// range is lost; a missing table likewise (and nothing to move aside).
#[test]
fn a_table_that_cannot_be_opened_or_is_missing_is_lost_whole() {
    for missing in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (older, _) = two_tables(dir.path());
        if missing {
            std::fs::remove_file(&older).unwrap();
        } else {
            flip(&older, |len| len - 3);
        }
        let repair = prepare(dir.path());
        let [t] = repair.damaged_tables() else {
            panic!("one damaged table");
        };
        assert_eq!((t.present, t.kept), (!missing, 0));
        // The flush's table spans its memtable's records: puts 1 to 300.
        assert_eq!((t.meta.min_lsn, t.meta.max_lsn), (1, KEYS as u64));
        assert_eq!(t.lost_entries(), KEYS as u64);
        assert_eq!(t.lost[0].from, Bound::Included(key(0).into_bytes()));
        assert_eq!(t.lost[0].through, key(KEYS - 1).into_bytes());
        let moved_to = t.moved_to(dir.path());
        repair.apply().unwrap();
        assert_eq!(moved_to.exists(), !missing);
        assert!(is_sound(dir.path()));
        check(dir.path(), |i| (i < NEWER).then(|| value("b", i)));
    }
}

/// Power loss at every storage operation of a repair (copy aside, rewrite,
/// manifest edit, removal), in each crash mode: the damaged table's bytes
/// are never lost (in `tables/` or in `damaged/`), and the store, repaired
/// again if the first repair did not finish, ends as a repair leaves it.
#[test]
fn power_loss_at_every_step_of_a_table_repair_keeps_the_damaged_table() {
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::Prefix,
        CrashMode::Torn,
        CrashMode::Reorder,
    ];
    let dir = Path::new("/db");
    let mut crashes = 0;
    for nth in 1.. {
        let sim = SimStorage::new(nth);
        let s: Arc<dyn Storage> = Arc::new(sim.clone());
        let (older, _) = two_tables_on(Arc::clone(&s), dir);
        let mut bytes = sim.read_file(&older).unwrap();
        bytes[10] ^= 0x10;
        sim.write_file_durably(&older, &bytes).unwrap();
        let aside = dir.join("damaged").join(older.file_name().unwrap());

        sim.inject(Fault {
            op: FaultOp::Any,
            nth,
            persistent: false,
            kind: FaultKind::Crash,
        });
        let repaired = prepare_on(Arc::clone(&s), dir).and_then(Repair::apply);
        let finished = !sim.is_frozen();
        assert!(!finished || repaired.is_ok(), "{repaired:?}");
        let after = sim.crash_with(modes[nth as usize % modes.len()]);
        let s: Arc<dyn Storage> = Arc::new(after.clone());
        let kept = |p: &Path| after.read_file(p).is_ok_and(|b| b == bytes);
        assert!(
            kept(&older) || kept(&aside),
            "crash at operation {nth}: the damaged table is gone"
        );
        let again = prepare_on(Arc::clone(&s), dir)
            .unwrap_or_else(|e| panic!("crash at operation {nth}: {e}"));
        if again.is_needed() {
            again.apply().unwrap();
        } else {
            drop(again); // its lock
        }
        check_on(Arc::clone(&s), dir, |i| {
            Some(value(if i < NEWER { "b" } else { "a" }, i))
        });
        assert!(kept(&aside), "crash at operation {nth}: not moved aside");
        assert!(after.read_file(&older).is_err(), "the original removed");
        if finished {
            break;
        }
        crashes += 1;
    }
    eprintln!("{crashes} crash points in a table repair");
    assert!(crashes >= 10, "{crashes}");
}
