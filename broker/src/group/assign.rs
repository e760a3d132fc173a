//! Assignment strategies: which member of a group consumes which partition.
//!
//! [`assign`] is a pure function of the members (subscriptions, order keys, current targets) and
//! the partition count of each topic. The coordinator calls it whenever the group epoch bumps and
//! stores the result as every member's new target; moving members from their old target to the
//! new one (revoke first, then hand over) is the coordinator's business, not this module's.
//!
//! Every strategy guarantees:
//! - each partition of a topic that some member subscribes to goes to exactly one member, and
//!   that member subscribes to the topic;
//! - every member appears in the result, with an empty set if it gets nothing;
//! - the result does not depend on the order of `members`: they are put in (sort_key, id) order
//!   first, every tie is broken by that order, and static members (whose sort key is their
//!   instance id) keep their place across restarts.
//!
//! The strategies:
//! - [`Strategy::Range`] (Kafka's RangeAssignor): per topic, contiguous ranges over its
//!   subscribers; the first `partitions % subscribers` get one more.
//! - [`Strategy::RoundRobin`] (Kafka's RoundRobinAssignor): all partitions in (topic, partition)
//!   order dealt over the members in order, skipping members not subscribed to the topic.
//! - [`Strategy::Sticky`]: keep what can be kept, balance by moving as little as possible. With
//!   identical subscriptions the counts end within one of each other and the number of moved
//!   partitions is the minimum that balance needs; with different subscriptions it is a greedy
//!   balance (no partition could go from a member to a less loaded subscriber of its topic and
//!   narrow the gap). Running it again on its own result changes nothing.
//!
//! Cost: Range and RoundRobin are O(P log M) for P partitions and M members. Sticky is
//! O((P + moves) * C * log M), where C is the number of distinct subscriber sets a member belongs
//! to (one when every member subscribes the same topics, however many topics there are).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::types::{Strategy, TopicPartition};

/// One member as the assignor sees it.
pub struct MemberSpec<'a> {
    pub id: &'a str,
    /// Order key: the static instance id when there is one, else the member id (so a static
    /// member keeps its place across restarts).
    pub sort_key: &'a str,
    pub topics: &'a [String],
    /// The member's current target (sticky keeps what it can of it).
    pub current: &'a BTreeSet<TopicPartition>,
}

/// Target assignment: every member id of `members` -> its partitions. `partitions` maps each topic
/// to its partition count (topics missing from it, or with 0, have nothing to assign).
///
/// Member ids must be unique (a repeated id is a programmer error and panics).
pub fn assign(
    strategy: Strategy,
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let group = Group::new(members, partitions);
    let owners = match strategy {
        Strategy::Range => range(&group),
        Strategy::RoundRobin => round_robin(&group),
        Strategy::Sticky => sticky(&group),
    };
    group.into_result(owners)
}

/// The input arranged for the strategies, which name members by their index in `members`.
struct Group<'g> {
    /// In (sort_key, id) order.
    members: Vec<&'g MemberSpec<'g>>,
    /// Topics with at least one partition and one subscriber, in name order.
    topics: Vec<Topic<'g>>,
}

struct Topic<'g> {
    name: &'g str,
    partition_count: usize,
    /// Indices of the subscribed members, ascending.
    subscribers: Vec<usize>,
}

/// For each topic of [`Group::topics`], the member index owning each of its partitions.
type Owners = Vec<Vec<usize>>;

impl<'g> Group<'g> {
    fn new(members: &'g [MemberSpec<'g>], partitions: &'g BTreeMap<String, u32>) -> Self {
        let mut sorted: Vec<&MemberSpec> = members.iter().collect();
        sorted.sort_by(|a, b| (a.sort_key, a.id).cmp(&(b.sort_key, b.id)));
        let mut ids = BTreeSet::new();
        for member in &sorted {
            assert!(ids.insert(member.id), "member id {} given twice", member.id);
        }

