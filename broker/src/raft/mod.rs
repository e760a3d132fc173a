//! Multi-Raft over raft-rs: one `RawNode` per group (the controller, and one per partition
//! replica), driven by a small fixed set of raft threads.
//!
//! # Layout
//! - [`driver`]: the raft threads. Each owns a shard of the groups and runs rounds: drain the
//!   mailbox (proposals, peer messages, group changes), tick, collect every ready group, write
//!   their entries into their logs, flush each dirty log once (group commit), advance, answer
//!   proposals, publish progress.
//! - `group`: one replica on its raft thread: RawNode, waiting proposals, high watermark.
//! - `storage`: `raft::Storage` over the partition log. The Raft log *is* the partition log.
//! - `state_file`: the durable hard state and configuration of a group.
//! - `state_snapshot`: the state snapshot of a group with an [`Applier`] (the controller): its
//!   file, and how raft snapshots carry it to followers that need compacted entries.
//! - `logger`: raft-rs's slog output routed into tracing, keeping `raft_id` and `group`.
//! - `producers`: idempotent produce: each producer's recent batches in the log, so that a
//!   retried batch is answered with its first copy's offsets instead of being stored twice.
//!
//! # Invariants
//! - No request handler touches a RawNode: it sends a proposal to the group's bounded mailbox
//!   and awaits a oneshot answered on persist (acks=leader) or commit (acks=all).
//! - Term and vote are on disk before any message that depends on them is sent; entries are
//!   flushed before `advance` tells raft-rs they are persisted.
//! - Readers see only records of entries that are both committed and persisted on this replica
//!   (the high watermark); everything above it may still be truncated.

mod driver;
mod group;
mod logger;
mod producers;
mod repair;
mod scrub;
#[cfg(test)]
mod sim;
mod state_file;
mod state_snapshot;
mod storage;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use driver::{GroupHandle, RaftDriver};
pub use raft::eraftpb::Message as RaftMessage;
pub use state_file::StateFileError;
pub use state_snapshot::SnapshotError;
pub use storage::{read_log, write_log, SharedLog};

use crate::log::{LogConfig, LogError};
use crate::types::{GroupId, NodeId, Offset, RaftIndex, Term};

/// When a produce is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// After the leader flushed the entry. Lost if the leader fails before replicating it.
    Leader,
    /// After the entry is committed: flushed on a majority of the group.
    All,
}

/// A proposal's entry, persisted or committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub index: RaftIndex,
    pub base_offset: Offset,
    pub next_offset: Offset,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node does not lead the group")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership changed before the write committed: it may or may not be in the log")]
    LeadershipLost { leader: Option<NodeId> },
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("the group's mailbox is full ({0} queued messages); retry later")]
    Busy(usize),
    #[error("no such raft group {0}")]
    NoSuchGroup(GroupId),
    #[error("the raft group failed: {0}")]
    Failed(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// An idempotent producer's batch with a sequence that is neither new nor a recent batch.
    #[error("{0}")]
    Sequence(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("group {0} already exists")]
    GroupExists(GroupId),
    #[error("the raft driver has stopped")]
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
}

/// What a group's replica publishes after each round it took part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Offset after the last record readers may see.
    pub high_watermark: Offset,
    /// First offset still stored.
    pub log_start: Offset,
    pub leader: Option<NodeId>,
    pub role: Role,
    pub term: Term,
    /// Index of the high watermark's entry.
    pub commit_index: RaftIndex,
    /// Why the replica stopped serving, if it did (storage failure, corruption).
    pub failure: Option<String>,
    /// The replica cut its damaged log and is getting it back from the leader; it neither votes
    /// nor leads until then (see `repair`).
    pub repairing: bool,
}

/// A leader's view of how far its followers have replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// Index of the high watermark's entry on the leader.
    pub commit_index: RaftIndex,
    /// Every other voter and the last entry it is known to hold.
    pub followers: Vec<(NodeId, RaftIndex)>,
}

/// Carries raft messages to other nodes. The raft threads call `send` once per round with every
/// message the round produced (each message names its destination node in `to`); delivery is
/// best effort: raft retransmits what is lost. Implemented by the server layer (gRPC streams).
pub trait Transport: Send + Sync {
    fn send(&self, messages: Vec<(GroupId, raft::eraftpb::Message)>);

    /// How long the connection to `node` has been up; `None` while it is down (or unknown).
    /// Leadership only moves to nodes that are connected.
    fn peer_up_for(&self, node: NodeId) -> Option<Duration> {
        let _ = node;
        None
    }
}

