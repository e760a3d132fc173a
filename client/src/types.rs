//! Domain types for metadata and administration, converted by hand from and to the wire types
//! here, at the boundary, so that no `weir_proto` type appears in the client's public API.

use weir_proto::v1 as proto;

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
