//! `raft::Storage` over a partition log: the Raft log *is* the partition log, so raft-rs reads
//! entries straight from the mapped segments. Hard state and configuration live in the group's
//! `raft_state` file (see [`super::state_file`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::state_file;
use super::state_snapshot::{self, StateSnapshot};
use crate::log::{AppendEntry, BatchKind, LogError, LogStart, PartitionLog, StoredEntry};
use crate::types::{Offset, RaftIndex, Term};

/// A partition log shared between its raft thread (the only writer) and fetch handlers.
pub type SharedLog = Arc<RwLock<PartitionLog>>;

/// Read access to a shared log. A poisoned lock means a writer panicked mid-append; the data on
/// disk is still consistent (recovery would check it), so readers go on.
pub fn read_log(log: &SharedLog) -> RwLockReadGuard<'_, PartitionLog> {
    log.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn write_log(log: &SharedLog) -> RwLockWriteGuard<'_, PartitionLog> {
    log.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The storage of one Raft group replica.
pub struct GroupStorage {
    dir: PathBuf,
    log: SharedLog,
    hard_state: HardState,
    conf_state: ConfState,
    /// The segment file of a damaged batch that a raft-rs read ran into (raft-rs only sees a
    /// storage error); the raft thread takes it after the round and repairs the replica.
    noticed_corruption: std::sync::Mutex<Option<PathBuf>>,
    noticed: std::sync::atomic::AtomicBool,
    /// The latest state snapshot of a group with an applier (`Some(None)`: none taken yet);
    /// `None` for groups without state (partitions), whose snapshot is the log start.
    state_snapshot: Option<Option<StateSnapshot>>,
}

impl GroupStorage {
    pub fn new(dir: PathBuf, log: SharedLog, hard_state: HardState, conf_state: ConfState) -> Self {
        Self {
            dir,
            log,
            hard_state,
            conf_state,
            noticed_corruption: std::sync::Mutex::new(None),
            noticed: std::sync::atomic::AtomicBool::new(false),
            state_snapshot: None,
        }
    }

    /// Makes this the storage of a group with state snapshots, `latest` the one restored at open.
    pub fn keep_state_snapshots(&mut self, latest: Option<StateSnapshot>) {
        self.state_snapshot = Some(latest);
    }

    /// Stores the applier's state as of entry `index` (applied, so committed and in the log).
    /// The log is compacted up to it later, by [`Self::compact`].
    pub fn take_state_snapshot(&mut self, index: RaftIndex, term: Term, data: Vec<u8>) -> Result<(), super::RaftError> {
        let offset = read_log(&self.log).next_offset_after(index)?;
        self.save_state_snapshot(StateSnapshot {
            index,
            term,
            offset,
            data: data.into(),
        })
    }

    /// Deletes the log's whole sealed segments that the state snapshot covers, up to `visible`
    /// at most (entries above it may still have proposals waiting to be answered). Returns how
    /// many segments went; none for groups without state snapshots.
    pub fn compact(&mut self, visible: RaftIndex) -> Result<usize, LogError> {
        match &self.state_snapshot {
            Some(Some(snapshot)) => write_log(&self.log).delete_segments_through(snapshot.index.min(visible)),
            _ => Ok(0),
        }
    }

    /// Writes a state snapshot (taken here, or received from the leader before the log is reset
    /// to it) and serves it to followers from now on.
    pub fn save_state_snapshot(&mut self, snapshot: StateSnapshot) -> Result<(), super::RaftError> {
        state_snapshot::store(&self.dir, &snapshot)?;
        self.state_snapshot = Some(Some(snapshot));
        Ok(())
    }

