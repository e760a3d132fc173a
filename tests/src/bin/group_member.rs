//! One consumer-group member as a process of its own, for the group churn test
//! (`tests/tests/group_churn_with_leader_kill_never_double_owns.rs`), which starts several, stops
//! some with SIGTERM and kills others with SIGKILL.
//!
//! `group_member BOOTSTRAP GROUP TOPIC SESSION_TIMEOUT_MS NAME`
//!
//! It subscribes to TOPIC in GROUP (manual commits, reading from the beginning where nothing is
//! committed) and prints one JSON object per line on stdout, flushed line by line, so that a
//! killed member leaves behind everything it did up to the kill. Every line has `event`,
//! `member` (NAME) and `time_us` (wall clock, microseconds since the Unix epoch: comparable
//! across the processes of one machine):
//!
//! - `started`, with `pid`;
//! - `record`: one processed record (`topic`, `partition`, `offset`, `value`), printed after
//!   `poll` returned it; the poll's records are then committed (offset after the last one per
//!   partition);
//! - `commit`: the outcome of a commit (`source` `poll` or `revoke`, `ok`, `offsets` as
//!   `[partition, offset]` pairs, `error`); `ok` means the coordinator acknowledged it;
//! - `assigned` (`topic`, `partitions`, `member_id`, `epoch`): `time_us` is when
//!   `on_assigned` finished. The listener cannot see the member epoch, so the line is printed
//!   as soon as the `poll` in which `on_assigned` ran yields (it is interrupted for that; `poll`
//!   is cancel-safe) with the epoch `Consumer::member_epoch` reports then;
//! - `revoked` (`topic`, `partitions`): printed at the start of `on_revoked`, before the
//!   consumer reports the partitions released (then their consumed positions are committed);
//! - `lost` (`topic`, `partitions`): from `on_lost`;
//! - `error`: `poll` failed (`message`); the member goes on;
//! - `slow` (`phase`: `poll`, `commit` or `close`; `for_ms`): a watchdog thread saw the member
//!   in one step for longer than 5 s (printed once per step; an idle `poll` is slow too). It
//!   locates a member that hangs;
//! - `closed`: after SIGTERM the member called `close` (`error` if it failed); then it exits 0.
//!
//! The member exits at once (code 3) when its stdin reaches its end: the test holds the other
//! end, so a member never outlives the test.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use weir_client::consumer::BoxFuture;
use weir_client::{
    Client, ClientConfig, ConsumerConfig, ConsumerRecord, GroupCommitter, RebalanceListener, SeekTo, TopicPartition,
};

/// Bound on one request to a broker: a killed broker should not hold a member up for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a fetch or commit keeps retrying while leaders and the coordinator move.
const RETRY_TIMEOUT_MS: u64 = 15_000;
/// Pause after a failed `poll` before the next.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Exit code when stdin closed (the test is gone).
const EXIT_STDIN_CLOSED: i32 = 3;
/// Exit code when stdout cannot be written (the test is gone).
const EXIT_STDOUT_GONE: i32 = 4;
/// A step that takes longer than this is reported (`slow`).
const SLOW_STEP: Duration = Duration::from_secs(5);

/// The step the member is in and since when (µs), and whether it was reported slow already.
/// A std mutex: the watchdog is a plain thread, and the lock is held for a few instructions.
static STEP: Mutex<(&str, u64, bool)> = Mutex::new(("start", 0, false));

fn step(name: &'static str) {
    *STEP.lock().unwrap_or_else(PoisonError::into_inner) = (name, now_us(), false);
}

/// Reports a step that lasts longer than [`SLOW_STEP`], once; on a thread of its own, so that it
/// reports even when the runtime is stuck.
fn start_watchdog(member: String) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let mut current = STEP.lock().unwrap_or_else(PoisonError::into_inner);
        let (name, since_us, reported) = *current;
        let for_us = now_us().saturating_sub(since_us);
        if !reported && since_us > 0 && Duration::from_micros(for_us) > SLOW_STEP {
            current.2 = true;
            drop(current);
            emit(
                &member,
                json!({"event": "slow", "phase": name, "for_ms": for_us / 1000}),
            );
        }
    });
}

/// Wall-clock microseconds since the Unix epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Prints one event line (with `member` and, unless given, `time_us`) and flushes it. A test
/// that went away leaves nothing to print to: exit.
fn emit(member: &str, mut event: Value) {
    if let Some(object) = event.as_object_mut() {
        object.insert("member".into(), json!(member));
        object.entry("time_us").or_insert_with(|| json!(now_us()));
    }
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &event)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if written.is_err() {
        std::process::exit(EXIT_STDOUT_GONE);
    }
}

fn partitions_json(partitions: &[TopicPartition]) -> Value {
    json!(partitions
        .iter()
        .map(|tp| json!({"topic": tp.topic, "partition": tp.partition}))
        .collect::<Vec<_>>())
}

/// An `on_assigned` whose line waits for the member epoch.
struct PendingAssigned {
    time_us: u64,
    partitions: Vec<TopicPartition>,
}

/// Prints rebalances; commits revoked partitions' consumed positions.
struct Listener {
    member: String,
    pending: Arc<Mutex<Vec<PendingAssigned>>>,
    assigned_signal: Arc<Notify>,
}

