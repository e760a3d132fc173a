//! One member of the rebalance scenarios: a subscribed consumer with the client's default group
//! settings (sticky assignment, 10 s session, heartbeats long-polled up to 1 s, auto-commit
//! every 5 s and before a revocation) that reads steadily.
//!
//! Stdout, one line per event (times in wall-clock ns):
//!
//! ```text
//! ready T                  connected, waiting for `join` on stdin
//! join T                   just before subscribe (the join request goes out in the first poll)
//! member T ID              the coordinator's member id, once known
//! assigned T P,P,...       on_assigned ran (after the committed offsets were fetched)
//! revoked T P,...          on_revoked ran (after auto-commit committed the positions)
//! lost T P,...             on_lost ran
//! error T MESSAGE          poll failed
//! ```
//!
//! RECORDS_FILE gets one line per partition per poll that returned records of it: `T P COUNT`.
//! `close` on stdin closes the consumer (commit, leave) and exits.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use weir_client::consumer::BoxFuture;
use weir_client::{Client, ClientConfig, ConsumerConfig, GroupCommitter, RebalanceListener, TopicPartition};

use super::{commands, emit, fail, now_ns};

/// How often the records file is flushed (a SIGKILLed member loses at most this much of it).
const RECORDS_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Reports rebalance callbacks on stdout with the time they ran.
struct Report;

fn partitions(list: &[TopicPartition]) -> String {
    list.iter()
        .map(|tp| tp.partition.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl RebalanceListener for Report {
    fn on_revoked<'a>(&'a mut self, revoked: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { emit(&format!("revoked {} {}", now_ns(), partitions(revoked))) })
    }

    fn on_assigned<'a>(&'a mut self, assigned: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { emit(&format!("assigned {} {}", now_ns(), partitions(assigned))) })
    }

    fn on_lost<'a>(&'a mut self, lost: &'a [TopicPartition]) -> BoxFuture<'a, ()> {
        Box::pin(async move { emit(&format!("lost {} {}", now_ns(), partitions(lost))) })
    }
}

pub async fn run(bootstrap: &str, topic: &str, group: &str, name: &str, records_file: &str) {
    let client = ClientConfig::new(bootstrap)
        .and_then(Client::new)
        .unwrap_or_else(|e| fail("client", e));
    // Connections and metadata first, so that the join is not timed with a cold client.
    if let Err(error) = client.partition_count(topic).await {
        fail("metadata", error);
    }
    let file = std::fs::File::create(records_file).unwrap_or_else(|e| fail(records_file, e));
    let mut records_out = std::io::BufWriter::new(file);
    let mut consumer = client.consumer(ConsumerConfig::default().group_id(group).client_id(name));
    consumer.set_rebalance_listener(Report);
    let mut commands = commands();
    emit(&format!("ready {}", now_ns()));
    loop {
        match commands.recv().await.as_deref() {
            Some("join") => break,
            Some(_) => {}
            None => return,
        }
    }
    emit(&format!("join {}", now_ns()));
    consumer.subscribe(&[topic]).unwrap_or_else(|e| fail("subscribe", e));
    let mut member_id: Option<String> = None;
    let mut flushed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            polled = consumer.poll() => match polled {
                Ok(records) => {
                    let at = now_ns();
                    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
                    for record in &records {
                        *counts.entry(record.partition).or_default() += 1;
                    }
                    for (partition, count) in counts {
                        if writeln!(records_out, "{at} {partition} {count}").is_err() {
                            fail(records_file, "write failed");
                        }
                    }
                }
                Err(error) => {
                    emit(&format!("error {} {}", now_ns(), error.to_string().replace('\n', " ")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            command = commands.recv() => {
                if matches!(command.as_deref(), Some("close") | None) {
                    let _ = records_out.flush();
                    if let Err(error) = consumer.close().await {
                        emit(&format!("error {} close: {error}", now_ns()));
                    }
                    emit(&format!("closed {}", now_ns()));
                    // Not a return: the runtime would wait for the blocking read of stdin.
                    std::process::exit(0);
                }
            }
        }
        let current = consumer.member_id();
        if current.is_some() && current != member_id {
            emit(&format!(
                "member {} {}",
                now_ns(),
                current.as_deref().unwrap_or_default()
            ));
            member_id = current;
        }
        if flushed.elapsed() >= RECORDS_FLUSH_INTERVAL {
            let _ = records_out.flush();
            flushed = tokio::time::Instant::now();
        }
    }
}
