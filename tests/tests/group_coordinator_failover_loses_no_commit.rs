//! A consumer group's coordinator is killed (SIGKILL) while its members consume and commit
//! under produce load: no acknowledged commit is lost and the group keeps consuming.
//!
//! Three nodes, a topic of 12 partitions with replication factor 3, producers recording every
//! write in a history (acks=all, one writer per partition). Three in-process members of one
//! group (auto-commit off, `Consumer::commit` after processing every batch, 6 s session
//! timeout), each with its own client that knows all three nodes, each list starting at another
//! node (so one member's first address is the coordinator's). The coordinator is the leader of
//! the group's `__consumer_offsets` partition (`weir_proto::group_partition`); once the group
//! is stable and has committed, that node is killed with SIGKILL.
//!
//! Checks: within 15 s of the kill every member owns partitions and processed records again,
//! and every partition has a new acknowledged commit; every committed-offsets read (sampled
//! with `Admin::committed_offsets` every 200 ms throughout) is at or above every commit
//! acknowledged before the read began (so the commits acknowledged before the kill survive it)
//! and the committed offsets never go backwards; every acknowledged record is processed at
//! least once; no partition is owned by two members at once (overlaps after an `on_lost` are
//! reported, not failed: the design lets a member that lost its session learn it late); no
//! member gets a record below a commit acknowledged before it took the partition. Then the
//! killed node restarts (the coordinator may move back to it), the load stops, the group
//! catches up (committed offsets = high watermarks) and every node stops cleanly (SIGTERM).
//!
//! Reported, not asserted (the design guarantees none of it): whether the members kept their
//! partitions through the failover, how long consumption and the coordinator paused, and the
//! errors the members saw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use tokio::task::JoinHandle;
use weir_client::{Admin, Client, ClientConfig, Consumer, ConsumerConfig, SeekTo};
use weir_proto::{group_partition, OFFSETS_TOPIC};
use weir_tests::cluster::Cluster;
use weir_tests::groups::{self, Change, Journal, Recorded};
use weir_tests::history::{History, Outcome};
use weir_tests::load::{outcomes, Load};
use weir_tests::verdict::wait_all_back;
use weir_tests::wait::until;

