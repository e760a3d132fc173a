//! Every record the broker acknowledged survives a kill -9 that comes right after the last
//! acknowledgement. After a restart on the same data directory each partition holds exactly the
//! acknowledged records, once each, at their acknowledged offsets, in order, and nothing else:
//! its high watermark is the number of records acknowledged in it.
//!
//! 100,000 records go to a one-partition topic and 100,000 to a four-partition topic (keyed),
//! through one producer with every send in flight at once; `WEIR_TESTS_KILL9_RECORDS` changes
//! the count per topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use weir_client::{DeliveryFuture, ProducerConfig, ProducerRecord, TopicConfig};
use weir_tests::records::{check_all_acked_exactly_once, drain_topic, Acked};
use weir_tests::wait::within;
use weir_tests::BrokerProcess;

const RECORDS_PER_TOPIC_DEFAULT: usize = 100_000;
/// Upper bound on producing and acknowledging every record.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound on reading a topic back after the restart.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// (topic, partitions, value prefix, keyed)
const TOPICS: [(&str, u32, &str, bool); 2] = [("single", 1, "s", false), ("spread", 4, "k", true)];

fn records_per_topic() -> Result<usize> {
    match std::env::var("WEIR_TESTS_KILL9_RECORDS") {
        Ok(text) => text.parse().context("WEIR_TESTS_KILL9_RECORDS is not a count"),
        Err(_) => Ok(RECORDS_PER_TOPIC_DEFAULT),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_acked_produce_keeps_every_record() -> Result<()> {
    let count = records_per_topic()?;
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path().join("data"))?;
    let client = broker.client()?;
    for (topic, partitions, _, _) in TOPICS {
        client
            .admin()
            .create_topic(topic, partitions, 1, TopicConfig::default())
            .await
            .with_context(|| format!("creating {topic}"))?;
    }

    let started = Instant::now();
    let acked = within("producing every record", PRODUCE_TIMEOUT, produce_all(&broker, count)).await??;
    // Right after the last acknowledgement: nothing gets a chance to flush or close.
    broker.kill9()?;
    let produced_in = started.elapsed();
    eprintln!(
        "acknowledged {} records in {produced_in:.2?} ({:.0} records/s)",
        2 * count,
        (2 * count) as f64 / produced_in.as_secs_f64()
    );

    let restarted = Instant::now();
    broker.restart()?;
    let client = broker.client()?;
    for (topic, partitions, _, _) in TOPICS {
        let drained = within(&format!("draining {topic}"), DRAIN_TIMEOUT, drain_topic(&client, topic)).await??;
        ensure!(
            drained.len() == partitions as usize,
            "{topic} has {} partitions",
            drained.len()
        );
        check_all_acked_exactly_once(&acked[topic], &drained).with_context(|| format!("topic {topic}"))?;
        if partitions > 1 {
            let empty: Vec<u32> = (0..partitions)
                .filter(|partition| drained[partition].records.is_empty())
                .collect();
            ensure!(
                empty.is_empty(),
                "{topic}: keys spread to no record in partitions {empty:?}"
            );
        }
    }
    eprintln!("restart and read-back took {:.2?}", restarted.elapsed());
    check_recovery_cut_nothing_durable(&broker);
    Ok(())
}

/// The broker logs a recovery report per log it opens (`opened log ... RecoveryReport {..}`);
/// after a kill -9 the recovery may cut a torn tail, but never bytes that were flushed
/// (`truncated_durable_bytes`), since every acknowledged record was flushed.
fn check_recovery_cut_nothing_durable(broker: &BrokerProcess) {
    let log = broker.current_log();
    for line in log.lines().filter(|line| line.contains("opened log")) {
        eprintln!("{}", line.find("RecoveryReport").map_or(line, |at| &line[at..]));
        assert!(
            !line.contains("truncated_durable_bytes") || line.contains("truncated_durable_bytes: 0"),
            "recovery cut flushed data: {line}"
        );
    }
}

/// Enqueues every record of both topics (the producer batches them per partition and keeps them
/// all in flight), then collects the acknowledgements. Each partition's acknowledged offsets
/// must grow in the order its records were enqueued.
async fn produce_all(broker: &BrokerProcess, count: usize) -> Result<BTreeMap<&'static str, Vec<Acked>>> {
    let client = broker.client()?;
    let producer = client.producer(ProducerConfig::default())?;
    let mut pending: Vec<(&'static str, String, DeliveryFuture)> = Vec::with_capacity(2 * count);
    for index in 0..count {
        for (topic, _, prefix, keyed) in TOPICS {
            let value = format!("{prefix}-{index:06}");
            let mut record = ProducerRecord::new(topic).with_value(value.clone());
            if keyed {
                record = record.with_key(format!("key-{}", index % 1000));
            }
            let delivery = producer
                .enqueue(record)
                .await
                .with_context(|| format!("enqueueing {value}"))?;
            pending.push((topic, value, delivery));
        }
    }
    let mut acked: BTreeMap<&'static str, Vec<Acked>> = BTreeMap::new();
    let mut last_offsets: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for (topic, value, delivery) in pending {
        let metadata = delivery.await.with_context(|| format!("sending {value} to {topic}"))?;
        if let Some(last) = last_offsets.insert((topic, metadata.partition), metadata.offset) {
            ensure!(
                metadata.offset > last,
                "{value} acknowledged at {topic}/{}/{} after an earlier record at offset {last}",
                metadata.partition,
                metadata.offset
            );
        }
        acked.entry(topic).or_default().push(Acked {
            partition: metadata.partition,
            offset: metadata.offset,
            value,
        });
    }
    Ok(acked)
}
