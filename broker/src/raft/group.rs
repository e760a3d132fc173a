//! One Raft group replica as its raft thread sees it: the RawNode, the proposals waiting for
//! their entries to be persisted or committed, and the progress published to readers.

use std::collections::VecDeque;

use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use super::storage::{read_log, to_append, write_log, GroupStorage, SharedLog};
use super::{Acks, Applier, Committed, Progress, ProposeError, Role};
use crate::log::batch::HEADER_LEN;
use crate::log::LogError;
use crate::types::{GroupId, NodeId, Offset, RaftIndex, Term};

/// A proposal waiting for its entry.
struct Pending {
    index: RaftIndex,
    term: Term,
    acks: Acks,
    /// Set when this replica appended the entry (the leader stamps the offsets then).
    appended: Option<(Offset, Offset)>,
    /// Taken when the proposer has been answered (acks=leader answers before the commit).
    reply: Option<oneshot::Sender<Result<Committed, ProposeError>>>,
}

impl Pending {
    fn answer(&mut self, result: Result<Committed, ProposeError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

pub(super) struct Group {
    pub id: GroupId,
    pub node: RawNode<GroupStorage>,
    pending: VecDeque<Pending>,
    /// Bytes proposed this round and not yet appended: what `reserve` must make room for.
    unappended_bytes: u64,
    /// Highest index both committed and persisted here: the high watermark's entry.
    visible_index: RaftIndex,
    progress: watch::Sender<Progress>,
    applier: Option<Box<dyn Applier>>,
    /// Set when the group's storage failed; the group then takes no more work.
    pub failure: Option<String>,
    /// The replica placement wants to lead (leaders spread evenly), if any.
    preferred_leader: Option<NodeId>,
}

impl Group {
    pub fn new(
        id: GroupId,
        node: RawNode<GroupStorage>,
        progress: watch::Sender<Progress>,
        applier: Option<Box<dyn Applier>>,
        preferred_leader: Option<NodeId>,
    ) -> Self {
        let visible_index = RaftIndex(node.raft.raft_log.committed.min(node.raft.raft_log.persisted));
        Self {
            id,
            node,
            pending: VecDeque::new(),
            unappended_bytes: 0,
            visible_index,
            progress,
            applier,
            failure: None,
            preferred_leader,
        }
    }

    pub fn log(&self) -> &SharedLog {
        self.node.store().log()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.node.store().dir()
    }

    /// Age-based roll, retention and compaction (up to the state snapshot); both only ever
    /// delete entries at or below the high watermark's, whose proposals are answered.
    pub fn housekeeping(&mut self, now_ms: i64) -> Result<(), String> {
        let log = self.log().clone();
        let mut log = write_log(&log);
        log.maybe_roll(now_ms).map_err(|e| e.to_string())?;
        let deleted = log
            .apply_retention(now_ms, self.visible_index)
            .map_err(|e| e.to_string())?;
        drop(log);
        if deleted > 0 {
            tracing::info!(group = %self.id, segments = deleted, "retention deleted segments");
        }
        let compacted = self
            .node
            .mut_store()
            .compact(self.visible_index)
            .map_err(|e| e.to_string())?;
        if compacted > 0 {
            tracing::debug!(group = %self.id, segments = compacted, "compaction deleted segments");
        }
        if deleted + compacted > 0 {
            self.publish()?;
        }
        Ok(())
    }

    fn leader(&self) -> Option<NodeId> {
        let leader = self.node.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(NodeId(leader))
    }

    /// Steps a message from a peer. Entries a leader sends must fit on this disk: when they do
    /// not, the message is dropped (the leader retries) instead of failing the append later.
    /// A `draining` node (about to stop) ignores a leader's request to take over.
    pub fn step(&mut self, message: raft::eraftpb::Message, draining: bool) {
        if draining && message.get_msg_type() == MessageType::MsgTimeoutNow {
            tracing::debug!(group = %self.id, from = message.from, "not taking over leadership: this node is stopping");
            return;
        }
        let bytes: u64 = message
            .entries
            .iter()
            .map(|e| e.data.len() as u64 + HEADER_LEN as u64)
            .sum();
        if bytes > 0 {
            if let Err(error) = write_log(self.log()).reserve(self.unappended_bytes + bytes) {
                tracing::warn!(group = %self.id, %error, "dropping entries from the leader: no room to store them");
                return;
            }
            self.unappended_bytes += bytes;
        }
        if let Err(error) = self.node.step(message) {
            tracing::debug!(group = %self.id, %error, "raft message not stepped");
        }
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Whether `node` is a voter that has every entry of this leader's log and answered lately.
    fn holds_whole_log(&self, node: NodeId) -> bool {
        let raft = &self.node.raft;
        raft.prs().conf().voters().contains(node.0)
            && raft
                .prs()
                .get(node.0)
                .is_some_and(|p| p.recent_active && p.matched == raft.raft_log.last_index())
    }

    /// Leader of a group this node prefers not to lead: hands leadership to the preferred
    /// leader once `stable(preferred)` holds and it has the whole log (a transfer to a lagging
    /// node would stall proposals until it caught up).
    pub fn return_to_preferred(&mut self, stable: impl Fn(NodeId) -> bool) {
        let Some(preferred) = self.preferred_leader else {
            return;
        };
        let me = NodeId(self.node.raft.id);
        if preferred == me
            || !self.is_leader()
            || self.failure.is_some()
            || self.node.raft.lead_transferee.is_some()
            || !self.holds_whole_log(preferred)
            || !stable(preferred)
        {
            return;
        }
        tracing::info!(group = %self.id, to = %preferred, "handing leadership back to the preferred leader");
        self.node.transfer_leader(preferred.0);
    }

    /// Before this node stops: hands leadership to the connected voter with the longest log,
    /// so the group does not wait an election timeout for a new leader.
    pub fn hand_over_leadership(&mut self, connected_for: impl Fn(NodeId) -> Option<std::time::Duration>) {
        if !self.is_leader() || self.failure.is_some() {
            return;
        }
        let raft = &self.node.raft;
        let me = raft.id;
        let target = raft
            .prs()
            .iter()
            .filter(|(id, p)| {
                **id != me
                    && p.recent_active
                    && raft.prs().conf().voters().contains(**id)
                    && connected_for(NodeId(**id)).is_some()
            })
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        if let Some(target) = target {
            tracing::info!(group = %self.id, to = target, "handing leadership over before stopping");
            self.node.transfer_leader(target);
        }
    }

    /// Proposes one entry; the reply completes when it is persisted (Leader) or committed (All).
    pub fn propose(&mut self, data: Vec<u8>, acks: Acks, reply: oneshot::Sender<Result<Committed, ProposeError>>) {
        if let Err(error) = self.check_proposal(data.len() as u64) {
            let _ = reply.send(Err(error));
            return;
        }
        let bytes = data.len() as u64;
        if self.node.propose(Vec::new(), data).is_err() {
            let _ = reply.send(Err(ProposeError::NotLeader { leader: self.leader() }));
            return;
        }
        self.unappended_bytes += bytes + HEADER_LEN as u64;
        self.pending.push_back(Pending {
            index: RaftIndex(self.node.raft.raft_log.last_index()),
            term: Term(self.node.raft.term),
            acks,
            appended: None,
            reply: Some(reply),
        });
    }

    fn check_proposal(&mut self, bytes: u64) -> Result<(), ProposeError> {
        if let Some(reason) = &self.failure {
            return Err(ProposeError::Failed(reason.clone()));
        }
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        if let Some(transferee) = self.node.raft.lead_transferee {
            // raft-rs drops proposals while leadership moves; the new leader takes them in a
            // moment.
            return Err(ProposeError::NotLeader {
                leader: Some(NodeId(transferee)),
            });
        }
        let needed = self.unappended_bytes + bytes + HEADER_LEN as u64;
        write_log(self.log()).reserve(needed).map_err(|error| match error {
            LogError::DiskFull { .. } => ProposeError::DiskFull(error.to_string()),
            other => ProposeError::Failed(other.to_string()),
        })
    }

    /// Steps 2-5 of raft-rs's ready handling for this group: snapshot, committed entries, new
    /// entries into the log (not yet flushed), hard state. Returns whether the log got writes.
    pub fn persist_ready(&mut self, ready: &mut raft::Ready) -> Result<bool, String> {
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            if let Some(applier) = self.applier.as_mut() {
                // The state first (checked by the applier), durable before the log is reset.
                let state = super::state_snapshot::StateSnapshot::from_raft(&snapshot)?;
                applier.restore(state.index, &state.data)?;
                tracing::info!(group = %self.id, index = %state.index, "installed the leader's state snapshot");
                self.node
                    .mut_store()
                    .save_state_snapshot(state)
                    .map_err(|e| e.to_string())?;
            }
            self.node
                .mut_store()
                .apply_snapshot(&snapshot)
                .map_err(|e| e.to_string())?;
        }
        self.apply_committed(ready.take_committed_entries())?;
        let entries = ready.take_entries();
        let wrote = !entries.is_empty();
        self.append(&entries)?;
        if let Some(hard_state) = ready.hs() {
            self.node
                .mut_store()
                .set_hard_state(hard_state, false)
                .map_err(|e| e.to_string())?;
        }
        Ok(wrote || !ready.snapshot().is_empty())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let log = self.node.store().log().clone();
        let mut log = write_log(&log);
        if first.index <= log.last_index().0 {
            log.truncate_from(RaftIndex(first.index)).map_err(|e| e.to_string())?;
        }
        let mut appended = Vec::with_capacity(entries.len());
        for entry in entries {
            let info = log.append(to_append(entry)).map_err(|e| e.to_string())?;
            appended.push((entry.index, entry.term, info));
        }
        for pending in self.pending.iter_mut() {
            if let Ok(at) = appended.binary_search_by_key(&pending.index.0, |(index, _, _)| *index) {
                let (_, term, info) = &appended[at];
                if *term == pending.term.0 {
                    pending.appended = Some((info.base_offset, info.next_offset));
                }
            }
        }
        self.unappended_bytes = 0;
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        for entry in &entries {
            let conf_state = match entry.get_entry_type() {
                EntryType::EntryNormal => continue,
                EntryType::EntryConfChange => {
                    let change: ConfChange =
                        protobuf::Message::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?;
                    self.node.apply_conf_change(&change)
                }
                EntryType::EntryConfChangeV2 => {
                    let change: ConfChangeV2 =
                        protobuf::Message::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?;
                    self.node.apply_conf_change(&change)
                }
            };
            let conf_state = conf_state.map_err(|e| e.to_string())?;
            self.node
                .mut_store()
                .set_conf_state(conf_state)
                .map_err(|e| e.to_string())?;
        }
        if let Some(applier) = self.applier.as_mut() {
            applier.apply(&entries);
            if let (Some(data), Some(last)) = (applier.snapshot(), entries.last()) {
                let (index, term) = (RaftIndex(last.index), Term(last.term));
                self.node
                    .mut_store()
                    .take_state_snapshot(index, term, data)
                    .map_err(|e| e.to_string())?;
                tracing::debug!(group = %self.id, %index, "took a state snapshot");
            }
        }
        Ok(())
    }

    /// Steps 6-10 after the round's flush: advance, light ready, then complete proposals and
    /// publish the new high watermark. Returns the messages to send.
    pub fn advance(&mut self, ready: raft::Ready) -> Result<Vec<raft::eraftpb::Message>, String> {
        let mut messages = Vec::new();
        let mut ready = ready;
        messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        messages.extend(light.take_messages());
        self.apply_committed(light.take_committed_entries())?;
        self.node.advance_apply();
        self.publish()?;
        self.complete_persisted();
        Ok(messages)
    }

    /// Replies to acks=leader proposals whose entries are now on disk here.
    fn complete_persisted(&mut self) {
        let persisted = self.node.raft.raft_log.persisted;
        for pending in self.pending.iter_mut() {
            if pending.acks == Acks::Leader && pending.index.0 <= persisted {
                if let Some((base_offset, next_offset)) = pending.appended {
                    let index = pending.index;
                    pending.answer(Ok(Committed {
                        index,
                        base_offset,
                        next_offset,
                    }));
                }
            }
        }
    }

    /// Moves the high watermark to the last entry that is both committed and persisted here,
    /// completes the proposals it covers, and publishes the group's progress.
    fn publish(&mut self) -> Result<(), String> {
        let raft_log = &self.node.raft.raft_log;
        let visible = RaftIndex(raft_log.committed.min(raft_log.persisted));
        let advanced = visible > self.visible_index;
        self.visible_index = self.visible_index.max(visible);
        // Progress first, answers second: a producer that hears "committed" and fetches at once
        // must find the high watermark already past its record.
        let progress = self.current_progress()?;
        self.progress.send_if_modified(|current| {
            let changed = *current != progress;
            *current = progress;
            changed
        });
        if advanced {
            self.complete_committed()?;
        }
        if self.node.raft.state != StateRole::Leader && !self.pending.is_empty() {
            let leader = self.leader();
            for mut pending in self.pending.drain(..) {
                pending.answer(Err(ProposeError::LeadershipLost { leader }));
            }
        }
        Ok(())
    }

    fn complete_committed(&mut self) -> Result<(), String> {
        let log = read_log(self.node.store().log());
        while let Some(front) = self.pending.front() {
            if front.index > self.visible_index {
                break;
            }
            let Some(mut pending) = self.pending.pop_front() else {
                break;
            };
            let term = log.term(pending.index).map_err(|e| e.to_string())?;
            let result = match pending.appended {
                Some((base_offset, next_offset)) if term == pending.term => Ok(Committed {
                    index: pending.index,
                    base_offset,
                    next_offset,
                }),
                _ => Err(ProposeError::LeadershipLost { leader: self.leader() }),
            };
            pending.answer(result);
        }
        Ok(())
    }

    fn current_progress(&self) -> Result<Progress, String> {
        let log = read_log(self.node.store().log());
        let high_watermark = if self.visible_index <= log.log_start().index {
            log.start_offset()
        } else {
            log.next_offset_after(self.visible_index).map_err(|e| e.to_string())?
        };
        Ok(Progress {
            high_watermark,
            log_start: log.start_offset(),
            leader: self.leader(),
            role: match self.node.raft.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            term: Term(self.node.raft.term),
            commit_index: self.visible_index,
            failure: self.failure.clone(),
        })
    }

    /// Takes the group out of service after a storage failure: every waiter hears why.
    pub fn fail(&mut self, reason: String) {
        tracing::error!(group = %self.id, %reason, "raft group failed; it serves nothing until the broker restarts");
        for mut pending in self.pending.drain(..) {
            pending.answer(Err(ProposeError::Failed(reason.clone())));
        }
        self.failure = Some(reason.clone());
        self.progress.send_modify(|progress| progress.failure = Some(reason));
    }

    /// Fails every waiting proposal (group removed or broker stopping).
    pub fn drain_pending(&mut self, error: ProposeError) {
        for mut pending in self.pending.drain(..) {
            pending.answer(Err(error.clone()));
        }
    }
}
