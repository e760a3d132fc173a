//! Consumer-group churn with leader kills, with real member processes (`group_member`, a binary
//! of this crate): members join, leave (SIGTERM: `close`) and are killed (SIGKILL: the session
//! timeout evicts them) every few seconds while the leader of a data partition is killed in one
//! round and the leader of the group's `__consumer_offsets` partition (its coordinator) in
//! another. Three nodes, one topic of 12 partitions with replication factor 3, recorded acks=all
//! produce load throughout. At the end the load stops, two members or more read up to the high
//! watermarks and stop gracefully.
//!
//! Every member prints what it did as JSON lines (see `tests/src/bin/group_member.rs`); the test
//! records when it signalled each one and samples the group's committed offsets every 200 ms.
//! Checks, all collected before the test fails with every violation:
//!
//! - exclusivity: per partition, the ownership intervals of the members (from `assigned` to
//!   `revoked`/`lost`, the SIGKILL, or the member's end) never overlap between two members, and
//!   every record a member processed lies inside one of its own intervals of that partition;
//!   no partition is reported assigned by two members with the same member epoch, and no epoch
//!   is reported by two members (epochs are unique within a group);
//! - committed offsets never go backwards: per partition the sampled offsets never decrease; a
//!   sample asked for after a member's commit was acknowledged shows at least that offset; the
//!   final committed offsets are at least every acknowledged commit;
//! - every acknowledged write (the load's history) was processed by some member, with the
//!   acknowledged value (duplicates are reported, and expected after kills);
//! - members stopped with SIGTERM exit 0 after `close`; no member exits on its own;
//! - the load's own verdict: the history checker finds nothing and the replicas converge.
//!
//! The summary reports the rounds, events, kills, duplicates and, per change, how long until
//! every partition was owned again. `WEIR_TESTS_CHURN_ROUNDS` overrides the round count
//! (default 8), `WEIR_TESTS_CHURN_SEED` the seed (printed).
//!
//! Members are spawned by the harness (`weir_tests::process::spawn`, so they die with the test
//! process) and exit when their stdin closes; the fleet kills what is left when dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use weir_client::{Client, ClientConfig};
use weir_proto::{group_partition, OFFSETS_TOPIC};
use weir_tests::cluster::Cluster;
use weir_tests::history::{History, Outcome};
use weir_tests::load::{outcomes, Load};
use weir_tests::verdict::{drain_check_converge, wait_all_back};
use weir_tests::wait::until;

const TOPIC: &str = "churn";
const GROUP: &str = "churners";
const PARTITIONS: u32 = 12;
const NODES: usize = 3;
const DEFAULT_ROUNDS: usize = 8;
const FIRST_MEMBERS: usize = 3;
const MEMBERS_MAX: usize = 6;
const SESSION_TIMEOUT_MS: u32 = 3_000;
/// A round's pause is this plus up to one more second.
const ROUND_PAUSE_MIN: Duration = Duration::from_secs(2);
/// A killed broker is restarted at the first round this long after the kill.
const BROKER_DOWN_MIN: Duration = Duration::from_secs(4);
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(60);
/// How long a member may take to `close` and exit after SIGTERM: its `on_revoked` commit
/// retries for up to 15 s, then `close` waits up to 15 s for the heartbeat task's leave.
const MEMBER_EXIT_TIMEOUT: Duration = Duration::from_secs(35);
/// Violations listed per kind; the count is always given.
const EXAMPLES_MAX: usize = 15;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// splitmix64: a seeded generator, so that a seed reproduces a run's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// One line a member printed (records are kept apart: there are many).
#[derive(Debug, Clone)]
enum Event {
    Assigned {
        partitions: Vec<u32>,
        epoch: Option<i64>,
        member_id: Option<String>,
    },
    Revoked {
        partitions: Vec<u32>,
    },
    Lost {
        partitions: Vec<u32>,
    },
    Commit {
        ok: bool,
        source: String,
        offsets: Vec<(u32, u64)>,
        error: Option<String>,
    },
    Error {
        message: String,
    },
    Closed {
        error: Option<String>,
    },
    /// The member's watchdog saw it in one step for long.
    Slow {
        phase: String,
        for_ms: u64,
    },
    Started,
    /// A line the test does not understand (reported as a violation).
    Unexpected(String),
}

#[derive(Debug, Clone)]
struct Record {
    time_us: u64,
    partition: u32,
    offset: u64,
    value: String,
}

#[derive(Debug, Default)]
struct Output {
    /// Sorted by time.
    events: Vec<(u64, Event)>,
    records: Vec<Record>,
    /// When the test read the member's latest line (to tell a member that stopped printing
    /// from one whose output is not read).
    last_read_us: u64,
}

fn partitions_of(line: &Value) -> Option<Vec<u32>> {
    line["partitions"]
        .as_array()?
        .iter()
        .map(|tp| {
            (tp["topic"] == TOPIC)
                .then(|| tp["partition"].as_u64()?.try_into().ok())
                .flatten()
        })
        .collect()
}

