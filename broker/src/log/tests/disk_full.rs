//! A full disk: allocation fails cleanly with `DiskFull`, never SIGBUS; reads keep working;
//! control entries still fit; writes resume when space returns. Needs root (tmpfs mount).

use std::process::Command;

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
