//! Opening a partition directory: finding the segments, trusting what is known durable, checking
//! what may not be, cutting a torn tail. The procedure is specified in the module doc of
//! [`super`].

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use super::checkpoint::{Checkpoint, CleanMarker, LogStartRecord, CLEAN_FILE};
use super::error::{io_error, LogError};
use super::fsutil::{
    allocate_prefix, classify, create_segment_file, index_path, now_ms, remove_if_exists, segment_path, set_length,
    sync_dir, time_index_path, FileKind,
};
use super::index::{decode_index, decode_time_index};
use super::mapping::Mapping;
use super::scan::{nonzero_end, nonzero_end_within, valid_batch_follows, walk, Cursor};
use super::segment::Segment;
use super::{allocation_step, LogConfig, PartitionLog, RecoveryReport, SEGMENT_BYTES_LIMIT};
use crate::types::{Offset, RaftIndex};

/// How much of a segment can be trusted without checking CRCs.
#[derive(Debug, Clone, Copy)]
enum Policy {
    /// Durable in full (below the checkpoint, or after a clean shutdown): index files, else a
    /// header hop. `data_bytes` is the data length when the file is longer (clean active segment).
    Durable { data_bytes: Option<u64> },
    /// Possibly unflushed after `durable_until`: hop up to it, check everything after it.
    Check { durable_until: u64 },
}

/// Whether to go on with the next segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The log ends in this segment (torn tail): later segment files are deleted.
    Stop,
}

struct Loader<'a> {
    dir: &'a Path,
    config: &'a LogConfig,
    checkpoint: Option<Checkpoint>,
    marker: Option<CleanMarker>,
    cursor: Cursor,
    report: RecoveryReport,
    segments: Vec<Segment>,
    next_uid: u64,
}

pub(super) fn open(dir: &Path, config: LogConfig) -> Result<(PartitionLog, RecoveryReport), LogError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let marker_present = dir.join(CLEAN_FILE).exists();
    let marker = CleanMarker::read(dir)?;
    let mut record = LogStartRecord::read(dir)?.unwrap_or_default();
    let checkpoint = Checkpoint::read(dir)?;
    let mut bases = list_segments(dir)?;
    if record.reset_pending {
        tracing::warn!(dir = %dir.display(), "finishing an interrupted reset");
        delete_segments(dir, &bases)?;
        bases.clear();
        record.reset_pending = false;
        record.write(dir)?;
    }
    drop_below_start(dir, &mut bases, record.start.index)?;
    let mut loader = Loader {
        dir,
        config: &config,
        checkpoint,
        marker: marker.filter(|marker| bases.last() == Some(&marker.active_base)),
        cursor: Cursor::at_start(record.start),
        report: RecoveryReport {
            created: bases.is_empty(),
            ..RecoveryReport::default()
        },
        segments: Vec::new(),
        next_uid: 0,
    };
    for (at, &base) in bases.iter().enumerate() {
        if loader.load(base, bases.get(at + 1).copied())? == Flow::Stop {
            loader.discard(&bases[at + 1..])?;
            break;
        }
    }
    loader.check_marker();
    if loader.segments.is_empty() {
        loader.create_first(record.start.offset)?;
    }
    let Loader {
        report,
        segments,
        next_uid,
        ..
    } = loader;
    let first_base = segments[0].base_index;
    let mut log = PartitionLog {
        dir: dir.to_path_buf(),
        config,
        log_start: record.start,
        segments,
        standby: None,
        reserved_bytes: 0,
        checkpoint: checkpoint.unwrap_or(Checkpoint {
            base_index: first_base,
            position: 0,
        }),
        checkpoint_written_at: None,
        next_uid,
    };
    // The blocks after the data: usually still allocated from before (then this is cheap and
    // needs no free space), so the control reserve is there again even on a full disk.
    let (end, step) = (log.active().len + log.control_reserve(), log.allocation_step());
    if let Err(error) = log.active_mut().allocate_to(end, step) {
        tracing::warn!(dir = %dir.display(), %error, "cannot allocate the active segment's next step");
    }
    let frontier = log.durable_frontier();
    if checkpoint.is_none_or(|written| frontier < written) {
        log.write_checkpoint(frontier)?;
    }
    if marker_present {
        CleanMarker::remove(dir)?;
    }
    let report = RecoveryReport {
        segments: log.segments.len(),
        ..report
    };
    tracing::info!(dir = %dir.display(), ?report, "opened partition log");
    Ok((log, report))
}

