//! Cluster metadata: the controller Raft group (group 0) and the partition replicas it assigns
//! to this node.
//!
//! Topic admin commands are proposed to the controller group, committed, then applied by every
//! node to its [`ClusterState`] in log order. A reconciler watches the applied state and starts,
//! reconfigures or stops this node's partition replicas (and deletes a deleted topic's data).
//!
//! # Snapshots and compaction
//!
//! Every [`ClusterConfig::controller_snapshot_entries`] applied entries (default
//! [`CONTROLLER_SNAPSHOT_ENTRIES`], 1024) the controller applier serializes the whole
//! [`ClusterState`] (topics, the group id counter, the applied index and the outcomes of the last
//! 4096 commands) as JSON `{"version":1,"state":{...}}`, and the raft layer writes it with the
//! entry's index and term to `DATA_DIR/controller/state-snapshot` (format `WSNP` version 1: a
//! 40-byte header with index, term, record offset and data length, the data, a CRC-32; see
//! `raft/state_snapshot.rs`), atomically (temp file, fsync, rename, directory fsync). The
//! group's housekeeping (every second) then deletes the controller log's whole sealed segments
//! at or below that index, which moves the log start; the segment holding the index stays.
//!
//! - **Start:** the snapshot is restored first and raft-rs starts with `applied` at its index,
//!   so only the entries after it are replayed. A corrupt file, one of an unknown version, or a
//!   state the broker cannot read stops the start with an error that names the file.
//! - **Lagging followers:** when a follower needs entries the leader compacted away, raft-rs
//!   sends a snapshot; the controller's carries the state file (after the 8-byte log start
//!   offset every raft snapshot carries). The follower restores the state (replacing its own),
//!   writes it as its snapshot file, then resets its log to start at the snapshot's index. A
//!   crash between the last two is finished at the next start (the log does not hold the
//!   snapshot's entry with its term, so it is reset then).
//! - **Waiting proposers:** the outcomes are in the snapshot, so a proposer whose command's
//!   entry this node received inside a snapshot still learns whether the command was rejected.
//!   An outcome older than the last 4096 commands reads as success.
//!
//! # Invariants
//! - The state changes only by applying committed controller entries, or by restoring a
//!   snapshot of the state some node had after applying a committed prefix: it is the same on
//!   every node that applied the same prefix.
//! - A partition's Raft group id is never reused, and its directory is named after it, so a
//!   re-created topic never meets an old topic's data.

mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Mutex};

pub use state::{ClusterState, Command, CommandError, PartitionAssignment, TopicConfig, TopicState};

use crate::log::batch::{BatchBuilder, BatchReader};
use crate::log::LogConfig;
use crate::raft::{Acks, Applier, GroupHandle, GroupSpec, ProposeError, RaftDriver, RaftError};
use crate::types::{GroupId, NodeId, PartitionId, RaftIndex};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{topic}' has no partition {partition} (it has {count})")]
    UnknownPartition { topic: String, partition: u32, count: u32 },
    #[error("partition {topic}/{partition} has no replica on this node")]
    NotReplica { topic: String, partition: u32 },
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("the cluster is shutting down")]
    ShuttingDown,
    #[error("this node is still catching up with the controller; retry shortly")]
    NotReady,
}

/// Static facts about the cluster this node belongs to.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Chosen when the cluster is first formed; clients use it to tell clusters apart.
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Every node's client-facing address, this node's included.
    pub nodes: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    /// Broker-wide log settings; topics override them.
    pub log_defaults: LogConfig,
    pub batch_bytes_max_default: u32,
    /// The controller snapshots its state every this many applied entries (and compacts its
    /// log); [`CONTROLLER_SNAPSHOT_ENTRIES`] unless a test wants more snapshots.
    pub controller_snapshot_entries: u64,
}

/// Default of [`ClusterConfig::controller_snapshot_entries`].
pub const CONTROLLER_SNAPSHOT_ENTRIES: u64 = 1024;

/// A running replica of a partition on this node.
#[derive(Clone)]
pub struct PartitionReplica {
    pub topic: String,
    pub partition: PartitionId,
    pub group: GroupHandle,
    pub replicas: Vec<NodeId>,
    pub batch_bytes_max: u32,
}

struct Running {
    replica: PartitionReplica,
    log_config: LogConfig,
}

