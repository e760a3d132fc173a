//! A commit whose request the client gives up on (a deadline of a few milliseconds, so some
//! are cancelled after the coordinator proposed them) still takes effect once it commits: the
//! coordinator's answers afterwards agree with what a new coordinator replays from the log,
//! and nothing waits for cancelled commits forever (a reset of the group goes through).

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use tonic::transport::Channel;
use weir_proto::v1 as proto;
use weir_proto::v1::groups_client::GroupsClient;
use weir_tests::cluster::Cluster;
use weir_tests::wait::until;

const GROUP: &str = "impatient";
const TOPIC: &str = "t";

fn commit(offset: u64) -> proto::CommitOffsetsRequest {
    proto::CommitOffsetsRequest {
        group: GROUP.into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![proto::CommitOffset {
            topic: TOPIC.into(),
            partition: 0,
            offset,
            metadata: String::new(),
        }],
    }
}

async fn committed(groups: &mut GroupsClient<Channel>) -> Result<Option<i64>> {
    let answer = groups
        .fetch_offsets(proto::FetchOffsetsRequest {
            group: GROUP.into(),
            partitions: vec![],
        })
        .await?
        .into_inner();
    Ok(answer.offsets.iter().find(|o| o.partition == 0).map(|o| o.offset))
}

async fn coordinator(cluster: &Cluster) -> Result<(u64, GroupsClient<Channel>)> {
    let partition = weir_proto::group_partition(GROUP, 8);
    let node = cluster
        .wait_leader(weir_proto::OFFSETS_TOPIC, partition, Duration::from_secs(30))
        .await?;
    Ok((node, GroupsClient::connect(cluster.node(node).endpoint()).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_cancelled_by_its_client_still_applies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3)?;
    cluster.create_fully_replicated(TOPIC, 1).await?;
    // The first group request creates __consumer_offsets (8 partitions by default).
    cluster.client()?.admin().committed_offsets(GROUP).await.ok();
    let (node, mut groups) = coordinator(&cluster).await?;
    groups.commit_offsets(commit(1)).await?;

    let cancelled = impatient_commits(&mut groups, 2).await;
    eprintln!("{cancelled} of 60 commits were given up on by the client");
    // Whatever of them committed is applied by now (a commit takes milliseconds).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live = committed(&mut groups).await?.context("an offset is committed")?;

    // A new coordinator replays the log: it must answer the same.
    cluster.kill9(node)?;
    let (_, mut replayed) = coordinator(&cluster).await?;
    let after = until("the new coordinator to answer", Duration::from_secs(30), || {
        let mut replayed = replayed.clone();
        async move { Ok(committed(&mut replayed).await.ok().flatten()) }
    })
    .await?;
    ensure!(
        after == live,
        "the coordinator answered {live} but its log holds {after}: a cancelled commit was not applied"
    );

    // No cancelled commit stays counted as in flight: a reset (which waits for commits in
    // flight) goes through.
    let cancelled = impatient_commits(&mut replayed, 1_000).await;
    eprintln!("{cancelled} of 60 commits were given up on by the client");
    let reset = proto::ResetOffsetsRequest {
        group: GROUP.into(),
        offsets: vec![proto::CommitOffset {
            topic: TOPIC.into(),
            partition: 0,
            offset: 0,
            metadata: String::new(),
        }],
    };
    tokio::time::timeout(Duration::from_secs(10), replayed.reset_offsets(reset))
        .await
        .context("the reset waited for commits that will never finish")??;
    ensure!(committed(&mut replayed).await? == Some(0), "the reset did not apply");
    cluster.restart(node)?;
    Ok(())
}

/// 60 commits from `first` on, each with a deadline of 0.5 to 5 ms; returns how many failed.
async fn impatient_commits(groups: &mut GroupsClient<Channel>, first: u64) -> usize {
    let mut failed = 0;
    for attempt in 0..60u64 {
        let mut request = tonic::Request::new(commit(first + attempt));
        request.set_timeout(Duration::from_micros(500 + (attempt % 12) * 400));
        if groups.commit_offsets(request).await.is_err() {
            failed += 1;
        }
    }
    failed
}
