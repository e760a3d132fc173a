//! A tiny in-process broker for the client's tests: one in-memory log per partition, served
//! over real gRPC on a loopback port, with knobs to inject errors and to move leadership.
//! It implements the wire contract only as far as the client's tests need it.

#![allow(dead_code, reason = "each test file uses a different part of the fake")]

pub mod groups;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use weir_proto::batch::{self, BatchReader};
use weir_proto::v1 as proto;
use weir_proto::v1::admin_server::{Admin, AdminServer};
use weir_proto::v1::groups_server::GroupsServer;
use weir_proto::v1::weir_server::{Weir, WeirServer};

#[derive(Default)]
pub struct Partition {
    /// Stored (stamped) batches in offset order.
    pub batches: Vec<Bytes>,
    pub next_offset: u64,
}

/// State shared by every fake node of one fake cluster.
#[derive(Default)]
pub struct Store {
    pub topics: Mutex<HashMap<String, Vec<Partition>>>,
    /// (node id, address) of every node.
    pub brokers: Mutex<Vec<(u64, String)>>,
    /// The node that really leads every partition.
    pub leader: AtomicU64,
    /// The leader that metadata advertises (may lag behind `leader`, as real metadata can).
    pub advertised_leader: AtomicU64,
    /// Errors to answer the next produce requests with, in order. DEADLINE_EXCEEDED is answered
    /// after the batch was stored, as a broker whose commit was slow would.
    pub produce_faults: Mutex<VecDeque<Status>>,
    pub produce_requests: AtomicUsize,
    pub appended: Notify,
    /// The consumer-group coordinator (on the node that leads every partition).
    pub coordinator: groups::Coordinator,
}

impl Store {
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let partitions = (0..partitions).map(|_| Partition::default()).collect();
        self.topics.lock().unwrap().insert(name.to_owned(), partitions);
    }

    pub fn fail_next_produce(&self, status: Status) {
        self.produce_faults.lock().unwrap().push_back(status);
    }

    /// Every stored record of a partition as (offset, value).
    pub fn values(&self, topic: &str, partition: u32) -> Vec<(u64, Bytes)> {
        let topics = self.topics.lock().unwrap();
        let mut values = Vec::new();
        for stored in &topics[topic][partition as usize].batches {
            let batch = BatchReader::new(stored.clone()).next().unwrap().unwrap();
            for record in batch.records().unwrap() {
                values.push((record.offset, record.value.unwrap_or_default()));
            }
        }
        values
    }

    fn check_leader(&self, node_id: u64) -> Result<(), Status> {
        let leader = self.leader.load(Ordering::SeqCst);
        if leader == node_id {
            return Ok(());
        }
        let mut status = Status::failed_precondition(format!("node {node_id} does not lead"));
        let brokers = self.brokers.lock().unwrap();
        if let Some((_, address)) = brokers.iter().find(|(id, _)| *id == leader) {
            status
                .metadata_mut()
                .insert("weir-leader", leader.to_string().parse().unwrap());
            status
                .metadata_mut()
                .insert("weir-leader-address", address.parse().unwrap());
        }
        Err(status)
    }

    fn append(&self, request: &proto::ProduceRequest) -> Result<proto::ProduceResponse, Status> {
        let header =
            batch::validate(&request.batch, 16 << 20).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let mut topics = self.topics.lock().unwrap();
        let partitions = topics
            .get_mut(&request.topic)
            .ok_or_else(|| Status::not_found("unknown topic"))?;
        let partition = partitions
            .get_mut(request.partition as usize)
            .ok_or_else(|| Status::not_found("unknown partition"))?;
        // Idempotent produce, as the broker does it: a batch equal in producer id, epoch and
        // sequence to the last one stored is answered with that one's offsets.
        if header.producer_id >= 0 {
            if let Some(last) = partition.batches.last() {
                let stored = batch::parse_header(last).map_err(|error| Status::internal(error.to_string()))?;
                let same = (stored.producer_id, stored.producer_epoch, stored.base_sequence)
                    == (header.producer_id, header.producer_epoch, header.base_sequence);
                if same {
                    return Ok(proto::ProduceResponse {
                        base_offset: stored.base_offset,
                        record_count: stored.record_count,
                        high_watermark: partition.next_offset,
                    });
                }
            }
        }
        let base_offset = partition.next_offset;
        let mut stored = request.batch.to_vec();
        batch::stamp(&mut stored, 1, partition.batches.len() as u64 + 1, base_offset);
        partition.batches.push(Bytes::from(stored));
        partition.next_offset += u64::from(header.record_count);
        self.appended.notify_waiters();
        Ok(proto::ProduceResponse {
            base_offset,
            record_count: header.record_count,
            high_watermark: partition.next_offset,
        })
    }

    fn read(&self, request: &proto::FetchRequest) -> Result<proto::FetchResponse, Status> {
        let topics = self.topics.lock().unwrap();
        let partition = topics
            .get(&request.topic)
            .and_then(|partitions| partitions.get(request.partition as usize))
            .ok_or_else(|| Status::not_found("unknown topic or partition"))?;
        if request.offset > partition.next_offset {
            let mut status = Status::out_of_range("offset beyond the high watermark");
            status
                .metadata_mut()
                .insert("weir-log-start-offset", "0".parse().unwrap());
            let end = partition.next_offset.to_string();
            status
                .metadata_mut()
                .insert("weir-high-watermark", end.parse().unwrap());
            return Err(status);
        }
        let mut batches = Vec::new();
        let mut next_offset = request.offset;
        for stored in &partition.batches {
            let header = batch::parse_header(stored).unwrap();
            if header.next_offset() <= request.offset {
                continue;
            }
            let limit = request.max_bytes as usize;
            if !batches.is_empty() && limit != 0 && batches.len() + stored.len() > limit {
                break;
            }
            batches.extend_from_slice(stored);
            next_offset = header.next_offset();
        }
        Ok(proto::FetchResponse {
            batches: Bytes::from(batches),
            next_offset,
            high_watermark: partition.next_offset,
            log_start_offset: 0,
        })
    }
}

