//! The scrub thread: re-checks the CRC of every group's sealed segments at a bounded rate, and
//! checks at once a segment that a reader or a raft-rs read found damaged. Damage goes to the
//! group's raft thread as a repair (see `repair`): the replica cuts its log at the first
//! untrusted entry and gets the rest from the leader.
//!
//! A follower's data is read only when it leads or catches a peer up, so without the scrub a
//! damaged replica would be found when it is needed most. The scrub holds a log's read lock for
//! at most one slice (`SLICE_BYTES`) at a time, so appends wait at most that long.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::driver::Command;
use super::storage::{read_log, SharedLog};
use crate::log::{Corruption, ScrubCursor};
use crate::types::{GroupId, RaftIndex};

/// How often the scrub runs; each run checks a tenth of the per-second budget.
const PERIOD: Duration = Duration::from_millis(100);
/// The pause after a run that found nothing to check (no sealed segments anywhere): idle nodes
/// should not walk every group ten times a second.
const IDLE_PERIOD: Duration = Duration::from_secs(5);
/// Most bytes checked under one read lock.
const SLICE_BYTES: u64 = 1 << 20;

/// A group the scrub looks after: its log and its raft thread's mailbox.
#[derive(Clone)]
pub(super) struct Scrubbed {
    pub log: SharedLog,
    pub mailbox: SyncSender<Command>,
}

/// What the raft threads and request handlers tell the scrub thread.
pub(super) enum Notice {
    /// A segment file of the group failed a check while being read.
    Suspect(GroupId, PathBuf),
    Stop,
}

pub(super) type Registry = Arc<Mutex<BTreeMap<GroupId, Scrubbed>>>;

pub(super) struct Scrub {
    registry: Registry,
    notices: Receiver<Notice>,
    bytes_per_sec: u64,
    cursors: HashMap<GroupId, ScrubCursor>,
    /// The damage last reported per group, so that it is reported once while the repair runs.
    reported: HashMap<GroupId, RaftIndex>,
    /// The group the periodic scrub is working through.
    current: Option<GroupId>,
}

impl Scrub {
    pub fn new(registry: Registry, notices: Receiver<Notice>, bytes_per_sec: u64) -> Self {
        Self {
            registry,
            notices,
            bytes_per_sec,
            cursors: HashMap::new(),
            reported: HashMap::new(),
            current: None,
        }
    }

    pub fn run(mut self) {
        let mut next = Instant::now() + PERIOD;
        loop {
            match self
                .notices
                .recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                Ok(Notice::Suspect(group, path)) => self.check_file(group, path),
                Ok(Notice::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let checked = if self.bytes_per_sec > 0 {
                        self.scrub_some(self.bytes_per_sec / 10)
                    } else {
                        0
                    };
                    next = Instant::now() + if checked > 0 { PERIOD } else { IDLE_PERIOD };
                }
            }
        }
    }

    fn group(&self, group: GroupId) -> Option<Scrubbed> {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// The group after `after` in id order, wrapping around.
    fn next_group(&self, after: Option<GroupId>) -> Option<(GroupId, Scrubbed)> {
        let groups = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let next = match after {
            Some(after) => groups.range(GroupId(after.0 + 1)..).next(),
            None => None,
        };
        next.or_else(|| groups.iter().next()).map(|(id, g)| (*id, g.clone()))
    }

    fn check_file(&mut self, group: GroupId, path: PathBuf) {
        let Some(scrubbed) = self.group(group) else { return };
        let found = read_log(&scrubbed.log).first_corrupt_entry(&path);
        match found {
            Some(corruption) => self.report(group, &scrubbed, corruption),
            None => {
                tracing::warn!(%group, path = %path.display(), "a read failed its check but the segment checks out now")
            }
        }
    }

    /// Checks about `budget` bytes, moving from group to group; each group is visited at most
    /// once per call. Returns the bytes checked.
    fn scrub_some(&mut self, budget: u64) -> u64 {
        let mut left = budget;
        let groups = self.registry.lock().unwrap_or_else(|p| p.into_inner()).len();
        let mut visited = 0;
        let mut working = self.current.and_then(|id| self.group(id).map(|g| (id, g)));
        while left > 0 && visited <= groups {
            let Some((id, scrubbed)) = working.take().or_else(|| self.next_group(self.current)) else {
                break;
            };
            self.current = Some(id);
            let cursor = self.cursors.entry(id).or_default();
            let step = read_log(&scrubbed.log).scrub(cursor, left.min(SLICE_BYTES));
            match step {
                Ok(step) => {
                    left = left.saturating_sub(step.checked_bytes);
                    if step.wrapped {
                        visited += 1;
                    } else {
                        working = Some((id, scrubbed));
                    }
                }
                Err(corruption) => {
                    self.cursors.remove(&id);
                    self.report(id, &scrubbed, corruption);
                    visited += 1;
                }
            }
        }
        // Forget groups that are gone.
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        self.cursors.retain(|id, _| registry.contains_key(id));
        self.reported.retain(|id, _| registry.contains_key(id));
        budget - left
    }

    fn report(&mut self, group: GroupId, scrubbed: &Scrubbed, corruption: Corruption) {
        if self.reported.get(&group) == Some(&corruption.from_index) {
            return;
        }
        tracing::error!(%group, from_index = %corruption.from_index, error = %corruption.error, "damaged log data found");
        let from_index = corruption.from_index;
        if scrubbed.mailbox.try_send(Command::Repair { group, corruption }).is_ok() {
            self.reported.insert(group, from_index);
        }
    }
}

/// Where raft threads and readers send suspect segments.
pub(super) type Notices = Sender<Notice>;
