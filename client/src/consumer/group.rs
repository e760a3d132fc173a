//! Consumer-group membership, the consumer's side: what the heartbeat task and `poll` share,
//! the rebalance that `poll` carries out, commits, and the listener that sees rebalances.
//!
//! Two parties share one [`Shared`]:
//! - the heartbeat task (`heartbeat.rs`) talks to the coordinator. It writes the member's id,
//!   epoch and latest assignment, and declares the partitions lost when the member is fenced,
//!   its session expired or it left because `poll` stopped being called. It wakes `poll`.
//! - `poll`, in the user's task, owns the partitions: it compares the assignment with what it
//!   owns ([`plan`]), gives up revoked partitions first (commit, `on_revoked`, drop their
//!   fetches and records, report them released) and then takes on assigned ones (committed
//!   offsets, `on_assigned`). It writes the owned set and wakes the task, which reports it in a
//!   new heartbeat at once: the coordinator hands a partition to another member only after
//!   that report.
//!
//! A loss (`lost_version`) always comes first: `poll` drops every partition (`on_lost`, no
//! commit, since another member may own them already) before it looks at any assignment, and
//! an owned set written by `poll` is ignored if a loss happened since `poll` read the state, so
//! a lost partition is never reported owned again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;
use weir_proto::v1 as proto;

use super::{Assigned, Consumer};
use crate::cluster::Cluster;
use crate::error::{Context, Error, Result};
use crate::types::TopicPartition;

/// Sees a subscribed consumer's rebalances. Every method runs inside `poll` (so records are
/// never returned for a partition the consumer no longer owns), and defaults to doing nothing.
///
/// Implement the methods as `Box::pin(async move { ... })`:
///
/// ```
/// use weir_client::consumer::{BoxFuture, GroupCommitter, RebalanceListener};
/// use weir_client::TopicPartition;
///
/// struct Log;
///
/// impl RebalanceListener for Log {
///     fn on_revoked<'a>(
///         &'a mut self,
///         revoked: &'a [TopicPartition],
///         commits: &'a GroupCommitter,
///     ) -> BoxFuture<'a, ()> {
///         Box::pin(async move {
///             // With auto-commit off: commit what was processed before the partitions go.
///             if let Err(error) = commits.commit().await {
///                 eprintln!("commit before revoking {revoked:?} failed: {error}");
///             }
///         })
///     }
/// }
/// ```
pub trait RebalanceListener: Send {
    /// `revoked` are about to be given up: their consumed positions were already committed
    /// when auto-commit is on; `commits` can commit more. No record of them is returned after
    /// this.
    fn on_revoked<'a>(&'a mut self, revoked: &'a [TopicPartition], commits: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        let _ = (revoked, commits);
        Box::pin(async {})
    }

    /// `assigned` are now owned; reading starts at their committed offsets (or the configured
    /// `start`). A `seek` from here on moves them.
    fn on_assigned<'a>(&'a mut self, assigned: &'a [TopicPartition], commits: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        let _ = (assigned, commits);
        Box::pin(async {})
    }

    /// `lost` were taken away without a chance to commit: the member was fenced or evicted
    /// (session timeout, poll timeout), and other members may own them already.
    fn on_lost<'a>(&'a mut self, lost: &'a [TopicPartition]) -> BoxFuture<'a, ()> {
        let _ = lost;
        Box::pin(async {})
    }
}

/// Commits from inside a [`RebalanceListener`] callback, as the member that owns the
/// partitions at that moment.
#[derive(Debug)]
pub struct GroupCommitter {
    cluster: Arc<Cluster>,
    group: String,
    shared: Option<Arc<Shared>>,
    retry_timeout: Duration,
    /// Consumed positions of the partitions owned when the callback began.
    consumed: BTreeMap<TopicPartition, u64>,
}

impl GroupCommitter {
    /// The consumed position (offset after the last record returned) of an owned partition.
    pub fn consumed(&self, topic: &str, partition: u32) -> Option<u64> {
        self.consumed.get(&TopicPartition::new(topic, partition)).copied()
    }

    /// Commits the consumed positions of every partition owned when the callback began.
    pub async fn commit(&self) -> Result<()> {
        let offsets = self
            .consumed
            .iter()
            .map(|(tp, offset)| wire_offset(&tp.topic, tp.partition, *offset, ""))
            .collect();
        self.commit_wire(offsets).await
    }

