//! The control plane: topic admin and cluster status. Changes go through the controller group.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use weir_proto::v1::{self, admin_client::AdminClient, admin_server::Admin};

use super::status::from_cluster;
use super::{forwarded, FORWARDED_KEY};
use crate::cluster::{validate_topic_name, Cluster, ClusterError, Command, TopicConfig, TopicState};
use crate::raft::read_log;
use crate::raft::ProposeError;

#[derive(Clone)]
pub struct AdminService {
    pub cluster: Arc<Cluster>,
    /// Tells which peers were heard from recently (node health in cluster status).
    pub transport: Arc<super::PeerTransport>,
    pub partitions_per_topic_max: u32,
    pub peers: Arc<super::PeerChannels>,
}

/// Proto config -> domain config, validated.
fn topic_config(config: Option<v1::TopicConfig>) -> Result<TopicConfig, Status> {
    let config = config.unwrap_or_default();
    if let Some(bytes) = config.segment_bytes_max {
        if !(64 << 10..=1 << 34).contains(&bytes) {
            return Err(Status::invalid_argument(format!(
                "segment_bytes_max {bytes} must be between 65536 (64 KiB) and 17179869184 (16 GiB)"
            )));
        }
    }
    if let Some(bytes) = config.batch_bytes_max {
        if !(1024..=64 << 20).contains(&bytes) {
            return Err(Status::invalid_argument(format!(
                "batch_bytes_max {bytes} must be between 1024 and 67108864 (64 MiB)"
            )));
        }
    }
    if let (Some(batch), Some(segment)) = (config.batch_bytes_max, config.segment_bytes_max) {
        if u64::from(batch) * 2 > segment {
            return Err(Status::invalid_argument(format!(
                "batch_bytes_max {batch} must be at most half of segment_bytes_max {segment}"
            )));
        }
    }
    Ok(TopicConfig {
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        segment_bytes_max: config.segment_bytes_max,
        segment_age_ms_max: config.segment_age_ms_max,
        batch_bytes_max: config.batch_bytes_max,
    })
}

/// Topics whose names start with `__` belong to the broker (`__consumer_offsets`): clients
/// may read them, not create, delete or write them.
pub(super) fn reject_internal(name: &str) -> Result<(), Status> {
    if name.starts_with("__") {
        return Err(Status::invalid_argument(format!(
            "topic '{name}' is internal: names starting with '__' are reserved for the broker"
        )));
    }
    Ok(())
}

fn to_proto_config(config: &TopicConfig) -> v1::TopicConfig {
    v1::TopicConfig {
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        segment_bytes_max: config.segment_bytes_max,
        segment_age_ms_max: config.segment_age_ms_max,
        batch_bytes_max: config.batch_bytes_max,
    }
}

impl AdminService {
    /// The controller leader's admin service, when this node does not lead the controller and
    /// the request was not forwarded already.
    async fn controller_leader(&self, was_forwarded: bool, error: &ClusterError) -> Option<AdminClient<Channel>> {
        let ClusterError::Propose(ProposeError::NotLeader { leader: Some(leader) }) = error else {
            return None;
        };
        if was_forwarded || *leader == self.cluster.node_id() {
            return None;
        }
        let address = self.cluster.nodes().get(leader)?;
        AdminClient::connect(format!("http://{address}")).await.ok()
    }

    fn topic(&self, name: &str) -> Result<TopicState, Status> {
        validate_topic_name(name).map_err(Status::invalid_argument)?;
        self.cluster
            .with_state(|state| state.topics.get(name).cloned())
            .ok_or_else(|| Status::not_found(format!("unknown topic '{name}'")))
    }

    fn describe(&self, topic: &TopicState) -> v1::TopicDescription {
        let partitions = topic
            .partitions
            .iter()
            .map(|assignment| {
                let mut description = v1::PartitionDescription {
                    partition: assignment.partition.0,
                    replicas: assignment.replicas.iter().map(|r| r.0).collect(),
                    ..Default::default()
                };
                if let Ok(replica) = self.cluster.partition(&topic.name, assignment.partition.0) {
                    let progress = replica.group.progress();
                    let log = read_log(replica.group.log());
                    description.leader = progress.leader.map_or(0, |l| l.0);
                    description.log_start_offset = progress.log_start.0;
                    description.high_watermark = progress.high_watermark.0;
                    description.size_bytes = log.size_bytes();
                    description.segments = log.segment_count() as u32;
                }
                description
            })
            .collect();
        v1::TopicDescription {
            name: topic.name.clone(),
            replication_factor: topic.replication_factor,
            config: Some(to_proto_config(&self.cluster.effective_topic_config(&topic.config))),
            partitions,
        }
    }

