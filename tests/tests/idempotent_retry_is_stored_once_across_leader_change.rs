//! Idempotent produce on three real brokers, with the retries spelled out (raw gRPC): a batch
//! stamped with a producer id and sequence numbers, sent again after it was stored (as a
//! producer does after a timeout or a cut connection), is answered with the first copy's
//! offsets and stored once: by the same leader, by a new leader after the old one is killed
//! (which learned the batch as a follower), and by the old leader after a kill -9 and restart,
//! once it leads again (it rebuilt its table from its log). An old sequence is refused. The
//! partition's high watermark counts each batch once.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use tonic::Code;
use weir_proto::batch::BatchBuilder;
use weir_proto::v1 as proto;
use weir_proto::v1::weir_client::WeirClient;
use weir_tests::cluster::Cluster;

const TOPIC: &str = "idempotent";
const PRODUCER: i64 = 0x5eed;

fn batch(first_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        let value = format!("seq-{}", first_sequence as usize + i);
        builder
            .push(1_700_000_000_000, None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.set_producer(PRODUCER, 0, first_sequence);
    builder.finish()
}

/// Produces `bytes` to the partition's leader, following leader changes for up to 20 s.
async fn produce(cluster: &Cluster, bytes: &[u8]) -> Result<Result<proto::ProduceResponse, tonic::Status>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = cluster.wait_leader(TOPIC, 0, Duration::from_secs(20)).await?;
        let mut client = WeirClient::connect(cluster.node(leader).endpoint()).await?;
        let answer = client
            .produce(proto::ProduceRequest {
                topic: TOPIC.into(),
                partition: 0,
                batch: bytes.to_vec().into(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(response) => return Ok(Ok(response.into_inner())),
            Err(status)
                if matches!(status.code(), Code::Unavailable | Code::FailedPrecondition)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => return Ok(Err(status)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_is_stored_once_across_leader_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3)?;
    cluster.create_fully_replicated(TOPIC, 1).await?;

    let first = produce(&cluster, &batch(0, 3)).await??;
    ensure!(first.base_offset == 0 && first.high_watermark == 3, "{first:?}");
    let retry = produce(&cluster, &batch(0, 3)).await??;
    ensure!(retry.base_offset == 0, "a retry to the same leader: {retry:?}");

    // A new leader learned the batch as a follower.
    let leader = cluster.wait_leader(TOPIC, 0, Duration::from_secs(20)).await?;
    cluster.kill9(leader)?;
    let after_kill = produce(&cluster, &batch(0, 3)).await??;
    ensure!(after_kill.base_offset == 0, "a retry to the new leader: {after_kill:?}");
    let second = produce(&cluster, &batch(3, 2)).await??;
    ensure!(second.base_offset == 3, "{second:?}");

    // The killed node restarts with a table rebuilt from its log; make it lead by killing the
    // others in turn until it does (it holds the whole log once it caught up).
    cluster.restart(leader)?;
    cluster.wait_replicas_at(TOPIC, &[5], Duration::from_secs(30)).await?;
    for _ in 0..4 {
        let current = cluster.wait_leader(TOPIC, 0, Duration::from_secs(20)).await?;
        if current == leader {
            break;
        }
        cluster.kill9(current)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(current)?;
        cluster.wait_replicas_at(TOPIC, &[5], Duration::from_secs(30)).await?;
    }
    let restarted_leads = cluster.wait_leader(TOPIC, 0, Duration::from_secs(20)).await? == leader;
    for retried in [batch(0, 3), batch(3, 2)] {
        let again = produce(&cluster, &retried).await??;
        ensure!(again.base_offset == 0 || again.base_offset == 3, "{again:?}");
    }
    let old = produce(&cluster, &batch(1, 1)).await?;
    let refused = old.err().context("an old sequence must be refused")?;
    ensure!(
        refused.code() == Code::InvalidArgument && refused.message().contains("sequence"),
        "{refused:?}"
    );
    let third = produce(&cluster, &batch(5, 1)).await??;
    ensure!(third.base_offset == 5 && third.high_watermark == 6, "{third:?}");
    eprintln!("the restarted node led for the last retries: {restarted_leads}");
    Ok(())
}
