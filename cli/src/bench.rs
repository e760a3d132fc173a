//! `weir bench produce|consume`: throughput, and for produce the latency of each record from
//! `send` to its acknowledgement.
//!
//! Bench produce queues records as fast as the producer's bounded buffer accepts them, so many
//! are in flight and batches fill. Each record's latency is measured separately, from the moment
//! the producer accepted it (time spent waiting for buffer space is not counted) to its
//! acknowledgement. MB/s counts record values (and keys) in units of 10^6 bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use weir_client::{Client, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};

use crate::args::{BenchConsumeArgs, BenchProduceArgs, Output};
use crate::output::{print_json, Table};

/// What a benchmark measured.
#[derive(Debug, Default)]
struct Report {
    kind: &'static str,
    topic: String,
    records: u64,
    bytes: u64,
    errors: u64,
    elapsed: Duration,
    /// Produce only: microseconds from send to acknowledgement.
    latency_us: Option<Histogram<u64>>,
}

impl Report {
    fn print(&self, output: Output) {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let msgs = self.records as f64 / seconds;
        let megabytes = self.bytes as f64 / seconds / 1e6;
        let quantile_ms = |q: f64| self.latency_us.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1000.0);
        let latency: Vec<(&str, Option<f64>)> = vec![
            ("p50", quantile_ms(0.50)),
            ("p99", quantile_ms(0.99)),
            ("p999", quantile_ms(0.999)),
            ("max", self.latency_us.as_ref().map(|h| h.max() as f64 / 1000.0)),
        ];
        if output == Output::Json {
            let mut value = json!({
                "bench": self.kind, "topic": self.topic, "records": self.records, "bytes": self.bytes,
                "errors": self.errors, "elapsed_s": seconds, "msgs_per_s": msgs, "mb_per_s": megabytes,
            });
            if self.latency_us.is_some() {
                let latency: serde_json::Map<String, Value> = latency
                    .iter()
                    .map(|(name, ms)| (format!("{name}_ms"), json!(ms)))
                    .collect();
                value["latency"] = Value::Object(latency);
            }
            print_json(&value);
            return;
        }
        let mut table = Table::new(&["METRIC", "VALUE"]);
        table.row(vec!["records".into(), self.records.to_string()]);
        table.row(vec!["errors".into(), self.errors.to_string()]);
        table.row(vec!["elapsed_s".into(), format!("{seconds:.3}")]);
        table.row(vec!["msgs/s".into(), format!("{msgs:.0}")]);
        table.row(vec!["MB/s".into(), format!("{megabytes:.2}")]);
        for (name, ms) in latency {
            if let Some(ms) = ms {
                table.row(vec![format!("latency {name} ms"), format!("{ms:.3}")]);
            }
        }
        print!("{}", table.render());
    }
}

pub async fn produce(client: &Client, output: Output, args: BenchProduceArgs) -> Result<()> {
    let partitions = if args.partitions_from_topic {
        client.partition_count(&args.topic).await?
    } else {
        1
    };
    let config = ProducerConfig::default()
        .acks(args.acks.into())
        .linger_ms(args.linger_ms)
        .batch_bytes_max(args.batch_bytes_max)
        .buffer_bytes_max(args.buffer_bytes_max.max(args.batch_bytes_max))
        .idempotence(!args.no_idempotence);
    let producer = client.producer(config)?;
    let value = Bytes::from(vec![b'x'; args.record_bytes]);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("latency histogram")?;
    let mut in_flight = FuturesUnordered::new();
    let mut report = Report {
        kind: "produce",
        topic: args.topic.clone(),
        ..Report::default()
    };
    let mut first_error = None;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.records || !in_flight.is_empty() {
        tokio::select! {
            queued = producer.enqueue(
                ProducerRecord::new(args.topic.clone())
                    .with_partition((sent % u64::from(partitions)) as u32)
                    .with_value(value.clone()),
            ), if sent < args.records && first_error.is_none() => {
                let begun = Instant::now();
                match queued {
                    Ok(delivery) => {
                        sent += 1;
                        in_flight.push(async move { (delivery.await, begun) });
                    }
                    Err(error) => {
                        report.errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
            }
            Some((result, begun)) = in_flight.next() => match result {
                Ok(_) => {
                    let micros = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(micros.max(1));
                    report.records += 1;
                    report.bytes += args.record_bytes as u64;
                }
                Err(error) => {
                    report.errors += 1;
                    first_error.get_or_insert(error);
                }
            },
            else => break,
        }
    }
    report.elapsed = started.elapsed();
    report.latency_us = Some(histogram);
    report.print(output);
    if let Some(error) = first_error {
        bail!("{} records failed; first error: {error}", report.errors);
    }
    Ok(())
}

pub async fn consume(client: &Client, output: Output, args: BenchConsumeArgs) -> Result<()> {
    let mut consumer = client.consumer(ConsumerConfig::default());
    let partitions = consumer.assign_all(&args.topic).await?;
    consumer.seek_all(SeekTo::Beginning).await?;
    let mut ends = HashMap::new();
    let mut available = 0u64;
    for &partition in &partitions {
        let watermarks = consumer.watermarks(&args.topic, partition).await?;
        available += watermarks.high_watermark.saturating_sub(watermarks.log_start_offset);
        ends.insert(partition, watermarks.high_watermark);
    }
    let target = args.records.map_or(available, |records| records.min(available));
    if target == 0 {
        bail!("topic {:?} has no records to read", args.topic);
    }
    let mut report = Report {
        kind: "consume",
        topic: args.topic.clone(),
        ..Report::default()
    };
    let started = Instant::now();
    while report.records < target {
        for record in consumer.poll().await? {
            if record.offset >= ends[&record.partition] || report.records >= target {
                continue;
            }
            report.records += 1;
            report.bytes += (record.value.map_or(0, |v| v.len()) + record.key.map_or(0, |k| k.len())) as u64;
        }
    }
    report.elapsed = started.elapsed();
    report.print(output);
    Ok(())
}
