//! How long `PartitionLog::open` takes: after a crash (data, then a window of prefaulted pages
//! past it, as the prefault thread leaves them) and after a clean close of a log with many
//! segments. Not unit tests; run them in release (and in debug, the broker's dev build):
//! `cargo test --release -p weir-broker --lib log::tests::open_time -- --ignored --nocapture --test-threads 1`

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use super::*;
use crate::log::mapping::PREFAULT_WINDOW_MAX_BYTES;

const RUNS: usize = 5;

/// Evicts `path` from the page cache (after writing it back), as a reboot would.
fn evict(path: &Path) {
    let file = File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: plain system call on a descriptor we own.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

/// Builds a crashed log in a fresh directory: 300 records entries (65 KB in all),
/// flushed, then the prefault window past the data faulted in and the log dropped without a
/// close (what kill -9 leaves). With `cold`, the files are then written back and evicted from the
/// page cache, as after a power cut once the prefaulted (zero) pages had reached the disk.
/// Returns the time and the report of the next open.
fn crashed_open(segment_bytes_max: u64, cold: bool) -> (Duration, RecoveryReport) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max,
        ..LogConfig::default()
    };
    let (mut log, _) = open(dir.path(), config.clone());
    for i in 0..300 {
        append_records(&mut log, 1, 2, i, 0);
    }
    let batch = log.pending_flush();
    batch.run().unwrap();
    log.mark_flushed(&batch).unwrap();
    let active = log.active();
    active.map.prefault(active.len, active.len + PREFAULT_WINDOW_MAX_BYTES);
    let path = active.path.clone();
    drop(log);
    if cold {
        evict(&path);
    }
    let start = Instant::now();
    let (log, report) = open(dir.path(), config);
    let elapsed = start.elapsed();
    assert_eq!(log.last_index(), index(300));
    (elapsed, report)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn open_after_a_crash() {
    for (segment_bytes_max, cold) in [(256 << 20, false), (16 << 20, false), (256 << 20, true)] {
        let mut times = Vec::new();
        let mut report = RecoveryReport::default();
        for _ in 0..RUNS {
            let (time, last) = crashed_open(segment_bytes_max, cold);
            times.push(time);
            report = last;
        }
        let state = if cold { "cold page cache" } else { "warm page cache" };
        println!(
            "crash open, {} MiB segment, 8 MiB prefaulted, {state}: median {:8.2} ms (min {:8.2}, max {:8.2}) {report:?}",
            segment_bytes_max >> 20,
            ms(median(times.clone())),
            ms(*times.iter().min().unwrap()),
            ms(*times.iter().max().unwrap()),
        );
    }
}

/// A log of at least `segments` segments of at most 64 KiB each, closed cleanly.
fn many_segments(dir: &Path, segments: usize) -> LogConfig {
    let config = LogConfig {
        segment_bytes_max: 64 << 10,
        ..LogConfig::default()
    };
    let (mut log, _) = open(dir, config.clone());
    let mut tag = 0;
    while log.segment_count() < segments {
        let batch = records_batch(8, tag, 1000, 0);
        let entry = AppendEntry {
            index: log.last_index().next(),
            term: Term(1),
            kind: BatchKind::Records,
            data: &batch,
        };
        log.append(entry).unwrap();
        tag += 1;
    }
    log.close().unwrap();
    config
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn open_after_a_clean_close_with_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = many_segments(dir.path(), 2000);
    for cold in [false, true] {
        let mut times = Vec::new();
        let mut report = RecoveryReport::default();
        for _ in 0..RUNS {
            if cold {
                for entry in std::fs::read_dir(dir.path()).unwrap() {
                    evict(&entry.unwrap().path());
                }
            }
            let start = Instant::now();
            let (mut log, last) = open(dir.path(), config.clone());
            times.push(start.elapsed());
            assert!(last.clean_shutdown, "{last:?}");
            report = last;
            log.close().unwrap();
        }
        let state = if cold { "cold page cache" } else { "warm page cache" };
        println!(
            "clean open, {} segments of 64 KiB, {state}: median {:8.2} ms (min {:8.2}, max {:8.2}) {report:?}",
            report.segments,
            ms(median(times.clone())),
            ms(*times.iter().min().unwrap()),
            ms(*times.iter().max().unwrap()),
        );
    }
}
