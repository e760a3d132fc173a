//! The sender task of one partition: takes the partition's batches in order and sends each to
//! the leader, one at a time, retrying retriable errors until the delivery timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use weir_proto::v1 as proto;

use super::accumulator::{ClosedBatch, Next};
use super::{Shared, TopicPartition};
use crate::config::Acks;
use crate::error::{Context, Error, Result};

/// Runs until the producer is closed and the partition's queue is empty.
pub(super) async fn run(shared: Arc<Shared>, tp: TopicPartition, wake: Arc<Notify>) {
    let linger = Duration::from_millis(shared.config.linger_ms);
    loop {
        let (next, closed_producer) = {
            let mut state = shared.state();
            let closed_producer = state.closed;
            let Some(queue) = state.queues.get_mut(&tp) else {
                return;
            };
            let (next, closed_batch) = queue.next(Instant::now(), linger);
            if closed_batch {
                state.rotate_sticky(&tp);
            }
            (next, closed_producer)
        };
        match next {
            Next::Send(batch) => {
                let result = deliver(&shared, &tp, &batch).await;
                if let Err(error) = &result {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, %error,
                        records = batch.record_count(), "produce failed");
                }
                batch.complete(&tp.topic, tp.partition, result);
                let state = shared.state();
                if let Some(queue) = state.queues.get(&tp) {
                    queue.completed.send_modify(|completed| *completed += 1);
                }
            }
            Next::WaitUntil(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            Next::Idle if closed_producer => return,
            Next::Idle => wake.notified().await,
        }
    }
}

/// Sends one batch until it is acknowledged, fails definitely, its outcome becomes unknown, or
/// the delivery timeout (counted from the batch's creation) leaves no time for another try.
/// Returns the batch's base offset.
async fn deliver(shared: &Shared, tp: &TopicPartition, batch: &ClosedBatch) -> Result<u64> {
    let cluster = &shared.cluster;
    let deadline = batch.created_at + Duration::from_millis(shared.config.delivery_timeout_ms);
    let mut backoff = cluster.backoff();
    loop {
        let version = cluster.version();
        // Errors from the cache (no such topic in metadata) are final; errors from a broker
        // follow the retry rules below.
        let (error, from_broker) = match cluster.leader_address(&tp.topic, tp.partition).await {
            Ok(address) => match produce_once(shared, tp, batch, &address).await {
                Ok(response) => {
                    if response.record_count != 0 && response.record_count as usize != batch.record_count() {
                        tracing::warn!(topic = %tp.topic, partition = tp.partition,
                            sent = batch.record_count(), stored = response.record_count,
                            "broker stored a different record count than sent");
                    }
                    return Ok(response.base_offset);
                }
                Err(error) => (error, true),
            },
            Err(error) => (error, false),
        };
        // The broker refuses a produce for a topic or partition it does not know yet before
        // appending anything, so those are safe to retry too (a topic just created).
        let not_found = matches!(error, Error::TopicNotFound { .. } | Error::PartitionNotFound { .. });
        // An idempotent batch may be resent when its outcome is unknown: the broker answers a
        // copy it already stored with that copy's offsets.
        let resendable = shared.producer_id.is_some() && error.is_outcome_unknown();
        let retriable = error.is_retriable() || (not_found && from_broker) || resendable;
        let delay = backoff.next_delay();
        if !retriable || Instant::now() + delay >= deadline {
            if from_broker && error.is_outcome_unknown() {
                // The leader may be gone or stuck (timeout, cut connection): the next batch
                // must not go to it blindly. Refresh in the background; the caller hears now.
                let cluster = shared.cluster.clone();
                tokio::spawn(async move {
                    if let Err(refresh_error) = cluster.refresh(version).await {
                        tracing::debug!(%refresh_error, "metadata refresh after an unknown outcome failed");
                    }
                });
            }
            return Err(error);
        }
        tracing::debug!(topic = %tp.topic, partition = tp.partition, %error, "retrying produce");
        cluster.on_error(&tp.topic, tp.partition, &error, version).await;
        tokio::time::sleep(delay).await;
    }
}

async fn produce_once(
    shared: &Shared,
    tp: &TopicPartition,
    batch: &ClosedBatch,
    address: &str,
) -> Result<proto::ProduceResponse> {
    let cluster = &shared.cluster;
    let mut client = cluster.weir(address)?;
    let request_timeout = cluster.config().request_timeout();
    let acks = match shared.config.acks {
        Acks::All => proto::Acks::All,
        Acks::Leader => proto::Acks::Leader,
    };
    let request = proto::ProduceRequest {
        topic: tp.topic.clone(),
        partition: tp.partition,
        acks: acks as i32,
        batch: batch.bytes.clone(),
        timeout_ms: broker_timeout_ms(request_timeout),
    };
    client
        .produce(cluster.request(request, request_timeout))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::from_status(status, &Context::partition(&tp.topic, tp.partition)))
}

/// The broker is asked to give up on the commit a little before the client does, so that a
/// slow commit comes back as the broker's DEADLINE_EXCEEDED rather than a cut connection.
fn broker_timeout_ms(request_timeout: Duration) -> u32 {
    let millis = request_timeout.as_millis() * 4 / 5;
    u32::try_from(millis).unwrap_or(u32::MAX).max(1)
}
