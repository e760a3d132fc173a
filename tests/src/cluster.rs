//! [`Cluster`]: several `weir-broker` processes forming one cluster on 127.0.0.1, with fixed
//! ports (each node must know the others' addresses before it starts), node ids 1..=N.

use std::ffi::OsString;
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use weir_client::{Client, ClientConfig, ClusterStatus, TopicDescription};
use weir_proto::v1 as proto;

use crate::wait::until;
use crate::BrokerProcess;

/// Bound on one admin request to one node (a killed node refuses at once; a stopped one hangs).
const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Nodes `1..=N` of one cluster; `nodes[i]` is node `i + 1`. Dropping it kills every node.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<BrokerProcess>,
}

/// How to start one node with [`Cluster::start_nodes`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `HOST:PORT` the node listens on; the peers list is made of these.
    pub listen: String,
    /// What the broker command runs under (see [`BrokerProcess::start_wrapped`]); empty: nothing.
    pub command_prefix: Vec<OsString>,
}

/// Ports for the nodes, found free by binding port 0 (and released for the brokers).
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl Cluster {
    /// Starts `nodes` brokers, data in `dir/n1`, `dir/n2`, ..., all at once: each waits for a
    /// controller quorum before it reports ready, so starting them one by one would deadlock.
    pub fn start(dir: &Path, nodes: usize) -> Result<Self> {
        Self::start_with_args(dir, nodes, &[])
    }

    /// Like [`Cluster::start`], every node with `extra_args` (e.g. `--config FILE`) too.
    pub fn start_with_args(dir: &Path, nodes: usize, extra_args: &[String]) -> Result<Self> {
        Self::start_with_node_args(dir, nodes, |_, _| extra_args.to_vec())
    }

    /// Like [`Cluster::start`], node `id` (listening on `port`) with `extra_args(id, port)` too.
    pub fn start_with_node_args(
        dir: &Path,
        nodes: usize,
        extra_args: impl Fn(u64, u16) -> Vec<String>,
    ) -> Result<Self> {
        let ports = free_ports(nodes)?;
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect();
        let peers = peers.join(",");
        let starts: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let data = dir.join(format!("n{}", i + 1));
                let listen = format!("127.0.0.1:{port}");
                let mut args = vec![
                    "--node-id".to_string(),
                    (i + 1).to_string(),
                    "--peers".into(),
                    peers.clone(),
                ];
                args.extend(extra_args(i as u64 + 1, *port));
                std::thread::spawn(move || BrokerProcess::start_listening(data, &listen, args))
            })
            .collect();
        let nodes = starts
            .into_iter()
            .map(|start| start.join().map_err(|_| anyhow::anyhow!("start thread panicked"))?)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { nodes })
    }

    /// Starts one node per spec (node `i + 1` from `specs[i]`, data in `dir/n{i+1}`), all at
    /// once like [`Cluster::start`]: for nodes on other addresses than 127.0.0.1 (say, one
    /// network namespace each) or run under a wrapper command.
    pub fn start_nodes(dir: &Path, specs: &[NodeSpec]) -> Result<Self> {
        let peers: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| format!("{}={}", i + 1, spec.listen))
            .collect();
        let peers = peers.join(",");
        let starts: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let data = dir.join(format!("n{}", i + 1));
                let spec = spec.clone();
                let args = vec![
                    "--node-id".to_string(),
                    (i + 1).to_string(),
                    "--peers".into(),
                    peers.clone(),
                ];
                std::thread::spawn(move || BrokerProcess::start_wrapped(data, &spec.listen, args, spec.command_prefix))
            })
            .collect();
        let nodes = starts
            .into_iter()
            .map(|start| start.join().map_err(|_| anyhow::anyhow!("start thread panicked"))?)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { nodes })
    }

    /// Node ids, `1..=N`.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    pub fn node(&self, id: u64) -> &BrokerProcess {
        &self.nodes[Self::index(id)]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut BrokerProcess {
        &mut self.nodes[Self::index(id)]
    }

    fn index(id: u64) -> usize {
        usize::try_from(id).expect("node id fits usize") - 1
    }

    /// Every node's `127.0.0.1:PORT`, node 1 first.
    pub fn bootstrap(&self) -> Vec<String> {
        self.nodes.iter().map(BrokerProcess::bootstrap).collect()
    }

    /// The nodes' addresses except `id`'s.
    pub fn bootstrap_without(&self, id: u64) -> Vec<String> {
        self.ids()
            .into_iter()
            .filter(|node| *node != id)
            .map(|node| self.node(node).bootstrap())
            .collect()
    }

    /// A client that knows every node.
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(ClientConfig::new(&self.bootstrap().join(","))?)?)
    }

    pub fn kill9(&mut self, id: u64) -> Result<ExitStatus> {
        self.node_mut(id).kill9()
    }

    /// Starts a stopped node again on its data directory and port.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        self.node_mut(id).restart()
    }

    /// SIGKILL to every node back to back (no node outlives another by more than the few
    /// microseconds between two kill(2) calls), then reaps them all.
    pub fn kill9_all(&mut self) -> Result<Vec<ExitStatus>> {
        for node in &mut self.nodes {
            node.signal(libc::SIGKILL)?;
        }
        self.nodes.iter_mut().map(BrokerProcess::kill9).collect()
    }

    /// Starts every node again, all at once (a node waits a while for a controller quorum
    /// before it reports ready, so one by one would be slow), on their data directories and
    /// ports. Every node must be stopped.
    pub fn restart_all(&mut self) -> Result<()> {
        std::thread::scope(|scope| {
            let restarts: Vec<_> = self
                .nodes
                .iter_mut()
                .map(|node| scope.spawn(move || node.restart()))
                .collect();
            restarts
                .into_iter()
                .map(|restart| restart.join().map_err(|_| anyhow::anyhow!("restart thread panicked"))?)
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }

    /// SIGSTOP to node `id` (see [`BrokerProcess::pause`]).
    pub fn pause(&mut self, id: u64) -> Result<()> {
        self.node_mut(id).pause()
    }

    /// SIGCONT to node `id`.
    pub fn resume(&mut self, id: u64) -> Result<()> {
        self.node_mut(id).resume()
    }

    /// Client settings that know every node, with their own request and connect timeouts (the
    /// default 30 s request timeout is long next to a fault that makes a node stop answering).
    pub fn client_config(&self, request_timeout: Duration, connect_timeout: Duration) -> Result<ClientConfig> {
        Ok(ClientConfig::builder()
            .bootstrap(&self.bootstrap().join(","))
            .request_timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .build()?)
    }

    /// `topic` as node `id` itself sees it (its local replicas' leader and high watermark); no
    /// other node is asked.
    pub async fn describe_on(&self, id: u64, topic: &str) -> Result<TopicDescription> {
        let node = self.node(id);
        let description = bounded(async {
            let mut admin = node.admin_client().await?;
            let request = proto::DescribeTopicRequest { name: topic.to_owned() };
            Ok(admin.describe_topic(request).await?.into_inner())
        })
        .await
        .with_context(|| format!("describe {topic} on node {id}"))?;
        Ok(description.into())
    }

    /// The cluster as node `id` sees it.
    pub async fn status_on(&self, id: u64) -> Result<ClusterStatus> {
        let node = self.node(id);
        let status = bounded(async {
            let mut admin = node.admin_client().await?;
            Ok(admin.cluster_status(proto::ClusterStatusRequest {}).await?.into_inner())
        })
        .await
        .with_context(|| format!("cluster status on node {id}"))?;
        Ok(status.into())
    }

    /// The leader of `topic`/`partition`, asking every node that answers (Admin describe):
    /// `Some` when a node says it leads and no answering node names another leader.
    pub async fn leader_of(&self, topic: &str, partition: u32) -> Result<Option<u64>> {
        self.leader_among(topic, partition, &self.ids()).await
    }

    /// Like [`Cluster::leader_of`], asking only the nodes in `observers` (say, all but a paused
    /// node, which would hold every poll up for the request timeout): `Some` when one of them
    /// says it leads and none of them names another leader.
    pub async fn leader_among(&self, topic: &str, partition: u32, observers: &[u64]) -> Result<Option<u64>> {
        let mut views = Vec::new();
        for id in observers {
            if let Ok(description) = self.describe_on(*id, topic).await {
                let leader = description
                    .partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .and_then(|p| p.leader);
                views.push((*id, leader));
            }
        }
        let claimed: Vec<u64> = views
            .iter()
            .filter(|(id, leader)| *leader == Some(*id))
            .map(|(id, _)| *id)
            .collect();
        let [leader] = claimed[..] else {
            return Ok(None);
        };
        let agreed = views.iter().all(|(_, view)| view.is_none() || *view == Some(leader));
        Ok(agreed.then_some(leader))
    }

    /// Creates `topic` with a replica of every partition on every node, and waits until each
    /// partition has a leader.
    pub async fn create_fully_replicated(&self, topic: &str, partitions: u32) -> Result<()> {
        let nodes = u32::try_from(self.nodes.len()).context("node count")?;
        self.client()?
            .admin()
            .create_topic(topic, partitions, nodes, weir_client::TopicConfig::default())
            .await?;
        for partition in 0..partitions {
            self.wait_leader(topic, partition, Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for [`Cluster::leader_of`] to name a leader.
    pub async fn wait_leader(&self, topic: &str, partition: u32, timeout: Duration) -> Result<u64> {
        until(&format!("a leader for {topic}/{partition}"), timeout, || {
            self.leader_of(topic, partition)
        })
        .await
    }

    /// Waits until node `observer`'s cluster status shows each node in `expected` in its state
    /// ("up", "down").
    pub async fn wait_node_states(&self, observer: u64, expected: &[(u64, &str)], timeout: Duration) -> Result<()> {
        until(
            &format!("node states {expected:?} in node {observer}'s cluster status"),
            timeout,
            || async {
                let status = self.status_on(observer).await?;
                let matches = expected.iter().all(|(id, state)| {
                    status
                        .nodes
                        .iter()
                        .any(|node| node.node_id == *id && node.state == *state)
                });
                Ok(matches.then_some(()))
            },
        )
        .await
    }

    /// Waits until every node's local replica of every partition of `topic` has a leader and a
    /// high watermark of at least `min_high_watermarks[partition]` (missing entries: 0).
    pub async fn wait_replicas_at(&self, topic: &str, min_high_watermarks: &[u64], timeout: Duration) -> Result<()> {
        until(
            &format!("every replica of {topic} at high watermarks {min_high_watermarks:?}"),
            timeout,
            || async {
                for id in self.ids() {
                    let description = self.describe_on(id, topic).await?;
                    for partition in &description.partitions {
                        let wanted = min_high_watermarks
                            .get(partition.partition as usize)
                            .copied()
                            .unwrap_or(0);
                        if partition.leader.is_none() || partition.high_watermark < wanted {
                            return Ok(None);
                        }
                    }
                }
                Ok(Some(()))
            },
        )
        .await
    }
}

async fn bounded<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(NODE_REQUEST_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => bail!("no answer within {NODE_REQUEST_TIMEOUT:?}"),
    }
}
