//! The storage layer's error type.

use std::path::{Path, PathBuf};

use weir_proto::batch::BatchError;

use crate::types::RaftIndex;

/// Every way a [`super::PartitionLog`] operation can fail. Operating errors (disk, corrupt files)
/// and caller errors (ranges, contiguity) are told apart so that the raft and server layers can
/// map them to the right reaction: `Corrupt` stops the replica, `DiskFull` rejects produce
/// requests, `Unavailable` means "send a snapshot", `OutOfRange` is the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// ENOSPC, EDQUOT or EFBIG while allocating blocks of a segment. Nothing was written.
    #[error("disk full: cannot allocate {needed} bytes for {}", path.display())]
    DiskFull { path: PathBuf, needed: u64 },

    /// Stored bytes failed their CRC or framing check. Never truncated away, never served.
    #[error("corrupt log data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    /// The entry lies at or below the log start: deleted by retention or replaced by a snapshot.
    #[error("entry {index} is no longer stored (the first stored entry is {first})")]
    Unavailable { index: RaftIndex, first: RaftIndex },

    /// A Raft index or a record offset outside what is stored. For indexes, `first` and `last`
    /// are the log start index and the last index; for offsets, the start offset and the next
    /// offset (the log end, where a reader may wait for new records).
    #[error("{requested} is outside the stored range [{first}, {last}]")]
    OutOfRange { requested: u64, first: u64, last: u64 },

    /// An append whose index is not `last_index + 1`.
    #[error("append of entry {got} does not follow the log (expected entry {expected})")]
    NonContiguous { expected: RaftIndex, got: RaftIndex },

    /// The bytes given to `append` are not a records batch of an acceptable size.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
}

impl LogError {
    /// Whether this error means the stored data cannot be trusted (the replica must stop).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }

    /// Whether this error means the disk has no room for a new segment.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::DiskFull { .. })
    }

    /// A full disk or quota, whether met while allocating a segment or writing a small file.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::DiskFull { .. } => true,
            Self::Io { source, .. } => matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
            _ => false,
        }
    }

    pub(super) fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            position,
            reason: reason.into(),
        }
    }
}

/// Wraps an `io::Error` with the path it happened on: `.map_err(io_error(&path))`.
pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}
