//! [`TableBuilder`]: writes a table from entries in key order, streaming
//! data blocks to the file as they fill; the filter, properties, index and
//! footer follow at [`TableBuilder::finish`].
//!
//! The builder writes; it does not sync or name the file. A caller makes
//! the table durable with the durable-replace sequence (temp file,
//! fdatasync, rename, directory fsync: `keel_storage::write_atomic`), so a
//! table under its final name is always whole.

use super::block::{BlockBuilder, Stored};
use super::bloom;
use super::footer::{trailer, Compression, Footer, Handle, Properties, COMPRESSION_NONE};
use keel_storage::StorageFile;
use std::io;

/// Target payload size of a data block: a lookup reads one block, a scan
/// reads them in turn; 8 KiB is in the 4-16 KiB range RocksDB and LevelDB
/// use, big enough that a block's trailer and index entry cost little.
pub const DATA_BLOCK_SIZE: usize = 8 << 10;
/// Entries between restart points in a data block: a seek scans at most
/// this many entries after its binary search.
pub const RESTART_INTERVAL: usize = 16;

/// Bytes written between the fdatasyncs of a paced build: the checkpoint
/// lesson (docs/BENCHMARKS.md) is that a large burst synced at the end
/// stalls the log's small fdatasyncs behind it.
pub const PACED_SYNC_BYTES: u64 = 64 << 10;

/// Writes one table.
pub struct TableBuilder<'a> {
    file: &'a dyn StorageFile,
    offset: u64,
    block: BlockBuilder,
    index: BlockBuilder,
    hashes: Vec<u32>,
    props: Properties,
    last_key: Option<Vec<u8>>,
    compression: Compression,
    /// Paced build: the rate (`None`: unpaced), when it began, and the
    /// offset last synced.
    pacing: Option<(Option<u64>, std::time::Instant, u64)>,
}

impl<'a> TableBuilder<'a> {
    /// A builder writing to `file` from offset 0, data blocks compressed
    /// with the default ([`Compression::Lz4`]).
    pub fn new(file: &'a dyn StorageFile) -> TableBuilder<'a> {
        TableBuilder::with_compression(file, Compression::default())
    }

    /// A builder compressing data blocks with `compression` (the other
    /// blocks are always stored as is).
    pub fn with_compression(
        file: &'a dyn StorageFile,
        compression: Compression,
    ) -> TableBuilder<'a> {
        TableBuilder {
            file,
            offset: 0,
            block: BlockBuilder::new(RESTART_INTERVAL),
            index: BlockBuilder::new(1),
            hashes: Vec::new(),
            props: Properties::default(),
            last_key: None,
            compression,
            pacing: None,
        }
    }

    /// Paces the build for background work (flush, compaction): fdatasync
    /// every [`PACED_SYNC_BYTES`], and with `bytes_per_sec`, sleep (on the
    /// caller's thread) so the writing never runs faster than that.
    pub fn paced(mut self, bytes_per_sec: Option<u64>) -> TableBuilder<'a> {
        self.pacing = Some((
            bytes_per_sec.filter(|r| *r > 0),
            std::time::Instant::now(),
            0,
        ));
        self
    }

    fn pace(&mut self) -> io::Result<()> {
        let Some((rate, started, synced)) = &mut self.pacing else {
            return Ok(());
        };
        if self.offset - *synced >= PACED_SYNC_BYTES {
            // Small, regular syncs keep the disk's queue short for the log.
            self.file.sync_data()?;
            *synced = self.offset;
        }
        if let Some(rate) = rate {
            let due = std::time::Duration::from_secs_f64(self.offset as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }

    /// Adds an entry written at `lsn`. Keys must be non-empty and strictly
    /// increasing; anything else is a bug in the caller, refused with
    /// `InvalidInput` rather than written.
    pub fn add(&mut self, key: &[u8], value: Stored<'_>, lsn: u64) -> io::Result<()> {
        if key.is_empty() || self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "table entries must have non-empty, strictly increasing keys",
            ));
        }
        if self.props.entries == 0 {
            self.props.smallest = key.to_vec();
            if self.props.max_lsn == 0 {
                self.props.min_lsn = lsn;
            }
        }
        self.props.min_lsn = self.props.min_lsn.min(lsn);
        self.props.max_lsn = self.props.max_lsn.max(lsn);
        self.props.entries += 1;
        if value == Stored::Tombstone {
            self.props.tombstones += 1;
        }
        self.hashes.push(bloom::key_hash(key));
        self.block.add(key, value);
        self.last_key = Some(key.to_vec());
        if self.block.size_estimate() >= DATA_BLOCK_SIZE {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Widens the LSN range the properties record to include `lo..=hi`
    /// (a compaction's outputs take their inputs' range: entries in tables
    /// carry no LSN of their own).
    pub fn extend_lsn_range(&mut self, lo: u64, hi: u64) {
        if self.props.entries == 0 && self.props.max_lsn == 0 {
            self.props.min_lsn = lo;
        }
        self.props.min_lsn = self.props.min_lsn.min(lo);
        self.props.max_lsn = self.props.max_lsn.max(hi);
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.props.entries
    }

    /// Bytes written so far plus the data block being filled.
    pub fn size_estimate(&self) -> u64 {
        self.offset + self.block.size_estimate() as u64
    }

    /// Writes a payload stored as is, and its trailer.
    fn write_block(&mut self, payload: &[u8]) -> io::Result<Handle> {
        self.write_stored(payload, COMPRESSION_NONE)
    }

    /// Writes stored bytes with compression byte `byte`, and the trailer,
    /// at the current offset.
    fn write_stored(&mut self, payload: &[u8], byte: u8) -> io::Result<Handle> {
        let handle = Handle {
            offset: self.offset,
            len: u32::try_from(payload.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a table block over 4 GiB")
            })?,
        };
        let mut out = Vec::with_capacity(payload.len() + super::footer::TRAILER_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(&trailer(payload, byte));
        self.file.write_at(&out, self.offset)?;
        self.offset += out.len() as u64;
        Ok(handle)
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let last = self.block.last_key().to_vec();
        let payload = self.block.finish();
        let (stored, byte) = self.compression.compress(&payload);
        let handle = self.write_stored(&stored, byte)?;
        self.index.add(&last, Stored::Put(&handle.encode()));
        self.props.data_blocks += 1;
        self.pace()
    }

    /// Writes the last data block, the filter, properties, index and footer;
    /// the table's properties and its length in bytes.
    pub fn finish(mut self) -> io::Result<(Properties, u64)> {
        self.flush_block()?;
        if let Some(last) = self.last_key.take() {
            self.props.largest = last;
        }
        let filter = self.write_block(&bloom::build(&self.hashes))?;
        let props = self.write_block(&self.props.encode())?;
        let index_payload = self.index.finish();
        let index = self.write_block(&index_payload)?;
        let footer = Footer {
            filter,
            props,
            index,
        };
        self.file.write_at(&footer.encode(), self.offset)?;
        self.offset += super::footer::FOOTER_LEN as u64;
        Ok((self.props, self.offset))
    }
}
