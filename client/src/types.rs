//! Domain types for metadata and administration, converted by hand from and to the wire types
//! here, at the boundary, so that no `weir_proto` type appears in the client's public API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use weir_proto::v1 as proto;

use crate::config::AssignmentStrategy;

/// One partition of one topic. Ordered by topic, then partition; shown as `topic/partition`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Partitions grouped per topic, as the wire carries them, from a set.
pub(crate) fn to_wire_partitions<'a>(
    partitions: impl IntoIterator<Item = &'a TopicPartition>,
) -> Vec<proto::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            proto::TopicPartitions {
                topic: topic.to_owned(),
                partitions,
            }
        })
        .collect()
}

/// The set of partitions that per-topic wire lists name.
pub(crate) fn from_wire_partitions(lists: Vec<proto::TopicPartitions>) -> BTreeSet<TopicPartition> {
    lists
        .into_iter()
        .flat_map(|list| {
            let topic = list.topic;
            list.partitions
                .into_iter()
                .map(move |partition| TopicPartition::new(topic.clone(), partition))
        })
        .collect()
}

/// Per-topic settings. `None` means "the broker's default" when creating a topic and "leave
/// unchanged" when altering one; a described topic has every field filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// Delete sealed segments whose newest record is older than this; -1 keeps them forever.
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the partition is larger than this; -1 = no limit.
    pub retention_bytes: Option<i64>,
    /// Roll the active segment at this size.
    pub segment_bytes_max: Option<u64>,
    /// Roll the active segment when its first record is older than this.
    pub segment_age_ms_max: Option<u64>,
    /// Largest record batch a producer may send to the topic.
    pub batch_bytes_max: Option<u32>,
}

impl TopicConfig {
    /// The names of the settings, as the CLI and the broker spell them.
    pub const KEYS: [&'static str; 5] = [
        "retention_ms",
        "retention_bytes",
        "segment_bytes_max",
        "segment_age_ms_max",
        "batch_bytes_max",
    ];

    /// Sets one setting by name from its decimal text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
            value
                .trim()
                .parse()
                .map_err(|_| format!("invalid value {value:?} for {key}"))
        }
        match key {
            "retention_ms" => self.retention_ms = Some(parse(key, value)?),
            "retention_bytes" => self.retention_bytes = Some(parse(key, value)?),
            "segment_bytes_max" => self.segment_bytes_max = Some(parse(key, value)?),
            "segment_age_ms_max" => self.segment_age_ms_max = Some(parse(key, value)?),
            "batch_bytes_max" => self.batch_bytes_max = Some(parse(key, value)?),
            _ => {
                return Err(format!(
                    "unknown topic config {key:?} (known: {})",
                    Self::KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// The settings that are set, as (name, decimal text) pairs in [`TopicConfig::KEYS`] order.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let values = [
            self.retention_ms.map(|v| v.to_string()),
            self.retention_bytes.map(|v| v.to_string()),
            self.segment_bytes_max.map(|v| v.to_string()),
            self.segment_age_ms_max.map(|v| v.to_string()),
            self.batch_bytes_max.map(|v| v.to_string()),
        ];
        Self::KEYS
            .iter()
            .zip(values)
            .filter_map(|(key, value)| value.map(|value| (*key, value)))
            .collect()
    }
}

impl From<proto::TopicConfig> for TopicConfig {
    fn from(config: proto::TopicConfig) -> Self {
        Self {
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes_max: config.segment_bytes_max,
            segment_age_ms_max: config.segment_age_ms_max,
            batch_bytes_max: config.batch_bytes_max,
        }
    }
}

impl From<TopicConfig> for proto::TopicConfig {
    fn from(config: TopicConfig) -> Self {
        Self {
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes_max: config.segment_bytes_max,
            segment_age_ms_max: config.segment_age_ms_max,
            batch_bytes_max: config.batch_bytes_max,
        }
    }
}

/// One line of a topic listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
}

