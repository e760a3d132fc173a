//! Consumer-group members for the process tests, and the checks of what they did.
//!
//! A [`Journal`] records, on one clock shared by every member of a test: each rebalance
//! callback ([`JournalListener`]: assigned, revoked, lost), each record a member processed
//! (returned by `poll`), each commit the coordinator acknowledged with the offsets it
//! covered, and each error. [`spawn_member`] runs a subscribed consumer in a task the way an
//! application with manual commits does: poll, process (record), `Consumer::commit`, until
//! told to stop, then `close`. A member can instead be told to quit after a number of
//! records: it then processes one more batch *without* committing it and closes, like an
//! application stopped between processing and committing.
//!
//! The checks read the journal: the ownership intervals of a partition (from an assignment to
//! its revocation or loss) never overlap ([`check_exclusive`]), a record is processed only by
//! the member that owns its partition at that moment ([`check_delivered_to_owner`]), and a
//! member that takes a partition over never gets a record below a commit that was
//! acknowledged before it took the partition ([`check_no_delivery_below_commit`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use weir_client::{Consumer, GroupCommitter, RebalanceListener, TopicPartition};

use crate::wait::within;

/// Longest wait of one `poll` before the member looks at its stop flag again (`poll` is
/// cancel-safe: nothing is lost when the wait ends first).
const POLL_SLICE: Duration = Duration::from_millis(300);
/// Pause after a failed `poll`, so an error that repeats does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a quitting member waits for its last batch before it closes without one.
const LAST_BATCH_WAIT: Duration = Duration::from_secs(5);
/// Violations shown in full when a check fails.
const SHOWN_MAX: usize = 25;

/// A rebalance callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Assigned,
    Revoked,
    Lost,
}

/// One rebalance callback of one member.
#[derive(Debug, Clone)]
pub struct Rebalance {
    pub member: String,
    pub at: Duration,
    pub change: Change,
    pub partitions: Vec<u32>,
}

/// One record a member processed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub member: String,
    /// When `poll` returned it.
    pub at: Duration,
    pub partition: u32,
    pub offset: u64,
    pub key: Option<String>,
    pub value: String,
    /// Part of the last batch of a quitting member, which it processed and did not commit.
    pub left_uncommitted: bool,
}

/// A commit the coordinator acknowledged: for each partition, the consumed position (offset
/// after the last record processed) the member's `commit` covered.
#[derive(Debug, Clone)]
pub struct CommitAck {
    pub member: String,
    /// When `commit` returned: the acknowledgement came before.
    pub at: Duration,
    pub offsets: BTreeMap<u32, u64>,
}

/// An error a member ran into (poll, commit, close, a callback of another topic).
#[derive(Debug, Clone)]
pub struct Failure {
    pub member: String,
    pub at: Duration,
    pub what: String,
}

/// Everything recorded so far, in the order it happened.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub rebalances: Vec<Rebalance>,
    pub deliveries: Vec<Delivery>,
    pub commits: Vec<CommitAck>,
    pub failures: Vec<Failure>,
}

impl Recorded {
    /// Per partition, the highest offset covered by a commit acknowledged before `before`
    /// (every commit when `None`).
    pub fn max_acked_commits(&self, before: Option<Duration>) -> BTreeMap<u32, u64> {
        let mut max = BTreeMap::new();
        for commit in self.commits.iter().filter(|c| before.is_none_or(|b| c.at < b)) {
            for (partition, offset) in &commit.offsets {
                let entry = max.entry(*partition).or_insert(*offset);
                *entry = (*entry).max(*offset);
            }
        }
        max
    }

    /// How many records each member processed.
    pub fn processed_per_member(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for delivery in &self.deliveries {
            *counts.entry(delivery.member.clone()).or_default() += 1;
        }
        counts
    }
}

/// The shared recorder of one test's group members, for one topic.
#[derive(Debug)]
pub struct Journal {
    topic: String,
    start: Instant,
    recorded: Mutex<Recorded>,
}

impl Journal {
    pub fn new(topic: &str) -> Arc<Self> {
        Arc::new(Self {
            topic: topic.to_owned(),
            start: Instant::now(),
            recorded: Mutex::new(Recorded::default()),
        })
    }

