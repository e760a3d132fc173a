//! The HTTP endpoint, on its own port (`http_listen`, default `127.0.0.1:9393`):
//!
//! - `GET /metrics`: Prometheus metrics in the OpenMetrics text format (prometheus-client).
//!   Request counters and latency histograms are recorded by the gRPC handlers
//!   ([`RequestMetrics`]); everything per partition and per node is read when the endpoint is
//!   scraped (progress of each replica, its log's size, for leaders how far each follower is),
//!   so the request path never pays for it.
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 when the node has caught up with the controller, serves gRPC and is not
//!   shutting down; 503 with the reason otherwise (readiness: load balancers and Kubernetes
//!   send clients elsewhere meanwhile).
//!
//! Limits: `HTTP_CONNECTIONS_MAX` concurrent connections (more are closed at once), request
//! headers within `HEADER_READ_TIMEOUT`, a scrape waits at most `SCRAPE_WAIT` for the raft
//! threads' replication answers.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::metrics::RequestMetrics;
use super::PeerTransport;
use crate::cluster::{Cluster, PartitionReplica};
use crate::group::Coordinator;
use crate::raft::{read_log, Progress, Replication, Role};

/// Concurrent HTTP connections; Prometheus and a probe or two need a handful.
const HTTP_CONNECTIONS_MAX: usize = 64;
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the raft threads to report their leaders' replication.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the node serves: set by `node` as the gRPC server starts and as shutdown begins.
#[derive(Debug, Default)]
pub struct Health {
    serving: AtomicBool,
    stopping: AtomicBool,
}

impl Health {
    /// The gRPC server accepts requests (or, with false, no longer does).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Shutdown began: readiness fails from now on, liveness still answers.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// What the endpoint reads from.
pub struct HttpState {
    pub cluster: Arc<Cluster>,
    pub coordinator: Arc<Coordinator>,
    pub transport: Arc<PeerTransport>,
    pub metrics: Arc<RequestMetrics>,
    pub health: Arc<Health>,
    /// Where the partitions are stored: disk space is reported for its file system.
    pub data_dir: PathBuf,
}

/// Serves the HTTP endpoint on `listener` until `shutdown` resolves.
pub async fn serve_http(listener: TcpListener, state: Arc<HttpState>, shutdown: impl std::future::Future<Output = ()>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "HTTP endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let state = state.clone();
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.answer(request).await) }
            }),
        );
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

