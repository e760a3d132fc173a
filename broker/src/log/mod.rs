//! Storage: the partition log, which is also the partition's Raft log.
//!
//! This module knows nothing of raft, tokio or gRPC. The raft layer owns one [`PartitionLog`]
//! per partition replica, drives it from a raft thread and wraps it in
//! `Arc<std::sync::RwLock<PartitionLog>>` so that fetch handlers read concurrently. Reads hand
//! out zero-copy [`Bytes`] views of the mapped files and do not need the lock afterwards.
//!
//! This doc is the on-disk format specification. A change to any layout below bumps that file's
//! version and adds a fixture (`broker/tests/fixtures/golden-v1.log` pins the segment format).
//!
//! # Directory
//!
//! One directory per partition replica:
//!
//! ```text
//! 00000000000000000001.log        segment: batches of entries 1..=N (name = base index, 20 digits)
//! 00000000000000000001.index      sparse index of that segment (sealed segments, clean close)
//! 00000000000000000001.timeindex  time index of that segment    (sealed segments, clean close)
//! 0000000000000000N+1.log ...     later segments; the last one is the active segment
//! checkpoint                      how far the log is known to be durable
//! log_start                       position just before the first stored entry
//! clean_shutdown                  present only between a clean close and the next open
//! standby.log.tmp                 next segment, made ahead of a roll by `reserve`
//! *.tmp                           half-written files; deleted at open
//! ```
//!
//! # Segment files
//!
//! A segment file is a sequence of batches in the record batch format of
//! [`weir_proto::batch`] (80-byte little-endian header: magic `WEIR`, CRC-32 of everything after
//! the CRC field, length, version, kind, attributes, term, index, base offset, record count,
//! timestamps, producer fields; then the records or the control payload). One batch is one Raft
//! entry, so a segment holds entries `base_index, base_index + 1, ...` without gaps.
//!
//! - Records entries are the producer's batch, its CRC checked right before it is copied (on a
//!   follower this catches a batch damaged on its way from the leader), then stamped in the
//!   mapping with term, index and base offset (`batch::stamp_with_body`: the new CRC combines
//!   the rehashed header with the body CRC from that check, so the body is read once). Control
//!   entries (`Noop`, `ConfChange`, `ConfChangeV2`) are `batch::control_batch`es with zero
//!   records around the opaque payload.
//! - Offsets: the base offset of an entry is the sum of the record counts of all entries before
//!   it. An entry's `next_offset` is its base offset plus its record count.
//! - Invariants checked on recovery: each batch's index is the previous one plus one; terms never
//!   decrease; each base offset is the previous next offset; a records batch claims no more
//!   records than its body could hold; a control batch claims none. The first segment starts at
//!   `log_start.index + 1` and `log_start.offset`; each later one continues the previous one.
//! - The **active segment** (the last) is a file of `segment_bytes_max` bytes (or more for an
//!   oversized batch), mapped read-write in full; appends copy into the mapping. Only a prefix
//!   of it has disk blocks: `[0, allocated)` is allocated with `fallocate`, the rest is a hole
//!   (reads as zeros, costs no disk). `allocated` grows in steps of
//!   `segment_allocation_step_bytes` (default 16 MiB, whole pages, at most the segment) when an
//!   append or a `reserve` needs room past it; on a full disk that is [`LogError::DiskFull`]
//!   and nothing is appended. No write through the mapping goes past `allocated` (appends,
//!   truncation's zeroing, recycling into the standby, the prefaulter): writing into a hole
//!   would make the file system allocate a block on a page fault, SIGBUS on a full disk. Every
//!   byte after the data is zero: truncation zeroes what it removes, and recovery zeroes a torn
//!   tail. A records batch may not use the last `control_reserve` bytes of the segment (64 KiB,
//!   or 1/16 of small segments), and keeps them allocated behind it, so that `Noop` and
//!   configuration entries still fit when no block and no new segment can be allocated.
//! - A **sealed segment** is truncated to its data and mapped read-only. A segment holds at most
//!   `u32::MAX` bytes.
//! - Reserving: `reserve(bytes)` allocates the active segment up to `data end + bytes +
//!   control_reserve` (rounded up to a step, at most the segment), and when the segment lacks
//!   that room, makes `standby.log.tmp` (full length, its first `bytes + control_reserve`
//!   allocated, rounded up to a step). The appends it admitted then allocate nothing.
//! - Rolling: a roll (when a batch does not fit, or by age in `maybe_roll`) renames the standby
//!   to `{next_index:020}.log`, fsyncs the directory, then seals the old segment. A roll with no
//!   standby makes one on the spot and may fail with `DiskFull` (nothing is appended then). The
//!   age of a segment counts from its first append (after a restart: from the restart, or from
//!   the first batch's timestamp if older).
//! - Truncation into a sealed segment makes it the active one again (mapped read-write over its
//!   current length, only its data counted as allocated); the removed active segment becomes the
//!   standby (zeroed, keeping its allocated prefix) if there is none, so what `reserve` promised
//!   still holds.
//! - How far the active segment was allocated is not recorded: after a restart its data end
//!   counts as allocated, and open allocates up to the control reserve again (best effort;
//!   `fallocate` over blocks a crash left allocated is cheap and needs no free space). Files
//!   written before allocation steps (fallocated in full) open the same way.
//!
//! # `.index` (version 1)
//!
//! One entry at the first batch, at every term change and then at least every
//! `index_interval_bytes`. All little-endian; positions are byte positions in the `.log` file.
//!
//! ```text
//!  0  4   magic             b"WIDX"
//!  4  1   version           1
//!  5  3   zero
//!  8  8   base_index        must match the file name
//! 16  8   base_offset
//! 24  8   segment_bytes     data length of the .log this index describes
//! 32  8   last_index
//! 40  8   next_offset
//! 48  8   max_timestamp_ms  i64, i64::MIN when the segment holds no records
//! 56  4   last_position     position of the last batch
//! 60  4   last_crc          CRC field of the last batch (detects an index of other contents)
//! 64  4   entry_count E
//! 68  4   term_count T
//! 72  12E entries: rel_index u32 (index - base_index), rel_offset u32 (base offset of the
//!         batch - base_offset), position u32
//! ..  16T term starts: index u64, term u64 (entries from index on have that term)
//! ..  4   CRC-32 of every byte before it
//! ```
//!
//! # `.timeindex` (version 1)
//!
//! An entry when the running maximum record timestamp of the segment grows (at most one per
//! `index_interval_bytes`): every batch up to and including the one at `position` has timestamps
//! at most `max_timestamp_ms`.
//!
//! ```text
//!  0  4   magic  b"WTIX"      4  1  version 1     5  3  zero
//!  8  8   base_index          16  8  segment_bytes  24  4  entry_count N   28  4  zero
//! 32  16N entries: max_timestamp_ms i64, rel_offset u32, position u32
//! ..  4   CRC-32 of every byte before it
//! ```
//!
//! An index file is trusted only if its CRC, version, base index and `segment_bytes` match, its
//! entries are ordered and in range, and the batch at `last_position` has `last_crc`, index
//! `last_index` and ends at `segment_bytes`. Otherwise it is rebuilt by hopping over the batch
//! headers. Index files are an optimisation: losing them costs a hop, never data.
//!
//! # State files
//!
//! `checkpoint`, `log_start` and `clean_shutdown` are written whole to `{name}.tmp`, fsynced,
//! renamed, and the directory fsynced. Layout: magic (4), version 1 (1), zero (3), u64 fields,
//! CRC-32 of the preceding bytes (4).
//!
//! - `checkpoint` (`WCKP`): `base_index`, `position`: every segment below `base_index` is
//!   durable, and segment `base_index` up to `position`. Rewritten by `mark_flushed` at most about
//!   once a second or when the durable frontier moves to another segment, and at once by a
//!   `truncate_from` below it.
//! - `log_start` (`WLST`): `index`, `term`, `offset`, `flags` (bit 0: reset in progress). Written
//!   before retention deletes files and around `reset`. Missing means `(0, 0, 0)`.
//! - `clean_shutdown` (`WCLN`): `active_base`, `active_bytes`, `last_index`, `next_offset`. Written
//!   by `close` after the data, the index files and the checkpoint are durable; deleted (and the
//!   directory fsynced) right after open, so a later crash is not mistaken for a clean stop.
//!
//! # Recovery
//!
//! With a matching clean-shutdown marker, open trusts the index files and reads no data (only
//! the last batch header of each segment, and a zero check of the 64 KiB after the active
//! segment's data: scanning the whole tail of the segment would fault in every page of every
//! partition at start).
//! Otherwise:
//!
//! - Sealed segments below the checkpoint (all sealed segments when there is no valid checkpoint):
//!   index files, or a header hop when they are invalid. A broken header there is
//!   [`LogError::Corrupt`]: durable sealed data is never truncated away. A file longer than its
//!   data followed by zeros is a seal the crash interrupted; it is completed.
//! - The checkpoint segment is hopped up to the checkpoint position, then every later batch (and
//!   every batch of later segments) is checked in full: framing, CRC, continuity.
//! - At the first invalid batch: if its length is plausible and a valid batch with the next
//!   expected index follows it (in the same file, or first in the next one), that is corruption
//!   in the middle and open fails with `Corrupt`, changing nothing. Otherwise it is a torn tail:
//!   the log ends at the last whole batch, the rest is zeroed durably (and later segments
//!   deleted), and [`RecoveryReport::truncated_bytes`] says how much went. A tail cut below the
//!   checkpoint (a file damaged while the node was down) is handled the same way but reported in
//!   [`RecoveryReport::truncated_durable_bytes`]: that replica may have lost acknowledged entries.
//! - Whether anything but zeros follows the last whole batch (and how far the torn tail to zero
//!   reaches) is checked only where the file system reports data (SEEK_DATA/SEEK_HOLE): the
//!   unallocated part of an active segment is a hole, and so is the allocated but unwritten
//!   part. The batch walk itself stops at the end of the last data region (a batch reaching past
//!   it is torn): reading a hole through a shared mapping makes tmpfs allocate a page, SIGBUS
//!   when it is full. After a kill -9 the data regions are the
//!   batches and the pages the prefault thread touched (cached zeros, about 8 MiB); after a power
//!   cut, what was written back. All regions are listed before any byte is read: reading adds
//!   pages to the page cache (with read-ahead), which ext4 also reports as data, so asking region
//!   by region made the check creep through the whole allocated file (1 s per 256 MiB segment
//!   in a debug build). The regions are compared with zeros 4 KiB at a time (`memcmp`, as fast
//!   in an unoptimised build). The check is not bounded by the checkpoint or a batch size: pages
//!   written after the last flush (up to a second of appends) reach the disk in any order in a
//!   power cut, so non-zero bytes may lie anywhere up to where the writer got, which nothing
//!   records.
//! - Leftover `*.tmp` files, orphan index files and segments entirely below the log start are
//!   deleted; an interrupted `reset` is finished.
//!
//! # Reads
//!
//! Reads find the segment by binary search, the batch through the sparse index and a short
//! header hop, and check each batch's CRC right after reading it: a mismatch is
//! [`LogError::Corrupt`] and nothing of that batch is returned. Terms come from the per-segment
//! term lists (one entry per term change), so `term` is two binary searches and no I/O.
//!
//! Reads return [`Bytes`] views of the mappings (`Bytes::from_owner` over an `Arc` of the
//! mapping): they stay valid after the lock is released, after a roll and after retention deletes
//! the file. The log never writes where a view points, with one exception: truncation (and
//! `reset`) zero the removed entries, so a view of an entry that is later truncated may see the
//! zeros. Raft only truncates uncommitted entries, which fetches never serve.
//!
//! # Write speed
//!
//! An append is one CRC check of the incoming batch, one copy into the mapping, one stamp (CRC)
//! and a sparse index push. Writing a fresh page of a file mapping costs a page fault (about as
//! much as copying 2-3 pages), so a process-wide `weir-prefault` thread faults pages in
//! (MADV_POPULATE_WRITE, contents unchanged) ahead of each active segment's tail, in a window that
//! follows the write rate (128 KiB to 8 MiB), never past the allocated prefix (MADV_POPULATE_WRITE
//! on a hole would allocate blocks the log did not ask for, and fail on a full disk). `reserve`
//! extends it to the reserved bytes.
//!
//! # Durability
//!
//! Appends only write to the mapping; new segment files and renames are made durable at once
//! (directory fsync). [`PartitionLog::pending_flush`] lists the unflushed ranges,
//! [`FlushBatch::run`] msyncs them without the log lock, [`PartitionLog::mark_flushed`] records the
//! result (and may move the checkpoint). Whatever was not flushed may be lost in a power failure;
//! a torn tail is then cut off on recovery.
//!
//! # Retention
//!
//! Whole sealed segments only, oldest first, never the active one and never one holding an entry
//! above the committed index: while the segment's largest record timestamp is older than
//! `retention_ms`, or while the log is larger than `retention_bytes`. The log start moves to the
//! last entry of the deleted segment (persisted before the files go).
//!
//! Compaction ([`PartitionLog::delete_segments_through`]) deletes whole sealed segments the same
//! way, but by index: every sealed segment whose entries are all at or below a given index (the
//! controller's state snapshot covers them). The segment holding the index itself stays.