    /// Creates a topic (forwarded to the controller leader when this node does not lead it)
    /// and waits until its partitions have leaders.
    pub(super) async fn create(
        &self,
        request: v1::CreateTopicRequest,
        was_forwarded: bool,
    ) -> Result<v1::CreateTopicResponse, Status> {
        let original = request.clone();
        validate_topic_name(&request.name).map_err(Status::invalid_argument)?;
        if request.partitions == 0 || request.partitions > self.partitions_per_topic_max {
            return Err(Status::invalid_argument(format!(
                "partitions must be between 1 and {} (got {})",
                self.partitions_per_topic_max, request.partitions
            )));
        }
        let nodes: Vec<_> = self.cluster.nodes().keys().copied().collect();
        let replication_factor = request.replication_factor.max(1);
        if replication_factor as usize > nodes.len() {
            return Err(Status::invalid_argument(format!(
                "replication factor {replication_factor} exceeds the {} node(s) of this cluster",
                nodes.len()
            )));
        }
        let config = topic_config(request.config)?;
        let command = Command::CreateTopic {
            name: request.name.clone(),
            partitions: request.partitions,
            replication_factor,
            config,
            nodes: self.cluster.with_state(|state| state.placement_order(&nodes)),
        };
        if let Err(error) = self.cluster.propose(command).await {
            return match self.controller_leader(was_forwarded, &error).await {
                Some(mut leader) => Ok(leader.create_topic(forwarded(original)).await?.into_inner()),
                None => Err(from_cluster(error)),
            };
        }
        self.wait_ready(&request.name, request.partitions).await;
        let topic = self.topic(&request.name)?;
        Ok(v1::CreateTopicResponse {
            topic: Some(self.describe(&topic)),
        })
    }

    /// Waits until every partition of a new topic has a running replica with a leader, so a
    /// producer that starts right after create_topic returns is not refused.
    async fn wait_ready(&self, name: &str, partitions: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for partition in 0..partitions {
            while tokio::time::Instant::now() < deadline {
                // Partitions without a replica here are reported by the nodes that have one.
                let ready = match self.cluster.partition(name, partition) {
                    Ok(replica) => replica.group.progress().leader.is_some(),
                    Err(ClusterError::NotReplica { .. }) => true,
                    Err(_) => false,
                };
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED_KEY);
        let request = request.into_inner();
        // Checked where the request arrives; a forwarded one may be the broker's own.
        if !was_forwarded {
            reject_internal(&request.name)?;
        }
        self.create(request, was_forwarded).await.map(Response::new)
    }

    async fn list_topics(
        &self,
        _request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let topics = self.cluster.with_state(|state| {
            state
                .topics
                .values()
                .filter(|t| !t.name.starts_with("__"))
                .map(|t| v1::TopicSummary {
                    name: t.name.clone(),
                    partitions: t.partitions.len() as u32,
                    replication_factor: t.replication_factor,
                })
                .collect()
        });
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::TopicDescription>, Status> {
        let topic = self.topic(&request.into_inner().name)?;
        Ok(Response::new(self.describe(&topic)))
    }

    async fn alter_topic_config(
        &self,
        request: Request<v1::AlterTopicConfigRequest>,
    ) -> Result<Response<v1::TopicDescription>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED_KEY);
        let request = request.into_inner();
        let original = request.clone();
        let current = self.topic(&request.name)?;
        let update = topic_config(request.set)?;
        if request.name.starts_with("__") && (update.retention_ms.is_some() || update.retention_bytes.is_some()) {
            return Err(Status::invalid_argument(format!(
                "topic '{}' is internal and keeps everything: its retention cannot be changed",
                request.name
            )));
        }
        let merged = self.cluster.effective_topic_config(&current.config.merged(&update));
        if let (Some(batch), Some(segment)) = (merged.batch_bytes_max, merged.segment_bytes_max) {
            if u64::from(batch) * 2 > segment {
                return Err(Status::invalid_argument(format!(
                    "batch_bytes_max {batch} must be at most half of segment_bytes_max {segment}"
                )));
            }
        }
        let command = Command::AlterTopicConfig {
            name: request.name.clone(),
            config: update,
        };
        if let Err(error) = self.cluster.propose(command).await {
            return match self.controller_leader(was_forwarded, &error).await {
                Some(mut leader) => leader.alter_topic_config(forwarded(original)).await,
                None => Err(from_cluster(error)),
            };
        }
        let topic = self.topic(&request.name)?;
        Ok(Response::new(self.describe(&topic)))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED_KEY);
        let original = request.into_inner();
        reject_internal(&original.name)?;
        self.topic(&original.name)?;
        let command = Command::DeleteTopic {
            name: original.name.clone(),
        };
        if let Err(error) = self.cluster.propose(command).await {
            return match self.controller_leader(was_forwarded, &error).await {
                Some(mut leader) => leader.delete_topic(forwarded(original)).await,
                None => Err(from_cluster(error)),
            };
        }
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    /// The cluster as every node sees it: this node's view, with each partition's replication
    /// state taken from its leader (asked with a forwarded request, 1 s at most) and nodes that
    /// are connected but do not answer marked "no answer".
    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED_KEY);
        let mut status = self.local_status().await;
        if !was_forwarded {
            self.merge_leader_views(&mut status).await;
        }
        Ok(Response::new(status))
    }
}

