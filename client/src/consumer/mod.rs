//! The consumer: reads partitions from their positions onwards, assigned by hand or by a
//! consumer group's coordinator.
//!
//! # Reading
//!
//! Each partition the consumer reads has at most one fetch in flight, a long poll of up to
//! `max_wait_ms`; the fetches of all partitions run concurrently and [`Consumer::poll`] returns
//! the records of whichever answer first. A partition's position is the next offset to fetch;
//! [`Consumer::seek`] moves it (by offset, to either end, or by time) and discards what was
//! fetched from the old position.
//!
//! # Manual assignment
//!
//! [`Consumer::assign`] and [`Consumer::assign_all`] pick partitions by hand; they start at the
//! configured `start`. With a `group_id` in the config, such a consumer can still commit its
//! positions to the group (as a consumer outside group management, allowed while the group has
//! no members).
//!
//! # Consumer groups
//!
//! [`Consumer::subscribe`] (needs `group_id`; excludes manual assignment) makes the consumer a
//! member of its group. A background task per subscribed consumer (`heartbeat`) joins the group
//! and heartbeats with the partitions the consumer owns; the coordinator (the leader of the
//! group's `__consumer_offsets` partition) computes the assignment, incrementally: a partition
//! moves only after its previous owner reported it released, so no two members read it at once.
//!
//! Rebalances happen inside `poll`, before it returns any record (`group`): partitions revoked
//! are given up first (their consumed positions committed when `auto_commit` is on, then
//! [`RebalanceListener::on_revoked`], then their fetches and buffered records dropped and their
//! release reported at once), then assigned partitions are taken on from their committed offsets
//! (else `start`) and [`RebalanceListener::on_assigned`] runs. `poll` waits (it does not fail)
//! while the member owns nothing. A committed offset that is out of range (removed by
//! retention) restarts the partition from `start`, unless `start` is an explicit offset.
//!
//! The *consumed position* of a partition is the offset after the last record `poll` or
//! `stream` returned, not what is buffered: that is what [`Consumer::commit`], auto-commit
//! (every `auto_commit_interval_ms`, at the start of `poll`; before a revocation; on `close`)
//! and [`GroupCommitter::commit`] commit. Commits carry the member's id and epoch; a member the
//! coordinator fenced loses its partitions ([`RebalanceListener::on_lost`]) and joins again.
//!
//! Liveness: a member that does not call `poll` for `poll_timeout_ms` leaves the group (its
//! partitions go to others, and count as lost; the next `poll` joins again); one whose
//! heartbeats went unanswered for the session timeout drops its partitions (the coordinator has
//! evicted it) and joins again. [`Consumer::close`] commits, leaves and stops the task; dropping
//! a subscribed consumer also leaves, in the background.

mod fetch;
mod group;
mod heartbeat;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

pub use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::config::{ClientConfig, ConsumerConfig, SeekTo};
use crate::error::{Error, Result};
use crate::record::ConsumerRecord;
use crate::types::TopicPartition;
pub(crate) use fetch::list_offset;
pub use fetch::Watermarks;
use fetch::{FetchOutcome, Start};
use group::{wire_offset, CommitTarget, Membership, Shared};
pub use group::{GroupCommitter, RebalanceListener};

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
    /// The offset after the last record returned by `poll`/`stream` (or the position reading
    /// started at, or the latest seek): what a commit of this partition sends.
    consumed: Option<u64>,
    /// The group's committed offset as this consumer last learned it (fetched when the
    /// partition was assigned, or committed since); auto-commit skips positions not past it.
    committed: Option<u64>,
}

