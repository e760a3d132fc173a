//! State snapshots of groups with an [`Applier`] (the controller): the applier's serialized
//! state after applying every entry up to `index`, kept in the `state-snapshot` file of the
//! group's directory. They let the group's log be compacted, a restart replay only the entries
//! after the snapshot, and a leader catch up a follower whose missing entries it deleted.
//!
//! ```text
//!  0  4  magic b"WSNP"      4  1  version (1)      5  3  zero
//!  8  8  index              16 8  term             24 8  offset (record offset after `index`)
//! 32  8  data length N      40 N  data: the applier's state (the controller: JSON)
//! ..  4  CRC-32 of everything before it
//! ```
//!
//! Written with the log's `write_atomic` (to `state-snapshot.tmp`, fsync, rename, fsync the
//! directory). All integers little-endian.
//!
//! Order of writes, so that a crash at any point leaves something the next open can use:
//! - taking a snapshot (after an apply, when the applier asks for one): the file only. The log
//!   is compacted later, in the group's housekeeping: whole sealed segments at or below the
//!   snapshot's index, and at or below the high watermark's entry (proposals above it may still
//!   wait for their answer), are deleted (see
//!   [`crate::log::PartitionLog::delete_segments_through`]). So the log start is never above the
//!   snapshot's index;
//! - installing a leader's snapshot: the applier takes the state (and checks it), the file is
//!   written, then the log is reset to start at `index`. A crash between the last two leaves a
//!   snapshot beyond (or off) the log; [`restore`] finishes the reset at the next open.
//!
//! A Raft snapshot message carries the log start as 8 bytes (the record offset, little-endian;
//! what partitions send, unchanged). A group with a state appends the whole file encoding after
//! those 8 bytes, so the state crosses the network with its CRC.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft::eraftpb::Snapshot;

use super::Applier;
use crate::log::{LogStart, PartitionLog};
use crate::types::{Offset, RaftIndex, Term};

const MAGIC: &[u8; 4] = b"WSNP";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 40;
pub const FILE_NAME: &str = "state-snapshot";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] crate::log::LogError),
    #[error("state snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state snapshot {path} has format version {version}; this broker reads version {VERSION}")]
    UnknownVersion { path: PathBuf, version: u8 },
    #[error("state snapshot {path} (entry {index}) cannot be restored: {reason}")]
    Restore {
        path: PathBuf,
        index: RaftIndex,
        reason: String,
    },
}

/// An applier's state as of entry `index` (of term `term`), and the record offset after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    pub index: RaftIndex,
    pub term: Term,
    pub offset: Offset,
    pub data: Bytes,
}

/// Why bytes are not a state snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Corrupt(String),
    UnknownVersion(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Corrupt(reason) => f.write_str(reason),
            DecodeError::UnknownVersion(version) => write!(f, "unknown format version {version}"),
        }
    }
}

impl StateSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(HEADER_LEN + self.data.len() + 4);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&[0; 3]);
        for value in [self.index.0, self.term.0, self.offset.0, self.data.len() as u64] {
            buf.extend_from_slice(&value.to_le_bytes());
        }
        buf.extend_from_slice(&self.data);
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let corrupt = |reason: &str| DecodeError::Corrupt(reason.to_string());
        if bytes.len() < HEADER_LEN + 4 {
            return Err(corrupt("too short"));
        }
        if &bytes[..4] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if bytes[4] != VERSION {
            return Err(DecodeError::UnknownVersion(bytes[4]));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("CRC mismatch"));
        }
        let field = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        let length = field(32);
        if length != (body.len() - HEADER_LEN) as u64 {
            return Err(corrupt("data length does not match the file size"));
        }
        Ok(Self {
            index: RaftIndex(field(8)),
            term: Term(field(16)),
            offset: Offset(field(24)),
            data: Bytes::copy_from_slice(&body[HEADER_LEN..]),
        })
    }

    /// The data of a Raft snapshot sent for this state: the offset, then the file encoding.
    pub fn to_raft_data(&self) -> Bytes {
        let mut data = Vec::with_capacity(8 + HEADER_LEN + self.data.len() + 4);
        data.extend_from_slice(&self.offset.0.to_le_bytes());
        data.extend_from_slice(&self.encode());
        data.into()
    }

    /// The state a leader's Raft snapshot carries, checked against the snapshot's position.
    pub fn from_raft(snapshot: &Snapshot) -> Result<Self, String> {
        let metadata = snapshot.get_metadata();
        let encoded = snapshot.data.get(8..).filter(|rest| !rest.is_empty()).ok_or_else(|| {
            format!(
                "the leader's snapshot at entry {} carries no state (a leader of an older version?)",
                metadata.index
            )
        })?;
        let state = Self::decode(encoded).map_err(|error| format!("the leader's state snapshot is bad: {error}"))?;
        if (state.index.0, state.term.0) != (metadata.index, metadata.term) {
            return Err(format!(
                "the leader's state snapshot is of entry {} (term {}), the raft snapshot of entry {} (term {})",
                state.index, state.term, metadata.index, metadata.term
            ));
        }
        Ok(state)
    }
}

