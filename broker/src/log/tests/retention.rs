//! Retention, truncation and reset: what moves the log's ends.

use super::*;
use crate::log::{LogError, LogStart};

const SEGMENT: u64 = 4096;

/// 50 entries of 4 records, record timestamps `1000 * entry + i`.
fn timed_log(dir: &Path, config: LogConfig) -> PartitionLog {
    let (mut log, _) = open(dir, config);
    for i in 0..50u64 {
        append_records(&mut log, 1 + i / 20, 4, i, 1_000 * i as i64);
    }
    log
}

fn segment_bounds(log: &PartitionLog) -> Vec<(u64, u64, i64)> {
    log.segments
        .iter()
        .map(|segment| {
            (
                segment.base_index.0,
                segment.last_index.0,
                segment.index.max_timestamp_ms,
            )
        })
        .collect()
}

#[test]
fn retention_by_time_deletes_only_whole_expired_committed_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(10_000),
        ..small_config(SEGMENT)
    };
    let mut log = timed_log(dir.path(), config.clone());
    let bounds = segment_bounds(&log);
    assert!(bounds.len() >= 4, "{bounds:?}");
    // Nothing is old enough yet.
    assert_eq!(log.apply_retention(bounds[0].2 + 10_000, index(50)).unwrap(), 0);
    // The first two segments are expired, but only the first is fully committed.
    let now = bounds[1].2 + 10_001;
    assert_eq!(log.apply_retention(now, index(bounds[1].1 - 1)).unwrap(), 1);
    assert_eq!(log.apply_retention(now, index(50)).unwrap(), 1);
    let start = log.log_start();
    assert_eq!(start.index, index(bounds[1].1));
    assert_eq!(start.term, log.term(start.index).unwrap());
    assert_eq!(start.offset, Offset(4 * bounds[1].1));
    assert_eq!(log.first_index(), index(bounds[1].1 + 1));
    assert!(matches!(
        log.read(Offset(0), log.next_offset(), 1),
        Err(LogError::OutOfRange { .. })
    ));
    assert!(matches!(
        log.entries(index(1), index(2), None),
        Err(LogError::Unavailable { .. })
    ));
    assert!(matches!(log.term(index(1)), Err(LogError::Unavailable { .. })));
    let rest = read_records(&log, start.offset.0);
    assert_eq!(rest.len() as u64, log.next_offset().0 - start.offset.0);
    // Everything expired: every sealed segment goes, the active one stays.
    let deleted = log.apply_retention(i64::MAX, index(50)).unwrap();
    assert_eq!(deleted, bounds.len() - 3);
    assert_eq!(log.segment_count(), 1);
    assert!(log.segments[0].writable);
    assert_eq!(log.apply_retention(i64::MAX, index(50)).unwrap(), 0);
    let start = log.log_start();
    drop(log);
    let (log, _) = open(dir.path(), config);
    assert_eq!(log.log_start(), start);
    assert_eq!(log.last_index(), index(50));
    assert_eq!(read_records(&log, start.offset.0).len() as u64, 200 - start.offset.0);
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn retention_by_size_keeps_the_log_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(3 * SEGMENT),
        ..small_config(SEGMENT)
    };
    let mut log = timed_log(dir.path(), config);
    let sizes: Vec<u64> = log.segments.iter().map(|segment| segment.len).collect();
    let (mut size, mut expected) = (log.size_bytes(), 0);
    while size > 3 * SEGMENT && expected + 1 < sizes.len() {
        size -= sizes[expected];
        expected += 1;
    }
    assert!(expected > 0);
    // Uncommitted segments are kept even when over the limit.
    assert_eq!(log.apply_retention(0, index(0)).unwrap(), 0);
    assert_eq!(log.apply_retention(0, index(50)).unwrap(), expected);
    assert!(log.size_bytes() <= 3 * SEGMENT, "{} bytes left", log.size_bytes());
    assert_eq!(log.apply_retention(0, index(50)).unwrap(), 0);
}