    /// The segment file of a damaged batch that reads for raft-rs ran into since the last call.
    /// Cheap when there is none (every round asks).
    pub fn take_noticed_corruption(&self) -> Option<PathBuf> {
        if !self.noticed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.noticed_corruption.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The raft-rs error for a log error, noting where the data is damaged if it is.
    fn storage_error(&self, error: LogError) -> raft::Error {
        if let LogError::Corrupt { path, .. } = &error {
            *self.noticed_corruption.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
            self.noticed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        storage_error(error)
    }

    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Records a new hard state; writes the file only when term or vote changed (those must be
    /// durable before messages leave), or when `force` is set (commit-only changes are lazy).
    pub fn set_hard_state(&mut self, hard_state: &HardState, force: bool) -> Result<(), state_file::StateFileError> {
        let durable_change = hard_state.term != self.hard_state.term || hard_state.vote != self.hard_state.vote;
        self.hard_state = hard_state.clone();
        if durable_change || force {
            state_file::store(&self.dir, &self.hard_state, &self.conf_state)?;
        }
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), state_file::StateFileError> {
        self.conf_state = conf_state;
        state_file::store(&self.dir, &self.hard_state, &self.conf_state)
    }

    /// Writes the current hard state (with the latest commit) and configuration.
    pub fn persist(&self) -> Result<(), state_file::StateFileError> {
        state_file::store(&self.dir, &self.hard_state, &self.conf_state)
    }

    /// Installs a snapshot received from the leader: the log restarts after its position.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), super::RaftError> {
        let metadata = snapshot.get_metadata();
        let start = LogStart {
            index: RaftIndex(metadata.index),
            term: Term(metadata.term),
            offset: Offset(decode_snapshot_offset(&snapshot.data)),
        };
        write_log(&self.log).reset(start)?;
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        state_file::store(&self.dir, &self.hard_state, &self.conf_state)?;
        Ok(())
    }
}

/// The log entry kind a Raft entry is stored as.
pub fn batch_kind(entry: &Entry) -> BatchKind {
    match entry.get_entry_type() {
        EntryType::EntryNormal if entry.data.is_empty() => BatchKind::Noop,
        EntryType::EntryNormal => BatchKind::Records,
        EntryType::EntryConfChange => BatchKind::ConfChange,
        EntryType::EntryConfChangeV2 => BatchKind::ConfChangeV2,
    }
}

/// How a Raft entry is handed to the log.
pub fn to_append(entry: &Entry) -> AppendEntry<'_> {
    AppendEntry {
        index: RaftIndex(entry.index),
        term: Term(entry.term),
        kind: batch_kind(entry),
        data: &entry.data,
    }
}

fn to_entry(stored: StoredEntry) -> Entry {
    let mut entry = Entry {
        index: stored.index.0,
        term: stored.term.0,
        ..Default::default()
    };
    entry.set_entry_type(match stored.kind {
        BatchKind::Records | BatchKind::Noop => EntryType::EntryNormal,
        BatchKind::ConfChange => EntryType::EntryConfChange,
        BatchKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
    });
    if stored.kind != BatchKind::Noop {
        entry.data = stored.data;
    }
    entry
}

fn encode_snapshot_offset(offset: Offset) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&offset.0.to_le_bytes())
}

fn decode_snapshot_offset(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|raw| raw.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn storage_error(error: LogError) -> raft::Error {
    match error {
        LogError::Unavailable { .. } => raft::Error::Store(StorageError::Compacted),
        other => raft::Error::Store(StorageError::Other(Box::new(other))),
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (low, high, max_size) = (RaftIndex(low), RaftIndex(high), max_size.into());
        let log = read_log(&self.log);
        // Entries sent to followers are read whole and checked; a group with state applies
        // committed entries from their records. Other raft-rs reads (committed entries of a
        // partition, pending configuration checks) need only the kinds and configuration
        // changes: records bytes are neither copied nor checked for them. raft-rs treats a
        // failed read as fatal except when sending (`can_async`), where "temporarily
        // unavailable" makes it wait: the raft thread then repairs the replica.
        let sending = context.can_async();
        let stored = if sending || self.state_snapshot.is_some() {
            log.entries(low, high, max_size)
        } else {
            log.entry_kinds(low, high, max_size)
        };
        let stored = stored.map_err(|error| match self.storage_error(error) {
            raft::Error::Store(StorageError::Other(_)) if sending => {
                raft::Error::Store(StorageError::LogTemporarilyUnavailable)
            }
            other => other,
        })?;
        Ok(stored.into_iter().map(to_entry).collect())
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        read_log(&self.log)
            .term(RaftIndex(index))
            .map(|term| term.0)
            .map_err(|e| self.storage_error(e))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(read_log(&self.log).first_index().0)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(read_log(&self.log).last_index().0)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A partition's snapshot carries no data: it is the log start position (index, term,
        // record offset). The follower empties its log and continues from there with the
        // leader's log. A group with state (the controller) sends its latest state snapshot,
        // which is never below the log start (the log is compacted only up to it).
        let start = read_log(&self.log).log_start();
        let (index, term, data) = match &self.state_snapshot {
            None => (start.index, start.term, encode_snapshot_offset(start.offset)),
            Some(Some(state)) if state.index >= start.index => (state.index, state.term, state.to_raft_data()),
            Some(_) => return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        };
        let mut snapshot = Snapshot {
            data,
            ..Default::default()
        };
        let metadata = snapshot.mut_metadata();
        metadata.index = index.0;
        metadata.term = term.0;
        metadata.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}