    /// Time on the journal's clock.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a rebalance; the time is taken under the lock, so the list is in time order.
    fn rebalance(&self, member: &str, change: Change, partitions: &[TopicPartition]) {
        let mut recorded = self.lock();
        let at = self.now();
        let (ours, others): (Vec<&TopicPartition>, Vec<&TopicPartition>) =
            partitions.iter().partition(|tp| tp.topic == self.topic);
        if !others.is_empty() {
            recorded.failures.push(Failure {
                member: member.to_owned(),
                at,
                what: format!("{change:?} partitions of another topic: {others:?}"),
            });
        }
        recorded.rebalances.push(Rebalance {
            member: member.to_owned(),
            at,
            change,
            partitions: ours.iter().map(|tp| tp.partition).collect(),
        });
    }

    /// Records a processed batch; answers the consumed position of each partition in it.
    fn processed(&self, member: &str, records: &[weir_client::ConsumerRecord], last: bool) -> BTreeMap<u32, u64> {
        let mut recorded = self.lock();
        let at = self.now();
        let mut consumed = BTreeMap::new();
        for record in records {
            let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
            recorded.deliveries.push(Delivery {
                member: member.to_owned(),
                at,
                partition: record.partition,
                offset: record.offset,
                key: text(record.key.as_deref()),
                value: text(record.value.as_deref()).unwrap_or_default(),
                left_uncommitted: last,
            });
            let position = consumed.entry(record.partition).or_insert(record.offset + 1);
            *position = (*position).max(record.offset + 1);
        }
        consumed
    }

    fn commit_acked(&self, member: &str, offsets: BTreeMap<u32, u64>) {
        let mut recorded = self.lock();
        let at = self.now();
        recorded.commits.push(CommitAck {
            member: member.to_owned(),
            at,
            offsets,
        });
    }

    pub fn failure(&self, member: &str, what: String) {
        let mut recorded = self.lock();
        let at = self.now();
        recorded.failures.push(Failure {
            member: member.to_owned(),
            at,
            what,
        });
    }
}

/// Records a member's rebalance callbacks in the journal.
#[derive(Debug)]
pub struct JournalListener {
    pub member: String,
    pub journal: Arc<Journal>,
}

impl RebalanceListener for JournalListener {
    fn on_revoked<'a>(&'a mut self, revoked: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.journal.rebalance(&self.member, Change::Revoked, revoked) })
    }

    fn on_assigned<'a>(&'a mut self, assigned: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.journal.rebalance(&self.member, Change::Assigned, assigned) })
    }

    fn on_lost<'a>(&'a mut self, lost: &'a [TopicPartition]) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.journal.rebalance(&self.member, Change::Lost, lost) })
    }
}

/// What the test and a member's task share.
#[derive(Debug)]
struct Control {
    stop: AtomicBool,
    /// Quit once this many records are processed (see the module doc); `usize::MAX`: never.
    quit_after: AtomicUsize,
    processed: AtomicUsize,
    /// The member id and epoch last seen while joined.
    identity: Mutex<Option<(String, i64)>>,
}