impl From<proto::TopicSummary> for TopicSummary {
    fn from(summary: proto::TopicSummary) -> Self {
        Self {
            name: summary.name,
            partitions: summary.partitions,
            replication_factor: summary.replication_factor,
        }
    }
}

/// A partition as `describe_topic` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: u32,
    /// Node id of the leader; `None` while the partition has no leader.
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
    pub segments: u32,
}

impl From<proto::PartitionDescription> for PartitionDescription {
    fn from(partition: proto::PartitionDescription) -> Self {
        Self {
            partition: partition.partition,
            leader: leader(partition.leader),
            replicas: partition.replicas,
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
            size_bytes: partition.size_bytes,
            segments: partition.segments,
        }
    }
}

/// A topic's effective settings and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub replication_factor: u32,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionDescription>,
}

impl From<proto::TopicDescription> for TopicDescription {
    fn from(topic: proto::TopicDescription) -> Self {
        let mut partitions: Vec<PartitionDescription> = topic.partitions.into_iter().map(Into::into).collect();
        partitions.sort_by_key(|partition| partition.partition);
        Self {
            name: topic.name,
            replication_factor: topic.replication_factor,
            config: topic.config.map(Into::into).unwrap_or_default(),
            partitions,
        }
    }
}

/// A node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u64,
    pub address: String,
    /// "up", "down" or "unknown".
    pub state: String,
}

/// A partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Replicas behind the leader's commit, failed or repairing.
    pub lagging_replicas: Vec<u64>,
    /// Entries each follower is behind the leader's commit (empty when the leader could not
    /// be asked).
    pub replica_lag: std::collections::BTreeMap<u64, u64>,
}

impl PartitionStatus {
    /// Without a leader, or with a replica behind: fewer copies than asked for right now.
    pub fn is_under_replicated(&self) -> bool {
        self.leader.is_none() || !self.lagging_replicas.is_empty()
    }
}

/// The cluster as the answering node sees it, with each partition's replication state as its
/// leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: u64,
    pub nodes: Vec<NodeStatus>,
    pub partitions: Vec<PartitionStatus>,
}

impl From<proto::ClusterStatusResponse> for ClusterStatus {
    fn from(status: proto::ClusterStatusResponse) -> Self {
        let nodes = status
            .nodes
            .into_iter()
            .map(|node| NodeStatus {
                node_id: node.node_id,
                address: node.address,
                state: node.state,
            })
            .collect();
        let partitions = status
            .partitions
            .into_iter()
            .map(|partition| PartitionStatus {
                topic: partition.topic,
                partition: partition.partition,
                leader: leader(partition.leader),
                replicas: partition.replicas,
                high_watermark: partition.high_watermark,
                log_start_offset: partition.log_start_offset,
                lagging_replicas: partition.lagging_replicas,
                replica_lag: partition.replica_lag.into_iter().collect(),
            })
            .collect();
        Self {
            cluster_id: status.cluster_id,
            node_id: status.node_id,
            nodes,
            partitions,
        }
    }
}

/// A broker's id and the address clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: u64,
    pub address: String,
}

/// A partition's leader and replicas, as metadata gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: u32,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
}

/// A topic's partitions, sorted by partition number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub partitions: Vec<PartitionMetadata>,
}

/// What a Metadata request answers: brokers, topics and partition leaders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicMetadata>,
}

impl From<proto::MetadataResponse> for ClusterMetadata {
    fn from(metadata: proto::MetadataResponse) -> Self {
        let brokers = metadata
            .brokers
            .into_iter()
            .map(|broker| BrokerInfo {
                node_id: broker.node_id,
                address: broker.address,
            })
            .collect();
        let topics = metadata
            .topics
            .into_iter()
            .map(|topic| {
                let mut partitions: Vec<PartitionMetadata> = topic
                    .partitions
                    .into_iter()
                    .map(|partition| PartitionMetadata {
                        partition: partition.partition,
                        leader: leader(partition.leader),
                        replicas: partition.replicas,
                    })
                    .collect();
                partitions.sort_by_key(|partition| partition.partition);
                TopicMetadata {
                    name: topic.name,
                    partitions,
                }
            })
            .collect();
        Self {
            cluster_id: metadata.cluster_id,
            brokers,
            topics,
        }
    }
}

