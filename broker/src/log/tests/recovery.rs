//! Recovery: torn tails, corruption (never truncated, never served), index rebuilds, leftovers.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};

use super::*;
use crate::log::mapping::PREFAULT_WINDOW_MAX_BYTES;
use crate::log::LogError;

const SEGMENT: u64 = 8192;

/// A log of `count` records entries (2 records each) left as after a crash (no close, no flush).
fn crashed_log(dir: &Path, count: u64) -> Vec<(u64, u64)> {
    let (mut log, _) = open(dir, small_config(SEGMENT));
    let mut positions = Vec::new();
    for i in 0..count {
        append_records(&mut log, 1, 2, i, i as i64);
        let active = log.active();
        positions.push((active.base_index.0, active.last_position));
    }
    positions
}

fn write_at(path: &Path, position: u64, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(position)).unwrap();
    file.write_all(bytes).unwrap();
}

fn flip(path: &Path, position: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[position as usize] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

/// The log holds entries 1..=last with their original contents and takes new appends.
fn assert_intact_and_writable(dir: &Path, last: u64) {
    let (mut log, report) = open(dir, small_config(SEGMENT));
    assert_eq!(report.truncated_bytes, 0, "second open finds nothing to cut");
    assert_eq!(log.last_index(), index(last));
    let records = read_records(&log, 0);
    assert_eq!(records.len() as u64, 2 * last);
    for (i, pair) in records.chunks(2).enumerate() {
        assert_eq!(value_of(&pair[0]), format!("{i}-0"));
    }
    append_records(&mut log, 2, 2, 999, 0);
    assert_eq!(log.last_index(), index(last + 1));
    assert_eq!(value_of(read_records(&log, 2 * last).first().unwrap()), "999-0");
}

#[test]
fn torn_tail_cut_in_the_middle_of_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let positions = crashed_log(dir.path(), 40);
    let (base, last_position) = positions[39];
    let path = super::super::fsutil::segment_path(dir.path(), index(base));
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(last_position + 50).unwrap();
    drop(file);
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    // The cut batch's non-zero bytes (its header has zero runs, so at most the 50 kept).
    assert!(
        report.truncated_bytes > 40 && report.truncated_bytes <= 50,
        "{report:?}"
    );
    assert_eq!(log.last_index(), index(39));
    drop(log);
    assert_intact_and_writable(dir.path(), 39);
}

#[test]
fn torn_tail_garbage_after_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let positions = crashed_log(dir.path(), 40);
    let (base, _) = positions[39];
    let path = super::super::fsutil::segment_path(dir.path(), index(base));
    let (log, _) = open(dir.path(), small_config(SEGMENT));
    let tail = log.active().len;
    drop(log);
    write_at(&path, tail, b"WEIR\x01\x02\x03 this is not a batch");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[0xAB; 300]).unwrap();
    drop(file);
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert!(report.truncated_bytes > 300, "{report:?}");
    assert_eq!(log.last_index(), index(40));
    drop(log);
    assert_intact_and_writable(dir.path(), 40);
}

#[test]
fn torn_tail_below_the_checkpoint_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    // Past the first segment, so that the checkpoint moves at once (not throttled).
    for i in 0..40 {
        append_records(&mut log, 1, 2, i, 0);
    }
    assert!(log.segment_count() > 1);
    let batch = log.pending_flush();
    batch.run().unwrap();
    log.mark_flushed(&batch).unwrap();
    let (path, last_position) = (log.active().path.clone(), log.active().last_position);
    drop(log);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(last_position + 10).unwrap();
    drop(file);
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(log.last_index(), index(39));
    assert!(report.truncated_durable_bytes > 0, "{report:?}");
    drop(log);
    assert_intact_and_writable(dir.path(), 39);
}

#[test]
fn corruption_in_the_middle_of_the_active_segment_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let positions = crashed_log(dir.path(), 40);
    let (base, position) = positions[37];
    assert_eq!(positions[39].0, base, "entries 38..=40 share the active segment");
    let path = super::super::fsutil::segment_path(dir.path(), index(base));
    flip(&path, position + 100);
    let before = fs::read(&path).unwrap();
    match PartitionLog::open(dir.path(), small_config(SEGMENT)) {
        Err(LogError::Corrupt {
            path: at,
            position: bad,
            ..
        }) => assert_eq!((at, bad), (path.clone(), position)),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, report)| report)),
    }
    assert_eq!(fs::read(&path).unwrap(), before, "nothing truncated");
}

