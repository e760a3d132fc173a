//! "Read from the nearest replica": a consumer that names a follower as its preferred replica
//! reads every committed record from it; without `from_replica` the follower still answers
//! NOT_LEADER, and a follower never serves past its own high watermark.

use std::time::Duration;

use anyhow::{ensure, Result};
use tonic::Code;
use weir_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo, TopicConfig};
use weir_proto::v1 as proto;
use weir_tests::cluster::Cluster;

const TOPIC: &str = "nearest";
const RECORDS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_serves_committed_records_when_asked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), 3)?;
    let client = cluster.client()?;
    client.admin().create_topic(TOPIC, 1, 3, TopicConfig::default()).await?;
    let producer = client.producer(ProducerConfig::default())?;
    for i in 0..RECORDS {
        producer
            .send(ProducerRecord::new(TOPIC).with_partition(0).with_value(format!("v{i}")))
            .await?;
    }
    let leader = cluster.wait_leader(TOPIC, 0, Duration::from_secs(30)).await?;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).expect("three nodes");
    cluster
        .wait_replicas_at(TOPIC, &[RECORDS], Duration::from_secs(30))
        .await?;

    // Raw requests to the follower: refused as a leader read, served as a replica read.
    let mut data = cluster.node(follower).data_client().await?;
    let request = |from_replica| proto::FetchRequest {
        topic: TOPIC.to_owned(),
        partition: 0,
        offset: 0,
        from_replica,
        ..Default::default()
    };
    let refused = data
        .fetch(request(false))
        .await
        .expect_err("a follower is not the leader");
    ensure!(refused.code() == Code::FailedPrecondition, "{refused:?}");
    let served = data.fetch(request(true)).await?.into_inner();
    ensure!(
        !served.batches.is_empty() && served.high_watermark == RECORDS,
        "{served:?}"
    );

    // A consumer that prefers the follower reads everything, in order.
    let reader = Client::new(ClientConfig::new(&cluster.node(follower).bootstrap())?)?;
    let mut consumer = reader.consumer(ConsumerConfig::default().read_from_replica(follower));
    consumer.assign(TOPIC, &[0]).await?;
    consumer.seek(TOPIC, 0, SeekTo::Beginning).await?;
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (read.len() as u64) < RECORDS {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "read {} of {RECORDS} records",
            read.len()
        );
        read.extend(consumer.poll().await?);
    }
    for (i, record) in read.iter().enumerate() {
        ensure!(record.offset == i as u64, "record {i} has offset {}", record.offset);
        ensure!(
            record.value.as_deref() == Some(format!("v{i}").as_bytes()),
            "record {i}"
        );
    }
    Ok(())
}