impl RebalanceListener for Listener {
    fn on_revoked<'a>(&'a mut self, revoked: &'a [TopicPartition], commits: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            emit(
                &self.member,
                json!({"event": "revoked", "partitions": partitions_json(revoked)}),
            );
            let offsets: Vec<(&str, u32, u64, &str)> = revoked
                .iter()
                .filter_map(|tp| {
                    Some((
                        tp.topic.as_str(),
                        tp.partition,
                        commits.consumed(&tp.topic, tp.partition)?,
                        "",
                    ))
                })
                .collect();
            if offsets.is_empty() {
                return;
            }
            let result = commits.commit_offsets(&offsets).await;
            emit_commit(&self.member, "revoke", &offsets, result);
        })
    }

    fn on_assigned<'a>(&'a mut self, assigned: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(PendingAssigned {
                    time_us: now_us(),
                    partitions: assigned.to_vec(),
                });
            self.assigned_signal.notify_one();
        })
    }

    fn on_lost<'a>(&'a mut self, lost: &'a [TopicPartition]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            emit(
                &self.member,
                json!({"event": "lost", "partitions": partitions_json(lost)}),
            );
        })
    }
}

fn emit_commit(member: &str, source: &str, offsets: &[(&str, u32, u64, &str)], result: weir_client::Result<()>) {
    let pairs: Vec<(u32, u64)> = offsets
        .iter()
        .map(|(_, partition, offset, _)| (*partition, *offset))
        .collect();
    let error = result.as_ref().err().map(ToString::to_string);
    emit(
        member,
        json!({"event": "commit", "source": source, "ok": result.is_ok(), "offsets": pairs, "error": error}),
    );
}

struct Args {
    bootstrap: String,
    group: String,
    topic: String,
    session_timeout_ms: u32,
    name: String,
}

fn parse_args() -> Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, group, topic, session, name] = &args[..] else {
        bail!("usage: group_member BOOTSTRAP GROUP TOPIC SESSION_TIMEOUT_MS NAME (got {args:?})");
    };
    Ok(Args {
        bootstrap: bootstrap.clone(),
        group: group.clone(),
        topic: topic.clone(),
        session_timeout_ms: session
            .parse()
            .with_context(|| format!("SESSION_TIMEOUT_MS {session:?} is not a number"))?,
        name: name.clone(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async {
        // Read stdin to its end: then the test is gone, and so is this member.
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 256];
        while matches!(stdin.read(&mut buffer).await, Ok(read) if read > 0) {}
        std::process::exit(EXIT_STDIN_CLOSED);
    });

    let client_config = ClientConfig::builder()
        .bootstrap(&args.bootstrap)
        .request_timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    let client = Client::new(client_config)?;
    let config = ConsumerConfig::default()
        .group_id(args.group.as_str())
        .session_timeout_ms(args.session_timeout_ms)
        .auto_commit(false)
        .start(SeekTo::Beginning)
        .retry_timeout_ms(RETRY_TIMEOUT_MS)
        .client_id(args.name.as_str());
    let mut consumer = client.consumer(config);
    let pending = Arc::new(Mutex::new(Vec::new()));
    let assigned_signal = Arc::new(Notify::new());
    consumer.set_rebalance_listener(Listener {
        member: args.name.clone(),
        pending: pending.clone(),
        assigned_signal: assigned_signal.clone(),
    });
    emit(&args.name, json!({"event": "started", "pid": std::process::id()}));
    start_watchdog(args.name.clone());
    consumer.subscribe(&[args.topic.as_str()])?;

    loop {
        step("poll");
        let polled = tokio::select! {
            biased;
            _ = terminate.recv() => break,
            // Interrupts the poll so that the assignment is printed with the epoch at once.
            () = assigned_signal.notified() => None,
            polled = consumer.poll() => Some(polled),
        };
        flush_assigned(&args.name, identity(&consumer), &pending);
        match polled {
            None => {}
            Some(Ok(records)) => process(&args.name, &mut consumer, &records).await,
            Some(Err(error)) => {
                emit(&args.name, json!({"event": "error", "message": error.to_string()}));
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    flush_assigned(&args.name, identity(&consumer), &pending);
    step("close");
    let closed = consumer.close().await;
    flush_assigned(&args.name, (None, None), &pending);
    emit(
        &args.name,
        json!({"event": "closed", "error": closed.err().map(|error| error.to_string())}),
    );
    // Not a return: the runtime would wait for the blocking read of stdin before it ends.
    std::process::exit(0);
}

/// Prints the pending `assigned` lines with the member's id and epoch as they are now.
fn flush_assigned(member: &str, identity: (Option<String>, Option<i64>), pending: &Mutex<Vec<PendingAssigned>>) {
    let assigned: Vec<PendingAssigned> = std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
    if assigned.is_empty() {
        return;
    }
    let (member_id, epoch) = identity;
    for event in assigned {
        emit(
            member,
            json!({
                "event": "assigned",
                "time_us": event.time_us,
                "partitions": partitions_json(&event.partitions),
                "member_id": &member_id,
                "epoch": epoch,
            }),
        );
    }
}

fn identity(consumer: &weir_client::Consumer) -> (Option<String>, Option<i64>) {
    (consumer.member_id(), consumer.member_epoch())
}

/// Prints the records, then commits the offset after the last one of each partition.
async fn process(member: &str, consumer: &mut weir_client::Consumer, records: &[ConsumerRecord]) {
    let mut next: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for record in records {
        let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        emit(
            member,
            json!({
                "event": "record",
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "value": value,
            }),
        );
        let entry = next.entry((record.topic.as_str(), record.partition)).or_insert(0);
        *entry = (*entry).max(record.offset + 1);
    }
    if next.is_empty() {
        return;
    }
    let offsets: Vec<(&str, u32, u64, &str)> = next
        .into_iter()
        .map(|((topic, partition), offset)| (topic, partition, offset, ""))
        .collect();
    step("commit");
    let result = consumer.commit_offsets(&offsets).await;
    emit_commit(member, "poll", &offsets, result);
}