#[test]
fn scrub_finds_a_flipped_bit_in_a_sealed_segment_and_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let positions = crashed_log(dir.path(), 40);
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    let mut cursor = crate::log::ScrubCursor::default();
    let mut checked = 0;
    loop {
        let step = log.scrub(&mut cursor, 100).expect("an intact log scrubs clean");
        checked += step.checked_bytes;
        if step.wrapped {
            break;
        }
    }
    assert!(checked > 0);
    log.close().unwrap();
    let (_, position) = positions[3];
    let path = super::super::fsutil::segment_path(dir.path(), index(1));
    flip(&path, position + 90);
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    let mut cursor = crate::log::ScrubCursor::default();
    let found = loop {
        match log.scrub(&mut cursor, 100) {
            Ok(step) => assert!(!step.wrapped, "the scrub went past the damage"),
            Err(corruption) => break corruption,
        }
    };
    assert_eq!(found.from_index, index(4));
    assert!(found.error.is_corrupt());
    assert_eq!(log.first_corrupt_entry(&path).map(|c| c.from_index), Some(index(4)));
    // A repair cuts the log there: what is left scrubs clean and the damage is gone.
    log.truncate_from(index(4)).unwrap();
    assert_eq!(log.last_index(), index(3));
    let mut cursor = crate::log::ScrubCursor::default();
    assert!(log.scrub(&mut cursor, u64::MAX).is_ok());
    assert!(log.first_corrupt_entry(&path).is_none());
}

#[test]
fn corruption_in_a_sealed_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let positions = crashed_log(dir.path(), 40);
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    log.close().unwrap();
    let (first_base, position) = positions[3];
    assert_eq!(first_base, 1);
    let path = super::super::fsutil::segment_path(dir.path(), index(1));
    flip(&path, position + 90);
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert!(report.clean_shutdown, "index files are trusted: {report:?}");
    let err = log.read(Offset(0), log.next_offset(), usize::MAX).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { path: at, position: bad, .. } if *at == path && *bad == position),
        "{err}"
    );
    assert!(err.is_corrupt());
    // Reading up to the damaged batch works; reading it or across it fails.
    let before = log.read(Offset(0), Offset(6), usize::MAX).unwrap();
    assert_eq!(decode(&before.slices).len(), 6);
    assert!(log.read(Offset(6), Offset(8), usize::MAX).is_err());
    assert!(log.entries(index(4), index(5), None).unwrap_err().is_corrupt());
    assert!(log.entries(index(1), index(4), None).is_ok());
    let later = positions.iter().position(|(base, _)| *base != 1).unwrap() as u64;
    assert!(log.read(Offset(2 * later), log.next_offset(), usize::MAX).is_ok());
    // Without the marker, a sealed segment below the checkpoint is still not truncated.
    drop(log);
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.last_index(), index(40));
}

#[test]
fn damaged_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    crashed_log(dir.path(), 60);
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    let expected = read_records(&log, 0);
    let stamp = log.offset_for_timestamp(30).unwrap();
    log.close().unwrap();
    let first = super::super::fsutil::index_path(dir.path(), index(1));
    flip(&first, 20);
    let files = segment_files(dir.path());
    let second_base: u64 = files[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    fs::remove_file(super::super::fsutil::time_index_path(dir.path(), index(second_base))).unwrap();
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(report.rebuilt_indexes, 2, "{report:?}");
    assert!(!report.clean_shutdown);
    assert_eq!(read_records(&log, 0), expected);
    assert_eq!(log.offset_for_timestamp(30).unwrap(), stamp);
    for i in 1..=60 {
        assert_eq!(log.term(index(i)).unwrap(), Term(1));
    }
}

