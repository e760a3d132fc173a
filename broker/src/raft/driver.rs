//! The raft threads. Each thread owns a shard of the groups (by group id) and runs rounds in the
//! order raft-rs documents, batched across its groups the way TiKV's batch system does:
//!
//! 1. wait for the mailbox or the next tick; drain up to `round_messages_max` commands;
//! 2. tick every group when a tick is due; housekeeping (age roll, retention) every second;
//! 3. for every group with a Ready: send its messages, install a snapshot, apply committed
//!    entries, write new entries into its log (mapped memory, no flush yet), store hard state;
//! 4. flush every log that got writes, once each (group commit across partitions);
//! 5. for every group: send persisted messages, `advance`, handle the light ready, answer
//!    proposals, publish the high watermark.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use raft::eraftpb::{ConfState, HardState, Message};
use raft::RawNode;
use tokio::sync::{oneshot, watch};

use super::group::Group;
use super::logger::root_logger;
use super::repair::Repair;
use super::scrub::{Notice, Notices, Registry, Scrub, Scrubbed};
use super::storage::{read_log, write_log, GroupStorage, SharedLog};
use super::{
    state_file, state_snapshot, Acks, Committed, GroupSpec, Progress, ProposeError, RaftConfig, RaftError, Replication,
    Role, Transport,
};
use crate::log::{Corruption, LogError, PartitionLog};
use crate::types::{GroupId, NodeId, RaftIndex, Term};

pub(super) enum Command {
    Propose {
        group: GroupId,
        data: Vec<u8>,
        acks: Acks,
        reply: oneshot::Sender<Result<Committed, ProposeError>>,
    },
    AddGroup(Box<Group>),
    RemoveGroup {
        group: GroupId,
        delete_data: bool,
        reply: oneshot::Sender<Result<(), RaftError>>,
    },
    /// A raft message from a peer.
    Step {
        group: GroupId,
        message: Message,
    },
    /// The leader's view of its followers, for status pages.
    Inspect {
        group: GroupId,
        reply: oneshot::Sender<Option<Replication>>,
    },
    /// Damage found in the group's log (by the scrub or a reader): cut it there and repair the
    /// replica from the leader.
    Repair {
        group: GroupId,
        corruption: Corruption,
    },
    /// Stop leading: hand every group this node leads to a caught-up follower, refuse to take
    /// leadership from now on (the node is about to stop).
    Drain,
    Shutdown {
        reply: std::sync::mpsc::Sender<()>,
    },
}

/// Handle to one group replica, for request handlers: propose, watch progress, read the log.
#[derive(Clone)]
pub struct GroupHandle {
    pub id: GroupId,
    log: SharedLog,
    progress: watch::Receiver<Progress>,
    mailbox: SyncSender<Command>,
    mailbox_messages_max: usize,
    /// Where damage found by readers goes (the scrub thread), when one runs.
    notices: Option<Notices>,
}

impl GroupHandle {
    /// Queues a proposal; the receiver completes on persist (Leader) or commit (All).
    pub fn propose(
        &self,
        data: Vec<u8>,
        acks: Acks,
    ) -> Result<oneshot::Receiver<Result<Committed, ProposeError>>, ProposeError> {
        let (reply, receiver) = oneshot::channel();
        let command = Command::Propose {
            group: self.id,
            data,
            acks,
            reply,
        };
        match self.mailbox.try_send(command) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(ProposeError::Busy(self.mailbox_messages_max)),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::ShuttingDown),
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver that wakes whenever the group's progress changes (long polls use it).
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// How far each follower is, when this replica leads (`None` otherwise, or if the group is
    /// gone or the raft thread too busy to answer).
    pub async fn replication(&self) -> Option<Replication> {
        let (reply, receiver) = oneshot::channel();
        self.mailbox.try_send(Command::Inspect { group: self.id, reply }).ok()?;
        receiver.await.ok().flatten()
    }