fn parse_line(text: &str, output: &mut Output) {
    let unexpected = |output: &mut Output| output.events.push((now_us(), Event::Unexpected(text.to_owned())));
    let Ok(line) = serde_json::from_str::<Value>(text) else {
        return unexpected(output);
    };
    let Some(time_us) = line["time_us"].as_u64() else {
        return unexpected(output);
    };
    let string = |key: &str| line[key].as_str().map(str::to_owned);
    let event = match line["event"].as_str() {
        Some("record") => {
            let (Some(partition), Some(offset), Some(value)) =
                (line["partition"].as_u64(), line["offset"].as_u64(), string("value"))
            else {
                return unexpected(output);
            };
            if line["topic"] != TOPIC {
                return unexpected(output);
            }
            let partition = u32::try_from(partition).unwrap_or(u32::MAX);
            output.records.push(Record {
                time_us,
                partition,
                offset,
                value,
            });
            return;
        }
        Some("assigned") => partitions_of(&line).map(|partitions| Event::Assigned {
            partitions,
            epoch: line["epoch"].as_i64(),
            member_id: string("member_id"),
        }),
        Some("revoked") => partitions_of(&line).map(|partitions| Event::Revoked { partitions }),
        Some("lost") => partitions_of(&line).map(|partitions| Event::Lost { partitions }),
        Some("commit") => line["offsets"].as_array().map(|pairs| Event::Commit {
            ok: line["ok"].as_bool() == Some(true),
            source: string("source").unwrap_or_default(),
            offsets: pairs
                .iter()
                .filter_map(|pair| Some((u32::try_from(pair[0].as_u64()?).ok()?, pair[1].as_u64()?)))
                .collect(),
            error: string("error"),
        }),
        Some("error") => Some(Event::Error {
            message: string("message").unwrap_or_default(),
        }),
        Some("closed") => Some(Event::Closed { error: string("error") }),
        Some("started") => Some(Event::Started),
        Some("slow") => Some(Event::Slow {
            phase: string("phase").unwrap_or_default(),
            for_ms: line["for_ms"].as_u64().unwrap_or(0),
        }),
        _ => None,
    };
    match event {
        // In time order: an `assigned` line is printed after the `poll` that ran `on_assigned`,
        // so a `revoked` of the same `poll` may come first.
        Some(event) => {
            let at = output.events.partition_point(|(t, _)| *t <= time_us);
            output.events.insert(at, (time_us, event));
        }
        None => unexpected(output),
    }
}

/// How a member's life ended, as far as the test knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Running,
    /// SIGTERM sent at this time (it should close and exit 0).
    Terminated(u64),
    /// SIGKILL sent and the process reaped by this time.
    Killed(u64),
}

struct Member {
    name: String,
    child: Child,
    /// Held open: the member exits when it closes.
    _stdin: ChildStdin,
    fate: Fate,
    /// Exit status and when the test saw it.
    exit: Option<(ExitStatus, u64)>,
    output: Arc<Mutex<Output>>,
    stderr_path: PathBuf,
}

impl Member {
    fn spawn(dir: &Path, bootstrap: &str, name: String) -> Result<Self> {
        let stderr_path = dir.join(format!("{name}.stderr"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_group_member"));
        command
            .args([bootstrap, GROUP, TOPIC, &SESSION_TIMEOUT_MS.to_string(), &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?);
        let mut child = weir_tests::process::spawn(command)?;
        let stdin = child.stdin.take().context("stdin is not piped")?;
        let stdout = child.stdout.take().context("stdout is not piped")?;
        let output = Arc::new(Mutex::new(Output::default()));
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut output = sink.lock().unwrap_or_else(PoisonError::into_inner);
                parse_line(&line, &mut output);
                output.last_read_us = now_us();
            }
        });
        Ok(Self {
            name,
            child,
            _stdin: stdin,
            fate: Fate::Running,
            exit: None,
            output,
            stderr_path,
        })
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        weir_tests::process::signal(&mut self.child, signal)
    }

    fn kill(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)?;
        let status = self.child.wait()?;
        let at = now_us();
        self.exit.get_or_insert((status, at));
        self.fate = Fate::Killed(at);
        Ok(())
    }

    fn terminate(&mut self) -> Result<()> {
        self.fate = Fate::Terminated(now_us());
        self.signal(libc::SIGTERM)
    }

    fn poll_exit(&mut self) -> Result<bool> {
        if self.exit.is_none() {
            if let Some(status) = self.child.try_wait()? {
                self.exit = Some((status, now_us()));
            }
        }
        Ok(self.exit.is_some())
    }

    /// Each thread of the process as `name:wait channel` (where in the kernel it sleeps, e.g.
    /// `pipe_write` for a member blocked on a full stdout), to locate a member that hangs.
    fn threads(&self) -> String {
        let tasks = format!("/proc/{}/task", self.child.id());
        let Ok(entries) = std::fs::read_dir(&tasks) else {
            return format!("{tasks} unreadable");
        };
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default().trim().to_owned();
        let threads: Vec<String> = entries
            .flatten()
            .map(|task| format!("{}:{}", read(task.path().join("comm")), read(task.path().join("wchan"))))
            .collect();
        threads.join(", ")
    }

    /// Running and not signalled.
    fn is_active(&mut self) -> Result<bool> {
        Ok(self.fate == Fate::Running && !self.poll_exit()?)
    }
}