#[test]
fn leftover_files_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    crashed_log(dir.path(), 5);
    for name in [
        "standby.log.tmp",
        "checkpoint.tmp",
        "00000000000000000999.index",
        "00000000000000000999.timeindex",
    ] {
        fs::write(dir.path().join(name), b"junk").unwrap();
    }
    fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
    let (log, _) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(log.last_index(), index(5));
    for name in [
        "standby.log.tmp",
        "checkpoint.tmp",
        "00000000000000000999.index",
        "00000000000000000999.timeindex",
    ] {
        assert!(!dir.path().join(name).exists(), "{name} left behind");
    }
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn damage_in_an_unflushed_sealed_segment() {
    // Rolled segments that were never flushed are checked in full. A damaged body followed by
    // the next entry (first in the next file) is corruption; a damaged header that nothing valid
    // follows is a torn tail: the log ends there and the later, unflushed segments go.
    let dir = tempfile::tempdir().unwrap();
    let positions = crashed_log(dir.path(), 100);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let second_base: u64 = files[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let last_at = positions.iter().rposition(|(base, _)| *base == second_base).unwrap();
    let last_position = positions[last_at].1;
    let pristine = fs::read(&files[1]).unwrap();
    flip(&files[1], last_position + 100);
    assert!(PartitionLog::open(dir.path(), small_config(SEGMENT))
        .unwrap_err()
        .is_corrupt());
    fs::write(&files[1], &pristine).unwrap();
    write_at(&files[1], last_position, &[0xEE; 8]);
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert_eq!(log.last_index(), index(last_at as u64));
    assert_eq!(log.segment_count(), 2);
    assert!(report.truncated_bytes > 0);
    drop(log);
    assert_intact_and_writable(dir.path(), last_at as u64);
}

#[test]
fn a_clean_marker_does_not_hide_garbage_after_the_data() {
    let dir = tempfile::tempdir().unwrap();
    crashed_log(dir.path(), 30);
    let (mut log, _) = open(dir.path(), small_config(SEGMENT));
    let (path, tail) = (log.active().path.clone(), log.active().len);
    log.close().unwrap();
    write_at(&path, tail + 10, b"leftover bytes");
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert!(!report.clean_shutdown, "{report:?}");
    assert_eq!(report.truncated_bytes, 24);
    assert_eq!(log.last_index(), index(30));
    drop(log);
    assert_intact_and_writable(dir.path(), 30);
}

/// A segment with room for a prefault window and more.
const BIG_SEGMENT: u64 = 64 << 20;

/// A crashed log of 40 entries in one segment of `segment_bytes_max`, with the prefault window
/// past the data faulted in (the pages the prefault thread leaves behind a kill -9: cached, so
/// the file system reports them as data). Returns the segment path, the data length and the
/// position of each entry.
fn crashed_prefaulted_log(dir: &Path, segment_bytes_max: u64) -> (PathBuf, u64, Vec<u64>) {
    let (mut log, _) = open(dir, small_config(segment_bytes_max));
    let mut positions = Vec::new();
    for i in 0..40 {
        append_records(&mut log, 1, 2, i, i as i64);
        positions.push(log.active().last_position);
    }
    let active = log.active();
    active.map.prefault(active.len, active.len + PREFAULT_WINDOW_MAX_BYTES);
    (active.path.clone(), active.len, positions)
}

fn read_range(path: &Path, start: u64, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut file = fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(start)).unwrap();
    let mut bytes = vec![0; len];
    file.read_exact(&mut bytes).unwrap();
    bytes
}

/// Offsets where the file system reports data and the next hole: `(first data at or after
/// from, the hole after it)`, `None` when only holes follow.
fn data_extent(path: &Path, from: u64) -> Option<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    let file = fs::File::open(path).unwrap();
    // SAFETY: plain system calls on a descriptor we own.
    let start = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        return None;
    }
    // SAFETY: as above.
    let stop = unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_HOLE) };
    Some((start as u64, stop as u64))
}