/// One node of the fake cluster.
pub struct FakeNode {
    pub node_id: u64,
    pub store: Arc<Store>,
}

#[tonic::async_trait]
impl Weir for FakeNode {
    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceResponse>, Status> {
        self.store.produce_requests.fetch_add(1, Ordering::SeqCst);
        self.store.check_leader(self.node_id)?;
        let request = request.into_inner();
        let fault = self.store.produce_faults.lock().unwrap().pop_front();
        match fault {
            Some(status) if status.code() == tonic::Code::DeadlineExceeded => {
                self.store.append(&request)?;
                Err(status)
            }
            Some(status) => Err(status),
            None => self.store.append(&request).map(Response::new),
        }
    }

    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<proto::FetchResponse>, Status> {
        self.store.check_leader(self.node_id)?;
        let request = request.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            let appended = self.store.appended.notified();
            let response = self.store.read(&request)?;
            if !response.batches.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(response));
            }
            let _ = tokio::time::timeout_at(deadline, appended).await;
        }
    }

    type FetchStreamStream = futures::stream::Empty<Result<proto::FetchResponse, Status>>;

    async fn fetch_stream(&self, _: Request<proto::FetchRequest>) -> Result<Response<Self::FetchStreamStream>, Status> {
        Err(Status::unimplemented("fake broker"))
    }

    async fn list_offsets(
        &self,
        request: Request<proto::ListOffsetsRequest>,
    ) -> Result<Response<proto::ListOffsetsResponse>, Status> {
        self.store.check_leader(self.node_id)?;
        let request = request.into_inner();
        let end = {
            let topics = self.store.topics.lock().unwrap();
            let partitions = topics.get(&request.topic).ok_or_else(|| Status::not_found("topic"))?;
            partitions[request.partition as usize].next_offset
        };
        let offset = match request.spec {
            Some(proto::list_offsets_request::Spec::Earliest(_)) => 0,
            Some(proto::list_offsets_request::Spec::TimestampMs(at)) => self
                .store
                .values_with_time(&request.topic, request.partition)
                .into_iter()
                .find(|(_, timestamp)| *timestamp >= at)
                .map_or(end, |(offset, _)| offset),
            _ => end,
        };
        Ok(Response::new(proto::ListOffsetsResponse {
            offset,
            log_start_offset: 0,
            high_watermark: end,
        }))
    }

    async fn metadata(&self, _: Request<proto::MetadataRequest>) -> Result<Response<proto::MetadataResponse>, Status> {
        let leader = self.store.advertised_leader.load(Ordering::SeqCst);
        let brokers = self.store.brokers.lock().unwrap();
        let topics = self.store.topics.lock().unwrap();
        Ok(Response::new(proto::MetadataResponse {
            brokers: brokers
                .iter()
                .map(|(node_id, address)| proto::BrokerInfo {
                    node_id: *node_id,
                    address: address.clone(),
                })
                .collect(),
            topics: topics
                .iter()
                .map(|(name, partitions)| proto::TopicMetadata {
                    name: name.clone(),
                    partitions: (0..partitions.len() as u32)
                        .map(|partition| proto::PartitionMetadata {
                            partition,
                            leader,
                            replicas: brokers.iter().map(|(id, _)| *id).collect(),
                        })
                        .collect(),
                })
                .collect(),
            cluster_id: "fake".into(),
        }))
    }
}

