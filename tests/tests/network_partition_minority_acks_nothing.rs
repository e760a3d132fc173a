//! Fault matrix, a network partition isolating one node: the minority side acknowledges
//! nothing, the majority keeps serving, and after healing the node rejoins and catches up with
//! no acknowledged write lost or changed.
//!
//! The partition is real: each broker runs in a Linux network namespace of its own, joined to
//! the others by a bridge in the test's client namespace (`weir_tests::netns`, created and
//! deleted by the test; it needs root and `ip`, and without them the test prints "skipped:
//! <reason>" and passes without its assertions). Cutting a node adds iptables rules in its
//! namespace that drop every packet in and out of its interface (or, without iptables, takes
//! the interface down), so peers and clients see silence, as in a real partition; healing
//! removes them.
//!
//! Three nodes, one topic of 2 partitions with replication factor 3, acks=all; two producers in
//! the client namespace (2 s request timeout, a new client after a write of unknown outcome)
//! write unique values to both partitions, every write recorded in a history. Each round cuts
//! off the current leader of one partition (alternating), so that the minority holds a leader
//! that does not know yet that it is deposed. While the cut lasts (6 s at least):
//!
//! - a minority client, on a thread inside the isolated node's namespace so that it can reach
//!   that node and nothing else, bootstrapped with that node only (1 s request timeout, 3 s
//!   delivery timeout), writes to both partitions; every one of its writes must fail or end
//!   with an unknown outcome, none may be acknowledged;
//! - the majority producers must get writes acknowledged on both partitions (the round reports
//!   how long each partition stalled after the cut, and how many writes the majority
//!   acknowledged during the cut: invoked after the cut began, acknowledged before it healed).
//!
//! Then the minority client stops, the cut heals, and every node must see every node up and
//! every replica catch up with the leaders. After the rounds the producers stop, two readers
//! drain both partitions, and the history checker (the minority's writes included) must find no
//! lost, inconsistent, duplicated, aborted, phantom or reordered write and no gap; every node's
//! replica must reach the same high watermark and hold the same number of bytes.
//!
//! `WEIR_TESTS_PARTITION_ROUNDS` overrides the number of rounds (default 3).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use weir_client::{ClientConfig, ProducerConfig};
use weir_tests::cluster::{Cluster, NodeSpec};
use weir_tests::history::{History, Outcome};
use weir_tests::load::{outcomes, summary, Load, Writer};
use weir_tests::netns::{self, NetLab, Unsupported};
use weir_tests::verdict::{drain_check_converge, wait_all_back};
use weir_tests::wait::{until, within};

const TOPIC: &str = "partitions";
const PARTITIONS: u32 = 2;
const NODES: usize = 3;
const DEFAULT_ROUNDS: usize = 3;
/// Every broker listens on this port of its own namespace's address.
const PORT: u16 = 9292;
/// How long a cut lasts at least: well over the longest randomized election timeout
/// (2 x 10 ticks x 100 ms), so that the isolated leader's check-quorum deposes it and the
/// minority client meets both a leader that cannot commit and a node that knows no leader.
const CUT_MIN: Duration = Duration::from_secs(6);
/// The majority producers' timeouts (requests to the isolated node get no answer at all).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The minority client's timeouts: short, so that it makes several attempts per cut.
const MINORITY_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const MINORITY_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const MINORITY_DELIVERY_TIMEOUT_MS: u64 = 3_000;
/// Producer ids of the minority client: this plus the round (the majority's are 0 and 1).
const MINORITY_PRODUCER: u32 = 100;
/// Bound on one wait inside a round.
const ROUND_WAIT: Duration = Duration::from_secs(60);

fn skip(reason: &str) {
    // Both streams: whichever the runner shows, the skip is not silent.
    println!("skipped: {reason}");
    eprintln!("skipped: {reason}");
}