    /// Commits explicit offsets: (topic, partition, next offset to consume, metadata).
    pub async fn commit_offsets(&self, offsets: &[(&str, u32, u64, &str)]) -> Result<()> {
        let offsets = offsets
            .iter()
            .map(|(topic, partition, offset, metadata)| wire_offset(topic, *partition, *offset, metadata))
            .collect();
        self.commit_wire(offsets).await
    }

    async fn commit_wire(&self, offsets: Vec<proto::CommitOffset>) -> Result<()> {
        let target = CommitTarget {
            cluster: &self.cluster,
            group: &self.group,
            shared: self.shared.as_deref(),
            retry_timeout: self.retry_timeout,
        };
        target.commit(offsets).await
    }
}

/// What a rebalance changes: partitions to give up, then partitions to take on. Both sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rebalance {
    pub(crate) revoked: Vec<TopicPartition>,
    pub(crate) assigned: Vec<TopicPartition>,
}

/// Compares what the consumer owns with the coordinator's assignment.
pub(crate) fn plan(owned: &BTreeSet<TopicPartition>, assignment: &BTreeSet<TopicPartition>) -> Rebalance {
    Rebalance {
        revoked: owned.difference(assignment).cloned().collect(),
        assigned: assignment.difference(owned).cloned().collect(),
    }
}

/// The member as the coordinator last described it, and what the consumer owns.
#[derive(Debug)]
pub(super) struct MemberState {
    /// Subscribed topics, sorted.
    pub(super) topics: Vec<String>,
    /// The next heartbeat must carry the topics: `subscribe` changed them.
    pub(super) topics_changed: bool,
    /// Empty until the coordinator answers a join.
    pub(super) member_id: String,
    /// 0 while (re)joining.
    pub(super) member_epoch: i64,
    /// The partitions the coordinator says the member may own.
    pub(super) assignment: BTreeSet<TopicPartition>,
    /// Bumped whenever `assignment` changes.
    pub(super) assignment_version: u64,
    /// The partitions `poll` owns (reads); reported in every heartbeat.
    pub(super) owned: BTreeSet<TopicPartition>,
    /// Bumped whenever the member loses its partitions; see the module doc.
    pub(super) lost_version: u64,
    /// True while `poll` (or a `stream` item) is being awaited: the user is reading.
    pub(super) polling: bool,
    /// When `poll` last returned (or began, if it is running).
    pub(super) last_poll: Instant,
    /// The member left because `poll` was not called for `poll_timeout_ms`; the next `poll`
    /// joins again.
    pub(super) left_idle: bool,
    pub(super) closing: bool,
    /// An error of the heartbeat task for `poll` to report (once).
    pub(super) error: Option<Error>,
}

/// What the heartbeat task and the consumer share; see the module doc.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<MemberState>,
    /// Wakes `poll`: the assignment changed, partitions were lost, or an error waits.
    pub(super) to_consumer: Notify,
    /// Wakes the heartbeat task: the owned set changed, `poll` resumed after an idle leave,
    /// or the consumer closes. The task drops its outstanding heartbeat and sends a new one.
    pub(super) to_task: Notify,
}

/// The id a member joins with: random, new for every incarnation (a join retried after a lost
/// answer then finds the member it created instead of making a second one).
fn fresh_member_id() -> String {
    format!("member-{:032x}", rand::random::<u128>())
}

impl Shared {
    pub(super) fn new(topics: Vec<String>) -> Self {
        Self {
            state: Mutex::new(MemberState {
                topics,
                topics_changed: false,
                member_id: fresh_member_id(),
                member_epoch: 0,
                assignment: BTreeSet::new(),
                assignment_version: 0,
                owned: BTreeSet::new(),
                lost_version: 0,
                polling: false,
                last_poll: Instant::now(),
                left_idle: false,
                closing: false,
                error: None,
            }),
            to_consumer: Notify::new(),
            to_task: Notify::new(),
        }
    }

    /// Locks the state, ignoring poisoning: every critical section leaves it consistent.
    pub(super) fn lock(&self) -> MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The member's id and epoch while it is a member (joined and not lost since).
    pub(super) fn identity(&self) -> Option<(String, i64)> {
        let state = self.lock();
        (state.member_epoch > 0).then(|| (state.member_id.clone(), state.member_epoch))
    }

