//! Verification of stored data after the fact: a scrub that re-checks the CRC of every batch of
//! the sealed segments, a slice at a time, and the mapping from a corrupt byte back to the
//! first entry that can no longer be trusted (where a repair must cut the log).
//!
//! Reads CRC-check every batch anyway, but a follower's data is only read when it leads; the
//! scrub finds a damaged replica before it is needed.

use std::path::Path;

use super::error::LogError;
use super::segment::Segment;
use super::PartitionLog;
use crate::types::RaftIndex;

/// Where a scrub continues: the segment (by base index) and the byte position in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubCursor {
    pub segment_base: RaftIndex,
    pub position: u64,
}

/// Damage found in a log: entries from `from_index` on cannot be trusted.
#[derive(Debug)]
pub struct Corruption {
    pub from_index: RaftIndex,
    pub error: LogError,
}

/// What one scrub step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScrubStep {
    /// Batch bytes checked.
    pub checked_bytes: u64,
    /// The step reached the end of the sealed segments and the cursor went back to the start.
    pub wrapped: bool,
}

impl PartitionLog {
    /// Checks the batches of the sealed segments from `cursor` on, about `budget` bytes (whole
    /// batches; at least one), and moves the cursor; at the end of the sealed segments it starts
    /// over from the first one. Segments deleted meanwhile (retention, truncation) are skipped.
    pub fn scrub(&self, cursor: &mut ScrubCursor, budget: u64) -> Result<ScrubStep, Corruption> {
        let sealed = &self.segments[..self.segments.len() - 1];
        let mut step = ScrubStep::default();
        let mut at = sealed.partition_point(|s| s.base_index < cursor.segment_base);
        if sealed.get(at).is_none_or(|s| s.base_index != cursor.segment_base) {
            cursor.position = 0;
        }
        while step.checked_bytes < budget.max(1) {
            let Some(segment) = sealed.get(at) else {
                *cursor = ScrubCursor {
                    segment_base: sealed.first().map_or(RaftIndex(0), |s| s.base_index),
                    position: 0,
                };
                step.wrapped = true;
                return Ok(step);
            };
            cursor.segment_base = segment.base_index;
            if cursor.position >= segment.len {
                at += 1;
                cursor.position = 0;
                continue;
            }
            let header = segment.checked_at(cursor.position).map_err(|error| Corruption {
                from_index: index_at(segment, cursor.position),
                error,
            })?;
            cursor.position += u64::from(header.length);
            step.checked_bytes += u64::from(header.length);
        }
        Ok(step)
    }

    /// The first entry that cannot be trusted in the segment file `path` (a `Corrupt` error's
    /// path), or `None` if the file is not a segment of this log or every batch in it checks out.
    pub fn first_corrupt_entry(&self, path: &Path) -> Option<Corruption> {
        let segment = self.segments.iter().find(|s| s.path == path)?;
        let mut position = 0;
        while position < segment.len {
            match segment.checked_at(position) {
                Ok(header) => position += u64::from(header.length),
                Err(error) => {
                    return Some(Corruption {
                        from_index: index_at(segment, position),
                        error,
                    })
                }
            }
        }
        None
    }
}

/// The index of the batch at `position` (a batch boundary) of `segment`, found by hopping over
/// the headers before it; when an earlier header is unreadable, that batch's index.
fn index_at(segment: &Segment, position: u64) -> RaftIndex {
    let mut next = segment.base_index;
    let mut at = 0;
    while at < position {
        match segment.header_at(at) {
            Ok(header) if header.length > 0 => {
                next = RaftIndex(header.index + 1);
                at += u64::from(header.length);
            }
            _ => break,
        }
    }
    next
}
