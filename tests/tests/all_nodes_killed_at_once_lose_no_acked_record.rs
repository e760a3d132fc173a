//! Fault matrix, all nodes killed at once, repeatedly: an acknowledged write (acks=all) was
//! flushed on a majority before its answer, so it survives every node losing its page cache
//! and in-memory state at the same moment.
//!
//! Three nodes, one topic of 2 partitions with replication factor 3; two producers write unique
//! values to both partitions, every write recorded in a history (invoke, then ok with its
//! offset, fail, or info when the outcome is unknown). Each round waits until produce flows on
//! both partitions, lets it run for 2 s, sends SIGKILL to the three brokers back to back, restarts all three
//! together on their data directories and ports (each recovers its logs from disk, a torn tail
//! included), and waits until produce resumes on both partitions (the outage: kill to the first
//! acknowledgement of a write invoked after the kill) and every node sees every node up with its replicas caught up. After
//! the rounds the producers stop, two readers drain both partitions, and the history checker
//! must find no lost, inconsistent, duplicated, aborted, phantom or reordered write and no
//! gap; every node's replica must reach the same high watermark and hold the same number of
//! bytes.
//!
//! While every node is down the producers' sends fail to connect and are retried until the
//! delivery timeout; a write in flight at the kill has an unknown outcome, after which its
//! writer starts over with a new client.
//!
//! `WEIR_TESTS_ALL_KILLS` overrides the number of rounds (default 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use weir_tests::cluster::Cluster;
use weir_tests::history::History;
use weir_tests::load::{outcomes, summary, Load};
use weir_tests::verdict::{drain_check_converge, wait_all_back};
use weir_tests::wait::until;

const TOPIC: &str = "blackouts";
const PARTITIONS: u32 = 2;
const NODES: usize = 3;
const DEFAULT_ROUNDS: usize = 5;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Steady load before each kill, once produce flows: the kill lands among many writes in
/// flight rather than right after the first one to get through.
const STEADY_LOAD: Duration = Duration::from_secs(2);
/// Bound on one wait inside a round (produce resuming, nodes catching up).
const ROUND_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_killed_at_once_lose_no_acked_record() -> Result<()> {
    let rounds = weir_tests::count_from_env("WEIR_TESTS_ALL_KILLS", DEFAULT_ROUNDS)?;
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let client = cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?;
    let mut load = Load::new(TOPIC, PARTITIONS, client);
    load.reconnect_after_unknown = true;
    let load = load.start(history.clone());

    let mut outages = Vec::new();
    let mut restarts = Vec::new();
    let mut caught_up = Vec::new();
    let rounds_start = Instant::now();
    for round in 0..rounds {
        let flowing_since = history.now();
        for partition in 0..PARTITIONS {
            until("produce flowing before the kill", ROUND_WAIT, || async {
                Ok(history.first_ok_after(partition, flowing_since))
            })
            .await?;
        }
        tokio::time::sleep(STEADY_LOAD).await;
        let invoked_so_far = history.ops().len();

        let killed_at = Instant::now();
        let killed = history.now();
        cluster.kill9_all()?;
        // Every process is gone (reaped): a write invoked from now on can only be acknowledged
        // by the restarted nodes.
        let dead = history.now();
        cluster.restart_all()?;
        let restarted = killed_at.elapsed();
        let mut resumed = Vec::new();
        for partition in 0..PARTITIONS {
            let at = until(
                &format!("produce to partition {partition} to resume after killing every node"),
                ROUND_WAIT,
                || async { Ok(history.first_ok_invoked_after(partition, dead)) },
            )
            .await?;
            resumed.push(at - killed);
        }
        let outage = resumed.iter().copied().max().unwrap_or_default();
        wait_all_back(&cluster, TOPIC, PARTITIONS, ROUND_WAIT)
            .await
            .context("the nodes did not all come back after the restart")?;
        let back = killed_at.elapsed();
        outages.push(outage);
        restarts.push(restarted);
        caught_up.push(back);
        eprintln!(
            "round {round}: killed all {NODES} nodes ({invoked_so_far} writes invoked so far), all listening again \
             after {restarted:.2?}, produce resumed after {:?} ms per partition, all up and caught up after \
             {back:.2?}; {:.1?} since the first kill",
            resumed.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            rounds_start.elapsed()
        );
    }
    let rounds_took = rounds_start.elapsed();
    load.stop(Duration::from_secs(90)).await?;
    eprint!("{}", outcomes(&history));

    let verdict = drain_check_converge(&cluster, TOPIC, PARTITIONS, &history).await;
    eprintln!("{}", summary("kill to all nodes listening again", &restarts));
    eprintln!(
        "{}",
        summary("produce outage (kill to the last partition resuming)", &outages)
    );
    eprintln!("{}", summary("kill to every node up and caught up", &caught_up));
    eprintln!(
        "{rounds} rounds took {rounds_took:.1?}; test {:.1?}",
        test_start.elapsed()
    );
    verdict?;
    Ok(())
}
