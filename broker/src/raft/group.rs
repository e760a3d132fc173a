//! One Raft group replica as its raft thread sees it: the RawNode, the proposals waiting for
//! their entries to be persisted or committed, and the progress published to readers.

use std::collections::VecDeque;

use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use super::producers::{ProducerTable, Stamp, Verdict, REBUILD_ENTRIES};
use super::repair::Repair;
use super::storage::{read_log, to_append, write_log, GroupStorage, SharedLog};
use super::{Acks, Applier, Committed, Progress, ProposeError, Replication, Role};
use crate::log::batch::{parse_header, BatchHeader, ATTRIBUTE_COMPACTION_POINT, HEADER_LEN};
use crate::log::{Corruption, LogError};
use crate::types::{GroupId, NodeId, Offset, RaftIndex, Term};

/// What [`Group::absorb_lost_entries`] found.
enum LostEntries {
    No,
    /// This follower lacks entries the leader thinks it has.
    Here,
    /// A follower lost entries; the leader now probes it again. The message is used up.
    Handled,
}

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
    /// Set while the replica re-fetches entries it cut from a damaged log (see `repair`).
    repair: Option<Repair>,
    /// Recent batches of idempotent producers in this log (see `producers`).
    producers: ProducerTable,
    /// The latest compaction point seen in this log (index and term of its entry): once it is
    /// visible, housekeeping deletes the whole segments below it.
    compaction_point: Option<(RaftIndex, Term)>,
    /// What the RawNode was built with, to build it again after a repair cut the log.
    raft_config: raft::Config,
    logger: slog::Logger,
}

