//! What the group tests share on the consumer's side: a listener that records rebalances,
//! and waiting for a condition.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use weir_client::{GroupCommitter, RebalanceListener, TopicPartition};

/// Records rebalances as `revoked t/1,t/3`, `assigned ...`, `lost ...`.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    pub fn note(&self, what: &str, partitions: &[TopicPartition]) {
        let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
        self.0.lock().unwrap().push(format!("{what} {}", names.join(",")));
    }

    pub fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl RebalanceListener for Recorder {
    fn on_revoked<'a>(&'a mut self, revoked: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.note("revoked", revoked) })
    }

    fn on_assigned<'a>(&'a mut self, assigned: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.note("assigned", assigned) })
    }

    fn on_lost<'a>(&'a mut self, lost: &'a [TopicPartition]) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.note("lost", lost) })
    }
}

/// Waits until `done`; `Err` after a while.
pub async fn wait_for(done: impl Fn() -> bool) -> Result<(), ()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
