//! Fault matrix, first row: kill -9 of a partition leader, 20 times, under steady produce load
//! (acks=all). Three nodes, one topic of 2 partitions with replication factor 3; two producers
//! write unique values to both partitions, every write recorded in a history (invoke, then ok
//! with its offset, fail, or info when the outcome is unknown). Each round kills the current
//! leader of one partition (alternating), measures how long produce to that partition stalls
//! (kill to the next acknowledged write on it), restarts the node and waits until it is back
//! (every node sees every node up, every replica caught up to the leader's high watermark at
//! restart). Then the producers stop, two readers drain both partitions from the leader, and the
//! history checker must find no lost, inconsistent, duplicated, aborted, phantom or reordered
//! write and no gap; finally every node's local replica must reach the same high watermark and
//! hold the same number of bytes.
//!
//! `WEIR_TESTS_LEADER_KILLS` overrides the number of kills (default 20).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use weir_client::{Client, ProducerConfig, ProducerRecord, TopicConfig};
use weir_tests::cluster::Cluster;
use weir_tests::history::{self, History, Outcome, Read};
use weir_tests::records::drain_partition;
use weir_tests::wait::{until, within};

const TOPIC: &str = "kills";
const PARTITIONS: u32 = 2;
const PRODUCERS: u32 = 2;
const NODES: usize = 3;
const DEFAULT_KILLS: usize = 20;
/// Pause between two sends of one producer on one partition: steady load, not a flood that
/// starves the brokers of the 2 cores.
const SEND_PAUSE: Duration = Duration::from_millis(2);

/// One producer: a sequential writer per partition (one write in flight per partition, so
/// its acked offsets on a partition must increase), until `stop`.
async fn produce(client: Client, producer: u32, history: Arc<History>, stop: Arc<AtomicBool>) -> Result<()> {
    let sender = client.producer(ProducerConfig::default().linger_ms(0))?;
    let writers = (0..PARTITIONS).map(|partition| {
        let (sender, history, stop) = (&sender, &history, &stop);
        async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("p{producer}-{partition}-{seq:07}");
                seq += 1;
                let record = ProducerRecord::new(TOPIC)
                    .with_partition(partition)
                    .with_value(value.clone());
                let id = history.invoke(producer, partition, value);
                let outcome = match sender.send(record).await {
                    Ok(metadata) if metadata.partition == partition => Outcome::Ok {
                        offset: metadata.offset,
                    },
                    Ok(metadata) => Outcome::Info(format!(
                        "acknowledged on partition {} instead of {partition}",
                        metadata.partition
                    )),
                    Err(error) if error.is_outcome_unknown() => Outcome::Info(error.to_string()),
                    Err(error) => Outcome::Fail(error.to_string()),
                };
                history.complete(id, outcome);
                tokio::time::sleep(SEND_PAUSE).await;
            }
        }
    });
    futures::future::join_all(writers).await;
    Ok(())
}

