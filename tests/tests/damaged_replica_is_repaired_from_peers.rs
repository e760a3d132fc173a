//! A damaged replica is detected, never served, and repaired from its peers (three nodes, one
//! partition with replication factor 3, 64 KiB segments so that most data is in sealed
//! segments):
//!
//! 1. A bit flip in a sealed segment of the partition's preferred leader while it is stopped
//!    (after SIGTERM: the clean marker means no scan at open). The scrub finds the damage, the
//!    replica cuts its log at the damaged entry and gets the rest from the leader; once it is
//!    whole again, leadership returns to it, and every acknowledged record is read back from it
//!    with its value.
//! 2. A torn tail on a follower killed with SIGKILL (the last batch overwritten): recovery cuts
//!    it, the node catches up, and every replica ends at the same high watermark and size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use weir_client::{ProducerConfig, ProducerRecord, TopicConfig};
use weir_tests::cluster::Cluster;
use weir_tests::records::drain_partition;
use weir_tests::wait::until;

const TOPIC: &str = "damaged";
const RECORDS: usize = 3_000;
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// Fast scrub and balance, so the test does not wait for production-paced background work.
const CONFIG: &str = "[raft]\nscrub_bytes_per_sec = 268435456\nleader_balance_interval_ms = 1000\n";

/// The partition's segment files on node `node`, by base index.
fn segments(cluster: &Cluster, node: u64) -> Result<Vec<PathBuf>> {
    let partitions = cluster.node(node).data_dir().join("partitions");
    let dir = std::fs::read_dir(&partitions)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{TOPIC}-0.g")))
        })
        .with_context(|| format!("no directory of {TOPIC}-0 in {}", partitions.display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    Ok(files)
}

fn flip_bit(path: &Path, position: usize) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    ensure!(
        position < bytes.len(),
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    bytes[position] ^= 0x04;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Overwrites the last `count` data bytes of `path` (before its zero-filled preallocation).
fn tear_tail(path: &Path, count: usize) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    ensure!(end > count, "{} holds only {end} data bytes", path.display());
    for byte in &mut bytes[end - count..end] {
        *byte = 0xA5;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

async fn produce(cluster: &Cluster, prefix: &str, acked: &mut BTreeMap<u64, String>) -> Result<()> {
    let client = cluster.client()?;
    // Small batches: many entries, spread over many segments.
    let producer = client.producer(ProducerConfig::default().linger_ms(1).batch_bytes_max(4 << 10))?;
    let sends = (0..RECORDS).map(|i| {
        let value = format!("{prefix}-{i:06}-{}", "x".repeat(150));
        let record = ProducerRecord::new(TOPIC).with_partition(0).with_value(value.clone());
        let producer = &producer;
        async move { (value, producer.send(record).await) }
    });
    for (value, result) in futures::future::join_all(sends).await {
        let metadata = result.with_context(|| format!("sending {value}"))?;
        ensure!(
            acked.insert(metadata.offset, value).is_none(),
            "offset acknowledged twice"
        );
    }
    Ok(())
}

async fn high_watermarks(cluster: &Cluster) -> Result<Vec<(u64, u64)>> {
    let mut marks = Vec::new();
    for id in cluster.ids() {
        let description = cluster.describe_on(id, TOPIC).await?;
        marks.push((id, description.partitions[0].high_watermark));
    }
    Ok(marks)
}

async fn wait_converged(cluster: &Cluster, at_least: u64) -> Result<()> {
    until("every replica at the same high watermark", REPAIR_TIMEOUT, || async {
        let marks = high_watermarks(cluster).await?;
        let first = marks[0].1;
        Ok((first >= at_least && marks.iter().all(|(_, m)| *m == first)).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_replica_is_repaired_from_peers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, CONFIG)?;
    let args = ["--config".to_string(), config.display().to_string()];
    let mut cluster = Cluster::start_with_args(dir.path(), 3, &args)?;
    let client = cluster.client()?;
    let topic_config = TopicConfig {
        segment_bytes_max: Some(64 << 10),
        ..TopicConfig::default()
    };
    client.admin().create_topic(TOPIC, 1, 3, topic_config).await?;
    let preferred = cluster.describe_on(1, TOPIC).await?.partitions[0].replicas[0];
    until("the preferred replica to lead", REPAIR_TIMEOUT, || async {
        Ok(cluster.leader_of(TOPIC, 0).await?.filter(|l| *l == preferred))
    })
    .await?;
    let mut acked = BTreeMap::new();
    produce(&cluster, "a", &mut acked).await?;
    wait_converged(&cluster, RECORDS as u64).await?;

    // 1. Bit flip in a sealed segment of the stopped preferred leader.
    let victim = preferred;
    let status = cluster.node_mut(victim).terminate()?;
    ensure!(status.success(), "SIGTERM exit {status}");
    let files = segments(&cluster, victim)?;
    ensure!(files.len() >= 4, "expected several segments, found {files:?}");
    let sealed = &files[1];
    let length = std::fs::metadata(sealed)?.len() as usize;
    flip_bit(sealed, length / 2)?;
    cluster.restart(victim)?;
    until(
        "the scrub to find the damage and the repair to finish",
        REPAIR_TIMEOUT,
        || async {
            let log = cluster.node(victim).current_log();
            Ok((log.contains("damaged log data found") && log.contains("repair finished")).then_some(()))
        },
    )
    .await
    .with_context(|| cluster.node(victim).log_tail())?;
    until(
        "leadership to return to the repaired replica",
        REPAIR_TIMEOUT,
        || async { Ok(cluster.leader_of(TOPIC, 0).await?.filter(|l| *l == victim)) },
    )
    .await?;
    // Read everything back from the repaired replica, now the leader.
    let drained = drain_partition(&cluster.node(victim).client()?, TOPIC, 0).await?;
    let read: BTreeMap<u64, String> = drained
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    ensure!(
        read.len() == acked.len(),
        "read {} records, {} were acknowledged",
        read.len(),
        acked.len()
    );
    for (offset, value) in &acked {
        match read.get(offset) {
            Some(got) if got == value => {}
            other => bail!("offset {offset}: acknowledged {value:?}, read {other:?}"),
        }
    }

    // 2. Torn tail on a follower killed with SIGKILL.
    let follower = cluster.ids().into_iter().find(|id| *id != victim).expect("three nodes");
    cluster.kill9(follower)?;
    let last = segments(&cluster, follower)?.pop().context("no segment")?;
    tear_tail(&last, 64)?;
    cluster.restart(follower)?;
    until("recovery to cut the torn tail", REPAIR_TIMEOUT, || async {
        Ok(cluster
            .node(follower)
            .current_log()
            .contains("cutting a torn tail")
            .then_some(()))
    })
    .await
    .with_context(|| cluster.node(follower).log_tail())?;
    produce(&cluster, "b", &mut acked).await?;
    wait_converged(&cluster, acked.len() as u64).await?;
    Ok(())
}
