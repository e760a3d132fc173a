//! Commit throughput of one group. The driver starts PROCESSES `commit-member` subprocesses of
//! CONSUMERS group members each (all subscribed to TOPIC, which has no traffic), waits until
//! every member owns its share of the partitions, then RUNS times tells them to commit for
//! SECONDS and merges what they measured:
//!
//! - `client`: each member commits one of its partitions synchronously in a loop through
//!   `Consumer::commit_offsets` (one commit in flight per member; TASKS must be 1).
//! - `raw`: each member runs TASKS tasks, each committing its own partition of the member in a
//!   loop, as `CommitOffsets` requests with the member's id and epoch sent straight to the
//!   coordinator over one HTTP/2 connection per process (what the client sends, minus its
//!   routing; the client has no way to have several commits of one member in flight).
//!
//! Every commit carries one partition's offset, one more than the previous one of that
//! partition. The driver prints one line per run:
//! `commit MODE PROCESSES CONSUMERS TASKS RUN COMMITS ERRORS SECONDS PER_S P50_US P99_US COORDINATOR`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tokio::sync::mpsc;
use weir_client::{Admin, Client, ClientConfig, Consumer, ConsumerConfig};
use weir_proto::v1 as proto;

use super::{commands, emit, fail, now_ns, quantile};

/// Longest wait for the members to own their shares.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each member's poll may take in the waiting loop (the topic has no records).
const POLL_SLICE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Client,
    Raw,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Self::Client),
            "raw" => Ok(Self::Raw),
            other => Err(format!("unknown mode {other}")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Raw => "raw",
        })
    }
}

pub struct Settings {
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub processes: u32,
    pub consumers: u32,
    pub tasks: u32,
    pub mode: Mode,
    pub runs: u32,
    pub seconds: u64,
}

pub async fn drive(settings: Settings) {
    if settings.mode == Mode::Client && settings.tasks != 1 {
        fail(
            "commit",
            "client mode has one commit in flight per member: TASKS must be 1",
        );
    }
    let admin = ClientConfig::new(&settings.bootstrap)
        .and_then(Admin::new)
        .unwrap_or_else(|e| fail("admin", e));
    let partitions = admin
        .metadata(&[settings.topic.as_str()])
        .await
        .map_or(0, |m| m.topics.first().map_or(0, |t| t.partitions.len() as u32));
    let members = settings.processes * settings.consumers;
    if partitions == 0 || !partitions.is_multiple_of(members) || partitions / members < settings.tasks {
        fail(
            "commit",
            format!(
                "{partitions} partitions do not split into {members} members x {} tasks",
                settings.tasks
            ),
        );
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| fail("current_exe", e));
    let (sender, mut lines) = mpsc::unbounded_channel::<(String, String)>();
    let mut children = Vec::new();
    for index in 1..=settings.processes {
        let name = format!("c{index}");
        let mut child = Command::new(&exe)
            .arg("commit-member")
            .args([&settings.bootstrap, &settings.topic, &settings.group, &name])
            .args([
                settings.consumers.to_string(),
                settings.tasks.to_string(),
                settings.mode.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| fail("commit-member", e));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| fail("commit-member", "no stdout"));
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if sender.send((name.clone(), line)).is_err() {
                    return;
                }
            }
        });
        children.push(child);
    }
    // Every member owns partitions / members partitions.
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + BALANCE_TIMEOUT;
    let share = (partitions / members) as usize;
    while owned.len() as u32 != members || owned.values().any(|count| *count != share) {
        let Ok(Some((_, line))) = tokio::time::timeout_at(deadline, lines.recv()).await else {
            fail(
                "commit",
                format!("members did not get their shares within {BALANCE_TIMEOUT:?}: {owned:?}"),
            );
        };
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        if fields[0] == "owned" && fields.len() >= 3 {
            let count = fields
                .get(3)
                .map_or(0, |list| list.split(',').filter(|p| !p.is_empty()).count());
            owned.insert(fields[2].to_string(), count);
        }
    }
    let coordinator = admin.describe_group(&settings.group).await.map_or(0, |d| d.coordinator);
    for run in 1..=settings.runs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for child in &mut children {
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.write_all(format!("go {}\n", settings.seconds).as_bytes()).await;
            }
        }
        let mut latencies_us = Vec::new();
        let (mut commits, mut errors, mut answered) = (0u64, 0u64, 0u32);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(settings.seconds + 60);
        while answered < settings.processes {
            let Ok(Some((name, line))) = tokio::time::timeout_at(deadline, lines.recv()).await else {
                fail("commit", "a member did not report its run");
            };
            let fields: Vec<&str> = line.splitn(5, ' ').collect();
            match fields[0] {
                "result" if fields.len() >= 4 => {
                    answered += 1;
                    commits += fields[2].parse::<u64>().unwrap_or(0);
                    errors += fields[3].parse::<u64>().unwrap_or(0);
                    let list = fields.get(4).copied().unwrap_or_default();
                    latencies_us.extend(list.split(',').filter_map(|v| v.parse::<u64>().ok()));
                }
                "error" => eprintln!("   {name}: {line}"),
                _ => {}
            }
        }
        latencies_us.sort_unstable();
        println!(
            "commit {} {} {} {} {run} {commits} {errors} {} {:.1} {} {} {coordinator}",
            settings.mode,
            settings.processes,
            settings.consumers,
            settings.tasks,
            settings.seconds,
            commits as f64 / settings.seconds as f64,
            quantile(&latencies_us, 0.5),
            quantile(&latencies_us, 0.99)
        );
    }
    for child in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(b"quit\n").await;
        }
    }
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
        }
    }
}

