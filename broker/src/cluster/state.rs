//! The controller's replicated state machine: topics, their partitions' replica sets and Raft
//! groups, and topic configs. Commands are records in the controller group's log; every node
//! applies them in log order, so every node computes the same state.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{GroupId, NodeId, PartitionId, RaftIndex};

/// Per-topic settings; `None` takes the broker default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Delete sealed segments older than this; negative = keep forever.
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the partition is larger; negative = no limit.
    pub retention_bytes: Option<i64>,
    pub segment_bytes_max: Option<u64>,
    pub segment_age_ms_max: Option<u64>,
    pub batch_bytes_max: Option<u32>,
}

impl TopicConfig {
    /// `self` with the fields that `update` sets replaced.
    pub fn merged(&self, update: &TopicConfig) -> TopicConfig {
        TopicConfig {
            retention_ms: update.retention_ms.or(self.retention_ms),
            retention_bytes: update.retention_bytes.or(self.retention_bytes),
            segment_bytes_max: update.segment_bytes_max.or(self.segment_bytes_max),
            segment_age_ms_max: update.segment_age_ms_max.or(self.segment_age_ms_max),
            batch_bytes_max: update.batch_bytes_max.or(self.batch_bytes_max),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    pub partition: PartitionId,
    /// The partition's Raft group; never reused, so a re-created topic never meets old data.
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub name: String,
    pub replication_factor: u32,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionAssignment>,
}

/// A change to the cluster metadata, as stored in the controller log (JSON in one record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
        /// Nodes to place replicas on, in placement order.
        nodes: Vec<NodeId>,
    },
    AlterTopicConfig {
        name: String,
        config: TopicConfig,
    },
    DeleteTopic {
        name: String,
    },
}

/// Why a command did not change the state. Decided at apply time, so concurrent proposals are
/// judged in log order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// How many command outcomes are kept for proposers to read (snapshots keep them too).
const OUTCOMES_MAX: usize = 4096;

/// Version of the serialized state in a controller snapshot (see [`ClusterState::to_snapshot`]).
const SNAPSHOT_VERSION: u32 = 1;

/// Everything in the state is in a snapshot, the recent command outcomes included, so a node
/// restored from a snapshot answers a proposer waiting for a command at or below its index
/// like one that applied the command itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub topics: BTreeMap<String, TopicState>,
    /// Next partition group id; group 0 is the controller.
    next_group: u64,
    pub applied: RaftIndex,
    outcomes: VecDeque<(RaftIndex, Result<(), CommandError>)>,
}

/// A controller snapshot's data: the version of the state's layout, then the state.
#[derive(Serialize, Deserialize)]
struct SnapshotData<S> {
    version: u32,
    state: S,
}

impl ClusterState {
    pub fn apply(&mut self, index: RaftIndex, command: Command) {
        let outcome = self.apply_command(command);
        if let Err(error) = &outcome {
            tracing::info!(%index, %error, "controller command rejected");
        }
        self.applied = index;
        if self.outcomes.len() == OUTCOMES_MAX {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((index, outcome));
    }

    /// The state as a controller snapshot's data: JSON `{"version":1,"state":{...}}`.
    pub fn to_snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&SnapshotData {
            version: SNAPSHOT_VERSION,
            state: self,
        })
        .expect("the cluster state serializes (string keys, no floats)")
    }

    /// The state in a controller snapshot's data; an error names what is wrong with it.
    pub fn from_snapshot(data: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version = serde_json::from_slice::<Version>(data)
            .map_err(|error| format!("not a controller state: {error}"))?
            .version;
        if version != SNAPSHOT_VERSION {
            return Err(format!(
                "controller state of version {version}; this broker reads version {SNAPSHOT_VERSION}"
            ));
        }
        serde_json::from_slice::<SnapshotData<Self>>(data)
            .map(|data| data.state)
            .map_err(|error| format!("bad controller state: {error}"))
    }

    /// Whether `group` was ever allocated to a partition (it may have been deleted since).
    pub fn allocated(&self, group: GroupId) -> bool {
        group != GroupId::CONTROLLER && group.0 < self.next_group
    }

    /// Records that an entry without a command (a no-op) was applied.
    pub fn skip(&mut self, index: RaftIndex) {
        self.applied = index;
    }

    /// The outcome of the command at `index`, if it is still remembered.
    pub fn outcome(&self, index: RaftIndex) -> Option<Result<(), CommandError>> {
        self.outcomes
            .iter()
            .rev()
            .find(|(at, _)| *at == index)
            .map(|(_, outcome)| outcome.clone())
    }

    fn apply_command(&mut self, command: Command) -> Result<(), CommandError> {
        match command {
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                config,
                nodes,
            } => {
                if self.topics.contains_key(&name) {
                    return Err(CommandError::TopicExists(name));
                }
                if nodes.is_empty() || replication_factor == 0 || replication_factor as usize > nodes.len() {
                    return Err(CommandError::Invalid(format!(
                        "replication factor {replication_factor} with {} nodes",
                        nodes.len()
                    )));
                }
                let partitions = (0..partitions)
                    .map(|partition| {
                        self.next_group = self.next_group.max(1);
                        let group = GroupId(self.next_group);
                        self.next_group += 1;
                        PartitionAssignment {
                            partition: PartitionId(partition),
                            group,
                            replicas: place(&nodes, partition as usize, replication_factor as usize),
                        }
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicState {
                        name,
                        replication_factor,
                        config,
                        partitions,
                    },
                );
                Ok(())
            }
            Command::AlterTopicConfig { name, config } => {
                let topic = self.topics.get_mut(&name).ok_or(CommandError::UnknownTopic(name))?;
                topic.config = topic.config.merged(&config);
                Ok(())
            }
            Command::DeleteTopic { name } => self
                .topics
                .remove(&name)
                .map(|_| ())
                .ok_or(CommandError::UnknownTopic(name)),
        }
    }
}