    /// Declares the partitions lost and makes the member join again; wakes `poll`.
    pub(super) fn lose(&self, state: &mut MemberState, reason: &str) {
        tracing::warn!(member = %state.member_id, reason, "consumer group member lost its partitions; rejoining");
        state.member_id = fresh_member_id();
        state.member_epoch = 0;
        if !state.assignment.is_empty() {
            state.assignment.clear();
            state.assignment_version += 1;
        }
        state.owned.clear();
        state.lost_version += 1;
        self.to_consumer.notify_one();
    }

    /// A commit of `member_id` was answered "fenced": unless the member rejoined since, it
    /// has lost its partitions.
    pub(super) fn fence(&self, member_id: &str, reason: &str) {
        let mut state = self.lock();
        if state.member_epoch > 0 && state.member_id == member_id {
            self.lose(&mut state, reason);
            self.to_task.notify_one(); // drop the outstanding heartbeat and join again
        }
    }

    /// Records what `poll` owns, unless the member lost its partitions after `lost_version`
    /// (then `poll` must drop them first). Wakes the heartbeat task if the set changed.
    /// Takes on the partitions of `assigned` that are still assigned (a newer answer may have
    /// taken some back while their offsets were fetched: the coordinator then hands them to
    /// another member as soon as a heartbeat does not list them), adding them to `owned` in the
    /// same step; `None` if the member was lost since `lost_version`.
    pub(super) fn claim(
        &self,
        mut owned: BTreeSet<TopicPartition>,
        assigned: &[TopicPartition],
        lost_version: u64,
    ) -> Option<Vec<TopicPartition>> {
        let mut state = self.lock();
        if state.lost_version != lost_version {
            return None;
        }
        let claimed: Vec<TopicPartition> = assigned
            .iter()
            .filter(|tp| state.assignment.contains(*tp))
            .cloned()
            .collect();
        owned.extend(claimed.iter().cloned());
        if state.owned != owned {
            state.owned = owned;
            self.to_task.notify_one();
        }
        Some(claimed)
    }

    pub(super) fn set_owned(&self, owned: BTreeSet<TopicPartition>, lost_version: u64) -> bool {
        let mut state = self.lock();
        if state.lost_version != lost_version {
            return false;
        }
        if state.owned != owned {
            state.owned = owned;
            self.to_task.notify_one();
        }
        true
    }

    /// Marks `poll` as running until the guard drops; a member that left for being idle
    /// joins again.
    pub(super) fn polling(self: &Arc<Self>) -> PollGuard {
        let mut state = self.lock();
        state.polling = true;
        state.last_poll = Instant::now();
        if state.left_idle {
            state.left_idle = false;
            self.to_task.notify_one();
        }
        PollGuard { shared: self.clone() }
    }

    /// Asks the heartbeat task to leave the group and stop.
    pub(super) fn close(&self) {
        self.lock().closing = true;
        self.to_task.notify_one();
    }
}

/// Ends a `poll` for the liveness check, also when the `poll` future is dropped.
pub(super) struct PollGuard {
    shared: Arc<Shared>,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.polling = false;
        state.last_poll = Instant::now();
    }
}

/// A subscribed consumer's membership: the state shared with its heartbeat task.
#[derive(Debug)]
pub(super) struct Membership {
    pub(super) shared: Arc<Shared>,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    /// The `assignment_version` that `poll` has carried out.
    pub(super) seen_assignment: u64,
    /// The `lost_version` that `poll` has carried out.
    pub(super) seen_lost: u64,
}

/// Where commits go and as whom.
pub(super) struct CommitTarget<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) group: &'a str,
    /// The membership of a subscribed consumer; `None`: a consumer outside group management.
    pub(super) shared: Option<&'a Shared>,
    pub(super) retry_timeout: Duration,
}

