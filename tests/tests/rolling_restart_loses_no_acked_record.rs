//! Rolling restart, the way operators upgrade a cluster: three rounds of SIGTERM to each node
//! in turn (graceful stop: leaderships handed over first, clean close), restart, wait until
//! the node is back and caught up, next node. Three nodes, one topic of 2 partitions with
//! replication factor 3, acks=all, history-recording producers throughout. Every stop must be
//! clean (exit 0) and every restart must open its logs without scanning them; the history
//! checker must find nothing and the replicas converge. Reports each stop's produce gap: from
//! SIGTERM to the first write acknowledged after it on each partition the node led.
//!
//! (Consumer groups and the idempotent producer do not exist yet; once they do, this test gets
//! a group consumer and checks for 0 duplicates.) `WEIR_TESTS_ROLLING_ROUNDS` overrides the
//! round count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use weir_tests::cluster::Cluster;
use weir_tests::history::History;
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
            ensure!(
                !log.contains("clean_shutdown: false"),
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
    eprintln!("{}", summary("produce gap per graceful stop of a leader", &gaps));
    eprintln!("test {:.1?}", test_start.elapsed());
    verdict?;
    Ok(())
}
