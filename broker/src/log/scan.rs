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
/// a batch that is invalid or does not continue the log (or at the end of the data regions of a
/// longer file, which reads as zeros).
pub(super) struct Stop {
    pub(super) position: u64,
    pub(super) reason: Option<String>,
    /// End of the last region that may hold data (SEEK_DATA): everything after it is a hole.
    /// Nothing at or after it was read.
    pub(super) data_end: u64,
}

/// Walks the batches of `segment` from its current end to the end of its file: header hop only
/// before `crc_from`, full checks (framing and CRC) from there on, continuity always. Each good
/// batch is added to the segment and advances `cursor`.
///
/// Bytes past the first hole are not read: a hole (zeros) is the unallocated part of an active
/// segment, and reading a hole through a shared mapping makes tmpfs allocate a page, which on a
/// full tmpfs is SIGBUS. A batch that reaches into the hole is torn.
pub(super) fn walk(segment: &mut Segment, crc_from: u64, cursor: &mut Cursor, interval_bytes: u32) -> Stop {
    let map = Arc::clone(&segment.map);
    let file_len = map.len();
    let data_end = data_end(&segment.file, segment.len, file_len);
    let data = map.bytes(0, data_end);
    let mut position = segment.len;
    while position < data_end {
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
                    data_end,
                }
            }
        };
        if let Some(reason) = cursor.rejects(&header) {
            return Stop {
                position,
                reason: Some(reason),
                data_end,
            };
        }
        segment.push_batch(position, &header, interval_bytes);
        cursor.advance(&header);
        position += u64::from(header.length);
    }
    let reason = (position < file_len).then(|| "zeros (a hole) after the data".to_string());
    Stop {
        position,
        reason,
        data_end,
    }
}

/// End of the data that follows `from` without a hole (`from` when a hole starts there): a walk
/// reads no further. The allocated prefix of a segment has no holes, so this is where written
/// data ends; a hole inside it (a damaged file) ends the walk like a torn tail would.
pub(super) fn data_end(file: &File, from: u64, to: u64) -> u64 {
    match data_regions(file, from, to).first() {
        Some(&(start, stop)) if start <= from => stop,
        _ => from,
    }
}

/// End of the last non-zero byte in `[from, map.len())`, or `from` when all are zero. See
/// [`nonzero_end_within`].
pub(super) fn nonzero_end(file: &File, map: &Mapping, from: u64) -> u64 {
    nonzero_end_within(file, map, from, map.len())
}

/// End of the last non-zero byte in `[from, to)`, or `from` when all are zero.
///
/// Reads only the regions where the file system says data may lie (SEEK_DATA/SEEK_HOLE): the
/// unallocated (or allocated but unwritten) part of an active segment is a hole and reads as zeros. All regions are listed
/// before any byte is read, because reading adds pages to the page cache (a fault on the mapping
/// reads ahead by up to `read_ahead_kb`, 8 MiB on some disks), and on ext4 a cached page of an
/// unwritten extent counts as data: asked region by region, each read made the next region, and
/// the check crept through the whole allocated file.
pub(super) fn nonzero_end_within(file: &File, map: &Mapping, from: u64, to: u64) -> u64 {
    let to = to.min(map.len());
    data_regions(file, from, to)
        .iter()
        .rev()
        .find_map(|&(start, stop)| last_nonzero(map.bytes(start, stop)).map(|at| start + at as u64 + 1))
        .unwrap_or(from)
}

/// The regions `[start, stop)` of `[from, to)` that may hold data, in order. Everything when the
/// file system cannot say.
fn data_regions(file: &File, from: u64, to: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> Result<Option<u64>, ()> {
        let signed = libc::off_t::try_from(offset).map_err(|_| ())?;
        // SAFETY: a plain system call on a descriptor we own. It moves the file offset, which
        // nothing uses: segment files are accessed through mappings.
        let found = unsafe { libc::lseek(fd, signed, whence) };
        if found >= 0 {
            return Ok(Some(found as u64));
        }
        // ENXIO: no data at or after `offset`.
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(()),
        }
    };
    let mut regions = Vec::new();
    let mut offset = from;
    while offset < to {
        let start = match seek(offset, libc::SEEK_DATA) {
            Ok(Some(start)) => start,
            Ok(None) => break,
            Err(()) => {
                regions.push((offset, to));
                break;
            }
        };
        if start >= to {
            break;
        }
        let stop = match seek(start, libc::SEEK_HOLE) {
            Ok(Some(stop)) => stop.clamp(start + 1, to),
            Ok(None) | Err(()) => to,
        };
        regions.push((start, stop));
        offset = stop;
    }
    regions
}

/// Position of the last non-zero byte of `bytes`. Whole blocks are compared with a block of
/// zeros, which is a `memcmp` (vectorised by libc, so as fast in an unoptimised build, where a
/// byte loop manages about 0.5 GB/s); single bytes are looked at only in the last non-zero block.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &bytes[start..end];
        if block != &ZEROS[..block.len()] {
            return block.iter().rposition(|&byte| byte != 0).map(|at| start + at);
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
        // At the edges of the 4 KiB blocks (counted from the end).
        bytes[4_100] = 0;
        for at in [10_000 - 4096 - 1, 10_000 - 4096, 1, 9_998] {
            bytes[at] = 1;
            assert_eq!(last_nonzero(&bytes), Some(at));
            assert_eq!(last_nonzero(&bytes[..at]), Some(0));
            bytes[at] = 0;
        }
    }
}
