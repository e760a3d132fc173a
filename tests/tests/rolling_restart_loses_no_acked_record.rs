//! Rolling restart, the way operators upgrade a cluster: three rounds of SIGTERM to each node
//! in turn (graceful stop: leaderships handed over first, clean close), restart, wait until
//! the node is back and caught up, next node. Three nodes, one topic of 2 partitions with
//! replication factor 3, acks=all, history-recording producers throughout. Every stop must be
//! clean (exit 0) and every restart must open its logs without scanning them; the history
//! checker must find nothing and the replicas converge. Reports each stop's produce gap: from
//! SIGTERM to the first write acknowledged after it on each partition the node led.
//!
//! A consumer group of two members (auto-commit) reads the topic throughout, while its
//! coordinator moves with every stop: by the end it must have processed every record up to the
//! high watermark, none of them twice (a graceful restart never evicts a member, so no
//! partition restarts from an older commit), and the history checker must accept what the group
//! read like any reader's read. The producers are idempotent (the default): a write retried
//! after an unknown outcome is stored once, and the checker finds 0 duplicates.
//! `WEIR_TESTS_ROLLING_ROUNDS` overrides the round count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use weir_client::{ClientConfig, Consumer, ConsumerConfig, SeekTo};
use weir_tests::cluster::Cluster;
use weir_tests::history::{self, History, Read};
use weir_tests::load::{outcomes, summary, Load};
use weir_tests::verdict::{drain_check_converge, wait_all_back};
use weir_tests::wait::until;

const TOPIC: &str = "rolling";
const PARTITIONS: u32 = 2;
const NODES: usize = 3;
const DEFAULT_ROUNDS: usize = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ROUND_WAIT: Duration = Duration::from_secs(60);
const GROUP: &str = "rolling-readers";
const GROUP_MEMBERS: usize = 2;

/// (partition, offset, value) of every record the group's members processed, in order.
type Processed = Arc<Mutex<Vec<(u32, u64, String)>>>;

