//! `__consumer_offsets` does not grow without bound: after `checkpoint_records` records the
//! coordinator restates every group in one checkpoint batch (a compaction point), and the
//! segments below it are deleted. A broker killed and restarted after that replays the
//! compacted partition to the same groups: every latest commit, a deleted group still gone,
//! a member still a member.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use tonic::Code;
use weir_proto::v1 as proto;
use weir_proto::v1::groups_client::GroupsClient;
use weir_tests::wait::until;
use weir_tests::BrokerProcess;

const TOPIC: &str = "compacted";
const PARTITIONS: u32 = 4;
const GROUPS: usize = 5;
const COMMITS: u64 = 3_000;

fn commit(group: &str, partition: u32, offset: u64) -> proto::CommitOffsetsRequest {
    proto::CommitOffsetsRequest {
        group: group.into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![proto::CommitOffset {
            topic: TOPIC.into(),
            partition,
            offset,
            metadata: format!("commit {offset}"),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_log_is_compacted_and_replays_the_same() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[groups]\noffsets_topic_partitions = 1\noffsets_topic_segment_bytes = 262144\ncheckpoint_records = 200\n",
    )?;
    let mut broker = BrokerProcess::start_with_args(dir.path().join("data"), ["--config", config.to_str().unwrap()])?;
    let client = broker.client()?;
    client
        .admin()
        .create_topic(TOPIC, PARTITIONS, 1, Default::default())
        .await?;
    let mut groups = GroupsClient::connect(broker.endpoint()).await?;

    // A member that stays through it all.
    let joined = groups
        .heartbeat(proto::GroupHeartbeatRequest {
            group: "with-member".into(),
            member_id: "stays".into(),
            member_epoch: 0,
            topics: vec![TOPIC.into()],
            session_timeout_ms: 300_000,
            ..Default::default()
        })
        .await?
        .into_inner();

    let mut latest: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for i in 0..COMMITS {
        let group = format!("g{}", i as usize % GROUPS);
        let partition = (i / GROUPS as u64) as u32 % PARTITIONS;
        groups.commit_offsets(commit(&group, partition, i)).await?;
        latest.insert((group, partition), i);
    }
    groups
        .delete_group(proto::DeleteGroupRequest { group: "g4".into() })
        .await?;
    latest.retain(|(group, _), _| group != "g4");

    let admin = client.admin();
    let start = until(
        "the offsets partition to be compacted",
        Duration::from_secs(30),
        || async {
            let description = admin.describe_topic(weir_proto::OFFSETS_TOPIC).await?;
            let start = description.partitions[0].log_start_offset;
            Ok((start > 0).then_some(start))
        },
    )
    .await?;
    let log = broker.log();
    ensure!(
        log.contains("checkpoint of __consumer_offsets written"),
        "no checkpoint in the log"
    );
    eprintln!("log start of __consumer_offsets after compaction: {start} (of {COMMITS}+ records)");

    broker.kill9()?;
    broker.restart()?;
    let mut groups = GroupsClient::connect(broker.endpoint()).await?;
    for ((group, partition), offset) in &latest {
        let described = until(&format!("{group} described"), Duration::from_secs(30), || {
            let mut groups = groups.clone();
            let group = group.clone();
            async move {
                match groups.describe_group(proto::DescribeGroupRequest { group }).await {
                    Ok(answer) => Ok(Some(answer.into_inner())),
                    Err(status) if status.code() == Code::Unavailable => Ok(None),
                    Err(status) => Err(status.into()),
                }
            }
        })
        .await?;
        let stored = described
            .offsets
            .iter()
            .find(|o| o.topic == TOPIC && o.partition == *partition)
            .with_context(|| format!("{group}/{partition} missing after the restart"))?;
        ensure!(
            stored.committed_offset == *offset as i64 && stored.metadata == format!("commit {offset}"),
            "{group}/{partition}: {stored:?}, expected {offset}"
        );
    }
    let deleted = groups
        .describe_group(proto::DescribeGroupRequest { group: "g4".into() })
        .await
        .expect_err("deleted group");
    ensure!(deleted.code() == Code::NotFound, "{deleted:?}");
    let member = groups
        .describe_group(proto::DescribeGroupRequest {
            group: "with-member".into(),
        })
        .await?
        .into_inner();
    ensure!(
        member.members.len() == 1 && member.members[0].member_id == joined.member_id,
        "{member:?}"
    );
    Ok(())
}
