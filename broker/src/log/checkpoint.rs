//! The small state files of a partition directory: `checkpoint`, `log_start` and
//! `clean_shutdown`. Each is written whole to `{name}.tmp`, fsynced, renamed over the old one and
//! the directory fsynced, so a reader sees the old or the new version, never a mix; a CRC
//! catches anything else. Layout (little-endian):
//!
//! ```text
//! 0  4  magic    b"WCKP" checkpoint, b"WLST" log_start, b"WCLN" clean_shutdown
//! 4  1  version  1
//! 5  3  zero
//! 8  8n fields   n u64 fields, per file (see the types below)
//! .  4  crc      CRC-32 (IEEE) of every byte before it
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use super::error::{io_error, LogError};
use super::fsutil::{remove_if_exists, sync_dir, TMP_SUFFIX};
use super::LogStart;
use crate::types::{Offset, RaftIndex, Term};

pub(super) const CHECKPOINT_FILE: &str = "checkpoint";
pub(super) const LOG_START_FILE: &str = "log_start";
pub(super) const CLEAN_FILE: &str = "clean_shutdown";

const VERSION: u8 = 1;
/// Indexes and offsets above this are not real (2^62: centuries of appends); rejecting them keeps
/// all position arithmetic far from overflow.
const POSITION_LIMIT: u64 = 1 << 62;
const PREFIX_LEN: usize = 8;
/// State files are tiny; anything longer is not one of ours.
const READ_LIMIT: u64 = 1024;

fn encode(magic: [u8; 4], fields: &[u64]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(PREFIX_LEN + 8 * fields.len() + 4);
    buf.extend_from_slice(&magic);
    buf.extend_from_slice(&[VERSION, 0, 0, 0]);
    for field in fields {
        buf.extend_from_slice(&field.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes a state file holding `N` fields; the error says why the bytes are not valid.
fn decode<const N: usize>(buf: &[u8], magic: [u8; 4]) -> Result<[u64; N], &'static str> {
    if buf.len() != PREFIX_LEN + 8 * N + 4 {
        return Err("wrong length");
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("CRC mismatch");
    }
    if body[..4] != magic {
        return Err("wrong magic");
    }
    if body[4] != VERSION {
        return Err("unsupported version");
    }
    let mut fields = [0u64; N];
    for (field, raw) in fields.iter_mut().zip(body[PREFIX_LEN..].chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(raw);
        *field = u64::from_le_bytes(bytes);
    }
    Ok(fields)
}

/// Replaces `dir/name` atomically and durably with `bytes`: a crash leaves the old or the new
/// contents, never a mix (write to `name.tmp`, fsync, rename, fsync the directory).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// The contents of `dir/name`, or `None` when there is no such file.
fn read_raw(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, LogError> {
    let path = dir.join(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(&path)(error)),
    };
    let mut buf = Vec::new();
    file.take(READ_LIMIT).read_to_end(&mut buf).map_err(io_error(&path))?;
    Ok(Some(buf))
}

/// How far the log is known to be durable: every segment with a base index below `base_index`
/// entirely, and the segment `base_index` up to byte `position`. Recovery hops over that part
/// without checking CRCs and validates everything after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Checkpoint {
    pub(super) base_index: RaftIndex,
    pub(super) position: u64,
}

impl Checkpoint {
    const MAGIC: [u8; 4] = *b"WCKP";

    /// The checkpoint, or `None` when it is missing or unreadable (recovery then validates all).
    pub(super) fn read(dir: &Path) -> Result<Option<Self>, LogError> {
        let Some(raw) = read_raw(dir, CHECKPOINT_FILE)? else {
            return Ok(None);
        };
        match decode::<2>(&raw, Self::MAGIC) {
            Ok([base_index, position]) => Ok(Some(Self {
                base_index: RaftIndex(base_index),
                position,
            })),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), reason, "ignoring invalid checkpoint file");
                Ok(None)
            }
        }
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), LogError> {
        let bytes = encode(Self::MAGIC, &[self.base_index.0, self.position]);
        write_atomic(dir, CHECKPOINT_FILE, &bytes)
    }
}

