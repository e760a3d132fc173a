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

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use weir_client::ClientConfig;
use weir_tests::cluster::Cluster;
use weir_tests::history::History;
use weir_tests::load::{outcomes, summary, Load};
use weir_tests::verdict::drain_check_converge;
use weir_tests::wait::until;

const TOPIC: &str = "kills";
const PARTITIONS: u32 = 2;
const NODES: usize = 3;
const DEFAULT_KILLS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_under_produce_loses_no_acked_record() -> Result<()> {
    let kills = weir_tests::count_from_env("WEIR_TESTS_LEADER_KILLS", DEFAULT_KILLS)?;
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    let all_up: Vec<(u64, &str)> = cluster.ids().into_iter().map(|id| (id, "up")).collect();
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let client = ClientConfig::new(&cluster.bootstrap().join(","))?;
    let load = Load::new(TOPIC, PARTITIONS, client).start(history.clone());

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

    load.stop(Duration::from_secs(90)).await?;
    eprint!("{}", outcomes(&history));
    let verdict = drain_check_converge(&cluster, TOPIC, PARTITIONS, &history).await;
    eprintln!("{}", summary("produce stall after a leader kill", &stalls));
    eprintln!("{}", summary("restart to caught up", &rejoins));
    eprintln!("{kills} kills took {kills_took:.1?}");
    verdict?;
    eprintln!("total {:.1?}", test_start.elapsed());
    Ok(())
}
