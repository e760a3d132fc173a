//! The history checker of RELIABILITY.md, for produce histories.
//!
//! A fault test records every produce in a [`History`]: its invocation (producer id, partition,
//! a value unique over the whole test, time) and its completion: *ok* with the offset the broker
//! acknowledged, *fail* for a definite rejection (the write was not applied), or *info* when the
//! outcome is unknown (timeout, lost connection). After the faults heal, one or more readers
//! drain every partition from its start to its high watermark ([`Read`]); [`check`] then
//! reports, and a test requires zero of each:
//!
//! - **lost**: an acknowledged value that a reader did not read;
//! - **inconsistent**: one (partition, offset) read with two values, or an acknowledged
//!   (partition, offset) read with another value than the acknowledged one;
//! - **duplicate**: one value read at two positions;
//! - **aborted read**: a value whose write definitely failed is read;
//! - **phantom**: a value read that no producer ever wrote;
//! - **non-monotonic send**: one producer's acknowledged offsets in a partition go backwards
//!   (in the order it invoked the writes);
//! - **real-time order**: write A was acknowledged before write B was invoked, on the same
//!   partition, but offset(A) >= offset(B);
//! - **gap**: a reader's offsets in a partition are not dense from 0 to its high watermark.
//!
//! Times are durations since the history began (a monotonic clock), so that a synthetic
//! history in a unit test can give them directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::records::Drained;

/// How one write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still under way (never completed: counts as unknown).
    Pending,
    /// Acknowledged at this offset.
    Ok { offset: u64 },
    /// Definitely rejected: not applied.
    Fail(String),
    /// Outcome unknown: may or may not have been applied.
    Info(String),
}

/// One produce operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub producer: u32,
    pub partition: u32,
    pub value: String,
    pub invoked: Duration,
    /// When the outcome arrived; `None` while pending.
    pub completed: Option<Duration>,
    pub outcome: Outcome,
}

/// A thread-safe recorder of produce operations (one lock; fine for thousands of writes a
/// second).
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// (partition, completion time) of each ok, in completion order: for stall measurements.
    oks: Mutex<Vec<(u32, Duration)>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            oks: Mutex::new(Vec::new()),
        }
    }

    /// Time since the history began.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The time of `instant` on this history's clock (zero if before it began).
    pub fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.start)
    }

    /// Records an invocation; returns its id for [`History::complete`].
    pub fn invoke(&self, producer: u32, partition: u32, value: impl Into<String>) -> usize {
        let op = Op {
            producer,
            partition,
            value: value.into(),
            invoked: self.now(),
            completed: None,
            outcome: Outcome::Pending,
        };
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.push(op);
        ops.len() - 1
    }

    /// Records the outcome of operation `id`. An ok must name the partition it was invoked on.
    pub fn complete(&self, id: usize, outcome: Outcome) {
        let now = self.now();
        let partition = {
            let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
            let op = &mut ops[id];
            op.completed = Some(now);
            op.outcome = outcome.clone();
            op.partition
        };
        if let Outcome::Ok { .. } = outcome {
            self.oks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((partition, now));
        }
    }

    /// The first ok on `partition` that completed after `after`, if any yet.
    pub fn first_ok_after(&self, partition: u32, after: Duration) -> Option<Duration> {
        let oks = self.oks.lock().unwrap_or_else(|e| e.into_inner());
        let first = oks.partition_point(|(_, at)| *at <= after);
        oks[first..].iter().find(|(p, _)| *p == partition).map(|(_, at)| *at)
    }

    /// When the first ok on `partition` of a write invoked after `after` completed, if any yet:
    /// the end of a stall that began at `after`. Unlike [`History::first_ok_after`], an
    /// acknowledgement already on its way when the fault began does not count.
    pub fn first_ok_invoked_after(&self, partition: u32, after: Duration) -> Option<Duration> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter()
            .filter(|op| op.partition == partition && op.invoked > after)
            .filter(|op| matches!(op.outcome, Outcome::Ok { .. }))
            .filter_map(|op| op.completed)
            .min()
    }

    /// A copy of every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What one reader read of one partition, from its start to `high_watermark`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub reader: String,
    pub partition: u32,
    pub high_watermark: u64,
    /// (offset, value) in the order read.
    pub records: Vec<(u64, String)>,
}

impl Read {
    pub fn from_drained(reader: impl Into<String>, drained: &Drained) -> Self {
        Self {
            reader: reader.into(),
            partition: drained.partition,
            high_watermark: drained.watermarks.high_watermark,
            records: drained
                .records
                .iter()
                .map(|r| {
                    let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
                    (r.offset, value)
                })
                .collect(),
        }
    }
}