impl HttpState {
    async fn answer<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.unready_reason() {
                None => text(StatusCode::OK, "ready\n"),
                Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
            },
            "/metrics" => match self.scrape().await {
                Ok(body) => {
                    let mut response = text(StatusCode::OK, body);
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
                    response
                }
                Err(std::fmt::Error) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n"),
            },
            _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
        }
    }

    /// Why the node should not get client traffic now, if it should not.
    fn unready_reason(&self) -> Option<&'static str> {
        if self.health.stopping.load(Ordering::Relaxed) {
            Some("shutting down")
        } else if !self.health.serving.load(Ordering::Relaxed) {
            Some("the gRPC server is not serving")
        } else if !self.cluster.is_ready() {
            Some("not caught up with the controller yet (no controller leader, or still applying its log)")
        } else {
            None
        }
    }

    /// The whole exposition: request metrics, then what is read now.
    async fn scrape(&self) -> Result<String, std::fmt::Error> {
        let partitions = sample_partitions(&self.cluster.replicas()).await;
        let mut now = Registry::default();
        self.register_node(&mut now, &partitions);
        register_partitions(&mut now, &partitions, &self.transport);
        self.register_group_lag(&mut now, &partitions);
        let mut body = String::with_capacity(4096 + 1024 * partitions.len());
        encode_registry(&mut body, self.metrics.registry())?;
        encode_registry(&mut body, &now)?;
        encode_eof(&mut body)?;
        Ok(body)
    }

    /// `weir_consumer_group_lag{group,topic,partition}` and the committed offsets, for the
    /// groups this node coordinates and the partitions it holds a replica of (with RF below the
    /// node count, `weir group describe` asks the leaders for the rest).
    fn register_group_lag(&self, registry: &mut Registry, partitions: &[PartitionSample]) {
        let lag = Family::<GroupLabels, Gauge<i64>>::default();
        let committed = Family::<GroupLabels, Gauge<i64>>::default();
        for (group, tp, offset) in self.coordinator.lag_view() {
            let Some(sample) = partitions
                .iter()
                .find(|p| p.topic == tp.topic && p.partition == tp.partition)
            else {
                continue;
            };
            let labels = GroupLabels {
                group,
                topic: tp.topic,
                partition: tp.partition,
            };
            let high_watermark = sample.progress.high_watermark.0;
            committed
                .get_or_create(&labels)
                .set(i64::try_from(offset).unwrap_or(i64::MAX));
            lag.get_or_create(&labels)
                .set(i64::try_from(high_watermark.saturating_sub(offset)).unwrap_or(i64::MAX));
        }
        registry.register(
            "weir_consumer_group_lag",
            "Records between a group's committed offset and the partition's high watermark",
            lag,
        );
        registry.register(
            "weir_consumer_group_committed_offset",
            "A group's committed offset per partition (groups coordinated by this node)",
            committed,
        );
    }

    fn register_node(&self, registry: &mut Registry, partitions: &[PartitionSample]) {
        let gauge = |value: u64| {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            gauge
        };
        registry.register(
            "weir_node_ready",
            "1 when /readyz answers 200: caught up with the controller, serving, not shutting down",
            gauge(u64::from(self.unready_reason().is_none())),
        );
        let leading = partitions.iter().filter(|p| p.progress.role == Role::Leader).count();
        registry.register(
            "weir_replicas",
            "Partition replicas running on this node",
            gauge(partitions.len() as u64),
        );
        registry.register(
            "weir_replicas_leading",
            "Partition replicas this node leads",
            gauge(leading as u64),
        );
        let under = partitions
            .iter()
            .filter(|p| under_replicated(p, &self.transport))
            .count();
        registry.register(
            "weir_under_replicated_partitions",
            "Partitions this node leads with a replica that is behind, down, failed or repairing",
            gauge(under as u64),
        );
        let controller = self.cluster.controller().progress();
        registry.register(
            "weir_controller_raft_role",
            "This node's role in the controller group: 0 follower, 1 candidate, 2 leader",
            gauge(role_value(controller.role)),
        );
        registry.register(
            "weir_controller_raft_term",
            "Raft term of the controller group",
            gauge(controller.term.0),
        );
        registry.register(
            "weir_controller_raft_commit_index",
            "Raft commit index of the controller group on this node",
            gauge(controller.commit_index.0),
        );
        if let Some((free, total)) = disk_space(&self.data_dir) {
            registry.register(
                "weir_disk_free_bytes",
                "Bytes available to the broker on the data directory's file system",
                gauge(free),
            );
            registry.register(
                "weir_disk_total_bytes",
                "Size of the data directory's file system",
                gauge(total),
            );
        }
    }
}

/// One replica's state, read at scrape time.
struct PartitionSample {
    topic: String,
    partition: u32,
    progress: Progress,
    size_bytes: u64,
    segments: usize,
    /// How far each follower is, when this replica leads (and the raft thread answered).
    replication: Option<Replication>,
}

