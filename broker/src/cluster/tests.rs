//! The controller over real raft drivers in one process: snapshots, compaction, a restart from
//! snapshot + tail, and a follower catching up through the leader's snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{Cluster, ClusterConfig, ClusterError, Command, TopicConfig, TopicState};
use crate::log::LogConfig;
use crate::raft::{read_log, ProposeError, RaftConfig, RaftDriver, Role, Transport};
use crate::types::{GroupId, NodeId, RaftIndex};

/// Controller segments of 64 KiB: a few hundred commands fill one.
const SEGMENT_BYTES: u64 = 64 << 10;

/// Messages between the drivers of one process; nodes in `isolated` hear nothing and are heard
/// by nobody.
#[derive(Default)]
struct Net {
    drivers: RwLock<HashMap<NodeId, Arc<RaftDriver>>>,
    isolated: Mutex<HashSet<NodeId>>,
}

struct NetTransport {
    net: Arc<Net>,
    me: NodeId,
}

impl Transport for NetTransport {
    fn send(&self, messages: Vec<(GroupId, raft::eraftpb::Message)>) {
        let isolated = self.net.isolated.lock().unwrap().clone();
        if isolated.contains(&self.me) {
            return;
        }
        let drivers = self.net.drivers.read().unwrap();
        for (group, message) in messages {
            let to = NodeId(message.to);
            if isolated.contains(&to) {
                continue;
            }
            if let Some(driver) = drivers.get(&to) {
                driver.step(group, message);
            }
        }
    }
}

fn raft_config(node: NodeId) -> RaftConfig {
    RaftConfig {
        node_id: node,
        threads: 1,
        tick_interval: Duration::from_millis(20),
        ..RaftConfig::default()
    }
}

fn cluster_config(node: NodeId, nodes: &[NodeId], data_dir: &Path, snapshot_entries: u64) -> ClusterConfig {
    ClusterConfig {
        cluster_id: "test".into(),
        node_id: node,
        nodes: nodes
            .iter()
            .map(|n| (*n, format!("127.0.0.1:{}", 9000 + n.0)))
            .collect(),
        data_dir: data_dir.to_path_buf(),
        log_defaults: LogConfig {
            segment_bytes_max: SEGMENT_BYTES,
            ..LogConfig::default()
        },
        batch_bytes_max_default: 1 << 20,
        controller_snapshot_entries: snapshot_entries,
    }
}

/// One node: its driver (registered in the net) and its cluster.
struct TestNode {
    id: NodeId,
    dir: PathBuf,
    driver: Arc<RaftDriver>,
    cluster: Arc<Cluster>,
}

async fn start_node(net: &Arc<Net>, id: NodeId, nodes: &[NodeId], dir: &Path, snapshot_entries: u64) -> TestNode {
    let transport = Arc::new(NetTransport {
        net: net.clone(),
        me: id,
    });
    let driver = Arc::new(RaftDriver::start(raft_config(id), transport).unwrap());
    net.drivers.write().unwrap().insert(id, driver.clone());
    let cluster = Cluster::start(cluster_config(id, nodes, dir, snapshot_entries), driver.clone())
        .await
        .unwrap();
    TestNode {
        id,
        dir: dir.to_path_buf(),
        driver,
        cluster,
    }
}

impl TestNode {
    /// Closes every group cleanly and stops the raft threads.
    async fn stop(self, net: &Net) {
        net.drivers.write().unwrap().remove(&self.id);
        let driver = self.driver.clone();
        tokio::task::spawn_blocking(move || driver.shutdown()).await.unwrap();
    }

    fn controller_dir(&self) -> PathBuf {
        self.dir.join("controller")
    }

    fn topics(&self) -> BTreeMap<String, TopicState> {
        self.cluster.with_state(|state| state.topics.clone())
    }

    fn applied(&self) -> RaftIndex {
        self.cluster.with_state(|state| state.applied)
    }

    /// (log start index, last index, segments) of the controller log.
    fn controller_log(&self) -> (RaftIndex, RaftIndex, usize) {
        let log = read_log(self.cluster.controller().log());
        (log.log_start().index, log.last_index(), log.segment_count())
    }

