//! Raft snapshots of keel's engine: a backup directory (`keel::Db::backup`)
//! packed into one file, so that openraft can stream it to a follower in
//! chunks, and unpacked there into a backup directory to restore.
//!
//! Layout (little endian; docs/FORMAT.md, "Raft snapshot file"):
//! - header: magic `KEELSNAP`, `version u32` (1), `meta_len u32`, then the
//!   snapshot's meta (last log id, membership, id) as JSON;
//! - each file of the backup: `path_len u16`, its path relative to the
//!   backup (`/`-separated), `len u64`, the bytes, `crc u32` (CRC32C of
//!   the bytes);
//! - trailer (20 bytes): magic `KEELSEND`, `files u32`, `crc u32` = CRC32C
//!   of every byte before the trailer, `0u32`.
//!
//! Every file keel writes of it goes through the storage trait (rule 6):
//! [`SnapshotFile`] is openraft's `AsyncRead + AsyncWrite + AsyncSeek`
//! view of a [`StorageFile`], doing positional reads and writes.
//! A packed snapshot is written whole (temp file, fsync, rename, directory
//! fsync: rule 4); one being received is a temp file until it verified.

use crate::{LogId, SnapshotMeta};
use keel_storage::{IoError, OpenMode, Storage, StorageFile};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

const MAGIC: [u8; 8] = *b"KEELSNAP";
const TRAILER_MAGIC: [u8; 8] = *b"KEELSEND";
const VERSION: u32 = 1;
const TRAILER_LEN: u64 = 20;
/// Bytes copied at a time while packing and unpacking.
const CHUNK: usize = 1 << 20;
/// The largest meta a reader accepts (a membership of many nodes is a few
/// KiB).
const MAX_META: usize = 1 << 20;

/// The directories a backup of keel's engine may hold (its files are at
/// the top or in these).
const BACKUP_DIRS: [&str; 3] = [
    keel::layout::LOG_DIR,
    keel::layout::MANIFEST_DIR,
    keel::layout::TABLES_DIR,
];

/// Why a snapshot cannot be packed, read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A storage operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is not a whole, undamaged snapshot.
    #[error("snapshot {path} is damaged or incomplete: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// openraft's handle on a snapshot file: positional reads and writes of a
/// [`StorageFile`] at a cursor.
pub struct SnapshotFile {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    pos: u64,
    seek_to: Option<SeekFrom>,
}

impl SnapshotFile {
    /// Opens `path` for reading from the start.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<SnapshotFile, IoError> {
        let file = storage
            .open(path, OpenMode::Read)
            .map_err(|e| IoError::new("opening a snapshot", path, e))?;
        Ok(SnapshotFile::over(file, path))
    }

    /// Creates `path` (which must not exist) for receiving a snapshot.
    pub fn create(storage: &dyn Storage, path: &Path) -> Result<SnapshotFile, IoError> {
        let file = storage
            .open(path, OpenMode::CreateNew)
            .map_err(|e| IoError::new("creating a snapshot being received", path, e))?;
        Ok(SnapshotFile::over(file, path))
    }

    fn over(file: Arc<dyn StorageFile>, path: &Path) -> SnapshotFile {
        SnapshotFile {
            file,
            path: path.to_path_buf(),
            pos: 0,
            seek_to: None,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file.
    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let pos = self.pos;
        let n = self.file.read_at(buf.initialize_unfilled(), pos)?;
        buf.advance(n);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let pos = self.pos;
        self.file.write_at(buf, pos)?;
        self.pos += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, to: SeekFrom) -> std::io::Result<()> {
        self.seek_to = Some(to);
        Ok(())
    }

    fn poll_complete(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<u64>> {
        if let Some(to) = self.seek_to.take() {
            let target = match to {
                SeekFrom::Start(n) => Some(n),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d),
                SeekFrom::End(d) => self.file.len()?.checked_add_signed(d),
            };
            self.pos = target.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "seek before the start of a snapshot",
                )
            })?;
        }
        Poll::Ready(Ok(self.pos))
    }
}

/// The files of backup `dir`: (relative path, full path), top level first.
/// (A listing names files, and on some storage its directories too: the
/// backup's directories are looked for by name.)
fn backup_files(storage: &dyn Storage, dir: &Path) -> Result<Vec<(String, PathBuf)>, IoError> {
    let list = |d: &Path| {
        storage
            .list(d)
            .map_err(|e| IoError::new("listing a backup", d, e))
    };
    let mut names = list(dir)?;
    names.retain(|n| !BACKUP_DIRS.contains(&n.as_str()));
    names.sort();
    let mut files: Vec<(String, PathBuf)> = names
        .into_iter()
        .map(|n| (n.clone(), dir.join(n)))
        .collect();
    for sub in BACKUP_DIRS {
        let path = dir.join(sub);
        let exists = storage
            .exists(&path)
            .map_err(|e| IoError::new("looking for a backup's directory", &path, e))?;
        if !exists && storage.list(&path).is_err() {
            continue;
        }
        let mut inner = list(&path)?;
        inner.sort();
        files.extend(
            inner
                .into_iter()
                .map(|f| (format!("{sub}/{f}"), path.join(f))),
        );
    }
    Ok(files)
}

