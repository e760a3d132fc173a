//! Tests of the storage layer, one file per behaviour; shared helpers here.

mod allocation;
mod basic;
mod bench;
mod concurrency;
mod disk_full;
mod golden;
mod model;
mod open_time;
mod recovery;
mod retention;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use weir_proto::batch::{BatchBuilder, BatchReader, Record};

use super::{AppendEntry, AppendInfo, BatchKind, LogConfig, PartitionLog, RecoveryReport};
use crate::types::{Offset, RaftIndex, Term};

/// A config with small segments and a dense index, so that tests cross boundaries often.
pub(super) fn small_config(segment_bytes_max: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

pub(super) fn open(dir: &Path, config: LogConfig) -> (PartitionLog, RecoveryReport) {
    PartitionLog::open(dir, config).expect("open")
}

/// A records batch of `count` records with values `"{tag}-{i}"` padded to `value_len` bytes and
/// timestamps `timestamp_ms + i`.
pub(super) fn records_batch(count: usize, tag: u64, value_len: usize, timestamp_ms: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let mut value = format!("{tag}-{i}").into_bytes();
        value.resize(value_len.max(value.len()), b'.');
        let key = format!("k{i}");
        builder
            .push(timestamp_ms + i as i64, Some(key.as_bytes()), Some(&value), &[])
            .expect("push record");
    }
    builder.finish()
}

/// Appends a records entry at the next index.
pub(super) fn append_records(
    log: &mut PartitionLog,
    term: u64,
    count: usize,
    tag: u64,
    timestamp_ms: i64,
) -> AppendInfo {
    let batch = records_batch(count, tag, 40, timestamp_ms);
    let index = log.last_index().next();
    log.append(AppendEntry {
        index,
        term: Term(term),
        kind: BatchKind::Records,
        data: &batch,
    })
    .expect("append records")
}

/// Appends a control entry at the next index.
pub(super) fn append_control(log: &mut PartitionLog, term: u64, kind: BatchKind, payload: &[u8]) -> AppendInfo {
    let index = log.last_index().next();
    log.append(AppendEntry {
        index,
        term: Term(term),
        kind,
        data: payload,
    })
    .expect("append control")
}

/// Every record from `from` to the end, decoded (and CRC- and framing-checked again).
pub(super) fn read_records(log: &PartitionLog, from: u64) -> Vec<Record> {
    let chunk = log.read(Offset(from), log.next_offset(), usize::MAX).expect("read");
    decode(&chunk.slices)
}

pub(super) fn decode(slices: &[Bytes]) -> Vec<Record> {
    let mut records = Vec::new();
    for slice in slices {
        for batch in BatchReader::new(slice.clone()) {
            records.extend(batch.expect("valid batch").records().expect("records"));
        }
    }
    records
}

pub(super) fn value_of(record: &Record) -> String {
    let value = record.value.as_deref().unwrap_or_default();
    String::from_utf8_lossy(value).trim_end_matches('.').to_string()
}

/// Paths of the segment files of `dir`, sorted.
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

pub(super) fn index(value: u64) -> RaftIndex {
    RaftIndex(value)
}
