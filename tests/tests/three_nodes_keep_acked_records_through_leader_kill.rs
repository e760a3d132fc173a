//! Three brokers form one cluster; a replication-factor-3 partition keeps every acknowledged
//! record (acks=all) when its leader is killed with SIGKILL: a new leader takes over, produce
//! resumes, and the killed node catches up after its restart.
//!
//! The cluster start-up is `weir_tests::cluster::Cluster`; repeated kills under load with the
//! history checker are in `leader_kill_under_produce_loses_no_acked_record`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use weir_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, TopicConfig};
use weir_tests::cluster::Cluster;
use weir_tests::records::drain_partition;
use weir_tests::wait::{until, within};

const TOPIC: &str = "replicated";
const RECORDS_PER_PHASE: usize = 300;

/// Sends `count` records one at a time (so a failure is attributable); returns what was
/// acknowledged, and the values whose outcome is unknown.
async fn produce(client: &Client, prefix: &str, count: usize) -> Result<(BTreeMap<u64, String>, Vec<String>)> {
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    let mut acked = BTreeMap::new();
    let mut unknown = Vec::new();
    for i in 0..count {
        let value = format!("{prefix}-{i:05}");
        let record = ProducerRecord::new(TOPIC).with_partition(0).with_value(value.clone());
        match producer.send(record).await {
            Ok(metadata) => {
                ensure!(
                    acked.insert(metadata.offset, value).is_none(),
                    "offset {} acknowledged twice",
                    metadata.offset
                );
            }
            Err(error) if error.is_outcome_unknown() => unknown.push(value),
            Err(error) => bail!("record {value} failed: {error}"),
        }
    }
    Ok((acked, unknown))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_acked_records_through_leader_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3)?;
    let client = cluster.client()?;
    client.admin().create_topic(TOPIC, 1, 3, TopicConfig::default()).await?;

    let (mut acked, mut unknown) = within(
        "first produce",
        Duration::from_secs(60),
        produce(&client, "a", RECORDS_PER_PHASE),
    )
    .await??;

    let leader = cluster.wait_leader(TOPIC, 0, Duration::from_secs(20)).await?;
    wait_node_states(&client, &[(1, "up"), (2, "up"), (3, "up")]).await?;
    cluster.kill9(leader)?;
    let killed_at = Instant::now();

    let survivors = cluster.bootstrap_without(leader);
    let client = Client::new(ClientConfig::new(&survivors.join(","))?)?;
    let (acked_after, unknown_after) = within(
        "produce after the kill",
        Duration::from_secs(60),
        produce(&client, "b", RECORDS_PER_PHASE),
    )
    .await??;
    eprintln!(
        "leader {leader} killed; produce resumed and finished {:.2?} later",
        killed_at.elapsed()
    );
    for (offset, value) in acked_after {
        ensure!(
            acked.insert(offset, value).is_none(),
            "offset {offset} acknowledged twice across the kill"
        );
    }
    unknown.extend(unknown_after);

    let survivor_view: Vec<(u64, &str)> = (1..=3)
        .map(|id| (id, if id == leader { "down" } else { "up" }))
        .collect();
    wait_node_states(&client, &survivor_view).await?;

    let drained = within("draining", Duration::from_secs(60), drain_partition(&client, TOPIC, 0)).await??;
    check(
        &acked,
        &unknown,
        &drained
            .records
            .iter()
            .map(|r| (r.offset, value_of(r)))
            .collect::<Vec<_>>(),
    )?;

    // The killed node rejoins and catches up to the same high watermark.
    cluster.restart(leader)?;
    let high_watermark = drained.watermarks.high_watermark;
    let cluster = &cluster;
    until("the restarted node to catch up", Duration::from_secs(30), || async {
        let description = cluster.describe_on(leader, TOPIC).await?;
        Ok((description.partitions[0].high_watermark >= high_watermark).then_some(()))
    })
    .await
    .context("the restarted replica did not catch up")?;
    Ok(())
}

/// Waits until cluster status (from whichever node answers) shows each node in its state.
async fn wait_node_states(client: &Client, expected: &[(u64, &str)]) -> Result<()> {
    until("node states in cluster status", Duration::from_secs(20), || async {
        let status = client.admin().cluster_status().await?;
        let states: Vec<(u64, String)> = status.nodes.iter().map(|n| (n.node_id, n.state.clone())).collect();
        let matches = expected
            .iter()
            .all(|(id, state)| states.iter().any(|(node, actual)| node == id && actual == state));
        Ok(matches.then_some(()))
    })
    .await
}

fn value_of(record: &weir_client::ConsumerRecord) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
}

/// Every acknowledged record at its offset, offsets dense from 0, every value once, and nothing
/// that was neither acknowledged nor of unknown outcome.
fn check(acked: &BTreeMap<u64, String>, unknown: &[String], drained: &[(u64, String)]) -> Result<()> {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (position, (offset, value)) in drained.iter().enumerate() {
        ensure!(
            *offset == position as u64,
            "offset {offset} at position {position}: gap or reorder"
        );
        if let Some(previous) = seen.insert(value, *offset) {
            bail!("{value} stored twice, at {previous} and {offset}");
        }
        match acked.get(offset) {
            Some(expected) => ensure!(
                expected == value,
                "offset {offset}: acknowledged {expected}, read {value}"
            ),
            None => ensure!(
                unknown.contains(value),
                "offset {offset}: {value} was never acknowledged"
            ),
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(offset, _)| **offset >= drained.len() as u64)
        .collect();
    ensure!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    Ok(())
}