/// One group member polling until `stop`, then closing (commit, leave).
async fn group_member(client: ClientConfig, processed: Processed, stop: Arc<AtomicBool>) -> Result<()> {
    let config = ConsumerConfig::default()
        .group_id(GROUP)
        .start(SeekTo::Beginning)
        .max_wait_ms(200)
        .session_timeout_ms(6_000);
    let mut consumer = Consumer::new(client, config)?;
    consumer.subscribe(&[TOPIC])?;
    while !stop.load(Ordering::Relaxed) {
        // Short polls, so that the stop flag is seen; retriable errors are retried inside poll.
        let Ok(batch) = tokio::time::timeout(Duration::from_millis(500), consumer.poll()).await else {
            continue;
        };
        let records = batch.context("group member poll")?;
        let mut processed = processed.lock().unwrap_or_else(|p| p.into_inner());
        for record in records {
            let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
            processed.push((record.partition, record.offset, value));
        }
    }
    consumer.close().await.context("closing a group member")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_acked_record() -> Result<()> {
    let rounds = weir_tests::count_from_env("WEIR_TESTS_ROLLING_ROUNDS", DEFAULT_ROUNDS)?;
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let client = cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?;
    let mut load = Load::new(TOPIC, PARTITIONS, client);
    load.reconnect_after_unknown = true;
    let load = load.start(history.clone());
    let processed: Processed = Arc::default();
    let stop_group = Arc::new(AtomicBool::new(false));
    let members: Vec<_> = (0..GROUP_MEMBERS)
        .map(|_| -> Result<_> {
            let client = cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?;
            Ok(tokio::spawn(group_member(
                client,
                processed.clone(),
                stop_group.clone(),
            )))
        })
        .collect::<Result<_>>()?;

    let mut gaps = Vec::new();
    for round in 0..rounds {
        for node in cluster.ids() {
            let led: Vec<u32> = {
                let mut led = Vec::new();
                for partition in 0..PARTITIONS {
                    if cluster.leader_of(TOPIC, partition).await? == Some(node) {
                        led.push(partition);
                    }
                }
                led
            };
            let stopped = history.now();
            let stopped_at = Instant::now();
            let status = cluster.node_mut(node).terminate()?;
            ensure!(status.success(), "node {node} exited with {status} after SIGTERM");
            let stop_took = stopped_at.elapsed();
            let mut node_gaps = Vec::new();
            for partition in &led {
                let at = until(
                    &format!("produce to partition {partition} after node {node} stopped"),
                    ROUND_WAIT,
                    || async { Ok(history.first_ok_invoked_after(*partition, stopped)) },
                )
                .await?;
                node_gaps.push(at - stopped);
            }
            cluster.restart(node)?;
            let log = cluster.node(node).current_log();
            // A log created by this start (a partition created while the node stopped) has
            // nothing to trust a marker for; any other must have opened clean.
            let rescanned = log
                .lines()
                .any(|line| line.contains("clean_shutdown: false") && !line.contains("created: true"));
            ensure!(
                !rescanned,
                "node {node} rescanned a log after a clean stop:\n{}",
                cluster.node(node).log_tail()
            );
            wait_all_back(&cluster, TOPIC, PARTITIONS, ROUND_WAIT)
                .await
                .with_context(|| format!("node {node} did not come back after its restart"))?;
            eprintln!(
                "round {round}: node {node} (leader of {led:?}) stopped in {stop_took:.2?}, produce gap {:?} ms",
                node_gaps.iter().map(Duration::as_millis).collect::<Vec<_>>()
            );
            gaps.extend(node_gaps);
        }
    }
    load.stop(Duration::from_secs(90)).await?;
    eprint!("{}", outcomes(&history));
    let verdict = drain_check_converge(&cluster, TOPIC, PARTITIONS, &history).await;
    let group = check_group(&cluster, &history, &processed, &stop_group, members).await;
    eprintln!("{}", summary("produce gap per graceful stop of a leader", &gaps));
    eprintln!("test {:.1?}", test_start.elapsed());
    verdict?;
    group
}

/// Waits until the group processed every partition up to its high watermark, stops the
/// members, and checks what they read: every offset once, and a clean history check.
async fn check_group(
    cluster: &Cluster,
    history: &History,
    processed: &Processed,
    stop: &AtomicBool,
    members: Vec<tokio::task::JoinHandle<Result<()>>>,
) -> Result<()> {
    let client = cluster.client()?;
    let probe = client.consumer(ConsumerConfig::default());
    let mut high_watermarks = Vec::new();
    for partition in 0..PARTITIONS {
        high_watermarks.push(probe.watermarks(TOPIC, partition).await?.high_watermark);
    }
    let caught_up = until("the group to process every record", ROUND_WAIT, || async {
        let processed = processed.lock().unwrap_or_else(|p| p.into_inner());
        let done = (0..PARTITIONS).all(|partition| {
            let next = processed
                .iter()
                .filter(|(p, _, _)| *p == partition)
                .map(|(_, offset, _)| offset + 1)
                .max()
                .unwrap_or(0);
            next >= high_watermarks[partition as usize]
        });
        Ok(done.then_some(()))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for member in members {
        member.await.context("group member task")??;
    }
    caught_up?;
    let processed = processed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reads: BTreeMap<u32, BTreeMap<u64, String>> = BTreeMap::new();
    let mut twice = Vec::new();
    for (partition, offset, value) in processed {
        if reads.entry(partition).or_default().insert(offset, value).is_some() {
            twice.push((partition, offset));
        }
    }
    eprintln!(
        "consumer group: {} records processed, {} of them twice",
        reads.values().map(BTreeMap::len).sum::<usize>() + twice.len(),
        twice.len()
    );
    ensure!(
        twice.is_empty(),
        "the group processed {} record(s) twice (first: {:?}) although no member was evicted",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    let reads: Vec<Read> = (0..PARTITIONS)
        .map(|partition| Read {
            reader: GROUP.to_string(),
            partition,
            high_watermark: high_watermarks[partition as usize],
            records: reads
                .remove(&partition)
                .unwrap_or_default()
                .into_iter()
                .filter(|(offset, _)| *offset < high_watermarks[partition as usize])
                .collect(),
        })
        .collect();
    let report = history::check(&history.ops(), &reads);
    eprintln!("history checker on the group's reads:\n{report}");
    report.into_result()?;
    Ok(())
}
