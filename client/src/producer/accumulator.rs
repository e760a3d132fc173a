//! Per-partition batching: records gather in an open batch until it is full, its linger time
//! has passed, or a flush closes it; closed batches wait in order for the partition's sender.
//! Pure bookkeeping with no I/O, so it is tested on its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::time::Instant;
use weir_proto::batch::BatchBuilder;

use crate::error::{Error, Result};
use crate::record::{ProducerRecord, RecordMetadata};

/// Buffer bytes charged per record on top of its encoded size, for the bookkeeping that waits
/// with it (reply channel, timestamp). Keeps the buffer bound honest for tiny records.
pub(crate) const RECORD_BOOKKEEPING_BYTES: usize = 64;

/// Bytes of the producer's buffer held by queued records; given back when dropped, that is
/// when the records' batch is acknowledged or failed.
#[derive(Debug)]
pub(crate) struct Reservation {
    semaphore: Arc<Semaphore>,
    bytes: usize,
}

impl Reservation {
    /// Waits until `bytes` fit in the buffer. Fails when the producer is closed.
    pub(crate) async fn acquire(semaphore: &Arc<Semaphore>, bytes: usize) -> Result<Self> {
        let permits = u32::try_from(bytes).map_err(|_| Error::InvalidArgument("record too large".into()))?;
        let permit = semaphore
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Error::Closed)?;
        // The permits are given back by hand in `drop`, so that reservations can be merged.
        permit.forget();
        Ok(Self {
            semaphore: semaphore.clone(),
            bytes,
        })
    }

    fn absorb(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.semaphore.add_permits(self.bytes);
        }
    }
}

/// A record in a batch, waiting for its acknowledgement.
#[derive(Debug)]
struct PendingRecord {
    reply: oneshot::Sender<Result<RecordMetadata>>,
    timestamp_ms: i64,
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    records: Vec<PendingRecord>,
    created_at: Instant,
    reservation: Option<Reservation>,
}

/// A finished batch, ready to send.
#[derive(Debug)]
pub(crate) struct ClosedBatch {
    pub(crate) bytes: Bytes,
    pub(crate) created_at: Instant,
    records: Vec<PendingRecord>,
    /// Held until the batch completes, so the buffer bound covers in-flight batches too.
    _reservation: Option<Reservation>,
}

impl ClosedBatch {
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Answers every record's sender: record i of the batch got offset `base_offset + i`.
    pub(crate) fn complete(self, topic: &str, partition: u32, result: Result<u64>) {
        for (index, record) in self.records.into_iter().enumerate() {
            let outcome = match &result {
                Ok(base_offset) => Ok(RecordMetadata {
                    topic: topic.to_owned(),
                    partition,
                    offset: base_offset + index as u64,
                    timestamp_ms: record.timestamp_ms,
                }),
                Err(error) => Err(error.clone()),
            };
            // The sender may have stopped waiting; the record's fate is then nobody's concern.
            let _ = record.reply.send(outcome);
        }
    }
}

/// What the partition's sender should do next.
#[derive(Debug)]
pub(crate) enum Next {
    Send(ClosedBatch),
    /// The open batch's linger ends then.
    WaitUntil(Instant),
    Idle,
}

/// The queue of one partition.
#[derive(Debug)]
pub(crate) struct PartitionQueue {
    open: Option<OpenBatch>,
    ready: VecDeque<ClosedBatch>,
    /// Batches ever started; a flush waits until `completed` reaches the value it saw.
    batches_started: u64,
    /// Batches completed (acknowledged or failed).
    pub(crate) completed: watch::Sender<u64>,
    /// Wakes the partition's sender task.
    pub(crate) wake: Arc<Notify>,
    /// Idempotent produce: the producer's id, and this partition's epoch and next sequence.
    idempotence: Option<Sequencer>,
}

/// Stamps a partition's batches with the producer id, an epoch and consecutive sequence
/// numbers (of records), in the order they close, which is the order they are sent.
#[derive(Debug, Clone, Copy)]
struct Sequencer {
    producer_id: i64,
    epoch: i16,
    next_sequence: i32,
}

