//! The coordinator: loads groups from `__consumer_offsets`, serialises their changes, persists
//! them through the partition's Raft group and answers members (see the module doc in `mod.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, OwnedMutexGuard};
use weir_proto::batch::{BatchBuilder, BatchReader, ATTRIBUTE_COMPACTION_POINT};
use weir_proto::{group_partition, OFFSETS_TOPIC};

use super::state::{self, apply, Answer, Committed, Entry, Group, Heartbeat, Member};
use super::{GroupConfig, GroupError, Strategy, TopicPartition};
use crate::cluster::{Cluster, ClusterError, PartitionReplica};
use crate::raft::{read_log, Acks, ProposeError, Role};
use crate::types::{Offset, Term};

/// Reads of a partition while replaying it, at most this many bytes at a time.
const REPLAY_READ_BYTES: usize = 4 << 20;
/// How often expired sessions are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// The groups of one `__consumer_offsets` partition, as replayed in one leader term.
struct Loaded {
    term: Term,
    groups: BTreeMap<String, Group>,
}

/// One `__consumer_offsets` partition's coordinator state.
pub(crate) struct Slot {
    state: Arc<tokio::sync::Mutex<Option<Loaded>>>,
    /// Bumped after every membership change: long-polled heartbeats wait on it.
    changed: watch::Sender<u64>,
    /// Commits proposed and not yet applied; reset, delete and checkpoints wait for none.
    commits_in_flight: AtomicUsize,
    commits_done: Notify,
    /// Group records in the partition after its latest checkpoint.
    records_since_checkpoint: AtomicU64,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub name: String,
    pub state: &'static str,
    pub epoch: u64,
    pub strategy: Strategy,
    /// Members with how long ago each was heard from.
    pub members: Vec<(Member, Duration)>,
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// Who holds each held partition.
    pub owners: BTreeMap<TopicPartition, String>,
}

/// Committed offsets of the groups coordinated here, for the lag metric.
pub type LagView = Vec<(String, TopicPartition, u64)>;

pub struct Coordinator {
    cluster: Arc<Cluster>,
    config: GroupConfig,
    slots: Mutex<HashMap<u32, Arc<Slot>>>,
}

/// The loaded state of a slot, locked, with the replica it was loaded from.
struct Locked {
    slot: Arc<Slot>,
    replica: PartitionReplica,
    guard: OwnedMutexGuard<Option<Loaded>>,
}

impl Locked {
    fn groups(&mut self) -> &mut BTreeMap<String, Group> {
        &mut self.guard.as_mut().expect("loaded while locked").groups
    }

    /// Forgets the state: the next request replays the partition.
    fn invalidate(&mut self) {
        *self.guard = None;
    }

    fn notify(&self) {
        self.slot.changed.send_modify(|version| *version += 1);
    }
}

