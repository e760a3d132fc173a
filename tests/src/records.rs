//! Reading partitions back, and checking what was read against what was acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use weir_client::{Client, ConsumerConfig, ConsumerRecord, SeekTo, Watermarks};

use crate::wait;

/// Upper bound on one poll while draining (the broker may still be electing a leader).
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything one partition held, from its log start to its high watermark, as read.
#[derive(Debug, Clone)]
pub struct Drained {
    pub partition: u32,
    pub watermarks: Watermarks,
    /// In the order the consumer returned them.
    pub records: Vec<ConsumerRecord>,
}

/// Reads `partition` of `topic` from its log start up to the high watermark it has when reading
/// begins, each poll bounded by 30 s.
pub async fn drain_partition(client: &Client, topic: &str, partition: u32) -> Result<Drained> {
    let mut consumer = client.consumer(ConsumerConfig::default().max_wait_ms(200));
    consumer.assign(topic, &[partition]).await?;
    let start = consumer.seek(topic, partition, SeekTo::Beginning).await?;
    let watermarks = consumer.watermarks(topic, partition).await?;
    let end = watermarks.high_watermark;
    let mut records = Vec::new();
    let mut position = start;
    while position < end {
        let polled = wait::within("a poll while draining", POLL_TIMEOUT, consumer.poll())
            .await?
            .with_context(|| format!("polling {topic}/{partition} at {position} (high watermark {end})"))?;
        for record in polled {
            if record.offset < end {
                records.push(record);
            }
        }
        position = consumer
            .position(topic, partition)
            .context("the consumer lost its position")?;
    }
    Ok(Drained {
        partition,
        watermarks,
        records,
    })
}

/// Drains every partition of `topic`.
pub async fn drain_topic(client: &Client, topic: &str) -> Result<BTreeMap<u32, Drained>> {
    let partitions = client.partition_count(topic).await?;
    let mut drained = BTreeMap::new();
    for partition in 0..partitions {
        drained.insert(partition, drain_partition(client, topic, partition).await?);
    }
    Ok(drained)
}

/// One acknowledged write: where the broker said it stored which value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub partition: u32,
    pub offset: u64,
    pub value: String,
}

/// Checks that the drained partitions hold every acknowledged record exactly once, at its
/// acknowledged offset and in order, and that they hold nothing else: offsets dense and strictly
/// increasing from 0, each partition's high watermark equal to its number of acknowledged
/// records. Meant for tests in which every write was acknowledged (no outcome unknown) and
/// nothing was deleted. Reports every violation, not only the first.
pub fn check_all_acked_exactly_once(acked: &[Acked], drained: &BTreeMap<u32, Drained>) -> Result<()> {
    let mut problems = Problems::default();
    let mut expected: BTreeMap<u32, BTreeMap<u64, &str>> = BTreeMap::new();
    for ack in acked {
        let offsets = expected.entry(ack.partition).or_default();
        if let Some(previous) = offsets.insert(ack.offset, &ack.value) {
            problems.add(format!(
                "two acks for {}/{}: {previous:?} and {:?}",
                ack.partition, ack.offset, ack.value
            ));
        }
    }
    for partition in expected.keys() {
        if !drained.contains_key(partition) {
            problems.add(format!("partition {partition} has acks but was not drained"));
        }
    }
    let mut seen_values: HashMap<&[u8], (u32, u64)> = HashMap::new();
    for (partition, drained) in drained {
        let empty = BTreeMap::new();
        let expected = expected.get(partition).unwrap_or(&empty);
        check_partition(*partition, drained, expected, &mut seen_values, &mut problems);
    }
    problems.into_result()
}

fn check_partition<'a>(
    partition: u32,
    drained: &'a Drained,
    expected: &BTreeMap<u64, &str>,
    seen_values: &mut HashMap<&'a [u8], (u32, u64)>,
    problems: &mut Problems,
) {
    let high_watermark = drained.watermarks.high_watermark;
    if drained.watermarks.log_start_offset != 0 {
        problems.add(format!(
            "partition {partition}: log start offset {} (expected 0: nothing was deleted)",
            drained.watermarks.log_start_offset
        ));
    }
    if high_watermark != expected.len() as u64 {
        problems.add(format!(
            "partition {partition}: high watermark {high_watermark}, but {} records were acknowledged",
            expected.len()
        ));
    }
    if drained.records.len() as u64 != high_watermark {
        problems.add(format!(
            "partition {partition}: read {} records below the high watermark {high_watermark}",
            drained.records.len()
        ));
    }
    let mut next_offset = 0u64;
    let mut read: BTreeMap<u64, &[u8]> = BTreeMap::new();
    for record in &drained.records {
        if record.offset != next_offset {
            problems.add(format!(
                "partition {partition}: offset {} read where {next_offset} was next (gap, reorder or duplicate)",
                record.offset
            ));
        }
        next_offset = record.offset + 1;
        let value = record.value.as_deref().unwrap_or_default();
        read.insert(record.offset, value);
        if let Some((other_partition, other_offset)) = seen_values.insert(value, (partition, record.offset)) {
            problems.add(format!(
                "duplicate: {:?} read at {other_partition}/{other_offset} and at {partition}/{}",
                String::from_utf8_lossy(value),
                record.offset
            ));
        }
    }
    for (offset, value) in expected {
        match read.get(offset) {
            None => problems.add(format!(
                "lost: {value:?} acknowledged at {partition}/{offset} was not read"
            )),
            Some(found) if *found != value.as_bytes() => problems.add(format!(
                "inconsistent: {value:?} acknowledged at {partition}/{offset}, but {:?} read there",
                String::from_utf8_lossy(found)
            )),
            Some(_) => {}
        }
    }
}

/// Violations found by a check; reported together, the first ones in full.
#[derive(Debug, Default)]
struct Problems {
    count: usize,
    shown: String,
}

impl Problems {
    const SHOWN_MAX: usize = 30;

    fn add(&mut self, problem: String) {
        self.count += 1;
        if self.count <= Self::SHOWN_MAX {
            let _ = writeln!(self.shown, "  {problem}");
        }
    }

    fn into_result(self) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        bail!(
            "{} problem(s) in what was read back (first {} shown):\n{}",
            self.count,
            self.count.min(Self::SHOWN_MAX),
            self.shown
        )
    }
}
