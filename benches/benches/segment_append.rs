//! Segment append throughput: 1 KiB-record batches of 16 KiB and 1 MiB appended to a partition
//! log (page cache only: no flush), next to a plain memcpy of the same bytes in the same run.
//!
//! `cargo bench -p weir-benches --bench segment_append`
//!
//! Each append goes the way the raft driver drives it: `reserve` (which preallocates the
//! standby segment ahead of a roll) then `append` (CRC check, copy into the mapped segment,
//! stamp, index). The log lives in the system temp dir (WEIR_BENCH_DIR overrides it): a
//! disk-backed file system whose page cache absorbs the writes, as in production without the
//! flush. tmpfs is avoided on purpose: it allocates and zeroes every page at fallocate time,
//! which measures tmpfs, not the log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_broker::log::batch::{BatchBuilder, BatchKind};
use weir_broker::log::{AppendEntry, LogConfig, PartitionLog};
use weir_broker::types::{RaftIndex, Term};

/// Bytes appended to one log before it is dropped and a fresh one opened (untimed).
const CHUNK_BYTES: usize = 512 << 20;
const SEGMENT_BYTES: u64 = 128 << 20;

fn batch_of(bytes: usize) -> Vec<u8> {
    let value = vec![b'x'; 1024];
    let mut builder = BatchBuilder::with_capacity(bytes + 4096);
    while builder.len_bytes() + BatchBuilder::record_size(None, Some(&value), &[]) <= bytes {
        if builder.push(1_700_000_000_000, None, Some(&value), &[]).is_err() {
            break;
        }
    }
    builder.finish()
}

fn scratch_root() -> PathBuf {
    std::env::var_os("WEIR_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// Appends `iters` copies of `batch`, timing only the appends.
fn time_appends(batch: &[u8], iters: u64) -> Duration {
    let per_chunk = (CHUNK_BYTES / batch.len()).max(1) as u64;
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let count = per_chunk.min(iters - done);
        let dir = tempfile::tempdir_in(scratch_root()).expect("bench temp dir");
        let config = LogConfig {
            segment_bytes_max: SEGMENT_BYTES,
            ..LogConfig::default()
        };
        let (mut log, _) = PartitionLog::open(dir.path(), config).expect("open log");
        let start = Instant::now();
        for index in 1..=count {
            let entry = AppendEntry {
                index: RaftIndex(index),
                term: Term(1),
                kind: BatchKind::Records,
                data: batch,
            };
            log.reserve(batch.len() as u64).expect("reserve");
            log.append(entry).expect("append");
        }
        total += start.elapsed();
        drop(log);
        done += count;
    }
    total
}

/// Copies `iters` copies of `batch` into a pre-touched buffer, as the ceiling.
fn time_memcpy(batch: &[u8], destination: &mut [u8], iters: u64) -> Duration {
    let slots = destination.len() / batch.len();
    let start = Instant::now();
    for i in 0..iters as usize {
        let at = (i % slots) * batch.len();
        destination[at..at + batch.len()].copy_from_slice(batch);
    }
    std::hint::black_box(&destination);
    start.elapsed()
}

fn segment_append(c: &mut Criterion) {
    let mut destination = vec![1u8; CHUNK_BYTES];
    for (name, bytes) in [("16KiB", 16 << 10), ("1MiB", 1 << 20)] {
        let batch = batch_of(bytes);
        let mut group = c.benchmark_group(format!("append_{name}_batches"));
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.measurement_time(Duration::from_secs(4));
        group.sample_size(20);
        group.bench_function("weir_segment_append", |b| {
            b.iter_custom(|iters| time_appends(&batch, iters))
        });
        group.bench_function("memcpy", |b| {
            b.iter_custom(|iters| time_memcpy(&batch, &mut destination, iters))
        });
        group.finish();
    }
}

criterion_group!(benches, segment_append);
criterion_main!(benches);