/// One commit-member process; see the module doc.
pub async fn member(bootstrap: &str, topic: &str, group: &str, name: &str, consumers: u32, tasks: u32, mode: Mode) {
    let client = ClientConfig::new(bootstrap)
        .and_then(Client::new)
        .unwrap_or_else(|e| fail("client", e));
    let mut members: Vec<Consumer> = (0..consumers)
        .map(|k| {
            client.consumer(
                ConsumerConfig::default()
                    .group_id(group)
                    .client_id(format!("{name}-{k}")),
            )
        })
        .collect();
    for consumer in &mut members {
        consumer.subscribe(&[topic]).unwrap_or_else(|e| fail("subscribe", e));
    }
    let mut commands = commands();
    let mut reported: Vec<Vec<u32>> = vec![Vec::new(); members.len()];
    loop {
        for (k, consumer) in members.iter_mut().enumerate() {
            // Rebalances happen in poll; the topic is empty, so every poll times out.
            let _ = tokio::time::timeout(POLL_SLICE, consumer.poll()).await;
            let owned: Vec<u32> = consumer.assignment().into_iter().map(|(_, p)| p).collect();
            if owned != reported[k] {
                let list: Vec<String> = owned.iter().map(u32::to_string).collect();
                emit(&format!("owned {} {name}-{k} {}", now_ns(), list.join(",")));
                reported[k] = owned;
            }
        }
        let command = match commands.try_recv() {
            Ok(command) => command,
            Err(mpsc::error::TryRecvError::Empty) => continue,
            Err(mpsc::error::TryRecvError::Disconnected) => "quit".to_string(),
        };
        if let Some(seconds) = command.strip_prefix("go ").and_then(|s| s.parse::<u64>().ok()) {
            let duration = Duration::from_secs(seconds);
            let (latencies, errors) = match mode {
                Mode::Client => {
                    let (back, latencies, errors) = client_load(std::mem::take(&mut members), topic, duration).await;
                    members = back;
                    (latencies, errors)
                }
                Mode::Raw => raw_load(&members, bootstrap, group, topic, tasks, duration).await,
            };
            let list: Vec<String> = latencies.iter().map(u64::to_string).collect();
            emit(&format!(
                "result {name} {} {errors} {}",
                latencies.len(),
                list.join(",")
            ));
        } else if command == "quit" {
            for consumer in members {
                let _ = consumer.close().await;
            }
            // Not a return: the runtime would wait for the blocking read of stdin.
            std::process::exit(0);
        }
    }
}

/// A fresh offset base: later than any offset a previous run committed (runs commit far fewer
/// than a million offsets per second).
fn offset_base() -> u64 {
    (now_ns() / 1_000) as u64
}