/// One category of anomaly: how many, and the first ones described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anomalies {
    pub count: usize,
    pub examples: Vec<String>,
}

impl Anomalies {
    const EXAMPLES_MAX: usize = 10;

    fn add(&mut self, example: String) {
        self.count += 1;
        if self.examples.len() < Self::EXAMPLES_MAX {
            self.examples.push(example);
        }
    }
}

/// The checker's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Writes of unknown outcome that were read (allowed).
    pub unknown_read: usize,
    pub records_read: usize,
    pub lost: Anomalies,
    pub inconsistent: Anomalies,
    pub duplicate: Anomalies,
    pub aborted_read: Anomalies,
    pub phantom: Anomalies,
    pub non_monotonic_send: Anomalies,
    pub real_time_order: Anomalies,
    pub gap: Anomalies,
}

impl Report {
    fn categories(&self) -> [(&'static str, &Anomalies); 8] {
        [
            ("lost", &self.lost),
            ("inconsistent", &self.inconsistent),
            ("duplicate", &self.duplicate),
            ("aborted read", &self.aborted_read),
            ("phantom", &self.phantom),
            ("non-monotonic send", &self.non_monotonic_send),
            ("real-time order", &self.real_time_order),
            ("gap", &self.gap),
        ]
    }

    /// True when no anomaly of any kind was found.
    pub fn is_clean(&self) -> bool {
        self.categories().iter().all(|(_, a)| a.count == 0)
    }

    /// `Ok` when clean, otherwise an error with the whole report.
    pub fn into_result(self) -> Result<Self> {
        if self.is_clean() {
            return Ok(self);
        }
        bail!("the history checker found anomalies:\n{self}")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "writes: {} ok, {} failed, {} unknown ({} of them read); {} records read",
            self.ok, self.failed, self.unknown, self.unknown_read, self.records_read
        )?;
        for (name, anomalies) in self.categories() {
            writeln!(f, "{name}: {}", anomalies.count)?;
            for example in &anomalies.examples {
                writeln!(f, "    {example}")?;
            }
        }
        Ok(())
    }
}

/// Checks a produce history against what the readers read; see the module documentation.
pub fn check(ops: &[Op], reads: &[Read]) -> Report {
    let mut report = Report::default();
    let mut by_value: HashMap<&str, &Op> = HashMap::new();
    for op in ops {
        match op.outcome {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Fail(_) => report.failed += 1,
            Outcome::Info(_) | Outcome::Pending => report.unknown += 1,
        }
        by_value.insert(&op.value, op);
    }

    // What was read: per (partition, offset) the values and who read them; per value where.
    let mut at: BTreeMap<(u32, u64), BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    let mut positions: HashMap<&str, HashSet<(u32, u64)>> = HashMap::new();
    let mut read_by: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut readers: HashSet<&str> = HashSet::new();
    for read in reads {
        readers.insert(&read.reader);
        report.records_read += read.records.len();
        check_dense(read, &mut report.gap);
        for (offset, value) in &read.records {
            at.entry((read.partition, *offset))
                .or_default()
                .entry(value)
                .or_default()
                .push(&read.reader);
            positions.entry(value).or_default().insert((read.partition, *offset));
            read_by.entry(value).or_default().insert(&read.reader);
        }
    }
    let partitions_read: HashSet<u32> = reads.iter().map(|r| r.partition).collect();
    for ((partition, offset), values) in &at {
        if values.len() > 1 {
            report
                .inconsistent
                .add(format!("{partition}/{offset} read with different values: {values:?}"));
        }
    }
    for (value, places) in &positions {
        if places.len() > 1 {
            let mut places: Vec<_> = places.iter().collect();
            places.sort();
            report.duplicate.add(format!("{value:?} read at {places:?}"));
        }
        match by_value.get(value).map(|op| &op.outcome) {
            None => report
                .phantom
                .add(format!("{value:?} read at {places:?} but never written")),
            Some(Outcome::Fail(reason)) => report
                .aborted_read
                .add(format!("{value:?} read at {places:?}, but its write failed: {reason}")),
            Some(Outcome::Info(_) | Outcome::Pending) => report.unknown_read += 1,
            Some(Outcome::Ok { .. }) => {}
        }
    }

    let mut readers: Vec<&str> = readers.into_iter().collect();
    readers.sort_unstable();
    for op in ops {
        let Outcome::Ok { offset } = op.outcome else {
            continue;
        };
        if !partitions_read.contains(&op.partition) {
            report.lost.add(format!(
                "{:?} acknowledged at {}/{offset}: partition {} was not read",
                op.value, op.partition, op.partition
            ));
            continue;
        }
        let missed: Vec<&str> = readers
            .iter()
            .copied()
            .filter(|reader| {
                reads.iter().any(|r| r.reader == *reader && r.partition == op.partition)
                    && !read_by.get(op.value.as_str()).is_some_and(|by| by.contains(reader))
            })
            .collect();
        if !missed.is_empty() {
            report.lost.add(format!(
                "{:?} acknowledged at {}/{offset} (producer {}) not read by {missed:?}",
                op.value, op.partition, op.producer
            ));
        }
        if let Some(values) = at.get(&(op.partition, offset)) {
            for (value, who) in values {
                if *value != op.value {
                    report.inconsistent.add(format!(
                        "{}/{offset}: {:?} acknowledged there, {value:?} read by {who:?}",
                        op.partition, op.value
                    ));
                }
            }
        }
    }

    check_sends(ops, &mut report.non_monotonic_send);
    check_real_time(ops, &mut report.real_time_order);
    report
}

