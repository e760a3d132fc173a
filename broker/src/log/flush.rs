//! Durability: flush batches, the checkpoint, and the clean close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::{Checkpoint, CleanMarker};
use super::error::{io_error, LogError};
use super::mapping::Mapping;
use super::PartitionLog;

/// The checkpoint is rewritten at most this often while the durable frontier stays in one segment.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The unflushed byte ranges of a log's mapped files, taken under the log lock and run without
/// it: `let batch = log.read().pending_flush(); batch.run()?; log.write().mark_flushed(&batch)?`.
pub struct FlushBatch {
    ranges: Vec<FlushRange>,
}

struct FlushRange {
    map: Arc<Mapping>,
    /// `Segment::uid` of the segment the range belongs to.
    uid: u64,
    start: u64,
    end: u64,
}

impl FlushBatch {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes the batch will flush.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|range| range.end - range.start).sum()
    }

    /// msyncs each range, oldest segment first. Runs without the log lock. A failure is fatal for
    /// the process: the kernel may have dropped the dirty pages, so nothing can be trusted until
    /// a restart recovers from the files.
    pub fn run(&self) -> std::io::Result<()> {
        for range in &self.ranges {
            range.map.flush_range(range.start, range.end)?;
        }
        Ok(())
    }
}

impl PartitionLog {
    /// The bytes appended since the last flush.
    pub fn pending_flush(&self) -> FlushBatch {
        let start = self.checkpoint_segment();
        let ranges = self.segments[start..]
            .iter()
            .filter(|segment| segment.flushed < segment.len)
            .map(|segment| FlushRange {
                map: Arc::clone(&segment.map),
                uid: segment.uid,
                start: segment.flushed,
                end: segment.len,
            })
            .collect();
        FlushBatch { ranges }
    }

    /// Records that `batch` ran successfully; may rewrite the checkpoint.
    pub fn mark_flushed(&mut self, batch: &FlushBatch) -> Result<(), LogError> {
        for range in &batch.ranges {
            // Ranges of a segment truncated or deleted since the batch was taken are ignored.
            if let Some(segment) = self.segments.iter_mut().rev().find(|segment| segment.uid == range.uid) {
                segment.flushed = segment.flushed.max(range.end.min(segment.len));
            }
        }
        let frontier = self.durable_frontier();
        let moved_segment = frontier.base_index != self.checkpoint.base_index;
        let due = self
            .checkpoint_written_at
            .is_none_or(|at| at.elapsed() >= CHECKPOINT_INTERVAL);
        if frontier != self.checkpoint && (moved_segment || due) {
            if let Err(error) = self.write_checkpoint(frontier) {
                // Moving the checkpoint forward only shortens the next recovery; a full disk
                // must not take the replica out of service for it. Retried after the interval.
                if !error.is_out_of_space() {
                    return Err(error);
                }
                tracing::warn!(dir = %self.dir.display(), %error, "checkpoint not moved forward: disk full");
                self.checkpoint_written_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Index of the segment the checkpoint points into (the last one at or below its base): all
    /// segments before it are flushed in full.
    fn checkpoint_segment(&self) -> usize {
        let base = self.checkpoint.base_index;
        self.segments
            .partition_point(|segment| segment.base_index <= base)
            .saturating_sub(1)
    }

    /// How far the log is durable now: the first segment not flushed in full, and how much of it is.
    pub(super) fn durable_frontier(&self) -> Checkpoint {
        let start = self.checkpoint_segment();
        let unflushed = self.segments[start..]
            .iter()
            .find(|segment| segment.flushed < segment.len);
        let segment = unflushed.unwrap_or_else(|| self.active());
        Checkpoint {
            base_index: segment.base_index,
            position: segment.flushed.min(segment.len),
        }
    }

    pub(super) fn write_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), LogError> {
        checkpoint.write(&self.dir)?;
        self.checkpoint = checkpoint;
        self.checkpoint_written_at = Some(Instant::now());
        Ok(())
    }

    /// Flushes everything, writes the index files and the checkpoint, then the clean-shutdown
    /// marker, so that the next open reads no data. Nothing may be appended afterwards (the
    /// marker would lie); the owner drops the log after closing it.
    pub fn close(&mut self) -> Result<(), LogError> {
        let batch = self.pending_flush();
        batch.run().map_err(io_error(&self.dir))?;
        self.mark_flushed(&batch)?;
        let dir = self.dir.clone();
        for segment in &mut self.segments {
            if !segment.index_synced || segment.writable {
                segment.persist_index(&dir, true)?;
            }
        }
        let frontier = self.durable_frontier();
        self.write_checkpoint(frontier)?;
        let active = self.active();
        let marker = CleanMarker {
            active_base: active.base_index,
            active_bytes: active.len,
            last_index: self.last_index(),
            next_offset: self.next_offset(),
        };
        marker.write(&self.dir)
    }
}