/// Reads the snapshot file in `dir`; `Ok(None)` if there is none.
pub fn load(dir: &Path) -> Result<Option<StateSnapshot>, SnapshotError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    StateSnapshot::decode(&bytes).map(Some).map_err(|error| match error {
        DecodeError::Corrupt(reason) => SnapshotError::Corrupt { path, reason },
        DecodeError::UnknownVersion(version) => SnapshotError::UnknownVersion { path, version },
    })
}

/// Durably replaces the snapshot file in `dir`.
pub fn store(dir: &Path, snapshot: &StateSnapshot) -> Result<(), SnapshotError> {
    crate::log::write_atomic(dir, FILE_NAME, &snapshot.encode())?;
    Ok(())
}

/// At open: hands the snapshot in `dir` (if any) to the applier and makes the log continue
/// from it: when the log does not hold the snapshot's entry with its term (an install that
/// crashed before its log reset), the log is reset to start at the snapshot. Returns the
/// snapshot; the group's applied index is its index.
pub fn restore(
    dir: &Path,
    applier: &mut dyn Applier,
    log: &mut PartitionLog,
) -> Result<Option<StateSnapshot>, super::RaftError> {
    let Some(snapshot) = load(dir)? else {
        return Ok(None);
    };
    let path = dir.join(FILE_NAME);
    let start = log.log_start();
    if snapshot.index < start.index {
        return Err(SnapshotError::Corrupt {
            path,
            reason: format!(
                "it is of entry {}, but the log starts after entry {}: the entries between are gone",
                snapshot.index, start.index
            ),
        }
        .into());
    }
    applier
        .restore(snapshot.index, &snapshot.data)
        .map_err(|reason| SnapshotError::Restore {
            path: path.clone(),
            index: snapshot.index,
            reason,
        })?;
    let holds = snapshot.index <= log.last_index() && log.term(snapshot.index).ok() == Some(snapshot.term);
    if !holds {
        tracing::info!(
            dir = %dir.display(),
            index = %snapshot.index,
            last_index = %log.last_index(),
            "the log does not hold the state snapshot's entry: finishing the snapshot install"
        );
        log.reset(LogStart {
            index: snapshot.index,
            term: snapshot.term,
            offset: snapshot.offset,
        })?;
    }
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateSnapshot {
        StateSnapshot {
            index: RaftIndex(1234),
            term: Term(7),
            offset: Offset(999),
            data: Bytes::from_static(b"{\"topics\":{}}"),
        }
    }

    #[test]
    fn round_trip_corruption_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        for at in [0, 9, 20, 30, 41, good.len() - 1] {
            let mut bytes = good.clone();
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let error = load(dir.path()).unwrap_err();
            assert!(matches!(error, SnapshotError::Corrupt { .. }), "byte {at}: {error}");
            assert!(error.to_string().contains("state-snapshot"), "{error}");
        }
        let mut bytes = good.clone();
        bytes[4] = 2;
        std::fs::write(&path, &bytes).unwrap();
        let error = load(dir.path()).unwrap_err();
        assert!(
            matches!(error, SnapshotError::UnknownVersion { version: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("version 2"), "{error}");
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(load(dir.path()), Err(SnapshotError::Corrupt { .. })));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(load(dir.path()), Err(SnapshotError::Corrupt { .. })));
    }

    #[test]
    fn decode_never_panics() {
        let good = sample().encode();
        for len in 0..good.len() {
            let _ = StateSnapshot::decode(&good[..len]);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..3 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let at = (state >> 33) as usize % bytes.len();
                bytes[at] = (state >> 17) as u8;
            }
            let _ = StateSnapshot::decode(&bytes);
        }
    }

    #[test]
    fn raft_snapshot_data_carries_the_offset_then_the_state() {
        let state = sample();
        let mut snapshot = Snapshot {
            data: state.to_raft_data(),
            ..Default::default()
        };
        snapshot.mut_metadata().index = 1234;
        snapshot.mut_metadata().term = 7;
        // The first 8 bytes are what partitions send: the log start offset.
        assert_eq!(&snapshot.data[..8], &999u64.to_le_bytes());
        assert_eq!(StateSnapshot::from_raft(&snapshot).unwrap(), state);
        snapshot.mut_metadata().term = 8;
        assert!(StateSnapshot::from_raft(&snapshot).is_err());
        snapshot.data = Bytes::copy_from_slice(&999u64.to_le_bytes());
        assert!(StateSnapshot::from_raft(&snapshot)
            .unwrap_err()
            .contains("carries no state"));
    }
}
