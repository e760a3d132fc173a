//! The fake broker's `Groups` service: a small coordinator with the wire contract's rules as
//! far as the client's tests need them. Round-robin targets over the members sorted by id;
//! incremental hand-over (a partition goes to a member only once no other member holds it);
//! epochs that change with the assignment; long-polled heartbeats; fencing; commits that never
//! go backwards; session timeouts. The node that leads every partition (`Store::leader`) is
//! every group's coordinator. The first group request creates `__consumer_offsets` and is
//! answered UNAVAILABLE, as a broker still creating it would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use weir_proto::v1 as proto;
use weir_proto::v1::groups_server::Groups;

use super::{FakeNode, Store};

pub type Tp = (String, u32);

#[derive(Debug, Clone)]
pub struct FakeMember {
    pub id: String,
    pub instance_id: String,
    pub epoch: i64,
    pub joined_epoch: i64,
    pub topics: Vec<String>,
    pub target: BTreeSet<Tp>,
    pub assigned: BTreeSet<Tp>,
    pub revoking: BTreeSet<Tp>,
    pub last_seen: Instant,
    pub session: Duration,
}

impl FakeMember {
    fn holds(&self, tp: &Tp) -> bool {
        self.assigned.contains(tp) || self.revoking.contains(tp)
    }
}

#[derive(Debug, Default)]
pub struct FakeGroup {
    pub members: BTreeMap<String, FakeMember>,
    pub offsets: BTreeMap<Tp, u64>,
    pub group_epoch: u64,
    last_member_epoch: i64,
    /// Members are named `member-1`, `member-2`, ... in the order they join.
    members_joined: u64,
}

/// What the coordinator saw, in order, for the tests to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Join {
        member: String,
    },
    Leave {
        member: String,
        epoch: i64,
    },
    /// A heartbeat and the partitions it reported owned.
    Owned {
        member: String,
        owned: Vec<Tp>,
    },
    Commit {
        member: String,
        epoch: i64,
        offsets: Vec<(Tp, u64)>,
    },
    Fenced {
        member: String,
    },
}

#[derive(Debug, Default)]
pub struct Coordinator {
    pub groups: Mutex<BTreeMap<String, FakeGroup>>,
    pub events: Mutex<Vec<Event>>,
    /// Wakes held heartbeats when any assignment changed.
    pub changed: Notify,
    pub offsets_topic_created: AtomicBool,
    /// While set, heartbeats are held unanswered (a coordinator cut off from the member).
    pub stalled: AtomicBool,
}

impl Coordinator {
    fn event(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Forgets a member, as an eviction would; its next request is fenced.
    pub fn evict(&self, group: &str, member: &str, store: &Store) {
        let mut groups = self.groups.lock().unwrap();
        let group = groups.get_mut(group).unwrap();
        group.members.remove(member);
        retarget(group, store);
        reconcile_all(group);
        self.changed.notify_waiters();
    }

    /// Forgets a member without waking anyone: its next request (a commit, or its heartbeat
    /// once the one held now is answered) is fenced.
    pub fn forget(&self, group: &str, member: &str) {
        let mut groups = self.groups.lock().unwrap();
        groups.get_mut(group).unwrap().members.remove(member);
    }

    /// (member id, epoch, assigned partitions) of every member.
    pub fn members(&self, group: &str) -> Vec<(String, i64, Vec<Tp>)> {
        let groups = self.groups.lock().unwrap();
        groups.get(group).map_or_else(Vec::new, |group| {
            group
                .members
                .values()
                .map(|m| (m.id.clone(), m.epoch, m.assigned.iter().cloned().collect()))
                .collect()
        })
    }

    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let groups = self.groups.lock().unwrap();
        groups.get(group)?.offsets.get(&(topic.to_owned(), partition)).copied()
    }
}

fn fenced(message: String) -> Status {
    let mut status = Status::failed_precondition(message);
    status.metadata_mut().insert("weir-fenced", "true".parse().unwrap());
    status
}

