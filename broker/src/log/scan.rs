//! Scanning segment files during recovery: walking batches with continuity checks, finding
//! non-zero bytes after the data, and telling a torn tail from corruption.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use weir_proto::batch::{self, BatchHeader, BatchKind, HEADER_LEN, RECORD_OVERHEAD};

use super::mapping::Mapping;
use super::segment::Segment;
use super::LogStart;

/// What the next batch must look like to continue the log.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursor {
    pub(super) next_index: u64,
    pub(super) next_offset: u64,
    pub(super) last_term: u64,
}

impl Cursor {
    pub(super) fn at_start(start: LogStart) -> Self {
        Self {
            next_index: start.index.0.saturating_add(1),
            next_offset: start.offset.0,
            last_term: start.term.0,
        }
    }

    /// Why `header` cannot be the next batch, if it cannot.
    fn rejects(&self, header: &BatchHeader) -> Option<String> {
        let body = (header.length as usize).saturating_sub(HEADER_LEN);
        let records_fit = match header.kind {
            BatchKind::Records => (header.record_count as usize).saturating_mul(RECORD_OVERHEAD) <= body,
            _ => header.record_count == 0,
        };
        let reason = if header.index != self.next_index {
            format!("entry {} where entry {} was expected", header.index, self.next_index)
        } else if header.term < self.last_term {
            format!("term {} after term {}", header.term, self.last_term)
        } else if header.base_offset != self.next_offset {
            format!(
                "base offset {} where {} was expected",
                header.base_offset, self.next_offset
            )
        } else if !records_fit || header.base_offset.checked_add(u64::from(header.record_count)).is_none() {
            format!("implausible record count {}", header.record_count)
        } else {
            return None;
        };
        Some(reason)
    }

    pub(super) fn advance(&mut self, header: &BatchHeader) {
        self.next_index = header.index.saturating_add(1);
        self.next_offset = header.base_offset.saturating_add(u64::from(header.record_count));
        self.last_term = header.term;
    }
}

/// Where a walk stopped: at `position`, either at the end of the file (`reason` None) or before
/// a batch that is invalid or does not continue the log.
pub(super) struct Stop {
    pub(super) position: u64,
    pub(super) reason: Option<String>,
}

/// Walks the batches of `segment` from its current end to the end of its file: header hop only
/// before `crc_from`, full checks (framing and CRC) from there on, continuity always. Each good
/// batch is added to the segment and advances `cursor`.
pub(super) fn walk(segment: &mut Segment, crc_from: u64, cursor: &mut Cursor, interval_bytes: u32) -> Stop {
    let map = Arc::clone(&segment.map);
    let file_len = map.len();
    let data = map.bytes(0, file_len);
    let mut position = segment.len;
    while position < file_len {
        let rest = &data[position as usize..];
        let parsed = if position >= crc_from {
            batch::check(rest)
        } else {
            batch::parse_header(rest)
        };
        let header = match parsed {
            Ok(header) => header,
            Err(error) => {
                return Stop {
                    position,
                    reason: Some(error.to_string()),
                }
            }
        };
        if let Some(reason) = cursor.rejects(&header) {
            return Stop {
                position,
                reason: Some(reason),
            };
        }
        segment.push_batch(position, &header, interval_bytes);
        cursor.advance(&header);
        position += u64::from(header.length);
    }
    Stop { position, reason: None }
}

/// End of the last non-zero byte in `[from, map.len())`, or `from` when all are zero. Asks the
/// file system where data lies (SEEK_DATA/SEEK_HOLE) so that the unwritten, preallocated part of
/// an active segment is not read page by page.
pub(super) fn nonzero_end(file: &File, map: &Mapping, from: u64) -> u64 {
    nonzero_end_within(file, map, from, map.len())
}

/// Like [`nonzero_end`], looking only at `[from, to)`.
pub(super) fn nonzero_end_within(file: &File, map: &Mapping, from: u64, to: u64) -> u64 {
    let to = to.min(map.len());
    let mut end = from;
    let mut offset = from;
    while offset < to {
        let (start, stop) = match data_region(file, offset) {
            Some((start, stop)) => (start, stop.min(to)),
            None => break,
        };
        if start >= to {
            break;
        }
        if let Some(last) = last_nonzero(map.bytes(start, stop)) {
            end = start + last as u64 + 1;
        }
        offset = stop.max(start + 1);
    }
    end
}

/// The next region `[start, stop)` at or after `offset` that may hold data; `None` if none.
/// Falls back to "everything" when the file system cannot say.
fn data_region(file: &File, offset: u64) -> Option<(u64, u64)> {
    let fd = file.as_raw_fd();
    let Ok(signed) = libc::off_t::try_from(offset) else {
        return None;
    };
    // SAFETY: plain system calls on a descriptor we own.
    let start = unsafe { libc::lseek(fd, signed, libc::SEEK_DATA) };
    if start < 0 {
        let error = std::io::Error::last_os_error();
        return (error.raw_os_error() != Some(libc::ENXIO)).then_some((offset, u64::MAX));
    }
    // SAFETY: as above.
    let stop = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    let stop = if stop < 0 { u64::MAX } else { stop as u64 };
    Some((start as u64, stop))
}

/// Position of the last non-zero byte of `bytes`.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 4096;
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &bytes[start..end];
        // An OR-fold vectorises; `any` would not.
        if chunk.iter().fold(0u8, |acc, &byte| acc | byte) != 0 {
            return chunk.iter().rposition(|&byte| byte != 0).map(|at| start + at);
        }
        end = start;
    }
    None
}

/// The torn-tail-or-corruption decision for an invalid batch at `position` (whose expected index
/// is `expected_index`): corruption in the middle if its length is plausible and a valid batch
/// with the following index comes right after it (in this file, or first in the next segment's
/// file when it ends exactly at the end of this one).
pub(super) fn valid_batch_follows(
    data: &[u8],
    position: u64,
    expected_index: u64,
    next_segment: Option<&Path>,
) -> bool {
    let rest = &data[position as usize..];
    let Ok(length) = batch::peek_length(rest) else {
        return false;
    };
    if length < HEADER_LEN || length > rest.len() {
        return false;
    }
    let wanted = expected_index.saturating_add(1);
    if length < rest.len() {
        return batch::check(&rest[length..]).is_ok_and(|header| header.index == wanted);
    }
    next_segment.is_some_and(|path| first_batch_index(path) == Some(wanted))
}

/// Index of the first batch of the segment file at `path`, if that batch is valid.
fn first_batch_index(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let map = Mapping::read_only(&file, len).ok()?;
    batch::check(map.bytes(0, len)).ok().map(|header| header.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_nonzero_finds_the_last_byte() {
        let mut bytes = vec![0u8; 10_000];
        assert_eq!(last_nonzero(&bytes), None);
        bytes[0] = 1;
        assert_eq!(last_nonzero(&bytes), Some(0));
        bytes[9_999] = 1;
        assert_eq!(last_nonzero(&bytes), Some(9_999));
        bytes[9_999] = 0;
        bytes[4_100] = 7;
        assert_eq!(last_nonzero(&bytes), Some(4_100));
    }
}