#[test]
fn delete_segments_through_an_index_keeps_the_segment_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = timed_log(dir.path(), small_config(SEGMENT));
    let bounds = segment_bounds(&log);
    assert!(bounds.len() >= 4, "{bounds:?}");
    // Below the end of the first segment: nothing goes.
    assert_eq!(log.delete_segments_through(index(bounds[0].1 - 1)).unwrap(), 0);
    assert_eq!(log.log_start(), LogStart::default());
    // Inside the third segment: the first two go, the third (which holds the index) stays.
    assert_eq!(log.delete_segments_through(index(bounds[2].1 - 1)).unwrap(), 2);
    let start = log.log_start();
    assert_eq!(start.index, index(bounds[1].1));
    assert_eq!(start.term, log.term(start.index).unwrap());
    assert_eq!(start.offset, Offset(4 * bounds[1].1));
    assert_eq!(log.first_index(), index(bounds[2].0));
    assert!(matches!(
        log.entries(index(bounds[1].1), index(bounds[1].1 + 1), None),
        Err(LogError::Unavailable { .. })
    ));
    assert_eq!(
        read_records(&log, start.offset.0).len() as u64,
        log.next_offset().0 - start.offset.0
    );
    // Past the end: every sealed segment goes, never the active one.
    let sealed = log.segment_count() - 1;
    assert_eq!(log.delete_segments_through(index(u64::MAX)).unwrap(), sealed);
    assert_eq!(log.segment_count(), 1);
    assert!(log.active().writable);
    assert_eq!(log.delete_segments_through(index(u64::MAX)).unwrap(), 0);
    let start = log.log_start();
    drop(log);
    let (log, _) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(log.log_start(), start);
    assert_eq!(log.last_index(), index(50));
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn truncate_then_append_different_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    for i in 0..40u64 {
        append_records(&mut log, 1, 3, i, 0);
    }
    let segments = log.segment_count();
    // Into a sealed segment: the later ones go, that one becomes the active one.
    log.truncate_from(index(12)).unwrap();
    assert_eq!((log.last_index(), log.next_offset()), (index(11), Offset(33)));
    assert!(log.segment_count() < segments);
    assert!(log.active().writable && log.segments.iter().rev().skip(1).all(|s| !s.writable));
    for i in 0..30u64 {
        append_records(&mut log, 2, 1, 100 + i, 0);
    }
    let check = |log: &PartitionLog| {
        assert_eq!(log.last_index(), index(41));
        let records = read_records(log, 0);
        assert_eq!(records.len(), 33 + 30);
        assert_eq!(value_of(&records[32]), "10-2");
        assert_eq!(value_of(&records[33]), "100-0");
        assert_eq!(log.term(index(11)).unwrap(), Term(1));
        assert_eq!(log.term(index(12)).unwrap(), Term(2));
    };
    check(&log);
    // In the active segment, at a segment base, past the end, below the start.
    let active_base = log.active().base_index;
    log.truncate_from(index(41)).unwrap();
    log.truncate_from(active_base).unwrap();
    assert_eq!(log.last_index(), index(active_base.0 - 1));
    assert!(log.active().is_empty());
    log.truncate_from(index(500)).unwrap();
    assert!(matches!(log.truncate_from(index(0)), Err(LogError::Unavailable { .. })));
    while log.last_index() < index(41) {
        let tag = 100 + log.last_index().0 - 11;
        append_records(&mut log, 2, 1, tag, 0);
    }
    check(&log);
    drop(log);
    let (mut log, report) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(report.truncated_bytes, 0);
    check(&log);
    log.close().unwrap();
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert!(report.clean_shutdown);
    check(&log);
}

#[test]
fn truncate_everything_then_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    for i in 0..30u64 {
        append_records(&mut log, 1, 3, i, 0);
    }
    log.truncate_from(index(1)).unwrap();
    assert_eq!(
        (log.last_index(), log.next_offset(), log.segment_count()),
        (index(0), Offset(0), 1)
    );
    append_control(&mut log, 3, BatchKind::Noop, b"");
    append_records(&mut log, 3, 2, 7, 0);
    drop(log);
    let (log, _) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(log.last_index(), index(2));
    assert_eq!(log.term(index(1)).unwrap(), Term(3));
    assert_eq!(value_of(&read_records(&log, 0)[0]), "7-0");
}

#[test]
fn reset_continues_after_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    for i in 0..30u64 {
        append_records(&mut log, 1, 3, i, 0);
    }
    log.reserve(SEGMENT * 4).unwrap();
    let start = LogStart {
        index: index(1000),
        term: Term(9),
        offset: Offset(77_000),
    };
    log.reset(start).unwrap();
    let check = |log: &PartitionLog| {
        assert_eq!(log.log_start(), start);
        assert_eq!((log.first_index(), log.last_index()), (index(1001), index(1000)));
        assert_eq!(log.term(index(1000)).unwrap(), Term(9));
        assert_eq!(
            (log.start_offset(), log.next_offset()),
            (Offset(77_000), Offset(77_000))
        );
        assert!(matches!(
            log.entries(index(999), index(1000), None),
            Err(LogError::Unavailable { .. })
        ));
        assert!(log.entries(index(1001), index(1001), None).unwrap().is_empty());
        assert!(log.read(Offset(77_000), Offset(77_000), 10).unwrap().slices.is_empty());
    };
    check(&log);
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(log);
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    check(&log);
    let info = append_records(&mut log, 9, 2, 1, 0);
    assert_eq!((info.base_offset, log.last_index()), (Offset(77_000), index(1001)));
    // A reset without a standby recycles the active segment.
    log.reset(LogStart {
        index: index(5),
        term: Term(10),
        offset: Offset(3),
    })
    .unwrap();
    assert_eq!(log.next_offset(), Offset(3));
    append_records(&mut log, 10, 1, 2, 0);
    assert_eq!(value_of(&read_records(&log, 3)[0]), "2-0");
    log.close().unwrap();
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert!(report.clean_shutdown);
    assert_eq!((log.first_index(), log.last_index()), (index(6), index(6)));
}

#[test]
fn an_interrupted_reset_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    for i in 0..30u64 {
        append_records(&mut log, 1, 3, i, 0);
    }
    drop(log);
    let start = LogStart {
        index: index(7),
        term: Term(2),
        offset: Offset(5),
    };
    let record = super::super::checkpoint::LogStartRecord {
        start,
        reset_pending: true,
    };
    record.write(dir.path()).unwrap();
    let (log, _) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(
        (log.log_start(), log.last_index(), log.segment_count()),
        (start, index(7), 1)
    );
}