    /// Tells the node that a read of this group's log failed its check (`LogError::Corrupt`):
    /// the damaged segment is checked and the replica repaired from the leader.
    pub fn report_damage(&self, error: &LogError) {
        if let (LogError::Corrupt { path, .. }, Some(notices)) = (error, &self.notices) {
            let _ = notices.send(Notice::Suspect(self.id, path.clone()));
        }
    }
}

/// The raft threads of this node.
pub struct RaftDriver {
    config: RaftConfig,
    shards: Vec<SyncSender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    logger: slog::Logger,
    /// The groups the scrub thread checks, and its mailbox.
    scrubbed: Registry,
    notices: Notices,
}

impl RaftDriver {
    pub fn start(config: RaftConfig, transport: std::sync::Arc<dyn Transport>) -> Result<Self, RaftError> {
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        let scrubbed = Registry::default();
        let (notices, notices_receiver) = std::sync::mpsc::channel();
        let scrub = Scrub::new(scrubbed.clone(), notices_receiver, config.scrub_bytes_per_sec);
        let thread = std::thread::Builder::new()
            .name("weir-scrub".into())
            .spawn(move || scrub.run())
            .map_err(|source| RaftError::Io {
                path: "scrub thread".into(),
                source,
            })?;
        threads.push(thread);
        for index in 0..config.threads.max(1) {
            let (sender, receiver) = sync_channel(config.mailbox_messages_max);
            let mut shard = Shard::new(config.clone(), transport.clone());
            shard.notices = Some(notices.clone());
            let thread = std::thread::Builder::new()
                .name(format!("raft-{index}"))
                .spawn(move || shard.run(receiver))
                .map_err(|source| RaftError::Io {
                    path: "raft thread".into(),
                    source,
                })?;
            shards.push(sender);
            threads.push(thread);
        }
        Ok(Self {
            config,
            shards,
            threads: Mutex::new(threads),
            logger: root_logger(),
            scrubbed,
            notices,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    fn shard(&self, group: GroupId) -> &SyncSender<Command> {
        &self.shards[(group.0 % self.shards.len() as u64) as usize]
    }

    /// Opens (recovering) the group's log and state in `spec.dir` and starts its replica.
    /// Blocking: call it from a blocking context.
    pub fn add_group(&self, spec: GroupSpec) -> Result<GroupHandle, RaftError> {
        let mailbox = self.shard(spec.id).clone();
        let (group, mut handle) = open_group(&self.config, &self.logger, spec, mailbox.clone())?;
        handle.notices = Some(self.notices.clone());
        mailbox
            .send(Command::AddGroup(Box::new(group)))
            .map_err(|_| RaftError::Stopped)?;
        let scrubbed = Scrubbed {
            log: handle.log.clone(),
            mailbox,
        };
        self.scrubbed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.id, scrubbed);
        Ok(handle)
    }

    /// Hands a raft message from a peer to its group's raft thread. Returns false when it was
    /// dropped (mailbox full, or stopping): raft retransmits, so dropping is safe.
    pub fn step(&self, group: GroupId, message: Message) -> bool {
        self.shard(group).try_send(Command::Step { group, message }).is_ok()
    }

    /// Hands every group this node leads to another replica and stops taking leadership: the
    /// first step of a graceful stop. Returns at once; watch the groups' progress to see the
    /// leaderships go.
    pub fn drain(&self) {
        for shard in &self.shards {
            let _ = shard.send(Command::Drain);
        }
    }

    /// Stops the group's replica; with `delete_data`, removes its directory afterwards.
    pub async fn remove_group(&self, group: GroupId, delete_data: bool) -> Result<(), RaftError> {
        self.scrubbed.lock().unwrap_or_else(|p| p.into_inner()).remove(&group);
        let (reply, receiver) = oneshot::channel();
        self.shard(group)
            .send(Command::RemoveGroup {
                group,
                delete_data,
                reply,
            })
            .map_err(|_| RaftError::Stopped)?;
        receiver.await.map_err(|_| RaftError::Stopped)?
    }

    /// Closes every group cleanly (hard state, flush, clean markers) and stops the threads.
    /// Blocking.
    pub fn shutdown(&self) {
        let _ = self.notices.send(Notice::Stop);
        let mut waits = Vec::new();
        for shard in &self.shards {
            let (reply, wait) = std::sync::mpsc::channel();
            if shard.send(Command::Shutdown { reply }).is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            let _ = wait.recv();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Opens (recovering) a group's log and state and builds its replica, not yet running: the
/// caller hands the group to the raft thread behind `mailbox`.
pub(super) fn open_group(
    config: &RaftConfig,
    logger: &slog::Logger,
    mut spec: GroupSpec,
    mailbox: SyncSender<Command>,
) -> Result<(Group, GroupHandle), RaftError> {
    let io = |source| RaftError::Io {
        path: spec.dir.clone(),
        source,
    };
    std::fs::create_dir_all(&spec.dir).map_err(io)?;
    let (mut log, report) = PartitionLog::open(&spec.dir, spec.log_config.clone())?;
    tracing::info!(group = %spec.id, dir = %spec.dir.display(), ?report, "opened log");
    if report.truncated_durable_bytes > 0 {
        tracing::error!(
            group = %spec.id,
            bytes = report.truncated_durable_bytes,
            "recovery cut data that was already flushed (the files were damaged while the broker was down); \
             entries acknowledged before may be lost on this replica"
        );
    }
    // A group with state restores its snapshot (finishing an interrupted install) first.
    let state_snapshot = match spec.applier.as_mut() {
        Some(applier) => state_snapshot::restore(&spec.dir, applier.as_mut(), &mut log)?,
        None => None,
    };
    let (mut hard_state, conf_state) = initial_state(&spec.dir, &spec.voters, &log)?;
    // The commit in the state file is written lazily (with term and vote changes), but retention
    // and snapshots move the log start only over committed entries: everything up to the log
    // start is committed. raft-rs refuses to start with a commit below it.
    hard_state.commit = hard_state.commit.max(log.log_start().index.0);
    let single_voter = conf_state.voters == [config.node_id.0];
    let mut repair = Repair::load(&spec.dir)?;
    if report.truncated_durable_bytes > 0 && !single_voter && spec.applier.is_none() && repair.is_none() {
        // Entries this replica may have acknowledged are gone, and which ones is not known.
        let started = Repair {
            until: None,
            term: Term(hard_state.term),
        };
        started.store(&spec.dir)?;
        tracing::warn!(group = %spec.id, "repairing the cut log from the leader; not voting until then");
        repair = Some(started);
    }
    let applied = if spec.applier.is_some() {
        state_snapshot.as_ref().map_or(0, |snapshot| snapshot.index.0)
    } else {
        hard_state.commit.min(log.last_index().0)
    };
    // The state snapshot's entry was applied, so committed (and the log holds it).
    hard_state.commit = hard_state.commit.max(applied);
    let log: SharedLog = std::sync::Arc::new(std::sync::RwLock::new(log));
    let mut storage = GroupStorage::new(spec.dir.clone(), log.clone(), hard_state, conf_state);
    if spec.applier.is_some() {
        storage.keep_state_snapshots(state_snapshot);
    }
    let raft_config = raft::Config {
        id: config.node_id.0,
        election_tick: config.election_ticks,
        max_election_tick: config.election_ticks_max.unwrap_or(0),
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: config.message_bytes_max,
        max_inflight_msgs: config.inflight_messages_max,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    let logger = logger.new(slog::o!("group" => spec.id.0));
    let mut node = RawNode::new(&raft_config, storage, &logger)?;
    if single_voter {
        // A one-voter group need not wait an election timeout to lead.
        node.campaign()?;
    }
    let initial = initial_progress(&log);
    let (progress_sender, progress) = watch::channel(initial);
    let mut group = Group::new(
        spec.id,
        node,
        progress_sender,
        spec.applier,
        spec.preferred_leader,
        (raft_config, logger),
        repair,
    );
    group.rebuild_producers();
    // What the stored log and hard state say, not a placeholder, until the first round.
    group.publish_as_opened();
    Ok((
        group,
        GroupHandle {
            id: spec.id,
            log,
            progress,
            mailbox,
            mailbox_messages_max: config.mailbox_messages_max,
            notices: None,
        },
    ))
}

fn initial_state(dir: &Path, voters: &[NodeId], log: &PartitionLog) -> Result<(HardState, ConfState), RaftError> {
    if let Some((hard_state, conf_state)) = state_file::load(dir)? {
        return Ok((hard_state, conf_state));
    }
    // A log restored without its state file keeps its terms: never go back in time.
    let hard_state = HardState {
        term: log.last_term().0,
        ..Default::default()
    };
    let conf_state = ConfState {
        voters: voters.iter().map(|id| id.0).collect(),
        ..Default::default()
    };
    state_file::store(dir, &hard_state, &conf_state)?;
    Ok((hard_state, conf_state))
}

fn initial_progress(log: &SharedLog) -> Progress {
    let log = read_log(log);
    Progress {
        high_watermark: log.start_offset(),
        log_start: log.start_offset(),
        leader: None,
        role: Role::Follower,
        term: Term(0),
        commit_index: RaftIndex(0),
        failure: None,
        repairing: false,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) struct Shard {
    config: RaftConfig,
    groups: HashMap<GroupId, Group>,
    transport: std::sync::Arc<dyn Transport>,
    /// Set by [`Command::Drain`]: this node is stopping and takes no leadership.
    draining: bool,
    /// The scrub thread, which locates damage that raft-rs reads ran into; without one (a
    /// simulation), the raft thread locates it itself.
    notices: Option<Notices>,
}

/// What a round's clock says is due, decided by the caller (the raft thread from `Instant`,
/// the simulation from its own clock).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Due {
    pub tick: bool,
    /// Age-based roll and retention, with the wall-clock time in ms.
    pub housekeeping: Option<i64>,
    /// Hand leadership back to preferred leaders that are caught up.
    pub balance: bool,
}

impl Shard {
    pub(super) fn new(config: RaftConfig, transport: std::sync::Arc<dyn Transport>) -> Self {
        Self {
            config,
            groups: HashMap::new(),
            transport,
            draining: false,
            notices: None,
        }
    }

    fn run(mut self, mailbox: Receiver<Command>) {
        let start = Instant::now();
        let mut next_tick = start + self.config.tick_interval;
        let mut next_housekeeping = start + self.config.housekeeping_interval;
        let mut next_balance = start + self.config.leader_balance_interval;
        let mut commands = Vec::with_capacity(self.config.round_messages_max);
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match mailbox.recv_timeout(wait) {
                Ok(command) => commands.push(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.close_all();
                    return;
                }
            }
            commands.extend(mailbox.try_iter().take(self.config.round_messages_max));
            let now = Instant::now();
            let mut due = Due::default();
            if now >= next_tick {
                due.tick = true;
                next_tick = now + self.config.tick_interval;
            }
            if now >= next_housekeeping {
                due.housekeeping = Some(now_ms());
                next_housekeeping = now + self.config.housekeeping_interval;
            }
            if now >= next_balance {
                due.balance = true;
                next_balance = now + self.config.leader_balance_interval;
            }
            if let Some(reply) = self.round(commands.drain(..), due) {
                self.close_all();
                let _ = reply.send(());
                return;
            }
        }
    }

    /// One round: handle `commands` in order (those after a shutdown are dropped, which fails
    /// their waiters), do what is `due`, then process every ready group. Returns the shutdown
    /// reply when a shutdown arrived; the caller then closes the groups.
    pub(super) fn round(
        &mut self,
        commands: impl IntoIterator<Item = Command>,
        due: Due,
    ) -> Option<std::sync::mpsc::Sender<()>> {
        let mut stop = None;
        for command in commands {
            if stop.is_some() {
                break;
            }
            stop = self.handle(command);
        }
        if due.tick {
            self.groups.values_mut().for_each(|group| {
                group.tick();
            });
        }
        if let Some(now) = due.housekeeping {
            self.housekeeping(now);
        }
        if due.balance && !self.draining {
            self.balance_leaders();
        }
        self.process_readies();
        stop
    }

    fn handle(&mut self, command: Command) -> Option<std::sync::mpsc::Sender<()>> {
        match command {
            Command::Propose {
                group,
                data,
                acks,
                reply,
            } => match self.groups.get_mut(&group) {
                Some(target) => target.propose(data, acks, reply),
                None => {
                    let _ = reply.send(Err(ProposeError::NoSuchGroup(group)));
                }
            },
            Command::AddGroup(group) => {
                if let Some(mut old) = self.groups.insert(group.id, *group) {
                    tracing::warn!(group = %old.id, "replaced a running replica");
                    old.drain_pending(ProposeError::ShuttingDown);
                }
            }
            Command::RemoveGroup {
                group,
                delete_data,
                reply,
            } => {
                let result = self.remove(group, delete_data);
                let _ = reply.send(result);
            }
            Command::Step { group, message } => match self.groups.get_mut(&group) {
                Some(target) if target.failure.is_none() => target.step(message, self.draining),
                // A group this node has not started yet (the controller entry creating it is
                // still on its way) or has failed: the sender retries.
                _ => tracing::debug!(%group, from = message.from, "raft message for a group not running here"),
            },
            Command::Inspect { group, reply } => {
                let _ = reply.send(self.groups.get(&group).and_then(Group::replication));
            }
            Command::Repair { group, corruption } => {
                if let Some(target) = self.groups.get_mut(&group) {
                    target.repair(corruption);
                }
            }
            Command::Drain => {
                self.draining = true;
                let transport = &self.transport;
                for group in self.groups.values_mut() {
                    group.hand_over_leadership(|node| transport.peer_up_for(node));
                }
            }
            Command::Shutdown { reply } => return Some(reply),
        }
        None
    }

    /// Moves leadership of each group this node leads to the group's preferred leader when that
    /// node is connected, has been for a while, and holds the whole log: the leaders' spread
    /// that placement chose comes back after a node restarts.
    fn balance_leaders(&mut self) {
        let stable = self.config.leader_balance_interval * 2;
        let transport = &self.transport;
        for group in self.groups.values_mut() {
            group.return_to_preferred(|node| transport.peer_up_for(node).is_some_and(|up| up >= stable));
        }
    }

    fn remove(&mut self, id: GroupId, delete_data: bool) -> Result<(), RaftError> {
        let Some(mut group) = self.groups.remove(&id) else {
            return Ok(());
        };
        group.drain_pending(ProposeError::NoSuchGroup(id));
        let dir = group.dir().to_path_buf();
        close_group(&mut group)?;
        drop(group);
        if delete_data {
            std::fs::remove_dir_all(&dir).map_err(|source| RaftError::Io { path: dir, source })?;
        }
        Ok(())
    }

    pub(super) fn close_all(&mut self) {
        for (_, mut group) in self.groups.drain() {
            group.drain_pending(ProposeError::ShuttingDown);
            if let Err(error) = close_group(&mut group) {
                tracing::error!(group = %group.id, %error, "closing the group failed; the next start recovers it");
            }
        }
    }

    fn housekeeping(&mut self, now: i64) {
        for group in self.groups.values_mut() {
            if group.failure.is_none() {
                if let Err(reason) = group.housekeeping(now) {
                    group.fail(reason);
                }
            }
        }
    }

    fn process_readies(&mut self) {
        let mut readies = Vec::new();
        let mut outbox = Vec::new();
        for group in self.groups.values_mut() {
            if group.failure.is_some() || !group.node.has_ready() {
                continue;
            }
            let mut ready = group.node.ready();
            let mut messages = ready.take_messages();
            // Entries in messages are views of the mapped log. A ready that overwrites the tail
            // (a deposed leader taking the new leader's entries) or replaces the log (snapshot)
            // would change bytes that this round's messages still point at, including those
            // raft-rs holds back until the ready is persisted: they get their own copies.
            let stored_last = read_log(group.log()).last_index().0;
            let rewrites =
                !ready.snapshot().is_empty() || ready.entries().first().is_some_and(|first| first.index <= stored_last);
            let mut held_back = Vec::new();
            if rewrites {
                held_back = ready.take_persisted_messages();
                detach_entries(&mut messages);
                detach_entries(&mut held_back);
            }
            outbox.extend(messages.into_iter().map(|message| (group.id, message)));
            match group.persist_ready(&mut ready) {
                Ok(wrote) => readies.push((group.id, ready, wrote, held_back)),
                Err(reason) => group.fail(reason),
            }
        }
        for (id, _, wrote, _) in &readies {
            if *wrote {
                if let Some(group) = self.groups.get_mut(id) {
                    flush_group(group);
                }
            }
        }
        for (id, ready, _, held_back) in readies {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            if group.failure.is_some() {
                continue;
            }
            outbox.extend(held_back.into_iter().map(|message| (id, message)));
            match group.advance(ready) {
                Ok(messages) => outbox.extend(messages.into_iter().map(|message| (id, message))),
                Err(reason) => group.fail(reason),
            }
        }
        // A snapshot travels in one message like any other (the log start, and the controller's
        // state): report it sent, or a lost snapshot (or a lost answer to it) would leave the
        // follower in raft-rs's Snapshot state, where the leader sends it nothing until
        // leadership moves. If it was lost, raft-rs's next probe is refused and it sends another.
        for (id, message) in &outbox {
            if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                if let Some(group) = self.groups.get_mut(id) {
                    group.node.report_snapshot(message.to, raft::SnapshotStatus::Finish);
                }
            }
        }
        self.send(outbox);
        self.repair_damaged();
    }

    /// Groups whose raft-rs reads ran into damaged data this round get it located (by the
    /// scrub thread) and repaired.
    fn repair_damaged(&mut self) {
        for (id, group) in self.groups.iter_mut() {
            let Some(path) = group.node.store().take_noticed_corruption() else {
                continue;
            };
            match &self.notices {
                Some(notices) => {
                    let _ = notices.send(Notice::Suspect(*id, path));
                }
                None => {
                    let found = read_log(group.log()).first_corrupt_entry(&path);
                    if let Some(corruption) = found {
                        group.repair(corruption);
                    }
                }
            }
        }
    }

    fn send(&self, messages: Vec<(GroupId, Message)>) {
        if !messages.is_empty() {
            self.transport.send(messages);
        }
    }
}

/// Gives the entries of `messages` their own copies of the bytes instead of views of the log.
fn detach_entries(messages: &mut [Message]) {
    for entry in messages.iter_mut().flat_map(|message| message.entries.iter_mut()) {
        if !entry.data.is_empty() {
            entry.data = bytes::Bytes::copy_from_slice(&entry.data);
        }
    }
}

/// Flushes everything the group wrote this round. A failed flush is fatal for the process: the
/// kernel may have dropped the dirty pages, so only recovery from disk is safe.
fn flush_group(group: &mut Group) {
    let log = group.log().clone();
    let batch = read_log(&log).pending_flush();
    if batch.is_empty() {
        return;
    }
    if let Err(error) = batch.run() {
        tracing::error!(group = %group.id, %error, "flushing the log failed; stopping the process so that recovery can run");
        std::process::abort();
    }
    let marked = write_log(&log).mark_flushed(&batch);
    if let Err(error) = marked {
        group.fail(error.to_string());
    }
}

/// Persists the group's hard state and closes its log with a clean marker. A failed group is
/// left as it is: its next open must run full recovery, not trust a marker.
fn close_group(group: &mut Group) -> Result<(), RaftError> {
    if group.failure.is_some() {
        return Ok(());
    }
    group.node.store().persist()?;
    let log = group.log().clone();
    let mut log = write_log(&log);
    log.close().map_err(RaftError::from)
}