        let mut subscribers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, member) in sorted.iter().enumerate() {
            for topic in member.topics {
                let list = subscribers.entry(topic.as_str()).or_default();
                // Indices arrive ascending, so a topic the member lists twice is already last.
                if list.last() != Some(&index) {
                    list.push(index);
                }
            }
        }
        let topics = subscribers
            .into_iter()
            .filter_map(|(name, subscribers)| {
                let (name, &count) = partitions.get_key_value(name)?;
                (count > 0).then_some(Topic {
                    name,
                    partition_count: count as usize,
                    subscribers,
                })
            })
            .collect();
        Self {
            members: sorted,
            topics,
        }
    }

    /// Turns a strategy's owners into the result, checking the guarantees every strategy makes.
    fn into_result(self, owners: Owners) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        assert_eq!(owners.len(), self.topics.len());
        let mut sets = vec![BTreeSet::new(); self.members.len()];
        for (topic, owners) in self.topics.iter().zip(owners) {
            assert_eq!(owners.len(), topic.partition_count, "topic {}", topic.name);
            for (partition, member) in owners.into_iter().enumerate() {
                assert!(
                    topic.subscribers.binary_search(&member).is_ok(),
                    "{}/{partition} given to member {}, which does not subscribe to it",
                    topic.name,
                    self.members[member].id
                );
                sets[member].insert(TopicPartition::new(topic.name, partition as u32));
            }
        }
        self.members
            .iter()
            .zip(sets)
            .map(|(member, set)| (member.id.to_owned(), set))
            .collect()
    }
}

/// Per topic, the subscribers in order get contiguous ranges; the first `count % subscribers`
/// get one partition more.
fn range(group: &Group) -> Owners {
    let mut owners = Vec::with_capacity(group.topics.len());
    for topic in &group.topics {
        let base = topic.partition_count / topic.subscribers.len();
        let extra = topic.partition_count % topic.subscribers.len();
        let mut topic_owners = Vec::with_capacity(topic.partition_count);
        for (rank, &member) in topic.subscribers.iter().enumerate() {
            let share = base + usize::from(rank < extra);
            topic_owners.extend(std::iter::repeat_n(member, share));
        }
        owners.push(topic_owners);
    }
    owners
}

/// Deals every partition, in (topic, partition) order, to the next member in order that
/// subscribes to its topic, wrapping around.
fn round_robin(group: &Group) -> Owners {
    // The member index the deal has reached. The next partition goes to the first subscriber at
    // or after it (or, past the last, to the first subscriber), and the deal moves past that one.
    let mut next = 0;
    let mut owners = Vec::with_capacity(group.topics.len());
    for topic in &group.topics {
        let subscribers = &topic.subscribers;
        let mut topic_owners = Vec::with_capacity(topic.partition_count);
        for _ in 0..topic.partition_count {
            let at = subscribers.partition_point(|&member| member < next);
            let member = subscribers.get(at).copied().unwrap_or(subscribers[0]);
            topic_owners.push(member);
            next = member + 1;
        }
        owners.push(topic_owners);
    }
    owners
}

/// Keeps every member's current partitions that still exist and that it still subscribes to
/// (the first member in order wins a partition claimed twice), gives the others to the least
/// loaded subscribers, then moves partitions from the most to the least loaded subscriber while
/// their counts differ by more than one.
///
/// Keeping everything and then moving the excess moves exactly the partitions that capping each
/// member at its fair share would. With identical subscriptions a partition only leaves a member
/// that is the most loaded and only joins one that is the least loaded, so none moves twice, no
/// member both gains and loses, and the members that keep one partition more than the others are
/// among those that held the most. With different subscriptions a partition may have to pass
/// through a member to reach one that can take it.
fn sticky(group: &Group) -> Owners {
    let classes = Classes::new(group);
    let mut balancer = Balancer::new(&classes, group.members.len());

    let topic_index: BTreeMap<&str, usize> = group
        .topics
        .iter()
        .enumerate()
        .map(|(index, topic)| (topic.name, index))
        .collect();
    let mut claimed: Vec<Vec<bool>> = group
        .topics
        .iter()
        .map(|topic| vec![false; topic.partition_count])
        .collect();
    for (member, spec) in group.members.iter().enumerate() {
        for tp in spec.current {
            let Some(&topic) = topic_index.get(tp.topic.as_str()) else {
                continue; // Deleted, or nobody subscribes to it any more.
            };
            let Some(slot) = claimed[topic].get_mut(tp.partition as usize) else {
                continue; // The topic has fewer partitions now.
            };
            let subscribed = group.topics[topic].subscribers.binary_search(&member).is_ok();
            if subscribed && !*slot {
                *slot = true;
                balancer.give(member, classes.of_topic[topic], (topic, tp.partition as usize));
            }
        }
    }

    // Topics with the fewest subscribers first: their partitions have the fewest places to go,
    // so the flexible ones can even the counts out afterwards.
    let mut order: Vec<usize> = (0..group.topics.len()).collect();
    order.sort_by_key(|&topic| (group.topics[topic].subscribers.len(), topic));
    for topic in order {
        let class = classes.of_topic[topic];
        for (partition, _) in claimed[topic].iter().enumerate().filter(|(_, taken)| !**taken) {
            let member = balancer.least_loaded(class);
            balancer.give(member, class, (topic, partition));
        }
    }

    balancer.balance();
    balancer.into_owners(group)
}