/// Writes `bytes` at `*pos` of `file` and feeds them to `crc`.
fn put(file: &dyn StorageFile, pos: &mut u64, crc: &mut u32, bytes: &[u8]) -> std::io::Result<()> {
    file.write_at(bytes, *pos)?;
    *pos += bytes.len() as u64;
    *crc = crc32c::crc32c_append(*crc, bytes);
    Ok(())
}

/// Packs backup `backup` with `meta` into `dest`, whole and durably.
pub fn pack(
    storage: &dyn Storage,
    backup: &Path,
    meta: &SnapshotMeta,
    dest: &Path,
) -> Result<(), SnapshotError> {
    let files = backup_files(storage, backup)?;
    let meta_json = serde_json::to_vec(meta).expect("a snapshot meta serialises");
    // Temp file, fdatasync, rename, directory fsync: a snapshot file with
    // its final name is whole and durable (rule 4).
    keel_storage::write_atomic(storage, dest, |out, _| {
        let (mut pos, mut crc) = (0u64, 0u32);
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        header.extend_from_slice(&meta_json);
        put(out, &mut pos, &mut crc, &header)?;
        let mut buf = vec![0u8; CHUNK];
        for (rel, path) in &files {
            let file = storage.open(path, OpenMode::Read)?;
            let len = file.len()?;
            let mut head = (rel.len() as u16).to_le_bytes().to_vec();
            head.extend_from_slice(rel.as_bytes());
            head.extend_from_slice(&len.to_le_bytes());
            put(out, &mut pos, &mut crc, &head)?;
            let (mut at, mut file_crc) = (0u64, 0u32);
            while at < len {
                let n = (len - at).min(CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)?;
                file_crc = crc32c::crc32c_append(file_crc, &buf[..n]);
                put(out, &mut pos, &mut crc, &buf[..n])?;
                at += n as u64;
            }
            put(out, &mut pos, &mut crc, &file_crc.to_le_bytes())?;
        }
        let mut trailer = TRAILER_MAGIC.to_vec();
        trailer.extend_from_slice(&(files.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&crc.to_le_bytes());
        trailer.extend_from_slice(&0u32.to_le_bytes());
        out.write_at(&trailer, pos)
    })?;
    Ok(())
}

/// A reader of a snapshot file that checks lengths against the file.
struct Reader<'a> {
    file: &'a dyn StorageFile,
    path: &'a Path,
    pos: u64,
    /// Where the trailer starts.
    end: u64,
    crc: u32,
}

impl Reader<'_> {
    fn damaged(&self, why: impl Into<String>) -> SnapshotError {
        SnapshotError::Damaged {
            path: self.path.to_path_buf(),
            why: why.into(),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        if buf.len() as u64 > self.end - self.pos {
            return Err(self.damaged(format!("a field at offset {} runs past the end", self.pos)));
        }
        self.file
            .read_exact_at(buf, self.pos)
            .map_err(|e| IoError::new("reading a snapshot", self.path, e))?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut b = [0u8; N];
        self.take(&mut b)?;
        Ok(b)
    }

    fn vec(&mut self, n: usize) -> Result<Vec<u8>, SnapshotError> {
        let mut b = vec![0u8; n];
        self.take(&mut b)?;
        Ok(b)
    }
}

/// What the header and trailer of a snapshot say.
struct Opened<'a> {
    meta: SnapshotMeta,
    /// Positioned at the first file; its running CRC covers the header.
    reader: Reader<'a>,
    files: u32,
    /// The CRC32C the trailer holds, of every byte before it.
    crc: u32,
}

/// Reads and checks the header and trailer of the snapshot in `file`.
fn open_reader<'a>(file: &'a dyn StorageFile, path: &'a Path) -> Result<Opened<'a>, SnapshotError> {
    let len = file
        .len()
        .map_err(|e| IoError::new("reading a snapshot's length", path, e))?;
    let damaged = |why: &str| SnapshotError::Damaged {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if len < 16 + TRAILER_LEN {
        return Err(damaged("shorter than a header and a trailer"));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, len - TRAILER_LEN)
        .map_err(|e| IoError::new("reading a snapshot", path, e))?;
    if trailer[0..8] != TRAILER_MAGIC || trailer[16..20] != [0; 4] {
        return Err(damaged("no trailer: the file is cut short"));
    }
    let mut reader = Reader {
        file,
        path,
        pos: 0,
        end: len - TRAILER_LEN,
        crc: 0,
    };
    if reader.array::<8>()? != MAGIC {
        return Err(damaged("not a keel snapshot (bad magic)"));
    }
    let version = u32::from_le_bytes(reader.array()?);
    if version != VERSION {
        return Err(reader.damaged(format!("unknown version {version}")));
    }
    let meta_len = u32::from_le_bytes(reader.array()?) as usize;
    if meta_len > MAX_META {
        return Err(reader.damaged(format!("a meta of {meta_len} bytes")));
    }
    let json = reader.vec(meta_len)?;
    let meta: SnapshotMeta = serde_json::from_slice(&json)
        .map_err(|e| reader.damaged(format!("its meta does not parse: {e}")))?;
    Ok(Opened {
        meta,
        reader,
        files: u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes")),
        crc: u32::from_le_bytes(trailer[12..16].try_into().expect("4 bytes")),
    })
}

/// The meta of the snapshot at `path`, its header and trailer checked.
pub fn read_meta(storage: &dyn Storage, path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| IoError::new("opening a snapshot", path, e))?;
    Ok(open_reader(&*file, path)?.meta)
}