pub struct Cluster {
    config: ClusterConfig,
    driver: Arc<RaftDriver>,
    controller: GroupHandle,
    state: Arc<RwLock<ClusterState>>,
    applied: watch::Receiver<RaftIndex>,
    running: RwLock<HashMap<GroupId, Running>>,
    by_name: RwLock<HashMap<(String, PartitionId), GroupId>>,
    /// Serialises reconcile passes.
    reconciling: Mutex<()>,
    /// Set when the node stops: no pass starts or opens a replica after it.
    stopped: std::sync::atomic::AtomicBool,
    /// Where clients reach each node: the address it announced (its `--advertise`), else its
    /// `--peers` address (which is also where peers reach it).
    client_addresses: RwLock<BTreeMap<NodeId, String>>,
    /// True once the controller state was caught up with the controller leader and this node's
    /// replicas were started from it; until then unknown topics may just not be known yet.
    ready: watch::Sender<bool>,
}

impl Cluster {
    /// Opens the controller group, replays it, starts this node's partition replicas, and keeps
    /// reconciling them with the controller state in the background.
    pub async fn start(config: ClusterConfig, driver: Arc<RaftDriver>) -> Result<Arc<Self>, ClusterError> {
        let state = Arc::new(RwLock::new(ClusterState::default()));
        let (applied_sender, applied) = watch::channel(RaftIndex(0));
        let spec = GroupSpec {
            id: GroupId::CONTROLLER,
            dir: config.data_dir.join("controller"),
            log_config: LogConfig {
                // Metadata is small: a smaller segment keeps a tiny disk usable.
                segment_bytes_max: config.log_defaults.segment_bytes_max.min(16 << 20),
                ..LogConfig::default()
            },
            voters: config.nodes.keys().copied().collect(),
            preferred_leader: None,
            applier: Some(Box::new(ControllerApplier {
                state: state.clone(),
                applied: applied_sender,
                snapshot_entries: config.controller_snapshot_entries.max(1),
                snapshot_index: RaftIndex(0),
            })),
        };
        let add = driver.clone();
        let controller = tokio::task::spawn_blocking(move || add.add_group(spec))
            .await
            .map_err(|_| ClusterError::ShuttingDown)??;
        let cluster = Arc::new(Self {
            client_addresses: RwLock::new(config.nodes.clone()),
            config,
            driver,
            controller,
            state,
            applied,
            running: RwLock::new(HashMap::new()),
            by_name: RwLock::new(HashMap::new()),
            reconciling: Mutex::new(()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            ready: watch::channel(false).0,
        });
        let background = cluster.clone();
        tokio::spawn(async move { background.catch_up_then_reconcile().await });
        Ok(cluster)
    }

    /// Waits (in the background: peers may still be starting, and the server must already run
    /// for them to reach this node) until the controller has a leader and this node applied
    /// everything it committed; then starts this node's replicas, deletes data of partitions
    /// deleted while it was down, and keeps reconciling.
    async fn catch_up_then_reconcile(self: Arc<Self>) {
        while let Err(error) = self.wait_controller_caught_up(Duration::from_secs(10)).await {
            if matches!(error, ClusterError::ShuttingDown) {
                return;
            }
            tracing::warn!(%error, "still waiting for the controller");
        }
        self.reconcile().await;
        self.remove_orphan_dirs();
        self.ready.send_replace(true);
        self.reconcile_forever().await;
    }

    /// Waits up to `limit` until the node is caught up with the controller (see
    /// [`Self::catch_up_then_reconcile`]); false if it is not yet.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(limit, ready.wait_for(|ready| *ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// True once the node has caught up with the controller and started its replicas.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.config.cluster_id
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, String> {
        &self.config.nodes
    }

    /// Where clients reach `node` (see `client_addresses`).
    pub fn client_address(&self, node: NodeId) -> Option<String> {
        self.client_addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }

    /// Every node and where clients reach it.
    pub fn client_addresses(&self) -> BTreeMap<NodeId, String> {
        self.client_addresses.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the client-facing address `node` announced; nodes outside the cluster are
    /// ignored.
    pub fn set_client_address(&self, node: NodeId, address: &str) {
        let mut addresses = self.client_addresses.write().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = addresses.get_mut(&node) {
            if known != address {
                tracing::info!(%node, address, "node announced its client address");
                *known = address.to_string();
            }
        }
    }

    pub fn driver(&self) -> &Arc<RaftDriver> {
        &self.driver
    }

    pub fn controller(&self) -> &GroupHandle {
        &self.controller
    }

    /// Reads the applied cluster state.
    pub fn with_state<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        read(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    async fn wait_controller_caught_up(&self, limit: Duration) -> Result<(), ClusterError> {
        let mut progress = self.controller.watch();
        let mut applied = self.applied.clone();
        let wait = async {
            loop {
                let caught_up = {
                    let current = progress.borrow_and_update();
                    current.leader.is_some() && *applied.borrow_and_update() >= current.commit_index
                };
                if caught_up {
                    return Ok(());
                }
                tokio::select! {
                    changed = progress.changed() => changed.map_err(|_| ClusterError::ShuttingDown)?,
                    changed = applied.changed() => changed.map_err(|_| ClusterError::ShuttingDown)?,
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| ClusterError::Timeout(limit, "the controller group to elect a leader and catch up"))?
    }

    /// Proposes a command to the controller and waits until it is applied here; returns its
    /// outcome.
    pub async fn propose(&self, command: Command) -> Result<(), ClusterError> {
        let data = encode_command(&command);
        let committed = self.controller.propose(data, Acks::All)?;
        let committed = committed.await.map_err(|_| ClusterError::ShuttingDown)??;
        let mut applied = self.applied.clone();
        applied
            .wait_for(|applied| *applied >= committed.index)
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        // Outcomes of the last `OUTCOMES_MAX` commands are kept, snapshots included (a node
        // that installed a snapshot covering this entry has its outcome from there). One older
        // than that (thousands of commands committed since) reads as success.
        let outcome = self.with_state(|state| state.outcome(committed.index));
        outcome.unwrap_or(Ok(()))?;
        self.reconcile().await;
        Ok(())
    }

    /// The running replica of a partition on this node.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<PartitionReplica, ClusterError> {
        let group = self
            .by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_string(), PartitionId(partition)))
            .copied();
        if let Some(group) = group {
            if let Some(running) = self.running.read().unwrap_or_else(|p| p.into_inner()).get(&group) {
                return Ok(running.replica.clone());
            }
        }
        let ready = *self.ready.borrow();
        self.with_state(|state| match state.topics.get(topic) {
            None if !ready => Err(ClusterError::NotReady),
            None => Err(ClusterError::UnknownTopic(topic.to_string())),
            Some(t) if partition as usize >= t.partitions.len() => Err(ClusterError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: t.partitions.len() as u32,
            }),
            Some(_) => Err(ClusterError::NotReplica {
                topic: topic.to_string(),
                partition,
            }),
        })
    }

    /// The log settings a topic's partitions run with: topic values over broker defaults.
    pub fn effective_log_config(&self, config: &TopicConfig) -> LogConfig {
        let defaults = &self.config.log_defaults;
        let non_negative = |value: Option<i64>, default: Option<u64>| match value {
            Some(v) if v < 0 => None,
            Some(v) => Some(v as u64),
            None => default,
        };
        LogConfig {
            segment_bytes_max: config.segment_bytes_max.unwrap_or(defaults.segment_bytes_max),
            segment_age_ms_max: config.segment_age_ms_max.unwrap_or(defaults.segment_age_ms_max),
            segment_allocation_step_bytes: defaults.segment_allocation_step_bytes,
            index_interval_bytes: defaults.index_interval_bytes,
            retention_ms: non_negative(config.retention_ms, defaults.retention_ms),
            retention_bytes: non_negative(config.retention_bytes, defaults.retention_bytes),
        }
    }

    /// Topic settings with every default filled in, as shown to users.
    pub fn effective_topic_config(&self, config: &TopicConfig) -> TopicConfig {
        let log = self.effective_log_config(config);
        TopicConfig {
            retention_ms: Some(log.retention_ms.map_or(-1, |v| v as i64)),
            retention_bytes: Some(log.retention_bytes.map_or(-1, |v| v as i64)),
            segment_bytes_max: Some(log.segment_bytes_max),
            segment_age_ms_max: Some(log.segment_age_ms_max),
            batch_bytes_max: Some(config.batch_bytes_max.unwrap_or(self.config.batch_bytes_max_default)),
        }
    }

    async fn reconcile_forever(self: Arc<Self>) {
        let mut applied = self.applied.clone();
        while applied.changed().await.is_ok() {
            self.reconcile().await;
        }
    }

    /// Stops reconciling (the node is stopping): waits for a pass under way to end, so that no
    /// replica is opened after the logs are closed (a partition created during the stop is
    /// opened on the next start instead).
    pub async fn stop_reconciling(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let _pass = self.reconciling.lock().await;
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Brings this node's running replicas in line with the applied state.
    async fn reconcile(&self) {
        let _pass = self.reconciling.lock().await;
        if self.is_stopped() {
            return;
        }
        let desired = self.desired_replicas();
        let stale: Vec<GroupId> = {
            let running = self.running.read().unwrap_or_else(|p| p.into_inner());
            running.keys().filter(|g| !desired.contains_key(g)).copied().collect()
        };
        for group in stale {
            self.stop_replica(group).await;
        }
        for (group, (topic, assignment, config)) in desired {
            if self.is_stopped() {
                return;
            }
            let log_config = self.effective_log_config(&config);
            let batch_bytes_max = config.batch_bytes_max.unwrap_or(self.config.batch_bytes_max_default);
            let existing = self.reconfigure(group, &log_config, batch_bytes_max);
            if !existing {
                self.start_replica(topic, assignment, log_config, batch_bytes_max).await;
            }
        }
    }

    fn desired_replicas(&self) -> HashMap<GroupId, (String, PartitionAssignment, TopicConfig)> {
        let me = self.config.node_id;
        self.with_state(|state| {
            state
                .topics
                .values()
                .flat_map(|topic| {
                    topic
                        .partitions
                        .iter()
                        .filter(move |p| p.replicas.contains(&me))
                        .map(move |p| (p.group, (topic.name.clone(), p.clone(), topic.config.clone())))
                })
                .collect()
        })
    }

    /// Applies changed settings to a running replica; false if it is not running.
    fn reconfigure(&self, group: GroupId, log_config: &LogConfig, batch_bytes_max: u32) -> bool {
        let mut running = self.running.write().unwrap_or_else(|p| p.into_inner());
        let Some(current) = running.get_mut(&group) else {
            return false;
        };
        current.replica.batch_bytes_max = batch_bytes_max;
        if !same_log_config(&current.log_config, log_config) {
            crate::raft::write_log(current.replica.group.log()).set_config(log_config.clone());
            current.log_config = log_config.clone();
        }
        true
    }

    async fn start_replica(
        &self,
        topic: String,
        assignment: PartitionAssignment,
        log_config: LogConfig,
        batch_bytes_max: u32,
    ) {
        let dir = self.partition_dir(&topic, &assignment);
        let spec = GroupSpec {
            id: assignment.group,
            dir,
            log_config: log_config.clone(),
            voters: assignment.replicas.clone(),
            preferred_leader: assignment.replicas.first().copied(),
            applier: None,
        };
        let driver = self.driver.clone();
        let handle = match tokio::task::spawn_blocking(move || driver.add_group(spec)).await {
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => {
                tracing::error!(%topic, partition = %assignment.partition, %error, "cannot start partition replica");
                return;
            }
            Err(_) => return,
        };
        let replica = PartitionReplica {
            topic: topic.clone(),
            partition: assignment.partition,
            group: handle,
            replicas: assignment.replicas.clone(),
            batch_bytes_max,
        };
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((topic, assignment.partition), assignment.group);
        self.running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(assignment.group, Running { replica, log_config });
    }

    async fn stop_replica(&self, group: GroupId) {
        let removed = self.running.write().unwrap_or_else(|p| p.into_inner()).remove(&group);
        let Some(removed) = removed else { return };
        let key = (removed.replica.topic.clone(), removed.replica.partition);
        {
            let mut by_name = self.by_name.write().unwrap_or_else(|p| p.into_inner());
            if by_name.get(&key) == Some(&group) {
                by_name.remove(&key);
            }
        }
        if let Err(error) = self.driver.remove_group(group, true).await {
            tracing::error!(%group, %error, "removing a deleted partition's replica failed");
        }
    }

    fn partitions_dir(&self) -> PathBuf {
        self.config.data_dir.join("partitions")
    }

    fn partition_dir(&self, topic: &str, assignment: &PartitionAssignment) -> PathBuf {
        self.partitions_dir()
            .join(format!("{topic}-{}.g{}", assignment.partition, assignment.group))
    }

    /// Deletes partition directories whose groups the state no longer holds (topics deleted
    /// while this node was down).
    fn remove_orphan_dirs(&self) {
        let desired = self.desired_replicas();
        // Only groups the applied state allocated and dropped are orphans: a directory of a
        // group newer than the state knows belongs to a topic this node has not applied yet.
        let allocated = |group: GroupId| self.with_state(|state| state.allocated(group));
        let Ok(entries) = std::fs::read_dir(self.partitions_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match group_of_dir(&path) {
                Some(group) if allocated(group) && !desired.contains_key(&group) => {
                    tracing::info!(dir = %path.display(), "removing data of a deleted partition");
                    if let Err(error) = std::fs::remove_dir_all(&path) {
                        tracing::warn!(dir = %path.display(), %error, "cannot remove orphaned partition data");
                    }
                }
                _ => {}
            }
        }
    }

    /// First step of a graceful stop: hands the leadership of every replicated group this node
    /// leads (partitions and the controller) to other nodes, so clients move on without waiting
    /// an election timeout; waits up to `limit` for them to go.
    pub async fn hand_over_leadership(&self, limit: Duration) {
        if self.config.nodes.len() < 2 {
            return;
        }
        let me = self.config.node_id;
        let mut led: Vec<GroupHandle> = std::iter::once(self.controller.clone())
            .chain(
                self.replicas()
                    .into_iter()
                    .filter(|r| r.replicas.len() > 1)
                    .map(|r| r.group),
            )
            .filter(|group| group.progress().role == crate::raft::Role::Leader)
            .collect();
        self.driver.drain();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Ours until another node is known to lead (it won its election).
            led.retain(|group| {
                let progress = group.progress();
                progress.failure.is_none() && progress.leader.is_none_or(|leader| leader == me)
            });
            if led.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    groups = led.len(),
                    "stopping while still leading: those groups elect a new leader after a timeout"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every running replica of this node.
    pub fn replicas(&self) -> Vec<PartitionReplica> {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| r.replica.clone())
            .collect()
    }
}

fn group_of_dir(path: &Path) -> Option<GroupId> {
    let name = path.file_name()?.to_str()?;
    let (_, group) = name.rsplit_once(".g")?;
    group.parse().ok().map(GroupId)
}

fn same_log_config(a: &LogConfig, b: &LogConfig) -> bool {
    a.segment_bytes_max == b.segment_bytes_max
        && a.segment_age_ms_max == b.segment_age_ms_max
        && a.index_interval_bytes == b.index_interval_bytes
        && a.retention_ms == b.retention_ms
        && a.retention_bytes == b.retention_bytes
}

/// A controller command as a Raft entry: a records batch holding one JSON record, so the
/// controller log has the same format as every partition log.
fn encode_command(command: &Command) -> Vec<u8> {
    let json = serde_json::to_vec(command).unwrap_or_default();
    let mut batch = BatchBuilder::with_capacity(json.len() + 128);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    if let Err(error) = batch.push(now, None, Some(&json), &[]) {
        tracing::error!(%error, "cannot encode controller command");
    }
    batch.finish()
}

fn decode_command(data: &Bytes) -> Option<Command> {
    let batch = BatchReader::new(data.clone()).next()?.ok()?;
    let record = batch.records().ok()?.into_iter().next()?;
    serde_json::from_slice(record.value.as_deref()?).ok()
}

/// Applies committed controller entries to the shared state, on the controller's raft thread,
/// and snapshots the state every `snapshot_entries` entries.
struct ControllerApplier {
    state: Arc<RwLock<ClusterState>>,
    applied: watch::Sender<RaftIndex>,
    snapshot_entries: u64,
    /// Index of the latest snapshot (taken or restored).
    snapshot_index: RaftIndex,
}

impl Applier for ControllerApplier {
    fn apply(&mut self, entries: &[raft::eraftpb::Entry]) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            let index = RaftIndex(entry.index);
            let command = (entry.get_entry_type() == raft::eraftpb::EntryType::EntryNormal && !entry.data.is_empty())
                .then(|| decode_command(&entry.data));
            match command {
                Some(Some(command)) => state.apply(index, command),
                Some(None) => {
                    tracing::error!(%index, "undecodable controller entry skipped");
                    state.skip(index);
                }
                None => state.skip(index),
            }
        }
        let applied = state.applied;
        drop(state);
        self.applied.send_replace(applied);
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if state.applied.0 < self.snapshot_index.0.saturating_add(self.snapshot_entries) {
            return None;
        }
        self.snapshot_index = state.applied;
        Some(state.to_snapshot())
    }

    fn restore(&mut self, index: RaftIndex, data: &[u8]) -> Result<(), String> {
        let restored = ClusterState::from_snapshot(data)?;
        if restored.applied != index {
            return Err(format!(
                "the state was applied up to entry {}, the snapshot is of entry {index}",
                restored.applied
            ));
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
        self.snapshot_index = index;
        self.applied.send_replace(index);
        Ok(())
    }
}

/// Longest topic name (Kafka's limit, so names move between the two).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is {} characters long; the limit is {TOPIC_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not a valid topic name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{}' contains {bad:?}; allowed are a-z, A-Z, 0-9, '.', '_' and '-'",
            name.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod name_tests {
    use super::validate_topic_name;

    #[test]
    fn topic_names() {
        for good in ["a", "orders.v1", "A_b-9", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250), "a\0"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