impl Group {
    pub fn new(
        id: GroupId,
        node: RawNode<GroupStorage>,
        progress: watch::Sender<Progress>,
        applier: Option<Box<dyn Applier>>,
        preferred_leader: Option<NodeId>,
        rebuild: (raft::Config, slog::Logger),
        repair: Option<Repair>,
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
            repair,
            producers: ProducerTable::default(),
            compaction_point: None,
            raft_config: rebuild.0,
            logger: rebuild.1,
        }
    }

    pub fn log(&self) -> &SharedLog {
        self.node.store().log()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.node.store().dir()
    }

    /// Publishes the progress of a replica just opened: the high watermark of what it stored
    /// and knew committed, the term of its hard state.
    pub fn publish_as_opened(&mut self) {
        if let Ok(progress) = self.current_progress() {
            self.progress.send_replace(progress);
        }
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
        let mut compacted = self
            .node
            .mut_store()
            .compact(self.visible_index)
            .map_err(|e| e.to_string())?;
        compacted += self.compact_below_point().map_err(|e| e.to_string())?;
        if compacted > 0 {
            tracing::debug!(group = %self.id, segments = compacted, "compaction deleted segments");
        }
        if deleted + compacted > 0 {
            self.publish()?;
        }
        Ok(())
    }

    /// Deletes the whole segments below the latest compaction point once it is visible (and
    /// still the entry it was: a deposed leader's cut tail does not count).
    fn compact_below_point(&mut self) -> Result<usize, LogError> {
        let Some((index, term)) = self.compaction_point else {
            return Ok(0);
        };
        if index > self.visible_index {
            return Ok(0);
        }
        let log = self.log().clone();
        let mut log = write_log(&log);
        if log.term(index).ok() != Some(term) {
            self.compaction_point = None;
            return Ok(0);
        }
        log.delete_segments_through(RaftIndex(index.0 - 1))
    }

    fn leader(&self) -> Option<NodeId> {
        let leader = self.node.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(NodeId(leader))
    }

    /// Steps a message from a peer. Entries a leader sends must fit on this disk: when they do
    /// not, the message is dropped (the leader retries) instead of failing the append later.
    /// A `draining` node (about to stop) ignores a leader's request to take over.
    pub fn step(&mut self, message: raft::eraftpb::Message, draining: bool) {
        let kind = message.get_msg_type();
        if draining && kind == MessageType::MsgTimeoutNow {
            tracing::debug!(group = %self.id, from = message.from, "not taking over leadership: this node is stopping");
            return;
        }
        let mut message = message;
        let lost = match self.absorb_lost_entries(&mut message) {
            LostEntries::Handled => return,
            LostEntries::Here => true,
            LostEntries::No => false,
        };
        if self.repair.is_some()
            && matches!(
                kind,
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote | MessageType::MsgTimeoutNow
            )
        {
            tracing::debug!(group = %self.id, from = message.from, ?kind, "not voting or leading: this replica is repairing its log");
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
        let leader = message.from;
        if let Err(error) = self.node.step(message) {
            tracing::debug!(group = %self.id, %error, "raft message not stepped");
        }
        if lost {
            // Tell the leader: an append rejection naming this replica's last entry.
            let raft = &mut self.node.raft;
            let mut reject = raft::eraftpb::Message::default();
            reject.set_msg_type(MessageType::MsgAppendResponse);
            reject.to = leader;
            reject.from = raft.id;
            reject.term = raft.term;
            reject.reject = true;
            reject.index = raft.raft_log.last_index();
            reject.reject_hint = raft.raft_log.last_index();
            raft.msgs.push(reject);
        }
    }

    /// Raft assumes a replica never loses entries it stored; a repaired one did (see
    /// `repair`). The follower side: a leader's heartbeat names a commit index past the
    /// shortened log (the leader remembers the entries as matched, and would send nothing
    /// more): only what the log holds counts as known committed, and the leader hears that the
    /// entries are missing (`Here`: the caller answers with an append rejection naming the last
    /// entry). The leader side: a follower that rejects with a last entry below what the leader
    /// thinks it matched lost entries; the leader forgets the match and probes from that entry
    /// (`Handled`: raft-rs would take the rejection as stale and never resend). Both are safe
    /// for any message: commit knowledge only shrinks, and probing checks terms before anything
    /// is appended.
    fn absorb_lost_entries(&mut self, message: &mut raft::eraftpb::Message) -> LostEntries {
        match message.get_msg_type() {
            MessageType::MsgHeartbeat => {
                let last = self.node.raft.raft_log.last_index();
                if message.commit > last {
                    message.commit = last;
                    return LostEntries::Here;
                }
            }
            MessageType::MsgAppendResponse if message.reject && self.is_leader() => {
                let Some(progress) = self.node.raft.mut_prs().get_mut(message.from) else {
                    return LostEntries::No;
                };
                if message.reject_hint < progress.matched {
                    tracing::warn!(
                        group = %self.id,
                        follower = message.from,
                        matched = progress.matched,
                        last = message.reject_hint,
                        "a follower lost entries (a repaired replica): replicating to it from its last entry"
                    );
                    progress.matched = 0;
                    progress.become_probe();
                    progress.next_idx = message.reject_hint + 1;
                    return LostEntries::Handled;
                }
            }
            _ => {}
        }
        LostEntries::No
    }

    /// A tick; a repairing replica does not count towards an election timeout (it must not
    /// campaign).
    pub fn tick(&mut self) {
        if self.repair.is_none() {
            self.node.tick();
        }
    }

    /// Cuts the log at the first damaged entry and rebuilds the replica on what is left; it
    /// then gets the rest from the leader and neither votes nor leads until it has everything it
    /// may have acknowledged (see `repair`). A group with no other voter, or with an applier
    /// (the controller, whose state was built from the entries being cut), cannot be repaired
    /// this way: it fails instead, serving nothing until an operator steps in.
    pub fn repair(&mut self, corruption: Corruption) {
        if self.failure.is_some() {
            return;
        }
        let voters = self.node.raft.prs().conf().voters().ids().len();
        if voters < 2 || self.applier.is_some() {
            self.fail(format!(
                "corrupt log from entry {} on ({}); no replica to repair it from",
                corruption.from_index, corruption.error
            ));
            return;
        }
        tracing::error!(
            group = %self.id,
            from_index = %corruption.from_index,
            error = %corruption.error,
            "damaged log: cutting it at the first untrusted entry and repairing it from the leader"
        );
        if let Err(reason) = self.cut_and_rebuild(corruption.from_index) {
            self.fail(reason);
        }
    }

    fn cut_and_rebuild(&mut self, from: RaftIndex) -> Result<(), String> {
        self.drain_pending(ProposeError::LeadershipLost { leader: None });
        let log = self.log().clone();
        let last = read_log(&log).last_index();
        let until = match self.repair {
            // An unfinished repair with an unknown end stays unknown.
            Some(Repair { until: None, .. }) => None,
            Some(Repair {
                until: Some(earlier), ..
            }) => Some(earlier.max(last)),
            None => Some(last),
        };
        let repair = Repair {
            until,
            term: Term(self.node.raft.term),
        };
        repair.store(self.dir()).map_err(|e| e.to_string())?;
        {
            let mut log = write_log(&log);
            log.truncate_from(from).map_err(|e| e.to_string())?;
            let flush = log.pending_flush();
            flush.run().map_err(|e| e.to_string())?;
            log.mark_flushed(&flush).map_err(|e| e.to_string())?;
        }
        self.rebuild(repair)
    }

    /// A new RawNode over the (shortened) log, keeping term, vote and configuration.
    fn rebuild(&mut self, repair: Repair) -> Result<(), String> {
        let log = self.log().clone();
        let (first, last) = {
            let log = read_log(&log);
            (log.log_start().index.0, log.last_index().0)
        };
        let mut hard_state = self.node.raft.hard_state();
        hard_state.commit = hard_state.commit.min(last).max(first);
        let conf_state = self.node.raft.prs().conf().to_conf_state();
        let dir = self.dir().to_path_buf();
        let storage = GroupStorage::new(dir, log, hard_state.clone(), conf_state);
        storage.persist().map_err(|e| e.to_string())?;
        let config = raft::Config {
            applied: hard_state.commit,
            ..self.raft_config.clone()
        };
        self.node = RawNode::new(&config, storage, &self.logger).map_err(|e| e.to_string())?;
        self.unappended_bytes = 0;
        self.visible_index = self.visible_index.min(RaftIndex(hard_state.commit));
        self.repair = Some(repair);
        self.publish()
    }

    /// Ends the repair once the replica has back what it may have acknowledged.
    fn check_repair(&mut self) -> Result<(), String> {
        let Some(repair) = self.repair else {
            return Ok(());
        };
        let raft = &self.node.raft;
        let committed = RaftIndex(raft.raft_log.committed);
        let committed_term = Term(raft.raft_log.term(committed.0).unwrap_or(0));
        let has_leader = raft.leader_id != raft::INVALID_ID;
        if repair.is_done(committed, committed_term, Term(raft.term), has_leader) {
            Repair::finish(self.dir()).map_err(|e| e.to_string())?;
            self.repair = None;
            tracing::info!(group = %self.id, %committed, "repair finished: the replica votes again");
        }
        Ok(())
    }

    /// How far the followers are, if this replica leads.
    pub fn replication(&self) -> Option<Replication> {
        if !self.is_leader() || self.failure.is_some() {
            return None;
        }
        let raft = &self.node.raft;
        let followers = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != raft.id)
            .map(|(id, progress)| (NodeId(*id), RaftIndex(progress.matched)))
            .collect();
        Some(Replication {
            commit_index: self.visible_index,
            followers,
        })
    }

    /// Whether the visible entry (committed and persisted here) is of the current term.
    fn committed_in_own_term(&self) -> bool {
        let raft = &self.node.raft;
        raft.raft_log
            .term(self.visible_index.0)
            .is_ok_and(|term| term == raft.term)
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Whether `node` is a voter that has every entry of this leader's log.
    fn holds_whole_log(&self, node: NodeId) -> bool {
        let raft = &self.node.raft;
        // Not `recent_active`: check-quorum clears it every election timeout, in the same
        // round a balance pass may run.
        raft.prs().conf().voters().contains(node.0)
            && raft
                .prs()
                .get(node.0)
                .is_some_and(|p| p.matched == raft.raft_log.last_index())
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
        if let Some(target) = self.most_caught_up_voter(|node| connected_for(node).is_some()) {
            tracing::info!(group = %self.id, to = %target, "handing leadership over before stopping");
            self.node.transfer_leader(target.0);
        }
    }

    /// The other voter with the longest log among those `eligible` says may take over.
    fn most_caught_up_voter(&self, eligible: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        let raft = &self.node.raft;
        raft.prs()
            .iter()
            .filter(|(id, _)| **id != raft.id && raft.prs().conf().voters().contains(**id) && eligible(NodeId(**id)))
            .max_by_key(|(_, progress)| progress.matched)
            .map(|(id, _)| NodeId(*id))
    }

    /// Proposes one entry; the reply completes when it is persisted (Leader) or committed (All).
    /// A retried batch of an idempotent producer whose first copy is in the log is not proposed
    /// again: the reply carries the first copy's offsets once it is persisted or committed.
    pub fn propose(&mut self, data: Vec<u8>, acks: Acks, reply: oneshot::Sender<Result<Committed, ProposeError>>) {
        let header = parse_header(&data).ok();
        let stamp = header.as_ref().and_then(Stamp::of);
        if let Some(stamp) = &stamp {
            if self.failure.is_none() && self.is_leader() {
                let raft_log = &self.node.raft.raft_log;
                match self
                    .producers
                    .check(stamp, |index, term| raft_log.term(index.0).ok() == Some(term.0))
                {
                    Verdict::New => {}
                    Verdict::Duplicate { index, term } => {
                        self.answer_duplicate(index, term, stamp.record_count, acks, reply);
                        return;
                    }
                    Verdict::Refused(reason) => {
                        let _ = reply.send(Err(ProposeError::Sequence(reason)));
                        return;
                    }
                }
            }
        }
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
        let (index, term) = (
            RaftIndex(self.node.raft.raft_log.last_index()),
            Term(self.node.raft.term),
        );
        if let Some(header) = &header {
            self.note_batch(header, index, term);
        }
        self.pending.push_back(Pending {
            index,
            term,
            acks,
            appended: None,
            reply: Some(reply),
        });
    }

    /// Answers a retried batch with its first copy, entry `index` of `term`: at once if that
    /// entry is visible (or persisted, for acks=leader), else when it is, like a proposal.
    fn answer_duplicate(
        &mut self,
        index: RaftIndex,
        term: Term,
        record_count: u32,
        acks: Acks,
        reply: oneshot::Sender<Result<Committed, ProposeError>>,
    ) {
        // Offsets are known once the entry is in this replica's log (not while raft-rs still
        // holds it unpersisted: `append` fills them in then).
        let appended = {
            let log = read_log(self.node.store().log());
            match (index <= log.last_index(), log.term(index)) {
                (true, Ok(stored)) if stored == term => log
                    .next_offset_after(index)
                    .ok()
                    .map(|next| (Offset(next.0 - u64::from(record_count)), next)),
                _ => None,
            }
        };
        let persisted = RaftIndex(self.node.raft.raft_log.persisted);
        let ready = index <= self.visible_index || (acks == Acks::Leader && index <= persisted);
        if let (Some((base_offset, next_offset)), true) = (appended, ready) {
            let _ = reply.send(Ok(Committed {
                index,
                base_offset,
                next_offset,
            }));
            return;
        }
        let at = self.pending.partition_point(|pending| pending.index <= index);
        self.pending.insert(
            at,
            Pending {
                index,
                term,
                acks,
                appended,
                reply: Some(reply),
            },
        );
    }

    /// Takes note of what a batch in the log (or proposed to it) means for this replica: an
    /// idempotent producer's batch, a compaction point.
    fn note_batch(&mut self, header: &BatchHeader, index: RaftIndex, term: Term) {
        if let Some(stamp) = Stamp::of(header) {
            self.producers.record(&stamp, index, term);
        }
        if header.attributes & ATTRIBUTE_COMPACTION_POINT != 0 {
            self.compaction_point = Some((index, term));
        }
    }

    /// Rebuilds the producer table and finds the latest compaction point from the last entries
    /// of the log (a replica just opened).
    pub fn rebuild_producers(&mut self) {
        let headers = {
            let log = read_log(self.node.store().log());
            let high = log.last_index().next();
            let low = RaftIndex(high.0.saturating_sub(REBUILD_ENTRIES).max(log.first_index().0));
            log.batch_headers(low, high)
        };
        match headers {
            Ok(headers) => {
                for header in headers {
                    self.note_batch(&header, RaftIndex(header.index), Term(header.term));
                }
            }
            // A damaged tail is found and repaired by other paths; retries of batches in it are
            // then stored again, as without idempotence.
            Err(error) => tracing::warn!(group = %self.id, %error, "cannot rebuild the producer table"),
        }
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
        let reserved = write_log(self.log()).reserve(needed);
        reserved.map_err(|error| match error {
            LogError::DiskFull { .. } => {
                self.hand_over_for_lack_of_space();
                ProposeError::DiskFull(error.to_string())
            }
            other => ProposeError::Failed(other.to_string()),
        })
    }

    /// A leader whose disk is full cannot take writes, but its followers may: it hands
    /// leadership to the one with the longest log (which does the same if it is full too). The
    /// balancer gives leadership back once this node has room and has caught up again.
    fn hand_over_for_lack_of_space(&mut self) {
        if let Some(target) = self.most_caught_up_voter(|_| true) {
            tracing::warn!(group = %self.id, to = %target, "disk full: handing leadership to a follower");
            self.node.transfer_leader(target.0);
        }
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
            self.producers.clear();
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
            self.producers.truncate_from(RaftIndex(first.index));
        }
        let mut appended = Vec::with_capacity(entries.len());
        for entry in entries {
            let info = log.append(to_append(entry)).map_err(|e| e.to_string())?;
            appended.push((entry.index, entry.term, info));
            // Followers learn the producers' batches and compaction points here (the leader
            // did when proposing).
            if let Ok(header) = parse_header(&entry.data) {
                self.note_batch(&header, RaftIndex(entry.index), Term(entry.term));
            }
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
        self.check_repair()?;
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
                // A new leader knows what is committed only once an entry of its own term is:
                // until then its high watermark may lag what earlier leaders acknowledged, so it
                // does not serve yet (readers hear "no leader yet" and retry).
                StateRole::Leader if self.committed_in_own_term() => Role::Leader,
                StateRole::Leader | StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            term: Term(self.node.raft.term),
            commit_index: self.visible_index,
            failure: self.failure.clone(),
            repairing: self.repair.is_some(),
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