mod checkpoint;
pub use checkpoint::write_atomic;
mod error;
mod flush;
mod fsutil;
mod index;
mod mapping;
mod read;
mod recovery;
mod retention;
mod scan;
mod segment;
mod verify;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

pub use self::error::LogError;
pub use self::flush::FlushBatch;
pub use self::verify::{Corruption, ScrubCursor, ScrubStep};
pub use weir_proto::batch::{self, BatchKind};

use self::checkpoint::Checkpoint;
use self::segment::Segment;
use self::write::Standby;
use crate::types::{Offset, RaftIndex, Term};

/// Records batches leave this many bytes of the active segment free for control entries
/// (capped at 1/16 of `segment_bytes_max` for small segments).
const CONTROL_RESERVE_BYTES: u64 = 64 * 1024;
/// Largest segment: positions are stored as u32.
const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;
/// Allocation steps are whole pages (the prefaulter works in pages).
const PAGE_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Length of the active segment file: it rolls when a batch does not fit (capped at
    /// 4 GiB - 1).
    pub segment_bytes_max: u64,
    /// Disk blocks of the active segment are allocated (fallocate) in steps of this many bytes,
    /// as appends and reservations need them, instead of the whole segment up front. Rounded up
    /// to whole 4 KiB pages, at most `segment_bytes_max`.
    pub segment_allocation_step_bytes: u64,
    /// Roll when the active segment got its first entry longer ago than this.
    pub segment_age_ms_max: u64,
    /// One sparse index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Delete sealed segments whose newest record is older than this (`None`: keep forever).
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this (`None`: no limit).
    pub retention_bytes: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 256 * 1024 * 1024,
            segment_allocation_step_bytes: 16 * 1024 * 1024,
            segment_age_ms_max: 7 * 24 * 60 * 60 * 1000,
            index_interval_bytes: 4096,
            retention_ms: None,
            retention_bytes: None,
        }
    }
}