async fn sample_partitions(replicas: &[PartitionReplica]) -> Vec<PartitionSample> {
    let samples = replicas.iter().map(|replica| async move {
        let progress = replica.group.progress();
        let (size_bytes, segments) = {
            let log = read_log(replica.group.log());
            (log.size_bytes(), log.segment_count())
        };
        let replication = if progress.role == Role::Leader {
            tokio::time::timeout(SCRAPE_WAIT, replica.group.replication())
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        PartitionSample {
            topic: replica.topic.clone(),
            partition: replica.partition.0,
            progress,
            size_bytes,
            segments,
            replication,
        }
    });
    let mut samples = futures::future::join_all(samples).await;
    samples.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    samples
}

/// A partition this replica leads whose replica set is not whole: this replica failed or is
/// repairing, or a follower is behind the commit index (the rule `weir cluster status` uses)
/// or down.
fn under_replicated(sample: &PartitionSample, transport: &PeerTransport) -> bool {
    if sample.progress.role != Role::Leader {
        return false;
    }
    if sample.progress.failure.is_some() || sample.progress.repairing {
        return true;
    }
    sample.replication.as_ref().is_some_and(|replication| {
        replication
            .followers
            .iter()
            .any(|(node, matched)| *matched < replication.commit_index || transport.is_up(*node) == Some(false))
    })
}

fn role_value(role: Role) -> u64 {
    match role {
        Role::Follower => 0,
        Role::Candidate => 1,
        Role::Leader => 2,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    topic: String,
    partition: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    topic: String,
    partition: u32,
    replica: u64,
}

/// Registers one gauge family per partition figure, with a `{topic, partition}` series for each
/// replica on this node.
fn register_partitions(registry: &mut Registry, samples: &[PartitionSample], transport: &PeerTransport) {
    type Figure = fn(&PartitionSample) -> Option<u64>;
    let figures: [(&str, &str, Figure); 9] = [
        (
            "weir_partition_raft_role",
            "This replica's Raft role: 0 follower, 1 candidate, 2 leader",
            |s| Some(role_value(s.progress.role)),
        ),
        (
            "weir_partition_leader",
            "Node id of the partition's leader as this replica knows it (0: none known)",
            |s| Some(s.progress.leader.map_or(0, |l| l.0)),
        ),
        ("weir_partition_raft_term", "Raft term of this replica", |s| {
            Some(s.progress.term.0)
        }),
        (
            "weir_partition_raft_commit_index",
            "Index of the last entry committed and persisted on this replica",
            |s| Some(s.progress.commit_index.0),
        ),
        (
            "weir_partition_high_watermark",
            "Offset after the last record consumers may read from this replica",
            |s| Some(s.progress.high_watermark.0),
        ),
        (
            "weir_partition_log_start_offset",
            "First offset still stored on this replica",
            |s| Some(s.progress.log_start.0),
        ),
        (
            "weir_partition_log_size_bytes",
            "Bytes of stored batches in this replica's log (preallocated space not counted)",
            |s| Some(s.size_bytes),
        ),
        (
            "weir_partition_log_segments",
            "Segment files of this replica's log",
            |s| Some(s.segments as u64),
        ),
        (
            "weir_partition_out_of_service",
            "1 when this replica failed (storage error, corruption) or is being repaired",
            |s| Some(u64::from(s.progress.failure.is_some() || s.progress.repairing)),
        ),
    ];
    for (name, help, figure) in figures {
        let family = Family::<PartitionLabels, Gauge>::default();
        for sample in samples {
            if let Some(value) = figure(sample) {
                family
                    .get_or_create(&PartitionLabels {
                        topic: sample.topic.clone(),
                        partition: sample.partition,
                    })
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        registry.register(name, help, family);
    }
    let under = Family::<PartitionLabels, Gauge>::default();
    let lag = Family::<ReplicaLabels, Gauge>::default();
    for sample in samples.iter().filter(|s| s.progress.role == Role::Leader) {
        let labels = PartitionLabels {
            topic: sample.topic.clone(),
            partition: sample.partition,
        };
        under
            .get_or_create(&labels)
            .set(i64::from(under_replicated(sample, transport)));
        for (node, matched) in sample.replication.iter().flat_map(|r| {
            r.followers
                .iter()
                .map(move |(node, matched)| (node, r.commit_index.0.saturating_sub(matched.0)))
        }) {
            lag.get_or_create(&ReplicaLabels {
                topic: sample.topic.clone(),
                partition: sample.partition,
                replica: node.0,
            })
            .set(i64::try_from(matched).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "weir_partition_under_replicated",
        "1 when a follower of a partition this node leads is behind, down, failed or repairing (leaders only)",
        under,
    );
    registry.register(
        "weir_partition_replica_lag_entries",
        "Raft entries a follower is behind the leader's commit index (leaders only, one series per follower)",
        lag,
    );
}

/// (free, total) bytes of the file system holding `dir`, as an unprivileged writer sees it.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast, reason = "the field types differ between platforms")]
    let (available, blocks, fragment) = (stat.f_bavail as u64, stat.f_blocks as u64, stat.f_frsize as u64);
    Some((available.saturating_mul(fragment), blocks.saturating_mul(fragment)))
}
