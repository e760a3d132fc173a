//! Partition leadership follows placement: with three partitions of replication factor 3 on
//! three nodes, each node leads the partition whose first replica it is. After a leader is
//! killed and restarted, leadership comes back to it once it has caught up. A node stopped
//! with SIGTERM hands its leaderships over before it exits, so the others already name new
//! leaders when it is gone (no election timeout), and it logs no "stopping while still leading".
//! Cluster status, asked of any node, reports each partition's replication as its leader sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use weir_client::{ProducerConfig, ProducerRecord, TopicConfig};
use weir_tests::cluster::Cluster;
use weir_tests::wait::until;

const TOPIC: &str = "balanced";
const PARTITIONS: u32 = 3;
/// Leaders move back after the preferred node has been connected for 10 s and a balance pass
/// (every 5 s) sees it caught up; elections take a few seconds more on a loaded machine.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Partition -> leader, when every partition has an agreed leader.
async fn leaders(cluster: &Cluster) -> Result<Option<BTreeMap<u32, u64>>> {
    let mut leaders = BTreeMap::new();
    for partition in 0..PARTITIONS {
        match cluster.leader_of(TOPIC, partition).await? {
            Some(leader) => leaders.insert(partition, leader),
            None => return Ok(None),
        };
    }
    Ok(Some(leaders))
}

/// Waits until each partition is led by its first replica.
async fn wait_preferred_leaders(cluster: &Cluster, preferred: &BTreeMap<u32, u64>) -> Result<()> {
    until(&format!("preferred leaders {preferred:?}"), BALANCE_TIMEOUT, || async {
        Ok(leaders(cluster).await?.filter(|now| now == preferred))
    })
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_preferred_and_moves_before_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3)?;
    let client = cluster.client()?;
    client
        .admin()
        .create_topic(TOPIC, PARTITIONS, 3, TopicConfig::default())
        .await?;
    let description = cluster.describe_on(1, TOPIC).await?;
    let preferred: BTreeMap<u32, u64> = description
        .partitions
        .iter()
        .map(|p| (p.partition, p.replicas[0]))
        .collect();
    let mut led: Vec<u64> = preferred.values().copied().collect();
    led.sort_unstable();
    ensure!(
        led == [1, 2, 3],
        "placement puts one first replica on each node: {preferred:?}"
    );
    wait_preferred_leaders(&cluster, &preferred).await?;

    // Some data, so a returning leader has something to catch up on.
    let producer = client.producer(ProducerConfig::default())?;
    for i in 0..300u32 {
        let record = ProducerRecord::new(TOPIC)
            .with_partition(i % PARTITIONS)
            .with_value(format!("v{i}"));
        producer.send(record).await?;
    }

    // Kill the leader of partition 0; someone else leads it; after the restart it leads again.
    let victim = preferred[&0];
    cluster.kill9(victim)?;
    until("a new leader for partition 0", BALANCE_TIMEOUT, || async {
        Ok(cluster.leader_of(TOPIC, 0).await?.filter(|leader| *leader != victim))
    })
    .await?;
    for i in 0..300u32 {
        let record = ProducerRecord::new(TOPIC)
            .with_partition(i % PARTITIONS)
            .with_value(format!("w{i}"));
        producer.send(record).await?;
    }
    cluster.restart(victim)?;
    wait_preferred_leaders(&cluster, &preferred).await?;

    // SIGTERM the leader of partition 1: it hands leadership over before it exits, so the
    // other nodes already agree on a new leader the moment it is gone.
    let stopping = preferred[&1];
    let status = cluster.node_mut(stopping).terminate()?;
    ensure!(status.success(), "SIGTERM exit status {status}");
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != stopping).collect();
    for id in &others {
        let description = cluster.describe_on(*id, TOPIC).await?;
        for partition in &description.partitions {
            ensure!(
                partition.leader.is_some_and(|leader| leader != stopping),
                "right after node {stopping} stopped, node {id} sees leader {:?} for partition {}",
                partition.leader,
                partition.partition
            );
        }
    }
    let log = cluster.node(stopping).current_log();
    ensure!(
        log.contains("handing leadership over before stopping"),
        "the stopping node handed nothing over:\n{}",
        cluster.node(stopping).log_tail()
    );
    ensure!(
        !log.contains("stopping while still leading"),
        "the stopping node still led groups when it stopped:\n{}",
        cluster.node(stopping).log_tail()
    );
    cluster.restart(stopping)?;
    wait_preferred_leaders(&cluster, &preferred).await?;

    // Any node's cluster status carries each leader's view: both followers of every partition
    // known, none behind once idle, nothing under-replicated.
    until("a fully replicated cluster status", BALANCE_TIMEOUT, || async {
        let status = cluster.status_on(2).await?;
        let complete = status.partitions.iter().filter(|p| p.topic == TOPIC).all(|p| {
            p.leader == Some(preferred[&p.partition])
                && p.replica_lag.len() == 2
                && p.replica_lag.values().all(|behind| *behind == 0)
                && !p.is_under_replicated()
        });
        Ok(complete.then_some(()))
    })
    .await?;
    Ok(())
}