/// The transport of a one-node cluster: there is nobody to send to, so a message here means a
/// group's configuration names a node this broker does not know.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, messages: Vec<(GroupId, raft::eraftpb::Message)>) {
        for (group, message) in messages {
            tracing::warn!(%group, to = message.to, kind = ?message.get_msg_type(), "dropping raft message to an unknown peer");
        }
    }
}

/// Receives a group's committed entries in order, on the group's raft thread. The controller
/// group applies its commands this way; partitions need no applier.
///
/// An applier may keep state snapshots (see `state_snapshot`): after each `apply` the group
/// asks for one; when the applier gives its serialized state, the group writes it to the
/// `state-snapshot` file and compacts its log up to it. At open the file's state is handed to
/// `restore` and only later entries are applied; a follower the leader can no longer send
/// entries to gets the leader's snapshot through `restore` too.
pub trait Applier: Send {
    fn apply(&mut self, entries: &[raft::eraftpb::Entry]);

    /// Called after every `apply`: the state serialized, when the applier wants a snapshot of
    /// it taken now (as of the last entry it applied), e.g. every N entries. The default: never.
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Replaces the state with one `snapshot` produced (on this node or on the leader), the
    /// state after applying entry `index`. An error (data it cannot read) fails the group (at
    /// open: the start) and leaves the state as it was.
    fn restore(&mut self, index: RaftIndex, data: &[u8]) -> Result<(), String> {
        let _ = data;
        Err(format!(
            "this applier keeps no snapshots (one of entry {index} was found)"
        ))
    }
}

/// Settings of the raft threads, shared by every group.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: NodeId,
    /// Raft threads per node; groups are spread over them by id.
    pub threads: usize,
    pub tick_interval: Duration,
    /// Ticks without a heartbeat before a follower campaigns.
    pub election_ticks: usize,
    /// Upper bound (exclusive) of the randomized election timeout, drawn in
    /// `[election_ticks, election_ticks_max)`; must exceed `election_ticks`. `None`: raft-rs's
    /// default, `2 * election_ticks`. The simulation sets `election_ticks + 1` (a fixed timeout).
    pub election_ticks_max: Option<usize>,
    pub heartbeat_ticks: usize,
    /// Bound of each raft thread's mailbox; proposals beyond it are refused with Busy.
    pub mailbox_messages_max: usize,
    /// Messages a raft thread drains from its mailbox per round before handling readies.
    pub round_messages_max: usize,
    pub message_bytes_max: u64,
    pub inflight_messages_max: usize,
    /// How often sealed segments are checked for age-based roll and retention.
    pub housekeeping_interval: Duration,
    /// How often leaders hand leadership back to caught-up preferred leaders; a preferred
    /// leader must have been connected for twice this long.
    pub leader_balance_interval: Duration,
    /// Bytes of sealed segments the scrub re-checks per second (all groups together); 0 = off.
    pub scrub_bytes_per_sec: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            node_id: NodeId(1),
            threads: 2,
            // Elections 1.0-1.5 s after the last heartbeat (10 slots of 50 ms, so two followers
            // rarely time out together), heartbeats every 200 ms: failover under 2 s.
            tick_interval: Duration::from_millis(50),
            election_ticks: 20,
            election_ticks_max: Some(30),
            heartbeat_ticks: 4,
            mailbox_messages_max: 8192,
            round_messages_max: 4096,
            message_bytes_max: 1 << 20,
            inflight_messages_max: 256,
            housekeeping_interval: Duration::from_secs(1),
            leader_balance_interval: Duration::from_secs(5),
            scrub_bytes_per_sec: 32 << 20,
        }
    }
}

/// Everything needed to start a replica of a group on this node.
pub struct GroupSpec {
    pub id: GroupId,
    pub dir: PathBuf,
    pub log_config: LogConfig,
    /// Voters of the group when it is created for the first time (ignored when its state exists).
    pub voters: Vec<NodeId>,
    /// The replica that should lead when it is up and caught up (placement spreads these over
    /// the nodes); `None`: whoever wins elections keeps leading.
    pub preferred_leader: Option<NodeId>,
    /// Receives committed entries (the controller): on every start, those after its state
    /// snapshot, or from the start of the log without one. None for partitions, whose committed
    /// entries need no applying.
    pub applier: Option<Box<dyn Applier>>,
}