/// A reader's offsets in a partition: 0, 1, ..., high_watermark - 1, in that order.
fn check_dense(read: &Read, gaps: &mut Anomalies) {
    let mut next = 0u64;
    for (offset, _) in &read.records {
        if *offset != next {
            gaps.add(format!(
                "{}: partition {} offset {offset} read where {next} was next",
                read.reader, read.partition
            ));
        }
        next = offset + 1;
    }
    if next != read.high_watermark {
        gaps.add(format!(
            "{}: partition {} read up to {next}, high watermark {}",
            read.reader, read.partition, read.high_watermark
        ));
    }
}

/// One producer's acknowledged offsets in a partition increase in the order it invoked them.
fn check_sends(ops: &[Op], anomalies: &mut Anomalies) {
    // Per (producer, partition): (invoked, index in the history, offset).
    type Sends = Vec<(Duration, usize, u64)>;
    let mut oks: BTreeMap<(u32, u32), Sends> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        if let Outcome::Ok { offset } = op.outcome {
            oks.entry((op.producer, op.partition))
                .or_default()
                .push((op.invoked, index, offset));
        }
    }
    for ((producer, partition), mut sends) in oks {
        sends.sort_unstable();
        for pair in sends.windows(2) {
            let ((_, first, before), (_, second, after)) = (pair[0], pair[1]);
            if after <= before {
                anomalies.add(format!(
                    "producer {producer} partition {partition}: {:?} acked at {before}, then {:?} (invoked later) at {after}",
                    ops[first].value, ops[second].value
                ));
            }
        }
    }
}

/// An acknowledged write: (index in the history, invoked, completed, offset).
type Acked = (usize, Duration, Duration, u64);

