//! The data plane: Produce, Fetch (long poll and streaming), ListOffsets, Metadata.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weir_proto::v1::{self, list_offsets_request::Spec, weir_server::Weir};

use super::metrics::RequestMetrics;
use super::status::{from_cluster, from_log, from_propose, not_leader, out_of_range};
use super::{forwarded, Limits, PeerChannels, Stopping, FORWARDED_KEY, PEER_QUESTION_TIMEOUT};
use crate::cluster::{validate_topic_name, Cluster, PartitionReplica};
use crate::log::batch::{self, BatchKind};
use crate::raft::{read_log, Acks, Role};
use crate::types::{NodeId, Offset};

#[derive(Clone)]
pub struct DataService {
    pub cluster: Arc<Cluster>,
    pub limits: Arc<Limits>,
    pub stopping: Stopping,
    pub peers: Arc<PeerChannels>,
    pub metrics: Arc<RequestMetrics>,
}

impl DataService {
    fn replica(&self, topic: &str, partition: u32) -> Result<PartitionReplica, Status> {
        validate_topic_name(topic).map_err(Status::invalid_argument)?;
        self.cluster.partition(topic, partition).map_err(from_cluster)
    }

    fn address_of(&self, node: NodeId) -> Option<String> {
        self.cluster.client_address(node)
    }

    /// The replica may serve: it has not failed.
    fn serving_check(&self, replica: &PartitionReplica) -> Result<(), Status> {
        match replica.group.progress().failure {
            Some(reason) => Err(Status::unavailable(format!(
                "partition {}/{} is out of service on this node: {reason}",
                replica.topic, replica.partition
            ))),
            None => Ok(()),
        }
    }

    /// Only the leader serves: followers answer with where the leader is.
    fn leader_check(&self, replica: &PartitionReplica) -> Result<(), Status> {
        self.serving_check(replica)?;
        let progress = replica.group.progress();
        if progress.role != Role::Leader {
            let Some(leader) = progress.leader.filter(|l| *l != self.cluster.node_id()) else {
                return Err(Status::unavailable(format!(
                    "partition {}/{} has no leader yet; retry shortly",
                    replica.topic, replica.partition
                )));
            };
            return Err(not_leader(Some(leader), self.address_of(leader).as_deref()));
        }
        Ok(())
    }

    /// Reads committed batches at `offset`, waiting up to `wait` for some to arrive; from the
    /// leader, or with `from_replica` from whichever replica this node holds (see
    /// `FetchRequest.from_replica`).
    async fn fetch_once(
        &self,
        replica: &PartitionReplica,
        offset: u64,
        max_bytes: usize,
        wait: Duration,
        from_replica: bool,
    ) -> Result<v1::FetchResponse, Status> {
        let mut progress = replica.group.watch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if from_replica {
                self.serving_check(replica)?;
            } else {
                self.leader_check(replica)?;
            }
            let current = progress.borrow_and_update().clone();
            // A follower may not have seen the commit of what the leader already served.
            let behind = from_replica && current.role != Role::Leader && offset > current.high_watermark.0;
            if offset < current.log_start.0 || (offset > current.high_watermark.0 && !behind) {
                return Err(out_of_range(offset, current.log_start, current.high_watermark));
            }
            if offset < current.high_watermark.0 {
                let chunk = read_log(replica.group.log())
                    .read(Offset(offset), current.high_watermark, max_bytes)
                    .map_err(|error| {
                        // Damaged data is never served; the replica gets repaired from a peer.
                        replica.group.report_damage(&error);
                        from_log(error)
                    })?;
                if !chunk.slices.is_empty() {
                    return Ok(v1::FetchResponse {
                        batches: concat(chunk.slices),
                        next_offset: chunk.next_offset.0,
                        high_watermark: current.high_watermark.0,
                        log_start_offset: current.log_start.0,
                    });
                }
            }
            let empty = v1::FetchResponse {
                batches: Bytes::new(),
                next_offset: offset,
                high_watermark: current.high_watermark.0,
                log_start_offset: current.log_start.0,
            };
            // A stopping server answers long polls at once (with what there is: nothing yet).
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, progress.changed()) => match changed {
                    Err(_) => return Ok(empty),
                    Ok(Err(_)) => return Err(Status::unavailable("the partition replica stopped")),
                    Ok(Ok(())) => continue,
                },
                _ = self.stopping.clone().wait() => return Ok(empty),
            }
        }
    }

    fn fetch_params(&self, request: &v1::FetchRequest) -> (usize, Duration) {
        let max_bytes = match request.max_bytes {
            0 => self.limits.fetch_bytes_max,
            n => (n as usize).min(self.limits.fetch_bytes_max),
        };
        let wait = Duration::from_millis(u64::from(request.max_wait_ms).min(self.limits.fetch_wait_ms_max));
        (max_bytes, wait)
    }
}