#[test]
fn garbage_in_a_prefaulted_window_is_cut_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tail, _) = crashed_prefaulted_log(dir.path(), BIG_SEGMENT);
    // A torn batch right after the data, stray bytes inside the prefaulted window and far
    // past it (in the preallocated, never-touched part: a region of its own).
    write_at(&path, tail, b"WEIR\x01\x02\x03 this is not a batch");
    write_at(&path, tail + (5 << 20) + 3, &[0xAB; 100]);
    let far = tail + PREFAULT_WINDOW_MAX_BYTES + (20 << 20);
    write_at(&path, far, b"far away");
    let (log, report) = open(dir.path(), small_config(BIG_SEGMENT));
    assert_eq!(log.last_index(), index(40));
    assert_eq!(report.truncated_bytes, far + 8 - tail, "{report:?}");
    drop(log);
    assert_eq!(read_range(&path, tail, 64), vec![0; 64]);
    assert_eq!(read_range(&path, tail + (5 << 20), 200), vec![0; 200]);
    assert_eq!(read_range(&path, far, 8), vec![0; 8]);
    let (log, report) = open(dir.path(), small_config(BIG_SEGMENT));
    assert_eq!(report.truncated_bytes, 0, "{report:?}");
    assert_eq!(read_records(&log, 0).len(), 80);
}

#[test]
fn a_valid_batch_after_garbage_in_a_prefaulted_segment_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tail, positions) = crashed_prefaulted_log(dir.path(), BIG_SEGMENT);
    let damaged = positions[30] + 100;
    write_at(&path, damaged, &[0xEE]);
    let before = read_range(&path, 0, (tail + PREFAULT_WINDOW_MAX_BYTES) as usize);
    match PartitionLog::open(dir.path(), small_config(BIG_SEGMENT)) {
        Err(LogError::Corrupt {
            path: at,
            position: bad,
            ..
        }) => assert_eq!((at, bad), (path.clone(), positions[30])),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, report)| report)),
    }
    assert_eq!(read_range(&path, 0, before.len()), before, "nothing truncated");
}

#[test]
fn a_large_zeroed_allocated_region_is_accepted_and_its_last_byte_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tail, _) = crashed_prefaulted_log(dir.path(), BIG_SEGMENT);
    // Written zeros (allocated, data to the file system) over most of the segment: a power cut
    // after the prefaulted pages were written back looks like this.
    let zeros = vec![0u8; 1 << 20];
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(tail)).unwrap();
    while file.stream_position().unwrap() + zeros.len() as u64 <= BIG_SEGMENT {
        file.write_all(&zeros).unwrap();
    }
    drop(file);
    let (log, report) = open(dir.path(), small_config(BIG_SEGMENT));
    assert_eq!((report.truncated_bytes, log.last_index()), (0, index(40)), "{report:?}");
    drop(log);
    // Nothing after the data is skipped: a single byte at the very end is found and cut.
    write_at(&path, BIG_SEGMENT - 1, &[1]);
    let (log, report) = open(dir.path(), small_config(BIG_SEGMENT));
    assert_eq!(report.truncated_bytes, BIG_SEGMENT - tail, "{report:?}");
    assert_eq!(log.last_index(), index(40));
    drop(log);
    assert_eq!(read_range(&path, BIG_SEGMENT - 1, 1), vec![0]);
}

#[test]
fn the_zero_check_reads_only_what_the_file_system_reports_as_data() {
    // As large as a default segment, so that reading it all would show.
    const SEGMENT: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (path, tail, _) = crashed_prefaulted_log(dir.path(), SEGMENT);
    let before = match data_extent(&path, 0) {
        Some((0, hole)) if hole >= tail + PREFAULT_WINDOW_MAX_BYTES && hole < SEGMENT / 2 => hole,
        other => {
            // The file system does not tell cached pages of unwritten extents from holes.
            println!("skipped: data extent {other:?} (no holes in preallocated files here)");
            return;
        }
    };
    let (log, report) = open(dir.path(), small_config(SEGMENT));
    assert_eq!((report.truncated_bytes, log.last_index()), (0, index(40)), "{report:?}");
    // Reading the data regions may read ahead past them (a few MiB, `read_ahead_kb`), but must
    // not pull the rest of the preallocated file into the page cache: cached pages count as data,
    // and a check that asked the file system region by region crept through the whole file.
    let (_, after) = data_extent(&path, 0).unwrap();
    assert!(after <= before + (32 << 20), "data extended from {before} to {after}");
}