/// Round-robin over the members sorted by id, of every subscribed partition.
fn retarget(group: &mut FakeGroup, store: &Store) {
    group.group_epoch += 1;
    let topics: BTreeSet<String> = group.members.values().flat_map(|m| m.topics.clone()).collect();
    let counts: BTreeMap<String, u32> = {
        let stored = store.topics.lock().unwrap();
        topics
            .iter()
            .map(|t| (t.clone(), stored.get(t).map_or(0, |p| p.len() as u32)))
            .collect()
    };
    for member in group.members.values_mut() {
        member.target.clear();
    }
    let ids: Vec<String> = group.members.keys().cloned().collect();
    let mut next = 0;
    for (topic, count) in counts {
        for partition in 0..count {
            let subscribed: Vec<&String> = ids
                .iter()
                .filter(|id| group.members[*id].topics.contains(&topic))
                .collect();
            if subscribed.is_empty() {
                continue;
            }
            let id = subscribed[next % subscribed.len()].clone();
            next += 1;
            group
                .members
                .get_mut(&id)
                .unwrap()
                .target
                .insert((topic.clone(), partition));
        }
    }
}

fn reconcile_all(group: &mut FakeGroup) {
    let ids: Vec<String> = group.members.keys().cloned().collect();
    for id in ids {
        let held_elsewhere: BTreeSet<Tp> = group
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.assigned.iter().chain(&m.revoking).cloned())
            .collect();
        let next_epoch = group.last_member_epoch + 1;
        let member = group.members.get_mut(&id).unwrap();
        let revoke: Vec<Tp> = member.assigned.difference(&member.target).cloned().collect();
        let gain: Vec<Tp> = member
            .target
            .iter()
            .filter(|tp| !member.holds(tp) && !held_elsewhere.contains(*tp))
            .cloned()
            .collect();
        let regain: Vec<Tp> = member.revoking.intersection(&member.target).cloned().collect();
        if revoke.is_empty() && gain.is_empty() && regain.is_empty() {
            continue;
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
        member.epoch = next_epoch;
        group.last_member_epoch = next_epoch;
    }
}

fn evict_expired(group: &mut FakeGroup, store: &Store) -> bool {
    let now = Instant::now();
    let expired: Vec<String> = group
        .members
        .values()
        .filter(|m| now.duration_since(m.last_seen) > m.session)
        .map(|m| m.id.clone())
        .collect();
    for id in &expired {
        group.members.remove(id);
    }
    if !expired.is_empty() {
        retarget(group, store);
    }
    !expired.is_empty()
}

fn wire(partitions: &BTreeSet<Tp>) -> Vec<proto::TopicPartitions> {
    let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic.clone()).or_default().push(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| proto::TopicPartitions { topic, partitions })
        .collect()
}

fn unwire(lists: &[proto::TopicPartitions]) -> BTreeSet<Tp> {
    lists
        .iter()
        .flat_map(|l| l.partitions.iter().map(|p| (l.topic.clone(), *p)))
        .collect()
}

impl FakeNode {
    /// The coordinator's checks every group request passes first.
    fn coordinator_ready(&self) -> Result<(), Status> {
        self.store.check_leader(self.node_id)?;
        let coordinator = &self.store.coordinator;
        if !coordinator.offsets_topic_created.swap(true, Ordering::SeqCst) {
            self.store.create_topic(weir_proto::OFFSETS_TOPIC, 4);
            return Err(Status::unavailable("creating __consumer_offsets"));
        }
        Ok(())
    }