const TOPIC: &str = "events";
const PARTITIONS: u32 = 12;
const GROUP: &str = "ledger";
const NODES: usize = 3;
const MEMBERS: [&str; 3] = ["a", "b", "c"];
/// Longer than a coordinator failover (an election and a replay, about 2 s), so that a member
/// need not lose its partitions; the test reports whether they did.
const SESSION_TIMEOUT_MS: u32 = 6_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two sends of one writer (one writer per partition).
const SEND_PAUSE: Duration = Duration::from_millis(20);
/// Consumption before the kill.
const STEADY: Duration = Duration::from_secs(3);
/// After the kill, every member and every partition must make progress within this.
const PROGRESS_BOUND: Duration = Duration::from_secs(15);
/// Consumption after the killed node is back (the coordinator may move back to it).
const AFTER_RESTART: Duration = Duration::from_secs(3);
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Bound on the other waits (group stable, catching up, stopping).
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_coordinator_failover_loses_no_commit() -> Result<()> {
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let mut load = Load::new(
        TOPIC,
        PARTITIONS,
        cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?,
    );
    load.producers = 1;
    load.send_pause = SEND_PAUSE;
    load.reconnect_after_unknown = true;
    let load = load.start(history.clone());

    let journal = Journal::new(TOPIC);
    let admin = Client::new(cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?)?.admin();
    let sampler = Sampler::start(admin.clone(), journal.clone());
    let addresses = cluster.bootstrap();
    let mut members = Vec::new();
    for (index, name) in MEMBERS.iter().enumerate() {
        let mut rotated = addresses.clone();
        rotated.rotate_left(index);
        let client = ClientConfig::builder()
            .bootstrap(&rotated.join(","))
            .request_timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        let consumer = Consumer::new(client, member_config(name))?;
        members.push(groups::spawn_member(
            name,
            consumer,
            TOPIC,
            journal.clone(),
            Duration::ZERO,
        )?);
    }
    wait_stable_and_committing(&journal).await?;
    tokio::time::sleep(STEADY).await;

    let coordinator = find_coordinator(&cluster, &admin).await?;
    let first_on_coordinator = MEMBERS[(coordinator - 1) as usize];
    eprintln!(
        "coordinator of {GROUP}: node {coordinator} (member {first_on_coordinator} lists it first); killing it at {:.1?}",
        test_start.elapsed()
    );
    let killed_at = journal.now();
    cluster.kill9(coordinator)?;
    let before_kill = journal.snapshot();
    let acked_before_kill = before_kill.max_acked_commits(Some(killed_at));

    let progress = wait_progress(&journal, killed_at, &acked_before_kill).await?;
    let after_failover = committed(&admin).await?;
    check_at_least(
        &after_failover,
        &acked_before_kill,
        "committed offsets after the failover",
    )?;

    cluster.restart(coordinator)?;
    wait_all_back(&cluster, TOPIC, PARTITIONS, WAIT).await?;
    let offsets_partitions = Client::new(cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?)?
        .partition_count(OFFSETS_TOPIC)
        .await?;
    wait_all_back(&cluster, OFFSETS_TOPIC, offsets_partitions, WAIT).await?;
    let back_at = journal.now();
    tokio::time::sleep(AFTER_RESTART).await;
    let coordinator_after = find_coordinator(&cluster, &admin).await?;

    load.stop(WAIT).await?;
    let ops = history.ops();
    wait_processed(&journal, &ops).await?;
    wait_committed_at_high_watermarks(&admin).await?;
    for member in members {
        member.stop(WAIT).await?;
    }
    let samples = sampler.stop().await?;
    let recorded = journal.snapshot();

    eprint!("{}", outcomes(&history));
    eprint!("{}", groups::summary(&recorded));
    report_failover(&recorded, killed_at, back_at, &progress, &samples);
    eprintln!("coordinator after the restart: node {coordinator_after}");

    check_samples(&samples, &recorded, killed_at)?;
    check_processed(&recorded, &ops)?;
    let intervals = groups::ownership(&recorded)?;
    let after_loss = groups::check_exclusive(&intervals)?;
    for overlap in &after_loss {
        eprintln!("overlap after a loss (allowed): {overlap}");
    }
    groups::check_delivered_to_owner(&recorded, &intervals)?;
    let takeovers = groups::check_no_delivery_below_commit(&recorded, &intervals)?;
    eprintln!("{takeovers} ownership intervals began at an acknowledged commit");

    for id in cluster.ids() {
        let status = cluster.node_mut(id).terminate()?;
        ensure!(status.success(), "node {id} exited with {status} after SIGTERM");
    }
    eprintln!("test {:.1?}", test_start.elapsed());
    Ok(())
}

fn member_config(name: &str) -> ConsumerConfig {
    ConsumerConfig::default()
        .group_id(GROUP)
        .client_id(name)
        .start(SeekTo::Beginning)
        .auto_commit(false)
        .session_timeout_ms(SESSION_TIMEOUT_MS)
        .max_wait_ms(500)
}

/// The leader of the group's `__consumer_offsets` partition, once the node that answers
/// `describe_group` (the coordinator) is that node too.
async fn find_coordinator(cluster: &Cluster, admin: &Admin) -> Result<u64> {
    let partitions = admin
        .metadata(&[OFFSETS_TOPIC])
        .await?
        .topics
        .iter()
        .find(|topic| topic.name == OFFSETS_TOPIC)
        .map(|topic| topic.partitions.len() as u32)
        .context("metadata does not list __consumer_offsets")?;
    let partition = group_partition(GROUP, partitions);
    until(
        &format!("the leader of {OFFSETS_TOPIC}/{partition} to answer describe_group"),
        WAIT,
        || async {
            let leader = cluster.leader_of(OFFSETS_TOPIC, partition).await?;
            let described = admin.describe_group(GROUP).await?.coordinator;
            Ok(leader.filter(|leader| *leader == described))
        },
    )
    .await
}

