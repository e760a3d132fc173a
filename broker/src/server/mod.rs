//! The gRPC server: the only layer that knows tonic and the wire types. Wire types are
//! converted to domain types here, and domain errors to statuses in `status`.
//!
//! Limits: request size (`request_bytes_max`), connections (`connections_max`: further
//! connections are closed at once), concurrent streams per connection, fetch size and wait,
//! produce timeout, buffered responses per fetch stream.
//!
//! `http` serves `/metrics`, `/healthz` and `/readyz` on a port of their own; `metrics` holds
//! the request counters and histograms the data handlers record.

mod admin;
mod connections;
mod data;
mod groups;
mod http;
mod metrics;
mod status;
mod transport;

pub use http::{serve_http, Health, HttpState};
pub use metrics::RequestMetrics;
pub use transport::{Announce, PeerTransport};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use weir_proto::v1::{
    admin_server::AdminServer, groups_server::GroupsServer, raft_server::RaftServer, weir_server::WeirServer,
};

use crate::cluster::Cluster;
use crate::group::Coordinator;

/// Every bound of the request handlers.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_bytes_max: usize,
    pub fetch_bytes_max: usize,
    pub fetch_wait_ms_max: u64,
    pub produce_timeout: Duration,
    pub connections_max: usize,
    pub streams_per_connection_max: u32,
    pub stream_buffer_responses: usize,
    pub partitions_per_topic_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_bytes_max: 17 << 20,
            fetch_bytes_max: 4 << 20,
            fetch_wait_ms_max: 30_000,
            produce_timeout: Duration::from_secs(30),
            connections_max: 4096,
            streams_per_connection_max: 256,
            stream_buffer_responses: 4,
            partitions_per_topic_max: 10_000,
        }
    }
}

fn brokers(cluster: &Cluster) -> Vec<weir_proto::v1::BrokerInfo> {
    cluster
        .client_addresses()
        .into_iter()
        .map(|(id, address)| weir_proto::v1::BrokerInfo { node_id: id.0, address })
        .collect()
}

/// Metadata key on a request one node forwarded to another (admin mutations to the controller
/// leader, metadata questions to a partition's replicas): it is never forwarded again, so stale
/// hints cannot bounce a request around.
const FORWARDED_KEY: &str = "weir-forwarded";

fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_KEY, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// Channels to the other nodes' client-facing services (data and admin), connected on first use.
pub(crate) type PeerChannels = std::collections::HashMap<crate::types::NodeId, tonic::transport::Channel>;

/// How long a node waits for another to answer a forwarded question (leaders, status).
const PEER_QUESTION_TIMEOUT: Duration = Duration::from_secs(1);

fn peer_channels(cluster: &Cluster) -> PeerChannels {
    cluster
        .nodes()
        .iter()
        .filter(|(id, _)| **id != cluster.node_id())
        .filter_map(|(id, address)| {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?;
            let channel = endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            Some((*id, channel))
        })
        .collect()
}

/// Tells long-lived handlers (raft streams from peers, fetch streams, long polls) that the
/// server is stopping, so that a graceful stop does not wait for them forever.
#[derive(Clone)]
pub(crate) struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Resolves once the server is stopping.
    pub(crate) async fn wait(mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// Serves the data and admin services on `listener` until `shutdown` resolves; then stops
/// accepting, ends long-lived streams and long polls, and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    coordinator: Arc<Coordinator>,
    transport: Arc<PeerTransport>,
    limits: Limits,
    metrics: Arc<RequestMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let peers = Arc::new(peer_channels(&cluster));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopping = Stopping(stopping);
    let shutdown = async move {
        shutdown.await;
        stop.send_replace(true);
    };
    let data = data::DataService {
        cluster: cluster.clone(),
        limits: Arc::new(limits.clone()),
        stopping: stopping.clone(),
        peers: peers.clone(),
        metrics,
    };
    let raft = transport::RaftService {
        node_id: cluster.node_id(),
        driver: cluster.driver().clone(),
        transport: transport.clone(),
        cluster: cluster.clone(),
        stopping: stopping.clone(),
    };
    let admin = admin::AdminService {
        cluster: cluster.clone(),
        transport,
        partitions_per_topic_max: limits.partitions_per_topic_max,
        peers,
    };
    let groups = groups::GroupService {
        coordinator,
        cluster,
        admin: admin.clone(),
        stopping,
    };
    let incoming = connections::limited(listener, limits.connections_max);
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.streams_per_connection_max)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .add_service(
            WeirServer::new(data)
                .max_decoding_message_size(limits.request_bytes_max)
                .max_encoding_message_size(limits.fetch_bytes_max.max(limits.request_bytes_max) + (1 << 20)),
        )
        .add_service(AdminServer::new(admin).max_decoding_message_size(1 << 20))
        .add_service(GroupsServer::new(groups).max_decoding_message_size(limits.request_bytes_max))
        .add_service(RaftServer::new(raft).max_decoding_message_size(transport::RAFT_MESSAGE_BYTES_MAX))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The address a listener actually bound (port 0 resolved).
pub fn local_address(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