/// One buffer from the read's runs. A single run (the usual case) is passed on without a copy:
/// the response encoder copies it once from the mapped segment into the network buffer.
fn concat(slices: Vec<Bytes>) -> Bytes {
    if slices.len() == 1 {
        return slices.into_iter().next().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(slices.iter().map(Bytes::len).sum());
    slices.iter().for_each(|s| buf.extend_from_slice(s));
    buf.freeze()
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<v1::FetchResponse, Status>> + Send>>;

impl DataService {
    /// Validates, proposes and waits for the commit of one produced batch.
    async fn produce_once(&self, request: v1::ProduceRequest) -> Result<v1::ProduceResponse, Status> {
        super::admin::reject_internal(&request.topic)?;
        let replica = self.replica(&request.topic, request.partition)?;
        let limit = replica.batch_bytes_max as usize;
        if request.batch.len() > limit {
            return Err(Status::resource_exhausted(format!(
                "batch of {} bytes exceeds batch_bytes_max of topic '{}' ({limit} bytes)",
                request.batch.len(),
                request.topic
            )));
        }
        let header = batch::validate(&request.batch, limit)
            .map_err(|error| Status::invalid_argument(format!("invalid record batch: {error}")))?;
        if header.attributes != 0 {
            return Err(Status::invalid_argument(format!(
                "batch attributes {:#06x} are reserved for the broker (no compression codec is supported)",
                header.attributes
            )));
        }
        if header.kind != BatchKind::Records || header.record_count == 0 {
            return Err(Status::invalid_argument(
                "a produced batch must be a records batch with at least one record",
            ));
        }
        self.leader_check(&replica)?;
        let acks = match v1::Acks::try_from(request.acks) {
            Ok(v1::Acks::Leader) => Acks::Leader,
            Ok(v1::Acks::All) => Acks::All,
            Err(_) => return Err(Status::invalid_argument(format!("unknown acks value {}", request.acks))),
        };
        let timeout = match request.timeout_ms {
            0 => self.limits.produce_timeout,
            ms => Duration::from_millis(u64::from(ms)).min(self.limits.produce_timeout),
        };
        let address = |node| self.address_of(node);
        let pending = replica
            .group
            .propose(request.batch.to_vec(), acks)
            .map_err(|e| from_propose(e, address))?;
        let committed = match tokio::time::timeout(timeout, pending).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "the batch was not committed within {timeout:?}; it may or may not be in the log"
                )))
            }
            Ok(Err(_)) => return Err(Status::aborted("the partition replica stopped; the outcome is unknown")),
            Ok(Ok(result)) => result.map_err(|e| from_propose(e, address))?,
        };
        Ok(v1::ProduceResponse {
            base_offset: committed.base_offset.0,
            record_count: header.record_count,
            high_watermark: replica.group.progress().high_watermark.0.max(committed.next_offset.0),
        })
    }

    /// Opens a FetchStream: a task long-polls the partition and sends what arrives.
    fn open_fetch_stream(&self, request: v1::FetchRequest) -> Result<FetchStream, Status> {
        let replica = self.replica(&request.topic, request.partition)?;
        if request.from_replica {
            self.serving_check(&replica)?;
        } else {
            self.leader_check(&replica)?;
        }
        let (max_bytes, _) = self.fetch_params(&request);
        // A bounded channel: a client that stops reading stops the reads, nothing piles up.
        let (sender, receiver) = mpsc::channel(self.limits.stream_buffer_responses);
        let service = self.clone();
        tokio::spawn(async move {
            let mut offset = request.offset;
            let poll = Duration::from_millis(service.limits.fetch_wait_ms_max);
            loop {
                // A client that goes away ends the task at once, not after the next long poll.
                let result = tokio::select! {
                    result = service.fetch_once(&replica, offset, max_bytes, poll, request.from_replica) => result,
                    _ = sender.closed() => return,
                    _ = service.stopping.clone().wait() => Err(Status::unavailable("the broker is shutting down")),
                };
                let stop = match &result {
                    Ok(response) if response.batches.is_empty() => continue,
                    Ok(response) => {
                        offset = response.next_offset;
                        service.metrics.fetch_bytes.inc_by(response.batches.len() as u64);
                        false
                    }
                    Err(_) => true,
                };
                if sender.send(result).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

#[tonic::async_trait]
impl Weir for DataService {
    async fn produce(&self, request: Request<v1::ProduceRequest>) -> Result<Response<v1::ProduceResponse>, Status> {
        let started = Instant::now();
        let bytes = request.get_ref().batch.len() as u64;
        let result = self.produce_once(request.into_inner()).await;
        let metrics = &self.metrics;
        match &result {
            Ok(response) => {
                metrics.produce_bytes.inc_by(bytes);
                metrics.produce_records.inc_by(u64::from(response.record_count));
                metrics.produce.record(started, tonic::Code::Ok);
            }
            Err(status) => metrics.produce.record(started, status.code()),
        }
        result.map(Response::new)
    }

    async fn fetch(&self, request: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = match self.replica(&request.topic, request.partition) {
            Ok(replica) => {
                let (max_bytes, wait) = self.fetch_params(&request);
                self.fetch_once(&replica, request.offset, max_bytes, wait, request.from_replica)
                    .await
            }
            Err(status) => Err(status),
        };
        match &result {
            Ok(response) => {
                self.metrics.fetch_bytes.inc_by(response.batches.len() as u64);
                self.metrics.fetch.record(started, tonic::Code::Ok);
            }
            Err(status) => self.metrics.fetch.record(started, status.code()),
        }
        result.map(Response::new)
    }

    type FetchStreamStream = FetchStream;

    async fn fetch_stream(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStreamStream>, Status> {
        let result = self.open_fetch_stream(request.into_inner());
        self.metrics
            .fetch_stream
            .count(result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        result.map(Response::new)
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let replica = self.replica(&request.topic, request.partition)?;
        self.leader_check(&replica)?;
        let progress = replica.group.progress();
        let offset = match request.spec {
            Some(Spec::Earliest(_)) => progress.log_start,
            None | Some(Spec::Latest(_)) => progress.high_watermark,
            Some(Spec::TimestampMs(timestamp)) => read_log(replica.group.log())
                .offset_for_timestamp(timestamp)
                .map_err(from_log)?
                .filter(|offset| *offset < progress.high_watermark)
                .unwrap_or(progress.high_watermark)
                .max(progress.log_start),
        };
        Ok(Response::new(v1::ListOffsetsResponse {
            offset: offset.0,
            log_start_offset: progress.log_start.0,
            high_watermark: progress.high_watermark.0,
        }))
    }

    async fn metadata(&self, request: Request<v1::MetadataRequest>) -> Result<Response<v1::MetadataResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED_KEY);
        let wanted = request.into_inner().topics;
        for name in &wanted {
            validate_topic_name(name).map_err(Status::invalid_argument)?;
        }
        let topics = self.cluster.with_state(|state| {
            state
                .topics
                .values()
                .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
                .map(|topic| (topic.name.clone(), topic.partitions.clone()))
                .collect::<Vec<_>>()
        });
        if let Some(missing) = wanted.iter().find(|w| !topics.iter().any(|(name, _)| name == *w)) {
            return Err(Status::not_found(format!("unknown topic '{missing}'")));
        }
        let mut topics: Vec<v1::TopicMetadata> = topics
            .into_iter()
            .map(|(name, partitions)| v1::TopicMetadata {
                partitions: partitions
                    .iter()
                    .map(|p| v1::PartitionMetadata {
                        partition: p.partition.0,
                        leader: self.leader_of(&name, p.partition.0).map_or(0, |l| l.0),
                        replicas: p.replicas.iter().map(|r| r.0).collect(),
                    })
                    .collect(),
                name,
            })
            .collect();
        if !was_forwarded {
            self.ask_replicas_for_leaders(&mut topics).await;
        }
        Ok(Response::new(v1::MetadataResponse {
            brokers: super::brokers(&self.cluster),
            topics,
            cluster_id: self.cluster.cluster_id().to_string(),
        }))
    }
}

impl DataService {
    fn leader_of(&self, topic: &str, partition: u32) -> Option<NodeId> {
        self.cluster.partition(topic, partition).ok()?.group.progress().leader
    }

    /// Fills in the leaders of partitions that have no replica here (replication factor below
    /// the node count) by asking, once each and concurrently, the node that is the first
    /// replica of such partitions; a node that does not answer in time leaves them unknown
    /// (the client retries).
    async fn ask_replicas_for_leaders(&self, topics: &mut [v1::TopicMetadata]) {
        let me = self.cluster.node_id().0;
        let mut questions: std::collections::BTreeMap<u64, Vec<String>> = std::collections::BTreeMap::new();
        for topic in topics.iter() {
            for partition in &topic.partitions {
                if partition.leader != 0 || partition.replicas.contains(&me) {
                    continue;
                }
                if let Some(first) = partition.replicas.first() {
                    let asked = questions.entry(*first).or_default();
                    if !asked.contains(&topic.name) {
                        asked.push(topic.name.clone());
                    }
                }
            }
        }
        let answers = questions.into_iter().filter_map(|(node, names)| {
            let mut client = v1::weir_client::WeirClient::new(self.peers.get(&NodeId(node))?.clone());
            Some(async move {
                let request = forwarded(v1::MetadataRequest { topics: names });
                let answer = tokio::time::timeout(PEER_QUESTION_TIMEOUT, client.metadata(request)).await;
                match answer {
                    Ok(Ok(response)) => Some((node, response.into_inner())),
                    _ => None,
                }
            })
        });
        for (node, answer) in futures::future::join_all(answers).await.into_iter().flatten() {
            for known in answer.topics {
                let Some(topic) = topics.iter_mut().find(|t| t.name == known.name) else {
                    continue;
                };
                for partition in topic.partitions.iter_mut().filter(|p| p.leader == 0) {
                    let answered = known.partitions.iter().find(|k| k.partition == partition.partition);
                    // Only a replica knows; its view counts for the partitions it holds.
                    if let Some(answered) = answered.filter(|a| a.leader != 0 && partition.replicas.contains(&node)) {
                        partition.leader = answered.leader;
                    }
                }
            }
        }
    }
}
