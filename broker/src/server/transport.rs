//! Raft messages between nodes: one long-lived gRPC client stream per peer, carrying batches of
//! messages of many groups; and the receiving side, which hands each message to its group's raft
//! thread. Delivery is best effort (raft retransmits): a full queue or a broken connection drops
//! messages, and the connection is re-established with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weir_proto::v1::raft_client::RaftClient;
use weir_proto::v1::raft_server::Raft;
use weir_proto::v1::{RaftBatch, RaftEnvelope, RaftStreamResponse};

use crate::raft::{RaftDriver, RaftMessage, Transport};
use crate::types::{GroupId, NodeId};

/// Batches of messages queued per peer before new ones are dropped.
const PEER_QUEUE_BATCHES_MAX: usize = 1024;
/// Longest wait between reconnection attempts.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Largest message on a raft stream: entries are bounded by `message_bytes_max` per message.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 256 << 20;

/// The sending side: a queue and a connection task per peer.
pub struct PeerTransport {
    node_id: NodeId,
    peers: HashMap<NodeId, Peer>,
}

/// This node's client-facing address, announced to each peer at the start of every stream
/// (empty: clients use its `--peers` address).
#[derive(Clone, Default)]
pub struct Announce(pub String);

struct Peer {
    queue: mpsc::Sender<Vec<RaftEnvelope>>,
    /// When a raft batch from the peer last arrived (ms since the Unix epoch; 0 = never):
    /// groups heartbeat every few hundred ms, so silence means the peer is down or cut off.
    last_heard_ms: AtomicU64,
    /// Since when this node's stream to the peer is open (ms since the Unix epoch; 0 = closed).
    connected_since_ms: Arc<AtomicU64>,
}

/// A peer unheard for this long counts as down in cluster status.
const PEER_SILENCE_MS_MAX: u64 = 3_000;
/// HTTP/2 pings on peer connections, so a dead peer's stream fails within a few seconds
/// instead of swallowing messages until the kernel gives up on the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerTransport {
    /// Starts a connection task for every node in `nodes` but this one. Call inside a runtime.
    pub fn start(node_id: NodeId, nodes: &BTreeMap<NodeId, String>, announce: Announce) -> Arc<Self> {
        let mut peers = HashMap::new();
        for (&peer, address) in nodes.iter().filter(|(id, _)| **id != node_id) {
            let (queue, receiver) = mpsc::channel(PEER_QUEUE_BATCHES_MAX);
            let connected_since_ms = Arc::new(AtomicU64::new(0));
            let state = Peer {
                queue,
                last_heard_ms: AtomicU64::new(0),
                connected_since_ms: connected_since_ms.clone(),
            };
            peers.insert(peer, state);
            tokio::spawn(peer_loop(
                node_id,
                peer,
                address.clone(),
                receiver,
                connected_since_ms,
                announce.clone(),
            ));
        }
        Arc::new(Self { node_id, peers })
    }

    /// Whether `node` looks alive: this node's stream to it is open, or it sent raft messages
    /// recently (followers only talk to leaders, so neither alone covers every pair). `None`
    /// for this node and strangers.
    pub fn is_up(&self, node: NodeId) -> Option<bool> {
        let peer = self.peers.get(&node)?;
        let heard = peer.last_heard_ms.load(Ordering::Relaxed);
        let recently = heard != 0 && now_ms().saturating_sub(heard) < PEER_SILENCE_MS_MAX;
        Some(recently || peer.connected_since_ms.load(Ordering::Relaxed) != 0)
    }

    fn heard_from(&self, node: NodeId) {
        if let Some(peer) = self.peers.get(&node) {
            peer.last_heard_ms.store(now_ms(), Ordering::Relaxed);
        }
    }
}

impl Transport for PeerTransport {
    fn send(&self, messages: Vec<(GroupId, RaftMessage)>) {
        let mut by_peer: HashMap<NodeId, Vec<RaftEnvelope>> = HashMap::new();
        for (group, message) in messages {
            let to = NodeId(message.to);
            match message.write_to_bytes() {
                Ok(bytes) => by_peer.entry(to).or_default().push(RaftEnvelope {
                    group: group.0,
                    message: bytes.into(),
                }),
                Err(error) => tracing::error!(%group, %error, "cannot encode a raft message"),
            }
        }
        for (peer, envelopes) in by_peer {
            match self.peers.get(&peer) {
                Some(target) => {
                    if target.queue.try_send(envelopes).is_err() {
                        tracing::debug!(%peer, "peer queue full or closed: raft messages dropped");
                    }
                }
                None => tracing::warn!(from = %self.node_id, %peer, "raft message to a node outside the cluster"),
            }
        }
    }