impl ClusterState {
    /// `nodes` in the order a new topic should be placed on: rotated to start at the node that
    /// is the first replica (the preferred leader) of the fewest partitions, so that leaders
    /// stay spread across topics and not only within one. Chosen by the proposer and carried in
    /// the command, so applying it never depends on the code's placement policy.
    pub fn placement_order(&self, nodes: &[NodeId]) -> Vec<NodeId> {
        let led = |node: &NodeId| {
            self.topics
                .values()
                .flat_map(|topic| &topic.partitions)
                .filter(|p| p.replicas.first() == Some(node))
                .count()
        };
        let start = (0..nodes.len()).min_by_key(|at| (led(&nodes[*at]), *at)).unwrap_or(0);
        nodes[start..].iter().chain(&nodes[..start]).copied().collect()
    }
}

/// Replicas of a partition: `count` consecutive nodes starting at the partition number, so
/// replicas and (first-replica) leaders spread evenly.
fn place(nodes: &[NodeId], partition: usize, count: usize) -> Vec<NodeId> {
    (0..count).map(|i| nodes[(partition + i) % nodes.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            config: TopicConfig::default(),
            nodes: vec![NodeId(1)],
        }
    }

    #[test]
    fn commands_apply_in_order_with_outcomes() {
        let mut state = ClusterState::default();
        state.apply(RaftIndex(2), create("a", 3));
        state.apply(RaftIndex(3), create("a", 1));
        assert_eq!(state.outcome(RaftIndex(2)), Some(Ok(())));
        assert_eq!(
            state.outcome(RaftIndex(3)),
            Some(Err(CommandError::TopicExists("a".into())))
        );
        let groups: Vec<_> = state.topics["a"].partitions.iter().map(|p| p.group).collect();
        assert_eq!(groups, vec![GroupId(1), GroupId(2), GroupId(3)]);
        state.apply(RaftIndex(4), Command::DeleteTopic { name: "a".into() });
        state.apply(RaftIndex(5), create("a", 1));
        // Group ids are never reused, so a re-created topic starts from an empty log.
        assert_eq!(state.topics["a"].partitions[0].group, GroupId(4));
        let update = TopicConfig {
            retention_ms: Some(10),
            ..Default::default()
        };
        state.apply(
            RaftIndex(6),
            Command::AlterTopicConfig {
                name: "a".into(),
                config: update,
            },
        );
        assert_eq!(state.topics["a"].config.retention_ms, Some(10));
        state.apply(RaftIndex(7), Command::DeleteTopic { name: "zz".into() });
        assert!(matches!(
            state.outcome(RaftIndex(7)),
            Some(Err(CommandError::UnknownTopic(_)))
        ));
    }

    #[test]
    fn snapshot_round_trip_keeps_everything() {
        let mut state = ClusterState::default();
        state.apply(RaftIndex(2), create("a", 3));
        state.apply(RaftIndex(3), create("a", 1));
        state.apply(
            RaftIndex(4),
            Command::AlterTopicConfig {
                name: "a".into(),
                config: TopicConfig {
                    retention_bytes: Some(-1),
                    batch_bytes_max: Some(1 << 20),
                    ..Default::default()
                },
            },
        );
        state.apply(RaftIndex(5), create("b", 2));
        state.apply(RaftIndex(6), Command::DeleteTopic { name: "b".into() });
        state.skip(RaftIndex(7));
        let restored = ClusterState::from_snapshot(&state.to_snapshot()).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.applied, RaftIndex(7));
        assert_eq!(
            restored.outcome(RaftIndex(3)),
            Some(Err(CommandError::TopicExists("a".into())))
        );
        // Group ids continue after the snapshot: never reused.
        let mut restored = restored;
        restored.apply(RaftIndex(8), create("c", 1));
        assert_eq!(restored.topics["c"].partitions[0].group, GroupId(6));
        assert!(restored.allocated(GroupId(5)) && !restored.allocated(GroupId(7)));
    }

    #[test]
    fn bad_snapshots_are_errors() {
        assert!(ClusterState::from_snapshot(b"").is_err());
        assert!(ClusterState::from_snapshot(b"{\"version\":1}").is_err());
        let future = br#"{"version":2,"state":{}}"#;
        assert!(ClusterState::from_snapshot(future).unwrap_err().contains("version 2"));
        let mut data = ClusterState::default().to_snapshot();
        data.truncate(data.len() - 1);
        assert!(ClusterState::from_snapshot(&data).is_err());
    }

    #[test]
    fn placement_order_starts_where_fewest_partitions_lead() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let mut state = ClusterState::default();
        let mut leaders = std::collections::BTreeMap::new();
        for (at, partitions) in [1u32, 1, 1, 2, 1, 4].into_iter().enumerate() {
            let name = format!("t{at}");
            state.apply(
                RaftIndex(at as u64 + 1),
                Command::CreateTopic {
                    name: name.clone(),
                    partitions,
                    replication_factor: 3,
                    config: TopicConfig::default(),
                    nodes: state.placement_order(&nodes),
                },
            );
            for p in &state.topics[&name].partitions {
                *leaders.entry(p.replicas[0]).or_insert(0) += 1;
            }
        }
        // Ten partitions over three nodes: 4, 3, 3 in some order, never all on node 1.
        let mut counts: Vec<u32> = leaders.values().copied().collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![3, 3, 4], "{leaders:?}");
    }

    #[test]
    fn placement_spreads_replicas() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        assert_eq!(place(&nodes, 0, 3), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(place(&nodes, 4, 2), vec![NodeId(2), NodeId(3)]);
    }
}