impl CommitTarget<'_> {
    /// Commits as the current member (or as a consumer outside group management: member ""
    /// and epoch -1). A fenced answer makes the member lose its partitions.
    pub(super) async fn commit(&self, offsets: Vec<proto::CommitOffset>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (member_id, member_epoch) = match self.shared {
            Some(shared) => shared.identity().ok_or_else(|| {
                Error::Fenced("not a member of the group right now (joining); nothing committed".into())
            })?,
            None => (String::new(), -1),
        };
        let timeout = self.cluster.config().request_timeout();
        let group = self.group;
        let result = self
            .cluster
            .with_coordinator(group, self.retry_timeout, true, |mut client| {
                let request = self.cluster.request(
                    proto::CommitOffsetsRequest {
                        group: group.to_owned(),
                        member_id: member_id.clone(),
                        member_epoch,
                        offsets: offsets.clone(),
                    },
                    timeout,
                );
                async move {
                    client
                        .commit_offsets(request)
                        .await
                        .map(|_| ())
                        .map_err(|status| Error::from_status(status, &Context::group(group)))
                }
            })
            .await;
        if let (Err(Error::Fenced(reason)), Some(shared)) = (&result, self.shared) {
            shared.fence(&member_id, reason);
        }
        result
    }
}

pub(super) fn wire_offset(topic: &str, partition: u32, offset: u64, metadata: &str) -> proto::CommitOffset {
    proto::CommitOffset {
        topic: topic.to_owned(),
        partition,
        offset,
        metadata: metadata.to_owned(),
    }
}

/// The group's committed offsets of `partitions` (all committed partitions when empty);
/// `None` where nothing is committed. An unknown group has nothing committed.
pub(crate) async fn fetch_committed(
    cluster: &Cluster,
    group: &str,
    partitions: &[TopicPartition],
    retry_timeout: Duration,
) -> Result<Vec<proto::CommittedOffset>> {
    let timeout = cluster.config().request_timeout();
    let wanted = crate::types::to_wire_partitions(partitions);
    let result = cluster
        .with_coordinator(group, retry_timeout, true, |mut client| {
            let request = cluster.request(
                proto::FetchOffsetsRequest {
                    group: group.to_owned(),
                    partitions: wanted.clone(),
                },
                timeout,
            );
            async move {
                client
                    .fetch_offsets(request)
                    .await
                    .map(|response| response.into_inner().offsets)
                    .map_err(|status| Error::from_status(status, &Context::group(group)))
            }
        })
        .await;
    match result {
        Err(Error::GroupNotFound { .. }) => Ok(Vec::new()),
        other => other,
    }
}