    /// Index of the controller's `state-snapshot` file (bytes 8..16 of its header).
    fn snapshot_index(&self) -> Option<RaftIndex> {
        let bytes = std::fs::read(self.controller_dir().join("state-snapshot")).ok()?;
        assert_eq!(&bytes[..4], b"WSNP");
        Some(RaftIndex(u64::from_le_bytes(bytes[8..16].try_into().unwrap())))
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(node: &TestNode) {
    assert!(
        node.cluster.wait_ready(Duration::from_secs(20)).await,
        "node {} did not catch up with the controller",
        node.id
    );
}

/// The node leading the controller among `nodes`, waiting for one.
async fn leader<'a>(nodes: &[&'a TestNode]) -> &'a TestNode {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(node) = nodes
            .iter()
            .find(|node| node.cluster.controller().progress().role == Role::Leader)
        {
            return node;
        }
        assert!(Instant::now() < deadline, "no controller leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A topic whose replicas are on a node that does not exist: a real command for the state
/// machine that starts no partition replica anywhere (cheap to make thousands of).
fn create(name: &str, partitions: u32) -> Command {
    Command::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: 1,
        config: TopicConfig::default(),
        nodes: vec![NodeId(99)],
    }
}

/// Proposes the commands (to the controller leader among `nodes`, retrying while leadership
/// moves), `in_flight` at a time; every one must succeed.
async fn propose_all(nodes: &[&TestNode], commands: Vec<Command>, in_flight: usize) {
    for chunk in commands.chunks(in_flight) {
        let mut tasks = tokio::task::JoinSet::new();
        for command in chunk {
            let command = command.clone();
            let candidates: Vec<Arc<Cluster>> = nodes.iter().map(|node| node.cluster.clone()).collect();
            tasks.spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let target = candidates
                        .iter()
                        .find(|c| c.controller().progress().role == Role::Leader)
                        .unwrap_or(&candidates[0]);
                    match target.propose(command.clone()).await {
                        Ok(()) => return,
                        Err(ClusterError::Propose(
                            ProposeError::NotLeader { .. }
                            | ProposeError::LeadershipLost { .. }
                            | ProposeError::Busy(_),
                        )) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(error) => panic!("{command:?}: {error}"),
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
}

/// 1500 creates, 1000 deletes and 500 config changes: 3000 commands, 500 topics left.
fn three_thousand_commands() -> Vec<Command> {
    let mut commands: Vec<Command> = (0..1500).map(|i| create(&format!("t{i}"), 1 + (i / 3) % 3)).collect();
    commands.extend(
        (0..1500)
            .filter(|i| i % 3 != 0)
            .map(|i| Command::DeleteTopic { name: format!("t{i}") }),
    );
    commands.extend((0..1500).step_by(3).map(|i| Command::AlterTopicConfig {
        name: format!("t{i}"),
        config: TopicConfig {
            retention_ms: Some(i as i64),
            ..Default::default()
        },
    }));
    commands
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|ext| ext == "log")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_restarts_from_its_snapshot_and_the_tail_of_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::default());
    let me = NodeId(1);
    let node = start_node(&net, me, &[me], dir.path(), 100).await;
    wait_ready(&node).await;
    propose_all(&[&node], three_thousand_commands(), 50).await;

    let topics = node.topics();
    assert_eq!(topics.len(), 500);
    // Compaction runs in the group's housekeeping (every second).
    wait_until("the controller log is compacted", || node.controller_log().2 <= 3).await;
    assert_eq!(topics["t3"].config.retention_ms, Some(3));
    assert_eq!(topics["t1497"].partitions.len(), 2);
    let (start, last, segments) = node.controller_log();
    let snapshot = node.snapshot_index().expect("a state snapshot was taken");
    // 3000 commands of a few hundred bytes fill many 64 KiB segments; compaction deleted all
    // but the ones after the latest snapshot.
    assert!(last.0 > 3000, "{last}");
    assert!(snapshot.0 + 100 > last.0, "snapshot {snapshot}, last {last}");
    assert!(
        start.0 > 0 && start <= snapshot,
        "log start {start}, snapshot {snapshot}"
    );
    assert!(segments <= 3, "{segments} segments");
    let uncompacted = (last.0 - start.0) as usize; // entries still stored
    assert!(uncompacted < 1000, "{uncompacted} entries still stored");
    node.stop(&net).await;
    assert_eq!(segment_files(&dir.path().join("controller")), segments);

    // The restart restores the snapshot and replays the entries after it only (the ones
    // before are gone), and ends with the same state.
    let started = Instant::now();
    let node = start_node(&net, me, &[me], dir.path(), 100).await;
    let restored_at = node.applied();
    assert!(
        restored_at >= snapshot,
        "restored at {restored_at}, snapshot {snapshot}"
    );
    wait_ready(&node).await;
    tracing::info!(elapsed = ?started.elapsed(), "restarted");
    assert_eq!(node.topics(), topics);
    assert_eq!(node.controller_log().0, start);
    // Group ids are never reused after a restore either.
    propose_all(&[&node], vec![create("after", 1)], 1).await;
    let after = node.topics()["after"].partitions[0].group;
    let highest = topics
        .values()
        .flat_map(|t| t.partitions.iter().map(|p| p.group))
        .max()
        .unwrap();
    assert!(after > highest, "{after} <= {highest}");
    node.stop(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::default());
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(start_node(&net, id, &ids, &dir.path().join(format!("n{}", id.0)), 50).await);
    }
    for node in &nodes {
        wait_ready(node).await;
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    propose_all(&all, (0..20).map(|i| create(&format!("early{i}"), 1)).collect(), 20).await;

    // Node 3 (a follower) is cut off while the others commit well over a segment's worth of
    // commands and compact their logs past everything node 3 has.
    let lagging = (leader(&all).await.id.0 % 3) as usize; // index of a node that does not lead
    let lagging_id = nodes[lagging].id;
    net.isolated.lock().unwrap().insert(lagging_id);
    let stale_last = nodes[lagging].controller_log().1;
    let others: Vec<&TestNode> = nodes.iter().filter(|n| n.id != lagging_id).collect();
    let mut commands: Vec<Command> = (0..800).map(|i| create(&format!("t{i}"), 1)).collect();
    commands.extend(
        (0..800)
            .step_by(2)
            .map(|i| Command::DeleteTopic { name: format!("t{i}") }),
    );
    // And one topic with a replica on every node, the lagging one included.
    commands.push(Command::CreateTopic {
        name: "everywhere".into(),
        partitions: 1,
        replication_factor: 3,
        config: TopicConfig::default(),
        nodes: ids.to_vec(),
    });
    propose_all(&others, commands, 50).await;
    let leader_node = leader(&others).await;
    wait_until("the leader compacts past the follower's log", || {
        leader_node.controller_log().0 > stale_last
    })
    .await;

    net.isolated.lock().unwrap().clear();
    let lagging_node = &nodes[lagging];
    let target = leader_node.applied();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lagging_node.applied() < target {
        assert!(
            Instant::now() < deadline,
            "node {lagging_id} stuck at {} (leader at {target})",
            lagging_node.applied()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let topics = leader_node.topics();
    assert_eq!(lagging_node.topics(), topics);
    assert_eq!(topics.len(), 20 + 400 + 1);
    // Its log restarted at the leader's snapshot: nothing between its old end and there is stored.
    let (start, _, _) = lagging_node.controller_log();
    assert!(start > stale_last, "log start {start}, old end {stale_last}");
    let installed = lagging_node
        .snapshot_index()
        .expect("the installed snapshot is on disk");
    assert!(installed >= start);
    // The reconciler started its replica of the topic created while it was cut off.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lagging_node.cluster.partition("everywhere", 0).is_err() {
        assert!(Instant::now() < deadline, "replica of 'everywhere' not started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A restart of that node comes back from its own (installed or later) snapshot.
    let node = nodes.remove(lagging);
    let node_dir = node.dir.clone();
    node.stop(&net).await;
    let node = start_node(&net, lagging_id, &ids, &node_dir, 50).await;
    wait_ready(&node).await;
    assert_eq!(node.topics(), topics);
    node.stop(&net).await;
    for node in nodes {
        node.stop(&net).await;
    }
}
