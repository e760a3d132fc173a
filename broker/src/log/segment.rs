//! One segment: a file of batches, its mapping and its in-memory indexes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_proto::batch::{self, BatchHeader, BatchKind};

use super::error::{io_error, LogError};
use super::fsutil::{allocate_prefix, index_path, remove_if_exists, time_index_path};
use super::index::{encode_index, encode_time_index, IndexFileMeta, SegmentIndex};
use super::mapping::{prefault_async, Mapping, PREFAULT_WINDOW_MAX_BYTES, PREFAULT_WINDOW_MIN_BYTES};
use crate::types::{Offset, RaftIndex, Term};

/// Offset after the records of a batch; saturating, because headers of segments trusted through
/// their index files were never checked for continuity, and no file content may cause a panic.
pub(super) fn end_offset(header: &BatchHeader) -> u64 {
    header.base_offset.saturating_add(u64::from(header.record_count))
}

/// A segment file and what is known about it. Only the last segment of a log is `writable`
/// (the active segment); the others are sealed: truncated to `len` and mapped read-only.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) map: Arc<Mapping>,
    pub(super) writable: bool,
    /// Identifies this incarnation of the segment for [`super::FlushBatch`]: a new one is drawn
    /// whenever the segment is created, truncated or reactivated, so that a flush computed before
    /// cannot mark newer bytes as durable.
    pub(super) uid: u64,
    pub(super) base_index: RaftIndex,
    pub(super) base_offset: Offset,
    /// Bytes of whole batches. Every byte after it, up to the end of the file, is zero.
    pub(super) len: u64,
    /// Active segment: `[0, allocated)` has its disk blocks (fallocate), the rest of the file is
    /// a hole. Every write through the mapping stays below it (a write into a hole would need
    /// the file system to find a block, SIGBUS on a full disk). Never below `len`; only grows
    /// for a given mapping (the prefaulter may still work on an older, larger range).
    pub(super) allocated: u64,
    /// The prefaulter's last attempt to allocate ahead of the writer failed (full disk): no more
    /// attempts until an allocation the writer needs succeeds.
    pub(super) allocate_ahead_failed: bool,
    /// `base_index - 1` while the segment is empty.
    pub(super) last_index: RaftIndex,
    pub(super) last_term: Term,
    pub(super) next_offset: Offset,
    /// Position of the last batch (0 while empty).
    pub(super) last_position: u64,
    pub(super) index: SegmentIndex,
    /// Wall-clock time of the first append, for the age-based roll.
    pub(super) first_append_ms: Option<i64>,
    /// Bytes known to be on stable storage: `[0, flushed)`.
    pub(super) flushed: u64,
    /// Whether the `.index`/`.timeindex` files describe the current contents and were fsynced.
    pub(super) index_synced: bool,
    /// End of the range handed to the background prefaulter (active segment only), and where the
    /// writer was expected to be when it was handed over.
    pub(super) prefault_until: u64,
    pub(super) prefault_mark: u64,
}

impl Segment {
    /// An empty segment over a mapped file.
    pub(super) fn new(
        path: PathBuf,
        file: File,
        map: Arc<Mapping>,
        base_index: RaftIndex,
        base_offset: Offset,
        uid: u64,
    ) -> Self {
        Self {
            path,
            file,
            writable: map.is_writable(),
            map,
            uid,
            base_index,
            base_offset,
            len: 0,
            allocated: 0,
            allocate_ahead_failed: false,
            last_index: RaftIndex(base_index.0.saturating_sub(1)),
            last_term: Term(0),
            next_offset: base_offset,
            last_position: 0,
            index: SegmentIndex::new(base_index, base_offset),
            first_append_ms: None,
            flushed: 0,
            index_synced: false,
            prefault_until: 0,
            prefault_mark: 0,
        }
    }

    /// Mapped bytes: the file size for the active segment, `len` for a sealed one.
    pub(super) fn capacity(&self) -> u64 {
        self.map.len()
    }