impl Consumer {
    /// Carries out what the heartbeat task reported: losses first, then revocations, then
    /// assignments, until the consumer owns what the coordinator assigned. Returns an error
    /// the task left for `poll`.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        loop {
            let Some(membership) = &self.membership else {
                return Ok(());
            };
            let shared = membership.shared.clone();
            let (lost_version, assignment_version, assignment, error) = {
                let mut state = shared.lock();
                (
                    state.lost_version,
                    state.assignment_version,
                    state.assignment.clone(),
                    state.error.take(),
                )
            };
            if let Some(error) = error {
                return Err(error);
            }
            if lost_version != membership.seen_lost {
                self.lose_all(lost_version).await;
                continue;
            }
            if assignment_version == membership.seen_assignment {
                return Ok(());
            }
            let rebalance = plan(&self.owned(), &assignment);
            if !rebalance.revoked.is_empty() && !self.revoke(&rebalance.revoked, &shared, lost_version).await {
                continue; // lost meanwhile
            }
            if !rebalance.assigned.is_empty() && !self.take_on(&rebalance.assigned, &shared, lost_version).await? {
                continue;
            }
            if let Some(membership) = &mut self.membership {
                membership.seen_assignment = assignment_version;
            }
        }
    }

    /// Drops every owned partition without committing, and tells the listener.
    pub(super) async fn lose_all(&mut self, lost_version: u64) {
        let lost: Vec<TopicPartition> = self.owned().into_iter().collect();
        self.drop_partitions(&lost);
        if let Some(membership) = &mut self.membership {
            membership.seen_lost = lost_version;
        }
        if lost.is_empty() {
            return;
        }
        if let Some(listener) = self.listener.as_mut() {
            listener.on_lost(&lost).await;
        }
    }

    /// Gives up `revoked`: commit (auto-commit), `on_revoked`, drop, report released. False
    /// if the member lost its partitions meanwhile.
    async fn revoke(&mut self, revoked: &[TopicPartition], shared: &Shared, lost_version: u64) -> bool {
        if self.config.auto_commit {
            if let Err(error) = self.commit_consumed(Some(revoked), false).await {
                tracing::warn!(%error, "committing revoked partitions failed");
            }
        }
        let committer = self.committer();
        if let Some(listener) = self.listener.as_mut() {
            listener.on_revoked(revoked, &committer).await;
        }
        self.drop_partitions(revoked);
        shared.set_owned(self.owned(), lost_version)
    }

    /// Takes on `assigned` from their committed offsets and tells the listener. False if the
    /// member lost its partitions meanwhile.
    async fn take_on(&mut self, assigned: &[TopicPartition], shared: &Shared, lost_version: u64) -> Result<bool> {
        let group = self.config.group_id.clone().unwrap_or_default();
        let retry_timeout = Duration::from_millis(self.config.retry_timeout_ms);
        let committed = fetch_committed(&self.cluster, &group, assigned, retry_timeout).await?;
        let committed: BTreeMap<TopicPartition, u64> = committed
            .into_iter()
            .filter_map(|c| Some((TopicPartition::new(c.topic, c.partition), u64::try_from(c.offset).ok()?)))
            .collect();
        let Some(claimed) = shared.claim(self.owned(), assigned, lost_version) else {
            // Lost before the listener heard of them: they go without `on_lost`.
            return Ok(false);
        };
        for tp in &claimed {
            let epoch = self.bump_epoch();
            let offset = committed.get(tp).copied();
            self.assigned.push(Assigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
                position: offset,
                seek: self.config.start,
                epoch,
                fetching: false,
                watermarks: None,
                consumed: offset,
                committed: offset,
            });
        }
        if claimed.is_empty() {
            return Ok(true);
        }
        let committer = self.committer();
        if let Some(listener) = self.listener.as_mut() {
            listener.on_assigned(&claimed, &committer).await;
        }
        Ok(true)
    }

    /// The partitions the consumer reads.
    pub(super) fn owned(&self) -> BTreeSet<TopicPartition> {
        self.assigned
            .iter()
            .map(|assigned| TopicPartition::new(assigned.topic.clone(), assigned.partition))
            .collect()
    }

    /// Stops reading `partitions`: their fetches become stale, their records are discarded.
    pub(super) fn drop_partitions(&mut self, partitions: &[TopicPartition]) {
        let dropped: BTreeSet<(&str, u32)> = partitions.iter().map(|tp| (tp.topic.as_str(), tp.partition)).collect();
        self.assigned
            .retain(|assigned| !dropped.contains(&(assigned.topic.as_str(), assigned.partition)));
        self.buffered
            .retain(|record| !dropped.contains(&(record.topic.as_str(), record.partition)));
    }

    pub(super) fn committer(&self) -> GroupCommitter {
        GroupCommitter {
            cluster: self.cluster.clone(),
            group: self.config.group_id.clone().unwrap_or_default(),
            shared: self.membership.as_ref().map(|membership| membership.shared.clone()),
            retry_timeout: Duration::from_millis(self.config.retry_timeout_ms),
            consumed: self
                .assigned
                .iter()
                .filter_map(|a| Some((TopicPartition::new(a.topic.clone(), a.partition), a.consumed?)))
                .collect(),
        }
    }

    /// Commits consumed positions of the owned partitions (only `only`, if given) that moved
    /// past what is known to be committed. `explicit`: a position behind the committed offset
    /// is sent too (and refused by the coordinator) instead of being skipped.
    pub(super) async fn commit_consumed(&mut self, only: Option<&[TopicPartition]>, explicit: bool) -> Result<()> {
        let Some(group) = self.config.group_id.clone() else {
            return Err(Error::Config("commits need a group_id in the ConsumerConfig".into()));
        };
        let wanted = |assigned: &Assigned| {
            only.is_none_or(|only| {
                only.iter()
                    .any(|tp| tp.topic == assigned.topic && tp.partition == assigned.partition)
            })
        };
        let offsets: Vec<proto::CommitOffset> = self
            .assigned
            .iter()
            .filter(|assigned| wanted(assigned))
            .filter_map(|assigned| {
                let consumed = assigned.consumed?;
                let ahead = assigned.committed.is_none_or(|committed| consumed > committed);
                let behind = assigned.committed.is_some_and(|committed| consumed < committed);
                (ahead || (explicit && behind)).then(|| wire_offset(&assigned.topic, assigned.partition, consumed, ""))
            })
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

    /// Remembers committed offsets, so that auto-commit sends only what moved.
    pub(super) fn note_committed(&mut self, offsets: &[proto::CommitOffset]) {
        for offset in offsets {
            if let Some(index) = self.find(&offset.topic, offset.partition) {
                self.assigned[index].committed = Some(offset.offset);
            }
        }
    }

    /// Auto-commit: once every `auto_commit_interval_ms`, at the start of `poll`, so what the
    /// previous `poll` returned (and the user processed) is committed. Errors are logged; a
    /// fenced member loses its partitions, which the rebalance in `poll` then drops.
    pub(super) async fn maybe_auto_commit(&mut self) {
        if !self.config.auto_commit || self.config.group_id.is_none() || Instant::now() < self.next_auto_commit {
            return;
        }
        self.next_auto_commit = Instant::now() + Duration::from_millis(self.config.auto_commit_interval_ms);
        let joining = self
            .membership
            .as_ref()
            .is_some_and(|membership| membership.shared.identity().is_none());
        if joining {
            return; // nothing is owned for sure; the rebalance sorts it out
        }
        if let Err(error) = self.commit_consumed(None, false).await {
            tracing::warn!(%error, "auto-commit failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(partitions: &[(&str, u32)]) -> BTreeSet<TopicPartition> {
        partitions
            .iter()
            .map(|(topic, partition)| TopicPartition::new(*topic, *partition))
            .collect()
    }

    #[test]
    fn a_rebalance_revokes_what_is_no_longer_assigned_and_assigns_the_rest() {
        let owned = set(&[("a", 0), ("a", 1), ("b", 0)]);
        let assignment = set(&[("a", 1), ("b", 0), ("b", 1), ("c", 0)]);
        let rebalance = plan(&owned, &assignment);
        assert_eq!(rebalance.revoked, vec![TopicPartition::new("a", 0)]);
        assert_eq!(
            rebalance.assigned,
            vec![TopicPartition::new("b", 1), TopicPartition::new("c", 0)]
        );
        assert_eq!(plan(&owned, &owned), Rebalance::default(), "nothing moves");
        let everything = plan(&owned, &BTreeSet::new());
        assert_eq!(everything.revoked.len(), 3);
        assert!(everything.assigned.is_empty());
    }

    #[tokio::test]
    async fn a_loss_wins_over_a_stale_owned_report() {
        let shared = Shared::new(vec!["t".into()]);
        let before = shared.lock().lost_version;
        {
            let mut state = shared.lock();
            state.member_id = "m".into();
            state.member_epoch = 3;
            state.assignment = set(&[("t", 0)]);
            state.assignment_version = 1;
        }
        assert!(shared.set_owned(set(&[("t", 0)]), before));
        assert_eq!(shared.identity(), Some(("m".to_owned(), 3)));
        shared.fence("someone-else", "not us");
        assert_eq!(
            shared.identity(),
            Some(("m".to_owned(), 3)),
            "another member's fence is ignored"
        );
        shared.fence("m", "evicted");
        let state = shared.lock();
        assert!(state.owned.is_empty() && state.assignment.is_empty());
        assert_eq!((state.member_epoch, state.lost_version), (0, before + 1));
        assert_eq!(state.assignment_version, 2, "the cleared assignment is a change");
        drop(state);
        assert!(shared.identity().is_none());
        assert!(
            !shared.set_owned(set(&[("t", 0)]), before),
            "poll must drop its partitions before it reports owning any"
        );
        assert!(shared.lock().owned.is_empty());
    }

    #[tokio::test]
    async fn the_poll_guard_marks_activity_and_resumes_an_idle_member() {
        tokio::time::pause();
        let shared = Arc::new(Shared::new(vec!["t".into()]));
        shared.lock().left_idle = true;
        let guard = shared.polling();
        assert!(shared.lock().polling);
        assert!(!shared.lock().left_idle);
        // The task was woken to join again.
        assert!(futures::FutureExt::now_or_never(shared.to_task.notified()).is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(guard);
        let state = shared.lock();
        assert!(!state.polling);
        assert!(state.last_poll.elapsed() < Duration::from_secs(1));
    }
}