/// Topics grouped by their subscriber set. Any partition of a class may go to any member of the
/// class, so the balancer tracks load per class rather than per topic: with identical
/// subscriptions there is one class however many topics there are.
struct Classes {
    /// The class of each topic of [`Group::topics`].
    of_topic: Vec<usize>,
    /// The members of each class, ascending.
    members: Vec<Vec<usize>>,
    /// The classes of each member, ascending.
    of_member: Vec<Vec<usize>>,
}

impl Classes {
    fn new(group: &Group) -> Self {
        let mut by_subscribers: BTreeMap<&[usize], usize> = BTreeMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut of_topic = Vec::with_capacity(group.topics.len());
        for topic in &group.topics {
            let next = by_subscribers.len();
            let class = *by_subscribers.entry(&topic.subscribers).or_insert(next);
            if class == next {
                members.push(topic.subscribers.clone());
            }
            of_topic.push(class);
        }
        let mut of_member = vec![Vec::new(); group.members.len()];
        for (class, class_members) in members.iter().enumerate() {
            for &member in class_members {
                of_member[member].push(class);
            }
        }
        Self {
            of_topic,
            members,
            of_member,
        }
    }
}

/// A (topic index, partition) pair.
type Slot = (usize, usize);

/// Who holds what, indexed for "least loaded subscriber of a class", "most loaded holder of a
/// class" and "most unbalanced class". Loads are (count, member) pairs, so ties go to the first
/// member in order as receiver and to the last as giver.
struct Balancer<'c> {
    classes: &'c Classes,
    /// Partitions held by each member, all classes together.
    counts: Vec<usize>,
    /// What each member holds, per class it holds anything of.
    held: Vec<BTreeMap<usize, BTreeSet<Slot>>>,
    /// Per class, the load of each of its members.
    subscriber_loads: Vec<BTreeSet<(usize, usize)>>,
    /// Per class, the load of each member holding at least one of its partitions.
    holder_loads: Vec<BTreeSet<(usize, usize)>>,
    /// Per class, most loaded holder's count - least loaded subscriber's count.
    gaps: Vec<usize>,
    /// (gap, Reverse(class)) of every class: the last is the most unbalanced, first in order.
    gap_order: BTreeSet<(usize, Reverse<usize>)>,
}

impl<'c> Balancer<'c> {
    fn new(classes: &'c Classes, member_count: usize) -> Self {
        let class_count = classes.members.len();
        Self {
            classes,
            counts: vec![0; member_count],
            held: vec![BTreeMap::new(); member_count],
            subscriber_loads: classes
                .members
                .iter()
                .map(|members| members.iter().map(|&member| (0, member)).collect())
                .collect(),
            holder_loads: vec![BTreeSet::new(); class_count],
            gaps: vec![0; class_count],
            gap_order: (0..class_count).map(|class| (0, Reverse(class))).collect(),
        }
    }

    fn least_loaded(&self, class: usize) -> usize {
        let &(_, member) = self.subscriber_loads[class]
            .first()
            .expect("a class has at least one member: its topics' subscribers");
        member
    }

    /// Moves one partition at a time from the most loaded holder to the least loaded subscriber of
    /// the most unbalanced class, until no class has a gap over one. Each move lowers the sum of
    /// the squared counts by at least 2, so this ends.
    fn balance(&mut self) {
        while let Some(&(gap, Reverse(class))) = self.gap_order.last() {
            if gap <= 1 {
                break;
            }
            let &(_, giver) = self.holder_loads[class]
                .last()
                .expect("a class with a gap has a holder");
            let receiver = self.least_loaded(class);
            let slot = self.take(giver, class);
            self.give(receiver, class, slot);
        }
    }

    fn give(&mut self, member: usize, class: usize, slot: Slot) {
        let held = self.held[member].entry(class).or_default();
        if held.is_empty() {
            self.holder_loads[class].insert((self.counts[member], member));
        }
        held.insert(slot);
        self.set_count(member, self.counts[member] + 1);
    }

    /// Takes the member's last partition of the class (any would do; this one is deterministic).
    fn take(&mut self, member: usize, class: usize) -> Slot {
        let held = self.held[member]
            .get_mut(&class)
            .expect("the giver holds some of the class");
        let slot = held.pop_last().expect("held sets are never left empty");
        if held.is_empty() {
            self.held[member].remove(&class);
            self.holder_loads[class].remove(&(self.counts[member], member));
        }
        self.set_count(member, self.counts[member] - 1);
        slot
    }

