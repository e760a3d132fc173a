//! The `Groups` service: consumer-group requests, converted to the `group` layer's terms.
//! A request that finds no `__consumer_offsets` topic creates it (through the controller) and
//! runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use weir_proto::v1::{self, groups_server::Groups, AssignmentStrategy};
use weir_proto::OFFSETS_TOPIC;

use super::admin::AdminService;
use super::status::from_group;
use super::{forwarded, Stopping, FORWARDED_KEY, PEER_QUESTION_TIMEOUT};
use crate::cluster::{validate_topic_name, Cluster};
use crate::group::{
    validate_group_name, Committed, Coordinator, GroupError, GroupView, Heartbeat, Strategy, TopicPartition,
};
use crate::types::NodeId;

/// Largest metadata string stored with a committed offset.
const COMMIT_METADATA_BYTES_MAX: usize = 4096;
/// How long the request that created `__consumer_offsets` waits for its coordinator.
const OFFSETS_TOPIC_READY_WAIT: Duration = Duration::from_secs(5);
/// Longest member id or instance id.
const MEMBER_ID_BYTES_MAX: usize = 255;
/// Most partitions one commit or reset may carry.
const OFFSETS_PER_REQUEST_MAX: usize = 100_000;

#[derive(Clone)]
pub struct GroupService {
    pub coordinator: Arc<Coordinator>,
    pub cluster: Arc<Cluster>,
    pub admin: AdminService,
    pub stopping: Stopping,
}

impl GroupService {
    fn status(&self, error: GroupError) -> Status {
        from_group(error, |node| self.cluster.client_address(node))
    }

    /// Runs a group operation; creates `__consumer_offsets` first when it does not exist yet.
    async fn run<T, F, Fut>(&self, operation: F) -> Result<T, Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, GroupError>>,
    {
        match operation().await {
            Err(GroupError::OffsetsTopicMissing) => {
                self.create_offsets_topic().await?;
                // The new partitions elect leaders and commit in their term first: wait for it
                // (bounded) rather than answer the very first group request "unavailable".
                let deadline = tokio::time::Instant::now() + OFFSETS_TOPIC_READY_WAIT;
                loop {
                    match operation().await {
                        Err(GroupError::Unavailable(_) | GroupError::OffsetsTopicMissing)
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        result => return result.map_err(|e| self.status(e)),
                    }
                }
            }
            result => result.map_err(|e| self.status(e)),
        }
    }

    async fn create_offsets_topic(&self) -> Result<(), Status> {
        let config = self.coordinator.config();
        let nodes = self.cluster.nodes().len().max(1) as u32;
        let request = v1::CreateTopicRequest {
            name: OFFSETS_TOPIC.to_string(),
            partitions: config.offsets_topic_partitions,
            replication_factor: config.offsets_topic_replication_factor.min(nodes),
            // Groups are rebuilt by replaying the partition from its start: nothing may be
            // deleted by retention, whatever the broker's defaults say.
            // It is compacted instead (see `group`), in whole segments; a checkpoint of all its
            // groups is one batch of up to a quarter segment.
            config: Some(v1::TopicConfig {
                retention_ms: Some(-1),
                retention_bytes: Some(-1),
                segment_bytes_max: Some(config.offsets_topic_segment_bytes),
                batch_bytes_max: Some((config.offsets_topic_segment_bytes / 4).min(64 << 20) as u32),
                ..Default::default()
            }),
        };
        tracing::info!(
            partitions = request.partitions,
            replication_factor = request.replication_factor,
            "creating {OFFSETS_TOPIC}"
        );
        match self.admin.create(request, false).await {
            Err(status) if status.code() != tonic::Code::AlreadyExists => Err(status),
            _ => Ok(()),
        }
    }
}

fn group_name(name: &str) -> Result<(), Status> {
    validate_group_name(name).map_err(Status::invalid_argument)
}

fn strategy_from(value: i32) -> Result<Strategy, Status> {
    match AssignmentStrategy::try_from(value) {
        Ok(AssignmentStrategy::Sticky) => Ok(Strategy::Sticky),
        Ok(AssignmentStrategy::Range) => Ok(Strategy::Range),
        Ok(AssignmentStrategy::RoundRobin) => Ok(Strategy::RoundRobin),
        Err(_) => Err(Status::invalid_argument(format!("unknown assignment strategy {value}"))),
    }
}

fn strategy_to(strategy: Strategy) -> AssignmentStrategy {
    match strategy {
        Strategy::Sticky => AssignmentStrategy::Sticky,
        Strategy::Range => AssignmentStrategy::Range,
        Strategy::RoundRobin => AssignmentStrategy::RoundRobin,
    }
}

