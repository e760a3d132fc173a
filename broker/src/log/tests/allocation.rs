//! Allocation in steps: a segment file has its full length but only an allocated prefix of
//! blocks, which grows by `segment_allocation_step_bytes` as appends and reservations need it.

use std::os::unix::fs::MetadataExt;

use weir_proto::batch::HEADER_LEN;

use super::*;
use crate::log::fsutil::STANDBY_NAME;

const STEP: u64 = 64 << 10;

fn stepped_config(segment_bytes_max: u64, step: u64) -> LogConfig {
    LogConfig {
        segment_allocation_step_bytes: step,
        ..small_config(segment_bytes_max)
    }
}

/// Bytes of disk blocks the file at `path` holds.
pub(super) fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The active segment writes only below its allocated prefix, which is whole steps (or the
/// whole segment) and held by the file.
pub(super) fn check_allocation(log: &PartitionLog) {
    let active = log.active();
    assert!(
        active.len <= active.allocated && active.allocated <= active.capacity(),
        "len {} allocated {} capacity {}",
        active.len,
        active.allocated,
        active.capacity()
    );
    let disk = allocated_bytes(&active.path);
    assert!(
        disk >= active.allocated / 4096 * 4096,
        "{disk} bytes on disk, {} allocated",
        active.allocated
    );
}

#[test]
fn a_new_segment_allocates_one_step_not_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's defaults: 256 MiB segments, 16 MiB steps.
    let (log, _) = open(dir.path(), LogConfig::default());
    let path = &log.active().path;
    assert_eq!(std::fs::metadata(path).unwrap().len(), 256 << 20, "full length");
    let disk = allocated_bytes(path);
    assert!(
        (16 << 20..=(16 << 20) + (64 << 10)).contains(&disk),
        "{disk} bytes allocated"
    );
    assert_eq!(log.active().allocated, 16 << 20);
    drop(log);

    // A small step; a step above the segment size allocates the segment.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), stepped_config(1 << 20, STEP));
    let disk = allocated_bytes(&log.active().path);
    assert!((STEP..=2 * STEP).contains(&disk), "{disk} bytes allocated");
    // A reservation beyond the active segment makes a standby with the steps it needs only.
    while log.active().len < (1 << 20) - (100 << 10) {
        append_records(&mut log, 1, 4, 0, 0);
    }
    log.reserve(100 << 10).unwrap();
    let standby_path = dir.path().join(STANDBY_NAME);
    assert_eq!(std::fs::metadata(&standby_path).unwrap().len(), 1 << 20, "full length");
    let need = (100 << 10) + log.control_reserve();
    let standby = allocated_bytes(&standby_path);
    assert!(
        (need.next_multiple_of(STEP)..=need.next_multiple_of(STEP) + STEP).contains(&standby),
        "{standby}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), stepped_config(1 << 20, 64 << 20));
    assert_eq!(log.active().allocated, 1 << 20);
}

#[test]
fn appends_across_many_steps_and_segments_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = stepped_config(1 << 20, STEP);
    let (mut log, _) = open(dir.path(), config.clone());
    let mut seen_allocated = std::collections::BTreeSet::new();
    for i in 0..1200u64 {
        // About 2.5 KiB per entry: 3 MiB in all, a few segments of 16 steps each.
        if i % 3 == 0 {
            log.reserve(3 << 10).unwrap();
        }
        let batch = records_batch(4, i, 600, i as i64);
        let at = log.last_index().next();
        log.append(AppendEntry {
            index: at,
            term: Term(1),
            kind: BatchKind::Records,
            data: &batch,
        })
        .unwrap();
        if i % 50 == 0 {
            append_control(&mut log, 1, BatchKind::Noop, b"");
        }
        check_allocation(&log);
        let active = log.active();
        // The control reserve stays allocated behind every records batch.
        assert!(active.allocated >= (active.len + log.control_reserve()).min(active.capacity()));
        assert!(active.allocated % STEP == 0 || active.allocated == active.capacity());
        seen_allocated.insert(active.allocated);
    }
    assert!(log.segment_count() >= 3, "{}", log.segment_count());
    assert!(seen_allocated.len() >= 10, "{seen_allocated:?}");
    // The prefaulter stays inside the allocated prefix too (MADV_POPULATE_WRITE on the hole
    // would allocate blocks): give it time, then nothing past the prefix holds blocks.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let active = log.active();
    let disk = allocated_bytes(&active.path);
    assert!(
        disk <= active.allocated + STEP,
        "{disk} bytes on disk, {} allocated",
        active.allocated
    );
    let records = read_records(&log, 0);
    assert_eq!(records.len(), 4 * 1200);
    for (i, four) in records.chunks(4).enumerate() {
        assert_eq!(value_of(&four[3]), format!("{i}-3"));
    }
    // Sealed segments hold their data only.
    for path in &segment_files(dir.path())[..log.segment_count() - 1] {
        let length = std::fs::metadata(path).unwrap().len();
        assert!(
            allocated_bytes(path) <= length.next_multiple_of(4096) + 4096,
            "{}",
            path.display()
        );
    }
    // A crash, then a clean restart: everything is there and appends go on.
    drop(log);
    let (mut log, report) = open(dir.path(), config.clone());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_records(&log, 0).len(), 4 * 1200);
    check_allocation(&log);
    append_records(&mut log, 2, 2, 5000, 0);
    log.close().unwrap();
    drop(log);
    let (log, report) = open(dir.path(), config);
    assert!(report.clean_shutdown);
    assert_eq!(read_records(&log, 0).len(), 4 * 1200 + 2);
    check_allocation(&log);
}