    fn set_count(&mut self, member: usize, count: usize) {
        let old = (self.counts[member], member);
        let new = (count, member);
        self.counts[member] = count;
        let classes = self.classes;
        for &class in &classes.of_member[member] {
            self.subscriber_loads[class].remove(&old);
            self.subscriber_loads[class].insert(new);
            if self.held[member].contains_key(&class) {
                self.holder_loads[class].remove(&old);
                self.holder_loads[class].insert(new);
            }
            self.update_gap(class);
        }
    }

    fn update_gap(&mut self, class: usize) {
        let most = self.holder_loads[class].last().map_or(0, |&(count, _)| count);
        let least = self.subscriber_loads[class].first().map_or(0, |&(count, _)| count);
        // The most loaded holder is a subscriber too, so this never saturates; when it is also
        // the least loaded, the gap is 0.
        let gap = most.saturating_sub(least);
        if gap != self.gaps[class] {
            self.gap_order.remove(&(self.gaps[class], Reverse(class)));
            self.gap_order.insert((gap, Reverse(class)));
            self.gaps[class] = gap;
        }
    }

    fn into_owners(self, group: &Group) -> Owners {
        let mut owners: Owners = group
            .topics
            .iter()
            .map(|topic| vec![usize::MAX; topic.partition_count])
            .collect();
        for (member, held) in self.held.into_iter().enumerate() {
            for (topic, partition) in held.into_values().flatten() {
                owners[topic][partition] = member;
            }
        }
        assert!(
            owners.iter().flatten().all(|&member| member != usize::MAX),
            "sticky left a partition without an owner"
        );
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Strategy; 3] = [Strategy::Sticky, Strategy::Range, Strategy::RoundRobin];

    type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

    /// An owned [`MemberSpec`].
    #[derive(Clone)]
    struct Input {
        id: String,
        sort_key: String,
        topics: Vec<String>,
        current: BTreeSet<TopicPartition>,
    }

    fn member(id: &str, topics: &[&str], current: BTreeSet<TopicPartition>) -> Input {
        Input {
            id: id.to_owned(),
            sort_key: id.to_owned(),
            topics: topics.iter().map(|topic| topic.to_string()).collect(),
            current,
        }
    }