fn summary(label: &str, values: &mut [Duration]) -> String {
    values.sort();
    if values.is_empty() {
        return format!("{label}: none");
    }
    format!(
        "{label} over {} kills: min {:.2?}, median {:.2?}, max {:.2?}; all: {:?}",
        values.len(),
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
        values.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_under_produce_loses_no_acked_record() -> Result<()> {
    let kills = weir_tests::count_from_env("WEIR_TESTS_LEADER_KILLS", DEFAULT_KILLS)?;
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    let all_up: Vec<(u64, &str)> = cluster.ids().into_iter().map(|id| (id, "up")).collect();
    let admin = cluster.client()?;
    admin
        .admin()
        .create_topic(TOPIC, PARTITIONS, NODES as u32, TopicConfig::default())
        .await?;
    for partition in 0..PARTITIONS {
        cluster.wait_leader(TOPIC, partition, Duration::from_secs(30)).await?;
    }

    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let client = cluster.client()?;
            Ok(tokio::spawn(produce(client, producer, history.clone(), stop.clone())))
        })
        .collect::<Result<_>>()?;

    let mut stalls = Vec::new();
    let mut rejoins = Vec::new();
    let kills_start = Instant::now();
    for round in 0..kills {
        let partition = (round % PARTITIONS as usize) as u32;
        let leader = cluster.wait_leader(TOPIC, partition, Duration::from_secs(30)).await?;
        // Produce is flowing on the partition before the kill.
        let flowing_since = history.now();
        until("produce flowing before the kill", Duration::from_secs(30), || async {
            Ok(history.first_ok_after(partition, flowing_since))
        })
        .await?;

        cluster.kill9(leader)?;
        let killed = history.now();
        let resumed = until(
            &format!("produce to partition {partition} to resume after killing node {leader}"),
            Duration::from_secs(60),
            || async { Ok(history.first_ok_after(partition, killed)) },
        )
        .await?;
        let stall = resumed - killed;
        stalls.push(stall);

        let restarted = Instant::now();
        cluster.restart(leader)?;
        // The leaders' high watermarks now: the restarted node must catch up to them.
        let mut high_watermarks = Vec::new();
        for p in 0..PARTITIONS {
            let current = cluster.wait_leader(TOPIC, p, Duration::from_secs(30)).await?;
            let description = cluster.describe_on(current, TOPIC).await?;
            high_watermarks.push(description.partitions[p as usize].high_watermark);
        }
        for observer in cluster.ids() {
            cluster
                .wait_node_states(observer, &all_up, Duration::from_secs(30))
                .await?;
        }
        cluster
            .wait_replicas_at(TOPIC, &high_watermarks, Duration::from_secs(60))
            .await
            .with_context(|| format!("node {leader} did not catch up after its restart"))?;
        rejoins.push(restarted.elapsed());
        eprintln!(
            "round {round}: killed node {leader} (leader of {partition}), produce stalled {stall:.2?}, \
             node back and caught up {:.2?} after restart; {:.1?} since the first kill",
            restarted.elapsed(),
            kills_start.elapsed()
        );
    }
    let kills_took = kills_start.elapsed();

    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        within("a producer to stop", Duration::from_secs(90), producer).await???;
    }

    // Healed: every node is up. Drain both partitions with two independent readers.
    let mut reads = Vec::new();
    for reader in ["reader-a", "reader-b"] {
        let client = cluster.client()?;
        for partition in 0..PARTITIONS {
            let drained = within(
                "draining",
                Duration::from_secs(120),
                drain_partition(&client, TOPIC, partition),
            )
            .await??;
            reads.push(Read::from_drained(reader, &drained));
        }
    }
    let report = history::check(&history.ops(), &reads);
    eprintln!("{report}");
    eprintln!("{}", summary("produce stall after a leader kill", &mut stalls));
    eprintln!("{}", summary("restart to caught up", &mut rejoins));
    eprintln!(
        "{kills} kills took {kills_took:.1?}; test so far {:.1?}",
        test_start.elapsed()
    );
    report.into_result()?;

    // Replicas converge: each node's own replica reaches the drained high watermark, no more.
    let high_watermarks: Vec<u64> = (0..PARTITIONS)
        .map(|p| reads.iter().find(|r| r.partition == p).map_or(0, |r| r.high_watermark))
        .collect();
    for p in 0..PARTITIONS {
        let views: Vec<u64> = reads
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.high_watermark)
            .collect();
        ensure!(
            views.iter().all(|hw| *hw == high_watermarks[p as usize]),
            "readers saw different high watermarks on partition {p}: {views:?}"
        );
    }
    cluster
        .wait_replicas_at(TOPIC, &high_watermarks, Duration::from_secs(30))
        .await
        .context("replicas did not converge")?;
    for id in cluster.ids() {
        let description = cluster.describe_on(id, TOPIC).await?;
        for partition in &description.partitions {
            eprintln!(
                "node {id} partition {}: high watermark {}, {} bytes in {} segments, leader {:?}",
                partition.partition,
                partition.high_watermark,
                partition.size_bytes,
                partition.segments,
                partition.leader
            );
            ensure!(
                partition.high_watermark == high_watermarks[partition.partition as usize],
                "node {id} partition {}: high watermark {}, the drain read up to {}",
                partition.partition,
                partition.high_watermark,
                high_watermarks[partition.partition as usize]
            );
        }
    }
    // Same committed prefix, compared by size (describe has no checksum): every node's log of a
    // partition holds the same number of bytes.
    let cluster = &cluster;
    until(
        "every replica of a partition to hold the same bytes",
        Duration::from_secs(30),
        || async {
            let mut sizes = Vec::new();
            for id in cluster.ids() {
                let description = cluster.describe_on(id, TOPIC).await?;
                sizes.push(description.partitions.iter().map(|p| p.size_bytes).collect::<Vec<_>>());
            }
            Ok(sizes.windows(2).all(|pair| pair[0] == pair[1]).then_some(()))
        },
    )
    .await?;
    eprintln!("total {:.1?}", test_start.elapsed());
    Ok(())
}