fn partitions_from(list: Vec<v1::TopicPartitions>) -> Result<BTreeSet<TopicPartition>, Status> {
    let mut set = BTreeSet::new();
    for entry in list {
        validate_topic_name(&entry.topic).map_err(Status::invalid_argument)?;
        set.extend(
            entry
                .partitions
                .into_iter()
                .map(|p| TopicPartition::new(entry.topic.clone(), p)),
        );
    }
    Ok(set)
}

fn partitions_to<'a>(set: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<v1::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in set {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| v1::TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn offsets_from(list: Vec<v1::CommitOffset>) -> Result<Vec<(TopicPartition, Committed)>, Status> {
    if list.len() > OFFSETS_PER_REQUEST_MAX {
        return Err(Status::invalid_argument(format!(
            "{} offsets in one request; the limit is {OFFSETS_PER_REQUEST_MAX}",
            list.len()
        )));
    }
    let mut seen = BTreeSet::new();
    list.into_iter()
        .map(|o| {
            validate_topic_name(&o.topic).map_err(Status::invalid_argument)?;
            if o.metadata.len() > COMMIT_METADATA_BYTES_MAX {
                return Err(Status::invalid_argument(format!(
                    "commit metadata of {} bytes exceeds the limit of {COMMIT_METADATA_BYTES_MAX}",
                    o.metadata.len()
                )));
            }
            let tp = TopicPartition::new(o.topic, o.partition);
            if !seen.insert(tp.clone()) {
                return Err(Status::invalid_argument(format!("partition {tp} appears twice")));
            }
            Ok((
                tp,
                Committed {
                    offset: o.offset,
                    metadata: o.metadata,
                },
            ))
        })
        .collect()
}

impl GroupService {
    fn describe_view(&self, view: GroupView) -> v1::GroupDescription {
        let subscribed: BTreeSet<String> = view.members.iter().flat_map(|(m, _)| m.topics.clone()).collect();
        let mut partitions: BTreeSet<TopicPartition> = view.offsets.keys().cloned().collect();
        self.cluster.with_state(|state| {
            for topic in &subscribed {
                if let Some(t) = state.topics.get(topic) {
                    partitions.extend((0..t.partitions.len() as u32).map(|p| TopicPartition::new(topic.clone(), p)));
                }
            }
        });
        let offsets = partitions
            .into_iter()
            .map(|tp| {
                let committed = view.offsets.get(&tp);
                let high_watermark = self
                    .cluster
                    .partition(&tp.topic, tp.partition)
                    .map_or(-1, |replica| replica.group.progress().high_watermark.0 as i64);
                let committed_offset = committed.map_or(-1, |c| c.offset as i64);
                let lag = match high_watermark {
                    -1 => -1,
                    hw => (hw - committed_offset.max(0)).max(0),
                };
                v1::GroupPartitionOffset {
                    member_id: view.owners.get(&tp).cloned().unwrap_or_default(),
                    metadata: committed.map(|c| c.metadata.clone()).unwrap_or_default(),
                    topic: tp.topic,
                    partition: tp.partition,
                    committed_offset,
                    high_watermark,
                    lag,
                }
            })
            .collect();
        v1::GroupDescription {
            group: view.name,
            state: view.state.to_string(),
            group_epoch: view.epoch,
            strategy: strategy_to(view.strategy) as i32,
            coordinator: self.cluster.node_id().0,
            members: view
                .members
                .into_iter()
                .map(|(m, age)| v1::GroupMember {
                    member_id: m.id,
                    instance_id: m.instance_id.unwrap_or_default(),
                    client_id: m.client_id,
                    member_epoch: m.epoch,
                    topics: m.topics,
                    assignment: partitions_to(&m.assigned),
                    revoking: partitions_to(&m.revoking),
                    last_heartbeat_ms_ago: age.as_millis() as u64,
                    away: m.away,
                })
                .collect(),
            offsets,
        }
    }

    /// Asks every other node for the groups it coordinates.
    async fn remote_groups(&self) -> (Vec<v1::GroupSummary>, Vec<u64>) {
        let me = self.cluster.node_id();
        let questions = self.cluster.nodes().keys().filter(|node| **node != me).map(|node| {
            let node = *node;
            let peer = self.admin.peers.get(&node).cloned();
            async move {
                let Some(channel) = peer else { return Err(node) };
                let mut client = v1::groups_client::GroupsClient::new(channel);
                let request = forwarded(v1::ListGroupsRequest {});
                match tokio::time::timeout(PEER_QUESTION_TIMEOUT, client.list_groups(request)).await {
                    Ok(Ok(response)) => Ok(response.into_inner().groups),
                    _ => Err(node),
                }
            }
        });
        let mut groups = Vec::new();
        let mut unanswered = Vec::new();
        for answer in futures::future::join_all(questions).await {
            match answer {
                Ok(list) => groups.extend(list),
                Err(NodeId(node)) => unanswered.push(node),
            }
        }
        (groups, unanswered)
    }
}