/// The persisted log start. `reset_pending` is set while [`super::PartitionLog::reset`] deletes
/// segments: if the process dies half-way, open finishes the job instead of mixing old segments
/// with the new start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct LogStartRecord {
    pub(super) start: LogStart,
    pub(super) reset_pending: bool,
}

impl LogStartRecord {
    const MAGIC: [u8; 4] = *b"WLST";

    /// The record, `None` when missing. Unreadable is corruption: without it the log's first
    /// term and offset are unknown.
    pub(super) fn read(dir: &Path) -> Result<Option<Self>, LogError> {
        let Some(raw) = read_raw(dir, LOG_START_FILE)? else {
            return Ok(None);
        };
        let path = dir.join(LOG_START_FILE);
        let [index, term, offset, flags] =
            decode::<4>(&raw, Self::MAGIC).map_err(|reason| LogError::corrupt(&path, 0, reason))?;
        if index > POSITION_LIMIT || offset > POSITION_LIMIT {
            return Err(LogError::corrupt(&path, 8, "log start beyond any real log"));
        }
        Ok(Some(Self {
            start: LogStart {
                index: RaftIndex(index),
                term: Term(term),
                offset: Offset(offset),
            },
            reset_pending: flags & 1 != 0,
        }))
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), LogError> {
        let start = self.start;
        let fields = [
            start.index.0,
            start.term.0,
            start.offset.0,
            u64::from(self.reset_pending),
        ];
        write_atomic(dir, LOG_START_FILE, &encode(Self::MAGIC, &fields))
    }
}

/// Written by `close` after everything else is durable; describes the active segment so that a
/// marker that does not match the files is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CleanMarker {
    pub(super) active_base: RaftIndex,
    pub(super) active_bytes: u64,
    pub(super) last_index: RaftIndex,
    pub(super) next_offset: Offset,
}

impl CleanMarker {
    const MAGIC: [u8; 4] = *b"WCLN";

    /// The marker, `None` when missing or invalid (then the shutdown was not clean).
    pub(super) fn read(dir: &Path) -> Result<Option<Self>, LogError> {
        let Some(raw) = read_raw(dir, CLEAN_FILE)? else {
            return Ok(None);
        };
        match decode::<4>(&raw, Self::MAGIC) {
            Ok([active_base, active_bytes, last_index, next_offset]) => Ok(Some(Self {
                active_base: RaftIndex(active_base),
                active_bytes,
                last_index: RaftIndex(last_index),
                next_offset: Offset(next_offset),
            })),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), reason, "ignoring invalid clean-shutdown marker");
                Ok(None)
            }
        }
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), LogError> {
        let fields = [
            self.active_base.0,
            self.active_bytes,
            self.last_index.0,
            self.next_offset.0,
        ];
        write_atomic(dir, CLEAN_FILE, &encode(Self::MAGIC, &fields))
    }

    /// Deletes the marker durably, so that a crash after this point is not taken for a clean stop.
    pub(super) fn remove(dir: &Path) -> Result<(), LogError> {
        remove_if_exists(&dir.join(CLEAN_FILE))?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint {
            base_index: RaftIndex(7),
            position: 4096,
        };
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
        checkpoint.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), Some(checkpoint));

        let record = LogStartRecord {
            start: LogStart {
                index: RaftIndex(10),
                term: Term(3),
                offset: Offset(99),
            },
            reset_pending: true,
        };
        record.write(dir.path()).unwrap();
        assert_eq!(LogStartRecord::read(dir.path()).unwrap(), Some(record));

        let path = dir.path().join(LOG_START_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            LogStartRecord::read(dir.path()),
            Err(LogError::Corrupt { .. })
        ));

        fs::write(dir.path().join(CHECKPOINT_FILE), b"short").unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
    }
}