/// A consumer group's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may be committed).
    Empty,
    /// Every member holds its target assignment.
    Stable,
    /// Partitions are moving between members.
    Reconciling,
    /// A state this client does not know (a newer broker), as the broker spelled it.
    Other(String),
}

impl GroupState {
    pub fn as_str(&self) -> &str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Stable => "stable",
            GroupState::Reconciling => "reconciling",
            GroupState::Other(state) => state,
        }
    }
}

impl From<String> for GroupState {
    fn from(state: String) -> Self {
        match state.as_str() {
            "empty" => GroupState::Empty,
            "stable" => GroupState::Stable,
            "reconciling" => GroupState::Reconciling,
            _ => GroupState::Other(state),
        }
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a group listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: String,
    pub state: GroupState,
    pub members: u32,
    /// Node id of the group's coordinator.
    pub coordinator: u64,
}

/// Every group of the cluster, as far as the nodes answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupListing {
    /// Sorted by name.
    pub groups: Vec<GroupSummary>,
    /// Nodes that did not answer: the groups they coordinate are missing from `groups`.
    pub unanswered_nodes: Vec<u64>,
}

impl From<proto::ListGroupsResponse> for GroupListing {
    fn from(response: proto::ListGroupsResponse) -> Self {
        let mut groups: Vec<GroupSummary> = response
            .groups
            .into_iter()
            .map(|group| GroupSummary {
                group: group.group,
                state: group.state.into(),
                members: group.members,
                coordinator: group.coordinator,
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        let mut unanswered_nodes = response.unanswered_nodes;
        unanswered_nodes.sort_unstable();
        Self {
            groups,
            unanswered_nodes,
        }
    }
}

/// A member of a group, as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    /// The static member's instance id.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub member_epoch: i64,
    pub topics: Vec<String>,
    /// The partitions the member may read now, sorted.
    pub assignment: Vec<TopicPartition>,
    /// Partitions the member was told to give up and has not yet reported released.
    pub revoking: Vec<TopicPartition>,
    pub last_heartbeat_ms_ago: u64,
    /// A static member that left for a restart and keeps its partitions meanwhile.
    pub away: bool,
}

impl From<proto::GroupMember> for GroupMember {
    fn from(member: proto::GroupMember) -> Self {
        Self {
            member_id: member.member_id,
            instance_id: (!member.instance_id.is_empty()).then_some(member.instance_id),
            client_id: member.client_id,
            member_epoch: member.member_epoch,
            topics: member.topics,
            assignment: from_wire_partitions(member.assignment).into_iter().collect(),
            revoking: from_wire_partitions(member.revoking).into_iter().collect(),
            last_heartbeat_ms_ago: member.last_heartbeat_ms_ago,
            away: member.away,
        }
    }
}

/// A partition of a group: its committed offset, how far the log is ahead of it, who reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionOffset {
    pub topic: String,
    pub partition: u32,
    /// `None`: nothing committed.
    pub committed_offset: Option<u64>,
    /// Stored with the committed offset.
    pub metadata: String,
    /// `None` when neither the coordinator nor the partition's leader could tell.
    pub high_watermark: Option<u64>,
    /// `high_watermark - committed_offset` (from offset 0 when nothing is committed).
    pub lag: Option<u64>,
    /// The member that owns the partition.
    pub member_id: Option<String>,
}

