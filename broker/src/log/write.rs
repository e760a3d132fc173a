//! The write path: append, roll, reserve, truncate, reset.

use std::fs::{self, File};
use std::sync::Arc;

use weir_proto::batch::{self, BatchError, BatchKind, HEADER_LEN, RECORD_OVERHEAD};

use super::checkpoint::{Checkpoint, LogStartRecord};
use super::error::{io_error, LogError};
use super::fsutil::{
    allocate_prefix, create_segment_file, index_path, now_ms, segment_path, set_length, sync_dir, time_index_path,
    STANDBY_NAME,
};
use super::mapping::{prefault_async, Mapping, PREFAULT_WINDOW_MAX_BYTES};
use super::segment::Segment;
use super::{AppendEntry, AppendInfo, LogStart, PartitionLog, SEGMENT_BYTES_LIMIT};
use crate::types::RaftIndex;

/// A mapped, zero-filled file at `STANDBY_NAME`, ready to become the next segment: full length,
/// with the blocks of `[0, allocated)`.
pub(super) struct Standby {
    file: File,
    map: Arc<Mapping>,
    allocated: u64,
    /// End of the range handed to the background prefaulter.
    prefault_until: u64,
}

impl Standby {
    fn capacity(&self) -> u64 {
        self.map.len()
    }
}

/// Checks a records batch given to `append` right before it is written: header, CRC (the
/// pairing of the check after every read; on a follower this is what catches a batch damaged on
/// its way from the leader, before the re-stamp would give it a fresh valid CRC), exact length,
/// kind, a plausible record count and a size the log can store. The records themselves were
/// walked by the caller (`batch::validate`).
fn check_records(data: &[u8], control_reserve: u64) -> Result<batch::BodyCrc, LogError> {
    let (header, body_crc) = batch::check_with_body(data)?;
    let limit = (SEGMENT_BYTES_LIMIT - control_reserve) as usize;
    if header.length as usize != data.len() || data.len() > limit {
        return Err(BatchError::BadLength {
            length: data.len(),
            limit,
        }
        .into());
    }
    if header.kind != BatchKind::Records {
        return Err(BatchError::UnknownKind {
            found: header.kind as u8,
        }
        .into());
    }
    let body = data.len() - HEADER_LEN;
    if (header.record_count as usize).saturating_mul(RECORD_OVERHEAD) > body {
        let found = (body / RECORD_OVERHEAD) as u32;
        return Err(BatchError::RecordCountMismatch {
            declared: header.record_count,
            found,
        }
        .into());
    }
    Ok(body_crc)
}

impl PartitionLog {
    /// Appends one entry; `entry.index` must be `last_index + 1`. Rolls to a new segment when the
    /// batch does not fit (using the standby made by `reserve`, else allocating one: `DiskFull`
    /// if that fails, and then nothing was appended).
    pub fn append(&mut self, entry: AppendEntry<'_>) -> Result<AppendInfo, LogError> {
        let expected = self.last_index().next();
        if entry.index != expected {
            return Err(LogError::NonContiguous {
                expected,
                got: entry.index,
            });
        }
        assert!(
            entry.term >= self.last_term(),
            "append of entry {} with term {} after term {}: raft never lowers the term",
            entry.index,
            entry.term,
            self.last_term()
        );
        let control;
        let (bytes, restamp, reserve) = if entry.kind == BatchKind::Records {
            let body_crc = check_records(entry.data, self.control_reserve())?;
            (
                entry.data,
                Some((entry.term, entry.index, body_crc)),
                self.control_reserve(),
            )
        } else {
            let next_offset = self.next_offset().0;
            control = batch::control_batch(entry.kind, entry.term.0, entry.index.0, next_offset, entry.data);
            if control.len() as u64 > SEGMENT_BYTES_LIMIT - self.control_reserve() {
                let limit = (SEGMENT_BYTES_LIMIT - self.control_reserve()) as usize;
                return Err(BatchError::BadLength {
                    length: control.len(),
                    limit,
                }
                .into());
            }
            (&control[..], None, 0)
        };
        let length = bytes.len() as u64;
        let active = self.active();
        if active.len + length + reserve > active.capacity() {
            self.roll(length + self.control_reserve())?;
        }
        let (interval, step) = (self.config.index_interval_bytes, self.allocation_step());
        let active = self.active_mut();
        // A records batch keeps the control reserve allocated behind it; within a reservation
        // this allocates nothing.
        active.allocate_to(active.len + length + reserve, step)?;
        let base_offset = active.next_offset;
        active.write_batch(bytes, restamp, interval)?;
        active.first_append_ms.get_or_insert_with(now_ms);
        active.prefault_ahead(active.len, step);
        Ok(AppendInfo {
            base_offset,
            next_offset: active.next_offset,
        })
    }

