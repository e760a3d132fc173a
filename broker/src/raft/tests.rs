//! The raft driver over real partition logs in temp dirs: proposals complete with contiguous
//! offsets on commit, the high watermark follows, and a restart keeps everything.

use std::path::Path;
use std::time::Duration;

use super::{Acks, GroupHandle, GroupSpec, ProposeError, RaftConfig, RaftDriver, Role};
use crate::log::batch::BatchBuilder;
use crate::log::LogConfig;
use crate::types::{GroupId, NodeId, Offset};

fn batch(records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        builder
            .push(1_700_000_000_000 + i as i64, None, Some(&[b'v'; 100]), &[])
            .unwrap();
    }
    builder.finish()
}

fn start(dir: &Path) -> (RaftDriver, GroupHandle) {
    let config = RaftConfig {
        threads: 1,
        ..RaftConfig::default()
    };
    let driver = RaftDriver::start(config, std::sync::Arc::new(super::NoPeers)).unwrap();
    let handle = driver
        .add_group(GroupSpec {
            id: GroupId(7),
            dir: dir.join("g7"),
            log_config: LogConfig {
                segment_bytes_max: 64 << 10,
                ..LogConfig::default()
            },
            voters: vec![NodeId(1)],
            preferred_leader: None,
            applier: None,
        })
        .unwrap();
    (driver, handle)
}

async fn wait_leader(handle: &GroupHandle) {
    let mut progress = handle.watch();
    tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|p| p.role == Role::Leader))
        .await
        .expect("the single voter leads")
        .expect("group running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_commit_with_contiguous_offsets_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, handle) = start(dir.path());
    wait_leader(&handle).await;

    // Many proposals in flight at once: one round commits them together (group commit).
    let pending: Vec<_> = (0..200)
        .map(|i| {
            let acks = if i % 2 == 0 { Acks::All } else { Acks::Leader };
            handle.propose(batch(3), acks).unwrap()
        })
        .collect();
    let mut expected = 0u64;
    for reply in pending {
        let committed = reply.await.unwrap().unwrap();
        assert_eq!(committed.base_offset, Offset(expected), "offsets follow proposal order");
        assert_eq!(committed.next_offset, Offset(expected + 3));
        expected += 3;
    }
    let mut progress = handle.watch();
    progress.wait_for(|p| p.high_watermark == Offset(600)).await.unwrap();
    assert!(handle.log().read().unwrap().segment_count() > 1, "the log rolled");
    driver.shutdown();
    assert!(matches!(
        handle.propose(batch(1), Acks::All).map(|_| ()),
        Err(ProposeError::ShuttingDown)
    ));

    let (driver, handle) = start(dir.path());
    wait_leader(&handle).await;
    let mut progress = handle.watch();
    progress.wait_for(|p| p.high_watermark == Offset(600)).await.unwrap();
    let committed = handle.propose(batch(2), Acks::All).unwrap().await.unwrap().unwrap();
    assert_eq!(committed.base_offset, Offset(600));
    driver.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_to_unknown_groups_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, handle) = start(dir.path());
    wait_leader(&handle).await;
    driver.remove_group(GroupId(7), true).await.unwrap();
    let reply = handle.propose(batch(1), Acks::All).unwrap().await.unwrap();
    assert_eq!(reply, Err(ProposeError::NoSuchGroup(GroupId(7))));
    assert!(!dir.path().join("g7").exists(), "the group's data was deleted");
    driver.shutdown();
}

