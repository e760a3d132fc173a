//! Appends and reads across segments: round trips, Raft lookups, boundaries, errors.

use weir_proto::batch::{self, BatchKind, HEADER_LEN};

use super::*;
use crate::log::{LogError, LogStart};

/// 60 entries over many 4 KiB segments: every tenth a no-op, terms 1..=3.
fn filled_log(dir: &Path) -> PartitionLog {
    let (mut log, report) = open(dir, small_config(4096));
    assert_eq!(report.segments, 1);
    for i in 0..60u64 {
        let term = 1 + i / 25;
        if i % 10 == 9 {
            append_control(&mut log, term, BatchKind::Noop, b"");
        } else {
            append_records(&mut log, term, 5, i, 1_000 + i as i64 * 10);
        }
    }
    log
}

#[test]
fn append_and_read_round_trip_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled_log(dir.path());
    assert!(log.segment_count() >= 5, "only {} segments", log.segment_count());
    assert_eq!(log.last_index(), index(60));
    assert_eq!(log.next_offset(), Offset(54 * 5));
    let records = read_records(&log, 0);
    assert_eq!(records.len(), 270);
    for (expected, record) in records.iter().enumerate() {
        assert_eq!(record.offset, expected as u64);
    }
    assert_eq!(value_of(&records[0]), "0-0");
    assert_eq!(value_of(&records[269]), "58-4");

    // From every offset: the first batch holds it, whatever segment it is in.
    for from in 0..270u64 {
        let chunk = log.read(Offset(from), log.next_offset(), 1).unwrap();
        let batch = decode(&chunk.slices);
        assert_eq!(batch.len(), 5, "one whole batch from {from}");
        assert!(batch[0].offset <= from && from < chunk.next_offset.0);
    }

    // Paging with a small budget returns everything exactly once.
    let mut paged = Vec::new();
    let mut from = Offset(0);
    while from < log.next_offset() {
        let chunk = log.read(from, log.next_offset(), 1500).unwrap();
        assert!(chunk.next_offset > from);
        paged.extend(decode(&chunk.slices));
        from = chunk.next_offset;
    }
    assert_eq!(paged, records);
}

#[test]
fn entries_and_terms_across_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled_log(dir.path());
    let all = log.entries(index(1), index(61), None).unwrap();
    assert_eq!(all.len(), 60);
    let mut next_offset = 0;
    for (i, entry) in all.iter().enumerate() {
        let i = i as u64;
        assert_eq!(entry.index, index(i + 1));
        assert_eq!(entry.term, Term(1 + i / 25));
        assert_eq!(log.term(entry.index).unwrap(), entry.term);
        if i % 10 == 9 {
            assert_eq!(entry.kind, BatchKind::Noop);
            assert!(entry.data.is_empty());
        } else {
            assert_eq!(entry.kind, BatchKind::Records);
            let header = batch::validate(&entry.data, usize::MAX).unwrap();
            assert_eq!(
                (header.index, header.term, header.base_offset),
                (i + 1, 1 + i / 25, next_offset)
            );
            next_offset += 5;
        }
        assert_eq!(log.next_offset_after(entry.index).unwrap(), Offset(next_offset));
        let single = log.entries(entry.index, entry.index.next(), Some(0)).unwrap();
        assert_eq!(single, vec![entry.clone()]);
    }
    assert_eq!(log.term(index(0)).unwrap(), Term(0));
    // A byte budget stops early but never returns nothing.
    assert_eq!(log.entries(index(1), index(61), Some(1)).unwrap().len(), 1);
    let limited = log.entries(index(1), index(61), Some(2_000)).unwrap();
    assert!(limited.len() > 1 && limited.len() < 60);
    assert!(log.entries(index(7), index(7), None).unwrap().is_empty());
}

#[test]
fn lookups_at_segment_and_index_interval_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(8192));
    for i in 0..200u64 {
        append_records(&mut log, 1 + i / 70, 1, i, i as i64);
    }
    let mut boundaries = Vec::new();
    for segment in &log.segments {
        boundaries.push(segment.base_index.0);
        for entry in &segment.index.entries {
            boundaries.push(segment.base_index.0 + u64::from(entry.rel_index));
        }
    }
    assert!(log.segment_count() >= 3 && boundaries.len() > 2 * log.segment_count());
    for &at in &boundaries {
        for probe in [at.saturating_sub(1), at, at + 1] {
            if probe == 0 || probe > 200 {
                continue;
            }
            let entry = &log.entries(index(probe), index(probe + 1), None).unwrap()[0];
            assert_eq!(entry.index, index(probe));
            assert_eq!(log.term(index(probe)).unwrap(), Term(1 + (probe - 1) / 70));
            // Entry i holds exactly record i - 1.
            let chunk = log.read(Offset(probe - 1), log.next_offset(), 0).unwrap();
            let records = decode(&chunk.slices);
            assert_eq!(records[0].offset, probe - 1);
            assert_eq!(value_of(&records[0]), format!("{}-0", probe - 1));
            assert_eq!(log.next_offset_after(index(probe)).unwrap(), Offset(probe));
        }
    }
}