    /// Guarantees that appends totalling `bytes` (count every entry of the round, control ones
    /// included) need no allocation that could fail: allocates the blocks they will use in the
    /// active segment (whole allocation steps), makes the standby segment when the active
    /// one lacks room, and has the pages the appends will touch faulted in ahead of them.
    /// `DiskFull` when the blocks cannot be allocated.
    pub fn reserve(&mut self, bytes: u64) -> Result<(), LogError> {
        let need = bytes.saturating_add(self.control_reserve()).min(SEGMENT_BYTES_LIMIT);
        let step = self.allocation_step();
        let active = self.active_mut();
        let (tail, room) = (active.len, active.capacity() - active.len);
        // The appends that still fit in the active segment end by `tail + need` at the latest.
        active.allocate_to(tail.saturating_add(need), step)?;
        active.prefault_ahead(tail.saturating_add(bytes), step);
        if room >= need {
            self.reserved_bytes = bytes;
            return Ok(());
        }
        self.ensure_standby(need)?;
        self.reserved_bytes = bytes;
        let standby = self.standby.as_mut().expect("standby just ensured");
        if standby.prefault_until == 0 {
            let end = need.min(standby.allocated).min(PREFAULT_WINDOW_MAX_BYTES);
            if prefault_async(&standby.map, 0, end) {
                standby.prefault_until = end;
            }
        }
        Ok(())
    }

    /// The standby, made (or replaced by a bigger one) so that it holds at least `need` bytes,
    /// and its first `need` bytes allocated (whole steps).
    fn ensure_standby(&mut self, need: u64) -> Result<&Standby, LogError> {
        if self.standby.as_ref().is_some_and(|standby| standby.capacity() < need) {
            self.standby = None;
        }
        let step = self.allocation_step();
        match self.standby.as_mut() {
            Some(standby) => {
                let path = self.dir.join(STANDBY_NAME);
                let capacity = standby.capacity();
                allocate_prefix(&standby.file, &path, &mut standby.allocated, need, step, capacity)?;
            }
            None => {
                let capacity = self.segment_bytes_max().max(need).min(SEGMENT_BYTES_LIMIT);
                self.standby = Some(self.allocate_standby(capacity, need, step)?);
            }
        }
        Ok(self.standby.as_ref().expect("standby just ensured"))
    }

    /// A new standby file of `capacity` bytes (a hole) with `[0, need)` allocated in whole steps.
    fn allocate_standby(&self, capacity: u64, need: u64, step: u64) -> Result<Standby, LogError> {
        let path = self.dir.join(STANDBY_NAME);
        let file = create_segment_file(&path)?;
        let mut allocated = 0;
        let mapped = set_length(&file, &path, capacity)
            .and_then(|()| allocate_prefix(&file, &path, &mut allocated, need.max(1), step, capacity))
            .and_then(|()| Mapping::read_write(&file, capacity).map_err(io_error(&path)));
        match mapped {
            Ok(map) => Ok(Standby {
                file,
                map: Arc::new(map),
                allocated,
                prefault_until: 0,
            }),
            Err(error) => {
                let _ = fs::remove_file(&path);
                Err(error)
            }
        }
    }

    /// Seals the active segment and starts a new one (from the standby, or allocated now) of at
    /// least `need` bytes. On error nothing changed.
    fn roll(&mut self, need: u64) -> Result<(), LogError> {
        self.ensure_standby(need)?;
        let standby = self.standby.take().expect("standby just ensured");
        let (base_index, base_offset) = (self.last_index().next(), self.next_offset());
        let path = segment_path(&self.dir, base_index);
        let from = self.dir.join(STANDBY_NAME);
        if let Err(error) = fs::rename(&from, &path) {
            self.standby = Some(standby);
            return Err(io_error(&path)(error));
        }
        sync_dir(&self.dir)?;
        let uid = self.take_uid();
        let dir = self.dir.clone();
        let active = self.active_mut();
        if active.is_empty() {
            // Same base index, so the rename replaced its file: forget it.
            self.segments.pop();
        } else {
            active.seal(&dir);
        }
        let mut segment = Segment::new(path, standby.file, standby.map, base_index, base_offset, uid);
        segment.allocated = standby.allocated;
        segment.prefault_until = standby.prefault_until;
        self.segments.push(segment);
        Ok(())
    }

