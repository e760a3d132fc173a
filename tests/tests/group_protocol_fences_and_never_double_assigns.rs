//! The consumer-group protocol on a real broker, spoken raw (no client library): the first group
//! request creates `__consumer_offsets`; members get every partition exactly once, and a new
//! member gets partitions only after their owner reported them released; stale members and
//! stale epochs are fenced with `weir-fenced`; a static member restarting keeps its partitions;
//! commits never go backwards; reset and delete need an empty group; unknown groups are
//! NOT_FOUND; clients cannot write the internal topic nor mark a batch as a compaction point; the
//! group survives a broker restart (replayed from `__consumer_offsets`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use tonic::transport::Channel;
use tonic::Code;
use weir_proto::v1 as proto;
use weir_proto::v1::groups_client::GroupsClient;
use weir_tests::BrokerProcess;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 6;
const GROUP: &str = "billing";

type Owned = BTreeSet<(String, u32)>;

fn to_set(list: &[proto::TopicPartitions]) -> Owned {
    list.iter()
        .flat_map(|tp| tp.partitions.iter().map(move |p| (tp.topic.clone(), *p)))
        .collect()
}

fn to_list(set: &Owned) -> Vec<proto::TopicPartitions> {
    let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (topic, partition) in set {
        by_topic.entry(topic.clone()).or_default().push(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| proto::TopicPartitions { topic, partitions })
        .collect()
}

struct Member {
    id: String,
    epoch: i64,
    owned: Owned,
}

/// Joins, retrying while the group's coordinator is still being elected (the first group
/// request created `__consumer_offsets` a moment ago).
async fn join(groups: &mut GroupsClient<Channel>) -> Result<Member> {
    let request = proto::GroupHeartbeatRequest {
        group: GROUP.into(),
        member_epoch: 0,
        client_id: "protocol-test".into(),
        topics: vec![TOPIC.into()],
        session_timeout_ms: 5_000,
        ..Default::default()
    };
    let mut attempts = 0;
    let answer = loop {
        match groups.heartbeat(request.clone()).await {
            Err(status) if status.code() == Code::Unavailable && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => break answer?.into_inner(),
        }
    };
    Ok(Member {
        id: answer.member_id,
        epoch: answer.member_epoch,
        owned: to_set(&answer.assignment),
    })
}

async fn join_static(groups: &mut GroupsClient<Channel>, instance: &str) -> Result<Member> {
    let answer = groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_epoch: 0,
            instance_id: instance.into(),
            topics: vec![TOPIC.into()],
            session_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(Member {
        id: answer.member_id,
        epoch: answer.member_epoch,
        owned: to_set(&answer.assignment),
    })
}

/// One heartbeat that reports what the member owns and takes what it is told (a member that
/// releases revoked partitions at once).
async fn beat(groups: &mut GroupsClient<Channel>, member: &mut Member) -> Result<bool> {
    let answer = groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_id: member.id.clone(),
            member_epoch: member.epoch,
            owned: to_list(&member.owned),
            max_wait_ms: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    member.epoch = answer.member_epoch;
    member.owned = to_set(&answer.assignment);
    Ok(answer.reconciling)
}

fn assert_exclusive(members: &[&Member]) -> Result<()> {
    let mut seen = Owned::new();
    for member in members {
        for tp in &member.owned {
            ensure!(seen.insert(tp.clone()), "{tp:?} owned by two members");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_protocol_fences_and_never_double_assigns() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path())?;
    let client = broker.client()?;
    client
        .admin()
        .create_topic(TOPIC, PARTITIONS, 1, Default::default())
        .await?;
    let mut groups = GroupsClient::connect(broker.endpoint()).await?;

    // Unknown group: NOT_FOUND (this first request also creates __consumer_offsets).
    let unknown = groups
        .describe_group(proto::DescribeGroupRequest { group: "nobody".into() })
        .await
        .expect_err("unknown group");
    ensure!(unknown.code() == Code::NotFound, "describe unknown group: {unknown:?}");

    // One member gets everything.
    let mut a = join(&mut groups).await?;
    for _ in 0..3 {
        beat(&mut groups, &mut a).await?;
    }
    ensure!(a.owned.len() == PARTITIONS as usize, "a owns {:?}", a.owned);

    // A second member joins: it gets nothing until a gave partitions up.
    let mut b = join(&mut groups).await?;
    ensure!(b.owned.is_empty(), "b got {:?} before a released anything", b.owned);
    let held_by_a = a.owned.clone();
    beat(&mut groups, &mut b).await?;
    ensure!(b.owned.is_empty(), "b got {:?} while a still owned them", b.owned);
    // a hears about the revocation; until it reports, b still gets nothing.
    let mut told = Member {
        id: a.id.clone(),
        epoch: a.epoch,
        owned: held_by_a.clone(),
    };
    beat(&mut groups, &mut told).await?;
    ensure!(told.owned.len() == 3, "a should keep 3: {:?}", told.owned);
    beat(&mut groups, &mut b).await?;
    ensure!(b.owned.is_empty(), "b got {:?} before a reported the release", b.owned);
    a = told;
    for _ in 0..3 {
        beat(&mut groups, &mut a).await?;
        beat(&mut groups, &mut b).await?;
        assert_exclusive(&[&a, &b])?;
    }
    ensure!(
        a.owned.len() == 3 && b.owned.len() == 3,
        "a {:?} b {:?}",
        a.owned,
        b.owned
    );

    // Commits: accepted from the owner, never backwards, fenced from stale members.
    let (topic, partition) = a.owned.iter().next().cloned().context("a owns something")?;
    let commit = |member: &Member, offset: u64| proto::CommitOffsetsRequest {
        group: GROUP.into(),
        member_id: member.id.clone(),
        member_epoch: member.epoch,
        offsets: vec![proto::CommitOffset {
            topic: topic.clone(),
            partition,
            offset,
            metadata: "checkpoint".into(),
        }],
    };
    groups.commit_offsets(commit(&a, 10)).await?;
    let backwards = groups.commit_offsets(commit(&a, 5)).await.expect_err("backwards");
    ensure!(
        backwards.code() == Code::InvalidArgument && backwards.message().contains("backwards"),
        "backwards commit: {backwards:?}"
    );
    let not_owner = groups.commit_offsets(commit(&b, 20)).await.expect_err("not the owner");
    ensure!(
        not_owner.code() == Code::FailedPrecondition && not_owner.metadata().get("weir-fenced").is_some(),
        "commit of a partition b does not own: {not_owner:?}"
    );
    let stale = Member {
        id: a.id.clone(),
        epoch: a.epoch + 1000,
        owned: Owned::new(),
    };
    let future_epoch = groups
        .commit_offsets(commit(&stale, 20))
        .await
        .expect_err("epoch from the future");
    ensure!(future_epoch.metadata().get("weir-fenced").is_some(), "{future_epoch:?}");

    // a leaves; its old id is fenced from then on, and b takes everything.
    groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_id: a.id.clone(),
            member_epoch: -1,
            ..Default::default()
        })
        .await?;
    let after_leave = groups.commit_offsets(commit(&a, 30)).await.expect_err("left member");
    ensure!(
        after_leave.code() == Code::FailedPrecondition && after_leave.metadata().get("weir-fenced").is_some(),
        "commit from a member that left: {after_leave:?}"
    );
    ensure!(
        after_leave.message().contains("rejoin"),
        "message: {}",
        after_leave.message()
    );
    for _ in 0..3 {
        beat(&mut groups, &mut b).await?;
    }
    ensure!(b.owned.len() == PARTITIONS as usize, "b owns {:?}", b.owned);

    // Static membership: a member with an instance id that leaves for a restart keeps its
    // partitions (nobody else gets them); its next incarnation gets them back with no new
    // group epoch, and the previous incarnation is fenced.
    let mut s = join_static(&mut groups, "worker-1").await?;
    for _ in 0..4 {
        beat(&mut groups, &mut b).await?;
        beat(&mut groups, &mut s).await?;
        assert_exclusive(&[&b, &s])?;
    }
    ensure!(
        s.owned.len() == 3 && b.owned.len() == 3,
        "s {:?} b {:?}",
        s.owned,
        b.owned
    );
    let describe = |groups: &mut GroupsClient<Channel>| {
        let mut groups = groups.clone();
        async move {
            anyhow::Ok(
                groups
                    .describe_group(proto::DescribeGroupRequest { group: GROUP.into() })
                    .await?
                    .into_inner(),
            )
        }
    };
    let epoch_before = describe(&mut groups).await?.group_epoch;
    groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_id: s.id.clone(),
            member_epoch: -2,
            ..Default::default()
        })
        .await?;
    beat(&mut groups, &mut b).await?;
    ensure!(
        b.owned.len() == 3,
        "b got a static member's partitions while it restarts: {:?}",
        b.owned
    );
    let away = describe(&mut groups).await?;
    ensure!(
        away.members
            .iter()
            .any(|m| m.member_id == s.id && m.away && to_set(&m.assignment) == s.owned),
        "the static member is not kept while away: {away:?}"
    );
    let s2 = join_static(&mut groups, "worker-1").await?;
    ensure!(
        s2.id != s.id && s2.owned == s.owned,
        "the new incarnation got {:?}, not {:?}",
        s2.owned,
        s.owned
    );
    ensure!(
        describe(&mut groups).await?.group_epoch == epoch_before,
        "a static rejoin rebalanced the group"
    );
    let old = groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_id: s.id.clone(),
            member_epoch: s.epoch,
            ..Default::default()
        })
        .await
        .expect_err("the previous incarnation");
    ensure!(old.metadata().get("weir-fenced").is_some(), "{old:?}");
    groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_id: s2.id.clone(),
            member_epoch: -1,
            ..Default::default()
        })
        .await?;
    for _ in 0..3 {
        beat(&mut groups, &mut b).await?;
    }
    ensure!(b.owned.len() == PARTITIONS as usize, "b owns {:?}", b.owned);

    // Reset and delete need an empty group.
    let reset = proto::ResetOffsetsRequest {
        group: GROUP.into(),
        offsets: vec![proto::CommitOffset {
            topic: topic.clone(),
            partition,
            offset: 0,
            metadata: String::new(),
        }],
    };
    let busy = groups
        .reset_offsets(reset.clone())
        .await
        .expect_err("group has members");
    ensure!(busy.code() == Code::FailedPrecondition, "reset with members: {busy:?}");

    // The internal topic is not writable by clients.
    let mut data = broker.data_client().await?;
    let internal = data
        .produce(proto::ProduceRequest {
            topic: weir_proto::OFFSETS_TOPIC.into(),
            partition: 0,
            batch: weir_proto::batch::BatchBuilder::new().finish().into(),
            ..Default::default()
        })
        .await
        .expect_err("internal topic");
    ensure!(
        internal.code() == Code::InvalidArgument,
        "produce to __consumer_offsets: {internal:?}"
    );
    // Nor may a client mark a batch as a compaction point (it would delete data below it).
    let mut marked = weir_proto::batch::BatchBuilder::new();
    marked.push(0, None, Some(b"x"), &[])?;
    marked.mark_compaction_point();
    let refused = data
        .produce(proto::ProduceRequest {
            topic: TOPIC.into(),
            partition: 0,
            batch: marked.finish().into(),
            ..Default::default()
        })
        .await
        .expect_err("compaction point from a client");
    ensure!(
        refused.code() == Code::InvalidArgument && refused.message().contains("reserved"),
        "a client batch marked as a compaction point: {refused:?}"
    );

    // A crash and restart replays the group: b is still a member with its partitions, the commit is there.
    broker.kill9()?;
    broker.restart()?;
    let mut groups = GroupsClient::connect(broker.endpoint()).await?;
    let mut restored = None;
    for _ in 0..100 {
        match groups
            .describe_group(proto::DescribeGroupRequest { group: GROUP.into() })
            .await
        {
            Ok(answer) => {
                restored = Some(answer.into_inner());
                break;
            }
            Err(status) if status.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(status) => return Err(status.into()),
        }
    }
    let restored = restored.context("group not described after restart")?;
    ensure!(
        restored.members.len() == 1 && restored.members[0].member_id == b.id,
        "{restored:?}"
    );
    let committed = restored
        .offsets
        .iter()
        .find(|o| o.topic == topic && o.partition == partition)
        .context("committed partition listed")?;
    ensure!(
        committed.committed_offset == 10 && committed.metadata == "checkpoint",
        "{committed:?}"
    );

    // b leaves: now reset (backwards) and delete work.
    beat(&mut groups, &mut b).await?;
    groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: GROUP.into(),
            member_id: b.id.clone(),
            member_epoch: -1,
            ..Default::default()
        })
        .await?;
    groups.reset_offsets(reset).await?;
    let fetched = groups
        .fetch_offsets(proto::FetchOffsetsRequest {
            group: GROUP.into(),
            partitions: vec![],
        })
        .await?
        .into_inner();
    ensure!(
        fetched
            .offsets
            .iter()
            .any(|o| o.topic == topic && o.partition == partition && o.offset == 0),
        "after reset: {fetched:?}"
    );
    let listed = groups.list_groups(proto::ListGroupsRequest {}).await?.into_inner();
    ensure!(
        listed.groups.iter().any(|g| g.group == GROUP && g.state == "empty"),
        "{listed:?}"
    );
    groups
        .delete_group(proto::DeleteGroupRequest { group: GROUP.into() })
        .await?;
    let gone = groups
        .describe_group(proto::DescribeGroupRequest { group: GROUP.into() })
        .await
        .expect_err("deleted");
    ensure!(gone.code() == Code::NotFound, "{gone:?}");
    Ok(())
}
