//! The rebalance scenarios. A producer writes `PRODUCE_RATE` records/s over the topic's
//! partitions; three members (subprocesses, `member.rs`) read it. Then, per cycle:
//!
//! 1. *join*: a fourth member, started and connected beforehand, is told to join; timed from
//!    its `join` line (just before `subscribe`) to the latest rebalance callback of any member
//!    once every member owns partitions / members partitions and together they own all.
//! 2. *kill*: the oldest member is SIGKILLed; timed from the kill to the latest callback of
//!    the survivors once they are balanced again. The coordinator evicts the member after its
//!    session timeout; the script takes the eviction time from the broker logs and reports
//!    eviction -> complete.
//!
//! Between events the members read for `SETTLE_MS` undisturbed (the baseline of the gap
//! analysis). Output files in DIR: `rebalance.tsv` (one line per event: kind (`initial`: the
//! first three joining at once, `join`, `kill`), cycle, event time, complete time, callbacks,
//! late callbacks, member, member id), `kept.tsv` (per event,
//! the partitions each member held through it without a revocation: kind, cycle, member,
//! partition), `events.log` (every line every member printed), `records-NAME.txt` (per member).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use weir_client::{Admin, ClientConfig};

use super::{fail, now_ns};

/// Records per second the producer writes during the scenarios.
const PRODUCE_RATE: u64 = 2_000;
/// Members before the fourth joins.
const BASE_MEMBERS: usize = 3;
/// Longest wait for a join to complete.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait from a kill to a complete assignment: the default session timeout (10 s) and
/// then as long as a join may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(40);
/// After a complete assignment, how long callbacks are still watched for (a callback then
/// means the assignment looked complete but was not).
const LATE_WATCH: Duration = Duration::from_millis(300);

pub struct Settings {
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub dir: PathBuf,
    pub cycles: u32,
    pub settle_ms: u64,
}

/// A member subprocess as the driver sees it.
struct Member {
    process: Child,
    stdin: ChildStdin,
    owned: BTreeSet<u32>,
    member_id: String,
}

/// One line of a member: `KIND TIME REST`.
struct Event {
    kind: String,
    at: u128,
    rest: String,
}

/// How a rebalance ended.
struct Outcome {
    /// The latest callback at or after the event.
    complete: u128,
    callbacks: usize,
    late: usize,
    /// Partitions each member gave up or lost during the rebalance.
    disturbed: BTreeSet<(String, u32)>,
}

struct Driver {
    settings: Settings,
    partitions: u32,
    members: BTreeMap<String, Member>,
    events: mpsc::UnboundedReceiver<(String, String)>,
    sender: mpsc::UnboundedSender<(String, String)>,
    next_member: u32,
    log: std::fs::File,
    results: std::fs::File,
    kept: std::fs::File,
}

fn create(dir: &std::path::Path, name: &str) -> std::fs::File {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap_or_else(|e| fail(&path.display().to_string(), e))
}

fn write_line(file: &mut std::fs::File, line: &str) {
    if writeln!(file, "{line}").is_err() {
        fail("output", "write failed");
    }
}