/// A group member running in its own task.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Member {
    /// Records processed so far.
    pub fn processed(&self) -> usize {
        self.control.processed.load(Ordering::SeqCst)
    }

    /// The member id and epoch the consumer last reported while joined.
    pub fn identity(&self) -> Option<(String, i64)> {
        self.control
            .identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Once `processed` records are processed (and committed), the member processes one more
    /// batch without committing it and closes.
    pub fn quit_after(&self, processed: usize) {
        self.control.quit_after.store(processed, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits up to `timeout` for the task to end (after `quit_after`, or after `stop`).
    pub async fn join(self, timeout: Duration) -> Result<()> {
        let name = self.name.clone();
        within(&format!("member {name} to close"), timeout, self.task).await??;
        Ok(())
    }

    /// Tells the member to stop after its current batch (processed and committed) and close,
    /// and waits up to `timeout` for it.
    pub async fn stop(self, timeout: Duration) -> Result<()> {
        self.control.stop.store(true, Ordering::SeqCst);
        self.join(timeout).await
    }
}

/// Subscribes `consumer` (a `group_id`, auto-commit off) to `topic` with a [`JournalListener`]
/// and runs it in a task: poll, record, wait `processing_per_batch` (the work a batch costs),
/// commit, until stopped or quitting.
pub fn spawn_member(
    name: &str,
    mut consumer: Consumer,
    topic: &str,
    journal: Arc<Journal>,
    processing_per_batch: Duration,
) -> Result<Member> {
    consumer.set_rebalance_listener(JournalListener {
        member: name.to_owned(),
        journal: journal.clone(),
    });
    consumer.subscribe(&[topic])?;
    let control = Arc::new(Control {
        stop: AtomicBool::new(false),
        quit_after: AtomicUsize::new(usize::MAX),
        processed: AtomicUsize::new(0),
        identity: Mutex::new(None),
    });
    let task = tokio::spawn(run_member(
        name.to_owned(),
        consumer,
        journal,
        control.clone(),
        processing_per_batch,
    ));
    Ok(Member {
        name: name.to_owned(),
        control,
        task,
    })
}

async fn run_member(
    name: String,
    mut consumer: Consumer,
    journal: Arc<Journal>,
    control: Arc<Control>,
    processing_per_batch: Duration,
) {
    let mut quitting_since: Option<Instant> = None;
    while !control.stop.load(Ordering::SeqCst) {
        if quitting_since.is_some_and(|since| since.elapsed() >= LAST_BATCH_WAIT) {
            journal.failure(
                &name,
                format!("no last batch within {LAST_BATCH_WAIT:?}; closing without one"),
            );
            break;
        }
        let records = match tokio::time::timeout(POLL_SLICE, consumer.poll()).await {
            Err(_) => continue,
            Ok(Err(error)) => {
                journal.failure(&name, format!("poll: {error}"));
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
            Ok(Ok(records)) => records,
        };
        note_identity(&consumer, &control);
        let last = quitting_since.is_some();
        let consumed = journal.processed(&name, &records, last);
        let processed = control.processed.fetch_add(records.len(), Ordering::SeqCst) + records.len();
        tokio::time::sleep(processing_per_batch).await;
        if last {
            break;
        }
        match consumer.commit().await {
            Ok(()) => journal.commit_acked(&name, consumed),
            Err(error) => journal.failure(&name, format!("commit: {error}")),
        }
        if processed >= control.quit_after.load(Ordering::SeqCst) {
            quitting_since = Some(Instant::now());
        }
    }
    note_identity(&consumer, &control);
    if let Err(error) = consumer.close().await {
        journal.failure(&name, format!("close: {error}"));
    }
}

fn note_identity(consumer: &Consumer, control: &Control) {
    if let (Some(id), Some(epoch)) = (consumer.member_id(), consumer.member_epoch()) {
        *control.identity.lock().unwrap_or_else(PoisonError::into_inner) = Some((id, epoch));
    }
}

/// A member's ownership of one partition: from an assignment to the revocation or loss that
/// ended it (`to: None`: still owned when the journal was read).
#[derive(Debug, Clone)]
pub struct Interval {
    pub member: String,
    pub from: Duration,
    pub to: Option<Duration>,
    pub ended_by: Option<Change>,
}

impl Interval {
    fn contains(&self, at: Duration) -> bool {
        self.from <= at && self.to.is_none_or(|to| at <= to)
    }
}

/// Per partition, every member's ownership intervals in order of their start; a callback that
/// does not fit (assigned twice, revoked while not owned) is a violation.
pub fn ownership(recorded: &Recorded) -> Result<BTreeMap<u32, Vec<Interval>>> {
    let mut problems = Problems::default();
    let mut open: BTreeMap<(String, u32), Duration> = BTreeMap::new();
    let mut intervals: BTreeMap<u32, Vec<Interval>> = BTreeMap::new();
    for rebalance in &recorded.rebalances {
        for &partition in &rebalance.partitions {
            let key = (rebalance.member.clone(), partition);
            match rebalance.change {
                Change::Assigned => {
                    if open.insert(key, rebalance.at).is_some() {
                        problems.add(format!(
                            "{} assigned partition {partition} at {:?} while it already owned it",
                            rebalance.member, rebalance.at
                        ));
                    }
                }
                Change::Revoked | Change::Lost => match open.remove(&key) {
                    Some(from) => intervals.entry(partition).or_default().push(Interval {
                        member: rebalance.member.clone(),
                        from,
                        to: Some(rebalance.at),
                        ended_by: Some(rebalance.change),
                    }),
                    None => problems.add(format!(
                        "{} {:?} partition {partition} at {:?} without owning it",
                        rebalance.member, rebalance.change, rebalance.at
                    )),
                },
            }
        }
    }
    for ((member, partition), from) in open {
        intervals.entry(partition).or_default().push(Interval {
            member,
            from,
            to: None,
            ended_by: None,
        });
    }
    for list in intervals.values_mut() {
        list.sort_by_key(|interval| interval.from);
    }
    problems.into_result("rebalance callbacks")?;
    Ok(intervals)
}

/// Two members owned a partition at once: an interval began before the previous one ended.
/// Answers the overlaps after a loss (`on_lost`) apart, as text: a member that lost its
/// session learns it late and may still hold records, which its commits cannot cover (they
/// are fenced); tests decide whether to allow those.
pub fn check_exclusive(intervals: &BTreeMap<u32, Vec<Interval>>) -> Result<Vec<String>> {
    let mut problems = Problems::default();
    let mut after_loss = Vec::new();
    for (partition, list) in intervals {
        for (index, next) in list.iter().enumerate() {
            for previous in &list[..index] {
                if previous.to.is_some_and(|to| to <= next.from) {
                    continue;
                }
                let text = format!(
                    "partition {partition}: {} owned it from {:?} to {:?} ({:?}), {} from {:?}",
                    previous.member, previous.from, previous.to, previous.ended_by, next.member, next.from
                );
                if previous.ended_by == Some(Change::Lost) {
                    after_loss.push(text);
                } else {
                    problems.add(text);
                }
            }
        }
    }
    problems.into_result("exclusive ownership")?;
    Ok(after_loss)
}

/// Every processed record was returned to a member while it owned the record's partition.
pub fn check_delivered_to_owner(recorded: &Recorded, intervals: &BTreeMap<u32, Vec<Interval>>) -> Result<()> {
    let mut problems = Problems::default();
    for delivery in &recorded.deliveries {
        let owned = intervals.get(&delivery.partition).is_some_and(|list| {
            list.iter()
                .any(|interval| interval.member == delivery.member && interval.contains(delivery.at))
        });
        if !owned {
            problems.add(format!(
                "{} processed {}/{} at {:?} without owning the partition",
                delivery.member, delivery.partition, delivery.offset, delivery.at
            ));
        }
    }
    problems.into_result("records processed by their partition's owner")
}

/// For each ownership interval, the records the member got in it are at or above every commit
/// of the partition acknowledged before the interval began: nothing below a commit is ever
/// delivered again. Answers the number of intervals that started at a commit (a takeover).
pub fn check_no_delivery_below_commit(recorded: &Recorded, intervals: &BTreeMap<u32, Vec<Interval>>) -> Result<usize> {
    let mut problems = Problems::default();
    let mut takeovers = 0;
    for (partition, list) in intervals {
        for interval in list {
            let floor = recorded
                .commits
                .iter()
                .filter(|commit| commit.at < interval.from)
                .filter_map(|commit| commit.offsets.get(partition))
                .max()
                .copied();
            let Some(floor) = floor else { continue };
            takeovers += 1;
            for delivery in recorded
                .deliveries
                .iter()
                .filter(|d| d.partition == *partition && d.member == interval.member && interval.contains(d.at))
            {
                if delivery.offset < floor {
                    problems.add(format!(
                        "{} got {partition}/{} at {:?}, below offset {floor} committed before it took the \
                         partition at {:?}",
                        delivery.member, delivery.offset, delivery.at, interval.from
                    ));
                }
            }
        }
    }
    problems.into_result("no delivery below an acknowledged commit")?;
    Ok(takeovers)
}

/// One line per member: records processed, rebalances, commits, failures.
pub fn summary(recorded: &Recorded) -> String {
    let mut members: BTreeMap<&str, [usize; 6]> = BTreeMap::new();
    for delivery in &recorded.deliveries {
        members.entry(&delivery.member).or_default()[0] += 1;
    }
    for rebalance in &recorded.rebalances {
        let index = match rebalance.change {
            Change::Assigned => 1,
            Change::Revoked => 2,
            Change::Lost => 3,
        };
        members.entry(&rebalance.member).or_default()[index] += 1;
    }
    for commit in &recorded.commits {
        members.entry(&commit.member).or_default()[4] += 1;
    }
    for failure in &recorded.failures {
        members.entry(&failure.member).or_default()[5] += 1;
    }
    let mut text = String::new();
    for (member, [records, assigned, revoked, lost, commits, failures]) in members {
        let _ = writeln!(
            text,
            "{member}: {records} records processed, {commits} commits acknowledged, callbacks: {assigned} assigned, \
             {revoked} revoked, {lost} lost; {failures} failures"
        );
    }
    text
}

/// Violations found by a check, reported together.
#[derive(Debug, Default)]
struct Problems {
    count: usize,
    shown: String,
}

impl Problems {
    fn add(&mut self, problem: String) {
        self.count += 1;
        if self.count <= SHOWN_MAX {
            let _ = writeln!(self.shown, "  {problem}");
        }
    }

    fn into_result(self, check: &str) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        bail!(
            "{check}: {} violation(s) (first {} shown):\n{}",
            self.count,
            self.count.min(SHOWN_MAX),
            self.shown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn rebalance(member: &str, at: u64, change: Change, partitions: &[u32]) -> Rebalance {
        Rebalance {
            member: member.into(),
            at: ms(at),
            change,
            partitions: partitions.to_vec(),
        }
    }

    fn delivery(member: &str, at: u64, partition: u32, offset: u64) -> Delivery {
        Delivery {
            member: member.into(),
            at: ms(at),
            partition,
            offset,
            key: None,
            value: String::new(),
            left_uncommitted: false,
        }
    }

    fn commit(member: &str, at: u64, partition: u32, offset: u64) -> CommitAck {
        CommitAck {
            member: member.into(),
            at: ms(at),
            offsets: BTreeMap::from([(partition, offset)]),
        }
    }

    /// a owns partition 0 from 10 to 50 and commits 5 at 30; b owns it from 60.
    fn handover() -> Recorded {
        Recorded {
            rebalances: vec![
                rebalance("a", 10, Change::Assigned, &[0]),
                rebalance("a", 50, Change::Revoked, &[0]),
                rebalance("b", 60, Change::Assigned, &[0]),
            ],
            deliveries: vec![delivery("a", 20, 0, 4), delivery("b", 70, 0, 5)],
            commits: vec![commit("a", 30, 0, 5)],
            failures: vec![],
        }
    }

    #[test]
    fn a_clean_handover_passes_every_check() {
        let recorded = handover();
        let intervals = ownership(&recorded).unwrap();
        assert_eq!(intervals[&0].len(), 2);
        assert!(check_exclusive(&intervals).unwrap().is_empty());
        check_delivered_to_owner(&recorded, &intervals).unwrap();
        assert_eq!(check_no_delivery_below_commit(&recorded, &intervals).unwrap(), 1);
        assert_eq!(recorded.max_acked_commits(Some(ms(30))), BTreeMap::new());
        assert_eq!(recorded.max_acked_commits(None), BTreeMap::from([(0, 5)]));
    }

    #[test]
    fn overlapping_owners_are_found_and_losses_set_apart() {
        let mut recorded = handover();
        recorded.rebalances[2].at = ms(40);
        let intervals = ownership(&recorded).unwrap();
        assert!(check_exclusive(&intervals).is_err());
        recorded.rebalances[1].change = Change::Lost;
        let intervals = ownership(&recorded).unwrap();
        assert_eq!(check_exclusive(&intervals).unwrap().len(), 1);
        recorded.rebalances.push(rebalance("c", 80, Change::Assigned, &[0]));
        let intervals = ownership(&recorded).unwrap();
        assert!(check_exclusive(&intervals).is_err(), "b still owns it");
    }

    #[test]
    fn a_delivery_outside_ownership_or_below_a_commit_is_found() {
        let mut recorded = handover();
        recorded.deliveries.push(delivery("a", 55, 0, 5));
        let intervals = ownership(&recorded).unwrap();
        assert!(check_delivered_to_owner(&recorded, &intervals).is_err());

        let mut recorded = handover();
        recorded.deliveries.push(delivery("b", 75, 0, 4));
        let intervals = ownership(&recorded).unwrap();
        assert!(check_no_delivery_below_commit(&recorded, &intervals).is_err());
    }

    #[test]
    fn callbacks_that_do_not_fit_are_violations() {
        let mut recorded = handover();
        recorded.rebalances.push(rebalance("a", 90, Change::Revoked, &[0]));
        assert!(ownership(&recorded).is_err());
    }
}