    /// Makes sure `[0, end)` (at most the capacity) has its blocks, allocating the missing part
    /// in whole `step`s. `DiskFull` on a full disk, and then nothing changed.
    pub(super) fn allocate_to(&mut self, end: u64, step: u64) -> Result<(), LogError> {
        let (capacity, before) = (self.capacity(), self.allocated);
        allocate_prefix(&self.file, &self.path, &mut self.allocated, end, step, capacity)?;
        if self.allocated > before {
            self.allocate_ahead_failed = false;
        }
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn corrupt(&self, position: u64, reason: impl Into<String>) -> LogError {
        LogError::corrupt(&self.path, position, reason)
    }

    /// The header of the batch at `position` (a batch boundary), without a CRC check.
    pub(super) fn header_at(&self, position: u64) -> Result<BatchHeader, LogError> {
        if position >= self.len {
            return Err(self.corrupt(position, "batch position past the end of the data"));
        }
        batch::parse_header(self.map.bytes(position, self.len))
            .map_err(|error| self.corrupt(position, error.to_string()))
    }

    /// The header of the batch at `position` after checking the batch's CRC: call this right
    /// after reading, before any byte of the batch is used or served.
    pub(super) fn checked_at(&self, position: u64) -> Result<BatchHeader, LogError> {
        if position >= self.len {
            return Err(self.corrupt(position, "batch position past the end of the data"));
        }
        batch::check(self.map.bytes(position, self.len)).map_err(|error| self.corrupt(position, error.to_string()))
    }

    /// Position of the batch with Raft index `index`, which the segment must hold.
    pub(super) fn find_index(&self, index: RaftIndex) -> Result<u64, LogError> {
        let mut position = self.index.seek_index(index);
        loop {
            let header = self.header_at(position)?;
            if header.index == index.0 {
                return Ok(position);
            }
            if header.index > index.0 {
                return Err(self.corrupt(position, format!("entry {index} missing: hop reached {}", header.index)));
            }
            position += u64::from(header.length);
        }
    }

    /// Position of the batch that holds record `offset`, or `len` if no batch of the segment does.
    pub(super) fn find_offset(&self, offset: Offset) -> Result<u64, LogError> {
        let mut position = self.index.seek_offset(offset);
        while position < self.len {
            let header = self.header_at(position)?;
            if end_offset(&header) > offset.0 {
                return Ok(position);
            }
            position += u64::from(header.length);
        }
        Ok(self.len)
    }

    /// Keeps the background prefaulter ahead of `reach`, the position the writer will soon reach
    /// (the data end, or where a reservation ends). One comparison when nothing needs doing.
    ///
    /// Only the allocated prefix is faulted in: MADV_POPULATE_WRITE on a hole would allocate
    /// blocks behind the log's back (and fail on a full disk). A window that reaches past the
    /// prefix first allocates the steps it needs (`step`), best effort: otherwise the writer
    /// would fault its own pages at the start of every step. On a full disk the window stops at
    /// the prefix, and no more attempts are made until an allocation the writer needs succeeds.
    pub(super) fn prefault_ahead(&mut self, reach: u64, step: u64) {
        let capacity = self.capacity();
        let half_window = self.prefault_until.saturating_sub(self.prefault_mark) / 2;
        if !self.writable || self.prefault_until >= capacity || reach + half_window <= self.prefault_until {
            return;
        }
        let advanced = reach.saturating_sub(self.prefault_mark);
        let window = advanced
            .saturating_mul(2)
            .clamp(PREFAULT_WINDOW_MIN_BYTES, PREFAULT_WINDOW_MAX_BYTES);
        // When the writer has caught up, leave it the next quarter window: both faulting the same
        // pages would only make them wait on each other; split, they fault in parallel.
        let start = self.prefault_until.max(reach.saturating_add(window / 4)).max(self.len);
        let mut end = reach.saturating_add(window).min(capacity);
        if end > self.allocated && !self.allocate_ahead_failed {
            if let Err(error) = self.allocate_to(end, step) {
                tracing::debug!(path = %self.path.display(), %error, "no allocation ahead of the writer");
                self.allocate_ahead_failed = true;
            }
        }
        end = end.min(self.allocated);
        if start >= end {
            return;
        }
        if prefault_async(&self.map, start, end) {
            self.prefault_mark = reach;
            self.prefault_until = end;
        }
    }

    /// Updates what the segment knows after the batch `header` at `position` (the tail).
    pub(super) fn push_batch(&mut self, position: u64, header: &BatchHeader, interval_bytes: u32) {
        debug_assert_eq!(position, self.len);
        self.index.observe(position, header, interval_bytes);
        self.len = position + u64::from(header.length);
        self.last_index = RaftIndex(header.index);
        self.last_term = Term(header.term);
        self.next_offset = Offset(end_offset(header));
        self.last_position = position;
    }

    /// Copies one whole batch to the tail (which the caller checked has room, allocated), stamps it with
    /// `restamp` (term, index) and the segment's next offset when given, and indexes it.
    pub(super) fn write_batch(
        &mut self,
        bytes: &[u8],
        restamp: Option<(Term, RaftIndex, batch::BodyCrc)>,
        interval_bytes: u32,
    ) -> Result<BatchHeader, LogError> {
        let start = self.len;
        let end = start + bytes.len() as u64;
        assert!(
            end <= self.allocated,
            "write of {start}..{end} past the allocated {} bytes of {}",
            self.allocated,
            self.path.display()
        );
        // SAFETY: the log is held mutably (we are its only writer) and [start, end) lies past the
        // data, where no view or borrow points.
        let target = unsafe { self.map.bytes_mut(start, end) };
        target.copy_from_slice(bytes);
        if let Some((term, index, body_crc)) = restamp {
            // The body was CRC-checked just before the copy: only the header is hashed again.
            batch::stamp_with_body(target, term.0, index.0, self.next_offset.0, &body_crc);
        }
        match batch::parse_header(target) {
            Ok(header) => {
                self.push_batch(start, &header, interval_bytes);
                Ok(header)
            }
            Err(error) => {
                target.fill(0);
                Err(LogError::InvalidBatch(error))
            }
        }
    }

    /// Removes the batches from `position` on (the first of them has index `index`): zeroes their
    /// bytes durably and recomputes the segment's summary. The segment must be writable.
    pub(super) fn truncate_at(&mut self, position: u64, index: RaftIndex) -> Result<(), LogError> {
        let first_removed = self.header_at(position)?;
        let old_len = self.len;
        // SAFETY: the log is held mutably; only views of the removed (uncommitted) entries can
        // point here, see `Mapping`.
        unsafe { self.map.zero(position, old_len) };
        // Durable at once: stale batches reappearing after a crash would look like corruption.
        self.map.flush_range(position, old_len).map_err(io_error(&self.path))?;
        self.len = position;
        self.flushed = self.flushed.min(position);
        self.next_offset = Offset(first_removed.base_offset);
        self.index.truncate(index, position);
        self.last_index = RaftIndex(index.0 - 1);
        self.last_term = self.index.term_of(self.last_index).unwrap_or_default();
        let (mut cursor, mut max_timestamp_ms) = self.index.time_restart();
        self.last_position = 0;
        while cursor < self.len {
            let header = self.header_at(cursor)?;
            if header.kind == BatchKind::Records && header.record_count > 0 {
                max_timestamp_ms = max_timestamp_ms.max(header.max_timestamp_ms);
            }
            self.last_position = cursor;
            cursor += u64::from(header.length);
        }
        self.index.max_timestamp_ms = max_timestamp_ms;
        if self.is_empty() {
            self.first_append_ms = None;
        }
        self.index_synced = false;
        Ok(())
    }

    /// Seals the active segment: truncates the file to its data, maps it read-only, writes its
    /// index files. Infallible by design (a roll must not fail half-way): each step that fails
    /// is logged and left for recovery, which handles a longer file (trailing zeros) and missing
    /// index files.
    pub(super) fn seal(&mut self, dir: &Path) {
        self.writable = false;
        self.allocated = self.len;
        match self.file.set_len(self.len) {
            // The old read-write mapping now extends past the end of the file; it stays valid
            // for the views that hold it, which only cover data.
            Ok(()) => match Mapping::read_only(&self.file, self.len) {
                Ok(map) => self.map = Arc::new(map),
                Err(error) => tracing::warn!(path = %self.path.display(), %error, "cannot remap sealed segment"),
            },
            Err(error) => tracing::warn!(path = %self.path.display(), %error, "cannot truncate sealed segment"),
        }
        if let Err(error) = self.persist_index(dir, false) {
            tracing::warn!(path = %self.path.display(), %error, "cannot write index files");
        }
    }

    /// Makes a sealed segment the active one again over `map` (a read-write mapping of the file).
    /// Only its data counts as allocated (the file may be longer if a seal was interrupted).
    pub(super) fn reactivate(&mut self, dir: &Path, map: Mapping, uid: u64) -> Result<(), LogError> {
        remove_if_exists(&index_path(dir, self.base_index))?;
        remove_if_exists(&time_index_path(dir, self.base_index))?;
        self.map = Arc::new(map);
        self.allocated = self.len;
        self.prefault_until = 0;
        self.prefault_mark = 0;
        self.writable = true;
        self.uid = uid;
        self.index_synced = false;
        Ok(())
    }

    /// What the index files record besides the entries.
    pub(super) fn index_meta(&self) -> Result<IndexFileMeta, LogError> {
        let last_crc = if self.is_empty() {
            0
        } else {
            self.header_at(self.last_position)?.crc
        };
        Ok(IndexFileMeta {
            base_index: self.base_index,
            base_offset: self.base_offset,
            segment_bytes: self.len,
            last_index: self.last_index,
            next_offset: self.next_offset,
            max_timestamp_ms: self.index.max_timestamp_ms,
            last_position: self.last_position,
            last_crc,
        })
    }

    /// Writes the `.index` and `.timeindex` files (fsynced when `sync`).
    pub(super) fn persist_index(&mut self, dir: &Path, sync: bool) -> Result<(), LogError> {
        let meta = self.index_meta()?;
        let files = [
            (index_path(dir, self.base_index), encode_index(&meta, &self.index)),
            (
                time_index_path(dir, self.base_index),
                encode_time_index(&meta, &self.index),
            ),
        ];
        for (path, bytes) in files {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(io_error(&path))?;
            file.write_all(&bytes).map_err(io_error(&path))?;
            if sync {
                file.sync_data().map_err(io_error(&path))?;
            }
        }
        self.index_synced = sync;
        Ok(())
    }

    /// Deletes the segment's files (not durable until the directory is synced).
    pub(super) fn delete_files(&self, dir: &Path) -> Result<(), LogError> {
        remove_if_exists(&self.path)?;
        remove_if_exists(&index_path(dir, self.base_index))?;
        remove_if_exists(&time_index_path(dir, self.base_index))
    }
}
