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
use super::storage::{read_log, write_log, GroupStorage, SharedLog};
use super::{state_file, Acks, Committed, GroupSpec, Progress, ProposeError, RaftConfig, RaftError, Role, Transport};
use crate::log::PartitionLog;
use crate::types::{GroupId, NodeId, RaftIndex, Term};

enum Command {
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
}

/// The raft threads of this node.
pub struct RaftDriver {
    config: RaftConfig,
    shards: Vec<SyncSender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    logger: slog::Logger,
}

impl RaftDriver {
    pub fn start(config: RaftConfig, transport: std::sync::Arc<dyn Transport>) -> Result<Self, RaftError> {
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for index in 0..config.threads.max(1) {
            let (sender, receiver) = sync_channel(config.mailbox_messages_max);
            let shard = Shard {
                config: config.clone(),
                groups: HashMap::new(),
                mailbox: receiver,
                transport: transport.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("raft-{index}"))
                .spawn(move || shard.run())
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
        let io = |source| RaftError::Io {
            path: spec.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&spec.dir).map_err(io)?;
        let (log, report) = PartitionLog::open(&spec.dir, spec.log_config.clone())?;
        tracing::info!(group = %spec.id, dir = %spec.dir.display(), ?report, "opened log");
        if report.truncated_durable_bytes > 0 {
            tracing::error!(
                group = %spec.id,
                bytes = report.truncated_durable_bytes,
                "recovery cut data that was already flushed (the files were damaged while the broker was down);                  entries acknowledged before may be lost on this replica"
            );
        }
        let (hard_state, conf_state) = self.initial_state(&spec.dir, &spec.voters, &log)?;
        let single_voter = conf_state.voters == [self.config.node_id.0];
        let applied = if spec.applier.is_some() {
            0
        } else {
            hard_state.commit.min(log.last_index().0)
        };
        let log: SharedLog = std::sync::Arc::new(std::sync::RwLock::new(log));
        let storage = GroupStorage::new(spec.dir.clone(), log.clone(), hard_state, conf_state);
        let raft_config = raft::Config {
            id: self.config.node_id.0,
            election_tick: self.config.election_ticks,
            heartbeat_tick: self.config.heartbeat_ticks,
            applied,
            max_size_per_msg: self.config.message_bytes_max,
            max_inflight_msgs: self.config.inflight_messages_max,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = self.logger.new(slog::o!("group" => spec.id.0));
        let mut node = RawNode::new(&raft_config, storage, &logger)?;
        if single_voter {
            // A one-voter group need not wait an election timeout to lead.
            node.campaign()?;
        }
        let initial = initial_progress(&log);
        let (progress_sender, progress) = watch::channel(initial);
        let group = Group::new(spec.id, node, progress_sender, spec.applier);
        let mailbox = self.shard(spec.id).clone();
        mailbox
            .send(Command::AddGroup(Box::new(group)))
            .map_err(|_| RaftError::Stopped)?;
        Ok(GroupHandle {
            id: spec.id,
            log,
            progress,
            mailbox,
            mailbox_messages_max: self.config.mailbox_messages_max,
        })
    }

    fn initial_state(
        &self,
        dir: &Path,
        voters: &[NodeId],
        log: &PartitionLog,
    ) -> Result<(HardState, ConfState), RaftError> {
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

    /// Hands a raft message from a peer to its group's raft thread. Returns false when it was
    /// dropped (mailbox full, or stopping): raft retransmits, so dropping is safe.
    pub fn step(&self, group: GroupId, message: Message) -> bool {
        self.shard(group).try_send(Command::Step { group, message }).is_ok()
    }

    /// Stops the group's replica; with `delete_data`, removes its directory afterwards.
    pub async fn remove_group(&self, group: GroupId, delete_data: bool) -> Result<(), RaftError> {
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
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Shard {
    config: RaftConfig,
    groups: HashMap<GroupId, Group>,
    mailbox: Receiver<Command>,
    transport: std::sync::Arc<dyn Transport>,
}

enum Flow {
    Continue,
    Stop(std::sync::mpsc::Sender<()>),
}

impl Shard {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.config.tick_interval;
        let mut next_housekeeping = Instant::now() + self.config.housekeeping_interval;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut flow = match self.mailbox.recv_timeout(wait) {
                Ok(command) => self.handle(command),
                Err(RecvTimeoutError::Timeout) => Flow::Continue,
                Err(RecvTimeoutError::Disconnected) => {
                    self.close_all();
                    return;
                }
            };
            for _ in 0..self.config.round_messages_max {
                if !matches!(flow, Flow::Continue) {
                    break;
                }
                match self.mailbox.try_recv() {
                    Ok(command) => flow = self.handle(command),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.groups.values_mut().for_each(|group| {
                    group.node.tick();
                });
                next_tick = now + self.config.tick_interval;
            }
            if now >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = now + self.config.housekeeping_interval;
            }
            self.process_readies();
            if let Flow::Stop(reply) = flow {
                self.close_all();
                let _ = reply.send(());
                return;
            }
        }
    }

    fn handle(&mut self, command: Command) -> Flow {
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
                Some(target) if target.failure.is_none() => target.step(message),
                // A group this node has not started yet (the controller entry creating it is
                // still on its way) or has failed: the sender retries.
                _ => tracing::debug!(%group, from = message.from, "raft message for a group not running here"),
            },
            Command::Shutdown { reply } => return Flow::Stop(reply),
        }
        Flow::Continue
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

    fn close_all(&mut self) {
        for (_, mut group) in self.groups.drain() {
            group.drain_pending(ProposeError::ShuttingDown);
            if let Err(error) = close_group(&mut group) {
                tracing::error!(group = %group.id, %error, "closing the group failed; the next start recovers it");
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = now_ms();
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
            outbox.extend(ready.take_messages().into_iter().map(|message| (group.id, message)));
            match group.persist_ready(&mut ready) {
                Ok(wrote) => readies.push((group.id, ready, wrote)),
                Err(reason) => group.fail(reason),
            }
        }
        for (id, _, wrote) in &readies {
            if *wrote {
                if let Some(group) = self.groups.get_mut(id) {
                    flush_group(group);
                }
            }
        }
        for (id, ready, _) in readies {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            if group.failure.is_some() {
                continue;
            }
            match group.advance(ready) {
                Ok(messages) => outbox.extend(messages.into_iter().map(|message| (id, message))),
                Err(reason) => group.fail(reason),
            }
        }
        self.send(outbox);
    }

    fn send(&self, messages: Vec<(GroupId, Message)>) {
        if !messages.is_empty() {
            self.transport.send(messages);
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