/// Each member owns partitions, every partition is owned, and each member has committed.
async fn wait_stable_and_committing(journal: &Journal) -> Result<()> {
    until("a stable group whose members all committed", WAIT, || async {
        let recorded = journal.snapshot();
        let intervals = groups::ownership(&recorded)?;
        let owners: BTreeMap<&str, usize> = open_owners(&intervals);
        let committed: Vec<&str> = MEMBERS
            .iter()
            .copied()
            .filter(|m| recorded.commits.iter().any(|c| c.member == *m))
            .collect();
        let owned: usize = owners.values().sum();
        let done = owners.len() == MEMBERS.len() && owned == PARTITIONS as usize && committed.len() == MEMBERS.len();
        Ok(done.then(|| eprintln!("partitions per member: {owners:?}")))
    })
    .await
}

/// How many partitions each member owns now.
fn open_owners(intervals: &BTreeMap<u32, Vec<groups::Interval>>) -> BTreeMap<&str, usize> {
    let mut owners = BTreeMap::new();
    for list in intervals.values() {
        for interval in list.iter().filter(|interval| interval.to.is_none()) {
            *owners.entry(interval.member.as_str()).or_default() += 1;
        }
    }
    owners
}

/// When the group made progress again after the kill.
#[derive(Debug, Default)]
struct Progress {
    /// Per member: its first record processed after the kill.
    first_delivery: BTreeMap<String, Duration>,
    /// Per member: its first commit acknowledged after the kill.
    first_commit: BTreeMap<String, Duration>,
    /// When every check of the progress held.
    all: Duration,
}

/// Within [`PROGRESS_BOUND`] of the kill: every member owns partitions and processed records
/// after the kill, and every partition has a commit acknowledged after the kill, past what was
/// acknowledged before.
async fn wait_progress(journal: &Journal, killed_at: Duration, before: &BTreeMap<u32, u64>) -> Result<Progress> {
    let waited = until("the group to make progress after the kill", PROGRESS_BOUND, || async {
        let recorded = journal.snapshot();
        let owners = open_owners(&groups::ownership(&recorded)?).len();
        let after = Recorded {
            commits: recorded.commits.iter().filter(|c| c.at > killed_at).cloned().collect(),
            ..Recorded::default()
        }
        .max_acked_commits(None);
        let partitions_moved = (0..PARTITIONS).all(|p| {
            after
                .get(&p)
                .is_some_and(|offset| before.get(&p).is_none_or(|b| offset > b))
        });
        let progress = progress_of(&recorded, killed_at);
        let done = owners == MEMBERS.len()
            && progress.first_delivery.len() == MEMBERS.len()
            && progress.first_commit.len() == MEMBERS.len()
            && partitions_moved;
        Ok(done.then_some(progress))
    })
    .await;
    match waited {
        Ok(mut progress) => {
            progress.all = journal.now() - killed_at;
            Ok(progress)
        }
        Err(error) => {
            let recorded = journal.snapshot();
            bail!(
                "{error:#}\nprogress: {:?}\nowners now: {:?}\ncommits before the kill {before:?}, all: {:?}\n{}failures: \
                 {:#?}",
                progress_of(&recorded, killed_at),
                open_owners(&groups::ownership(&recorded)?),
                recorded.max_acked_commits(None),
                groups::summary(&recorded),
                recorded.failures
            )
        }
    }
}

fn progress_of(recorded: &Recorded, killed_at: Duration) -> Progress {
    let mut progress = Progress::default();
    for delivery in recorded.deliveries.iter().filter(|d| d.at > killed_at) {
        progress
            .first_delivery
            .entry(delivery.member.clone())
            .or_insert(delivery.at - killed_at);
    }
    for commit in recorded.commits.iter().filter(|c| c.at > killed_at) {
        progress
            .first_commit
            .entry(commit.member.clone())
            .or_insert(commit.at - killed_at);
    }
    progress
}

async fn committed(admin: &Admin) -> Result<BTreeMap<u32, u64>> {
    Ok(admin
        .committed_offsets(GROUP)
        .await?
        .into_iter()
        .filter(|c| c.topic == TOPIC)
        .filter_map(|c| Some((c.partition, c.offset?)))
        .collect())
}

fn check_at_least(committed: &BTreeMap<u32, u64>, acked: &BTreeMap<u32, u64>, what: &str) -> Result<()> {
    let lost: Vec<String> = acked
        .iter()
        .filter(|(p, offset)| committed.get(p).is_none_or(|c| c < offset))
        .map(|(p, offset)| format!("partition {p}: acknowledged {offset}, committed {:?}", committed.get(p)))
        .collect();
    ensure!(lost.is_empty(), "{what}: acknowledged commits lost: {lost:?}");
    Ok(())
}

