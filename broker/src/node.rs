//! One broker process: data directory lock, raft threads, controller and partitions, gRPC
//! server, and the orderly shutdown that leaves clean markers behind.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::config::BrokerConfig;
use crate::group::Coordinator;
use crate::raft::{RaftConfig, RaftDriver, RaftError};
use crate::server::{self, Announce, PeerTransport};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("data directory {0} is in use by another weir-broker process")]
    Locked(PathBuf),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("cannot serve HTTP on {address} (setting http_listen, --http-listen, WEIR_HTTP_LISTEN; \"off\" turns it off): {source}")]
    HttpListen { address: String, source: std::io::Error },
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A started broker: the gRPC server runs (peers need it to reach this node while it catches
/// up), and the node has caught up with the controller or waited `READY_WAIT` for it.
pub struct Node {
    address: SocketAddr,
    driver: Arc<RaftDriver>,
    cluster: Arc<Cluster>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop_server: tokio::sync::oneshot::Sender<()>,
    /// The HTTP endpoint (metrics, health), when it is on: its address and task.
    http: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// What `/readyz` reports about the server.
    health: Arc<server::Health>,
    /// Held for the life of the process: an exclusive lock on the data directory.
    _lock: File,
}

/// How long `start` waits for the controller before it reports the node started anyway.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a stopping node waits for the groups it leads to move to other nodes before it
/// stops serving anyway (a transfer takes a round trip and an election round).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a stopping node lets in-flight requests finish (a produce waits for its commit).
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Node {
    pub async fn start(config: BrokerConfig) -> Result<Self, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(io_error(&config.data_dir))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| NodeError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let address = listener.local_addr().map_err(io_error(&config.data_dir))?;
        let http_listener = match &config.http_listen {
            Some(http) => Some(bind_http(http).await?),
            None => None,
        };
        let advertised = config.advertise.clone().unwrap_or_else(|| address.to_string());
        let (cluster_id, nodes) = if config.peers.is_empty() {
            (
                cluster_id(&config.data_dir)?,
                BTreeMap::from([(config.node_id, advertised)]),
            )
        } else {
            (peers_cluster_id(&config.peers), config.peers.clone())
        };
        // With --peers, the peers list says where peers reach each node; --advertise (announced
        // to the peers) says where clients do, when that differs (containers, NAT).
        let announce = Announce(if config.peers.is_empty() {
            String::new()
        } else {
            config.advertise.clone().unwrap_or_default()
        });
        let transport = PeerTransport::start(config.node_id, &nodes, announce.clone());
        let raft_config = RaftConfig {
            node_id: config.node_id,
            ..config.raft.clone()
        };
        let driver = Arc::new(RaftDriver::start(raft_config, transport.clone())?);
        let cluster_config = ClusterConfig {
            cluster_id,
            node_id: config.node_id,
            nodes,
            data_dir: config.data_dir.clone(),
            log_defaults: config.log.clone(),
            batch_bytes_max_default: config.batch_bytes_max,
            controller_snapshot_entries: crate::cluster::CONTROLLER_SNAPSHOT_ENTRIES,
        };
        let cluster = match Cluster::start(cluster_config, driver.clone()).await {
            Ok(cluster) if !announce.0.is_empty() => {
                cluster.set_client_address(config.node_id, &announce.0);
                cluster
            }
            Ok(cluster) => cluster,
            Err(error) => {
                stop_driver(driver).await;
                return Err(error.into());
            }
        };
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let metrics = Arc::new(server::RequestMetrics::new());
        let health = Arc::new(server::Health::default());
        let coordinator = Coordinator::start(cluster.clone(), config.groups.clone());
        let server = tokio::spawn(server::serve(
            listener,
            cluster.clone(),
            coordinator.clone(),
            transport.clone(),
            config.limits.clone(),
            metrics.clone(),
            shutdown,
        ));
        health.set_serving(true);
        let http = match http_listener {
            Some(http_listener) => {
                let http_address = http_listener.local_addr().map_err(io_error(&config.data_dir))?;
                let state = Arc::new(server::HttpState {
                    cluster: cluster.clone(),
                    coordinator,
                    transport,
                    metrics,
                    health: health.clone(),
                    data_dir: config.data_dir.clone(),
                });
                let task = tokio::spawn(server::serve_http(http_listener, state, std::future::pending()));
                Some((http_address, task))
            }
            None => None,
        };
        if !cluster.wait_ready(READY_WAIT).await {
            tracing::warn!("serving before catching up with the controller (no controller quorum yet)");
        }
        Ok(Self {
            address,
            driver,
            cluster,
            server,
            stop_server,
            http,
            health,
            _lock: lock,
        })
    }

    /// The address the server is bound to (the real port when configured with port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address of the HTTP endpoint (the real port when configured with port 0), if on.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(address, _)| *address)
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests, closes every log
    /// (flush, index files, clean marker) and returns.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<(), NodeError> {
        let mut server = self.server;
        let result = tokio::select! {
            result = &mut server => result,
            _ = shutdown => {
                // Readiness fails first, so that load balancers stop sending clients here.
                self.health.set_stopping();
                self.cluster.hand_over_leadership(DRAIN_WAIT).await;
                let _ = self.stop_server.send(());
                match tokio::time::timeout(FINISH_WAIT, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("requests still running after {FINISH_WAIT:?}; stopping without them");
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        self.health.set_serving(false);
        tracing::info!("server stopped; closing partitions");
        self.cluster.stop_reconciling().await;
        drop(self.cluster);
        stop_driver(self.driver).await;
        // Liveness answers until the logs are closed.
        if let Some((_, task)) = self.http {
            task.abort();
        }
        match result {
            Ok(served) => served.map_err(NodeError::from),
            Err(_) => Ok(()),
        }
    }
}

async fn stop_driver(driver: Arc<RaftDriver>) {
    let _ = tokio::task::spawn_blocking(move || driver.shutdown()).await;
}

async fn bind_http(address: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| NodeError::HttpListen {
            address: address.to_string(),
            source,
        })
}

/// Takes an exclusive, non-blocking lock on `DATA_DIR/.lock`: two brokers on one directory
/// would corrupt each other's logs.
fn lock_data_dir(dir: &Path) -> Result<File, NodeError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(NodeError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

/// The id of a cluster formed from `--peers`: the same on every node given the same peers.
fn peers_cluster_id(peers: &BTreeMap<crate::types::NodeId, String>) -> String {
    let listed: Vec<String> = peers.iter().map(|(id, address)| format!("{id}={address}")).collect();
    format!("weir-{:08x}", crc32fast::hash(listed.join(",").as_bytes()))
}

/// The id of a one-node cluster, stored in the data directory at first start.
fn cluster_id(dir: &Path) -> Result<String, NodeError> {
    let path = dir.join("cluster_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(NodeError::Io { path, source }),
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ u128::from(std::process::id()) << 64;
    let id = format!(
        "weir-{:016x}",
        crc32fast::hash(&seed.to_le_bytes()) as u64 | ((seed as u64) << 32)
    );
    std::fs::write(&path, &id).map_err(io_error(&path))?;
    Ok(id)
}