#[test]
fn read_respects_until_budget_and_control_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(1 << 20));
    append_records(&mut log, 1, 3, 0, 0); // offsets 0..3
    append_records(&mut log, 1, 3, 1, 0); // 3..6
    append_control(&mut log, 1, BatchKind::ConfChange, b"conf");
    append_records(&mut log, 1, 3, 2, 0); // 6..9
    let everything = log.read(Offset(0), Offset(9), usize::MAX).unwrap();
    assert_eq!(everything.slices.len(), 2, "the control entry splits the runs");
    assert_eq!(everything.next_offset, Offset(9));
    // A batch that ends after `until` is left out.
    let partial = log.read(Offset(0), Offset(5), usize::MAX).unwrap();
    assert_eq!((decode(&partial.slices).len(), partial.next_offset), (3, Offset(3)));
    // Starting inside a batch returns the whole batch.
    let inside = log.read(Offset(4), Offset(9), usize::MAX).unwrap();
    assert_eq!(decode(&inside.slices)[0].offset, 3);
    let nothing = log.read(Offset(9), Offset(100), usize::MAX).unwrap();
    assert!(nothing.slices.is_empty() && nothing.next_offset == Offset(9));
    let small_until = log.read(Offset(0), Offset(2), usize::MAX).unwrap();
    assert!(small_until.slices.is_empty() && small_until.next_offset == Offset(0));
    assert!(matches!(
        log.read(Offset(10), Offset(20), 1),
        Err(LogError::OutOfRange {
            requested: 10,
            first: 0,
            last: 9
        })
    ));
    let conf = &log.entries(index(3), index(4), None).unwrap()[0];
    assert_eq!((conf.kind, &conf.data[..]), (BatchKind::ConfChange, &b"conf"[..]));
}

#[test]
fn offset_for_timestamp_matches_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(4096));
    let stamps = [50i64, 10, 70, 70, 20, 200, 90, 300, 5, 310, 310, 400];
    for (i, &stamp) in stamps.iter().cycle().take(60).enumerate() {
        append_records(&mut log, 1, 3, i as u64, stamp + i as i64);
    }
    let records = read_records(&log, 0);
    for target in [i64::MIN, 0, 11, 55, 71, 150, 260, 300, 330, 401, 455, 462, 463, 10_000] {
        let expected = records
            .iter()
            .find(|r| r.timestamp_ms >= target)
            .map(|r| Offset(r.offset));
        assert_eq!(log.offset_for_timestamp(target).unwrap(), expected, "target {target}");
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(4096));
    append_records(&mut log, 2, 2, 0, 0);
    let batch = records_batch(1, 0, 1, 0);
    let skip = AppendEntry {
        index: index(3),
        term: Term(2),
        kind: BatchKind::Records,
        data: &batch,
    };
    assert!(
        matches!(log.append(skip), Err(LogError::NonContiguous { expected, got }) if expected == index(2) && got == index(3))
    );
    for bad in [&b"garbage"[..], &batch[..batch.len() - 1], &[0u8; 100][..]] {
        let entry = AppendEntry {
            index: index(2),
            term: Term(2),
            kind: BatchKind::Records,
            data: bad,
        };
        assert!(matches!(log.append(entry), Err(LogError::InvalidBatch(_))));
    }
    let mut damaged = batch.clone();
    damaged[100] ^= 1; // caught by the CRC check right before writing
    let entry = AppendEntry {
        index: index(2),
        term: Term(2),
        kind: BatchKind::Records,
        data: &damaged,
    };
    assert!(matches!(
        log.append(entry),
        Err(LogError::InvalidBatch(batch::BatchError::CrcMismatch { .. }))
    ));
    let mut lying = batch.clone();
    lying[40..44].copy_from_slice(&1000u32.to_le_bytes()); // record count beyond the body
    batch::stamp(&mut lying, 0, 0, 0);
    let entry = AppendEntry {
        index: index(2),
        term: Term(2),
        kind: BatchKind::Records,
        data: &lying,
    };
    assert!(matches!(log.append(entry), Err(LogError::InvalidBatch(_))));
    assert_eq!(log.last_index(), index(1));
    assert!(matches!(
        log.term(index(2)),
        Err(LogError::OutOfRange {
            requested: 2,
            first: 0,
            last: 1
        })
    ));
    assert!(matches!(
        log.entries(index(1), index(3), None),
        Err(LogError::OutOfRange { .. })
    ));
    assert!(matches!(
        log.entries(index(0), index(1), None),
        Err(LogError::Unavailable { .. })
    ));
    assert!(matches!(
        log.next_offset_after(index(5)),
        Err(LogError::OutOfRange { .. })
    ));
    assert!(matches!(
        log.read(Offset(u64::MAX), Offset(u64::MAX), 1),
        Err(LogError::OutOfRange { .. })
    ));
    assert_eq!(log.log_start(), LogStart::default());
    // A failed append changed nothing: the next one lands where expected.
    let info = append_records(&mut log, 2, 1, 1, 0);
    assert_eq!((info.base_offset, info.next_offset), (Offset(2), Offset(3)));
}

