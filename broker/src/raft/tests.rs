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