impl AdminService {
    async fn merge_leader_views(&self, status: &mut v1::ClusterStatusResponse) {
        let questions = self.peers.iter().map(|(node, channel)| {
            let mut client = v1::admin_client::AdminClient::new(channel.clone());
            async move {
                let request = forwarded(v1::ClusterStatusRequest {});
                let answer = tokio::time::timeout(super::PEER_QUESTION_TIMEOUT, client.cluster_status(request)).await;
                (*node, answer.ok().and_then(Result::ok).map(Response::into_inner))
            }
        });
        for (node, answer) in futures::future::join_all(questions).await {
            let Some(answer) = answer else {
                if let Some(entry) = status.nodes.iter_mut().find(|n| n.node_id == node.0 && n.state == "up") {
                    entry.state = "no answer".to_string();
                }
                continue;
            };
            for remote in answer.partitions.into_iter().filter(|p| p.leader == node.0) {
                let local = status
                    .partitions
                    .iter_mut()
                    .find(|p| p.topic == remote.topic && p.partition == remote.partition);
                if let Some(local) = local {
                    *local = remote;
                }
            }
        }
    }

    /// This node's view: leaders and high watermarks of its replicas, and for the partitions it
    /// leads, how far each follower is.
    async fn local_status(&self) -> v1::ClusterStatusResponse {
        let me = self.cluster.node_id();
        let nodes = self
            .cluster
            .client_addresses()
            .into_iter()
            .map(|(id, address)| v1::NodeStatus {
                node_id: id.0,
                address,
                state: match self.transport.is_up(id) {
                    _ if id == me => "up",
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "unknown",
                }
                .to_string(),
            })
            .collect();
        let topics = self
            .cluster
            .with_state(|state| state.topics.values().cloned().collect::<Vec<_>>());
        let mut partitions = Vec::new();
        for topic in &topics {
            for assignment in &topic.partitions {
                let mut status = v1::PartitionStatus {
                    topic: topic.name.clone(),
                    partition: assignment.partition.0,
                    replicas: assignment.replicas.iter().map(|r| r.0).collect(),
                    ..Default::default()
                };
                if let Ok(replica) = self.cluster.partition(&topic.name, assignment.partition.0) {
                    let progress = replica.group.progress();
                    status.leader = progress.leader.map_or(0, |l| l.0);
                    status.high_watermark = progress.high_watermark.0;
                    status.log_start_offset = progress.log_start.0;
                    if progress.failure.is_some() || progress.repairing {
                        status.lagging_replicas.push(me.0);
                    }
                    if let Some(replication) = replica.group.replication().await {
                        for (node, matched) in replication.followers {
                            let behind = replication.commit_index.0.saturating_sub(matched.0);
                            status.replica_lag.insert(node.0, behind);
                            if behind > 0 {
                                status.lagging_replicas.push(node.0);
                            }
                        }
                    }
                }
                partitions.push(status);
            }
        }
        v1::ClusterStatusResponse {
            cluster_id: self.cluster.cluster_id().to_string(),
            node_id: me.0,
            nodes,
            partitions,
        }
    }
}