impl GroupPartitionOffset {
    /// Fills in the high watermark (and so the lag) the coordinator could not tell.
    pub(crate) fn set_high_watermark(&mut self, high_watermark: u64) {
        self.high_watermark = Some(high_watermark);
        self.lag = Some(high_watermark.saturating_sub(self.committed_offset.unwrap_or(0)));
    }
}

impl From<proto::GroupPartitionOffset> for GroupPartitionOffset {
    fn from(offset: proto::GroupPartitionOffset) -> Self {
        let committed_offset = u64::try_from(offset.committed_offset).ok();
        let high_watermark = u64::try_from(offset.high_watermark).ok();
        // Recomputed rather than taken from the wire when the watermark is known, so it is
        // never negative (a committed offset past a truncated log).
        let lag = match high_watermark {
            Some(high) => Some(high.saturating_sub(committed_offset.unwrap_or(0))),
            None => u64::try_from(offset.lag).ok(),
        };
        Self {
            topic: offset.topic,
            partition: offset.partition,
            committed_offset,
            metadata: offset.metadata,
            high_watermark,
            lag,
            member_id: (!offset.member_id.is_empty()).then_some(offset.member_id),
        }
    }
}

/// A group's members, their assignments, and every partition's committed offset and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: GroupState,
    /// Bumps whenever members or subscriptions change.
    pub group_epoch: u64,
    pub strategy: AssignmentStrategy,
    /// Node id of the coordinator that answered.
    pub coordinator: u64,
    /// Sorted by member id.
    pub members: Vec<GroupMember>,
    /// Every partition of the subscribed topics and every partition with a committed offset,
    /// sorted by topic and partition.
    pub offsets: Vec<GroupPartitionOffset>,
}

impl GroupDescription {
    /// Total lag over the partitions whose lag is known.
    pub fn total_lag(&self) -> u64 {
        self.offsets.iter().filter_map(|offset| offset.lag).sum()
    }
}

impl From<proto::GroupDescription> for GroupDescription {
    fn from(description: proto::GroupDescription) -> Self {
        let strategy = proto::AssignmentStrategy::try_from(description.strategy)
            .map(AssignmentStrategy::from)
            .unwrap_or_default();
        let mut members: Vec<GroupMember> = description.members.into_iter().map(Into::into).collect();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        let mut offsets: Vec<GroupPartitionOffset> = description.offsets.into_iter().map(Into::into).collect();
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Self {
            group: description.group,
            state: description.state.into(),
            group_epoch: description.group_epoch,
            strategy,
            coordinator: description.coordinator,
            members,
            offsets,
        }
    }
}

/// A group's committed offset of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    /// The next offset to consume; `None`: nothing committed.
    pub offset: Option<u64>,
    pub metadata: String,
}

impl From<proto::CommittedOffset> for CommittedOffset {
    fn from(committed: proto::CommittedOffset) -> Self {
        Self {
            topic: committed.topic,
            partition: committed.partition,
            offset: u64::try_from(committed.offset).ok(),
            metadata: committed.metadata,
        }
    }
}