    fn peer_up_for(&self, node: NodeId) -> Option<Duration> {
        let since = self.peers.get(&node)?.connected_since_ms.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_millis(now_ms().saturating_sub(since)))
    }
}

/// Keeps one client stream to `peer` open and feeds it from `queue`; `connected_since_ms` says
/// since when the stream is up (HTTP/2 keepalive makes a dead peer's stream fail within seconds).
async fn peer_loop(
    from: NodeId,
    peer: NodeId,
    address: String,
    mut queue: mpsc::Receiver<Vec<RaftEnvelope>>,
    connected_since_ms: Arc<AtomicU64>,
    announce: Announce,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(channel) = connect(peer, &address).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            // Messages queued while the peer is unreachable are stale by the time it is back.
            while queue.try_recv().is_ok() {}
            continue;
        };
        backoff = Duration::from_millis(50);
        let (stream_sender, stream_receiver) = mpsc::channel(64);
        let mut client = RaftClient::new(channel).max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let mut call = tokio::spawn(async move { client.stream(ReceiverStream::new(stream_receiver)).await });
        tracing::info!(%peer, %address, "raft stream to peer open");
        connected_since_ms.store(now_ms().max(1), Ordering::Relaxed);
        // The first batch of a stream introduces this node (followers of the same groups may
        // have nothing else to say to each other for a long time).
        let hello = RaftBatch {
            from_node: from.0,
            to_node: peer.0,
            messages: Vec::new(),
            from_address: announce.0.clone(),
        };
        if stream_sender.send(hello).await.is_err() {
            connected_since_ms.store(0, Ordering::Relaxed);
            call.abort();
            continue;
        }
        loop {
            tokio::select! {
                envelopes = queue.recv() => {
                    let Some(envelopes) = envelopes else {
                        call.abort();
                        return;
                    };
                    let batch = RaftBatch {
                        from_node: from.0,
                        to_node: peer.0,
                        messages: envelopes,
                        from_address: String::new(),
                    };
                    if stream_sender.send(batch).await.is_err() {
                        break;
                    }
                }
                ended = &mut call => {
                    if let Ok(Err(status)) = ended {
                        tracing::info!(%peer, %status, "raft stream to peer closed; reconnecting");
                    }
                    break;
                }
            }
        }
        connected_since_ms.store(0, Ordering::Relaxed);
        call.abort();
    }
}

/// A channel to the peer, or `None` if it cannot be reached now.
async fn connect(peer: NodeId, address: &str) -> Option<tonic::transport::Channel> {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::error!(%peer, %address, %error, "invalid peer address");
            return None;
        }
    };
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .ok()
}

/// The receiving side: the `Raft` gRPC service.
pub struct RaftService {
    pub node_id: NodeId,
    pub driver: Arc<RaftDriver>,
    pub transport: Arc<PeerTransport>,
    pub cluster: Arc<crate::cluster::Cluster>,
    pub stopping: super::Stopping,
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn stream(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftStreamResponse>, Status> {
        let mut stream = request.into_inner();
        let stopping = self.stopping.clone().wait();
        tokio::pin!(stopping);
        loop {
            // Peers keep their streams open for good: a stopping server ends them itself.
            let batch = tokio::select! {
                batch = stream.message() => batch?,
                _ = &mut stopping => break,
            };
            let Some(batch) = batch else { break };
            if batch.to_node != self.node_id.0 {
                return Err(Status::invalid_argument(format!(
                    "raft batch for node {} reached node {}: check --peers",
                    batch.to_node, self.node_id
                )));
            }
            self.transport.heard_from(NodeId(batch.from_node));
            if !batch.from_address.is_empty() {
                self.cluster
                    .set_client_address(NodeId(batch.from_node), &batch.from_address);
            }
            for envelope in batch.messages {
                match RaftMessage::parse_from_bytes(&envelope.message) {
                    Ok(message) => {
                        self.driver.step(GroupId(envelope.group), message);
                    }
                    Err(error) => return Err(Status::invalid_argument(format!("undecodable raft message: {error}"))),
                }
            }
        }
        Ok(Response::new(RaftStreamResponse {}))
    }
}