#[test]
fn clean_close_then_open_reads_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled_log(dir.path());
    let (segments, before) = (log.segment_count(), read_records(&log, 0));
    log.close().unwrap();
    let (log, report) = open(dir.path(), small_config(4096));
    assert!(report.clean_shutdown, "{report:?}");
    assert_eq!(
        (report.scanned_bytes, report.rebuilt_indexes, report.truncated_bytes),
        (0, 0, 0)
    );
    assert_eq!(report.segments, segments);
    assert!(!dir.path().join("clean_shutdown").exists(), "marker must go at open");
    assert_eq!(read_records(&log, 0), before);
    assert_eq!(log.term(index(60)).unwrap(), Term(3));
    drop(log); // a crash: the next open must not believe in a clean shutdown
    let (log, report) = open(dir.path(), small_config(4096));
    assert!(!report.clean_shutdown && report.scanned_bytes > 0);
    assert_eq!(read_records(&log, 0), before);
}

#[test]
fn flushing_moves_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(4096));
    assert!(log.pending_flush().is_empty());
    for i in 0..20 {
        append_records(&mut log, 1, 5, i, 0);
    }
    let batch = log.pending_flush();
    assert_eq!(batch.bytes(), log.size_bytes());
    batch.run().unwrap();
    log.mark_flushed(&batch).unwrap();
    assert!(log.pending_flush().is_empty());
    let active = log.active();
    assert_eq!(
        log.checkpoint,
        super::super::checkpoint::Checkpoint {
            base_index: active.base_index,
            position: active.len
        }
    );
    // A flush taken before a truncation does not mark the re-appended bytes durable.
    append_records(&mut log, 1, 5, 20, 0);
    let stale = log.pending_flush();
    log.truncate_from(index(21)).unwrap();
    append_records(&mut log, 2, 9, 21, 0);
    stale.run().unwrap();
    log.mark_flushed(&stale).unwrap();
    assert!(!log.pending_flush().is_empty());
}

#[test]
fn age_roll_and_reserve_use_a_standby() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_age_ms_max: 1_000,
        ..small_config(64 * 1024)
    };
    let (mut log, _) = open(dir.path(), config);
    assert!(!log.maybe_roll(i64::MAX).unwrap(), "an empty segment never rolls");
    append_records(&mut log, 1, 5, 0, 0);
    let now = super::super::fsutil::now_ms();
    assert!(!log.maybe_roll(now).unwrap());
    assert!(log.maybe_roll(now + 1_000).unwrap());
    assert_eq!(log.segment_count(), 2);
    let standby = dir.path().join(super::super::fsutil::STANDBY_NAME);
    log.reserve(1_000).unwrap();
    assert!(!standby.exists(), "enough room: no standby");
    log.reserve(100 * 1024).unwrap();
    assert!(standby.exists());
    while log.segment_count() == 2 {
        append_records(&mut log, 1, 50, 1, 0);
    }
    assert!(!standby.exists(), "the roll used the standby");
    assert!(log.segments[2].capacity() >= 100 * 1024);
    log.reserve(1 << 20).unwrap();
    drop(log);
    let (log, report) = open(dir.path(), small_config(64 * 1024));
    assert!(!standby.exists(), "leftover standby deleted");
    assert_eq!((report.segments, report.truncated_bytes), (3, 0));
    assert_eq!(read_records(&log, 0).len() as u64, log.next_offset().0);
}

#[test]
fn oversized_batches_get_their_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(4096));
    append_records(&mut log, 1, 1, 0, 0);
    let big = records_batch(10, 1, 2_000, 0);
    assert!(big.len() > 4096);
    log.append(AppendEntry {
        index: index(2),
        term: Term(1),
        kind: BatchKind::Records,
        data: &big,
    })
    .unwrap();
    append_records(&mut log, 1, 1, 2, 0);
    assert_eq!(log.segment_count(), 3);
    let entry = &log.entries(index(2), index(3), None).unwrap()[0];
    assert_eq!(entry.data.len(), big.len());
    assert_eq!(&entry.data[HEADER_LEN..], &big[HEADER_LEN..]);
    assert_eq!(read_records(&log, 0).len(), 12);
}