/// Waits until every acknowledged record was processed by a member.
async fn wait_processed(journal: &Journal, ops: &[weir_tests::history::Op]) -> Result<()> {
    let waited = until("every acknowledged record to be processed", WAIT, || async {
        Ok(unprocessed(&journal.snapshot(), ops).is_empty().then_some(()))
    })
    .await;
    if waited.is_err() {
        let recorded = journal.snapshot();
        let missing = unprocessed(&recorded, ops);
        bail!(
            "{} acknowledged records not processed within {WAIT:?}, e.g. {:?}\n{}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            groups::summary(&recorded)
        );
    }
    Ok(())
}

/// Acknowledged writes (partition, offset, value) that no member processed.
fn unprocessed(recorded: &Recorded, ops: &[weir_tests::history::Op]) -> Vec<(u32, u64, String)> {
    let seen: std::collections::BTreeSet<(u32, u64)> =
        recorded.deliveries.iter().map(|d| (d.partition, d.offset)).collect();
    acked_writes(ops)
        .into_iter()
        .filter(|(p, o, _)| !seen.contains(&(*p, *o)))
        .collect()
}

fn acked_writes(ops: &[weir_tests::history::Op]) -> Vec<(u32, u64, String)> {
    ops.iter()
        .filter_map(|op| match op.outcome {
            Outcome::Ok { offset } => Some((op.partition, offset, op.value.clone())),
            _ => None,
        })
        .collect()
}

/// Every acknowledged write processed, and read with the acknowledged value.
fn check_processed(recorded: &Recorded, ops: &[weir_tests::history::Op]) -> Result<()> {
    let missing = unprocessed(recorded, ops);
    ensure!(missing.is_empty(), "acknowledged records never processed: {missing:?}");
    let acked: BTreeMap<(u32, u64), String> = acked_writes(ops).into_iter().map(|(p, o, v)| ((p, o), v)).collect();
    let wrong: Vec<String> = recorded
        .deliveries
        .iter()
        .filter(|d| acked.get(&(d.partition, d.offset)).is_some_and(|v| *v != d.value))
        .map(|d| {
            format!(
                "{}/{}: processed {:?}, acknowledged {:?}",
                d.partition,
                d.offset,
                d.value,
                acked[&(d.partition, d.offset)]
            )
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "records processed with another value than acknowledged: {wrong:?}"
    );
    Ok(())
}

async fn high_watermarks(admin: &Admin) -> Result<BTreeMap<u32, u64>> {
    Ok(admin
        .describe_topic(TOPIC)
        .await?
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect())
}

/// The members catch up once the load stopped: committed offsets at the high watermarks.
async fn wait_committed_at_high_watermarks(admin: &Admin) -> Result<()> {
    let high_watermarks = high_watermarks(admin).await?;
    let waited = until("committed offsets at the high watermarks", WAIT, || async {
        Ok((committed(admin).await? == high_watermarks).then_some(()))
    })
    .await;
    if waited.is_err() {
        bail!(
            "committed offsets {:?} did not reach the high watermarks {high_watermarks:?}",
            committed(admin).await?
        );
    }
    Ok(())
}

/// One read of the group's committed offsets.
#[derive(Debug, Clone)]
struct Sample {
    /// When the request was sent, on the journal's clock.
    sent: Duration,
    /// When the answer came.
    answered: Duration,
    offsets: BTreeMap<u32, u64>,
}

/// Everything the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    samples: Vec<Sample>,
    /// (sent, error) of the reads that failed.
    errors: Vec<(Duration, String)>,
}

/// Reads the committed offsets every [`SAMPLE_INTERVAL`] until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Samples>,
}

impl Sampler {
    fn start(admin: Admin, journal: Arc<Journal>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::SeqCst) {
                ticks.tick().await;
                let sent = journal.now();
                match tokio::time::timeout(REQUEST_TIMEOUT * 3, committed(&admin)).await {
                    Ok(Ok(offsets)) => samples.samples.push(Sample {
                        sent,
                        answered: journal.now(),
                        offsets,
                    }),
                    Ok(Err(error)) => samples.errors.push((sent, format!("{error:#}"))),
                    Err(_) => samples.errors.push((sent, "no answer".into())),
                }
            }
            samples
        });
        Self { stop, task }
    }

    async fn stop(self) -> Result<Samples> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(weir_tests::wait::within("the sampler to stop", WAIT, self.task).await??)
    }
}