/// Each member commits its first partition synchronously for `duration`. Returns the members
/// (in order), the latencies of successful commits in microseconds, and the failures.
async fn client_load(members: Vec<Consumer>, topic: &str, duration: Duration) -> (Vec<Consumer>, Vec<u64>, u64) {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut consumer) in members.into_iter().enumerate() {
        let topic = topic.to_string();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let partition = consumer.assignment().first().map(|(_, p)| *p);
            let mut offset = offset_base();
            while let (Some(partition), true) = (partition, Instant::now() < deadline) {
                offset += 1;
                let started = Instant::now();
                match consumer
                    .commit_offsets(&[(topic.as_str(), partition, offset, "")])
                    .await
                {
                    Ok(()) => latencies.push(started.elapsed().as_micros() as u64),
                    Err(error) => {
                        if errors == 0 {
                            emit(&format!("error {} commit: {error}", now_ns()));
                        }
                        errors += 1;
                    }
                }
            }
            (index, consumer, latencies, errors)
        });
    }
    let mut back = Vec::new();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (index, consumer, mine, failed) = done.unwrap_or_else(|e| fail("commit task", e));
        back.push((index, consumer));
        latencies.extend(mine);
        errors += failed;
    }
    back.sort_by_key(|(index, _)| *index);
    (
        back.into_iter().map(|(_, consumer)| consumer).collect(),
        latencies,
        errors,
    )
}

/// The address of the group's coordinator (the node `describe_group` names).
async fn coordinator_address(bootstrap: &str, group: &str) -> String {
    let admin = ClientConfig::new(bootstrap)
        .and_then(Admin::new)
        .unwrap_or_else(|e| fail("admin", e));
    let coordinator = admin
        .describe_group(group)
        .await
        .unwrap_or_else(|e| fail("describe", e))
        .coordinator;
    let metadata = admin.metadata(&[]).await.unwrap_or_else(|e| fail("metadata", e));
    metadata
        .brokers
        .iter()
        .find(|broker| broker.node_id == coordinator)
        .map(|broker| broker.address.clone())
        .unwrap_or_else(|| fail("metadata", format!("no address for node {coordinator}")))
}

/// TASKS tasks per member, each committing its own partition of the member in a loop for
/// `duration`, as the member (its id and epoch), over one connection to the coordinator.
async fn raw_load(
    members: &[Consumer],
    bootstrap: &str,
    group: &str,
    topic: &str,
    tasks: u32,
    duration: Duration,
) -> (Vec<u64>, u64) {
    let address = coordinator_address(bootstrap, group).await;
    let client = proto::groups_client::GroupsClient::connect(format!("http://{address}"))
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let deadline = Instant::now() + duration;
    let mut running = tokio::task::JoinSet::new();
    for consumer in members {
        let (Some(member_id), Some(member_epoch)) = (consumer.member_id(), consumer.member_epoch()) else {
            fail("raw", "a member has not joined");
        };
        let owned = consumer.assignment();
        for (_, partition) in owned.into_iter().take(tasks as usize) {
            let mut client = client.clone();
            let (group, topic, member_id) = (group.to_string(), topic.to_string(), member_id.clone());
            running.spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                let mut offset = offset_base();
                while Instant::now() < deadline {
                    offset += 1;
                    let request = proto::CommitOffsetsRequest {
                        group: group.clone(),
                        member_id: member_id.clone(),
                        member_epoch,
                        offsets: vec![proto::CommitOffset {
                            topic: topic.clone(),
                            partition,
                            offset,
                            metadata: String::new(),
                        }],
                    };
                    let started = Instant::now();
                    match client.commit_offsets(request).await {
                        Ok(_) => latencies.push(started.elapsed().as_micros() as u64),
                        Err(status) => {
                            if errors == 0 {
                                emit(&format!("error {} commit: {status}", now_ns()));
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            });
        }
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(done) = running.join_next().await {
        let (mine, failed) = done.unwrap_or_else(|e| fail("commit task", e));
        latencies.extend(mine);
        errors += failed;
    }
    (latencies, errors)
}