/// Base indexes of the segment files, sorted; deletes temporary files and orphan index files.
fn list_segments(dir: &Path) -> Result<Vec<RaftIndex>, LogError> {
    let mut segments = BTreeSet::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match classify(&name) {
            FileKind::Segment(base) => {
                segments.insert(base);
            }
            FileKind::Index(base) | FileKind::TimeIndex(base) => indexes.push((base, entry.path())),
            FileKind::Temporary => remove_if_exists(&entry.path())?,
            FileKind::Other => {}
        }
    }
    for (base, path) in indexes {
        if !segments.contains(&base) {
            remove_if_exists(&path)?;
        }
    }
    Ok(segments.into_iter().collect())
}

fn delete_segments(dir: &Path, bases: &[RaftIndex]) -> Result<(), LogError> {
    for &base in bases {
        remove_if_exists(&segment_path(dir, base))?;
        remove_if_exists(&index_path(dir, base))?;
        remove_if_exists(&time_index_path(dir, base))?;
    }
    sync_dir(dir)
}

/// Deletes the segments whose entries all lie at or below the log start (left over by a crash
/// between the log start update and the deletion in retention).
fn drop_below_start(dir: &Path, bases: &mut Vec<RaftIndex>, start: RaftIndex) -> Result<(), LogError> {
    let below = bases.windows(2).take_while(|pair| pair[1] <= start.next()).count();
    if below > 0 {
        delete_segments(dir, &bases[..below])?;
        bases.drain(..below);
    }
    Ok(())
}

/// Bytes after the data of a cleanly closed active segment that are checked to be zero. Only
/// this window is read: scanning the whole segment would fault in every page of
/// every partition's active segment at start. Damage further out is found by the next crash
/// recovery (as a torn tail) and is never read before: reads stop at the data's end.
const CLEAN_TAIL_CHECK_BYTES: u64 = 64 << 10;

fn clean_tail(segment: &Segment) -> bool {
    let window_end = segment.len + CLEAN_TAIL_CHECK_BYTES;
    nonzero_end_within(&segment.file, &segment.map, segment.len, window_end) == segment.len
}

