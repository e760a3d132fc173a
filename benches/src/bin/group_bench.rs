//! `group-bench`: consumer-group benchmarks against a running cluster (`benches/group-bench.sh`
//! starts three nodes and runs every scenario). One binary, several modes; the drivers start
//! the members as subprocesses of this same binary, so that killing a member is a real SIGKILL
//! of a real process.
//!
//! ```text
//! group-bench rebalance BOOTSTRAP TOPIC GROUP DIR CYCLES SETTLE_MS   rebalance times (driver)
//! group-bench member BOOTSTRAP TOPIC GROUP NAME RECORDS_FILE         one member (subprocess)
//! group-bench produce BOOTSTRAP TOPIC RECORDS_PER_S                  steady load (subprocess)
//! group-bench commit BOOTSTRAP TOPIC GROUP PROCESSES CONSUMERS TASKS MODE RUNS SECONDS
//!                                                                    commit throughput (driver)
//! group-bench commit-member BOOTSTRAP TOPIC GROUP NAME CONSUMERS TASKS MODE   (subprocess)
//! group-bench produce-sync BOOTSTRAP TOPIC RUNS SECONDS              one record at a time
//! group-bench cancel-probe BOOTSTRAP TOPIC TRIALS                    lost wake-up repro
//! ```
//!
//! # Layout
//!
//! - `member.rs`: a subscribed consumer that reads steadily and reports every rebalance
//!   callback (with the wall-clock time it ran) on stdout and every poll's records per
//!   partition to a file, for the gap analysis.
//! - `rebalance.rs`: the driver of the rebalance scenarios: three members, then per cycle a
//!   fourth joins (timed from the join to the last callback of the rebalance) and the oldest
//!   is SIGKILLed (timed to the survivors' last callback; the script subtracts the
//!   coordinator's eviction time, from the broker logs).
//! - `commit.rs`: commit throughput: members committing in a loop through the client
//!   (`Consumer::commit_offsets`), or several commits in flight per member as raw
//!   `CommitOffsets` requests carrying the member's id and epoch (the client API cannot have
//!   two commits of one member in flight: both commit calls take `&mut Consumer`).
//! - `load.rs`: the steady producer, and one-record-at-a-time produce latency for comparison.
//! - `probe.rs`: reproduces a lost wake-up found by these benchmarks: a heartbeat cancelled
//!   while its membership change is being written leaves the other members' long polls
//!   asleep until their deadline (raw heartbeats, no consumer).
//!
//! Every time printed is wall-clock nanoseconds since the Unix epoch, the clock the brokers'
//! log timestamps use, so the script can put broker events (an eviction) on the same line.
//! Subprocesses talk to their driver in lines: commands on stdin, events on stdout.

#[path = "group_bench/commit.rs"]
mod commit;
#[path = "group_bench/load.rs"]
mod load;
#[path = "group_bench/member.rs"]
mod member;
#[path = "group_bench/probe.rs"]
mod probe;
#[path = "group_bench/rebalance.rs"]
mod rebalance;

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

/// Wall-clock nanoseconds since the Unix epoch.
fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Writes one event line to stdout at once (the driver reads it as it happens).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0); // the driver is gone
    }
}

/// Commands from the driver, one per line of stdin; the channel closes with stdin.
fn commands() -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).await.is_err() {
                return;
            }
        }
    });
    receiver
}

/// The value at quantile `q` (0..=1) of sorted values (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn usage() -> ! {
    eprintln!(
        "usage: group-bench rebalance BOOTSTRAP TOPIC GROUP DIR CYCLES SETTLE_MS\n       \
         group-bench member BOOTSTRAP TOPIC GROUP NAME RECORDS_FILE\n       \
         group-bench produce BOOTSTRAP TOPIC RECORDS_PER_S\n       \
         group-bench commit BOOTSTRAP TOPIC GROUP PROCESSES CONSUMERS TASKS client|raw RUNS SECONDS\n       \
         group-bench commit-member BOOTSTRAP TOPIC GROUP NAME CONSUMERS TASKS client|raw\n       \
         group-bench produce-sync BOOTSTRAP TOPIC RUNS SECONDS\n       \
         group-bench cancel-probe BOOTSTRAP TOPIC TRIALS"
    );
    std::process::exit(2);
}

/// Argument `index` parsed, or the usage.
fn arg<T: std::str::FromStr>(args: &[String], index: usize) -> T {
    args.get(index).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("group-bench: {what}: {error}");
    std::process::exit(1);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or_default();
    let count = |n: usize| {
        if args.len() != n + 1 {
            usage();
        }
    };
    match mode {
        "rebalance" => {
            count(6);
            let settings = rebalance::Settings {
                bootstrap: args[1].clone(),
                topic: args[2].clone(),
                group: args[3].clone(),
                dir: args[4].clone().into(),
                cycles: arg(&args, 5),
                settle_ms: arg(&args, 6),
            };
            rebalance::run(settings).await;
        }
        "member" => {
            count(5);
            member::run(&args[1], &args[2], &args[3], &args[4], &args[5]).await;
        }
        "produce" => {
            count(3);
            load::produce(&args[1], &args[2], arg(&args, 3)).await;
        }
        "commit" => {
            count(9);
            let settings = commit::Settings {
                bootstrap: args[1].clone(),
                topic: args[2].clone(),
                group: args[3].clone(),
                processes: arg(&args, 4),
                consumers: arg(&args, 5),
                tasks: arg(&args, 6),
                mode: arg(&args, 7),
                runs: arg(&args, 8),
                seconds: arg(&args, 9),
            };
            commit::drive(settings).await;
        }
        "commit-member" => {
            count(7);
            commit::member(
                &args[1],
                &args[2],
                &args[3],
                &args[4],
                arg(&args, 5),
                arg(&args, 6),
                arg(&args, 7),
            )
            .await;
        }
        "produce-sync" => {
            count(4);
            load::produce_sync(&args[1], &args[2], arg(&args, 3), arg(&args, 4)).await;
        }
        "cancel-probe" => {
            count(3);
            probe::run(&args[1], &args[2], arg(&args, 3)).await;
        }
        _ => usage(),
    }
}