impl Coordinator {
    /// The coordinator, with its session sweeper running until the cluster's runtime ends.
    pub fn start(cluster: Arc<Cluster>, config: GroupConfig) -> Arc<Self> {
        let coordinator = Arc::new(Self {
            cluster,
            config,
            slots: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&coordinator);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(coordinator) = weak.upgrade() else { return };
                coordinator.sweep().await;
            }
        });
        coordinator
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    fn partition_count(&self, topic: &str) -> u32 {
        self.cluster
            .with_state(|state| state.topics.get(topic).map_or(0, |t| t.partitions.len() as u32))
    }

    fn slot(&self, partition: u32) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(partition)
            .or_insert_with(|| {
                Arc::new(Slot {
                    state: Arc::new(tokio::sync::Mutex::new(None)),
                    changed: watch::channel(0).0,
                    commits_in_flight: AtomicUsize::new(0),
                    commits_done: Notify::new(),
                    records_since_checkpoint: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// The `__consumer_offsets` partition of a group.
    fn partition_of(&self, group: &str) -> Result<u32, GroupError> {
        match self.partition_count(OFFSETS_TOPIC) {
            0 => Err(GroupError::OffsetsTopicMissing),
            count => Ok(group_partition(group, count)),
        }
    }

    /// Locks the slot of `partition`, replaying the partition first when this node has not
    /// loaded it in the current leader term. Fails unless this node leads the partition.
    async fn lock_partition(&self, partition: u32) -> Result<Locked, GroupError> {
        let replica = match self.cluster.partition(OFFSETS_TOPIC, partition) {
            Ok(replica) => replica,
            Err(ClusterError::NotReplica { .. }) => return Err(GroupError::NotCoordinator { leader: None }),
            Err(ClusterError::NotReady) => {
                return Err(GroupError::Unavailable(
                    "this node is still catching up with the cluster; retry shortly".into(),
                ))
            }
            Err(error) => return Err(GroupError::Unavailable(error.to_string())),
        };
        let slot = self.slot(partition);
        let mut guard = slot.state.clone().lock_owned().await;
        let progress = replica.group.progress();
        if let Some(reason) = progress.failure {
            return Err(GroupError::Unavailable(format!(
                "the coordinator's partition {OFFSETS_TOPIC}/{partition} is out of service: {reason}"
            )));
        }
        if progress.role != Role::Leader {
            *guard = None;
            return match progress.leader.filter(|l| *l != self.cluster.node_id()) {
                Some(leader) => Err(GroupError::NotCoordinator { leader: Some(leader) }),
                None => Err(GroupError::Unavailable(format!(
                    "the coordinator ({OFFSETS_TOPIC}/{partition}) is being elected; retry shortly"
                ))),
            };
        }
        if guard.as_ref().map(|loaded| loaded.term) != Some(progress.term) {
            let started = Instant::now();
            let (groups, since_checkpoint) = replay(&replica, progress.log_start, progress.high_watermark)?;
            slot.records_since_checkpoint.store(since_checkpoint, Ordering::Relaxed);
            tracing::info!(
                partition,
                term = %progress.term,
                groups = groups.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "consumer groups loaded from {OFFSETS_TOPIC}"
            );
            *guard = Some(Loaded {
                term: progress.term,
                groups,
            });
            // Members waiting on the old state look again.
            slot.changed.send_modify(|version| *version += 1);
        }
        Ok(Locked { slot, replica, guard })
    }

    async fn lock_group(&self, group: &str) -> Result<Locked, GroupError> {
        self.lock_partition(self.partition_of(group)?).await
    }

    /// Proposes entries to the partition and waits for their commit, holding the slot's lock
    /// until then, in a task of its own: a request cancelled meanwhile can neither let others
    /// see a change that is not committed nor leave it applied when it failed. Once committed,
    /// the entries are applied (a membership the caller already changed in place is replaced by
    /// the same) and waiting heartbeats are woken, by the task too. On failure the state is
    /// dropped (the next request replays the partition): it may hold the change, or lack one
    /// that committed after all.
    async fn write(&self, mut locked: Locked, entries: Vec<Entry>) -> Result<Locked, GroupError> {
        let pending = match locked.replica.group.propose(encode(&entries, false), Acks::All) {
            Ok(pending) => pending,
            Err(error) => {
                locked.invalidate();
                return Err(error.into());
            }
        };
        locked
            .slot
            .records_since_checkpoint
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let timeout = self.config.write_timeout;
        let task = tokio::spawn(async move {
            let result = await_write(timeout, pending).await;
            match &result {
                Ok(()) => {
                    let now = Instant::now();
                    for entry in entries {
                        apply(locked.groups(), entry, now);
                    }
                }
                Err(_) => locked.invalidate(),
            }
            locked.notify();
            result.map(|()| locked)
        });
        task.await
            .unwrap_or_else(|error| Err(GroupError::Unavailable(format!("a group write's task failed: {error}"))))
    }

    /// Persists a group's membership if `before` differs from it.
    async fn persist_membership(
        &self,
        mut locked: Locked,
        name: &str,
        before: Option<&state::Membership>,
    ) -> Result<Locked, GroupError> {
        let Some(group) = locked.groups().get(name) else {
            return Ok(locked);
        };
        if before == Some(&group.membership) {
            return Ok(locked);
        }
        let entry = Entry::Membership {
            group: name.to_string(),
            membership: group.membership.clone(),
        };
        self.write(locked, vec![entry]).await
    }

    /// A member's heartbeat (join, stay, leave). Waits up to `max_wait` (capped at the
    /// heartbeat interval) for the member's assignment to change when nothing changed.
    pub async fn heartbeat(
        &self,
        name: &str,
        mut request: Heartbeat,
        max_wait: Duration,
    ) -> Result<Answer, GroupError> {
        request.session_timeout_ms = self.session_timeout(request.session_timeout_ms)?;
        if request.rebalance_timeout_ms == 0 {
            request.rebalance_timeout_ms = self.config.rebalance_timeout_default.as_millis() as u64;
        }
        let started = tokio::time::Instant::now();
        loop {
            let mut locked = self.lock_group(name).await?;
            let mut changed = locked.slot.changed.subscribe();
            let joining = request.member_epoch == state::JOIN;
            let leaving = matches!(request.member_epoch, state::LEAVE | state::LEAVE_FOR_RESTART);
            if leaving && !locked.groups().contains_key(name) {
                return Ok(left(&request, 0));
            }
            if !joining && !locked.groups().contains_key(name) {
                return Err(GroupError::Fenced(format!(
                    "group '{name}' has no member '{}'; rejoin",
                    request.member_id
                )));
            }
            let group = locked.groups().entry(name.to_string()).or_default();
            let before = group.membership.clone();
            let counts = |topic: &str| self.partition_count(topic);
            let member = group.heartbeat(&request, &counts, Instant::now(), || new_member_id(&request.client_id))?;
            let mut locked = self.persist_membership(locked, name, Some(&before)).await?;
            let Some(member) = member else {
                let epoch = locked.groups().get(name).map_or(0, |g| g.membership.epoch);
                return Ok(left(&request, epoch));
            };
            let answer = locked.groups()[name].answer(&member).expect("member present");
            drop(locked);
            let deadline = started + max_wait.min(self.heartbeat_interval(answer.session_timeout_ms));
            let expired = tokio::time::Instant::now() >= deadline;
            if joining || answer.member_epoch != request.member_epoch || expired {
                return Ok(answer);
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn session_timeout(&self, requested_ms: u64) -> Result<u64, GroupError> {
        let config = &self.config;
        if requested_ms == 0 {
            return Ok(config.session_timeout_default.as_millis() as u64);
        }
        let range = config.session_timeout_min.as_millis() as u64..=config.session_timeout_max.as_millis() as u64;
        if !range.contains(&requested_ms) {
            return Err(GroupError::InvalidArgument(format!(
                "session_timeout_ms {requested_ms} must be between {} and {}",
                range.start(),
                range.end()
            )));
        }
        Ok(requested_ms)
    }

    /// The heartbeat interval a member with this session timeout is told: a third of its
    /// session at most, so two lost heartbeats do not evict it.
    pub fn heartbeat_interval(&self, session_timeout_ms: u64) -> Duration {
        self.config
            .heartbeat_interval
            .min(Duration::from_millis(session_timeout_ms / 3))
    }

    /// Commits offsets for a member (or, with an empty member id, for an empty group).
    pub async fn commit(
        &self,
        name: &str,
        member_id: &str,
        member_epoch: i64,
        offsets: Vec<(TopicPartition, Committed)>,
    ) -> Result<(), GroupError> {
        let mut locked = self.lock_group(name).await?;
        match locked.groups().get(name) {
            Some(group) => group.check_commit(member_id, member_epoch, &offsets)?,
            None if member_id.is_empty() => {}
            None => {
                return Err(GroupError::Fenced(format!(
                    "group '{name}' has no member '{member_id}'; rejoin"
                )))
            }
        }
        let entry = Entry::Commit {
            group: name.to_string(),
            offsets,
        };
        let pending = locked
            .replica
            .group
            .propose(encode(std::slice::from_ref(&entry), false), Acks::All)?;
        let slot = locked.slot.clone();
        slot.commits_in_flight.fetch_add(1, Ordering::SeqCst);
        slot.records_since_checkpoint.fetch_add(1, Ordering::Relaxed);
        drop(locked);
        // Applied by a task of its own, so that a cancelled request still applies its commit
        // and ends its turn as a commit in flight.
        let timeout = self.config.write_timeout;
        let task = tokio::spawn(async move {
            let result = await_write(timeout, pending).await;
            let mut guard = slot.state.lock().await;
            match (&result, guard.as_mut()) {
                (Ok(()), Some(loaded)) => apply(&mut loaded.groups, entry, Instant::now()),
                (Err(GroupError::OutcomeUnknown(_)), _) => *guard = None,
                _ => {}
            }
            drop(guard);
            slot.commits_in_flight.fetch_sub(1, Ordering::SeqCst);
            slot.commits_done.notify_waiters();
            result
        });
        task.await.unwrap_or_else(|error| {
            Err(GroupError::Unavailable(format!(
                "a group commit's task failed: {error}"
            )))
        })
    }

    /// Locks a group's slot once no commit is in flight on it.
    async fn lock_quiet(&self, name: &str) -> Result<Locked, GroupError> {
        loop {
            let locked = self.lock_group(name).await?;
            if locked.slot.commits_in_flight.load(Ordering::SeqCst) == 0 {
                return Ok(locked);
            }
            let slot = locked.slot.clone();
            let done = slot.commits_done.notified();
            drop(locked);
            let _ = tokio::time::timeout(Duration::from_millis(100), done).await;
        }
    }

    /// Committed offsets of a group: the ones asked for (`None` where nothing is committed), or
    /// all of them.
    pub async fn fetch_offsets(
        &self,
        name: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<(TopicPartition, Option<Committed>)>, GroupError> {
        let mut locked = self.lock_group(name).await?;
        let offsets = locked.groups().get(name).map(|g| g.offsets.clone()).unwrap_or_default();
        Ok(match partitions {
            Some(wanted) => wanted
                .into_iter()
                .map(|tp| {
                    let committed = offsets.get(&tp).cloned();
                    (tp, committed)
                })
                .collect(),
            None => offsets.into_iter().map(|(tp, c)| (tp, Some(c))).collect(),
        })
    }

    pub async fn describe(&self, name: &str) -> Result<GroupView, GroupError> {
        let mut locked = self.lock_group(name).await?;
        let group = locked
            .groups()
            .get(name)
            .ok_or_else(|| GroupError::NotFound(name.to_string()))?;
        Ok(view(name, group))
    }

    /// Sets offsets (backwards too) of a group without members.
    pub async fn reset(&self, name: &str, offsets: Vec<(TopicPartition, Committed)>) -> Result<(), GroupError> {
        let mut locked = self.lock_quiet(name).await?;
        if let Some(group) = locked.groups().get(name) {
            if !group.is_empty() {
                return Err(GroupError::NotEmpty(format!(
                    "group '{name}' has {} member(s); stop them before resetting its offsets",
                    group.membership.members.len()
                )));
            }
        }
        let entry = Entry::Reset {
            group: name.to_string(),
            offsets,
        };
        self.write(locked, vec![entry]).await.map(drop)
    }

    /// Forgets a group without members and its offsets.
    pub async fn delete(&self, name: &str) -> Result<(), GroupError> {
        let mut locked = self.lock_quiet(name).await?;
        let group = locked
            .groups()
            .get(name)
            .ok_or_else(|| GroupError::NotFound(name.to_string()))?;
        if !group.is_empty() {
            return Err(GroupError::NotEmpty(format!(
                "group '{name}' has {} member(s); stop them before deleting it",
                group.membership.members.len()
            )));
        }
        let entry = Entry::Delete {
            group: name.to_string(),
        };
        self.write(locked, vec![entry]).await.map(drop)
    }

    /// Every group of the `__consumer_offsets` partitions this node leads (loading them).
    pub async fn list_local(&self) -> Vec<(String, &'static str, usize)> {
        let mut groups = Vec::new();
        for partition in 0..self.partition_count(OFFSETS_TOPIC) {
            if let Ok(mut locked) = self.lock_partition(partition).await {
                groups.extend(
                    locked
                        .groups()
                        .iter()
                        .map(|(name, g)| (name.clone(), g.state_name(), g.membership.members.len())),
                );
            }
        }
        groups
    }

    /// Committed offsets of the groups loaded here (skips a slot that is busy right now).
    pub fn lag_view(&self) -> LagView {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut view = Vec::new();
        for slot in slots {
            let Ok(guard) = slot.state.try_lock() else { continue };
            let Some(loaded) = guard.as_ref() else { continue };
            for (name, group) in &loaded.groups {
                view.extend(group.offsets.iter().map(|(tp, c)| (name.clone(), tp.clone(), c.offset)));
            }
        }
        view
    }

    /// Evicts expired members of the groups loaded here; drops the state of partitions this
    /// node no longer leads.
    async fn sweep(&self) {
        let partitions: Vec<u32> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        'partitions: for partition in partitions {
            let slot = self.slot(partition);
            if slot.state.lock().await.is_none() {
                continue;
            }
            let mut locked = match self.lock_partition(partition).await {
                Ok(locked) => locked,
                Err(_) => {
                    // Not the leader any more (the lock dropped the state): waiters look again.
                    slot.changed.send_modify(|version| *version += 1);
                    continue;
                }
            };
            let now = Instant::now();
            let counts = |topic: &str| self.partition_count(topic);
            let names: Vec<String> = locked.groups().keys().cloned().collect();
            for name in names {
                let group = locked.groups().get_mut(&name).expect("listed");
                let before = group.membership.clone();
                let evicted = group.evict_expired(&counts, now);
                if evicted.is_empty() {
                    continue;
                }
                for (member, reason) in &evicted {
                    tracing::info!(group = %name, %member, %reason, "member evicted");
                }
                locked = match self.persist_membership(locked, &name, Some(&before)).await {
                    Ok(locked) => locked,
                    Err(error) => {
                        tracing::warn!(group = %name, %error, "could not persist evictions");
                        continue 'partitions;
                    }
                };
            }
            if locked.guard.is_some()
                && slot.records_since_checkpoint.load(Ordering::Relaxed) >= self.config.checkpoint_records
                && slot.commits_in_flight.load(Ordering::SeqCst) == 0
            {
                self.checkpoint(&mut locked, partition).await;
            }
        }
    }
}

/// Waits for a proposed group write to commit.
async fn await_write(
    timeout: Duration,
    pending: tokio::sync::oneshot::Receiver<Result<crate::raft::Committed, ProposeError>>,
) -> Result<(), GroupError> {
    match tokio::time::timeout(timeout, pending).await {
        Err(_) => Err(GroupError::OutcomeUnknown(format!(
            "the group change was not committed within {timeout:?}; it may or may not have happened"
        ))),
        Ok(Err(_)) => Err(GroupError::OutcomeUnknown(
            "the coordinator's partition stopped; the group change may or may not have happened".into(),
        )),
        Ok(Ok(Err(ProposeError::LeadershipLost { .. }))) => Err(GroupError::OutcomeUnknown(
            "the coordinator lost its leadership; the group change may or may not have happened".into(),
        )),
        Ok(Ok(Err(error))) => Err(error.into()),
        Ok(Ok(Ok(_))) => Ok(()),
    }
}

/// The answer to a leave: nothing assigned.
fn left(request: &Heartbeat, group_epoch: u64) -> Answer {
    Answer {
        member_id: request.member_id.clone(),
        member_epoch: request.member_epoch,
        assignment: BTreeSet::new(),
        group_epoch,
        reconciling: false,
        session_timeout_ms: request.session_timeout_ms,
    }
}

impl Coordinator {
    /// Writes a checkpoint of a partition: every group restated in one batch marked as a
    /// compaction point (no commit may be in flight: its offset would be missing from the
    /// checkpoint and deleted below it).
    async fn checkpoint(&self, locked: &mut Locked, partition: u32) {
        let groups = locked.groups();
        let mut entries = vec![Entry::Checkpoint { groups: groups.len() }];
        for (name, group) in groups.iter() {
            entries.extend(group.restate(name));
        }
        let batch = encode(&entries, true);
        let limit = locked.replica.batch_bytes_max as usize;
        if batch.len() > limit {
            // Compaction stops until the topic's batch limit allows a checkpoint this large.
            tracing::warn!(
                partition,
                bytes = batch.len(),
                limit,
                "the checkpoint of {OFFSETS_TOPIC} exceeds its batch_bytes_max; not compacting"
            );
            locked.slot.records_since_checkpoint.store(0, Ordering::Relaxed);
            return;
        }
        let result = match locked.replica.group.propose(batch, Acks::All) {
            Ok(pending) => await_write(self.config.write_timeout, pending).await,
            Err(error) => Err(error.into()),
        };
        match result {
            Ok(()) => {
                tracing::info!(
                    partition,
                    records = entries.len(),
                    "checkpoint of {OFFSETS_TOPIC} written"
                );
                locked.slot.records_since_checkpoint.store(0, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(partition, %error, "could not write a checkpoint of {OFFSETS_TOPIC}");
                if matches!(error, GroupError::OutcomeUnknown(_)) {
                    locked.invalidate();
                }
            }
        }
    }
}

fn view(name: &str, group: &Group) -> GroupView {
    let now = Instant::now();
    let members = group
        .membership
        .members
        .values()
        .map(|m| {
            let age = group
                .last_seen(&m.id)
                .map_or(Duration::ZERO, |seen| now.saturating_duration_since(seen));
            (m.clone(), age)
        })
        .collect();
    let owners = group
        .membership
        .members
        .values()
        .flat_map(|m| {
            m.assigned
                .iter()
                .chain(&m.revoking)
                .map(|tp| (tp.clone(), m.id.clone()))
        })
        .collect();
    GroupView {
        name: name.to_string(),
        state: group.state_name(),
        epoch: group.membership.epoch,
        strategy: group.membership.strategy,
        members,
        offsets: group.offsets.clone(),
        owners,
    }
}

/// Rebuilds the groups of a partition from its committed records. Records that are not group
/// entries (which clients cannot produce: the topic is internal) are skipped with a warning.
/// Also returns how many records follow the latest checkpoint.
fn replay(
    replica: &PartitionReplica,
    from: Offset,
    until: Offset,
) -> Result<(BTreeMap<String, Group>, u64), GroupError> {
    let mut groups = BTreeMap::new();
    let mut since_checkpoint = 0u64;
    let now = Instant::now();
    let mut offset = from;
    while offset < until {
        let chunk = read_log(replica.group.log())
            .read(offset, until, REPLAY_READ_BYTES)
            .inspect_err(|error| replica.group.report_damage(error))?;
        if chunk.slices.is_empty() {
            break;
        }
        for slice in chunk.slices {
            for batch in BatchReader::new(slice) {
                let batch = batch.map_err(|e| GroupError::Unavailable(format!("unreadable group batch: {e}")))?;
                if batch.header.attributes & ATTRIBUTE_COMPACTION_POINT != 0 {
                    since_checkpoint = 0;
                }
                let records = batch
                    .records()
                    .map_err(|e| GroupError::Unavailable(format!("unreadable group batch: {e}")))?;
                for record in records.into_iter().filter(|r| r.offset >= offset.0) {
                    since_checkpoint += 1;
                    match record.value.as_deref().map(serde_json::from_slice::<Entry>) {
                        Some(Ok(entry)) => apply(&mut groups, entry, now),
                        _ => tracing::warn!(offset = record.offset, "skipping a record that is not a group entry"),
                    }
                }
            }
        }
        offset = chunk.next_offset;
    }
    Ok((groups, since_checkpoint))
}

/// One batch with one record per entry, keyed by group name; a checkpoint's batch is marked as
/// a compaction point.
fn encode(entries: &[Entry], compaction_point: bool) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut batch = BatchBuilder::new();
    for entry in entries {
        let json = serde_json::to_vec(entry).unwrap_or_default();
        if let Err(error) = batch.push(now, Some(entry.group().as_bytes()), Some(&json), &[]) {
            tracing::error!(%error, "cannot encode a group entry");
        }
    }
    if compaction_point {
        batch.mark_compaction_point();
    }
    batch.finish()
}

/// A new member id: the client id (if any) and 64 random bits.
fn new_member_id(client_id: &str) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let random = hasher.finish();
    match client_id {
        "" => format!("member-{random:016x}"),
        client => format!("{client}-{random:016x}"),
    }
}