/// The members started so far; dropping it kills every one still running.
struct Fleet {
    dir: PathBuf,
    bootstrap: String,
    members: Vec<Member>,
}

impl Fleet {
    /// Starts the next member, noting it in `changes`.
    fn start(&mut self, changes: &mut Vec<(u64, String)>) -> Result<()> {
        let name = format!("m{}", self.members.len() + 1);
        changes.push((now_us(), format!("started {name}")));
        self.members.push(Member::spawn(&self.dir, &self.bootstrap, name)?);
        Ok(())
    }

    fn active(&mut self) -> Result<Vec<usize>> {
        let mut active = Vec::new();
        for (index, member) in self.members.iter_mut().enumerate() {
            if member.is_active()? {
                active.push(index);
            }
        }
        Ok(active)
    }

    /// The partitions the active members own now, as their output says.
    fn owned_now(&mut self) -> Result<BTreeSet<u32>> {
        let mut owned = BTreeSet::new();
        for index in self.active()? {
            let output = self.members[index]
                .output
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut own = BTreeSet::new();
            for (_, event) in &output.events {
                match event {
                    Event::Assigned { partitions, .. } => own.extend(partitions),
                    Event::Revoked { partitions } | Event::Lost { partitions } => {
                        own.retain(|p| !partitions.contains(p));
                    }
                    _ => {}
                }
            }
            owned.extend(own);
        }
        Ok(owned)
    }