pub async fn run(settings: Settings) {
    let admin = ClientConfig::new(&settings.bootstrap)
        .and_then(Admin::new)
        .unwrap_or_else(|e| fail("admin", e));
    let metadata = admin
        .metadata(&[settings.topic.as_str()])
        .await
        .unwrap_or_else(|e| fail("metadata", e));
    let partitions = metadata.topics.first().map_or(0, |t| t.partitions.len() as u32);
    if partitions == 0 || !partitions.is_multiple_of(12) {
        fail(
            "topic",
            format!("{} has {partitions} partitions; want a multiple of 12", settings.topic),
        );
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| fail("current_exe", e));
    let producer_err = create(&settings.dir, "producer.err");
    let mut producer = Command::new(&exe)
        .args([
            "produce",
            &settings.bootstrap,
            &settings.topic,
            &PRODUCE_RATE.to_string(),
        ])
        // Its end of the pipe closes when this process ends, however it ends: the producer
        // then stops.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(producer_err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail("producer", e));
    let (sender, events) = mpsc::unbounded_channel();
    let mut driver = Driver {
        log: create(&settings.dir, "events.log"),
        results: create(&settings.dir, "rebalance.tsv"),
        kept: create(&settings.dir, "kept.tsv"),
        settings,
        partitions,
        members: BTreeMap::new(),
        events,
        sender,
        next_member: 1,
    };
    driver.settle(Duration::from_secs(2)).await;
    let since = now_ns();
    for _ in 0..BASE_MEMBERS {
        let name = driver.spawn().await;
        driver.send(&name, "join").await;
    }
    let Some(first) = driver.until_balanced(since, JOIN_TIMEOUT).await else {
        driver.dump("the first three members never got a balanced assignment");
        std::process::exit(1);
    };
    println!(
        "initial: 3 members balanced {:.0} ms after the first join",
        ms(first.complete - since)
    );
    driver.record("initial", 0, since, &first, "m01");
    let coordinator = admin
        .describe_group(&driver.settings.group)
        .await
        .map(|d| d.coordinator);
    println!("coordinator of {}: node {:?}", driver.settings.group, coordinator);
    for cycle in 1..=driver.settings.cycles {
        driver.settle(Duration::from_millis(driver.settings.settle_ms)).await;
        driver.join_one(cycle).await;
        driver.settle(Duration::from_millis(driver.settings.settle_ms)).await;
        driver.kill_oldest(cycle).await;
    }
    let after = admin
        .describe_group(&driver.settings.group)
        .await
        .map(|d| d.coordinator);
    println!("coordinator of {} at the end: node {:?}", driver.settings.group, after);
    driver.close_all().await;
    let _ = producer.start_kill();
    let _ = producer.wait().await;
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

impl Driver {
    /// Starts a member subprocess and waits until it is connected.
    async fn spawn(&mut self) -> String {
        let name = format!("m{:02}", self.next_member);
        self.next_member += 1;
        let dir = &self.settings.dir;
        let records = dir.join(format!("records-{name}.txt"));
        let mut process = Command::new(std::env::current_exe().unwrap_or_else(|e| fail("current_exe", e)))
            .arg("member")
            .args([
                &self.settings.bootstrap,
                &self.settings.topic,
                &self.settings.group,
                &name,
            ])
            .arg(&records)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(create(dir, &format!("member-{name}.err")))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| fail("member", e));
        let stdin = process.stdin.take().unwrap_or_else(|| fail("member", "no stdin"));
        let stdout = process.stdout.take().unwrap_or_else(|| fail("member", "no stdout"));
        let sender = self.sender.clone();
        let reader_name = name.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send((reader_name.clone(), line)).is_err() {
                    return;
                }
            }
        });
        self.members.insert(
            name.clone(),
            Member {
                process,
                stdin,
                owned: BTreeSet::new(),
                member_id: String::new(),
            },
        );
        self.wait_for(&name, "ready", JOIN_TIMEOUT).await;
        name
    }

    async fn send(&mut self, name: &str, command: &str) {
        let Some(member) = self.members.get_mut(name) else {
            return;
        };
        if member.stdin.write_all(format!("{command}\n").as_bytes()).await.is_err() {
            fail(name, "its stdin is closed");
        }
    }

    /// Records a member's line; returns it parsed.
    fn apply(&mut self, name: &str, line: &str) -> Option<Event> {
        write_line(&mut self.log, &format!("{name} {line}"));
        let mut fields = line.splitn(3, ' ');
        let kind = fields.next()?.to_string();
        let at: u128 = fields.next()?.parse().ok()?;
        let rest = fields.next().unwrap_or_default().to_string();
        let member = self.members.get_mut(name)?;
        let listed = || rest.split(',').filter_map(|p| p.parse::<u32>().ok());
        match kind.as_str() {
            "assigned" => member.owned.extend(listed()),
            "revoked" | "lost" => {
                for partition in listed() {
                    member.owned.remove(&partition);
                }
            }
            "member" => member.member_id = rest.clone(),
            "error" => eprintln!("   {name}: {rest}"),
            _ => {}
        }
        Some(Event { kind, at, rest })
    }

    /// The next line of anyone, until `deadline`.
    async fn next(&mut self, deadline: Instant) -> Option<(String, Event)> {
        loop {
            let (name, line) = tokio::time::timeout_at(deadline, self.events.recv()).await.ok()??;
            if let Some(event) = self.apply(&name, &line) {
                return Some((name, event));
            }
        }
    }

    async fn wait_for(&mut self, who: &str, kind: &str, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next(deadline).await {
                Some((name, event)) if name == who && event.kind == kind => return event,
                Some(_) => {}
                None => fail(who, format!("no '{kind}' line within {timeout:?}")),
            }
        }
    }

    /// Lets the members read undisturbed for `duration`, recording what they print.
    async fn settle(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Some((name, event)) = self.next(deadline).await {
            if matches!(event.kind.as_str(), "assigned" | "revoked" | "lost") {
                println!("   (unexpected while settled: {name} {} {})", event.kind, event.rest);
            }
        }
    }

    /// Every member owns the same number of partitions and together they own all, once each.
    fn balanced(&self) -> bool {
        let count = self.members.len() as u32;
        let each = self.partitions / count.max(1);
        let mut union = BTreeSet::new();
        for member in self.members.values() {
            if member.owned.len() as u32 != each {
                return false;
            }
            union.extend(member.owned.iter().copied());
        }
        count > 0 && self.partitions.is_multiple_of(count) && union.len() as u32 == self.partitions
    }

    /// Waits until the assignment is balanced, then watches for late callbacks.
    async fn until_balanced(&mut self, since: u128, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut outcome = Outcome {
            complete: since,
            callbacks: 0,
            late: 0,
            disturbed: BTreeSet::new(),
        };
        let note = |outcome: &mut Outcome, name: &str, event: &Event, late: bool| {
            if !matches!(event.kind.as_str(), "assigned" | "revoked" | "lost") || event.at < since {
                return;
            }
            outcome.complete = outcome.complete.max(event.at);
            outcome.callbacks += 1;
            outcome.late += usize::from(late);
            if event.kind != "assigned" {
                for partition in event.rest.split(',').filter_map(|p| p.parse::<u32>().ok()) {
                    outcome.disturbed.insert((name.to_string(), partition));
                }
            }
        };
        while !self.balanced() {
            let (name, event) = self.next(deadline).await?;
            note(&mut outcome, &name, &event, false);
        }
        let watch = Instant::now() + LATE_WATCH;
        while let Some((name, event)) = self.next(watch).await {
            note(&mut outcome, &name, &event, true);
        }
        Some(outcome)
    }

    fn owned_now(&self) -> BTreeMap<String, BTreeSet<u32>> {
        self.members
            .iter()
            .map(|(name, m)| (name.clone(), m.owned.clone()))
            .collect()
    }

    /// Writes the partitions each member held through a rebalance.
    fn write_kept(&mut self, kind: &str, cycle: u32, before: &BTreeMap<String, BTreeSet<u32>>, outcome: &Outcome) {
        let after = self.owned_now();
        for (name, owned) in before {
            let Some(now) = after.get(name) else { continue };
            for partition in owned.intersection(now) {
                if !outcome.disturbed.contains(&(name.clone(), *partition)) {
                    write_line(&mut self.kept, &format!("{kind}\t{cycle}\t{name}\t{partition}"));
                }
            }
        }
    }

    fn record(&mut self, kind: &str, cycle: u32, event_at: u128, outcome: &Outcome, name: &str) {
        let member_id = self.member_id(name);
        write_line(
            &mut self.results,
            &format!(
                "{kind}\t{cycle}\t{event_at}\t{}\t{}\t{}\t{name}\t{member_id}",
                outcome.complete, outcome.callbacks, outcome.late
            ),
        );
    }

    fn member_id(&self, name: &str) -> String {
        self.members.get(name).map(|m| m.member_id.clone()).unwrap_or_default()
    }

    async fn join_one(&mut self, cycle: u32) {
        let before = self.owned_now();
        let name = self.spawn().await;
        self.send(&name, "join").await;
        let joined = self.wait_for(&name, "join", JOIN_TIMEOUT).await.at;
        let Some(outcome) = self.until_balanced(joined, JOIN_TIMEOUT).await else {
            self.dump(&format!(
                "cycle {cycle}: no balanced assignment within {JOIN_TIMEOUT:?} of {name}'s join"
            ));
            std::process::exit(1);
        };
        println!(
            "cycle {cycle:2}: {name} joins: complete after {:7.1} ms ({} callbacks{})",
            ms(outcome.complete - joined),
            outcome.callbacks,
            late_note(&outcome)
        );
        self.record("join", cycle, joined, &outcome, &name);
        self.write_kept("join", cycle, &before, &outcome);
    }

    async fn kill_oldest(&mut self, cycle: u32) {
        let Some(victim) = self.members.keys().next().cloned() else {
            return;
        };
        let Some(mut member) = self.members.remove(&victim) else {
            return;
        };
        let before = self.owned_now();
        let killed = now_ns();
        let _ = member.process.start_kill();
        let _ = member.process.wait().await;
        let Some(outcome) = self.until_balanced(killed, KILL_TIMEOUT).await else {
            self.dump(&format!(
                "cycle {cycle}: no balanced assignment within {KILL_TIMEOUT:?} of killing {victim}"
            ));
            std::process::exit(1);
        };
        println!(
            "cycle {cycle:2}: {victim} killed: complete after {:7.1} ms (session timeout included; {} callbacks{})",
            ms(outcome.complete - killed),
            outcome.callbacks,
            late_note(&outcome)
        );
        write_line(
            &mut self.results,
            &format!(
                "kill\t{cycle}\t{killed}\t{}\t{}\t{}\t{victim}\t{}",
                outcome.complete, outcome.callbacks, outcome.late, member.member_id
            ),
        );
        self.write_kept("kill", cycle, &before, &outcome);
    }

    fn dump(&self, what: &str) {
        eprintln!("group-bench: {what}; owned partitions now:");
        for (name, member) in &self.members {
            eprintln!("   {name} ({}): {:?}", member.member_id, member.owned);
        }
    }

    async fn close_all(&mut self) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in &names {
            self.send(name, "close").await;
        }
        for name in names {
            if let Some(mut member) = self.members.remove(&name) {
                if tokio::time::timeout(Duration::from_secs(15), member.process.wait())
                    .await
                    .is_err()
                {
                    let _ = member.process.start_kill();
                }
            }
        }
    }
}

fn late_note(outcome: &Outcome) -> String {
    match outcome.late {
        0 => String::new(),
        late => format!(", {late} of them after the assignment looked complete"),
    }
}