/// Position just before the first stored entry (what a snapshot would carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStart {
    pub index: RaftIndex,
    pub term: Term,
    pub offset: Offset,
}

/// One stored Raft entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub index: RaftIndex,
    pub term: Term,
    pub kind: BatchKind,
    /// For `Records`, the whole stamped batch (header included); for other kinds, the payload.
    pub data: Bytes,
}

/// One entry to append.
#[derive(Debug, Clone, Copy)]
pub struct AppendEntry<'a> {
    pub index: RaftIndex,
    pub term: Term,
    pub kind: BatchKind,
    /// For `Records`, a complete batch that passed `batch::validate` (the log copies it and stamps
    /// term, index and base offset in place); for other kinds, an opaque payload.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub next_offset: Offset,
}

/// The answer to a [`PartitionLog::read`].
#[derive(Debug, Clone, Default)]
pub struct ReadChunk {
    /// Runs of consecutive records batches, zero-copy views of the mapped segments, each batch
    /// CRC-checked right after reading. Control batches are skipped (they split runs).
    pub slices: Vec<Bytes>,
    /// Offset after the last record returned (`from` when nothing is returned).
    pub next_offset: Offset,
}

/// What [`PartitionLog::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// The directory held no segment: the log was created by this open.
    pub created: bool,
    /// A valid clean-shutdown marker was found and trusted: no data was scanned.
    pub clean_shutdown: bool,
    /// Bytes of segment data read (header hops and full checks).
    pub scanned_bytes: u64,
    /// Non-zero bytes cut off as a torn tail (and data of later segments deleted with it).
    pub truncated_bytes: u64,
    /// Segments whose index files were missing or invalid and had to be rebuilt.
    pub rebuilt_indexes: usize,
    /// Of the truncated bytes, those that the checkpoint said were durable. Non-zero means this
    /// replica lost data it may have acknowledged (e.g. a file damaged while the node was down).
    pub truncated_durable_bytes: u64,
}

