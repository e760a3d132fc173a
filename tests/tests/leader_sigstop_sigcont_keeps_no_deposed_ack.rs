//! Fault matrix, SIGSTOP/SIGCONT of the leader: a paused leader is deposed, and nothing it
//! acknowledges (before the pause, or after it wakes up still believing it leads) survives as a
//! different value or goes missing.
//!
//! Three nodes, one topic of 2 partitions with replication factor 3, acks=all; two producers
//! write unique values to both partitions, every write recorded in a history (invoke, then ok
//! with its offset, fail, or info when the outcome is unknown). Each round pauses (SIGSTOP) the
//! current leader of one partition (alternating) for longer than the election timeout (10 ticks
//! of 100 ms, randomized up to twice that): the other two elect a new leader and produce goes
//! on; the round measures the stall (pause to the first acknowledgement of a write invoked after
//! the pause on that partition).
//! Then the node gets SIGCONT. It wakes up as a leader of an old term, with requests buffered
//! in its sockets that it now proposes; the others' answers (a higher term) depose it. The round
//! waits until every node sees every node up and every replica caught up. After the rounds the
//! producers stop, two readers drain both partitions, and the history checker must find no
//! lost, inconsistent (an acknowledgement of the deposed leader overwritten by the new one),
//! duplicated, aborted, phantom or reordered write and no gap; every node's replica must reach
//! the same high watermark and hold the same number of bytes.
//!
//! A paused broker keeps its connections open and never answers, so the two producers use a 2 s
//! request timeout, and a writer whose write timed out starts over with a new client (the
//! client does not refresh its metadata after a write of unknown outcome; see
//! `weir_tests::load`). Their requests to the paused leader have timed out by the time it
//! wakes, so a third, *patient* producer (30 s request timeout) keeps its requests waiting
//! through the pause: the deposed leader's answers to them after SIGCONT reach a client, and
//! any ok among them is checked like every other. Each round reports how the patient writes
//! that were pending across the SIGCONT ended.
//!
//! `WEIR_TESTS_SIGSTOP_ROUNDS` overrides the number of rounds (default 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use weir_client::ClientConfig;
use weir_tests::cluster::Cluster;
use weir_tests::history::{History, Outcome};
use weir_tests::load::{outcomes, summary, Load};
use weir_tests::verdict::{drain_check_converge, wait_all_back};
use weir_tests::wait::until;