impl Loader<'_> {
    fn policy(&self, base: RaftIndex, is_last: bool) -> Policy {
        match self.marker {
            Some(marker) => Policy::Durable {
                data_bytes: is_last.then_some(marker.active_bytes),
            },
            None => self.checkpoint_policy(base, is_last),
        }
    }

    fn checkpoint_policy(&self, base: RaftIndex, is_last: bool) -> Policy {
        match self.checkpoint {
            Some(checkpoint) if base < checkpoint.base_index && !is_last => Policy::Durable { data_bytes: None },
            // The checkpoint points past the last segment: that one is durable in full.
            Some(checkpoint) if base < checkpoint.base_index => Policy::Check {
                durable_until: u64::MAX,
            },
            Some(checkpoint) if base == checkpoint.base_index => Policy::Check {
                durable_until: checkpoint.position,
            },
            Some(_) => Policy::Check { durable_until: 0 },
            // No (valid) checkpoint: nothing says what is durable. Sealed segments are treated
            // as durable (damage there is corruption, never a tear to cut), the last one is
            // checked in full.
            None if is_last => Policy::Check { durable_until: 0 },
            None => Policy::Durable { data_bytes: None },
        }
    }

    fn load(&mut self, base: RaftIndex, next: Option<RaftIndex>) -> Result<Flow, LogError> {
        let is_last = next.is_none();
        let mut segment = self.open_segment(base, is_last)?;
        let policy = self.policy(base, is_last);
        if let Policy::Durable { data_bytes } = policy {
            match load_index_files(self.dir, &mut segment, data_bytes) {
                Ok(()) if !is_last || clean_tail(&segment) => {
                    segment.index_synced = true;
                    self.accept(segment, u64::MAX);
                    return Ok(Flow::Continue);
                }
                Ok(()) => {
                    tracing::warn!(path = %segment.path.display(), "non-zero bytes after the data: checking the segment");
                    self.marker = None;
                    segment = self.open_segment(base, is_last)?;
                }
                Err(reason) => {
                    tracing::info!(path = %segment.path.display(), reason, "rebuilding index files");
                    self.report.rebuilt_indexes += 1;
                }
            }
            if !is_last {
                return self.hop_durable(segment);
            }
        }
        let durable_until = match self.checkpoint_policy(base, is_last) {
            Policy::Check { durable_until } => durable_until,
            Policy::Durable { .. } => u64::MAX,
        };
        let next_path = next.map(|base| segment_path(self.dir, base));
        self.check(segment, durable_until, next_path.as_deref())
    }

    /// Opens and maps a segment file: read-write and lengthened to `segment_bytes_max` (a hole,
    /// best effort) for the last one, read-only for the others.
    fn open_segment(&mut self, base: RaftIndex, is_last: bool) -> Result<Segment, LogError> {
        let path = segment_path(self.dir, base);
        if base.0 != self.cursor.next_index {
            let expected = self.cursor.next_index;
            return Err(LogError::corrupt(
                &path,
                0,
                format!("segment starts at entry {base}, expected {expected}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut length = file.metadata().map_err(io_error(&path))?.len();
        if length > SEGMENT_BYTES_LIMIT {
            return Err(LogError::corrupt(
                &path,
                SEGMENT_BYTES_LIMIT,
                "segment file larger than 4 GiB",
            ));
        }
        let map = if is_last {
            length = lengthen(
                &file,
                &path,
                length,
                self.config.segment_bytes_max.min(SEGMENT_BYTES_LIMIT),
            );
            Mapping::read_write(&file, length)
        } else {
            Mapping::read_only(&file, length)
        };
        let map = Arc::new(map.map_err(io_error(&path))?);
        self.next_uid += 1;
        Ok(Segment::new(
            path,
            file,
            map,
            base,
            Offset(self.cursor.next_offset),
            self.next_uid,
        ))
    }

    /// A sealed, durable segment without usable index files: hop over its headers. Anything but
    /// whole batches followed by zeros is corruption.
    fn hop_durable(&mut self, mut segment: Segment) -> Result<Flow, LogError> {
        let stop = walk(
            &mut segment,
            u64::MAX,
            &mut self.cursor,
            self.config.index_interval_bytes,
        );
        self.report.scanned_bytes += stop.position;
        if let Some(reason) = stop.reason {
            if nonzero_end(&segment.file, &segment.map, stop.position) > stop.position {
                return Err(segment.corrupt(stop.position, reason));
            }
            finish_seal(&mut segment)?;
        }
        self.accept(segment, u64::MAX);
        Ok(Flow::Continue)
    }

    /// Hops to `durable_until`, checks every batch after it, and decides at the first bad one.
    fn check(&mut self, mut segment: Segment, durable_until: u64, next: Option<&Path>) -> Result<Flow, LogError> {
        let stop = walk(
            &mut segment,
            durable_until,
            &mut self.cursor,
            self.config.index_interval_bytes,
        );
        self.report.scanned_bytes += stop.position;
        let Some(reason) = stop.reason else {
            self.accept(segment, durable_until);
            return Ok(Flow::Continue);
        };
        let position = stop.position;
        let garbage_end = nonzero_end(&segment.file, &segment.map, position);
        if durable_until != u64::MAX && position < durable_until {
            self.report.truncated_durable_bytes += durable_until - position;
        }
        if garbage_end == position {
            // Clean end of the data (the rest is zeros or a hole, or a seal that did not
            // shrink the file before a crash).
            if !segment.writable {
                finish_seal(&mut segment)?;
            }
            self.accept(segment, durable_until);
            return Ok(Flow::Continue);
        }
        let map = Arc::clone(&segment.map);
        if valid_batch_follows(map.bytes(0, stop.data_end), position, self.cursor.next_index, next) {
            return Err(segment.corrupt(position, format!("{reason}, and valid entries follow")));
        }
        tracing::warn!(path = %segment.path.display(), position, bytes = garbage_end - position, reason, "cutting a torn tail");
        self.report.truncated_bytes += garbage_end - position;
        if !segment.writable {
            let map = Mapping::read_write(&segment.file, segment.capacity()).map_err(io_error(&segment.path))?;
            self.next_uid += 1;
            segment.reactivate(self.dir, map, self.next_uid)?;
        }
        // SAFETY: the log is not shared yet; nothing views these bytes.
        unsafe { segment.map.zero(position, garbage_end) };
        segment
            .map
            .flush_range(position, garbage_end)
            .map_err(io_error(&segment.path))?;
        let last = next.is_none();
        self.accept(segment, durable_until);
        Ok(if last { Flow::Continue } else { Flow::Stop })
    }

    /// Adds a loaded segment; `durable_until` says how much of it is known flushed.
    fn accept(&mut self, mut segment: Segment, durable_until: u64) {
        segment.flushed = segment.len.min(durable_until);
        // What was allocated after the data is not recorded: the next allocation redoes it.
        segment.allocated = segment.len;
        if !segment.writable && !segment.index_synced {
            // Rebuilt by a scan: save the next recovery the work (best effort).
            if let Err(error) = segment.persist_index(self.dir, false) {
                tracing::warn!(path = %segment.path.display(), %error, "cannot write index files");
            }
        }
        if segment.writable && !segment.is_empty() {
            let now = now_ms();
            let first = segment.index.times.first().map_or(now, |time| time.max_timestamp_ms);
            segment.first_append_ms = Some(now.min(first));
        }
        if !segment.is_empty() {
            self.cursor.next_index = segment.last_index.0.saturating_add(1);
            self.cursor.next_offset = segment.next_offset.0;
            self.cursor.last_term = segment.last_term.0;
        }
        self.segments.push(segment);
    }

    /// Deletes the segment files after a torn tail.
    fn discard(&mut self, bases: &[RaftIndex]) -> Result<(), LogError> {
        for &base in bases {
            let path = segment_path(self.dir, base);
            let length = fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
            tracing::warn!(path = %path.display(), length, "deleting a segment after a torn tail");
            self.report.truncated_bytes += length;
        }
        delete_segments(self.dir, bases)
    }

    /// A marker that disagrees with what was loaded did not describe these files.
    fn check_marker(&mut self) {
        let tail = self.segments.last();
        let matches = self.marker.is_some_and(|marker| {
            tail.is_some_and(|segment| {
                marker.last_index.0.saturating_add(1) == self.cursor.next_index
                    && marker.next_offset.0 == self.cursor.next_offset
                    && marker.active_bytes == segment.len
            })
        });
        self.report.clean_shutdown = matches && self.report.scanned_bytes == 0;
    }

    /// The active segment of an empty log: full length (a hole), its first allocation step
    /// allocated if the disk allows (otherwise appends report `DiskFull` until it does).
    fn create_first(&mut self, base_offset: Offset) -> Result<(), LogError> {
        let base = RaftIndex(self.cursor.next_index);
        let path = segment_path(self.dir, base);
        let file = create_segment_file(&path)?;
        let length = lengthen(&file, &path, 0, self.config.segment_bytes_max.min(SEGMENT_BYTES_LIMIT));
        let mut allocated = 0;
        let step = allocation_step(self.config);
        if let Err(error) = allocate_prefix(&file, &path, &mut allocated, step, step, length) {
            tracing::warn!(path = %path.display(), %error, "active segment not allocated");
        }
        sync_dir(self.dir)?;
        let map = Arc::new(Mapping::read_write(&file, length).map_err(io_error(&path))?);
        self.next_uid += 1;
        let mut segment = Segment::new(path, file, map, base, base_offset, self.next_uid);
        segment.allocated = allocated;
        self.segments.push(segment);
        Ok(())
    }
}

/// Sets the length of the active segment file to `target` if shorter, without allocating (the
/// rest is a hole, see `Segment::allocated`); on failure keeps its length (appends then roll,
/// and report `DiskFull` themselves). Returns the length.
fn lengthen(file: &File, path: &Path, length: u64, target: u64) -> u64 {
    if length >= target {
        return length;
    }
    match set_length(file, path, target) {
        Ok(()) => target,
        Err(error) => {
            tracing::warn!(path = %path.display(), target, %error, "active segment not lengthened");
            length
        }
    }
}

/// Completes a seal that a crash interrupted: the file is cut to its data and mapped read-only.
fn finish_seal(segment: &mut Segment) -> Result<(), LogError> {
    segment.file.set_len(segment.len).map_err(io_error(&segment.path))?;
    let map = Mapping::read_only(&segment.file, segment.len).map_err(io_error(&segment.path))?;
    segment.map = Arc::new(map);
    Ok(())
}

/// Fills `segment` from its index files. `data_bytes` is the data length when the file is
/// longer than its data (the active segment after a clean close); otherwise the file length.
fn load_index_files(dir: &Path, segment: &mut Segment, data_bytes: Option<u64>) -> Result<(), String> {
    let file_len = segment.capacity();
    let read = |path: &Path| -> Result<Vec<u8>, String> {
        let length = fs::metadata(path).map_err(|error| error.to_string())?.len();
        if length > file_len + 4096 {
            return Err("index file larger than its segment".into());
        }
        fs::read(path).map_err(|error| error.to_string())
    };
    let (meta, mut index) = decode_index(&read(&index_path(dir, segment.base_index))?)?;
    decode_time_index(&read(&time_index_path(dir, segment.base_index))?, &meta, &mut index)?;
    let data_len = data_bytes.unwrap_or(file_len);
    if meta.base_index != segment.base_index || meta.base_offset != segment.base_offset {
        return Err("index belongs to another segment".into());
    }
    if meta.segment_bytes != data_len || data_len > file_len {
        return Err(format!(
            "index describes {} bytes, segment holds {data_len}",
            meta.segment_bytes
        ));
    }
    let last_term = index.terms.last().map(|term| term.term).unwrap_or_default();
    if data_len > 0 {
        let header = weir_proto::batch::parse_header(segment.map.bytes(meta.last_position, data_len))
            .map_err(|error| format!("last batch unreadable: {error}"))?;
        let consistent = header.crc == meta.last_crc
            && header.index == meta.last_index.0
            && header.term == last_term.0
            && meta.last_position + u64::from(header.length) == data_len
            && header.base_offset.checked_add(u64::from(header.record_count)) == Some(meta.next_offset.0);
        if !consistent {
            return Err("last batch does not match the index".into());
        }
    } else if meta.last_index.0.saturating_add(1) != meta.base_index.0 || meta.next_offset != meta.base_offset {
        return Err("empty segment with a non-empty index".into());
    }
    segment.len = data_len;
    segment.last_index = meta.last_index;
    segment.last_term = last_term;
    segment.next_offset = meta.next_offset;
    segment.last_position = meta.last_position;
    segment.index = index;
    Ok(())
}