/// If write A's ok came before write B's invocation on one partition, offset(A) < offset(B).
fn check_real_time(ops: &[Op], anomalies: &mut Anomalies) {
    let mut by_partition: BTreeMap<u32, Vec<Acked>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        if let (Outcome::Ok { offset }, Some(completed)) = (&op.outcome, op.completed) {
            by_partition
                .entry(op.partition)
                .or_default()
                .push((index, op.invoked, completed, *offset));
        }
    }
    for (partition, oks) in by_partition {
        let mut by_completion = oks.clone();
        by_completion.sort_by_key(|(_, _, completed, _)| *completed);
        let mut by_invocation = oks;
        by_invocation.sort_by_key(|(_, invoked, _, _)| *invoked);
        // The highest offset among writes acknowledged strictly before the current invocation.
        let mut done = 0;
        let mut highest: Option<(u64, usize)> = None;
        for (index, invoked, _, offset) in by_invocation {
            while done < by_completion.len() && by_completion[done].2 < invoked {
                let (earlier, _, _, earlier_offset) = by_completion[done];
                if highest.is_none_or(|(h, _)| earlier_offset > h) {
                    highest = Some((earlier_offset, earlier));
                }
                done += 1;
            }
            if let Some((highest, earlier)) = highest {
                if offset <= highest {
                    anomalies.add(format!(
                        "partition {partition}: {:?} acked at {highest} before {:?} was invoked, which got offset {offset}",
                        ops[earlier].value, ops[index].value
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// An op of producer 0 on partition 0, invoked at `at` ms and completed 1 ms later.
    fn op(value: &str, at: u64, outcome: Outcome) -> Op {
        Op {
            producer: 0,
            partition: 0,
            value: value.to_owned(),
            invoked: ms(at),
            completed: Some(ms(at + 1)),
            outcome,
        }
    }

    fn ok(value: &str, at: u64, offset: u64) -> Op {
        op(value, at, Outcome::Ok { offset })
    }

    fn read(reader: &str, records: &[(u64, &str)]) -> Read {
        Read {
            reader: reader.to_owned(),
            partition: 0,
            high_watermark: records.last().map_or(0, |(offset, _)| offset + 1),
            records: records.iter().map(|(o, v)| (*o, (*v).to_owned())).collect(),
        }
    }

    /// Counts per category, in the order of `Report::categories`.
    fn counts(report: &Report) -> Vec<(&'static str, usize)> {
        report
            .categories()
            .iter()
            .filter(|(_, a)| a.count > 0)
            .map(|(name, a)| (*name, a.count))
            .collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            ok("a", 0, 0),
            ok("b", 10, 1),
            op("c", 20, Outcome::Info("timeout".into())),
            op("d", 30, Outcome::Fail("not leader".into())),
            op("e", 40, Outcome::Info("reset".into())),
            ok("f", 50, 3),
        ];
        let reads = vec![
            read("r1", &[(0, "a"), (1, "b"), (2, "c"), (3, "f")]),
            read("r2", &[(0, "a"), (1, "b"), (2, "c"), (3, "f")]),
        ];
        let report = check(&ops, &reads);
        assert!(report.is_clean(), "{report}");
        assert_eq!(
            (report.ok, report.failed, report.unknown, report.unknown_read),
            (3, 1, 2, 1)
        );
        assert!(report.into_result().is_ok());
    }

    #[test]
    fn concurrent_writes_may_take_either_order() {
        // a and b overlap in time: either may get the lower offset.
        let mut a = ok("a", 0, 1);
        a.completed = Some(ms(20));
        let mut b = ok("b", 5, 0);
        b.producer = 1;
        let report = check(&[a, b], &[read("r", &[(0, "b"), (1, "a")])]);
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn catches_a_lost_write() {
        let ops = vec![ok("a", 0, 0), ok("b", 10, 1)];
        let report = check(&ops, &[read("r", &[(0, "a")])]);
        assert_eq!(counts(&report), [("lost", 1)], "{report}");
        assert!(report.into_result().is_err());
    }

    #[test]
    fn catches_a_write_one_reader_missed() {
        let ops = vec![ok("a", 0, 0), ok("b", 10, 1)];
        let mut short = read("r2", &[(0, "a")]);
        short.high_watermark = 2;
        let report = check(&ops, &[read("r1", &[(0, "a"), (1, "b")]), short]);
        assert_eq!(counts(&report), [("lost", 1), ("gap", 1)], "{report}");
    }

    #[test]
    fn catches_an_unread_partition() {
        let mut b = ok("b", 10, 0);
        b.partition = 1;
        let report = check(&[ok("a", 0, 0), b], &[read("r", &[(0, "a")])]);
        assert_eq!(counts(&report), [("lost", 1)], "{report}");
    }

    #[test]
    fn catches_readers_that_disagree() {
        let ops = vec![
            ok("a", 0, 0),
            op("b", 10, Outcome::Info("timeout".into())),
            op("c", 10, Outcome::Info("timeout".into())),
        ];
        let reads = vec![read("r1", &[(0, "a"), (1, "b")]), read("r2", &[(0, "a"), (1, "c")])];
        let report = check(&ops, &reads);
        assert_eq!(counts(&report), [("inconsistent", 1)], "{report}");
    }

    #[test]
    fn catches_an_acked_offset_holding_another_value() {
        // b was acknowledged at 1 but an unknown-outcome write is there, and b is at 2.
        let ops = vec![
            ok("a", 0, 0),
            ok("b", 10, 1),
            op("c", 5, Outcome::Info("timeout".into())),
        ];
        let report = check(&ops, &[read("r", &[(0, "a"), (1, "c"), (2, "b")])]);
        assert_eq!(counts(&report), [("inconsistent", 1)], "{report}");
    }

    #[test]
    fn catches_a_duplicate() {
        let ops = vec![ok("a", 0, 0), op("b", 10, Outcome::Info("timeout".into()))];
        let report = check(&ops, &[read("r", &[(0, "a"), (1, "b"), (2, "b")])]);
        assert_eq!(counts(&report), [("duplicate", 1)], "{report}");
    }

    #[test]
    fn catches_an_aborted_read() {
        let ops = vec![ok("a", 0, 0), op("b", 10, Outcome::Fail("invalid".into()))];
        let report = check(&ops, &[read("r", &[(0, "a"), (1, "b")])]);
        assert_eq!(counts(&report), [("aborted read", 1)], "{report}");
    }

    #[test]
    fn catches_a_phantom() {
        let report = check(&[ok("a", 0, 0)], &[read("r", &[(0, "a"), (1, "zzz")])]);
        assert_eq!(counts(&report), [("phantom", 1)], "{report}");
    }

    #[test]
    fn catches_a_non_monotonic_send() {
        // One producer, pipelined: b invoked after a, both in flight, b stored first. Not a
        // real-time violation (they overlap), but the producer's order went backwards.
        let mut a = ok("a", 0, 1);
        a.completed = Some(ms(20));
        let b = ok("b", 5, 0);
        let report = check(&[a, b], &[read("r", &[(0, "b"), (1, "a")])]);
        assert_eq!(counts(&report), [("non-monotonic send", 1)], "{report}");
    }

    #[test]
    fn catches_a_real_time_order_violation() {
        // a acknowledged (at 1 ms) before b was invoked (10 ms), yet b has the lower offset.
        let a = ok("a", 0, 1);
        let mut b = ok("b", 10, 0);
        b.producer = 1;
        let report = check(&[a, b], &[read("r", &[(0, "b"), (1, "a")])]);
        assert_eq!(counts(&report), [("real-time order", 1)], "{report}");
    }

    #[test]
    fn catches_a_gap() {
        let ops = vec![ok("a", 0, 0), ok("b", 10, 2)];
        let report = check(&ops, &[read("r", &[(0, "a"), (2, "b")])]);
        assert_eq!(counts(&report), [("gap", 1)], "{report}");
    }

    #[test]
    fn catches_a_read_that_stops_short_of_the_high_watermark() {
        let mut short = read("r", &[(0, "a")]);
        short.high_watermark = 2;
        let report = check(&[ok("a", 0, 0), op("b", 10, Outcome::Info("t".into()))], &[short]);
        assert_eq!(counts(&report), [("gap", 1)], "{report}");
    }

    #[test]
    fn the_recorder_tracks_outcomes_and_the_first_ok_after_a_time() {
        let history = History::new();
        let a = history.invoke(0, 0, "a");
        let b = history.invoke(1, 1, "b");
        history.complete(a, Outcome::Ok { offset: 0 });
        let mark = history.now();
        assert_eq!(history.first_ok_after(0, mark), None);
        std::thread::sleep(ms(2));
        history.complete(b, Outcome::Ok { offset: 0 });
        let c = history.invoke(0, 0, "c");
        history.complete(c, Outcome::Ok { offset: 1 });
        assert_eq!(history.first_ok_after(1, mark), history.ops()[b].completed);
        assert_eq!(history.first_ok_after(0, mark), history.ops()[c].completed);
        let report = check(
            &history.ops(),
            &[
                read("r", &[(0, "a"), (1, "c")]),
                Read {
                    partition: 1,
                    ..read("r", &[(0, "b")])
                },
            ],
        );
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn a_stall_ends_with_the_first_ok_of_a_write_invoked_after_it_began() {
        let history = History::new();
        let in_flight = history.invoke(0, 0, "in flight");
        std::thread::sleep(ms(2));
        let fault = history.now();
        std::thread::sleep(ms(2));
        // Acknowledged after the fault began, but sent before: not the end of the stall.
        history.complete(in_flight, Outcome::Ok { offset: 0 });
        assert_eq!(history.first_ok_invoked_after(0, fault), None);
        let unknown = history.invoke(0, 0, "unknown");
        history.complete(unknown, Outcome::Info("timed out".into()));
        let elsewhere = history.invoke(1, 1, "other partition");
        history.complete(elsewhere, Outcome::Ok { offset: 0 });
        assert_eq!(history.first_ok_invoked_after(0, fault), None);
        let next = history.invoke(0, 0, "next");
        history.complete(next, Outcome::Ok { offset: 1 });
        assert_eq!(history.first_ok_invoked_after(0, fault), history.ops()[next].completed);
        assert_eq!(
            history.first_ok_invoked_after(1, fault),
            history.ops()[elsewhere].completed
        );
    }
}
