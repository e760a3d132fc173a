//! The `raft_state` file of a group: hard state (term, vote, commit) and configuration (voters,
//! learners), the only Raft state that does not live in the partition log.
//!
//! A record:
//!
//! ```text
//! 0  4  magic b"WRST"     4 1 version (1)
//! 5  8  term   13 8 vote   21 8 commit
//! 29 4  voter count, then 8 bytes per voter; 4 learner count, then 8 bytes per learner
//! .. 4  CRC-32 of everything before it
//! ```
//!
//! The file (version 2) is two 4 KiB slots, each `b"WRS2"`, a u64 sequence number, a u32
//! length and a record; a store overwrites the older slot in place and syncs it, so once the
//! file exists a store never needs a new disk block (a full disk cannot stop a term change from
//! becoming durable), and a write torn by a crash leaves the other slot, the previous state. A
//! load takes the valid slot with the higher sequence number. A version 1 file (a bare record,
//! written whole by `write_atomic`) is still read, and replaced by a version 2 file at the next
//! store. Term and vote must be durable before any message that depends on them leaves the node;
//! the commit index may lag (Raft re-learns it).

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, HardState};

const MAGIC: &[u8; 4] = b"WRST";
const VERSION: u8 = 1;
const SLOT_MAGIC: &[u8; 4] = b"WRS2";
const SLOT_BYTES: usize = 4096;
const SLOT_HEADER: usize = 16;
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
    let decoded = if bytes.starts_with(MAGIC) {
        decode(&bytes)
    } else {
        newest_slot(&bytes)
            .ok_or("no valid slot")
            .and_then(|(_, at)| decode(slot_record(&bytes, at).unwrap_or_default()))
    };
    decoded
        .map(Some)
        .map_err(|reason| StateFileError::Corrupt { path, reason })
}

/// Durably records the state in `dir`: in place, in the older slot (see the module doc).
pub fn store(dir: &Path, hard_state: &HardState, conf_state: &ConfState) -> Result<(), StateFileError> {
    let path = dir.join(FILE_NAME);
    let record = encode(hard_state, conf_state);
    if record.len() > SLOT_BYTES - SLOT_HEADER {
        return Err(StateFileError::Corrupt {
            path,
            reason: "configuration too large for a state slot",
        });
    }
    let io = |source| StateFileError::Io {
        path: path.clone(),
        source,
    };
    let existing = fs::OpenOptions::new().read(true).write(true).open(&path);
    let mut file = match existing {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return create(dir, &record),
        Err(source) => return Err(io(source)),
    };
    let mut bytes = Vec::with_capacity(2 * SLOT_BYTES);
    file.read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() != 2 * SLOT_BYTES || bytes.starts_with(MAGIC) {
        // A version 1 file, or a damaged one: replaced whole.
        return create(dir, &record);
    }
    let (seq, newest) = newest_slot(&bytes).unwrap_or((0, 1));
    let slot = 1 - newest;
    file.seek(SeekFrom::Start((slot * SLOT_BYTES) as u64)).map_err(io)?;
    file.write_all(&slot_image(seq + 1, &record)).map_err(io)?;
    file.sync_data().map_err(io)
}

/// A new version 2 file with `record` in slot 0, written whole (temp file, rename).
fn create(dir: &Path, record: &[u8]) -> Result<(), StateFileError> {
    let mut image = slot_image(1, record);
    image.resize(2 * SLOT_BYTES, 0);
    crate::log::write_atomic(dir, FILE_NAME, &image)?;
    Ok(())
}

fn slot_image(seq: u64, record: &[u8]) -> Vec<u8> {
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(SLOT_MAGIC);
    slot.extend_from_slice(&seq.to_le_bytes());
    slot.extend_from_slice(&(record.len() as u32).to_le_bytes());
    slot.extend_from_slice(record);
    slot.resize(SLOT_BYTES, 0);
    slot
}

/// The record in slot `at`, if the slot holds one that decodes.
fn slot_record(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let slot = bytes.get(at * SLOT_BYTES..(at + 1) * SLOT_BYTES)?;
    if !slot.starts_with(SLOT_MAGIC) {
        return None;
    }
    let len = u32::from_le_bytes(slot[12..16].try_into().ok()?) as usize;
    let record = slot.get(SLOT_HEADER..SLOT_HEADER.checked_add(len)?)?;
    decode(record).ok().map(|_| record)
}

/// The sequence number and index of the valid slot written last.
fn newest_slot(bytes: &[u8]) -> Option<(u64, usize)> {
    (0..2)
        .filter(|at| slot_record(bytes, *at).is_some())
        .map(|at| {
            let seq = u64::from_le_bytes(
                bytes[at * SLOT_BYTES + 4..at * SLOT_BYTES + 12]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            (seq, at)
        })
        .max()
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
        bytes[SLOT_HEADER + 10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(dir.path()), Err(StateFileError::Corrupt { .. })));
    }

    #[test]
    fn stores_alternate_slots_in_place_and_a_torn_slot_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let state = |term| HardState {
            term,
            vote: 1,
            commit: term * 10,
            ..Default::default()
        };
        store(dir.path(), &state(1), &cs).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        let inode = fs::metadata(&path).unwrap().ino();
        for term in 2..=5 {
            store(dir.path(), &state(term), &cs).unwrap();
            assert_eq!(load(dir.path()).unwrap().unwrap().0, state(term));
        }
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "stores write in place");
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * SLOT_BYTES as u64);
        // Term 5 went to one slot; tear it: the other slot (term 4) is what a crash leaves.
        let mut bytes = fs::read(&path).unwrap();
        let (_, newest) = newest_slot(&bytes).unwrap();
        bytes[newest * SLOT_BYTES + SLOT_HEADER + 7] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().0, state(4));
        store(dir.path(), &state(6), &cs).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().0, state(6));
    }

    #[test]
    fn version_1_files_are_read_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 7,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![1, 2],
            ..Default::default()
        };
        fs::write(dir.path().join(FILE_NAME), encode(&hs, &cs)).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), (hs.clone(), cs.clone()));
        let next = HardState { term: 4, ..hs };
        store(dir.path(), &next, &cs).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), (next, cs));
        assert_eq!(
            fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            2 * SLOT_BYTES as u64
        );
    }
}
