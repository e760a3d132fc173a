//! Steady produce load whose every write is recorded in a [`History`], for the fault tests.
//!
//! A [`Load`] runs `producers x partitions` writers. Each writer sends unique values
//! (`p{producer}-{partition}-{seq}`) to one partition, one write at a time, so that its
//! acknowledged offsets must increase, and records each write as invoke, then ok (with the
//! offset), fail (a definite rejection) or info (outcome unknown).
//!
//! The client's producer refreshes its metadata after retriable errors (not leader,
//! unavailable) but not after a write whose outcome is unknown (a timeout): a producer whose
//! cached leader hangs (SIGSTOP, a network cut that drops packets) keeps sending to it. A
//! writer can therefore start over with a new client after such a write
//! ([`Load::reconnect_after_unknown`]), as an application would; the new client fetches
//! metadata from whichever node answers first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinHandle;
use weir_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};

use crate::history::{History, Outcome};
use crate::wait::within;

/// What a load writes, and with which client settings.
#[derive(Debug, Clone)]
pub struct Load {
    pub topic: String,
    pub partitions: u32,
    /// Producer ids `first_producer..first_producer + producers` (values are unique per id and
    /// partition, so two loads of one history need disjoint ids).
    pub first_producer: u32,
    pub producers: u32,
    pub client: ClientConfig,
    pub producer: ProducerConfig,
    /// Pause between two sends of one writer: steady load, not a flood that starves the brokers
    /// of the 2 cores the tests run on.
    pub send_pause: Duration,
    /// After a write of unknown outcome, close the producer and continue with a new client.
    pub reconnect_after_unknown: bool,
}

impl Load {
    /// Two producers on every partition of `topic`, linger 0, 2 ms between sends, no reconnects.
    pub fn new(topic: &str, partitions: u32, client: ClientConfig) -> Self {
        Self {
            topic: topic.to_owned(),
            partitions,
            first_producer: 0,
            producers: 2,
            client,
            producer: ProducerConfig::default().linger_ms(0),
            send_pause: Duration::from_millis(2),
            reconnect_after_unknown: false,
        }
    }

    /// Starts every writer on the current tokio runtime.
    pub fn start(&self, history: Arc<History>) -> RunningLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for producer in self.first_producer..self.first_producer + self.producers {
            for partition in 0..self.partitions {
                let writer = Writer {
                    load: self.clone(),
                    producer,
                    partition,
                };
                writers.push(tokio::spawn(writer.run(history.clone(), stop.clone())));
            }
        }
        RunningLoad { stop, writers }
    }
}

/// The writers of a started [`Load`].
#[derive(Debug)]
pub struct RunningLoad {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<Result<()>>>,
}

impl RunningLoad {
    /// Tells every writer to stop after its current write and waits up to `timeout` for all.
    pub async fn stop(self, timeout: Duration) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.writers {
            within("a writer to stop", timeout, writer).await???;
        }
        Ok(())
    }
}

/// One sequential writer to one partition.
#[derive(Debug, Clone)]
pub struct Writer {
    pub load: Load,
    /// Producer id in the history; values are unique per (producer, partition).
    pub producer: u32,
    pub partition: u32,
}

impl Writer {
    /// Writes until `stop`, recording every write in `history`.
    pub async fn run(self, history: Arc<History>, stop: Arc<AtomicBool>) -> Result<()> {
        let (producer, partition) = (self.producer, self.partition);
        let mut sender = self.connect()?;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let value = format!("p{producer}-{partition}-{seq:07}");
            seq += 1;
            let record = ProducerRecord::new(self.load.topic.as_str())
                .with_partition(partition)
                .with_value(value.clone());
            let id = history.invoke(producer, partition, value);
            let outcome = match sender.send(record).await {
                Ok(metadata) if metadata.partition == partition => Outcome::Ok {
                    offset: metadata.offset,
                },
                Ok(metadata) => Outcome::Info(format!(
                    "acknowledged on partition {} instead of {partition}",
                    metadata.partition
                )),
                Err(error) if error.is_outcome_unknown() => Outcome::Info(error.to_string()),
                Err(error) => Outcome::Fail(error.to_string()),
            };
            let unknown = matches!(outcome, Outcome::Info(_));
            history.complete(id, outcome);
            if unknown && self.load.reconnect_after_unknown {
                sender.close().await;
                sender = self.connect()?;
            }
            tokio::time::sleep(self.load.send_pause).await;
        }
        sender.close().await;
        Ok(())
    }

    fn connect(&self) -> Result<Producer> {
        let client = Client::new(self.load.client.clone())?;
        Ok(client.producer(self.load.producer.clone())?)
    }
}

/// `label over N rounds: min, median, max; all: [ms...]`, for stall and recovery times.
pub fn summary(label: &str, values: &[Duration]) -> String {
    let mut values = values.to_vec();
    values.sort();
    if values.is_empty() {
        return format!("{label}: none");
    }
    format!(
        "{label} over {} rounds: min {:.2?}, median {:.2?}, max {:.2?}; all (ms): {:?}",
        values.len(),
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
        values.iter().map(Duration::as_millis).collect::<Vec<_>>()
    )
}

/// Per partition: how many writes ended ok, failed and unknown, with a few distinct reasons of
/// the failures and unknowns (to see at a glance what the faults did to the producers).
pub fn outcomes(history: &History) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    const REASONS_MAX: usize = 4;
    #[derive(Default)]
    struct Counts {
        ok: usize,
        failed: usize,
        unknown: usize,
        reasons: Vec<String>,
    }
    let mut by_partition: BTreeMap<u32, Counts> = BTreeMap::new();
    for op in history.ops() {
        let counts = by_partition.entry(op.partition).or_default();
        let reason = match op.outcome {
            Outcome::Ok { .. } => {
                counts.ok += 1;
                continue;
            }
            Outcome::Fail(reason) => {
                counts.failed += 1;
                format!("fail: {reason}")
            }
            Outcome::Info(reason) => {
                counts.unknown += 1;
                format!("unknown: {reason}")
            }
            Outcome::Pending => {
                counts.unknown += 1;
                "pending".to_owned()
            }
        };
        if counts.reasons.len() < REASONS_MAX && !counts.reasons.contains(&reason) {
            counts.reasons.push(reason);
        }
    }
    let mut text = String::new();
    for (partition, counts) in by_partition {
        let _ = writeln!(
            text,
            "partition {partition}: {} ok, {} failed, {} unknown",
            counts.ok, counts.failed, counts.unknown
        );
        for reason in counts.reasons {
            let _ = writeln!(text, "    {reason}");
        }
    }
    text
}