    /// Rolls the active segment if its first entry is older than `segment_age_ms_max`.
    pub fn maybe_roll(&mut self, now_ms: i64) -> Result<bool, LogError> {
        let age_max = i64::try_from(self.config.segment_age_ms_max).unwrap_or(i64::MAX);
        let old = self
            .active()
            .first_append_ms
            .is_some_and(|first| now_ms.saturating_sub(first) >= age_max);
        if !old {
            return Ok(false);
        }
        self.roll(self.reserved_bytes.saturating_add(self.control_reserve()))?;
        Ok(true)
    }

    /// Removes the entries from `index` on (`index > log_start.index`) and zeroes their bytes.
    pub fn truncate_from(&mut self, index: RaftIndex) -> Result<(), LogError> {
        if index <= self.log_start.index {
            return Err(LogError::Unavailable {
                index,
                first: self.first_index(),
            });
        }
        if index > self.last_index() {
            return Ok(());
        }
        let at = self
            .segment_for_index(index)
            .ok_or_else(|| LogError::corrupt(&self.dir, 0, format!("no segment holds entry {index}")))?;
        let position = self.segments[at].find_index(index)?;
        if at + 1 < self.segments.len() {
            self.drop_segments_after(at)?;
        }
        self.active_mut().truncate_at(position, index)?;
        let uid = self.take_uid();
        self.active_mut().uid = uid;
        let frontier = self.durable_frontier();
        if frontier < self.checkpoint {
            self.write_checkpoint(frontier)?;
        }
        Ok(())
    }

    /// Makes segment `at` (sealed) the active one and removes every segment after it. The old
    /// active segment becomes the standby when there is none, so that the room `reserve`
    /// promised is still there without a new allocation.
    fn drop_segments_after(&mut self, at: usize) -> Result<(), LogError> {
        let target = &self.segments[at];
        let length = target.file.metadata().map_err(io_error(&target.path))?.len();
        let map = Mapping::read_write(&target.file, length).map_err(io_error(&target.path))?;
        let mut removed = self.segments.split_off(at + 1);
        let old_active = removed.pop().expect("at is not the last segment");
        for segment in &removed {
            segment.delete_files(&self.dir)?;
        }
        if self.standby.is_none() && old_active.writable {
            self.standby = Some(self.recycle(old_active)?);
        } else {
            old_active.delete_files(&self.dir)?;
        }
        sync_dir(&self.dir)?;
        let uid = self.take_uid();
        let dir = self.dir.clone();
        self.segments[at].reactivate(&dir, map, uid)
    }

    /// Turns a removed active segment into the standby: zeroes its data durably (stale batches
    /// must never reappear) and renames it.
    fn recycle(&self, segment: Segment) -> Result<Standby, LogError> {
        // SAFETY: the log is held mutably; the segment is out of the log, only views of its
        // removed (uncommitted) entries may remain, see `Mapping`.
        unsafe { segment.map.zero(0, segment.len) };
        segment
            .map
            .flush_range(0, segment.len)
            .map_err(io_error(&segment.path))?;
        let to = self.dir.join(STANDBY_NAME);
        fs::rename(&segment.path, &to).map_err(io_error(&to))?;
        super::fsutil::remove_if_exists(&index_path(&self.dir, segment.base_index))?;
        super::fsutil::remove_if_exists(&time_index_path(&self.dir, segment.base_index))?;
        Ok(Standby {
            file: segment.file,
            map: segment.map,
            allocated: segment.allocated,
            prefault_until: 0,
        })
    }

    /// Deletes every segment: the log is empty and continues after `start` (snapshot install).
    pub fn reset(&mut self, start: LogStart) -> Result<(), LogError> {
        LogStartRecord {
            start,
            reset_pending: true,
        }
        .write(&self.dir)?;
        let mut old = std::mem::take(&mut self.segments);
        let old_active = old.pop().expect("a log always has an active segment");
        for segment in &old {
            segment.delete_files(&self.dir)?;
        }
        let standby = match self.standby.take() {
            Some(standby) => {
                old_active.delete_files(&self.dir)?;
                standby
            }
            None => self.recycle(old_active)?,
        };
        let base_index = start.index.next();
        let path = segment_path(&self.dir, base_index);
        fs::rename(self.dir.join(STANDBY_NAME), &path).map_err(io_error(&path))?;
        sync_dir(&self.dir)?;
        let uid = self.take_uid();
        let mut segment = Segment::new(path, standby.file, standby.map, base_index, start.offset, uid);
        segment.allocated = standby.allocated;
        self.segments = vec![segment];
        self.log_start = start;
        LogStartRecord {
            start,
            reset_pending: false,
        }
        .write(&self.dir)?;
        self.write_checkpoint(Checkpoint {
            base_index,
            position: 0,
        })
    }
}
