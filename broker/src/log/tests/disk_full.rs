//! A full disk: allocation fails cleanly with `DiskFull`, never SIGBUS; reads keep working;
//! control entries still fit; writes resume when space returns. Needs root (tmpfs mount).

use std::process::Command;

use super::allocation::{allocated_bytes, check_allocation};
use super::*;
use crate::log::LogError;

/// A small tmpfs, unmounted (and its mount point removed) when dropped, whatever happens.
struct Tmpfs {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let parent = tempfile::tempdir().ok()?;
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self { _parent: parent, path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn full_disk_fails_allocation_cleanly_and_recovers() {
    let Some(tmpfs) = Tmpfs::mount("2m") else {
        println!("skipping: cannot mount tmpfs");
        return;
    };
    let dir = tmpfs.path.join("partition");
    let (mut log, _) = open(&dir, small_config(1 << 20));
    for i in 0..100u64 {
        append_records(&mut log, 1, 4, i, 0);
    }
    let stored = read_records(&log, 0);
    // Bigger segments no longer fit: reserve and roll report DiskFull, nothing changes.
    log.set_config(small_config(4 << 20));
    let err = log.reserve(2 << 20).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    let big = records_batch(1, 0, 1 << 20, 0);
    let entry = AppendEntry {
        index: log.last_index().next(),
        term: Term(1),
        kind: BatchKind::Records,
        data: &big,
    };
    assert!(matches!(log.append(entry), Err(LogError::DiskFull { .. })));
    let mut appended = 0;
    let failure = loop {
        let batch = records_batch(4, 1_000 + appended, 200, 0);
        let entry = AppendEntry {
            index: log.last_index().next(),
            term: Term(1),
            kind: BatchKind::Records,
            data: &batch,
        };
        match log.append(entry) {
            Ok(_) => appended += 1,
            Err(error) => break error,
        }
    };
    assert!(failure.is_disk_full(), "{failure}");
    assert_eq!(log.segment_count(), 1);
    let last = log.last_index();
    // Control entries still fit in the reserve; reads still work.
    append_control(&mut log, 2, BatchKind::Noop, b"");
    append_control(&mut log, 2, BatchKind::ConfChange, b"change");
    assert_eq!(log.last_index(), last.next().next());
    assert_eq!(read_records(&log, 0)[..stored.len()], stored[..]);
    let batch = log.pending_flush();
    batch.run().unwrap();
    log.mark_flushed(&batch).unwrap();
    // Space comes back (smaller segments): writes resume.
    log.set_config(small_config(256 << 10));
    for i in 0..200 {
        log.reserve(4 << 10).unwrap();
        append_records(&mut log, 2, 4, 9_000 + i, 0);
    }
    assert_eq!(log.segment_count(), 2);
    drop(log);
    let (log, report) = open(&dir, small_config(256 << 10));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_records(&log, 0).len() as u64, log.next_offset().0);
    drop(log);

    // Opening a new log on the full disk works (unpreallocated); appending reports DiskFull.
    let (mut other, _) = open(&tmpfs.path.join("other"), small_config(4 << 20));
    let batch = records_batch(1, 0, 10, 0);
    let entry = AppendEntry {
        index: index(1),
        term: Term(1),
        kind: BatchKind::Records,
        data: &batch,
    };
    assert!(other.append(entry).unwrap_err().is_disk_full());
    assert_eq!(other.last_index(), index(0));
}

/// Fills the file system of `dir` with a file (returned) until nothing more fits.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [64 << 10, 4 << 10] {
        let bytes = vec![0xF1u8; chunk];
        while file.write_all(&bytes).and_then(|()| file.sync_data()).is_ok() {}
    }
    path
}

fn append_batch(log: &mut PartitionLog, batch: &[u8]) -> Result<AppendInfo, LogError> {
    let (at, term) = (log.last_index().next(), log.last_term().max(Term(1)));
    log.append(AppendEntry {
        index: at,
        term,
        kind: BatchKind::Records,
        data: batch,
    })
}