const TOPIC: &str = "pauses";
const PARTITIONS: u32 = 2;
const NODES: usize = 3;
const DEFAULT_ROUNDS: usize = 5;
/// How long a leader stays paused at least: over the longest randomized election timeout
/// (2 x 10 ticks x 100 ms), so the others surely elect a new leader while it sleeps.
const PAUSE_MIN: Duration = Duration::from_millis(3_000);
/// Producers' request timeout: a request to the paused leader waits this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on one wait inside a round (a new leader, produce resuming, the node catching up).
const ROUND_WAIT: Duration = Duration::from_secs(60);
/// Producer id of the patient producer, whose requests wait out the pause.
const PATIENT_PRODUCER: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigstop_sigcont_keeps_no_deposed_ack() -> Result<()> {
    let rounds = weir_tests::count_from_env("WEIR_TESTS_SIGSTOP_ROUNDS", DEFAULT_ROUNDS)?;
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let client = cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?;
    let mut load = Load::new(TOPIC, PARTITIONS, client);
    load.reconnect_after_unknown = true;
    let mut patient = Load::new(TOPIC, PARTITIONS, ClientConfig::new(&cluster.bootstrap().join(","))?);
    patient.first_producer = PATIENT_PRODUCER;
    patient.producers = 1;
    let patient = patient.start(history.clone());
    let load = load.start(history.clone());

    let mut stalls = Vec::new();
    let mut elections = Vec::new();
    let mut rejoins = Vec::new();
    // (round, node, time of its SIGCONT on the history's clock)
    let mut wakes = Vec::new();
    let rounds_start = Instant::now();
    for round in 0..rounds {
        let partition = (round % PARTITIONS as usize) as u32;
        let leader = cluster.wait_leader(TOPIC, partition, ROUND_WAIT).await?;
        let flowing_since = history.now();
        until("produce flowing before the pause", ROUND_WAIT, || async {
            Ok(history.first_ok_after(partition, flowing_since))
        })
        .await?;

        cluster.pause(leader)?;
        let paused_at = Instant::now();
        let paused = history.now();
        let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
        let cluster_ref = &cluster;
        let new_leader = until(
            &format!("a leader of partition {partition} other than the paused node {leader}"),
            ROUND_WAIT,
            || cluster_ref.leader_among(TOPIC, partition, &others),
        )
        .await?;
        let elected = paused_at.elapsed();
        let resumed = until(
            &format!("produce to partition {partition} to resume while node {leader} is paused"),
            ROUND_WAIT,
            || async { Ok(history.first_ok_invoked_after(partition, paused)) },
        )
        .await?;
        let stall = resumed - paused;
        ensure!(
            cluster.node_mut(leader).is_running()?,
            "node {leader} exited while paused"
        );
        // Produce goes on without the paused node, whose log falls behind and whose buffered
        // requests pile up until it wakes.
        if let Some(left) = PAUSE_MIN.checked_sub(paused_at.elapsed()) {
            tokio::time::sleep(left).await;
        }
        let pause_took = paused_at.elapsed();
        cluster.resume(leader)?;
        let woke_at = Instant::now();
        wakes.push((round, leader, history.now()));
        wait_all_back(&cluster, TOPIC, PARTITIONS, ROUND_WAIT)
            .await
            .with_context(|| format!("node {leader} did not come back after SIGCONT"))?;
        let rejoin = woke_at.elapsed();
        stalls.push(stall);
        elections.push(elected);
        rejoins.push(rejoin);
        eprintln!(
            "round {round}: paused node {leader} (leader of {partition}) for {pause_took:.2?}; node {new_leader} \
             leads after {elected:.2?}; produce stalled {stall:.2?}; back and caught up {rejoin:.2?} after \
             SIGCONT; {:.1?} since the first pause",
            rounds_start.elapsed()
        );
    }
    let rounds_took = rounds_start.elapsed();
    load.stop(Duration::from_secs(90)).await?;
    patient.stop(Duration::from_secs(90)).await?;
    report_patient_writes(&history, &wakes);
    eprint!("{}", outcomes(&history));

    let verdict = drain_check_converge(&cluster, TOPIC, PARTITIONS, &history).await;
    eprintln!("{}", summary("produce stall after pausing the leader", &stalls));
    eprintln!("{}", summary("pause to a new leader", &elections));
    eprintln!("{}", summary("SIGCONT to back and caught up", &rejoins));
    eprintln!(
        "{rounds} rounds took {rounds_took:.1?}; test {:.1?}",
        test_start.elapsed()
    );
    verdict?;
    Ok(())
}

/// For each SIGCONT, how the patient producer's writes that were pending across it ended (its
/// requests to the paused leader, answered by then by the deposed leader or after a retry).
fn report_patient_writes(history: &History, wakes: &[(usize, u64, Duration)]) {
    let ops = history.ops();
    for (round, node, woke) in wakes {
        let (mut ok, mut failed, mut unknown) = (0, 0, 0);
        let mut reasons: Vec<&str> = Vec::new();
        let pending = ops.iter().filter(|op| {
            op.producer == PATIENT_PRODUCER && op.invoked < *woke && op.completed.is_none_or(|done| done > *woke)
        });
        for op in pending {
            match &op.outcome {
                Outcome::Ok { .. } => ok += 1,
                Outcome::Fail(reason) => {
                    failed += 1;
                    reasons.push(reason);
                }
                Outcome::Info(reason) => {
                    unknown += 1;
                    reasons.push(reason);
                }
                Outcome::Pending => unknown += 1,
            }
        }
        reasons.dedup();
        eprintln!(
            "round {round}: patient writes pending when node {node} woke up: {ok} ok, {failed} failed, \
             {unknown} unknown {reasons:?}"
        );
    }
}
