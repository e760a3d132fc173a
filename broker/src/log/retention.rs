//! Retention and compaction: deleting whole sealed segments by age, by total size, or up to an
//! index a state snapshot covers.

use super::checkpoint::LogStartRecord;
use super::error::LogError;
use super::fsutil::sync_dir;
use super::{LogStart, PartitionLog};
use crate::types::RaftIndex;

impl PartitionLog {
    /// Deletes the oldest sealed segments whose entries are all `<= committed`, while the
    /// segment's newest record is older than `retention_ms` (a segment without records counts as
    /// expired) or while the log is larger than `retention_bytes`. Never the active segment.
    /// Moves the log start to the last entry deleted. Returns how many segments went.
    pub fn apply_retention(&mut self, now_ms: i64, committed: RaftIndex) -> Result<usize, LogError> {
        let retention_ms = self.config.retention_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let mut size = self.size_bytes();
        let mut count = 0;
        for segment in &self.segments[..self.segments.len() - 1] {
            if segment.writable || segment.last_index > committed {
                break;
            }
            let expired = retention_ms.is_some_and(|ms| now_ms.saturating_sub(segment.index.max_timestamp_ms) > ms);
            let oversize = self.config.retention_bytes.is_some_and(|bytes| size > bytes);
            if !expired && !oversize {
                break;
            }
            size -= segment.len;
            count += 1;
        }
        self.delete_first_segments(count)
    }

    /// Deletes the oldest sealed segments whose entries are all `<= index` (the caller vouches
    /// that they are committed and no longer needed, e.g. covered by a state snapshot). Never the
    /// active segment. Moves the log start to the last entry deleted. Returns how many segments
    /// went.
    pub fn delete_segments_through(&mut self, index: RaftIndex) -> Result<usize, LogError> {
        let count = self.segments[..self.segments.len() - 1]
            .iter()
            .take_while(|segment| !segment.writable && segment.last_index <= index)
            .count();
        self.delete_first_segments(count)
    }

    /// Deletes the first `count` segments (sealed ones) and moves the log start past them.
    fn delete_first_segments(&mut self, count: usize) -> Result<usize, LogError> {
        if count == 0 {
            return Ok(0);
        }
        let last = &self.segments[count - 1];
        let start = LogStart {
            index: last.last_index,
            term: last.last_term,
            offset: last.next_offset,
        };
        // The new start is durable before any file goes: after a crash, open deletes the
        // segments left below it.
        LogStartRecord {
            start,
            reset_pending: false,
        }
        .write(&self.dir)?;
        self.log_start = start;
        for segment in self.segments.drain(..count) {
            segment.delete_files(&self.dir)?;
        }
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), count, start = %start.index, "deleted segments");
        Ok(count)
    }
}
