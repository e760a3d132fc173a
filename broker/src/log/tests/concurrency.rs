//! The log behind `Arc<RwLock<_>>`, as the raft layer holds it: readers decode their zero-copy
//! views after releasing the lock while the writer appends, rolls, flushes and deletes segments.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;

use super::*;
use crate::log::{FlushBatch, LogError};

#[test]
fn the_log_and_its_flush_batches_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PartitionLog>();
    send_sync::<FlushBatch>();
    send_sync::<LogError>();
}

#[test]
fn readers_use_their_views_while_the_writer_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(64 << 10),
        ..small_config(16 << 10)
    };
    let log = Arc::new(RwLock::new(open(dir.path(), config).0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (log, done) = (Arc::clone(&log), Arc::clone(&done));
            thread::spawn(move || {
                let mut checked = 0u64;
                while !done.load(Ordering::Acquire) {
                    let chunk = {
                        let log = log.read().unwrap();
                        let from = log.start_offset();
                        log.read(from, log.next_offset(), 32 << 10)
                    };
                    // The lock is released: the views must stay valid and unchanged.
                    let Ok(chunk) = chunk else { continue };
                    for record in decode(&chunk.slices) {
                        let (tag, i) = (record.offset / 3, record.offset % 3);
                        assert_eq!(value_of(&record), format!("{tag}-{i}"));
                        checked += 1;
                    }
                }
                checked
            })
        })
        .collect();
    for tag in 0..3_000u64 {
        let mut guard = log.write().unwrap();
        guard.reserve(1_000).unwrap();
        append_records(&mut guard, 1, 3, tag, 0);
        drop(guard);
        if tag % 40 == 0 {
            let batch = log.read().unwrap().pending_flush();
            batch.run().unwrap();
            let mut guard = log.write().unwrap();
            guard.mark_flushed(&batch).unwrap();
            let committed = guard.last_index();
            guard.apply_retention(0, committed).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    let mut log = Arc::try_unwrap(log).ok().unwrap().into_inner().unwrap();
    assert!(log.start_offset() > Offset(0), "retention ran");
    assert_eq!(log.next_offset(), Offset(9_000));
    log.close().unwrap();
}