    /// Waits up to `timeout` for the active members to own every partition.
    async fn wait_all_owned(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.owned_now()?.len() < PARTITIONS as usize {
            if Instant::now() >= deadline {
                bail!("the members own only {:?} after {timeout:?}", self.owned_now()?);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGTERM to every active member; waits for all to exit; kills those that do not.
    fn stop_all(&mut self, violations: &mut Violations) -> Result<()> {
        for index in self.active()? {
            self.members[index].terminate()?;
        }
        let deadline = Instant::now() + MEMBER_EXIT_TIMEOUT;
        for member in &mut self.members {
            while !member.poll_exit()? && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !member.poll_exit()? {
                violations.add(
                    "exit",
                    format!(
                        "{} did not exit within {MEMBER_EXIT_TIMEOUT:?} of SIGTERM; its threads (name: kernel wait \
                         channel): {}",
                        member.name,
                        member.threads()
                    ),
                );
                member.kill()?;
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for member in &mut self.members {
            if member.exit.is_none() {
                let _ = member.signal(libc::SIGKILL);
                let _ = member.child.wait();
            }
        }
    }
}

/// Violations by kind.
#[derive(Default)]
struct Violations(BTreeMap<&'static str, Vec<String>>);

impl Violations {
    fn add(&mut self, kind: &'static str, text: String) {
        self.0.entry(kind).or_default().push(text);
    }

    fn report(&self) -> String {
        let mut text = String::new();
        for (kind, list) in &self.0 {
            let _ = writeln!(text, "{kind}: {} violation(s)", list.len());
            for item in list.iter().take(EXAMPLES_MAX) {
                let _ = writeln!(text, "    {item}");
            }
        }
        text
    }
}

/// One member's ownership of one partition: [start_us, end_us).
#[derive(Debug, Clone)]
struct Interval {
    member: String,
    partition: u32,
    start_us: u64,
    end_us: u64,
    epoch: Option<i64>,
    /// What ended it.
    end: &'static str,
}

/// The ownership intervals of one member, from its events and its fate.
fn intervals_of(member: &Member, events: &[(u64, Event)], test_end_us: u64) -> Vec<Interval> {
    let mut open: BTreeMap<u32, (u64, Option<i64>)> = BTreeMap::new();
    let mut intervals = Vec::new();
    let mut close = |open: &mut BTreeMap<u32, (u64, Option<i64>)>, partition: u32, end_us: u64, end| {
        if let Some((start_us, epoch)) = open.remove(&partition) {
            intervals.push(Interval {
                member: member.name.clone(),
                partition,
                start_us,
                end_us,
                epoch,
                end,
            });
        }
    };
    for (time_us, event) in events {
        match event {
            Event::Assigned { partitions, epoch, .. } => {
                for partition in partitions {
                    open.entry(*partition).or_insert((*time_us, *epoch));
                }
            }
            Event::Revoked { partitions } => partitions
                .iter()
                .for_each(|p| close(&mut open, *p, *time_us, "revoked")),
            Event::Lost { partitions } => partitions.iter().for_each(|p| close(&mut open, *p, *time_us, "lost")),
            _ => {}
        }
    }
    let (end_us, end) = match (member.fate, member.exit) {
        (Fate::Killed(at), _) => (at, "SIGKILL"),
        (_, Some((_, at))) => (at, "exit"),
        (_, None) => (test_end_us, "test end"),
    };
    let partitions: Vec<u32> = open.keys().copied().collect();
    for partition in partitions {
        close(&mut open, partition, end_us, end);
    }
    intervals
}

/// Processing times of each member's records, per (member, partition), sorted.
type ProcessedAt<'a> = HashMap<(&'a str, u32), Vec<u64>>;

fn check_exclusive(intervals: &[Interval], processed: &ProcessedAt<'_>, violations: &mut Violations) {
    let mut by_partition: BTreeMap<u32, Vec<&Interval>> = BTreeMap::new();
    for interval in intervals {
        by_partition.entry(interval.partition).or_default().push(interval);
    }
    // Records `member` processed from `partition` within [from, to].
    let count = |member: &str, partition: u32, from: u64, to: u64| {
        processed.get(&(member, partition)).map_or(0, |times| {
            times.partition_point(|t| *t <= to) - times.partition_point(|t| *t < from)
        })
    };
    for (partition, list) in by_partition {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.member == b.member || a.start_us >= b.end_us || b.start_us >= a.end_us {
                    continue;
                }
                let (from, to) = (a.start_us.max(b.start_us), a.end_us.min(b.end_us));
                let describe = |i: &Interval| {
                    format!(
                        "{} (epoch {:?}) {}..{} (ended by {}; {} records processed in the overlap)",
                        i.member,
                        i.epoch,
                        i.start_us,
                        i.end_us,
                        i.end,
                        count(&i.member, partition, from, to)
                    )
                };
                violations.add(
                    "double ownership",
                    format!(
                        "partition {partition}, overlap {} ms: {} and {}",
                        (to - from) / 1000,
                        describe(a),
                        describe(b)
                    ),
                );
            }
        }
    }
}

/// No two members report one epoch (epochs are unique in a group), and so no partition is
/// assigned to two members with one epoch.
fn check_epochs(outputs: &[(&str, &[(u64, Event)])], violations: &mut Violations) {
    // epoch -> member -> the member ids it reported with it.
    let mut by_epoch: BTreeMap<i64, BTreeMap<&str, BTreeSet<Option<&str>>>> = BTreeMap::new();
    let mut by_partition_epoch: BTreeMap<(u32, i64), BTreeSet<&str>> = BTreeMap::new();
    for &(member, events) in outputs {
        for (_, event) in events {
            let Event::Assigned {
                partitions,
                epoch: Some(epoch),
                member_id,
            } = event
            else {
                continue;
            };
            let ids = by_epoch.entry(*epoch).or_default().entry(member).or_default();
            ids.insert(member_id.as_deref());
            for partition in partitions {
                by_partition_epoch
                    .entry((*partition, *epoch))
                    .or_default()
                    .insert(member);
            }
        }
    }
    for ((partition, epoch), members) in by_partition_epoch {
        if members.len() > 1 {
            violations.add(
                "same epoch",
                format!("partition {partition} assigned with epoch {epoch} to {members:?}"),
            );
        }
    }
    for (epoch, members) in by_epoch {
        if members.len() > 1 {
            violations.add(
                "same epoch",
                format!("epoch {epoch} reported by members (with member ids) {members:?}"),
            );
        }
    }
}

/// Every record a member processed lies inside one of its intervals of that partition.
fn check_processing_owned(member: &str, records: &[Record], intervals: &[Interval], violations: &mut Violations) {
    let mut own: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for interval in intervals.iter().filter(|i| i.member == member) {
        own.entry(interval.partition)
            .or_default()
            .push((interval.start_us, interval.end_us));
    }
    for record in records {
        let owned = own.get(&record.partition).is_some_and(|list| {
            list.iter()
                .any(|(start, end)| *start <= record.time_us && record.time_us <= *end)
        });
        if !owned {
            violations.add(
                "processed without owning",
                format!(
                    "{member} processed {}@{} at {} without owning the partition",
                    record.partition, record.offset, record.time_us
                ),
            );
        }
    }
}

/// Committed offsets as sampled: (time the request was sent, partition -> offset).
type Samples = Vec<(u64, BTreeMap<u32, u64>)>;

async fn committed_now(admin: &weir_client::Admin) -> Result<BTreeMap<u32, u64>> {
    let offsets = tokio::time::timeout(REQUEST_TIMEOUT, admin.committed_offsets(GROUP)).await??;
    Ok(offsets
        .into_iter()
        .filter(|c| c.topic == TOPIC)
        .filter_map(|c| Some((c.partition, c.offset?)))
        .collect())
}

/// Samples the committed offsets every [`SAMPLE_INTERVAL`] until `stop`.
fn start_sampler(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Samples, usize)> {
    tokio::spawn(async move {
        let admin = client.admin();
        let mut samples = Vec::new();
        let mut failures = 0;
        while !stop.load(Ordering::Relaxed) {
            let sent = now_us();
            match committed_now(&admin).await {
                Ok(offsets) => samples.push((sent, offsets)),
                Err(_) => failures += 1,
            }
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
        (samples, failures)
    })
}

fn check_commits(
    samples: &Samples,
    acked: &[(String, u64, u32, u64)],
    last: &BTreeMap<u32, u64>,
    violations: &mut Violations,
) {
    let mut previous: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (sent, offsets) in samples {
        for (partition, offset) in offsets {
            if let Some((before, at)) = previous.get(partition) {
                if offset < before {
                    violations.add(
                        "committed offset went backwards",
                        format!("partition {partition}: {before} (sample sent at {at}) then {offset} (sent at {sent})"),
                    );
                }
            }
            previous.insert(*partition, (*offset, *sent));
        }
    }
    for (member, acked_at, partition, offset) in acked {
        // The first sample asked for after the acknowledgement must show it.
        if let Some((sent, offsets)) = samples.iter().find(|(sent, _)| sent > acked_at) {
            let seen = offsets.get(partition).copied();
            if seen.is_none_or(|seen| seen < *offset) {
                violations.add(
                    "acknowledged commit not visible",
                    format!("{member} had {partition}->{offset} acknowledged at {acked_at}; a read sent at {sent} saw {seen:?}"),
                );
            }
        }
        if last.get(partition).is_none_or(|last| last < offset) {
            violations.add(
                "final committed offset behind an acknowledged commit",
                format!(
                    "partition {partition}: {member} had {offset} acknowledged; finally committed {:?}",
                    last.get(partition)
                ),
            );
        }
    }
}

/// Every acknowledged write was processed by some member with its value; answers the duplicate
/// count (processings beyond the first of one offset).
fn check_processed(history: &History, records: &[&Record], violations: &mut Violations) -> usize {
    let mut seen: HashMap<(u32, u64), (&str, usize)> = HashMap::new();
    for record in records {
        let entry = seen
            .entry((record.partition, record.offset))
            .or_insert((&record.value, 0));
        entry.1 += 1;
        if entry.0 != record.value {
            violations.add(
                "processed values differ",
                format!(
                    "{}@{}: {:?} and {:?}",
                    record.partition, record.offset, entry.0, record.value
                ),
            );
        }
    }
    for op in history.ops() {
        let Outcome::Ok { offset } = op.outcome else { continue };
        match seen.get(&(op.partition, offset)) {
            None => violations.add(
                "acknowledged write not processed",
                format!("{}@{offset} ({})", op.partition, op.value),
            ),
            Some((value, _)) if *value != op.value => violations.add(
                "processed values differ",
                format!(
                    "{}@{offset}: acknowledged {:?}, processed {value:?}",
                    op.partition, op.value
                ),
            ),
            Some(_) => {}
        }
    }
    seen.values().map(|(_, count)| count - 1).sum()
}

/// Partitions owned by somebody at `t`.
fn coverage(intervals: &[Interval], t: u64) -> usize {
    let owned: BTreeSet<u32> = intervals
        .iter()
        .filter(|i| i.start_us <= t && t < i.end_us)
        .map(|i| i.partition)
        .collect();
    owned.len()
}

/// How long after a change every partition was owned again.
enum Regain {
    /// No partition went unowned between the change and the next one.
    NoGap,
    /// From the change to the first moment every partition was owned again after one was not.
    After(Duration),
    Never,
}

/// [`Regain`] per change.
fn regain_times(intervals: &[Interval], changes: &[(u64, String)], end_us: u64) -> Vec<(u64, String, Regain)> {
    let mut points: Vec<u64> = intervals.iter().flat_map(|i| [i.start_us, i.end_us]).collect();
    points.sort_unstable();
    points.dedup();
    let full = PARTITIONS as usize;
    let mut times = Vec::new();
    for (index, (at, what)) in changes.iter().enumerate() {
        let next = changes.get(index + 1).map_or(end_us, |(next, _)| *next);
        let dip = std::iter::once(*at)
            .chain(points.iter().copied().filter(|p| p > at && *p < next))
            .find(|t| coverage(intervals, *t) < full);
        let regained = dip.and_then(|dip| {
            points
                .iter()
                .copied()
                .find(|t| *t >= dip && coverage(intervals, *t) == full)
        });
        let regain = match (dip, regained) {
            (None, _) => Regain::NoGap,
            (Some(_), Some(t)) => Regain::After(Duration::from_micros(t - at)),
            (Some(_), None) => Regain::Never,
        };
        times.push((*at, what.clone(), regain));
    }
    times
}

/// The broker kills of the run: which rounds, and which nodes are down since when.
struct BrokerFaults {
    data_round: usize,
    offsets_round: usize,
    down: Vec<(u64, Instant)>,
}

impl BrokerFaults {
    /// Restarts the nodes that have been down long enough (all of them when `all`).
    fn restart_due(&mut self, cluster: &mut Cluster, all: bool, log: &mut Vec<(u64, String)>) -> Result<()> {
        let (due, later): (Vec<_>, Vec<_>) = self
            .down
            .drain(..)
            .partition(|(_, at)| all || at.elapsed() >= BROKER_DOWN_MIN);
        self.down = later;
        for (node, _) in due {
            cluster.restart(node)?;
            log.push((now_us(), format!("restarted node {node}")));
        }
        Ok(())
    }

    async fn kill_leader(
        &mut self,
        cluster: &mut Cluster,
        topic: &str,
        partition: u32,
        changes: &mut Vec<(u64, String)>,
    ) -> Result<()> {
        self.restart_due(cluster, true, changes)?;
        wait_all_back(cluster, TOPIC, PARTITIONS, WAIT).await?;
        let leader = cluster.wait_leader(topic, partition, WAIT).await?;
        cluster.kill9(leader)?;
        changes.push((
            now_us(),
            format!("kill -9 node {leader}, leader of {topic}/{partition}"),
        ));
        self.down.push((leader, Instant::now()));
        Ok(())
    }
}

async fn offsets_partition(cluster: &Cluster) -> Result<u32> {
    let description = until("__consumer_offsets described", WAIT, || async {
        for id in cluster.ids() {
            if let Ok(description) = cluster.describe_on(id, OFFSETS_TOPIC).await {
                return Ok(Some(description));
            }
        }
        Ok(None)
    })
    .await?;
    let count = u32::try_from(description.partitions.len())?;
    Ok(group_partition(GROUP, count))
}

/// One round's member action, chosen at random within the limits.
fn member_action(fleet: &mut Fleet, rng: &mut Rng, changes: &mut Vec<(u64, String)>) -> Result<()> {
    let active = fleet.active()?;
    let choice = match active.len() {
        0 | 1 => 0,
        n if n >= MEMBERS_MAX => 1 + rng.below(2),
        _ => rng.below(3),
    };
    let action = match choice {
        0 => return fleet.start(changes),
        pick => {
            let index = active[rng.below(active.len() as u64) as usize];
            let member = &mut fleet.members[index];
            if pick == 1 {
                member.terminate()?;
                format!("SIGTERM {}", member.name)
            } else {
                member.kill()?;
                format!("SIGKILL {}", member.name)
            }
        }
    };
    changes.push((now_us(), action));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_churn_with_leader_kill_never_double_owns() -> Result<()> {
    let rounds = weir_tests::count_from_env("WEIR_TESTS_CHURN_ROUNDS", DEFAULT_ROUNDS)?;
    let seed = match std::env::var("WEIR_TESTS_CHURN_SEED") {
        Ok(seed) => seed.parse().context("WEIR_TESTS_CHURN_SEED is not a number")?,
        Err(_) => now_us(),
    };
    eprintln!("seed {seed} (WEIR_TESTS_CHURN_SEED={seed} repeats the choices), {rounds} rounds");
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), NODES)?;
    cluster.create_fully_replicated(TOPIC, PARTITIONS).await?;

    let history = Arc::new(History::new());
    let client_config = cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?;
    let mut load = Load::new(TOPIC, PARTITIONS, client_config.clone());
    load.producers = 1;
    load.send_pause = Duration::from_millis(5);
    load.reconnect_after_unknown = true;
    let load = load.start(history.clone());

    let mut fleet = Fleet {
        dir: dir.path().to_path_buf(),
        bootstrap: cluster.bootstrap().join(","),
        members: Vec::new(),
    };
    let mut changes = Vec::new();
    for _ in 0..FIRST_MEMBERS {
        fleet.start(&mut changes)?;
    }
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(Client::new(client_config.clone())?, stop_sampling.clone());
    fleet.wait_all_owned(WAIT).await.context("the first members")?;
    changes.push((now_us(), "every partition owned".to_owned()));
    churn(&mut cluster, &mut fleet, &mut Rng(seed), rounds, &mut changes).await?;
    load.stop(Duration::from_secs(90)).await?;
    eprint!("{}", outcomes(&history));

    let mut violations = Violations::default();
    while fleet.active()?.len() < 2 {
        fleet.start(&mut changes)?;
    }
    if let Err(error) = read_to_the_end(&cluster, &client_config).await {
        violations.add("liveness", format!("{error:#}"));
    }
    fleet.stop_all(&mut violations)?;
    let end_us = now_us();
    stop_sampling.store(true, Ordering::Relaxed);
    let (samples, sample_failures) = sampler.await?;
    let admin = cluster.client()?.admin();
    let last = until("the final committed offsets", WAIT, || async {
        Ok(committed_now(&admin).await.ok())
    })
    .await?;
    if let Err(error) = drain_check_converge(&cluster, TOPIC, PARTITIONS, &history).await {
        violations.add("history checker", format!("{error:#}"));
    }

    let summary = check_everything(&fleet, &history, &samples, &last, &changes, end_us, &mut violations);
    // Shown by the test harness only when the test fails (or with --nocapture).
    print_member_logs(&fleet, &changes, &cluster);
    eprintln!("{summary}");
    eprintln!(
        "rounds {rounds}, seed {seed}, committed-offset samples {} ({sample_failures} failed), test {:.1?}",
        samples.len(),
        test_start.elapsed()
    );
    if !violations.0.is_empty() {
        bail!("group churn violations (seed {seed}):\n{}", violations.report());
    }
    Ok(())
}

/// The rounds: each starts, stops or kills a member; one kills the leader of a data partition,
/// a later one the coordinator's node. Killed brokers restart a few seconds later, and all are
/// back and caught up at the end.
async fn churn(
    cluster: &mut Cluster,
    fleet: &mut Fleet,
    rng: &mut Rng,
    rounds: usize,
    changes: &mut Vec<(u64, String)>,
) -> Result<()> {
    let group_partition = offsets_partition(cluster).await?;
    eprintln!("group {GROUP} is coordinated by the leader of {OFFSETS_TOPIC}/{group_partition}");
    let mut faults = BrokerFaults {
        data_round: rounds / 4,
        offsets_round: (rounds * 5 / 8).max(rounds / 4 + 1),
        down: Vec::new(),
    };
    if faults.offsets_round >= rounds {
        eprintln!(
            "too few rounds for the coordinator kill (round {} of {rounds})",
            faults.offsets_round
        );
    }
    let churn_start = Instant::now();
    for round in 0..rounds {
        faults.restart_due(cluster, false, changes)?;
        if round == faults.data_round {
            let partition = rng.below(u64::from(PARTITIONS)) as u32;
            faults.kill_leader(cluster, TOPIC, partition, changes).await?;
        }
        if round == faults.offsets_round {
            faults
                .kill_leader(cluster, OFFSETS_TOPIC, group_partition, changes)
                .await?;
        }
        member_action(fleet, rng, changes)?;
        let active: Vec<String> = fleet
            .active()?
            .into_iter()
            .map(|i| fleet.members[i].name.clone())
            .collect();
        let action = &changes[changes.len() - 1].1;
        eprintln!(
            "round {round} ({:.1?}): {action}; active members {active:?}",
            churn_start.elapsed()
        );
        tokio::time::sleep(ROUND_PAUSE_MIN + Duration::from_millis(rng.below(1000))).await;
    }
    faults.restart_due(cluster, true, changes)?;
    wait_all_back(cluster, TOPIC, PARTITIONS, WAIT).await
}

/// Waits until the group's committed offsets reach every partition's high watermark (load
/// stopped, so they are final).
async fn read_to_the_end(cluster: &Cluster, client_config: &ClientConfig) -> Result<()> {
    let mut high_watermarks = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let leader = cluster.wait_leader(TOPIC, partition, WAIT).await?;
        let description = cluster.describe_on(leader, TOPIC).await?;
        let high_watermark = description
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.high_watermark)
            .context("partition not described")?;
        high_watermarks.insert(partition, high_watermark);
    }
    let admin = Client::new(client_config.clone())?.admin();
    let started = Instant::now();
    until(
        &format!("committed offsets at the high watermarks {high_watermarks:?}"),
        WAIT,
        || async {
            let committed = committed_now(&admin).await?;
            let done = high_watermarks
                .iter()
                .all(|(partition, high)| committed.get(partition).copied().unwrap_or(0) >= *high);
            Ok(done.then_some(()))
        },
    )
    .await?;
    eprintln!(
        "the members committed up to the high watermarks {:.1?} after the load stopped",
        started.elapsed()
    );
    Ok(())
}

/// What the members' event lines add up to.
#[derive(Default)]
struct Tally {
    /// Lines per kind of event.
    counts: BTreeMap<&'static str, usize>,
    /// Failed commits and polls, slow steps, by message: what the faults did to the members.
    problems: BTreeMap<String, usize>,
    /// Acknowledged commits: (member, when acknowledged, partition, offset).
    acked: Vec<(String, u64, u32, u64)>,
}

impl Tally {
    fn add(&mut self, member: &str, events: &[(u64, Event)], violations: &mut Violations) {
        for (time_us, event) in events {
            let mut problem = |text: String| *self.problems.entry(text).or_default() += 1;
            let kind = match event {
                Event::Assigned { .. } => "assigned",
                Event::Revoked { .. } => "revoked",
                Event::Lost { .. } => "lost",
                Event::Commit { ok: true, offsets, .. } => {
                    let acked = offsets.iter().map(|(p, o)| (member.to_owned(), *time_us, *p, *o));
                    self.acked.extend(acked);
                    "commit ok"
                }
                Event::Commit { source, error, .. } => {
                    problem(format!("commit ({source}) failed: {}", error.as_deref().unwrap_or("?")));
                    "commit failed"
                }
                Event::Error { message } => {
                    problem(format!("poll failed: {message}"));
                    "poll error"
                }
                Event::Slow { phase, for_ms } => {
                    problem(format!("{member} in {phase} for {for_ms} ms"));
                    "slow"
                }
                Event::Closed { .. } => "closed",
                Event::Started => "started",
                Event::Unexpected(line) => {
                    violations.add("unexpected member output", format!("{member}: {line}"));
                    "unexpected"
                }
            };
            *self.counts.entry(kind).or_default() += 1;
        }
    }
}

/// Runs every check over what the members printed; answers the summary.
fn check_everything(
    fleet: &Fleet,
    history: &History,
    samples: &Samples,
    last: &BTreeMap<u32, u64>,
    changes: &[(u64, String)],
    end_us: u64,
    violations: &mut Violations,
) -> String {
    let outputs: Vec<_> = fleet
        .members
        .iter()
        .map(|member| member.output.lock().unwrap_or_else(PoisonError::into_inner))
        .collect();
    let mut intervals = Vec::new();
    let mut tally = Tally::default();
    let mut processed: ProcessedAt<'_> = HashMap::new();
    for (member, output) in fleet.members.iter().zip(&outputs) {
        intervals.extend(intervals_of(member, &output.events, end_us));
        check_member_life(member, &output.events, violations);
        tally.add(&member.name, &output.events, violations);
        for record in &output.records {
            processed
                .entry((&member.name, record.partition))
                .or_default()
                .push(record.time_us);
        }
    }
    processed.values_mut().for_each(|times| times.sort_unstable());
    for (member, output) in fleet.members.iter().zip(&outputs) {
        check_processing_owned(&member.name, &output.records, &intervals, violations);
    }
    check_exclusive(&intervals, &processed, violations);
    let events: Vec<(&str, &[(u64, Event)])> = fleet
        .members
        .iter()
        .zip(&outputs)
        .map(|(member, output)| (member.name.as_str(), &output.events[..]))
        .collect();
    check_epochs(&events, violations);
    check_commits(samples, &tally.acked, last, violations);
    let records: Vec<&Record> = outputs.iter().flat_map(|output| &output.records).collect();
    let duplicates = check_processed(history, &records, violations);

    let mut summary = String::new();
    let count = |prefix: &str| changes.iter().filter(|(_, c)| c.starts_with(prefix)).count();
    let _ = writeln!(
        summary,
        "members {}, SIGTERM {}, SIGKILL {}, broker kills {}; events {:?}; {} records processed, {duplicates} \
         duplicates; {} ownership intervals",
        fleet.members.len(),
        count("SIGTERM"),
        count("SIGKILL"),
        count("kill -9"),
        tally.counts,
        records.len(),
        intervals.len()
    );
    for (problem, count) in tally.problems.iter().take(EXAMPLES_MAX) {
        let _ = writeln!(summary, "  {count} x {problem}");
    }
    let first_us = changes.first().map_or(0, |(at, _)| *at);
    for (at, what, regain) in regain_times(&intervals, changes, end_us) {
        let regain = match regain {
            Regain::NoGap => "no partition went unowned".to_owned(),
            Regain::Never => "never all owned again".to_owned(),
            Regain::After(took) => format!("all partitions owned again after {took:.2?}"),
        };
        let at = at.saturating_sub(first_us) as f64 / 1e6;
        let _ = writeln!(summary, "  +{at:.1} s {what}: {regain}");
    }
    summary
}

/// A member stopped with SIGTERM printed `closed` without error and exited 0; none exited
/// unasked.
fn check_member_life(member: &Member, events: &[(u64, Event)], violations: &mut Violations) {
    let closed = events.iter().find_map(|(_, event)| match event {
        Event::Closed { error } => Some(error.clone()),
        _ => None,
    });
    match (member.fate, member.exit) {
        (Fate::Killed(_), _) => {}
        (Fate::Terminated(_), Some((status, _))) => {
            if !status.success() || closed.is_none() {
                violations.add(
                    "exit",
                    format!(
                        "{} exited with {status} after SIGTERM (closed: {closed:?})",
                        member.name
                    ),
                );
            }
            if let Some(Some(error)) = closed {
                violations.add("exit", format!("{}: close failed: {error}", member.name));
            }
        }
        (Fate::Running, Some((status, _))) => {
            violations.add("exit", format!("{} exited unasked with {status}", member.name));
        }
        (_, None) => violations.add("exit", format!("{} is still running at the end", member.name)),
    }
}

/// The test's changes and the members' group events in time order (with each
/// member's last processed record and acknowledged commit), the members' stderr, and what the
/// brokers logged about groups.
fn print_member_logs(fleet: &Fleet, changes: &[(u64, String)], cluster: &Cluster) {
    let mut lines: Vec<(u64, String)> = changes.iter().map(|(at, c)| (*at, format!("test: {c}"))).collect();
    for member in &fleet.members {
        let output = member.output.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last_commit = None;
        for (time_us, event) in &output.events {
            match event {
                Event::Commit { ok: true, .. } => last_commit = Some(*time_us),
                event => lines.push((*time_us, format!("{} {event:?}", member.name))),
            }
        }
        if let Some(at) = last_commit {
            lines.push((at, format!("{} last acknowledged commit", member.name)));
        }
        if let Some(record) = output.records.last() {
            let text = format!(
                "{} last record processed ({} in all)",
                member.name,
                output.records.len()
            );
            lines.push((record.time_us, text));
        }
        if output.last_read_us > 0 {
            lines.push((
                output.last_read_us,
                format!("{} last line read by the test", member.name),
            ));
        }
        if let Some((status, at)) = member.exit {
            lines.push((at, format!("{} exit seen: {status} ({:?})", member.name, member.fate)));
        }
        let stderr = std::fs::read_to_string(&member.stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            eprintln!("----- {} stderr -----\n{stderr}", member.name);
        }
    }
    lines.sort();
    eprintln!("----- test changes and member events (successful commits left out) -----");
    for (time_us, line) in lines {
        eprintln!("{time_us} {line}");
    }
    for id in cluster.ids() {
        eprintln!("----- node {id}: group lines of its log -----");
        for line in cluster
            .node(id)
            .log()
            .lines()
            .filter(|line| line.contains("group::") || line.contains("consumer_offsets"))
        {
            if !line.contains("raft") {
                eprintln!("{line}");
            }
        }
    }
}