#[test]
fn truncation_and_reset_keep_writes_inside_the_allocated_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, step) = (128 << 10, 16 << 10);
    let config = stepped_config(segment, step);
    let (mut log, _) = open(dir.path(), config.clone());
    for i in 0..800u64 {
        append_records(&mut log, 1, 4, i, 0);
        check_allocation(&log);
    }
    let segments = log.segment_count();
    assert!(segments >= 3);
    // Into a sealed segment: it becomes active again, the old active one the standby.
    let first_of_last = log.active().base_index;
    log.truncate_from(index(first_of_last.0 - 5)).unwrap();
    check_allocation(&log);
    log.reserve(8 << 10).unwrap();
    for i in 0..300u64 {
        append_records(&mut log, 2, 4, 10_000 + i, 0);
        check_allocation(&log);
    }
    // Inside the active segment.
    log.truncate_from(log.last_index()).unwrap();
    append_records(&mut log, 3, 4, 20_000, 0);
    check_allocation(&log);
    log.reset(crate::log::LogStart {
        index: index(5000),
        term: Term(3),
        offset: Offset(90_000),
    })
    .unwrap();
    check_allocation(&log);
    for i in 0..200u64 {
        append_records(&mut log, 4, 4, 30_000 + i, 0);
        check_allocation(&log);
    }
    drop(log);
    let (log, report) = open(dir.path(), config);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_records(&log, 90_000).len(), 800);
}

/// Entries 1..=count of about 2.5 KiB each, in one 4 MiB segment allocated in 64 KiB steps,
/// left as after a kill -9. Returns the segment path and the positions of the entries.
fn crashed_stepped_log(dir: &Path, count: u64) -> (PathBuf, Vec<u64>) {
    let (mut log, _) = open(dir, stepped_config(4 << 20, STEP));
    let mut positions = Vec::new();
    for i in 0..count {
        let batch = records_batch(4, i, 600, i as i64);
        let at = log.last_index().next();
        log.append(AppendEntry {
            index: at,
            term: Term(1),
            kind: BatchKind::Records,
            data: &batch,
        })
        .unwrap();
        positions.push(log.active().last_position);
    }
    assert_eq!(log.segment_count(), 1);
    (log.active().path.clone(), positions)
}

#[test]
fn a_crash_in_the_middle_of_a_step_recovers_and_allocates_again() {
    let dir = tempfile::tempdir().unwrap();
    let (path, positions) = crashed_stepped_log(dir.path(), 100);
    let tail = {
        let (log, report) = open(dir.path(), stepped_config(4 << 20, STEP));
        assert_eq!((report.truncated_bytes, log.last_index()), (0, index(100)));
        let active = log.active();
        // The data ends inside a step; the allocated prefix is the data plus the control reserve
        // rounded up to a step again, not the segment.
        assert_ne!(active.len % STEP, 0);
        assert_eq!(
            active.allocated,
            (active.len + log.control_reserve()).next_multiple_of(STEP)
        );
        check_allocation(&log);
        assert!(allocated_bytes(&path) < 1 << 20);
        active.len
    };
    // A torn last batch: only its first half reached the file (the rest reads as zeros).
    let last = positions[99];
    let torn_from = last + (tail - last) / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&vec![0; (tail - torn_from) as usize], torn_from)
        })
        .unwrap();
    let (mut log, report) = open(dir.path(), stepped_config(4 << 20, STEP));
    assert_eq!(log.last_index(), index(99));
    assert_eq!(report.truncated_bytes, torn_from - last, "{report:?}");
    assert_eq!(log.active().len, last);
    check_allocation(&log);
    // Appends go on over the cut tail and into new steps.
    for i in 0..200 {
        append_records(&mut log, 2, 4, 1000 + i, 0);
        check_allocation(&log);
    }
    assert!(log.active().len > 3 * STEP);
    drop(log);
    let (log, report) = open(dir.path(), stepped_config(4 << 20, STEP));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_records(&log, 0).len(), 4 * 99 + 4 * 200);
}

#[test]
fn a_batch_reaching_into_the_unallocated_hole_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (path, positions) = crashed_stepped_log(dir.path(), 30);
    let tail = {
        let (log, _) = open(dir.path(), stepped_config(4 << 20, STEP));
        log.active().len
    };
    // A header at the tail claiming a batch that would end far in the hole past the allocated
    // prefix (a torn write of a big batch, the rest never written).
    let mut header = vec![0u8; HEADER_LEN];
    {
        let (log, _) = open(dir.path(), stepped_config(4 << 20, STEP));
        let last = positions[29];
        header.copy_from_slice(log.active().map.bytes(last, last + HEADER_LEN as u64));
    }
    header[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
    header[24..32].copy_from_slice(&31u64.to_le_bytes());
    header[32..40].copy_from_slice(&120u64.to_le_bytes());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&header, tail)
        })
        .unwrap();
    let (log, report) = open(dir.path(), stepped_config(4 << 20, STEP));
    assert_eq!(log.last_index(), index(30));
    assert!(
        report.truncated_bytes > 0 && report.truncated_bytes <= HEADER_LEN as u64,
        "{report:?}"
    );
    assert_eq!(read_records(&log, 0).len(), 4 * 30);
}
