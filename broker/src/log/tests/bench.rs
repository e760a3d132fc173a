//! Append throughput against a plain memcpy of the same bytes (the target: at least half of it).
//! Not a unit test; run it in release:
//! `cargo test --release -p weir-broker --lib log::tests::bench -- --ignored --nocapture`

use std::time::{Duration, Instant};

use weir_proto::batch::BatchBuilder;

use super::*;

const TOTAL_BYTES: usize = 256 << 20;

/// A batch of about `batch_bytes` made of 1 KiB records.
fn batch_of(batch_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(batch_bytes);
    let value = vec![0x5a; 1024 - 30];
    while builder.len_bytes() + 1024 <= batch_bytes {
        builder.push(0, Some(b"key"), Some(&value), &[]).unwrap();
    }
    builder.finish()
}

fn gigabytes_per_second(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

/// Best of three memcpys of the batch, over and over, into a resident buffer.
fn memcpy_rate(batch: &[u8]) -> f64 {
    let mut target = vec![1u8; TOTAL_BYTES];
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        for chunk in target.chunks_exact_mut(batch.len()) {
            chunk.copy_from_slice(batch);
        }
        std::hint::black_box(&target);
        best = best.max(gigabytes_per_second(TOTAL_BYTES, start.elapsed()));
    }
    best
}

/// Appends TOTAL_BYTES of `batch` (a `reserve` before each append, as the raft driver does).
/// With `resident`, the whole segment is faulted in first (untimed), so only the append's own
/// work is measured; otherwise first-touch page population is included. Returns GB/s.
fn append_rate(batch: &[u8], resident: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 2 * TOTAL_BYTES as u64,
        ..LogConfig::default()
    };
    let (mut log, _) = open(dir.path(), config);
    if resident {
        let step = log.allocation_step();
        let active = log.active_mut();
        active.allocate_to(active.capacity(), step).unwrap();
        active.map.prefault(0, active.map.len());
    }
    let count = TOTAL_BYTES / batch.len();
    let start = Instant::now();
    for index in 1..=count as u64 {
        log.reserve(batch.len() as u64).unwrap();
        let entry = AppendEntry {
            index: RaftIndex(index),
            term: Term(1),
            kind: BatchKind::Records,
            data: batch,
        };
        log.append(entry).unwrap();
    }
    gigabytes_per_second(count * batch.len(), start.elapsed())
}

/// How fast the kernel populates fresh pages of a preallocated file mapping (MADV_POPULATE_WRITE):
/// the ceiling of any end-to-end append rate into new segment pages.
fn population_rate() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: TOTAL_BYTES as u64,
        ..LogConfig::default()
    };
    let (mut log, _) = open(dir.path(), config);
    let step = log.allocation_step();
    let active = log.active_mut();
    active.allocate_to(active.capacity(), step).unwrap();
    let map = &active.map;
    let start = Instant::now();
    map.prefault(0, map.len());
    gigabytes_per_second(TOTAL_BYTES, start.elapsed())
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn append_throughput_against_memcpy() {
    // The first page-cache-hungry run of a process is slow (the kernel finds fresh pages); warm up.
    append_rate(&batch_of(1 << 20), false);
    println!("page population ceiling: {:5.2} GB/s", population_rate());
    for batch_bytes in [16 << 10, 1 << 20] {
        let batch = batch_of(batch_bytes);
        let memcpy = memcpy_rate(&batch);
        let resident = append_rate(&batch, true);
        let fresh = append_rate(&batch, false);
        println!(
            "batch {:>7} B of 1 KiB records: memcpy {memcpy:5.2} GB/s | reserve+append, resident pages \
             {resident:5.2} GB/s ({:3.0}%) | reserve+append, fresh pages {fresh:5.2} GB/s ({:3.0}%)",
            batch.len(),
            100.0 * resident / memcpy,
            100.0 * fresh / memcpy,
        );
    }
}
