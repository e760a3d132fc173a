//! The producer: batches records per partition and sends them to the partition leaders.
//!
//! `send` reserves room in a bounded buffer (waiting while it is full), picks the partition
//! (explicit, key hash, or sticky: see [`crate::partitioner`]) and appends the record to that
//! partition's open batch (`accumulator`). One sender task per partition (`sender`) sends
//! the partition's batches one at a time, so records of a partition are stored in the order they
//! were sent, and retries retriable errors until `delivery_timeout_ms`. With idempotence (the
//! default) every batch carries the producer's random id, an epoch and the partition's next
//! sequence number, so a batch whose outcome is unknown (timeout, connection lost mid-request,
//! leader change) is sent again too: the broker stores it once and answers the retry with the
//! first copy's offsets. Without it such a batch fails with the unknown-outcome error, because
//! resending could store it twice.
//!
//! Dropping the last handle of a producer stops accepting records; what was queued is still
//! sent in the background. Call [`Producer::flush`] or [`Producer::close`] to wait for it.

mod accumulator;
mod sender;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use weir_proto::batch::HEADER_LEN;

use crate::cluster::Cluster;
use crate::config::{ClientConfig, ProducerConfig};
use crate::error::{Error, Result};
use crate::partitioner;
use crate::record::{now_ms, ProducerRecord, RecordMetadata};
use crate::types::TopicPartition;
use accumulator::{PartitionQueue, Reservation, RECORD_BOOKKEEPING_BYTES};

/// The partition keyless records of a topic go to, and the partition count it was chosen from.
#[derive(Debug, Clone, Copy)]
struct Sticky {
    partition: u32,
    partitions: u32,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<TopicPartition, PartitionQueue>,
    sticky: HashMap<String, Sticky>,
    closed: bool,
}

impl State {
    /// After a batch of `tp` closed, keyless records of the topic move to another partition.
    fn rotate_sticky(&mut self, tp: &TopicPartition) {
        if let Some(sticky) = self.sticky.get_mut(&tp.topic) {
            if sticky.partition == tp.partition {
                sticky.partition = partitioner::next_sticky(sticky.partitions, Some(tp.partition));
            }
        }
    }
}

/// What the producer's handles and sender tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    /// Bounds the bytes of records accepted but not yet acknowledged (`buffer_bytes_max`).
    buffer: Arc<Semaphore>,
    /// A std mutex: it is held only for short bookkeeping and never across an await.
    state: Mutex<State>,
    /// This producer's id when idempotent: random, 63 bits (two producers drawing the same id
    /// is as unlikely as a collision of random 63-bit numbers).
    producer_id: Option<i64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops accepting records and has the sender tasks send what is queued, then exit.
    fn shut_down(&self) {
        let mut state = self.state();
        state.closed = true;
        for queue in state.queues.values_mut() {
            queue.close_open();
            queue.wake.notify_one();
        }
        drop(state);
        self.buffer.close();
    }
}

/// The last handle to go closes the producer (see the module doc).
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// Sends records to Weir. Cheap to clone: clones share batches and connections.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// Resolves when the broker acknowledged the record (or its delivery failed).
#[derive(Debug)]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(|received| {
            received.unwrap_or_else(|_| Err(Error::Internal("record dropped before completion".into())))
        })
    }
}

impl Producer {
    /// A producer with its own connections.
    pub fn new(client: ClientConfig, config: ProducerConfig) -> Result<Self> {
        Self::with_cluster(Cluster::new(client)?, config)
    }

    pub(crate) fn with_cluster(cluster: Arc<Cluster>, config: ProducerConfig) -> Result<Self> {
        config.validate()?;
        let shared = Arc::new(Shared {
            cluster,
            buffer: Arc::new(Semaphore::new(config.buffer_bytes_max)),
            producer_id: config.idempotence.then(|| rand::random::<i64>() & i64::MAX),
            config,
            state: Mutex::new(State::default()),
        });
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.shared().config
    }