#[tonic::async_trait]
impl Groups for GroupService {
    async fn heartbeat(
        &self,
        request: Request<v1::GroupHeartbeatRequest>,
    ) -> Result<Response<v1::GroupHeartbeatResponse>, Status> {
        let request = request.into_inner();
        group_name(&request.group)?;
        if request.member_id.len() > MEMBER_ID_BYTES_MAX || request.instance_id.len() > MEMBER_ID_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "member and instance ids are limited to {MEMBER_ID_BYTES_MAX} bytes"
            )));
        }
        for topic in &request.topics {
            validate_topic_name(topic).map_err(Status::invalid_argument)?;
        }
        let heartbeat = Heartbeat {
            member_id: request.member_id,
            member_epoch: request.member_epoch,
            instance_id: Some(request.instance_id).filter(|id| !id.is_empty()),
            client_id: request.client_id,
            topics: request.topics,
            strategy: strategy_from(request.strategy)?,
            session_timeout_ms: u64::from(request.session_timeout_ms),
            rebalance_timeout_ms: u64::from(request.rebalance_timeout_ms),
            owned: partitions_from(request.owned)?,
        };
        let max_wait = Duration::from_millis(u64::from(request.max_wait_ms));
        let group = request.group;
        // A stopping server answers long polls at once.
        let answer = tokio::select! {
            answer = self.run(|| self.coordinator.heartbeat(&group, heartbeat.clone(), max_wait)) => answer?,
            _ = self.stopping.clone().wait() => return Err(Status::unavailable("the broker is shutting down")),
        };
        Ok(Response::new(v1::GroupHeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            assignment: partitions_to(&answer.assignment),
            heartbeat_interval_ms: self
                .coordinator
                .heartbeat_interval(answer.session_timeout_ms)
                .as_millis() as u32,
            group_epoch: answer.group_epoch,
            reconciling: answer.reconciling,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let request = request.into_inner();
        group_name(&request.group)?;
        let offsets = offsets_from(request.offsets)?;
        self.run(|| {
            self.coordinator.commit(
                &request.group,
                &request.member_id,
                request.member_epoch,
                offsets.clone(),
            )
        })
        .await?;
        Ok(Response::new(v1::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let request = request.into_inner();
        group_name(&request.group)?;
        let wanted = match request.partitions.is_empty() {
            true => None,
            false => Some(partitions_from(request.partitions)?.into_iter().collect::<Vec<_>>()),
        };
        let offsets = self
            .run(|| self.coordinator.fetch_offsets(&request.group, wanted.clone()))
            .await?;
        Ok(Response::new(v1::FetchOffsetsResponse {
            offsets: offsets
                .into_iter()
                .map(|(tp, committed)| v1::CommittedOffset {
                    topic: tp.topic,
                    partition: tp.partition,
                    offset: committed.as_ref().map_or(-1, |c| c.offset as i64),
                    metadata: committed.map(|c| c.metadata).unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED_KEY);
        let me = self.cluster.node_id().0;
        let mut groups: Vec<v1::GroupSummary> = self
            .coordinator
            .list_local()
            .await
            .into_iter()
            .map(|(group, state, members)| v1::GroupSummary {
                group,
                state: state.to_string(),
                members: members as u32,
                coordinator: me,
            })
            .collect();
        let mut unanswered_nodes = Vec::new();
        if !was_forwarded {
            let (remote, unanswered) = self.remote_groups().await;
            groups.extend(remote);
            unanswered_nodes = unanswered;
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        // During a leader change two nodes may both still list a group; keep one.
        groups.dedup_by(|a, b| a.group == b.group);
        Ok(Response::new(v1::ListGroupsResponse {
            groups,
            unanswered_nodes,
        }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::GroupDescription>, Status> {
        let request = request.into_inner();
        group_name(&request.group)?;
        let view = self.run(|| self.coordinator.describe(&request.group)).await?;
        Ok(Response::new(self.describe_view(view)))
    }

    async fn reset_offsets(
        &self,
        request: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        let request = request.into_inner();
        group_name(&request.group)?;
        let offsets = offsets_from(request.offsets)?;
        if offsets.is_empty() {
            return Err(Status::invalid_argument("a reset must name at least one partition"));
        }
        self.run(|| self.coordinator.reset(&request.group, offsets.clone()))
            .await?;
        Ok(Response::new(v1::ResetOffsetsResponse {}))
    }

    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        let request = request.into_inner();
        group_name(&request.group)?;
        self.run(|| self.coordinator.delete(&request.group)).await?;
        Ok(Response::new(v1::DeleteGroupResponse {}))
    }
}