/// Reads records from partitions assigned by hand or by its consumer group.
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    /// The partitions read: assigned by hand, or owned as a group member.
    assigned: Vec<Assigned>,
    in_flight: FuturesUnordered<BoxFuture<'static, FetchOutcome>>,
    /// Records fetched but not yet handed out, in fetch order.
    buffered: VecDeque<ConsumerRecord>,
    next_epoch: u64,
    /// Set by `subscribe`.
    membership: Option<Membership>,
    listener: Option<Box<dyn RebalanceListener>>,
    next_auto_commit: Instant,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("assigned", &self.assigned)
            .field("buffered", &self.buffered.len())
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer with its own connections.
    pub fn new(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::with_cluster(Cluster::new(client)?, config))
    }

    pub(crate) fn with_cluster(cluster: Arc<Cluster>, config: ConsumerConfig) -> Self {
        let next_auto_commit = Instant::now() + Duration::from_millis(config.auto_commit_interval_ms);
        Self {
            cluster,
            config,
            assigned: Vec::new(),
            in_flight: FuturesUnordered::new(),
            buffered: VecDeque::new(),
            next_epoch: 0,
            membership: None,
            listener: None,
            next_auto_commit,
        }
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Adds partitions of `topic` to the assignment, starting at the configured `start`.
    /// Partitions already assigned keep their position. Not for a subscribed consumer.
    pub async fn assign(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        if self.membership.is_some() {
            return Err(Error::InvalidArgument(
                "this consumer is subscribed: its group assigns its partitions (assign and subscribe are \
                 mutually exclusive)"
                    .into(),
            ));
        }
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
                consumed: None,
                committed: None,
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

    /// Removes the topic's partitions from the assignment. Does nothing to a subscribed
    /// consumer, whose group decides what it reads.
    pub fn unassign(&mut self, topic: &str) {
        if self.membership.is_some() {
            tracing::warn!(topic, "unassign ignored: the consumer is subscribed");
            return;
        }
        self.assigned.retain(|assigned| assigned.topic != topic);
        self.buffered.retain(|record| record.topic != topic);
    }

    /// The partitions read (assigned by hand, or owned as a group member), in assignment order.
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
        assigned.consumed = Some(offset);
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

    /// Waits for the next records of any partition read and returns them (never an empty
    /// list). Retriable errors are retried for `retry_timeout_ms` before they are returned; an
    /// error concerns one partition, and the next call fetches it again (after an
    /// `OffsetOutOfRange`, seek first). A subscribed consumer carries out rebalances here first
    /// and waits while it owns no partition. Cancel-safe: dropping the future loses no records
    /// (a rebalance it interrupted is finished by the next call; its listener callbacks may run
    /// again).
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.fill().await?;
        let records: Vec<ConsumerRecord> = self.buffered.drain(..).collect();
        for record in &records {
            self.note_consumed(record);
        }
        Ok(records)
    }

    /// The records of every partition read, one at a time, without end. An error is yielded
    /// and reading goes on; drop the stream to stop.
    pub fn stream(&mut self) -> impl Stream<Item = Result<ConsumerRecord>> + Unpin + Send + '_ {
        Box::pin(futures::stream::unfold(self, |consumer| async move {
            let next = match consumer.fill().await {
                Ok(()) => match consumer.buffered.pop_front() {
                    Some(record) => {
                        consumer.note_consumed(&record);
                        Ok(record)
                    }
                    None => Err(Error::Internal("no record after fill".into())),
                },
                Err(error) => Err(error),
            };
            Some((next, consumer))
        }))
    }

    /// Advances the consumed position of a record's partition as it is handed out.
    fn note_consumed(&mut self, record: &ConsumerRecord) {
        if let Some(index) = self.find(&record.topic, record.partition) {
            self.assigned[index].consumed = Some(record.offset + 1);
        }
    }

    /// Fetches until at least one record is buffered.
    async fn fill(&mut self) -> Result<()> {
        let _polling = self.membership.as_ref().map(|membership| membership.shared.polling());
        self.maybe_auto_commit().await;
        loop {
            self.reconcile().await?;
            if !self.buffered.is_empty() {
                return Ok(());
            }
            let Some(shared) = self.membership.as_ref().map(|membership| membership.shared.clone()) else {
                if self.assigned.is_empty() {
                    return Err(Error::InvalidArgument("no partitions assigned".into()));
                }
                self.start_fetches();
                let Some(outcome) = self.in_flight.next().await else {
                    return Err(Error::Internal("no fetch in flight".into()));
                };
                self.apply(outcome)?;
                continue;
            };
            self.start_fetches();
            // A member waits for records, or for news from its heartbeat task.
            tokio::select! {
                Some(outcome) = self.in_flight.next(), if !self.in_flight.is_empty() => self.apply(outcome)?,
                () = shared.to_consumer.notified() => {}
            }
        }
    }

    /// Joins the consumer group (`group_id`) and reads the partitions its coordinator assigns
    /// from the subscribed topics; see the module doc. Called again, it changes the
    /// subscription. Must be called within a tokio runtime (it starts the heartbeat task).
    pub fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        self.config.validate()?;
        if self.config.group_id.is_none() {
            return Err(Error::Config("subscribe needs a group_id in the ConsumerConfig".into()));
        }
        if topics.is_empty() || topics.iter().any(|topic| topic.is_empty()) {
            return Err(Error::InvalidArgument("subscribe needs one or more topic names".into()));
        }
        if self.membership.is_none() && !self.assigned.is_empty() {
            return Err(Error::InvalidArgument(
                "this consumer has partitions assigned by hand: assign and subscribe are mutually exclusive \
                 (unassign them first)"
                    .into(),
            ));
        }
        let mut topics: Vec<String> = topics.iter().map(|topic| (*topic).to_owned()).collect();
        topics.sort();
        topics.dedup();
        if let Some(membership) = &self.membership {
            let mut state = membership.shared.lock();
            if state.topics != topics {
                state.topics = topics;
                state.topics_changed = true;
                membership.shared.to_task.notify_one();
            }
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("subscribe must be called within a tokio runtime".into()))?;
        let shared = Arc::new(Shared::new(topics));
        let task = runtime.spawn(heartbeat::run(
            self.cluster.clone(),
            self.config.clone(),
            shared.clone(),
        ));
        self.membership = Some(Membership {
            shared,
            task: Some(task),
            seen_assignment: 0,
            seen_lost: 0,
        });
        Ok(())
    }

    /// Sets what sees this consumer's rebalances (replacing any previous listener).
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Some(Box::new(listener));
    }

    /// The member id the coordinator gave this consumer; `None` unless subscribed and joined.
    pub fn member_id(&self) -> Option<String> {
        let membership = self.membership.as_ref()?;
        membership.shared.identity().map(|(member_id, _)| member_id)
    }

    /// The member's epoch (changes with its assignment); `None` unless subscribed and joined.
    pub fn member_epoch(&self) -> Option<i64> {
        let membership = self.membership.as_ref()?;
        membership.shared.identity().map(|(_, epoch)| epoch)
    }

    /// Commits the consumed position (the offset after the last record returned) of every
    /// partition read, and waits for the coordinator's answer. Needs a `group_id`. A subscribed
    /// consumer commits as its member; a fenced answer (`Error::Fenced`) means its partitions
    /// are lost, and the next `poll` drops them. Committed offsets move backwards only through
    /// an admin reset: after a `seek` behind the committed offset, the commit is refused
    /// (`InvalidArgument`).
    pub async fn commit(&mut self) -> Result<()> {
        self.commit_consumed(None, true).await
    }

    /// Commits explicit offsets: (topic, partition, next offset to consume, metadata). The
    /// group's committed offsets never move backwards: an offset below the committed one is
    /// refused (`InvalidArgument`).
    pub async fn commit_offsets(&mut self, offsets: &[(&str, u32, u64, &str)]) -> Result<()> {
        let Some(group) = self.config.group_id.clone() else {
            return Err(Error::Config("commits need a group_id in the ConsumerConfig".into()));
        };
        let offsets: Vec<weir_proto::v1::CommitOffset> = offsets
            .iter()
            .map(|(topic, partition, offset, metadata)| wire_offset(topic, *partition, *offset, metadata))
            .collect();
        let target = CommitTarget {
            cluster: &self.cluster,
            group: &group,
            shared: self.membership.as_ref().map(|membership| &*membership.shared),
            retry_timeout: Duration::from_millis(self.config.retry_timeout_ms),
        };
        target.commit(offsets.clone()).await?;
        self.note_committed(&offsets);
        Ok(())
    }

    /// The group's committed offset of a partition (the next offset to consume); `None` if
    /// nothing is committed. Needs a `group_id`.
    pub async fn committed(&self, topic: &str, partition: u32) -> Result<Option<u64>> {
        let Some(group) = &self.config.group_id else {
            return Err(Error::Config(
                "committed offsets need a group_id in the ConsumerConfig".into(),
            ));
        };
        let retry_timeout = Duration::from_millis(self.config.retry_timeout_ms);
        let wanted = [TopicPartition::new(topic, partition)];
        let offsets = group::fetch_committed(&self.cluster, group, &wanted, retry_timeout).await?;
        Ok(offsets
            .into_iter()
            .find(|offset| offset.topic == topic && offset.partition == partition)
            .and_then(|offset| u64::try_from(offset.offset).ok()))
    }

    /// Stops consuming: with auto-commit, commits the consumed positions; a subscribed consumer
    /// then gives its partitions up (`on_revoked`) and leaves the group (a static member leaves
    /// for a restart and keeps its partitions until it rejoins or its session times out), and
    /// its heartbeat task stops. Returns the commit's error, if any, after leaving.
    pub async fn close(mut self) -> Result<()> {
        let committed = if self.config.auto_commit && self.config.group_id.is_some() {
            self.commit_consumed(None, false).await
        } else {
            Ok(())
        };
        // Partitions lost meanwhile (the commit may have found the member fenced) are lost,
        // not revoked.
        let lost = self
            .membership
            .as_ref()
            .map(|membership| (membership.shared.lock().lost_version, membership.seen_lost));
        if let Some((lost_version, _)) = lost.filter(|(version, seen)| version != seen) {
            self.lose_all(lost_version).await;
        }
        let owned: Vec<TopicPartition> = self.owned().into_iter().collect();
        if self.membership.is_some() && !owned.is_empty() {
            let committer = self.committer();
            if let Some(listener) = self.listener.as_mut() {
                listener.on_revoked(&owned, &committer).await;
            }
            self.drop_partitions(&owned);
        }
        let Some(mut membership) = self.membership.take() else {
            return committed;
        };
        membership.shared.close();
        if let Some(task) = membership.task.take() {
            // The task leaves within its own bound; this one only guards against a task that
            // cannot run (a runtime shutting down).
            let bound = self.cluster.config().request_timeout() + Duration::from_secs(10);
            if tokio::time::timeout(bound, task).await.is_err() {
                tracing::warn!("the heartbeat task did not stop in time");
            }
        }
        committed
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
        let fetched = match outcome.result {
            // A group member's committed offset that retention removed (or that is past a
            // truncated log): start over from `start`, like Kafka's auto.offset.reset.
            Err(Error::OffsetOutOfRange { start, end, .. })
                if self.membership.is_some() && !matches!(self.config.start, SeekTo::Offset(_)) =>
            {
                tracing::warn!(topic = %assigned.topic, partition = assigned.partition, ?start, ?end,
                    reset_to = ?self.config.start, "position out of range; resetting");
                assigned.position = None;
                assigned.seek = self.config.start;
                assigned.consumed = None;
                return Ok(());
            }
            result => result?,
        };
        // Reading started here: a commit before any record is returned keeps this position.
        assigned.consumed.get_or_insert(fetched.offset);
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

impl Drop for Consumer {
    /// A subscribed consumer's heartbeat task leaves the group in the background and stops.
    fn drop(&mut self) {
        if let Some(membership) = &self.membership {
            membership.shared.close();
        }
    }
}
