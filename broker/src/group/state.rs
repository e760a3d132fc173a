//! One consumer group's state, the records that change it, and the membership rules.
//!
//! Everything here is pure: the coordinator (`coordinator.rs`) holds the lock, persists what
//! changed and answers. The persisted form is [`Entry`], one JSON record per change in the
//! group's `__consumer_offsets` partition; replaying a partition's entries in order rebuilds
//! every group it holds ([`apply`]), and the live coordinator applies the very same entries after
//! they commit, so replay and live state cannot drift apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::assign::{assign, MemberSpec};
use super::types::{Strategy, TopicPartition};
use super::GroupError;

/// `member_epoch` values with a meaning of their own (see `GroupHeartbeatRequest`).
pub const JOIN: i64 = 0;
pub const LEAVE: i64 = -1;
pub const LEAVE_FOR_RESTART: i64 = -2;

/// One member as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    /// Changes whenever the member's assignment changes.
    pub epoch: i64,
    /// The first epoch of this incarnation. Heartbeats and commits carrying an epoch from
    /// `joined_epoch` to `epoch` are this member's (an answer may have been lost on its way);
    /// anything older comes from a previous incarnation and is fenced.
    pub joined_epoch: i64,
    pub topics: Vec<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// What the strategy gives this member at the group epoch.
    pub target: BTreeSet<TopicPartition>,
    /// What the member has been told it may own.
    pub assigned: BTreeSet<TopicPartition>,
    /// What the member was told to give up and has not yet reported released. Nobody else gets
    /// these until it does (or is evicted).
    pub revoking: BTreeSet<TopicPartition>,
    /// A static member that left for a restart: it keeps its partitions meanwhile.
    pub away: bool,
}

impl Member {
    fn holds(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains(tp) || self.revoking.contains(tp)
    }
}

/// A group's membership as persisted (everything but its offsets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Bumps whenever members or subscriptions change (a new target assignment).
    pub epoch: u64,
    pub strategy: Strategy,
    /// Source of member epochs: unique within the group, so an epoch names one assignment.
    pub last_member_epoch: i64,
    pub members: BTreeMap<String, Member>,
    /// Partition counts of the subscribed topics the target was computed with.
    pub partition_counts: BTreeMap<String, u32>,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

/// One record of a `__consumer_offsets` partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Entry {
    /// The group's whole membership after a change.
    Membership { group: String, membership: Membership },
    /// Offsets committed by members: each moves forward only.
    Commit {
        group: String,
        offsets: Vec<(TopicPartition, Committed)>,
    },
    /// Offsets set by an operator while the group was empty: backwards too.
    Reset {
        group: String,
        offsets: Vec<(TopicPartition, Committed)>,
    },
    /// The group and its offsets are gone.
    Delete { group: String },
    /// The first record of a checkpoint batch (a compaction point): the batch restates every
    /// group of the partition, so the records before it are no longer needed.
    Checkpoint { groups: usize },
}

impl Entry {
    pub fn group(&self) -> &str {
        match self {
            Entry::Membership { group, .. }
            | Entry::Commit { group, .. }
            | Entry::Reset { group, .. }
            | Entry::Delete { group } => group,
            Entry::Checkpoint { .. } => "",
        }
    }
}

/// A group as the coordinator holds it.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub membership: Membership,
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// When each member was last heard from (not persisted: a new coordinator starts every
    /// session afresh).
    seen: HashMap<String, Instant>,
    /// Since when each member has had partitions to give up.
    revoking_since: HashMap<String, Instant>,
}

/// Applies one committed entry to the groups of a partition (replay and live alike).
pub fn apply(groups: &mut BTreeMap<String, Group>, entry: Entry, now: Instant) {
    match entry {
        Entry::Membership { group, membership } => {
            let state = groups.entry(group).or_default();
            for member in membership.members.values() {
                state.seen.entry(member.id.clone()).or_insert(now);
                // A replayed member still giving partitions up gets its rebalance timeout
                // afresh from now.
                if !member.revoking.is_empty() {
                    state.revoking_since.entry(member.id.clone()).or_insert(now);
                }
            }
            state.seen.retain(|id, _| membership.members.contains_key(id));
            state.revoking_since.retain(|id, _| membership.members.contains_key(id));
            state.membership = membership;
        }
        Entry::Commit { group, offsets } => {
            let state = groups.entry(group).or_default();
            for (tp, committed) in offsets {
                match state.offsets.get_mut(&tp) {
                    // Commits may complete out of order; the furthest one wins.
                    Some(current) if current.offset > committed.offset => {}
                    Some(current) => *current = committed,
                    None => {
                        state.offsets.insert(tp, committed);
                    }
                }
            }
        }
        Entry::Reset { group, offsets } => {
            let state = groups.entry(group).or_default();
            state.offsets.extend(offsets);
        }
        Entry::Delete { group } => {
            groups.remove(&group);
        }
        Entry::Checkpoint { .. } => {}
    }
}