    /// Handles a heartbeat (`first`: as it arrives; afterwards, while it is held: only the
    /// answer is computed again).
    fn heartbeat_once(
        &self,
        request: &proto::GroupHeartbeatRequest,
        first: bool,
    ) -> Result<proto::GroupHeartbeatResponse, Status> {
        let store = &self.store;
        let coordinator = &store.coordinator;
        let mut groups = coordinator.groups.lock().unwrap();
        let group = groups.entry(request.group.clone()).or_default();
        if evict_expired(group, store) {
            reconcile_all(group);
            coordinator.changed.notify_waiters();
        }
        let mut member_id = request.member_id.clone();
        match request.member_epoch {
            0 if first => {
                group.last_member_epoch += 1;
                group.members_joined += 1;
                member_id = format!("member-{}", group.members_joined);
                coordinator.event(Event::Join {
                    member: member_id.clone(),
                });
                let session = match request.session_timeout_ms {
                    0 => Duration::from_secs(10),
                    ms => Duration::from_millis(u64::from(ms)),
                };
                group.members.insert(
                    member_id.clone(),
                    FakeMember {
                        id: member_id.clone(),
                        instance_id: request.instance_id.clone(),
                        epoch: group.last_member_epoch,
                        joined_epoch: group.last_member_epoch,
                        topics: request.topics.clone(),
                        target: BTreeSet::new(),
                        assigned: BTreeSet::new(),
                        revoking: BTreeSet::new(),
                        last_seen: Instant::now(),
                        session,
                    },
                );
                retarget(group, store);
            }
            -1 | -2 => {
                if group.members.remove(&member_id).is_none() {
                    return Err(fenced(format!("member {member_id} is not in the group")));
                }
                coordinator.event(Event::Leave {
                    member: member_id.clone(),
                    epoch: request.member_epoch,
                });
                retarget(group, store);
                reconcile_all(group);
                coordinator.changed.notify_waiters();
                return Ok(proto::GroupHeartbeatResponse {
                    member_id,
                    member_epoch: request.member_epoch,
                    ..Default::default()
                });
            }
            epoch => {
                let Some(member) = group.members.get_mut(&member_id) else {
                    coordinator.event(Event::Fenced {
                        member: member_id.clone(),
                    });
                    return Err(fenced(format!("member {member_id} is not in the group; rejoin")));
                };
                if epoch > member.epoch || epoch < member.joined_epoch {
                    coordinator.event(Event::Fenced {
                        member: member_id.clone(),
                    });
                    return Err(fenced(format!("member {member_id} sent a stale epoch {epoch}")));
                }
                member.last_seen = Instant::now();
                if first {
                    let owned = unwire(&request.owned);
                    member.revoking.retain(|tp| owned.contains(tp));
                    coordinator.event(Event::Owned {
                        member: member_id.clone(),
                        owned: owned.into_iter().collect(),
                    });
                }
            }
        }
        let before: Vec<i64> = group.members.values().map(|m| m.epoch).collect();
        reconcile_all(group);
        if before != group.members.values().map(|m| m.epoch).collect::<Vec<_>>() {
            coordinator.changed.notify_waiters();
        }
        let member = &group.members[&member_id];
        Ok(proto::GroupHeartbeatResponse {
            member_id,
            member_epoch: member.epoch,
            assignment: wire(&member.assigned),
            heartbeat_interval_ms: 1_000,
            group_epoch: group.group_epoch,
            reconciling: member.assigned != member.target || !member.revoking.is_empty(),
        })
    }
}