/// The wire uses node id 0 for "no leader".
fn leader(node_id: u64) -> Option<u64> {
    (node_id != 0).then_some(node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_config_parses_known_keys_only() {
        let mut config = TopicConfig::default();
        config.set("retention_ms", "-1").unwrap();
        config.set("batch_bytes_max", "1048576").unwrap();
        assert_eq!(config.retention_ms, Some(-1));
        assert_eq!(config.batch_bytes_max, Some(1_048_576));
        assert!(config.set("retention_ms", "soon").is_err());
        assert!(config.set("segment_bytes_max", "-5").is_err());
        assert!(config.set("colour", "1").is_err());
        assert_eq!(
            config.entries(),
            vec![
                ("retention_ms", "-1".to_owned()),
                ("batch_bytes_max", "1048576".to_owned())
            ]
        );
        let wire: proto::TopicConfig = config.clone().into();
        assert_eq!(TopicConfig::from(wire), config);
    }

    #[test]
    fn partitions_group_per_topic_on_the_wire() {
        let set: BTreeSet<TopicPartition> = [("b", 1), ("a", 2), ("b", 0), ("a", 0)]
            .into_iter()
            .map(|(topic, partition)| TopicPartition::new(topic, partition))
            .collect();
        let wire = to_wire_partitions(&set);
        assert_eq!(wire.len(), 2);
        assert_eq!((wire[0].topic.as_str(), wire[0].partitions.clone()), ("a", vec![0, 2]));
        assert_eq!((wire[1].topic.as_str(), wire[1].partitions.clone()), ("b", vec![0, 1]));
        assert_eq!(from_wire_partitions(wire), set);
        assert_eq!(TopicPartition::new("t", 3).to_string(), "t/3");
    }

    #[test]
    fn group_descriptions_convert_unknowns_to_none() {
        let description = GroupDescription::from(proto::GroupDescription {
            group: "g".into(),
            state: "reconciling".into(),
            group_epoch: 4,
            strategy: proto::AssignmentStrategy::RoundRobin as i32,
            coordinator: 2,
            members: vec![proto::GroupMember {
                member_id: "m1".into(),
                instance_id: String::new(),
                client_id: "c".into(),
                member_epoch: 7,
                topics: vec!["t".into()],
                assignment: vec![proto::TopicPartitions {
                    topic: "t".into(),
                    partitions: vec![1, 0],
                }],
                revoking: Vec::new(),
                last_heartbeat_ms_ago: 12,
                away: false,
            }],
            offsets: vec![
                proto::GroupPartitionOffset {
                    topic: "t".into(),
                    partition: 1,
                    committed_offset: -1,
                    metadata: String::new(),
                    high_watermark: 10,
                    lag: 10,
                    member_id: "m1".into(),
                },
                proto::GroupPartitionOffset {
                    topic: "t".into(),
                    partition: 0,
                    committed_offset: 5,
                    metadata: "m".into(),
                    high_watermark: -1,
                    lag: -1,
                    member_id: String::new(),
                },
            ],
        });
        assert_eq!(description.state, GroupState::Reconciling);
        assert_eq!(description.strategy, AssignmentStrategy::RoundRobin);
        let member = &description.members[0];
        assert_eq!(member.instance_id, None);
        assert_eq!(
            member.assignment,
            vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)]
        );
        let [first, second] = &description.offsets[..] else {
            panic!("two partitions")
        };
        assert_eq!((first.partition, first.committed_offset), (0, Some(5)));
        assert_eq!(
            (first.high_watermark, first.lag, first.member_id.as_deref()),
            (None, None, None)
        );
        assert_eq!(
            (second.committed_offset, second.high_watermark, second.lag),
            (None, Some(10), Some(10))
        );
        let mut first = first.clone();
        first.set_high_watermark(8);
        assert_eq!(first.lag, Some(3));
        first.set_high_watermark(2);
        assert_eq!(first.lag, Some(0), "never negative");
        assert_eq!(GroupState::from("later".to_owned()).as_str(), "later");
    }

    #[test]
    fn leader_zero_means_none() {
        let metadata = ClusterMetadata::from(proto::MetadataResponse {
            brokers: vec![proto::BrokerInfo {
                node_id: 1,
                address: "a:1".into(),
            }],
            topics: vec![proto::TopicMetadata {
                name: "t".into(),
                partitions: vec![
                    proto::PartitionMetadata {
                        partition: 1,
                        leader: 0,
                        replicas: vec![1],
                    },
                    proto::PartitionMetadata {
                        partition: 0,
                        leader: 1,
                        replicas: vec![1],
                    },
                ],
            }],
            cluster_id: "c".into(),
        });
        let partitions = &metadata.topics[0].partitions;
        assert_eq!(partitions[0].leader, Some(1));
        assert_eq!(partitions[1].leader, None);
    }
}
