//! The `raft_state` file of a group: hard state (term, vote, commit) and configuration (voters,
//! learners), the only Raft state that does not live in the partition log.
//!
//! ```text
//! 0  4  magic b"WRST"     4 1 version (1)
//! 5  8  term   13 8 vote   21 8 commit
//! 29 4  voter count, then 8 bytes per voter; 4 learner count, then 8 bytes per learner
//! .. 4  CRC-32 of everything before it
//! ```
//!
//! Written with the log's `write_atomic` (to `raft_state.tmp`, fsync, rename, fsync the
//! directory): a crash leaves either the old or the new file. Term and vote must be durable before any message
//! that depends on them leaves the node; the commit index may lag (Raft re-learns it).

use std::fs;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, HardState};

const MAGIC: &[u8; 4] = b"WRST";
const VERSION: u8 = 1;
pub const FILE_NAME: &str = "raft_state";

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] crate::log::LogError),
    #[error("raft state file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: &'static str },
}

/// Reads the state file in `dir`; `Ok(None)` if there is none (a new replica).
pub fn load(dir: &Path) -> Result<Option<(HardState, ConfState)>, StateFileError> {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateFileError::Io { path, source }),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| StateFileError::Corrupt { path, reason })
}

/// Durably replaces the state file in `dir`.
pub fn store(dir: &Path, hard_state: &HardState, conf_state: &ConfState) -> Result<(), StateFileError> {
    crate::log::write_atomic(dir, FILE_NAME, &encode(hard_state, conf_state))?;
    Ok(())
}

fn encode(hard_state: &HardState, conf_state: &ConfState) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    for value in [hard_state.term, hard_state.vote, hard_state.commit] {
        buf.extend_from_slice(&value.to_le_bytes());
    }
    for ids in [&conf_state.voters, &conf_state.learners] {
        buf.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids.iter() {
            buf.extend_from_slice(&id.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(bytes: &[u8]) -> Result<(HardState, ConfState), &'static str> {
    let body_len = bytes.len().checked_sub(4).ok_or("file too short")?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("CRC mismatch");
    }
    let mut cursor = Cursor { bytes: body, at: 0 };
    if cursor.take(4)? != MAGIC || cursor.take(1)? != [VERSION] {
        return Err("bad magic or version");
    }
    let hard_state = HardState {
        term: cursor.u64()?,
        vote: cursor.u64()?,
        commit: cursor.u64()?,
        ..Default::default()
    };
    let conf_state = ConfState {
        voters: cursor.ids()?,
        learners: cursor.ids()?,
        ..Default::default()
    };
    if cursor.at != body.len() {
        return Err("trailing bytes");
    }
    Ok((hard_state, conf_state))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("truncated")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    fn ids(&mut self) -> Result<Vec<u64>, &'static str> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(4)?);
        let count = u32::from_le_bytes(raw) as usize;
        if count > 1024 {
            return Err("implausible member count");
        }
        (0..count).map(|_| self.u64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let hs = HardState {
            term: 5,
            vote: 2,
            commit: 99,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        store(dir.path(), &hs, &cs).unwrap();
        let (hs2, cs2) = load(dir.path()).unwrap().unwrap();
        assert_eq!((hs2, cs2), (hs, cs));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(dir.path()), Err(StateFileError::Corrupt { .. })));
    }
}
