//! File-system helpers: file names, block allocation, directory sync, removal.

use std::fs::{self, File};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{io_error, LogError};
use crate::types::RaftIndex;

pub(super) const SEGMENT_SUFFIX: &str = ".log";
pub(super) const INDEX_SUFFIX: &str = ".index";
pub(super) const TIME_INDEX_SUFFIX: &str = ".timeindex";
pub(super) const TMP_SUFFIX: &str = ".tmp";
/// The next segment, made ahead of a roll, renamed to `{base_index:020}.log` when the log rolls onto it.
pub(super) const STANDBY_NAME: &str = "standby.log.tmp";

/// Digits of a segment file name: enough for any u64.
const NAME_DIGITS: usize = 20;

pub(super) fn segment_path(dir: &Path, base: RaftIndex) -> PathBuf {
    dir.join(format!("{:020}{SEGMENT_SUFFIX}", base.0))
}

pub(super) fn index_path(dir: &Path, base: RaftIndex) -> PathBuf {
    dir.join(format!("{:020}{INDEX_SUFFIX}", base.0))
}

pub(super) fn time_index_path(dir: &Path, base: RaftIndex) -> PathBuf {
    dir.join(format!("{:020}{TIME_INDEX_SUFFIX}", base.0))
}

/// What a file found in a partition directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Segment(RaftIndex),
    Index(RaftIndex),
    TimeIndex(RaftIndex),
    /// A `*.tmp` file: a standby segment or a half-written state file. Deleted at open.
    Temporary,
    /// Anything else (state files, files of other tools): left alone.
    Other,
}

pub(super) fn classify(name: &str) -> FileKind {
    if name.ends_with(TMP_SUFFIX) {
        return FileKind::Temporary;
    }
    let base = |suffix: &str| {
        let stem = name.strip_suffix(suffix)?;
        if stem.len() != NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        stem.parse::<u64>().ok().map(RaftIndex)
    };
    if let Some(index) = base(SEGMENT_SUFFIX) {
        FileKind::Segment(index)
    } else if let Some(index) = base(INDEX_SUFFIX) {
        FileKind::Index(index)
    } else if let Some(index) = base(TIME_INDEX_SUFFIX) {
        FileKind::TimeIndex(index)
    } else {
        FileKind::Other
    }
}

/// Creates (or empties) a file for a new segment, open for reading and writing.
pub(super) fn create_segment_file(path: &Path) -> Result<File, LogError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(path))
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir))
}

/// Allocates disk blocks for `[start, end)` of `file` (growing it if shorter), so that writes
/// through a mapping of that range never need the file system to find space: a full disk shows
/// up here as [`LogError::DiskFull`] instead of as SIGBUS later. Blocks already allocated are
/// kept (cheap, and it needs no free space).
pub(super) fn allocate(file: &File, path: &Path, start: u64, end: u64) -> Result<(), LogError> {
    let disk_full = || LogError::DiskFull {
        path: path.to_path_buf(),
        needed: end.saturating_sub(start),
    };
    if end <= start {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(end - start)) else {
        return Err(disk_full());
    };
    // SAFETY: plain system call on a file descriptor we own.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    let error = if result == 0 {
        return Ok(());
    } else {
        io::Error::last_os_error()
    };
    let error = match error.raw_os_error() {
        // File systems without fallocate: posix_fallocate writes the blocks instead.
        Some(libc::EOPNOTSUPP) => {
            // SAFETY: as above.
            match unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, len) } {
                0 => return Ok(()),
                code => io::Error::from_raw_os_error(code),
            }
        }
        _ => error,
    };
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Err(disk_full()),
        _ => Err(io_error(path)(error)),
    }
}

/// Extends the allocated prefix `[0, *allocated)` of a segment file of `capacity` bytes so that
/// it covers `[0, end)`: up to the next multiple of `step` (at most `capacity`). On error
/// (`DiskFull` on a full disk) nothing changed.
pub(super) fn allocate_prefix(
    file: &File,
    path: &Path,
    allocated: &mut u64,
    end: u64,
    step: u64,
    capacity: u64,
) -> Result<(), LogError> {
    let end = end.min(capacity);
    if end <= *allocated {
        return Ok(());
    }
    let target = end.div_ceil(step).saturating_mul(step).min(capacity);
    allocate(file, path, *allocated, target)?;
    *allocated = target;
    Ok(())
}

/// Sets the length of a new (or the active) segment file to `len` without allocating blocks:
/// the part past the allocated prefix is a hole, which reads as zeros and costs no disk.
pub(super) fn set_length(file: &File, path: &Path, len: u64) -> Result<(), LogError> {
    file.set_len(len).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => LogError::DiskFull {
            path: path.to_path_buf(),
            needed: len,
        },
        _ => io_error(path)(error),
    })
}

/// Removes a file; a file that is already gone is not an error.
pub(super) fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path)(error)),
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let dir = Path::new("/d");
        let path = segment_path(dir, RaftIndex(42));
        assert_eq!(path, Path::new("/d/00000000000000000042.log"));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(classify(name), FileKind::Segment(RaftIndex(42)));
        assert_eq!(classify("00000000000000000042.index"), FileKind::Index(RaftIndex(42)));
        assert_eq!(
            classify("00000000000000000042.timeindex"),
            FileKind::TimeIndex(RaftIndex(42))
        );
        assert_eq!(classify(STANDBY_NAME), FileKind::Temporary);
        assert_eq!(classify("checkpoint.tmp"), FileKind::Temporary);
        assert_eq!(classify("42.log"), FileKind::Other);
        assert_eq!(classify("99999999999999999999.log"), FileKind::Other); // > u64::MAX
        assert_eq!(classify("0000000000000000004x.log"), FileKind::Other);
        assert_eq!(classify("checkpoint"), FileKind::Other);
    }
}
