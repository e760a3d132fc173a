//! Consumer groups: membership, server-side incremental assignment and committed offsets.
//!
//! The coordinator of group G is the leader of partition `weir_proto::group_partition(G, N)`
//! of the internal topic `__consumer_offsets` (N partitions, created by the server on the first
//! group request). Every change to a group is a JSON record ([`state::Entry`]) in that
//! partition: a membership change (the group's whole membership), committed offsets, an
//! operator's reset, a delete. The partition is replicated like any other, so a new
//! coordinator (a new leader, in a new term) rebuilds its groups by replaying the partition
//! before it answers anything; nothing a member was told is lost with the old coordinator.
//!
//! Assignment is incremental (Kafka's KIP-848, see `state.rs`): the strategy (`assign.rs`:
//! sticky, range, round-robin) computes each member's *target* when members or subscriptions
//! change; a member is handed a partition of its target only once no other member holds it,
//! and a member told to give a partition up keeps holding it until a heartbeat reports it
//! released (or the member is evicted). A membership change is committed before the answer
//! that depends on it leaves, so a partition is never held by two members, even across a
//! coordinator failover.
//!
//! Per `__consumer_offsets` partition led here, a [`coordinator::Slot`] holds the replayed
//! groups behind one async lock. Membership writes hold it until they commit (they are rare);
//! commits are checked under it, proposed, and applied after they commit without it (commits
//! move offsets forward only, so applying them in any order gives the replay's result);
//! reset and delete wait for commits in flight. A write whose outcome is unknown drops the
//! slot's state, and the next request replays the partition again.
//!
//! Compaction: after `checkpoint_records` records, the coordinator writes a checkpoint, one
//! batch restating every group of the partition, marked as a compaction point (batch attribute
//! `ATTRIBUTE_COMPACTION_POINT`); once it is committed every replica deletes the whole segments
//! below it (`raft` housekeeping), so the partition's size and a new coordinator's replay stay
//! bounded by the live state plus a few segments. A checkpoint is written with no commit in
//! flight, so nothing before it is left unstated.

mod assign;
mod coordinator;
pub mod state;
mod types;

use std::time::Duration;

pub use coordinator::{Coordinator, GroupView, LagView};
pub use state::{Answer, Committed, Heartbeat};
pub use types::{Strategy, TopicPartition};

use crate::log::LogError;
use crate::raft::ProposeError;
use crate::types::NodeId;

/// Group settings of the broker.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Partitions of `__consumer_offsets` (fixed once the topic exists).
    pub offsets_topic_partitions: u32,
    /// Its replication factor (capped at the cluster's node count).
    pub offsets_topic_replication_factor: u32,
    /// How often members heartbeat; long-polled heartbeats are answered after at most this.
    pub heartbeat_interval: Duration,
    pub session_timeout_default: Duration,
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    pub rebalance_timeout_default: Duration,
    /// How long a group write may take to commit before its outcome is unknown.
    pub write_timeout: Duration,
    /// Segment size of `__consumer_offsets` (at creation): the unit in which its log is
    /// compacted. Checkpoints may be a quarter of it.
    pub offsets_topic_segment_bytes: u64,
    /// Group records written to a partition since its last checkpoint before the coordinator
    /// writes a new one (all its groups restated in one batch, a compaction point).
    pub checkpoint_records: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            offsets_topic_partitions: 8,
            offsets_topic_replication_factor: 3,
            heartbeat_interval: Duration::from_secs(1),
            session_timeout_default: Duration::from_secs(10),
            session_timeout_min: Duration::from_secs(1),
            session_timeout_max: Duration::from_secs(300),
            rebalance_timeout_default: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            offsets_topic_segment_bytes: 32 << 20,
            checkpoint_records: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{0}")]
    InvalidArgument(String),
    /// The member is unknown, stale, or holds less than it thinks: it must rejoin.
    #[error("fenced: {0}")]
    Fenced(String),
    /// An operation that needs an empty group found members.
    #[error("{0}")]
    NotEmpty(String),
    #[error("unknown group '{0}'")]
    NotFound(String),
    /// Another node coordinates the group (or none is known yet, `leader: None`).
    #[error("this node is not the group's coordinator")]
    NotCoordinator { leader: Option<NodeId> },
    /// `__consumer_offsets` does not exist yet (the server creates it).
    #[error("the internal topic __consumer_offsets does not exist yet")]
    OffsetsTopicMissing,
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A group write may or may not have committed.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Group names: like topic names but longer is fine; no control characters.
pub fn validate_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("group name is empty".into());
    }
    if name.len() > 249 {
        return Err(format!("group name is {} bytes long; the limit is 249", name.len()));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(format!("group name contains the control character {bad:?}"));
    }
    Ok(())
}