#[test]
fn network_partition_minority_acks_nothing() -> Result<()> {
    let rounds = weir_tests::count_from_env("WEIR_TESTS_PARTITION_ROUNDS", DEFAULT_ROUNDS)?;
    let tools = match netns::tools() {
        Ok(tools) => tools,
        Err(reason) => {
            skip(&reason);
            return Ok(());
        }
    };
    // Declared before the thread that runs the cluster: dropped (namespaces deleted) after it
    // has ended and killed every broker, also when it fails or panics.
    let mut lab = match NetLab::create(tools, NODES) {
        Ok(lab) => lab,
        Err(error) => match error.downcast_ref::<Unsupported>() {
            Some(unsupported) => {
                skip(&unsupported.to_string());
                return Ok(());
            }
            None => return Err(error),
        },
    };
    eprintln!(
        "network lab: client namespace {}, cuts by {:?}",
        lab.client_namespace(),
        lab.cut_method()
    );
    let client_namespace = lab.client_namespace();
    let outcome = std::thread::scope(|scope| {
        let lab = &mut lab;
        let cluster_thread =
            std::thread::Builder::new()
                .name("partition-test".into())
                .spawn_scoped(scope, move || -> Result<()> {
                    // This thread and every thread it starts (the runtime's) talk from the client
                    // namespace.
                    netns::enter(&client_namespace)?;
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?;
                    runtime.block_on(run(lab, rounds))
                })?;
        anyhow::Ok(cluster_thread.join())
    })?;
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn run(lab: &mut NetLab, rounds: usize) -> Result<()> {
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let specs: Vec<NodeSpec> = (1..=NODES as u64)
        .map(|id| NodeSpec {
            listen: format!("{}:{PORT}", lab.node_address(id)),
            command_prefix: lab.command_prefix(id),
        })
        .collect();
    let cluster = Cluster::start_nodes(dir.path(), &specs)?;
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let client = cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?;
    let mut load = Load::new(TOPIC, PARTITIONS, client);
    load.reconnect_after_unknown = true;
    let majority_producers = load.first_producer..load.first_producer + load.producers;
    let load = load.start(history.clone());

    let mut stalls = Vec::new();
    let mut rejoins = Vec::new();
    let rounds_start = Instant::now();
    for round in 0..rounds {
        let partition = (round % PARTITIONS as usize) as u32;
        let victim = cluster.wait_leader(TOPIC, partition, ROUND_WAIT).await?;
        let flowing_since = history.now();
        for p in 0..PARTITIONS {
            until("produce flowing before the cut", ROUND_WAIT, || async {
                Ok(history.first_ok_after(p, flowing_since))
            })
            .await?;
        }

        lab.isolate(victim)?;
        let cut_at = Instant::now();
        let cut = history.now();
        let minority_producer = MINORITY_PRODUCER + round as u32;
        let minority = MinorityWriters::start(lab, victim, minority_producer, history.clone())?;

        let mut round_stalls = Vec::new();
        for p in 0..PARTITIONS {
            let resumed = until(
                &format!("the majority to acknowledge a write on partition {p} with node {victim} cut off"),
                ROUND_WAIT,
                || async { Ok(history.first_ok_invoked_after(p, cut)) },
            )
            .await?;
            round_stalls.push(resumed - cut);
        }
        if let Some(left) = CUT_MIN.checked_sub(cut_at.elapsed()) {
            tokio::time::sleep(left).await;
        }
        minority.stop().await?;
        let healed = history.now();
        let cut_took = cut_at.elapsed();

        // Judged before healing: every write of the minority client has ended by now.
        let ops = history.ops();
        let majority_acked: Vec<usize> = (0..PARTITIONS)
            .map(|p| {
                ops.iter()
                    .filter(|op| op.partition == p && majority_producers.contains(&op.producer))
                    .filter(|op| matches!(op.outcome, Outcome::Ok { .. }))
                    .filter(|op| op.invoked > cut && op.completed.is_some_and(|at| at < healed))
                    .count()
            })
            .collect();
        let minority_ops: Vec<_> = ops.iter().filter(|op| op.producer == minority_producer).collect();
        let minority_acked: Vec<String> = minority_ops
            .iter()
            .filter_map(|op| match op.outcome {
                Outcome::Ok { offset } => Some(format!("{:?} at {}/{offset}", op.value, op.partition)),
                _ => None,
            })
            .collect();
        let minority_failed = minority_ops
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Fail(_)))
            .count();
        let minority_unknown = minority_ops.len() - minority_failed - minority_acked.len();
        let mut minority_reasons: Vec<&str> = minority_ops
            .iter()
            .filter_map(|op| match &op.outcome {
                Outcome::Fail(reason) | Outcome::Info(reason) => Some(reason.as_str()),
                _ => None,
            })
            .collect();
        minority_reasons.sort_unstable();
        minority_reasons.dedup();
        eprintln!(
            "round {round}: minority client of node {victim}: {} writes, {failed} failed, {unknown} unknown, {} \
             acknowledged; reasons: {minority_reasons:#?}",
            minority_ops.len(),
            minority_acked.len(),
            failed = minority_failed,
            unknown = minority_unknown,
        );
        ensure!(
            minority_acked.is_empty(),
            "round {round}: node {victim}, cut off from the others, acknowledged writes: {minority_acked:?}"
        );
        ensure!(
            minority_ops.len() >= PARTITIONS as usize,
            "round {round}: the minority client made only {} writes; the check above proves little",
            minority_ops.len()
        );
        ensure!(
            majority_acked.iter().all(|acked| *acked > 0),
            "round {round}: the majority acknowledged {majority_acked:?} writes per partition during the cut"
        );

        lab.heal(victim)?;
        let healed_at = Instant::now();
        wait_all_back(&cluster, TOPIC, PARTITIONS, ROUND_WAIT)
            .await
            .with_context(|| format!("node {victim} did not rejoin after the cut healed"))?;
        let rejoin = healed_at.elapsed();
        eprintln!(
            "round {round}: cut off node {victim} (leader of {partition}) for {cut_took:.2?}; majority produce \
             stalled {:?} ms per partition, then acknowledged {majority_acked:?} writes per partition during \
             the cut; node back and caught up {rejoin:.2?} after healing; {:.1?} since the first cut",
            round_stalls.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            rounds_start.elapsed()
        );
        stalls.push(round_stalls[partition as usize]);
        rejoins.push(rejoin);
    }
    let rounds_took = rounds_start.elapsed();
    load.stop(Duration::from_secs(90)).await?;
    eprint!("{}", outcomes(&history));

    let verdict = drain_check_converge(&cluster, TOPIC, PARTITIONS, &history).await;
    eprintln!(
        "{}",
        summary("majority produce stall on the isolated leader's partition", &stalls)
    );
    eprintln!("{}", summary("heal to back and caught up", &rejoins));
    eprintln!(
        "{rounds} rounds took {rounds_took:.1?}; test {:.1?}",
        test_start.elapsed()
    );
    verdict?;
    Ok(())
}

