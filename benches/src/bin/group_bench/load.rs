//! The steady producer of the rebalance scenarios, and one-record-at-a-time produce latency
//! (the comparison for commit latency: both are one acks=all write to one RF=3 partition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_client::{Acks, Client, ClientConfig, ProducerConfig, ProducerRecord};

use super::{commands, emit, fail, now_ns, quantile};

/// Bytes of each record's value.
const VALUE_BYTES: usize = 100;
/// The producer sends a slice of its rate every tick.
const TICK: Duration = Duration::from_millis(10);

/// Produces `rate` records per second, spread round-robin over every partition of `topic`
/// (client defaults: acks=all, 5 ms linger), until stdin closes (the driver is gone) or it is
/// killed. Prints `produced T OK ERRORS` every 10 s to stderr.
pub async fn produce(bootstrap: &str, topic: &str, rate: u64) {
    let client = ClientConfig::new(bootstrap)
        .and_then(Client::new)
        .unwrap_or_else(|e| fail("client", e));
    let partitions = client
        .partition_count(topic)
        .await
        .unwrap_or_else(|e| fail("metadata", e));
    let producer = client
        .producer(ProducerConfig::default())
        .unwrap_or_else(|e| fail("producer", e));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let value = vec![b'x'; VALUE_BYTES];
    let per_tick = rate as f64 * TICK.as_secs_f64();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let mut sent = 0u64;
    let mut reported = Instant::now();
    let mut commands = commands();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            command = commands.recv() => if command.is_none() {
                // Not a return: the runtime would wait for the blocking read of stdin.
                std::process::exit(0);
            },
        }
        // As many as the rate allows by now: a late tick catches up.
        let due = (started.elapsed().as_secs_f64() / TICK.as_secs_f64() * per_tick) as u64;
        while sent < due {
            let record = ProducerRecord::new(topic)
                .with_partition((sent % u64::from(partitions)) as u32)
                .with_value(value.clone());
            sent += 1;
            match producer.enqueue(record).await {
                Ok(delivery) => {
                    let (acknowledged, failed) = (acknowledged.clone(), failed.clone());
                    tokio::spawn(async move {
                        let counter = if delivery.await.is_ok() { acknowledged } else { failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    });
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = Instant::now();
            eprintln!(
                "produced {} {} {}",
                now_ns(),
                acknowledged.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            );
        }
    }
}

/// `runs` times: sends one record at a time to partition 0 of `topic` for `seconds` (acks=all,
/// no linger) and prints `produce-sync RUN COUNT ERRORS SECONDS PER_S P50_US P99_US`.
pub async fn produce_sync(bootstrap: &str, topic: &str, runs: u32, seconds: u64) {
    let client = ClientConfig::new(bootstrap)
        .and_then(Client::new)
        .unwrap_or_else(|e| fail("client", e));
    let producer = client
        .producer(ProducerConfig::default().acks(Acks::All).linger_ms(0))
        .unwrap_or_else(|e| fail("producer", e));
    let value = vec![b'x'; VALUE_BYTES];
    // Warm-up: connections, metadata.
    for _ in 0..100 {
        let record = ProducerRecord::new(topic).with_partition(0).with_value(value.clone());
        producer.send(record).await.unwrap_or_else(|e| fail("produce", e));
    }
    for run in 1..=runs {
        let mut latencies_us = Vec::new();
        let mut errors = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            let record = ProducerRecord::new(topic).with_partition(0).with_value(value.clone());
            let sent = Instant::now();
            match producer.send(record).await {
                Ok(_) => latencies_us.push(sent.elapsed().as_micros() as u64),
                Err(_) => errors += 1,
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        emit(&format!(
            "produce-sync {run} {} {errors} {elapsed:.3} {:.1} {} {}",
            latencies_us.len(),
            latencies_us.len() as f64 / elapsed,
            quantile(&latencies_us, 0.5),
            quantile(&latencies_us, 0.99)
        ));
    }
}