/// Committed offsets never go backwards (nor vanish) from one read to the next, and each read
/// shows every commit acknowledged before it was sent.
fn check_samples(samples: &Samples, recorded: &Recorded, killed_at: Duration) -> Result<()> {
    let after_kill = samples.samples.iter().filter(|s| s.sent > killed_at).count();
    ensure!(
        samples.samples.len() > 10 && after_kill > 0,
        "too few committed-offset reads: {} ({after_kill} after the kill); errors: {:?}",
        samples.samples.len(),
        samples.errors.iter().take(5).collect::<Vec<_>>()
    );
    let mut backwards = Vec::new();
    for pair in samples.samples.windows(2) {
        for (partition, offset) in &pair[0].offsets {
            match pair[1].offsets.get(partition) {
                Some(next) if next >= offset => {}
                next => backwards.push(format!(
                    "partition {partition}: {offset} at {:?}, then {next:?} at {:?}",
                    pair[0].sent, pair[1].sent
                )),
            }
        }
    }
    ensure!(
        backwards.is_empty(),
        "committed offsets went backwards: {:?}",
        &backwards[..backwards.len().min(20)]
    );
    let mut stale = Vec::new();
    for sample in &samples.samples {
        for (partition, acked) in recorded.max_acked_commits(Some(sample.sent)) {
            let read = sample.offsets.get(&partition);
            if read.is_none_or(|read| *read < acked) {
                stale.push(format!(
                    "read sent at {:?}{}: partition {partition} at {read:?}, but {acked} was acknowledged before",
                    sample.sent,
                    if sample.sent > killed_at {
                        " (after the kill)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    ensure!(
        stale.is_empty(),
        "reads of the committed offsets miss acknowledged commits ({} cases): {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
    Ok(())
}

/// What the failover did to the members: pauses, lost partitions, errors.
fn report_failover(
    recorded: &Recorded,
    killed_at: Duration,
    back_at: Duration,
    progress: &Progress,
    samples: &Samples,
) {
    eprintln!("all progress checks held {:.2?} after the kill", progress.all);
    for member in MEMBERS {
        let callbacks: Vec<String> = recorded
            .rebalances
            .iter()
            .filter(|r| r.member == member && r.at > killed_at)
            .map(|r| format!("{:?} {:?} at +{:.2?}", r.change, r.partitions, r.at - killed_at))
            .collect();
        let lost = recorded
            .rebalances
            .iter()
            .any(|r| r.member == member && r.at > killed_at && r.at < back_at && r.change == Change::Lost);
        let failures: Vec<String> = recorded
            .failures
            .iter()
            .filter(|f| f.member == member)
            .map(|f| format!("+{:.2?}: {}", f.at.saturating_sub(killed_at), f.what))
            .collect();
        eprintln!(
            "member {member}: first record after the kill at +{:.2?}, first commit at +{:.2?}; {} its partitions \
             during the failover; callbacks after the kill: {callbacks:?}; errors: {failures:?}",
            progress.first_delivery.get(member).copied().unwrap_or_default(),
            progress.first_commit.get(member).copied().unwrap_or_default(),
            if lost { "LOST" } else { "kept" },
        );
    }
    let failed_reads: Vec<_> = samples.errors.iter().filter(|(sent, _)| *sent > killed_at).collect();
    let first_read = samples.samples.iter().find(|s| s.sent > killed_at);
    let slowest = samples
        .samples
        .iter()
        .map(|s| s.answered - s.sent)
        .max()
        .unwrap_or_default();
    eprintln!(
        "committed-offset reads: {} ok, {} failed ({} after the kill), slowest {slowest:.2?}; the first read \
         after the kill was sent at +{:.2?} and answered at +{:.2?}",
        samples.samples.len(),
        samples.errors.len(),
        failed_reads.len(),
        first_read.map(|s| s.sent - killed_at).unwrap_or_default(),
        first_read.map(|s| s.answered - killed_at).unwrap_or_default(),
    );
}