impl Store {
    fn values_with_time(&self, topic: &str, partition: u32) -> Vec<(u64, i64)> {
        let topics = self.topics.lock().unwrap();
        let mut values = Vec::new();
        for stored in &topics[topic][partition as usize].batches {
            let batch = BatchReader::new(stored.clone()).next().unwrap().unwrap();
            values.extend(batch.records().unwrap().into_iter().map(|r| (r.offset, r.timestamp_ms)));
        }
        values
    }
}

#[tonic::async_trait]
impl Admin for FakeNode {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::CreateTopicResponse>, Status> {
        let request = request.into_inner();
        if self.store.topics.lock().unwrap().contains_key(&request.name) {
            return Err(Status::already_exists(format!("topic {} exists", request.name)));
        }
        self.store.create_topic(&request.name, request.partitions);
        Ok(Response::new(proto::CreateTopicResponse {
            topic: Some(proto::TopicDescription {
                name: request.name,
                replication_factor: request.replication_factor,
                config: request.config,
                partitions: Vec::new(),
            }),
        }))
    }

    async fn list_topics(
        &self,
        _: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        let topics = self.store.topics.lock().unwrap();
        Ok(Response::new(proto::ListTopicsResponse {
            topics: topics
                .iter()
                .map(|(name, partitions)| proto::TopicSummary {
                    name: name.clone(),
                    partitions: partitions.len() as u32,
                    replication_factor: 1,
                })
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        _: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        Err(Status::unimplemented("fake broker"))
    }

    async fn alter_topic_config(
        &self,
        _: Request<proto::AlterTopicConfigRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        Err(Status::unimplemented("fake broker"))
    }

    async fn delete_topic(
        &self,
        _: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("fake broker"))
    }

    async fn cluster_status(
        &self,
        _: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("fake broker"))
    }
}

/// Starts `nodes` fake nodes (ids 1..=nodes) on loopback ports, all serving one store; node 1
/// leads. Returns the store and the nodes' addresses.
pub async fn start(nodes: u64) -> (Arc<Store>, Vec<String>) {
    let store = Arc::new(Store::default());
    store.leader.store(1, Ordering::SeqCst);
    store.advertised_leader.store(1, Ordering::SeqCst);
    let mut addresses = Vec::new();
    for node_id in 1..=nodes {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        store.brokers.lock().unwrap().push((node_id, address.clone()));
        addresses.push(address);
        let node = Arc::new(FakeNode {
            node_id,
            store: store.clone(),
        });
        let server = tonic::transport::Server::builder()
            .add_service(WeirServer::from_arc(node.clone()))
            .add_service(AdminServer::from_arc(node.clone()))
            .add_service(GroupsServer::from_arc(node))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
    }
    (store, addresses)
}