    /// Sends a record and waits for its acknowledgement. To have many records in flight from
    /// one task, use [`Producer::enqueue`] (or run several `send`s concurrently).
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.enqueue(record).await?.await
    }

    /// Queues a record, waiting only while the buffer is full, and returns a future of its
    /// acknowledgement. Records a task enqueues for one partition are stored in that order.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = self.shared();
        let record_bytes = record.encoded_len();
        if HEADER_LEN + record_bytes > shared.config.batch_bytes_max {
            return Err(Error::InvalidArgument(format!(
                "record of {record_bytes} bytes does not fit in a batch of batch_bytes_max {} bytes",
                shared.config.batch_bytes_max
            )));
        }
        // Capped at the whole buffer, so that one record of batch_bytes_max always fits in it.
        let charge = (record_bytes + RECORD_BOOKKEEPING_BYTES).min(shared.config.buffer_bytes_max);
        let reservation = Reservation::acquire(&shared.buffer, charge).await?;
        let partition = self.choose_partition(&record).await?;
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let (reply, receiver) = oneshot::channel();
        self.append(partition, &record, timestamp_ms, reply, reservation)?;
        Ok(DeliveryFuture { receiver })
    }

    async fn choose_partition(&self, record: &ProducerRecord) -> Result<u32> {
        let shared = self.shared();
        let partitions = shared.cluster.partition_count(&record.topic).await?;
        if let Some(partition) = record.partition {
            if partition >= partitions {
                return Err(Error::PartitionNotFound {
                    topic: record.topic.clone(),
                    partition,
                });
            }
            return Ok(partition);
        }
        if let Some(key) = &record.key {
            return Ok(partitioner::partition_for_key(key, partitions));
        }
        let mut state = shared.state();
        let sticky = state.sticky.entry(record.topic.clone()).or_insert_with(|| Sticky {
            partition: partitioner::next_sticky(partitions, None),
            partitions,
        });
        if sticky.partitions != partitions {
            *sticky = Sticky {
                partition: partitioner::next_sticky(partitions, None),
                partitions,
            };
        }
        Ok(sticky.partition)
    }

    fn append(
        &self,
        partition: u32,
        record: &ProducerRecord,
        timestamp_ms: i64,
        reply: oneshot::Sender<Result<RecordMetadata>>,
        reservation: Reservation,
    ) -> Result<()> {
        let shared = self.shared();
        let tp = TopicPartition {
            topic: record.topic.clone(),
            partition,
        };
        let mut state = shared.state();
        if state.closed {
            return Err(Error::Closed);
        }
        let mut spawn = false;
        let producer_id = shared.producer_id;
        let queue = state.queues.entry(tp.clone()).or_insert_with(|| {
            spawn = true;
            PartitionQueue::new(producer_id)
        });
        let was_idle = queue.is_empty();
        let batch_bytes_max = shared.config.batch_bytes_max;
        let appended = queue.append(
            record,
            timestamp_ms,
            reply,
            reservation,
            batch_bytes_max,
            Instant::now(),
        );
        let closed = matches!(appended, Ok(true));
        if closed || (was_idle && appended.is_ok()) {
            queue.wake.notify_one();
        }
        let wake = queue.wake.clone();
        if closed {
            state.rotate_sticky(&tp);
        }
        drop(state);
        // A new queue gets its sender even if this record was refused, since the queue stays.
        if spawn {
            tokio::spawn(sender::run(shared.clone(), tp, wake));
        }
        appended.map(|_| ()).map_err(|(error, _reply)| error)
    }

    /// Sends every queued record now (ignoring linger) and waits until each one sent before this
    /// call is acknowledged or has failed. Failures are reported to each record's sender.
    pub async fn flush(&self) {
        let targets: Vec<_> = {
            let mut state = self.shared().state();
            let mut targets = Vec::with_capacity(state.queues.len());
            let mut closed = Vec::new();
            for (tp, queue) in state.queues.iter_mut() {
                if queue.close_open() {
                    queue.wake.notify_one();
                    closed.push(tp.clone());
                }
                targets.push((queue.completed.subscribe(), queue.batches_started()));
            }
            for tp in &closed {
                state.rotate_sticky(tp);
            }
            targets
        };
        for (mut completed, target) in targets {
            // An error means the queue is gone, and with it everything to wait for.
            let _ = completed.wait_for(|done| *done >= target).await;
        }
    }

    /// Flushes, then stops accepting records. Other clones of this producer are closed too.
    pub async fn close(&self) {
        self.flush().await;
        self.shared().shut_down();
    }

    /// Bytes of records currently queued or in flight (counting bookkeeping).
    pub fn buffered_bytes(&self) -> usize {
        self.shared().config.buffer_bytes_max - self.shared().buffer.available_permits()
    }
}