impl Sequencer {
    fn stamp(&mut self, builder: &mut BatchBuilder) {
        let count = builder.record_count() as i32;
        if self.next_sequence.checked_add(count).is_none() {
            // Sequences would wrap: a new epoch starts them afresh (the broker accepts a newer
            // epoch as a new start).
            self.epoch = self.epoch.wrapping_add(1).max(0);
            self.next_sequence = 0;
        }
        builder.set_producer(self.producer_id, self.epoch, self.next_sequence);
        self.next_sequence += count;
    }
}

impl Default for PartitionQueue {
    fn default() -> Self {
        Self {
            open: None,
            ready: VecDeque::new(),
            batches_started: 0,
            completed: watch::Sender::new(0),
            wake: Arc::new(Notify::new()),
            idempotence: None,
        }
    }
}

impl PartitionQueue {
    /// A queue whose batches carry `producer_id` (`None`: not idempotent).
    pub(crate) fn new(producer_id: Option<i64>) -> Self {
        Self {
            idempotence: producer_id.map(|producer_id| Sequencer {
                producer_id,
                epoch: 0,
                next_sequence: 0,
            }),
            ..Self::default()
        }
    }

    /// Adds a record. Returns true if that closed a batch (it filled up). `batch_bytes_max`
    /// must leave room for the record in an empty batch (the producer checks that first).
    pub(crate) fn append(
        &mut self,
        record: &ProducerRecord,
        timestamp_ms: i64,
        reply: oneshot::Sender<Result<RecordMetadata>>,
        reservation: Reservation,
        batch_bytes_max: usize,
        now: Instant,
    ) -> std::result::Result<bool, (Error, oneshot::Sender<Result<RecordMetadata>>)> {
        let record_bytes = record.encoded_len();
        let mut closed = false;
        let fits = |open: &OpenBatch| open.builder.len_bytes() + record_bytes <= batch_bytes_max;
        if self.open.as_ref().is_some_and(|open| !fits(open)) {
            closed = self.close_open();
        }
        let open = self.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(batch_bytes_max.min(16 * 1024)),
            records: Vec::new(),
            created_at: now,
            reservation: None,
        });
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|header| (header.key.as_str(), header.value.as_deref()))
            .collect();
        let pushed = open
            .builder
            .push(timestamp_ms, record.key.as_deref(), record.value.as_deref(), &headers);
        if let Err(error) = pushed {
            let was_empty = open.records.is_empty();
            if was_empty {
                self.open = None;
            }
            return Err((Error::InvalidArgument(error.to_string()), reply));
        }
        open.records.push(PendingRecord { reply, timestamp_ms });
        match &mut open.reservation {
            Some(held) => held.absorb(reservation),
            None => open.reservation = Some(reservation),
        }
        if open.records.len() == 1 {
            self.batches_started += 1;
        }
        if open.builder.len_bytes() >= batch_bytes_max {
            closed |= self.close_open();
        }
        Ok(closed)
    }

    /// Closes the open batch, if any, queueing it to be sent. Returns whether there was one.
    pub(crate) fn close_open(&mut self) -> bool {
        let Some(mut open) = self.open.take() else {
            return false;
        };
        if let Some(sequencer) = &mut self.idempotence {
            sequencer.stamp(&mut open.builder);
        }
        self.ready.push_back(ClosedBatch {
            bytes: Bytes::from(open.builder.finish()),
            created_at: open.created_at,
            records: open.records,
            _reservation: open.reservation,
        });
        true
    }

    /// The next step for the sender at `now`, closing the open batch once its linger is over.
    /// Returns also whether that closed a batch.
    pub(crate) fn next(&mut self, now: Instant, linger: Duration) -> (Next, bool) {
        let mut closed = false;
        if self.ready.is_empty() {
            match &self.open {
                Some(open) if now >= open.created_at + linger => closed = self.close_open(),
                Some(open) => return (Next::WaitUntil(open.created_at + linger), false),
                None => return (Next::Idle, false),
            }
        }
        match self.ready.pop_front() {
            Some(batch) => (Next::Send(batch), closed),
            None => (Next::Idle, closed),
        }
    }

    pub(crate) fn batches_started(&self) -> u64 {
        self.batches_started
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_none() && self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::batch::{BatchReader, HEADER_LEN};

    fn semaphore() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(1 << 20))
    }

    async fn append(
        queue: &mut PartitionQueue,
        semaphore: &Arc<Semaphore>,
        value: &str,
        batch_bytes_max: usize,
    ) -> (bool, oneshot::Receiver<Result<RecordMetadata>>) {
        let record = ProducerRecord::new("t").with_value(value.to_owned());
        let reservation = Reservation::acquire(semaphore, record.encoded_len()).await.unwrap();
        let (reply, receiver) = oneshot::channel();
        let closed = queue
            .append(&record, 7, reply, reservation, batch_bytes_max, Instant::now())
            .unwrap();
        (closed, receiver)
    }

    #[tokio::test(start_paused = true)]
    async fn linger_closes_the_open_batch() {
        let buffer = semaphore();
        let mut queue = PartitionQueue::default();
        let linger = Duration::from_millis(5);
        assert!(matches!(queue.next(Instant::now(), linger), (Next::Idle, false)));
        let (closed, _) = append(&mut queue, &buffer, "a", 1 << 20).await;
        assert!(!closed);
        let (next, closed) = queue.next(Instant::now(), linger);
        assert!(matches!(next, Next::WaitUntil(_)) && !closed);
        tokio::time::advance(linger).await;
        let (next, closed) = queue.next(Instant::now(), linger);
        assert!(closed);
        let Next::Send(batch) = next else {
            panic!("expected a batch, got {next:?}");
        };
        assert_eq!(batch.record_count(), 1);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn batches_close_at_the_size_limit_and_keep_order() {
        let buffer = semaphore();
        let mut queue = PartitionQueue::default();
        let record_bytes = ProducerRecord::new("t").with_value("xxxx").encoded_len();
        let limit = HEADER_LEN + 3 * record_bytes;
        let mut closes = 0;
        let mut receivers = Vec::new();
        for _ in 0..7 {
            let (closed, receiver) = append(&mut queue, &buffer, "xxxx", limit).await;
            closes += usize::from(closed);
            receivers.push(receiver);
        }
        assert_eq!(closes, 2, "batches of 3, 3 and an open one of 1");
        assert_eq!(queue.batches_started(), 3);
        let mut base = 0;
        while let (Next::Send(batch), _) = queue.next(Instant::now(), Duration::from_secs(3600)) {
            assert!(batch.bytes.len() <= limit);
            let decoded = BatchReader::new(batch.bytes.clone()).next().unwrap().unwrap();
            assert_eq!(decoded.header.record_count as usize, batch.record_count());
            let count = batch.record_count() as u64;
            batch.complete("t", 3, Ok(base));
            base += count;
        }
        assert_eq!(base, 6, "the open batch waits for its linger");
        for (index, receiver) in receivers.iter_mut().take(6).enumerate() {
            let metadata = receiver.try_recv().unwrap().unwrap();
            assert_eq!(
                (metadata.partition, metadata.offset, metadata.timestamp_ms),
                (3, index as u64, 7)
            );
        }
    }

    #[tokio::test]
    async fn completion_gives_the_buffer_back_and_reports_errors() {
        let buffer = semaphore();
        let before = buffer.available_permits();
        let mut queue = PartitionQueue::default();
        let (_, mut first) = append(&mut queue, &buffer, "one", 1 << 20).await;
        let (_, mut second) = append(&mut queue, &buffer, "two", 1 << 20).await;
        assert!(buffer.available_permits() < before);
        assert!(queue.close_open());
        let (Next::Send(batch), _) = queue.next(Instant::now(), Duration::ZERO) else {
            panic!("expected a batch");
        };
        batch.complete("t", 0, Err(Error::Timeout("slow".into())));
        assert_eq!(buffer.available_permits(), before);
        assert!(matches!(first.try_recv().unwrap(), Err(Error::Timeout(_))));
        assert!(matches!(second.try_recv().unwrap(), Err(Error::Timeout(_))));
    }
}