    fn tps(topic: &str, partitions: impl IntoIterator<Item = u32>) -> BTreeSet<TopicPartition> {
        partitions
            .into_iter()
            .map(|partition| TopicPartition::new(topic, partition))
            .collect()
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|&(topic, count)| (topic.to_owned(), count)).collect()
    }

    fn run(strategy: Strategy, inputs: &[Input], partitions: &BTreeMap<String, u32>) -> Assignment {
        let specs: Vec<MemberSpec> = inputs
            .iter()
            .map(|input| MemberSpec {
                id: &input.id,
                sort_key: &input.sort_key,
                topics: &input.topics,
                current: &input.current,
            })
            .collect();
        assign(strategy, &specs, partitions)
    }

    fn expected(entries: &[(&str, BTreeSet<TopicPartition>)]) -> Assignment {
        entries.iter().map(|(id, set)| (id.to_string(), set.clone())).collect()
    }

    fn union(sets: &[BTreeSet<TopicPartition>]) -> BTreeSet<TopicPartition> {
        sets.iter().flatten().cloned().collect()
    }

    /// Three members of one 12-partition topic, given in scrambled order.
    fn three_of_twelve() -> Vec<Input> {
        ["c", "a", "b"]
            .iter()
            .map(|id| member(id, &["t"], BTreeSet::new()))
            .collect()
    }

    #[test]
    fn range_splits_a_topic_into_contiguous_ranges() {
        let result = run(Strategy::Range, &three_of_twelve(), &counts(&[("t", 12)]));
        let want = expected(&[("a", tps("t", 0..4)), ("b", tps("t", 4..8)), ("c", tps("t", 8..12))]);
        assert_eq!(result, want);
    }

    #[test]
    fn range_gives_the_first_members_one_more_per_topic() {
        let inputs = [
            member("b", &["t0", "t1"], BTreeSet::new()),
            member("a", &["t0", "t1"], BTreeSet::new()),
        ];
        let result = run(Strategy::Range, &inputs, &counts(&[("t0", 3), ("t1", 3)]));
        let a = union(&[tps("t0", 0..2), tps("t1", 0..2)]);
        let b = union(&[tps("t0", [2]), tps("t1", [2])]);
        assert_eq!(result, expected(&[("a", a), ("b", b)]));
    }

    #[test]
    fn range_with_different_subscriptions_splits_each_topic_over_its_subscribers() {
        let inputs = [
            member("a", &["t0"], BTreeSet::new()),
            member("b", &["t0", "t1"], BTreeSet::new()),
            member("c", &["t1"], BTreeSet::new()),
        ];
        let result = run(Strategy::Range, &inputs, &counts(&[("t0", 5), ("t1", 2)]));
        let b = union(&[tps("t0", 3..5), tps("t1", [0])]);
        let want = expected(&[("a", tps("t0", 0..3)), ("b", b), ("c", tps("t1", [1]))]);
        assert_eq!(result, want);
    }

    #[test]
    fn members_are_ordered_by_sort_key_then_id() {
        // "z" has the smaller static instance id, so it comes first; "x" and "y" share a sort key
        // and fall back to their ids.
        let mut inputs = vec![
            member("y", &["t"], BTreeSet::new()),
            member("z", &["t"], BTreeSet::new()),
            member("x", &["t"], BTreeSet::new()),
        ];
        inputs[0].sort_key = "instance-2".into();
        inputs[1].sort_key = "instance-1".into();
        inputs[2].sort_key = "instance-2".into();
        let result = run(Strategy::Range, &inputs, &counts(&[("t", 3)]));
        let want = expected(&[("z", tps("t", [0])), ("x", tps("t", [1])), ("y", tps("t", [2]))]);
        assert_eq!(result, want);
    }

    #[test]
    fn round_robin_deals_partitions_over_the_members_in_order() {
        let result = run(Strategy::RoundRobin, &three_of_twelve(), &counts(&[("t", 12)]));
        let want = expected(&[
            ("a", tps("t", [0, 3, 6, 9])),
            ("b", tps("t", [1, 4, 7, 10])),
            ("c", tps("t", [2, 5, 8, 11])),
        ]);
        assert_eq!(result, want);
    }

    #[test]
    fn round_robin_deals_across_topics_without_restarting() {
        let inputs = [
            member("a", &["t0", "t1"], BTreeSet::new()),
            member("b", &["t0", "t1"], BTreeSet::new()),
        ];
        let result = run(Strategy::RoundRobin, &inputs, &counts(&[("t0", 3), ("t1", 3)]));
        let a = union(&[tps("t0", [0, 2]), tps("t1", [1])]);
        let b = union(&[tps("t0", [1]), tps("t1", [0, 2])]);
        assert_eq!(result, expected(&[("a", a), ("b", b)]));
    }

    #[test]
    fn round_robin_skips_members_not_subscribed_to_the_topic() {
        // Kafka's RoundRobinAssignor documentation example.
        let inputs = [
            member("c0", &["t0"], BTreeSet::new()),
            member("c1", &["t0", "t1"], BTreeSet::new()),
            member("c2", &["t0", "t1", "t2"], BTreeSet::new()),
        ];
        let partitions = counts(&[("t0", 1), ("t1", 2), ("t2", 3)]);
        let result = run(Strategy::RoundRobin, &inputs, &partitions);
        let c2 = union(&[tps("t1", [1]), tps("t2", 0..3)]);
        let want = expected(&[("c0", tps("t0", [0])), ("c1", tps("t1", [0])), ("c2", c2)]);
        assert_eq!(result, want);
    }

    #[test]
    fn sticky_deals_a_new_group_evenly() {
        let result = run(Strategy::Sticky, &three_of_twelve(), &counts(&[("t", 12)]));
        let want = expected(&[
            ("a", tps("t", [0, 3, 6, 9])),
            ("b", tps("t", [1, 4, 7, 10])),
            ("c", tps("t", [2, 5, 8, 11])),
        ]);
        assert_eq!(result, want);
    }

    #[test]
    fn sticky_joining_member_takes_one_partition_from_each_of_three() {
        let inputs = [
            member("a", &["t"], tps("t", 0..4)),
            member("b", &["t"], tps("t", 4..8)),
            member("c", &["t"], tps("t", 8..12)),
            member("d", &["t"], BTreeSet::new()),
        ];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("t", 12)]));
        for input in &inputs[..3] {
            let kept = result[&input.id].intersection(&input.current).count();
            assert_eq!(kept, 3, "{} keeps all but one", input.id);
            assert!(
                result[&input.id].is_subset(&input.current),
                "{} gains nothing",
                input.id
            );
        }
        // The last in order gives first; each gives its highest partition.
        let want = expected(&[
            ("a", tps("t", 0..3)),
            ("b", tps("t", 4..7)),
            ("c", tps("t", 8..11)),
            ("d", tps("t", [3, 7, 11])),
        ]);
        assert_eq!(result, want);
    }

    #[test]
    fn sticky_leaving_member_partitions_go_to_the_least_loaded() {
        // "d" left: only its partitions move, one to each of the others.
        let inputs = [
            member("a", &["t"], tps("t", 0..3)),
            member("b", &["t"], tps("t", 4..7)),
            member("c", &["t"], tps("t", 8..11)),
        ];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("t", 12)]));
        let want = expected(&[
            ("a", tps("t", [0, 1, 2, 3])),
            ("b", tps("t", [4, 5, 6, 7])),
            ("c", tps("t", [8, 9, 10, 11])),
        ]);
        assert_eq!(result, want);
    }

    #[test]
    fn sticky_moves_the_excess_of_an_overloaded_member_only() {
        let inputs = [
            member("a", &["t"], tps("t", 0..7)),
            member("b", &["t"], tps("t", 7..9)),
            member("c", &["t"], tps("t", 9..10)),
        ];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("t", 10)]));
        // a gives 6 to c, then 5 to b (b and c tie, b comes first), then 4 to c.
        let want = expected(&[
            ("a", tps("t", 0..4)),
            ("b", tps("t", [5, 7, 8])),
            ("c", tps("t", [4, 6, 9])),
        ]);
        assert_eq!(result, want);
    }

    #[test]
    fn sticky_balances_greedily_with_different_subscriptions() {
        // "b" joins and can only take y: it gets all of y, which leaves a with x alone.
        let a_current = union(&[tps("x", 0..4), tps("y", 0..2)]);
        let inputs = [
            member("a", &["x", "y"], a_current),
            member("b", &["y"], BTreeSet::new()),
        ];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("x", 4), ("y", 2)]));
        assert_eq!(result, expected(&[("a", tps("x", 0..4)), ("b", tps("y", 0..2))]));
    }

    #[test]
    fn sticky_unsubscribed_topic_moves_and_the_rest_rebalances() {
        // a drops u: its u partitions go to b, the only subscriber left, and b pays back in t.
        let inputs = [
            member("a", &["t"], union(&[tps("t", 0..2), tps("u", 0..2)])),
            member("b", &["t", "u"], union(&[tps("t", 2..4), tps("u", 2..4)])),
        ];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("t", 4), ("u", 4)]));
        assert_eq!(result, expected(&[("a", tps("t", 0..4)), ("b", tps("u", 0..4))]));
    }

    #[test]
    fn sticky_forgets_partitions_that_no_longer_exist() {
        // t shrank from 6 to 4 partitions, "gone" was deleted, "empty" has none.
        let inputs = [
            member(
                "a",
                &["t", "gone", "empty"],
                union(&[tps("t", 0..3), tps("gone", [0]), tps("empty", [0])]),
            ),
            member("b", &["t", "gone"], union(&[tps("t", 3..6), tps("gone", [1])])),
        ];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("t", 4), ("empty", 0)]));
        assert_eq!(result, expected(&[("a", tps("t", 0..2)), ("b", tps("t", 2..4))]));
    }

    #[test]
    fn sticky_partition_claimed_twice_goes_to_one_member() {
        let inputs = [member("b", &["t"], tps("t", 1..4)), member("a", &["t"], tps("t", 0..2))];
        let result = run(Strategy::Sticky, &inputs, &counts(&[("t", 4)]));
        // a comes first in order, so it keeps 1; b keeps the rest of its claim.
        assert_eq!(result, expected(&[("a", tps("t", 0..2)), ("b", tps("t", 2..4))]));
    }

    #[test]
    fn no_members_assign_nothing() {
        for strategy in ALL {
            assert_eq!(run(strategy, &[], &counts(&[("t", 4)])), Assignment::new());
        }
    }

    #[test]
    fn members_without_assignable_topics_get_empty_sets() {
        let inputs = [
            member("a", &["missing"], tps("missing", [0])),
            member("b", &[], tps("t", [0])),
            member("c", &["empty"], BTreeSet::new()),
        ];
        let partitions = counts(&[("t", 4), ("empty", 0)]);
        let empty = BTreeSet::new();
        let want = expected(&[("a", empty.clone()), ("b", empty.clone()), ("c", empty)]);
        for strategy in ALL {
            assert_eq!(run(strategy, &inputs, &partitions), want, "{strategy:?}");
        }
    }

    #[test]
    fn a_topic_listed_twice_counts_once() {
        let inputs = [
            member("a", &["t", "t"], BTreeSet::new()),
            member("b", &["t"], BTreeSet::new()),
        ];
        let partitions = counts(&[("t", 4)]);
        let result = run(Strategy::Range, &inputs, &partitions);
        assert_eq!(result, expected(&[("a", tps("t", 0..2)), ("b", tps("t", 2..4))]));
        let result = run(Strategy::RoundRobin, &inputs, &partitions);
        assert_eq!(result, expected(&[("a", tps("t", [0, 2])), ("b", tps("t", [1, 3]))]));
    }

    #[test]
    #[should_panic(expected = "member id a given twice")]
    fn a_repeated_member_id_is_a_programmer_error() {
        let mut inputs = vec![member("a", &["t"], BTreeSet::new()); 2];
        inputs[1].sort_key = "other".into();
        run(Strategy::Sticky, &inputs, &counts(&[("t", 1)]));
    }

    /// xorshift64: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }

        fn percent(&mut self, chance: usize) -> bool {
            self.below(100) < chance
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for end in (1..items.len()).rev() {
                items.swap(end, self.below(end + 1));
            }
        }
    }

    /// A random group. `identical`: every member subscribes to the same topics. `clean`: every
    /// current partition is claimed once at most (else members also claim random extras, which
    /// may repeat another's or not exist).
    fn random_case(rng: &mut Rng, identical: bool, clean: bool) -> (Vec<Input>, BTreeMap<String, u32>) {
        let names = ["t0", "t1", "t2", "t3", "t4"];
        let mut partitions = BTreeMap::new();
        for name in names {
            if rng.percent(80) {
                partitions.insert(name.to_owned(), rng.below(13) as u32);
            }
        }
        let pick_topics = |rng: &mut Rng| -> Vec<String> {
            let pool = names.iter().chain(["missing"].iter());
            pool.filter(|_| rng.percent(50)).map(|name| name.to_string()).collect()
        };
        let shared = pick_topics(rng);
        let mut inputs: Vec<Input> = (0..rng.below(9))
            .map(|index| {
                let id = format!("m{index}");
                // Some static members, whose sort keys may collide with each other.
                let sort_key = if rng.percent(30) {
                    format!("k{}", rng.below(3))
                } else {
                    id.clone()
                };
                let topics = if identical { shared.clone() } else { pick_topics(rng) };
                Input {
                    id,
                    sort_key,
                    topics,
                    current: BTreeSet::new(),
                }
            })
            .collect();
        if inputs.is_empty() {
            return (inputs, partitions);
        }
        // The previous world: topics had up to 15 partitions, some owned by someone.
        for name in names {
            for partition in 0..rng.below(16) as u32 {
                if rng.percent(60) {
                    let owner = rng.below(inputs.len());
                    inputs[owner].current.insert(TopicPartition::new(name, partition));
                }
            }
        }
        if !clean {
            for input in &mut inputs {
                for _ in 0..rng.below(6) {
                    let name = names[rng.below(names.len())];
                    input.current.insert(TopicPartition::new(name, rng.below(16) as u32));
                }
            }
        }
        (inputs, partitions)
    }

    /// Every partition of a subscribed topic goes to exactly one subscriber; nothing else is
    /// given; every member is there.
    fn check_complete(inputs: &[Input], partitions: &BTreeMap<String, u32>, result: &Assignment) {
        let ids: BTreeSet<&str> = inputs.iter().map(|input| input.id.as_str()).collect();
        let keys: BTreeSet<&str> = result.keys().map(String::as_str).collect();
        assert_eq!(ids, keys);
        let mut given = BTreeSet::new();
        for input in inputs {
            for tp in &result[&input.id] {
                assert!(input.topics.contains(&tp.topic), "{tp} to {}, not subscribed", input.id);
                assert!(given.insert(tp.clone()), "{tp} given twice");
            }
        }
        let mut want = BTreeSet::new();
        for (topic, &count) in partitions {
            if inputs.iter().any(|input| input.topics.contains(topic)) {
                want.extend(tps(topic, 0..count));
            }
        }
        assert_eq!(given, want);
    }

    /// No partition could move from a holder to a subscriber of its topic with two fewer.
    fn check_greedy_balance(inputs: &[Input], result: &Assignment) {
        // The fewest partitions any subscriber of each topic holds.
        let mut least: BTreeMap<&str, usize> = BTreeMap::new();
        for input in inputs {
            let held = result[&input.id].len();
            for topic in &input.topics {
                let entry = least.entry(topic.as_str()).or_insert(held);
                *entry = (*entry).min(held);
            }
        }
        for input in inputs {
            let held = result[&input.id].len();
            for tp in &result[&input.id] {
                let least = least[tp.topic.as_str()];
                assert!(
                    held <= least + 1,
                    "{tp} could go from {} ({held}) to a subscriber with {least}",
                    input.id
                );
            }
        }
    }

    /// Counts within one of each other (for identical subscriptions).
    fn check_even(inputs: &[Input], result: &Assignment) {
        let held: Vec<usize> = inputs.iter().map(|input| result[&input.id].len()).collect();
        let (least, most) = (held.iter().min().unwrap(), held.iter().max().unwrap());
        assert!(most - least <= 1, "unbalanced: {held:?}");
    }

    /// As many partitions stay put as any balanced assignment could keep (for identical
    /// subscriptions and current targets that claim each partition once at most).
    fn check_minimal_movement(inputs: &[Input], result: &Assignment) {
        let held: Vec<usize> = inputs.iter().map(|input| result[&input.id].len()).collect();
        let total: usize = held.iter().sum();
        let (base, extra) = (total / inputs.len(), total % inputs.len());
        let all: BTreeSet<TopicPartition> = result.values().flatten().cloned().collect();
        let mut keepable: Vec<usize> = inputs
            .iter()
            .map(|input| input.current.intersection(&all).count())
            .collect();
        keepable.sort_unstable_by(|a, b| b.cmp(a));
        // The best balanced assignment gives the extra partitions to those who hold the most.
        let best: usize = keepable
            .iter()
            .enumerate()
            .map(|(rank, &kept)| kept.min(base + usize::from(rank < extra)))
            .sum();
        let stayed: usize = inputs
            .iter()
            .map(|input| input.current.intersection(&result[&input.id]).count())
            .sum();
        assert_eq!(stayed, best, "moved more than balance needs");
    }

    #[test]
    fn random_groups_keep_every_guarantee() {
        let mut rng = Rng::new(0x5EED);
        for round in 0..600 {
            let identical = round % 2 == 0;
            let clean = round % 4 < 2;
            let (inputs, partitions) = random_case(&mut rng, identical, clean);
            for strategy in ALL {
                let context = format!("round {round}, {strategy:?}");
                let result = run(strategy, &inputs, &partitions);
                check_complete(&inputs, &partitions, &result);

                let mut shuffled = inputs.clone();
                rng.shuffle(&mut shuffled);
                assert_eq!(run(strategy, &shuffled, &partitions), result, "{context}: order");

                if strategy != Strategy::Sticky {
                    continue;
                }
                check_greedy_balance(&inputs, &result);
                if identical && !inputs.is_empty() {
                    check_even(&inputs, &result);
                    if clean {
                        check_minimal_movement(&inputs, &result);
                    }
                }
                let mut again = inputs.clone();
                for input in &mut again {
                    input.current = result[&input.id].clone();
                }
                assert_eq!(run(strategy, &again, &partitions), result, "{context}: not stable");
            }
        }
    }

    #[test]
    fn sticky_handles_a_thousand_members_and_ten_thousand_partitions() {
        let topics: Vec<String> = (0..10).map(|topic| format!("t{topic}")).collect();
        let partitions: BTreeMap<String, u32> = topics.iter().map(|topic| (topic.clone(), 1000)).collect();
        let mut inputs: Vec<Input> = (0..1000)
            .map(|index| Input {
                id: format!("m{index:04}"),
                sort_key: format!("m{index:04}"),
                // Every fourth member subscribes to half the topics only.
                topics: if index % 4 == 0 {
                    topics[..5].to_vec()
                } else {
                    topics.clone()
                },
                current: BTreeSet::new(),
            })
            .collect();
        let first = run(Strategy::Sticky, &inputs, &partitions);
        check_complete(&inputs, &partitions, &first);
        check_greedy_balance(&inputs, &first);

        // One member leaves and another joins: only a handful of partitions move.
        for input in &mut inputs {
            input.current = first[&input.id].clone();
        }
        inputs.remove(1);
        inputs.push(member("new", &["t0", "t1"], BTreeSet::new()));
        let second = run(Strategy::Sticky, &inputs, &partitions);
        check_complete(&inputs, &partitions, &second);
        check_greedy_balance(&inputs, &second);
        let moved: usize = inputs
            .iter()
            .map(|input| second[&input.id].difference(&input.current).count())
            .sum();
        // The leaver's 10 are handed out and the newcomer takes about 10 from t0 and t1
        // holders; with different subscriptions a few more move on the way (a member that got
        // one of the leaver's partitions may hold nothing the newcomer can take).
        assert_eq!(first["m0001"].len(), 10);
        assert!(moved <= 30, "{moved} partitions moved");
    }
}