#[test]
fn a_step_that_does_not_fit_is_disk_full_from_reserve_and_loses_nothing() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        println!("skipping: cannot mount tmpfs");
        return;
    };
    let dir = tmpfs.path.join("partition");
    let config = LogConfig {
        segment_allocation_step_bytes: 64 << 10,
        ..small_config(2 << 20)
    };
    let (mut log, _) = open(&dir, config.clone());
    assert!(allocated_bytes(&log.active().path) <= 128 << 10);
    for i in 0..20u64 {
        append_records(&mut log, 1, 4, i, 0);
    }
    let filler = fill(&tmpfs.path);
    // Admitted appends (a reserve first, as raft does) always fit; the reserve that needs a step
    // the disk cannot give is DiskFull. Never SIGBUS.
    let mut appended = 0u64;
    let error = loop {
        let batch = records_batch(4, 100 + appended, 600, 0);
        match log.reserve(batch.len() as u64) {
            Ok(()) => {
                append_batch(&mut log, &batch).expect("a reserved append fits");
                appended += 1;
            }
            Err(error) => break error,
        }
        check_allocation(&log);
    };
    assert!(error.is_disk_full(), "{error}");
    assert!(appended > 0);
    // Without a reserve, the append that needs the step fails the same way, appending nothing.
    let last = log.last_index();
    let batch = records_batch(4, 99_999, 600, 0);
    assert!(append_batch(&mut log, &batch).unwrap_err().is_disk_full());
    assert_eq!(log.last_index(), last);
    assert_eq!(log.segment_count(), 1);
    // Control entries still fit (the control reserve is allocated), and reads work.
    append_control(&mut log, 2, BatchKind::Noop, b"");
    append_control(&mut log, 2, BatchKind::ConfChange, b"change");
    let records = read_records(&log, 0);
    assert_eq!(records.len() as u64, 4 * (20 + appended));
    let batch = log.pending_flush();
    batch.run().unwrap();
    log.mark_flushed(&batch).unwrap();
    // A crash, and a restart on the still full disk: everything is there.
    drop(log);
    let (mut log, report) = open(&dir, config.clone());
    assert_eq!(report.truncated_bytes, 0, "{report:?}");
    assert_eq!(read_records(&log, 0), records);
    // Space comes back: appends go on, across steps.
    std::fs::remove_file(filler).unwrap();
    for i in 0..100 {
        let batch = records_batch(4, 50_000 + i, 600, 0);
        log.reserve(batch.len() as u64).unwrap();
        append_batch(&mut log, &batch).unwrap();
        check_allocation(&log);
    }
    drop(log);
    let (log, report) = open(&dir, config);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_records(&log, 0).len() as u64, 4 * (20 + appended + 100));
}

#[test]
fn data_ending_before_a_hole_reopens_on_a_full_disk() {
    // The page after the data is a hole: recovery must not read it (tmpfs allocates a page for
    // a read fault on a hole of a shared mapping, SIGBUS when it is full).
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        println!("skipping: cannot mount tmpfs");
        return;
    };
    let dir = tmpfs.path.join("partition");
    let config = LogConfig {
        segment_allocation_step_bytes: 64 << 10,
        ..small_config(2 << 20)
    };
    let (mut log, _) = open(&dir, config.clone());
    append_records(&mut log, 1, 4, 0, 0);
    // A control entry that ends the data at a page boundary, and the rest of the file a hole
    // (as when the data ends exactly at the allocated prefix).
    let active = log.active();
    let header = weir_proto::batch::HEADER_LEN as u64;
    let payload = vec![7u8; ((active.len + header).next_multiple_of(4096) - active.len - header) as usize];
    append_control(&mut log, 1, BatchKind::ConfChange, &payload);
    let active = log.active();
    assert_eq!(active.len % 4096, 0);
    let (len, capacity) = (active.len, active.capacity());
    // SAFETY: a plain system call on a descriptor the log owns; the range is past the data.
    let punched = unsafe {
        libc::fallocate(
            std::os::unix::io::AsRawFd::as_raw_fd(&active.file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            len as libc::off_t,
            (capacity - len) as libc::off_t,
        )
    };
    assert_eq!(punched, 0);
    let filler = fill(&tmpfs.path);
    drop(log);
    let (mut log, report) = open(&dir, config.clone());
    assert_eq!((report.truncated_bytes, log.last_index()), (0, index(2)), "{report:?}");
    assert_eq!(read_records(&log, 0).len(), 4);
    // No step can be allocated: appends are DiskFull, nothing else happens.
    let batch = records_batch(1, 0, 10, 0);
    assert!(append_batch(&mut log, &batch).unwrap_err().is_disk_full());
    std::fs::remove_file(filler).unwrap();
    log.reserve(batch.len() as u64).unwrap();
    append_batch(&mut log, &batch).unwrap();
    assert_eq!(read_records(&log, 0).len(), 5);
}
