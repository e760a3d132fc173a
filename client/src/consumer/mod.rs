//! The consumer: reads assigned partitions from their positions onwards.
//!
//! Partitions are assigned by hand ([`Consumer::assign`], [`Consumer::assign_all`]); consumer
//! groups will add a `subscribe` beside them. Each assigned partition has at most one fetch in
//! flight, a long poll of up to `max_wait_ms`; the fetches of all partitions run concurrently and
//! [`Consumer::poll`] returns the records of whichever answer first. A partition's position is
//! the next offset to fetch; [`Consumer::seek`] moves it (by offset, to either end, or by time)
//! and discards what was fetched from the old position.

mod fetch;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};

use crate::cluster::Cluster;
use crate::config::{ClientConfig, ConsumerConfig, SeekTo};
use crate::error::{Error, Result};
use crate::record::ConsumerRecord;
pub use fetch::Watermarks;
use fetch::{FetchOutcome, Start};

/// An assigned partition.
#[derive(Debug)]
struct Assigned {
    topic: String,
    partition: u32,
    /// Next offset to fetch; `None` until the pending seek is resolved.
    position: Option<u64>,
    /// How to find the position when it is `None`.
    seek: SeekTo,
    /// Changes with every seek and assignment; answers to fetches of another epoch are stale.
    epoch: u64,
    fetching: bool,
    /// Watermarks from the latest fetch of this partition.
    watermarks: Option<Watermarks>,
}