/// The segmented log of one partition replica. See the module doc for the format.
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    log_start: LogStart,
    /// Ordered by base index, never empty; the last one is the active (writable) segment, and
    /// only it may be empty.
    segments: Vec<Segment>,
    /// The next segment, made ahead of a roll, if `reserve` (or a truncation) made one.
    standby: Option<Standby>,
    /// Bytes the last `reserve` asked for: a standby made later (by an age roll) is at least
    /// this big, so that the reservation still holds.
    reserved_bytes: u64,
    /// The last checkpoint written.
    checkpoint: Checkpoint,
    checkpoint_written_at: Option<Instant>,
    /// Source of `Segment::uid`.
    next_uid: u64,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .field("log_start", &self.log_start)
            .field("last_index", &self.last_index())
            .field("next_offset", &self.next_offset())
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        recovery::open(dir, config)
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start(&self) -> LogStart {
        self.log_start
    }

    pub fn first_index(&self) -> RaftIndex {
        self.log_start.index.next()
    }

    /// The last stored entry, or `log_start.index` when the log is empty.
    pub fn last_index(&self) -> RaftIndex {
        self.tail().0
    }

    /// Term of the last stored entry, or `log_start.term` when the log is empty.
    pub fn last_term(&self) -> Term {
        self.tail().1
    }

    /// First record offset still stored.
    pub fn start_offset(&self) -> Offset {
        self.log_start.offset
    }

    /// Offset the next appended record gets.
    pub fn next_offset(&self) -> Offset {
        self.tail().2
    }

    /// Bytes of stored batches (allocated space not counted).
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// (last index, last term, next offset) of the log.
    fn tail(&self) -> (RaftIndex, Term, Offset) {
        match self.segments.iter().rev().find(|segment| !segment.is_empty()) {
            Some(segment) => (segment.last_index, segment.last_term, segment.next_offset),
            None => (self.log_start.index, self.log_start.term, self.log_start.offset),
        }
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a log always has an active segment")
    }

    /// Bytes of the active segment that records batches leave to control entries.
    fn control_reserve(&self) -> u64 {
        CONTROL_RESERVE_BYTES.min(self.segment_bytes_max() / 16)
    }

    fn segment_bytes_max(&self) -> u64 {
        self.config.segment_bytes_max.min(SEGMENT_BYTES_LIMIT)
    }

    fn allocation_step(&self) -> u64 {
        allocation_step(&self.config)
    }

    fn take_uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    /// Index into `segments` of the segment holding entry `index`, if stored.
    fn segment_for_index(&self, index: RaftIndex) -> Option<usize> {
        let at = self.segments.partition_point(|segment| segment.last_index < index);
        (at < self.segments.len() && self.segments[at].base_index <= index && !self.segments[at].is_empty())
            .then_some(at)
    }
}

/// The allocation step of `config`: whole pages, at least one, at most the segment size.
fn allocation_step(config: &LogConfig) -> u64 {
    let segment = config.segment_bytes_max.clamp(1, SEGMENT_BYTES_LIMIT);
    config
        .segment_allocation_step_bytes
        .min(segment)
        .max(1)
        .next_multiple_of(PAGE_BYTES)
}
