//! Three brokers form one cluster; a replication-factor-3 partition keeps every acknowledged
//! record (acks=all) when its leader is killed with SIGKILL: a new leader takes over, produce
//! resumes, and the killed node catches up after its restart.
//!
//! This is the first multi-node test; the full fault matrix (repeated kills, pauses, network
//! cuts, the history checker) comes with the replication issue.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use weir_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, TopicConfig};
use weir_tests::records::drain_partition;
use weir_tests::wait::{until, within};
use weir_tests::BrokerProcess;

const TOPIC: &str = "replicated";
const RECORDS_PER_PHASE: usize = 300;

/// Ports for the nodes, found free by binding port 0 (and released for the brokers).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Starts the nodes at once: each waits for a controller quorum before it reports ready.
fn start_cluster(dir: &std::path::Path) -> Result<Vec<BrokerProcess>> {
    let ports = free_ports(3)?;
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
            let args = vec![
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--peers".into(),
                peers.clone(),
            ];
            std::thread::spawn(move || BrokerProcess::start_listening(data, &listen, args))
        })
        .collect();
    starts
        .into_iter()
        .map(|start| start.join().map_err(|_| anyhow::anyhow!("start thread panicked"))?)
        .collect()
}

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
    let mut nodes = start_cluster(dir.path())?;
    let bootstrap: Vec<String> = nodes.iter().map(BrokerProcess::bootstrap).collect();
    let client = Client::new(ClientConfig::new(&bootstrap.join(","))?)?;
    client.admin().create_topic(TOPIC, 1, 3, TopicConfig::default()).await?;

    let (mut acked, mut unknown) = within(
        "first produce",
        Duration::from_secs(60),
        produce(&client, "a", RECORDS_PER_PHASE),
    )
    .await??;

    let leader = until("a leader for the partition", Duration::from_secs(20), || async {
        let description = client.admin().describe_topic(TOPIC).await?;
        Ok(description.partitions[0].leader)
    })
    .await?;
    let killed = (leader - 1) as usize;
    wait_node_states(&client, &[(1, "up"), (2, "up"), (3, "up")]).await?;
    nodes[killed].kill9()?;
    let killed_at = Instant::now();

    let survivors: Vec<String> = bootstrap
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, b)| b.clone())
        .collect();
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
    nodes[killed].restart()?;
    let high_watermark = drained.watermarks.high_watermark;
    let rejoined = nodes[killed].client()?;
    until("the restarted node to catch up", Duration::from_secs(30), || async {
        let description = rejoined.admin().describe_topic(TOPIC).await?;
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