/// The meta of the snapshot at `path`, every byte of it checked against
/// the trailer's checksum.
pub fn check_whole(storage: &dyn Storage, path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| IoError::new("opening a snapshot", path, e))?;
    let Opened {
        meta,
        reader: mut r,
        crc: want_crc,
        ..
    } = open_reader(&*file, path)?;
    let mut buf = vec![0u8; CHUNK];
    while r.pos < r.end {
        let n = (r.end - r.pos).min(CHUNK as u64) as usize;
        r.take(&mut buf[..n])?;
    }
    if r.crc != want_crc {
        return Err(r.damaged("checksum mismatch"));
    }
    Ok(meta)
}

/// Checks the snapshot in `file` (named `path`) whole and unpacks its
/// files into `dest` (a directory that must not exist), each fdatasynced,
/// and the directories fsynced; returns its meta.
pub fn unpack(
    storage: &dyn Storage,
    file: &dyn StorageFile,
    path: &Path,
    dest: &Path,
) -> Result<SnapshotMeta, SnapshotError> {
    let Opened {
        meta,
        reader: mut r,
        files,
        crc: want_crc,
    } = open_reader(file, path)?;
    keel_storage::create_dir_durable(storage, dest)?;
    let mut dirs = vec![dest.to_path_buf()];
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..files {
        let path_len = u16::from_le_bytes(r.array()?) as usize;
        let rel = String::from_utf8(r.vec(path_len)?)
            .map_err(|_| r.damaged("a file name is not UTF-8"))?;
        let parts: Vec<&str> = rel.split('/').collect();
        let safe = match parts.as_slice() {
            [name] => !name.is_empty() && *name != "." && *name != "..",
            [d, name] => {
                BACKUP_DIRS.contains(d) && !name.is_empty() && *name != "." && *name != ".."
            }
            _ => false,
        };
        if !safe {
            return Err(r.damaged(format!("a file named {rel:?} is not one of a backup's")));
        }
        let target = parts
            .iter()
            .fold(dest.to_path_buf(), |p, part| p.join(part));
        if parts.len() == 2 {
            let sub = dest.join(parts[0]);
            if !dirs.contains(&sub) {
                keel_storage::create_dir_durable(storage, &sub)?;
                dirs.push(sub);
            }
        }
        let len = u64::from_le_bytes(r.array()?);
        let out = storage
            .open(&target, OpenMode::CreateNew)
            .map_err(|e| IoError::new("creating a file of a snapshot", &target, e))?;
        let (mut at, mut file_crc) = (0u64, 0u32);
        while at < len {
            let n = (len - at).min(CHUNK as u64) as usize;
            r.take(&mut buf[..n])?;
            file_crc = crc32c::crc32c_append(file_crc, &buf[..n]);
            out.write_at(&buf[..n], at)
                .map_err(|e| IoError::new("writing a file of a snapshot", &target, e))?;
            at += n as u64;
        }
        if u32::from_le_bytes(r.array()?) != file_crc {
            return Err(r.damaged(format!("{rel}: checksum mismatch")));
        }
        // Restore may hard-link these files into the new store: they must
        // be durable before it relies on them.
        out.sync_data()
            .map_err(|e| IoError::new("syncing a file of a snapshot", &target, e))?;
    }
    if r.pos != r.end {
        return Err(r.damaged(format!("{} stray bytes after the last file", r.end - r.pos)));
    }
    if r.crc != want_crc {
        return Err(r.damaged("checksum mismatch"));
    }
    for d in &dirs {
        // The files' names in their directories (rule 2).
        storage
            .sync_dir(d)
            .map_err(|e| IoError::new("syncing a directory", d, e))?;
    }
    Ok(meta)
}

/// Copies the snapshot in `file` to `dest`, whole and durably (temp file,
/// fdatasync, rename, directory fsync).
pub fn copy(storage: &dyn Storage, file: &dyn StorageFile, dest: &Path) -> Result<(), IoError> {
    keel_storage::write_atomic(storage, dest, |out, _| {
        let len = file.len()?;
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            out.write_at(&buf[..n], at)?;
            at += n as u64;
        }
        Ok(())
    })
}

/// The log id a snapshot covers, for its file name.
pub fn file_name(meta: &SnapshotMeta) -> String {
    let (term, index) = meta
        .last_log_id
        .map_or((0, 0), |l: LogId| (l.leader_id.term, l.index));
    format!("snapshot-{index:020}-{term:020}.snap")
}