/// A state machine for the snapshot tests: counts applied records entries; its snapshot is the
/// count as 8 bytes.
struct CountingApplier {
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl super::Applier for CountingApplier {
    fn apply(&mut self, entries: &[raft::eraftpb::Entry]) {
        let records = entries
            .iter()
            .filter(|e| e.get_entry_type() == raft::eraftpb::EntryType::EntryNormal && !e.data.is_empty())
            .count() as u64;
        self.count.fetch_add(records, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&mut self, _index: crate::types::RaftIndex, data: &[u8]) -> Result<(), String> {
        let raw: [u8; 8] = data.try_into().map_err(|_| "not 8 bytes".to_string())?;
        self.count
            .store(u64::from_le_bytes(raw), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn start_counting(dir: &Path) -> (RaftDriver, GroupHandle, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let config = RaftConfig {
        threads: 1,
        ..RaftConfig::default()
    };
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let driver = RaftDriver::start(config, std::sync::Arc::new(super::NoPeers)).unwrap();
    let handle = driver
        .add_group(GroupSpec {
            id: GroupId(9),
            dir: dir.to_path_buf(),
            log_config: LogConfig::default(),
            voters: vec![NodeId(1)],
            preferred_leader: None,
            applier: Some(Box::new(CountingApplier { count: count.clone() })),
        })
        .unwrap();
    (driver, handle, count)
}

/// A log of 60 records entries of term 1 (what a follower had), and a state snapshot of entry 50
/// of `term` written next to it (an install, or a snapshot taken here).
fn log_and_snapshot(dir: &Path, term: u64) {
    use crate::log::{AppendEntry, BatchKind, PartitionLog};
    use crate::types::{RaftIndex, Term};
    std::fs::create_dir_all(dir).unwrap();
    let (mut log, _) = PartitionLog::open(dir, LogConfig::default()).unwrap();
    for index in 1..=60 {
        log.append(AppendEntry {
            index: RaftIndex(index),
            term: Term(1),
            kind: BatchKind::Records,
            data: &batch(1),
        })
        .unwrap();
    }
    let flush = log.pending_flush();
    flush.run().unwrap();
    log.mark_flushed(&flush).unwrap();
    log.close().unwrap();
    super::state_snapshot::store(
        dir,
        &super::state_snapshot::StateSnapshot {
            index: RaftIndex(50),
            term: Term(term),
            offset: Offset(1000),
            data: bytes::Bytes::copy_from_slice(&42u64.to_le_bytes()),
        },
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_restores_the_state_snapshot_and_replays_only_later_entries() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let group_dir = dir.path().join("g9");
    log_and_snapshot(&group_dir, 1);
    let (driver, handle, count) = start_counting(&group_dir);
    wait_leader(&handle).await;
    // 42 from the snapshot, plus entries 51..=60: the ten after it, not the sixty.
    let mut progress = handle.watch();
    progress.wait_for(|p| p.commit_index.0 >= 61).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 52);
    let log = super::read_log(handle.log());
    assert_eq!(
        (log.log_start().index.0, log.last_index().0),
        (0, 61),
        "no reset: the log holds entry 50"
    );
    drop(log);
    driver.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_install_is_finished_at_open() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let group_dir = dir.path().join("g9");
    // The snapshot names entry 50 with term 3, the log has term 1 there: the leader's snapshot
    // was written, the crash came before the log reset.
    log_and_snapshot(&group_dir, 3);
    let (driver, handle, count) = start_counting(&group_dir);
    wait_leader(&handle).await;
    let start = super::read_log(handle.log()).log_start();
    assert_eq!((start.index.0, start.term.0, start.offset), (50, 3, Offset(1000)));
    assert_eq!(count.load(Ordering::SeqCst), 42);
    let committed = handle.propose(batch(2), Acks::All).unwrap().await.unwrap().unwrap();
    assert_eq!(committed.base_offset, Offset(1000));
    let mut progress = handle.watch();
    progress.wait_for(|p| p.commit_index >= committed.index).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 43);
    driver.shutdown();

    // A restart restores the same snapshot and replays the entries after it.
    let (driver, handle, count) = start_counting(&group_dir);
    wait_leader(&handle).await;
    let mut progress = handle.watch();
    progress.wait_for(|p| p.commit_index > committed.index).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 43);
    assert_eq!(super::read_log(handle.log()).log_start().index.0, 50);
    driver.shutdown();
}

fn idempotent_batch(records: usize, first_sequence: i32) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        builder
            .push(1_700_000_000_000 + i as i64, None, Some(&[b'i'; 100]), &[])
            .unwrap();
    }
    builder.set_producer(42, 0, first_sequence);
    builder.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_idempotent_batch_is_stored_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, handle) = start(dir.path());
    wait_leader(&handle).await;
    let first = handle.propose(idempotent_batch(3, 0), Acks::All).unwrap();
    // The retry arrives while the first copy is still on its way: both get its offsets.
    let retry = handle.propose(idempotent_batch(3, 0), Acks::All).unwrap();
    let (first, retry) = (first.await.unwrap().unwrap(), retry.await.unwrap().unwrap());
    assert_eq!(first, retry);
    let next = handle
        .propose(idempotent_batch(2, 3), Acks::All)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.base_offset, Offset(3));
    // A retry after the commit, too; an old sequence that is not a recent batch is refused.
    let late = handle
        .propose(idempotent_batch(3, 0), Acks::Leader)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late, first);
    let refused = handle
        .propose(idempotent_batch(1, 1), Acks::All)
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(refused, Err(ProposeError::Sequence(_))), "{refused:?}");
    assert_eq!(handle.progress().high_watermark, Offset(5));
    driver.shutdown();

    // After a restart the table is rebuilt from the log: the retry is still a duplicate.
    let (driver, handle) = start(dir.path());
    wait_leader(&handle).await;
    let after_restart = handle
        .propose(idempotent_batch(2, 3), Acks::All)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_restart, next);
    let new = handle
        .propose(idempotent_batch(1, 5), Acks::All)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.base_offset, Offset(5));
    driver.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_compaction_point_deletes_the_segments_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, handle) = start(dir.path());
    wait_leader(&handle).await;
    // About 20 KiB a batch, 64 KiB segments: a few sealed segments.
    for _ in 0..12 {
        handle.propose(batch(200), Acks::All).unwrap().await.unwrap().unwrap();
    }
    let segments_before = handle.log().read().unwrap().segment_count();
    assert!(segments_before >= 3, "{segments_before} segments");
    let mut point = BatchBuilder::new();
    point.push(0, None, Some(b"checkpoint"), &[]).unwrap();
    point.mark_compaction_point();
    let committed = handle
        .propose(point.finish(), Acks::All)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    // Housekeeping runs every second.
    let mut progress = handle.watch();
    let start = tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|p| p.log_start > Offset(0)))
        .await
        .expect("segments below the compaction point deleted")
        .unwrap()
        .log_start;
    assert!(
        start <= committed.base_offset,
        "the compaction point itself stays: {start:?}"
    );
    assert!(handle.log().read().unwrap().segment_count() < segments_before);
    driver.shutdown();
}