/// Reads records from assigned partitions.
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    assigned: Vec<Assigned>,
    in_flight: FuturesUnordered<BoxFuture<'static, FetchOutcome>>,
    /// Records fetched but not yet handed out, in fetch order.
    buffered: VecDeque<ConsumerRecord>,
    next_epoch: u64,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("assigned", &self.assigned)
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer with its own connections.
    pub fn new(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        Ok(Self::with_cluster(Cluster::new(client)?, config))
    }

    pub(crate) fn with_cluster(cluster: Arc<Cluster>, config: ConsumerConfig) -> Self {
        Self {
            cluster,
            config,
            assigned: Vec::new(),
            in_flight: FuturesUnordered::new(),
            buffered: VecDeque::new(),
            next_epoch: 0,
        }
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Adds partitions of `topic` to the assignment, starting at the configured `start`.
    /// Partitions already assigned keep their position.
    pub async fn assign(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        let count = self.cluster.partition_count(topic).await?;
        if let Some(&partition) = partitions.iter().find(|&&partition| partition >= count) {
            return Err(Error::PartitionNotFound {
                topic: topic.to_owned(),
                partition,
            });
        }
        for &partition in partitions {
            if self.find(topic, partition).is_some() {
                continue;
            }
            let epoch = self.bump_epoch();
            self.assigned.push(Assigned {
                topic: topic.to_owned(),
                partition,
                position: None,
                seek: self.config.start,
                epoch,
                fetching: false,
                watermarks: None,
            });
        }
        Ok(())
    }

    /// Assigns every partition of `topic`; returns their numbers.
    pub async fn assign_all(&mut self, topic: &str) -> Result<Vec<u32>> {
        let count = self.cluster.partition_count(topic).await?;
        let partitions: Vec<u32> = (0..count).collect();
        self.assign(topic, &partitions).await?;
        Ok(partitions)
    }

    /// Removes the topic's partitions from the assignment.
    pub fn unassign(&mut self, topic: &str) {
        self.assigned.retain(|assigned| assigned.topic != topic);
        self.buffered.retain(|record| record.topic != topic);
    }

    /// The assigned partitions, in assignment order.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.assigned
            .iter()
            .map(|assigned| (assigned.topic.clone(), assigned.partition))
            .collect()
    }

    /// The next offset this consumer will fetch from the partition, once known.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.find(topic, partition)
            .and_then(|index| self.assigned[index].position)
    }

    /// The partition's watermarks as of its latest fetch.
    pub fn last_watermarks(&self, topic: &str, partition: u32) -> Option<Watermarks> {
        self.find(topic, partition)
            .and_then(|index| self.assigned[index].watermarks)
    }

    /// Asks the partition's leader for its current watermarks.
    pub async fn watermarks(&self, topic: &str, partition: u32) -> Result<Watermarks> {
        let retry_timeout = Duration::from_millis(self.config.retry_timeout_ms);
        let (_, watermarks) = fetch::list_offset(&self.cluster, topic, partition, SeekTo::End, retry_timeout).await?;
        Ok(watermarks)
    }

    /// Moves an assigned partition's position; returns the new position. Records already
    /// fetched from the old position are discarded.
    pub async fn seek(&mut self, topic: &str, partition: u32, to: SeekTo) -> Result<u64> {
        let index = self
            .find(topic, partition)
            .ok_or_else(|| Error::InvalidArgument(format!("partition {partition} of {topic:?} is not assigned")))?;
        let offset = match to {
            SeekTo::Offset(offset) => offset,
            other => {
                let retry_timeout = Duration::from_millis(self.config.retry_timeout_ms);
                let (offset, watermarks) =
                    fetch::list_offset(&self.cluster, topic, partition, other, retry_timeout).await?;
                self.assigned[index].watermarks = Some(watermarks);
                offset
            }
        };
        let epoch = self.bump_epoch();
        let assigned = &mut self.assigned[index];
        assigned.position = Some(offset);
        assigned.epoch = epoch;
        assigned.fetching = false;
        self.buffered
            .retain(|record| record.topic != topic || record.partition != partition);
        Ok(offset)
    }

    /// Seeks every assigned partition.
    pub async fn seek_all(&mut self, to: SeekTo) -> Result<()> {
        for (topic, partition) in self.assignment() {
            self.seek(&topic, partition, to).await?;
        }
        Ok(())
    }

    /// Waits for the next records of any assigned partition and returns them (never an empty
    /// list). Retriable errors are retried for `retry_timeout_ms` before they are returned; an
    /// error concerns one partition, and the next call fetches it again (after an
    /// `OffsetOutOfRange`, seek first). Cancel-safe: dropping the future loses no records.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.fill().await?;
        Ok(self.buffered.drain(..).collect())
    }

    /// The records of every assigned partition, one at a time, without end. An error is yielded
    /// and reading goes on; drop the stream to stop.
    pub fn stream(&mut self) -> impl Stream<Item = Result<ConsumerRecord>> + Unpin + Send + '_ {
        Box::pin(futures::stream::unfold(self, |consumer| async move {
            let next = match consumer.fill().await {
                Ok(()) => consumer
                    .buffered
                    .pop_front()
                    .ok_or_else(|| Error::Internal("no record after fill".into())),
                Err(error) => Err(error),
            };
            Some((next, consumer))
        }))
    }

    /// Fetches until at least one record is buffered.
    async fn fill(&mut self) -> Result<()> {
        if self.assigned.is_empty() {
            return Err(Error::InvalidArgument("no partitions assigned".into()));
        }
        while self.buffered.is_empty() {
            self.start_fetches();
            let Some(outcome) = self.in_flight.next().await else {
                return Err(Error::Internal("no fetch in flight".into()));
            };
            self.apply(outcome)?;
        }
        Ok(())
    }

    fn start_fetches(&mut self) {
        for assigned in self.assigned.iter_mut().filter(|assigned| !assigned.fetching) {
            let start = match assigned.position {
                Some(offset) => Start::At(offset),
                None => Start::Resolve(assigned.seek),
            };
            assigned.fetching = true;
            self.in_flight.push(Box::pin(fetch::fetch(
                self.cluster.clone(),
                self.config.clone(),
                assigned.topic.clone(),
                assigned.partition,
                start,
                assigned.epoch,
            )));
        }
    }

    fn apply(&mut self, outcome: FetchOutcome) -> Result<()> {
        let Some(index) = self.find(&outcome.topic, outcome.partition) else {
            return Ok(()); // unassigned since
        };
        let assigned = &mut self.assigned[index];
        if assigned.epoch != outcome.epoch {
            return Ok(()); // a seek moved the partition since this fetch began
        }
        assigned.fetching = false;
        let fetched = outcome.result?;
        assigned.position = Some(fetched.next_offset);
        assigned.watermarks = Some(Watermarks {
            log_start_offset: fetched.log_start_offset,
            high_watermark: fetched.high_watermark,
        });
        debug_assert!(fetched.records.iter().all(|record| record.offset >= fetched.offset));
        self.buffered.extend(fetched.records);
        Ok(())
    }

    fn find(&self, topic: &str, partition: u32) -> Option<usize> {
        self.assigned
            .iter()
            .position(|assigned| assigned.topic == topic && assigned.partition == partition)
    }

    fn bump_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }
}