/// What a heartbeat asks, in domain terms.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i64,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub topics: Vec<String>,
    pub strategy: Strategy,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub owned: BTreeSet<TopicPartition>,
}

/// What the coordinator answers a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub member_id: String,
    pub member_epoch: i64,
    pub assignment: BTreeSet<TopicPartition>,
    pub group_epoch: u64,
    pub reconciling: bool,
    /// The member's session timeout (what its heartbeat interval derives from).
    pub session_timeout_ms: u64,
}

/// Partition counts of topics (0: no such topic).
pub type Counts<'a> = &'a dyn Fn(&str) -> u32;

impl Group {
    pub fn is_empty(&self) -> bool {
        self.membership.members.is_empty()
    }

    /// The entries that restate this group (for a checkpoint): its membership, and its offsets
    /// as a commit (commits never move an offset back, so replaying the checkpoint over the
    /// entries before it changes nothing).
    pub fn restate(&self, name: &str) -> Vec<Entry> {
        let mut entries = vec![Entry::Membership {
            group: name.to_string(),
            membership: self.membership.clone(),
        }];
        if !self.offsets.is_empty() {
            entries.push(Entry::Commit {
                group: name.to_string(),
                offsets: self.offsets.iter().map(|(tp, c)| (tp.clone(), c.clone())).collect(),
            });
        }
        entries
    }