#[tonic::async_trait]
impl Groups for FakeNode {
    async fn heartbeat(
        &self,
        request: Request<proto::GroupHeartbeatRequest>,
    ) -> Result<Response<proto::GroupHeartbeatResponse>, Status> {
        self.coordinator_ready()?;
        while self.store.coordinator.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let request = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        let mut first = true;
        loop {
            let changed = self.store.coordinator.changed.notified();
            let response = self.heartbeat_once(&request, first)?;
            first = false;
            let news = request.member_epoch <= 0 || response.member_epoch != request.member_epoch;
            if news || Instant::now() >= deadline {
                return Ok(Response::new(response));
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }

    async fn commit_offsets(
        &self,
        request: Request<proto::CommitOffsetsRequest>,
    ) -> Result<Response<proto::CommitOffsetsResponse>, Status> {
        self.coordinator_ready()?;
        let request = request.into_inner();
        let coordinator = &self.store.coordinator;
        let mut groups = coordinator.groups.lock().unwrap();
        let group = groups.entry(request.group.clone()).or_default();
        let offsets: Vec<(Tp, u64)> = request
            .offsets
            .iter()
            .map(|o| ((o.topic.clone(), o.partition), o.offset))
            .collect();
        if request.member_id.is_empty() {
            if !group.members.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "the group has {} member(s); only members commit while it has any",
                    group.members.len()
                )));
            }
        } else {
            let Some(member) = group.members.get(&request.member_id) else {
                coordinator.event(Event::Fenced {
                    member: request.member_id.clone(),
                });
                return Err(fenced(format!("member {} is not in the group", request.member_id)));
            };
            let stale = request.member_epoch > member.epoch || request.member_epoch < member.joined_epoch;
            if stale || offsets.iter().any(|(tp, _)| !member.holds(tp)) {
                coordinator.event(Event::Fenced {
                    member: request.member_id.clone(),
                });
                return Err(fenced(format!("member {} may not commit that", request.member_id)));
            }
        }
        if let Some((tp, _)) = offsets
            .iter()
            .find(|(tp, offset)| group.offsets.get(tp).is_some_and(|current| offset < current))
        {
            return Err(Status::invalid_argument(format!("commit would move {tp:?} backwards")));
        }
        group.offsets.extend(offsets.iter().cloned());
        coordinator.event(Event::Commit {
            member: request.member_id,
            epoch: request.member_epoch,
            offsets,
        });
        Ok(Response::new(proto::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<proto::FetchOffsetsRequest>,
    ) -> Result<Response<proto::FetchOffsetsResponse>, Status> {
        self.coordinator_ready()?;
        let request = request.into_inner();
        let groups = self.store.coordinator.groups.lock().unwrap();
        let empty = FakeGroup::default();
        let group = groups.get(&request.group).unwrap_or(&empty);
        let wanted: Vec<Tp> = if request.partitions.is_empty() {
            group.offsets.keys().cloned().collect()
        } else {
            unwire(&request.partitions).into_iter().collect()
        };
        let offsets = wanted
            .into_iter()
            .map(|tp| proto::CommittedOffset {
                offset: group.offsets.get(&tp).map_or(-1, |o| *o as i64),
                topic: tp.0,
                partition: tp.1,
                metadata: String::new(),
            })
            .collect();
        Ok(Response::new(proto::FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        _: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        let groups = self.store.coordinator.groups.lock().unwrap();
        let leader = self.store.leader.load(Ordering::SeqCst);
        Ok(Response::new(proto::ListGroupsResponse {
            groups: groups
                .iter()
                .map(|(name, group)| proto::GroupSummary {
                    group: name.clone(),
                    state: if group.members.is_empty() { "empty" } else { "stable" }.into(),
                    members: group.members.len() as u32,
                    coordinator: leader,
                })
                .collect(),
            unanswered_nodes: Vec::new(),
        }))
    }

    async fn describe_group(
        &self,
        request: Request<proto::DescribeGroupRequest>,
    ) -> Result<Response<proto::GroupDescription>, Status> {
        self.coordinator_ready()?;
        let name = request.into_inner().group;
        let groups = self.store.coordinator.groups.lock().unwrap();
        let group = groups
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("unknown group '{name}'")))?;
        let mut partitions: BTreeSet<Tp> = group.offsets.keys().cloned().collect();
        partitions.extend(group.members.values().flat_map(|m| m.target.iter().cloned()));
        let owner = |tp: &Tp| {
            group
                .members
                .values()
                .find(|m| m.holds(tp))
                .map_or_else(String::new, |m| m.id.clone())
        };
        Ok(Response::new(proto::GroupDescription {
            group: name.clone(),
            state: if group.members.is_empty() { "empty" } else { "stable" }.into(),
            group_epoch: group.group_epoch,
            strategy: 0,
            coordinator: self.node_id,
            members: group
                .members
                .values()
                .map(|m| proto::GroupMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: "c".into(),
                    member_epoch: m.epoch,
                    topics: m.topics.clone(),
                    assignment: wire(&m.assigned),
                    revoking: wire(&m.revoking),
                    last_heartbeat_ms_ago: 0,
                    away: false,
                })
                .collect(),
            // The fake coordinator "holds no replica" of any partition: the client asks the
            // partitions' leaders for their high watermarks.
            offsets: partitions
                .iter()
                .map(|tp| proto::GroupPartitionOffset {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    committed_offset: group.offsets.get(tp).map_or(-1, |o| *o as i64),
                    metadata: String::new(),
                    high_watermark: -1,
                    lag: -1,
                    member_id: owner(tp),
                })
                .collect(),
        }))
    }

    async fn reset_offsets(
        &self,
        request: Request<proto::ResetOffsetsRequest>,
    ) -> Result<Response<proto::ResetOffsetsResponse>, Status> {
        self.coordinator_ready()?;
        let request = request.into_inner();
        let mut groups = self.store.coordinator.groups.lock().unwrap();
        let group = groups
            .get_mut(&request.group)
            .ok_or_else(|| Status::not_found(format!("unknown group '{}'", request.group)))?;
        if !group.members.is_empty() {
            return Err(Status::failed_precondition(format!(
                "group '{}' has {} member(s); stop them before resetting its offsets",
                request.group,
                group.members.len()
            )));
        }
        for offset in request.offsets {
            group.offsets.insert((offset.topic, offset.partition), offset.offset);
        }
        Ok(Response::new(proto::ResetOffsetsResponse {}))
    }

    async fn delete_group(
        &self,
        request: Request<proto::DeleteGroupRequest>,
    ) -> Result<Response<proto::DeleteGroupResponse>, Status> {
        self.coordinator_ready()?;
        let name = request.into_inner().group;
        let mut groups = self.store.coordinator.groups.lock().unwrap();
        let group = groups
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("unknown group '{name}'")))?;
        if !group.members.is_empty() {
            return Err(Status::failed_precondition(format!("group '{name}' has members")));
        }
        groups.remove(&name);
        Ok(Response::new(proto::DeleteGroupResponse {}))
    }
}
