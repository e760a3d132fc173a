//! One node of three runs out of disk (its data directory is a small tmpfs filled with a file):
//! as the partition's leader it refuses produce with RESOURCE_EXHAUSTED and hands leadership to
//! a follower, so the cluster keeps taking writes on its majority; the full node stays up and
//! readable; once space returns it catches up and leads again. Every acknowledged record is
//! read back. Needs root (mount); elsewhere it prints why and passes without running.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use weir_client::{Error, ProducerConfig, ProducerRecord, TopicConfig};
use weir_proto::v1 as proto;
use weir_tests::cluster::Cluster;
use weir_tests::records::drain_partition;
use weir_tests::tmpfs::Tmpfs;
use weir_tests::wait::until;

const TOPIC: &str = "crowded";
const WAIT: Duration = Duration::from_secs(60);
/// Small steps and segments so the tmpfs holds the controller and the partition with room to
/// spare until the filler takes it; quick balancing so leadership returns within the test.
const CONFIG: &str = "[log]\nsegment_allocation_step_bytes = 1048576\n[raft]\nleader_balance_interval_ms = 1000\n";

/// Writes `path` until the file system is full.
fn fill(path: &Path) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0x5a_u8; 1 << 16];
    loop {
        if let Err(error) = file.write_all(&chunk) {
            ensure!(error.raw_os_error() == Some(libc::ENOSPC), "filling: {error}");
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_node_keeps_the_cluster_writable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("n1"), "96m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return Ok(());
    };
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, CONFIG)?;
    let args = ["--config".to_string(), config.display().to_string()];
    let mut cluster = Cluster::start_with_args(dir.path(), 3, &args)?;
    let client = cluster.client()?;
    let topic_config = TopicConfig {
        segment_bytes_max: Some(1 << 20),
        ..TopicConfig::default()
    };
    client.admin().create_topic(TOPIC, 1, 3, topic_config).await?;
    let full = cluster.describe_on(1, TOPIC).await?.partitions[0].replicas[0];
    ensure!(full == 1, "the first topic's preferred leader is node 1, not {full}");
    until("node 1 to lead", WAIT, || async {
        Ok(cluster.leader_of(TOPIC, 0).await?.filter(|leader| *leader == 1))
    })
    .await?;

    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    let mut acked = BTreeMap::new();
    let send = |value: String| {
        let producer = &producer;
        async move {
            let record = ProducerRecord::new(TOPIC).with_partition(0).with_value(value.clone());
            (value, producer.send(record).await)
        }
    };
    for i in 0..20 {
        let (value, result) = send(format!("before-{i}")).await;
        acked.insert(result?.offset, value);
    }

    let filler = dir.path().join("n1").join("filler");
    fill(&filler)?;
    // Writes go on: the full leader refuses (RESOURCE_EXHAUSTED) and hands over; a follower
    // with room takes over.
    let mut refused = 0;
    let value = "x".repeat(8 << 10);
    for i in 0..400 {
        match send(format!("during-{i}-{value}")).await {
            (value, Ok(metadata)) => {
                acked.insert(metadata.offset, value);
            }
            (_, Err(Error::ResourceExhausted { .. })) => refused += 1,
            (_, Err(error)) if error.is_outcome_unknown() => {}
            (_, Err(error)) => bail!("write {i} failed: {error}"),
        }
    }
    let leader = cluster.leader_of(TOPIC, 0).await?;
    ensure!(leader.is_some_and(|l| l != 1), "leader {leader:?} while node 1 is full");
    eprintln!(
        "while node 1 was full: {refused} writes refused, {} acknowledged in all",
        acked.len()
    );
    ensure!(acked.len() > 300, "only {} writes acknowledged", acked.len());

    // The full node is up and readable (committed records, from its own replica).
    ensure!(cluster.node_mut(1).is_running()?, "node 1 stopped");
    let mut data = cluster.node(1).data_client().await?;
    let request = proto::FetchRequest {
        topic: TOPIC.to_owned(),
        partition: 0,
        offset: 0,
        from_replica: true,
        ..Default::default()
    };
    let served = data
        .fetch(request)
        .await
        .context("reading from the full node")?
        .into_inner();
    ensure!(!served.batches.is_empty(), "the full node serves nothing");

    // Space returns: node 1 catches up and leads again.
    std::fs::remove_file(&filler)?;
    let end = acked.keys().next_back().map_or(0, |last| last + 1);
    cluster.wait_replicas_at(TOPIC, &[end], WAIT).await?;
    until("node 1 to lead again", WAIT, || async {
        Ok(cluster.leader_of(TOPIC, 0).await?.filter(|leader| *leader == 1))
    })
    .await?;
    let drained = drain_partition(&client, TOPIC, 0).await?;
    let read: BTreeMap<u64, Vec<u8>> = drained
        .records
        .into_iter()
        .map(|r| (r.offset, r.value.map(|v| v.to_vec()).unwrap_or_default()))
        .collect();
    for (offset, value) in &acked {
        ensure!(
            read.get(offset).map(Vec::as_slice) == Some(value.as_bytes()),
            "acknowledged record at offset {offset} not read back"
        );
    }
    Ok(())
}