    /// "empty", "stable" or "reconciling".
    pub fn state_name(&self) -> &'static str {
        let members = &self.membership.members;
        if members.is_empty() {
            "empty"
        } else if members
            .values()
            .all(|m| m.assigned == m.target && m.revoking.is_empty())
        {
            "stable"
        } else {
            "reconciling"
        }
    }

    pub fn last_seen(&self, member: &str) -> Option<Instant> {
        self.seen.get(member).copied()
    }

    /// Handles one heartbeat; returns the member id it concerns (new on a join; `None` after
    /// a leave). The caller persists the membership if it changed.
    pub fn heartbeat(
        &mut self,
        request: &Heartbeat,
        counts: Counts<'_>,
        now: Instant,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<Option<String>, GroupError> {
        match request.member_epoch {
            JOIN => self.join(request, counts, now, new_member_id).map(Some),
            LEAVE | LEAVE_FOR_RESTART => {
                // Leaving twice (an answer lost on the way) is not an error.
                if !self.membership.members.contains_key(&request.member_id) {
                    return Ok(None);
                }
                if request.member_epoch == LEAVE_FOR_RESTART
                    && self.membership.members[&request.member_id].instance_id.is_some()
                {
                    if let Some(member) = self.membership.members.get_mut(&request.member_id) {
                        member.away = true;
                    }
                } else {
                    self.remove(&request.member_id, counts);
                }
                Ok(None)
            }
            epoch if epoch > 0 => {
                self.check_member(&request.member_id, Some(epoch))?;
                self.seen.insert(request.member_id.clone(), now);
                let member = self.membership.members.get_mut(&request.member_id).expect("checked");
                member.away = false;
                // Partitions the member was told to give up and no longer owns are free now, if
                // it has seen that answer (its current epoch): a member a step behind may be
                // taking on a partition it was given just before, not yet reported as owned.
                if epoch == member.epoch {
                    member.revoking.retain(|tp| request.owned.contains(tp));
                }
                if member.revoking.is_empty() {
                    self.revoking_since.remove(&request.member_id);
                }
                if !request.topics.is_empty() && request.topics != member.topics {
                    member.topics = request.topics.clone();
                    self.retarget(counts);
                } else {
                    self.refresh_counts(counts);
                }
                self.reconcile(&request.member_id, now);
                Ok(Some(request.member_id.clone()))
            }
            other => Err(GroupError::InvalidArgument(format!(
                "member_epoch {other} is not valid"
            ))),
        }
    }

    fn join(
        &mut self,
        request: &Heartbeat,
        counts: Counts<'_>,
        now: Instant,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<String, GroupError> {
        if request.topics.is_empty() {
            return Err(GroupError::InvalidArgument(
                "a join must name the topics to subscribe".into(),
            ));
        }
        if !self.is_empty() && self.membership.strategy != request.strategy {
            return Err(GroupError::InvalidArgument(format!(
                "the group uses the {:?} assignment strategy; this member asked for {:?}",
                self.membership.strategy, request.strategy
            )));
        }
        // A member may name itself: a join retried after a lost answer then finds the member it
        // created instead of making another one that would hold partitions until its session
        // times out.
        if self.membership.members.contains_key(&request.member_id) {
            self.seen.insert(request.member_id.clone(), now);
            self.reconcile(&request.member_id, now);
            return Ok(request.member_id.clone());
        }
        self.membership.strategy = request.strategy;
        let id = match request.member_id.as_str() {
            "" => new_member_id(),
            named => named.to_string(),
        };
        let epoch = self.next_member_epoch();
        let mut member = Member {
            id: id.clone(),
            instance_id: request.instance_id.clone(),
            client_id: request.client_id.clone(),
            epoch,
            joined_epoch: epoch,
            topics: request.topics.clone(),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            target: BTreeSet::new(),
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            away: false,
        };
        // A static member coming back replaces its previous incarnation and keeps its
        // partitions: nobody else sees a rebalance. The old incarnation is fenced.
        let previous = request.instance_id.as_ref().and_then(|instance| {
            self.membership
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.id.clone())
        });
        let subscription_changed = match previous.and_then(|old| {
            self.seen.remove(&old);
            self.revoking_since.remove(&old);
            self.membership.members.remove(&old)
        }) {
            Some(old) => {
                member.target = old.target;
                member.assigned = old.assigned;
                member.revoking = old.revoking;
                old.topics != member.topics
            }
            None => true,
        };
        self.membership.members.insert(id.clone(), member);
        self.seen.insert(id.clone(), now);
        if subscription_changed {
            self.retarget(counts);
        }
        self.reconcile(&id, now);
        Ok(id)
    }

    /// Fenced unless `id` is a current member and `epoch` (when given) one it was told.
    fn check_member(&self, id: &str, epoch: Option<i64>) -> Result<(), GroupError> {
        let Some(member) = self.membership.members.get(id) else {
            return Err(GroupError::Fenced(format!(
                "member '{id}' is not in the group (it left, was evicted, or was replaced); rejoin"
            )));
        };
        if let Some(epoch) = epoch {
            if epoch > member.epoch || epoch < member.joined_epoch {
                return Err(GroupError::Fenced(format!(
                    "member '{id}' sent epoch {epoch}, but its current epoch is {}; rejoin",
                    member.epoch
                )));
            }
        }
        Ok(())
    }

    fn next_member_epoch(&mut self) -> i64 {
        self.membership.last_member_epoch += 1;
        self.membership.last_member_epoch
    }

    fn remove(&mut self, id: &str, counts: Counts<'_>) {
        self.membership.members.remove(id);
        self.seen.remove(id);
        self.revoking_since.remove(id);
        self.retarget(counts);
    }

    /// Recomputes the target when the subscribed topics' partition counts changed.
    fn refresh_counts(&mut self, counts: Counts<'_>) {
        if self.current_counts(counts) != self.membership.partition_counts {
            self.retarget(counts);
        }
    }

    fn current_counts(&self, counts: Counts<'_>) -> BTreeMap<String, u32> {
        let topics: BTreeSet<&String> = self.membership.members.values().flat_map(|m| &m.topics).collect();
        topics.into_iter().map(|t| (t.clone(), counts(t))).collect()
    }

    /// A new group epoch: the strategy computes every member's target afresh.
    fn retarget(&mut self, counts: Counts<'_>) {
        self.membership.epoch += 1;
        self.membership.partition_counts = self.current_counts(counts);
        let specs: Vec<MemberSpec<'_>> = self
            .membership
            .members
            .values()
            .map(|m| MemberSpec {
                id: &m.id,
                sort_key: m.instance_id.as_deref().unwrap_or(&m.id),
                topics: &m.topics,
                current: &m.target,
            })
            .collect();
        let mut targets = assign(self.membership.strategy, &specs, &self.membership.partition_counts);
        for member in self.membership.members.values_mut() {
            member.target = targets.remove(&member.id).unwrap_or_default();
        }
    }

    /// Moves one member towards its target: partitions it must give up go to `revoking` at
    /// once; partitions of its target that nobody else holds are handed to it. Its epoch
    /// changes when its assignment does.
    fn reconcile(&mut self, id: &str, now: Instant) {
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .membership
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.assigned.iter().chain(&m.revoking).cloned())
            .collect();
        let next_epoch = self.membership.last_member_epoch + 1;
        let Some(member) = self.membership.members.get_mut(id) else {
            return;
        };
        let revoke: Vec<TopicPartition> = member.assigned.difference(&member.target).cloned().collect();
        let gain: Vec<TopicPartition> = member
            .target
            .iter()
            .filter(|tp| !member.holds(tp) && !held_elsewhere.contains(*tp))
            .cloned()
            .collect();
        // A partition of its target it still has in `revoking` (given back, then back again)
        // returns to it directly.
        let regain: Vec<TopicPartition> = member.revoking.intersection(&member.target).cloned().collect();
        if revoke.is_empty() && gain.is_empty() && regain.is_empty() {
            return;
        }
        for tp in revoke {
            member.assigned.remove(&tp);
            member.revoking.insert(tp);
        }
        for tp in regain {
            member.revoking.remove(&tp);
            member.assigned.insert(tp);
        }
        member.assigned.extend(gain);
        if member.revoking.is_empty() {
            self.revoking_since.remove(id);
        } else {
            self.revoking_since.entry(id.to_string()).or_insert(now);
        }
        member.epoch = next_epoch;
        self.membership.last_member_epoch = next_epoch;
    }

    /// The answer for a member as things stand.
    pub fn answer(&self, id: &str) -> Option<Answer> {
        let member = self.membership.members.get(id)?;
        Some(Answer {
            member_id: id.to_string(),
            member_epoch: member.epoch,
            assignment: member.assigned.clone(),
            group_epoch: self.membership.epoch,
            reconciling: member.assigned != member.target || !member.revoking.is_empty(),
            session_timeout_ms: member.session_timeout_ms,
        })
    }

    /// Evicts members whose session timed out, or that kept partitions they were told to give
    /// up for longer than their rebalance timeout; returns who was evicted and why.
    pub fn evict_expired(&mut self, counts: Counts<'_>, now: Instant) -> Vec<(String, String)> {
        let mut evicted = Vec::new();
        for member in self.membership.members.values() {
            let seen = self.seen.get(&member.id).copied().unwrap_or(now);
            let session = Duration::from_millis(member.session_timeout_ms);
            if now.saturating_duration_since(seen) > session {
                evicted.push((member.id.clone(), format!("no heartbeat for {session:?}")));
                continue;
            }
            if let Some(since) = self.revoking_since.get(&member.id) {
                let limit = Duration::from_millis(member.rebalance_timeout_ms);
                if now.saturating_duration_since(*since) > limit {
                    evicted.push((
                        member.id.clone(),
                        format!("did not give up revoked partitions within {limit:?}"),
                    ));
                }
            }
        }
        for (id, _) in &evicted {
            self.remove(id, counts);
        }
        evicted
    }

    /// Checks a commit: from a current member (any epoch of its incarnation) for partitions it
    /// holds, or from outside group management while the group is empty; never backwards.
    pub fn check_commit(
        &self,
        member_id: &str,
        member_epoch: i64,
        offsets: &[(TopicPartition, Committed)],
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if !self.is_empty() {
                return Err(GroupError::NotEmpty(format!(
                    "the group has {} member(s); only members commit while it has any",
                    self.membership.members.len()
                )));
            }
        } else {
            self.check_member(member_id, Some(member_epoch))?;
            let member = &self.membership.members[member_id];
            if let Some((tp, _)) = offsets.iter().find(|(tp, _)| !member.holds(tp)) {
                return Err(GroupError::Fenced(format!(
                    "partition {tp} is not assigned to member '{member_id}'; rejoin"
                )));
            }
        }
        for (tp, committed) in offsets {
            if let Some(current) = self.offsets.get(tp) {
                if committed.offset < current.offset {
                    return Err(GroupError::InvalidArgument(format!(
                        "committing offset {} for {tp} would move it backwards from {}; \
                         committed offsets move backwards only through reset-offsets",
                        committed.offset, current.offset
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(topic: &str) -> u32 {
        if topic == "t" {
            12
        } else {
            0
        }
    }

    fn join(group: &mut Group, id: &str, now: Instant) -> String {
        let request = Heartbeat {
            member_epoch: JOIN,
            topics: vec!["t".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            ..Default::default()
        };
        group
            .heartbeat(&request, &counts, now, || id.to_string())
            .unwrap()
            .unwrap()
    }

    fn beat(group: &mut Group, id: &str, owned: &BTreeSet<TopicPartition>, now: Instant) -> Answer {
        let epoch = group.membership.members[id].epoch;
        let request = Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            owned: owned.clone(),
            ..Default::default()
        };
        group.heartbeat(&request, &counts, now, || unreachable!()).unwrap();
        group.answer(id).unwrap()
    }

    /// No partition is held by two members at once, at any step.
    fn assert_exclusive(group: &Group) {
        let mut seen = BTreeSet::new();
        for member in group.membership.members.values() {
            for tp in member.assigned.iter().chain(&member.revoking) {
                assert!(seen.insert(tp.clone()), "{tp} held twice: {:#?}", group.membership);
            }
        }
    }

    /// Members that do what they are told (release revoked partitions at their next
    /// heartbeat) until nothing changes.
    fn settle(group: &mut Group, owned: &mut BTreeMap<String, BTreeSet<TopicPartition>>, now: Instant) {
        for _ in 0..10 {
            let ids: Vec<String> = group.membership.members.keys().cloned().collect();
            for id in ids {
                let mine = owned.entry(id.clone()).or_default();
                let answer = beat(group, &id, mine, now);
                assert_exclusive(group);
                *mine = answer.assignment;
            }
        }
    }

    #[test]
    fn fourth_member_gets_partitions_only_after_others_release_them() {
        let now = Instant::now();
        let mut group = Group::default();
        let mut owned = BTreeMap::new();
        for id in ["a", "b", "c"] {
            join(&mut group, id, now);
        }
        settle(&mut group, &mut owned, now);
        assert!(owned.values().all(|o| o.len() == 4));
        assert_eq!(group.state_name(), "stable");
        let d = join(&mut group, "d", now);
        assert_exclusive(&group);
        // Nothing is free yet: d waits while the others give one each up.
        assert!(group.answer(&d).unwrap().assignment.is_empty());
        assert_eq!(group.state_name(), "reconciling");
        settle(&mut group, &mut owned, now);
        assert!(owned.values().all(|o| o.len() == 3), "{owned:?}");
        assert_eq!(group.state_name(), "stable");
    }

    #[test]
    fn stale_epochs_and_unknown_members_are_fenced() {
        let now = Instant::now();
        let mut group = Group::default();
        let a = join(&mut group, "a", now);
        let first = group.membership.members[&a].epoch;
        let mut owned = BTreeMap::new();
        settle(&mut group, &mut owned, now);
        join(&mut group, "b", now);
        settle(&mut group, &mut owned, now);
        let current = group.membership.members[&a].epoch;
        assert!(current > first + 1);
        let tp = owned["a"].iter().next().unwrap().clone();
        let commit = [(
            tp.clone(),
            Committed {
                offset: 5,
                metadata: String::new(),
            },
        )];
        let joined = group.membership.members[&a].joined_epoch;
        assert!(matches!(
            group.check_commit(&a, joined - 1, &commit),
            Err(GroupError::Fenced(_))
        ));
        assert!(matches!(
            group.check_commit(&a, current + 1, &commit),
            Err(GroupError::Fenced(_))
        ));
        assert!(group.check_commit(&a, current, &commit).is_ok());
        let not_mine = owned["b"].iter().next().unwrap().clone();
        let commit_other = [(
            not_mine,
            Committed {
                offset: 5,
                metadata: String::new(),
            },
        )];
        assert!(matches!(
            group.check_commit(&a, current, &commit_other),
            Err(GroupError::Fenced(_))
        ));
        apply(&mut BTreeMap::new(), Entry::Delete { group: "x".into() }, now);
        group.offsets.insert(
            tp,
            Committed {
                offset: 9,
                metadata: String::new(),
            },
        );
        assert!(matches!(
            group.check_commit(&a, current, &commit),
            Err(GroupError::InvalidArgument(_))
        ));
        assert!(matches!(
            group.check_commit("nobody", 1, &commit),
            Err(GroupError::Fenced(_))
        ));
        assert!(matches!(
            group.check_commit("", -1, &commit),
            Err(GroupError::NotEmpty(_))
        ));
    }

    #[test]
    fn session_timeout_evicts_and_frees_partitions() {
        let now = Instant::now();
        let mut group = Group::default();
        let mut owned = BTreeMap::new();
        join(&mut group, "a", now);
        join(&mut group, "b", now);
        settle(&mut group, &mut owned, now);
        let later = now + Duration::from_secs(11);
        group.seen.insert("b".into(), later);
        let evicted = group.evict_expired(&counts, later);
        assert_eq!(evicted.len(), 1);
        owned.remove("a");
        settle(&mut group, &mut owned, later);
        assert_eq!(owned["b"].len(), 12);
    }

    #[test]
    fn static_member_restart_keeps_its_partitions() {
        let now = Instant::now();
        let mut group = Group::default();
        let mut owned = BTreeMap::new();
        let static_join = |group: &mut Group, id: &str| {
            let request = Heartbeat {
                member_epoch: JOIN,
                instance_id: Some("worker-1".into()),
                topics: vec!["t".into()],
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 60_000,
                ..Default::default()
            };
            group
                .heartbeat(&request, &counts, now, || id.to_string())
                .unwrap()
                .unwrap()
        };
        static_join(&mut group, "s1");
        join(&mut group, "b", now);
        settle(&mut group, &mut owned, now);
        let before = owned["s1"].clone();
        let epoch_before = group.membership.epoch;
        let s2 = static_join(&mut group, "s2");
        assert_eq!(group.membership.epoch, epoch_before, "no rebalance");
        assert_eq!(group.answer(&s2).unwrap().assignment, before);
        assert!(!group.membership.members.contains_key("s1"));
    }

    #[test]
    fn a_member_a_step_behind_does_not_release_what_it_may_be_taking_on() {
        let now = Instant::now();
        let mut group = Group::default();
        let a = join(&mut group, "a", now);
        let given = group.answer(&a).unwrap();
        assert_eq!(given.assignment.len(), 12);
        join(&mut group, "b", now);
        // a is told to give half up (epoch moves on); then a heartbeat built before a saw that
        // answer arrives, with the older epoch and nothing owned yet (a is still taking its
        // partitions on): nothing is released to b.
        beat(&mut group, &a, &BTreeSet::new(), now);
        let stale = Heartbeat {
            member_id: a.clone(),
            member_epoch: given.member_epoch,
            ..Default::default()
        };
        group.heartbeat(&stale, &counts, now, || unreachable!()).unwrap();
        assert_eq!(group.membership.members[&a].revoking.len(), 6);
        let b = group.answer("b").unwrap();
        let answer_b = beat(&mut group, "b", &b.assignment, now);
        assert!(answer_b.assignment.is_empty(), "{answer_b:?}");
        assert_exclusive(&group);
    }

    #[test]
    fn a_retried_join_finds_the_member_it_created() {
        let now = Instant::now();
        let mut group = Group::default();
        let request = Heartbeat {
            member_id: "chosen-by-client".into(),
            member_epoch: JOIN,
            topics: vec!["t".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            ..Default::default()
        };
        let first = group.heartbeat(&request, &counts, now, || unreachable!()).unwrap();
        let epoch = group.membership.epoch;
        let again = group.heartbeat(&request, &counts, now, || unreachable!()).unwrap();
        assert_eq!(first, again);
        assert_eq!(group.membership.members.len(), 1);
        assert_eq!(group.membership.epoch, epoch, "no rebalance");
    }

    #[test]
    fn entries_replay_to_the_same_state() {
        let now = Instant::now();
        let mut live = BTreeMap::new();
        let tp = TopicPartition::new("t", 0);
        let commit = |offset| Entry::Commit {
            group: "g".into(),
            offsets: vec![(
                tp.clone(),
                Committed {
                    offset,
                    metadata: String::new(),
                },
            )],
        };
        for entry in [commit(10), commit(7), commit(12)] {
            apply(&mut live, entry, now);
        }
        assert_eq!(live["g"].offsets[&tp].offset, 12);
        let reset = Entry::Reset {
            group: "g".into(),
            offsets: vec![(
                tp.clone(),
                Committed {
                    offset: 3,
                    metadata: String::new(),
                },
            )],
        };
        let json = serde_json::to_vec(&reset).unwrap();
        apply(&mut live, serde_json::from_slice(&json).unwrap(), now);
        assert_eq!(live["g"].offsets[&tp].offset, 3);
        apply(&mut live, Entry::Delete { group: "g".into() }, now);
        assert!(live.is_empty());
    }
}