/// The minority client: one writer per partition on a thread inside the isolated node's
/// namespace, bootstrapped with that node only.
struct MinorityWriters {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl MinorityWriters {
    fn start(lab: &NetLab, node: u64, producer: u32, history: Arc<History>) -> Result<Self> {
        let client = ClientConfig::builder()
            .bootstrap(&format!("{}:{PORT}", lab.node_address(node)))
            .request_timeout(MINORITY_REQUEST_TIMEOUT)
            .connect_timeout(MINORITY_CONNECT_TIMEOUT)
            .build()?;
        let mut load = Load::new(TOPIC, PARTITIONS, client);
        load.producer = ProducerConfig::default()
            .linger_ms(0)
            .delivery_timeout_ms(MINORITY_DELIVERY_TIMEOUT_MS);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = netns::spawn_in(&lab.node_namespace(node), "minority-client", move || {
            // A runtime of its own on this thread: its sockets are made in the node's namespace.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let writers = (0..PARTITIONS).map(|partition| {
                    let writer = Writer {
                        load: load.clone(),
                        producer,
                        partition,
                    };
                    writer.run(history.clone(), thread_stop.clone())
                });
                futures::future::try_join_all(writers).await.map(|_| ())
            })
        })?;
        Ok(Self { stop, thread })
    }

    /// Stops the writers after their current writes and waits for them.
    async fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        let joined = within(
            "the minority client to stop",
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await??;
        match joined {
            Ok(result) => result,
            Err(_) => bail!("the minority client's thread panicked"),
        }
    }
}
