//! Read-your-writes: once a produce is acknowledged (acks=all: committed), a fetch sent after
//! the acknowledgement returns the record; the high watermark it answers already covers it. A
//! broker that answers the producer before it publishes the new high watermark fails this
//! intermittently (more often on a loaded machine), so the test repeats the round trip.

use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use tonic::transport::Channel;
use weir_proto::batch::{BatchBuilder, BatchReader};
use weir_proto::v1 as proto;
use weir_proto::v1::weir_client::WeirClient;
use weir_tests::wait::within;
use weir_tests::BrokerProcess;

const TOPIC: &str = "ryw";
const PARTITIONS: u32 = 8;
/// Round trips per partition.
const ROUNDS: u64 = 500;
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_record_is_fetchable_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path().join("data"))?;
    let mut admin = broker.admin_client().await?;
    admin
        .create_topic(proto::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replication_factor: 1,
            config: None,
        })
        .await?;
    // Concurrent round trips on every partition keep the broker's threads busy, which widens any
    // window between the acknowledgement and the publication of the high watermark.
    let mut loops = Vec::new();
    for partition in 0..PARTITIONS {
        let data = broker.data_client().await?;
        loops.push(tokio::spawn(round_trips(data, partition)));
    }
    let mut stale = Vec::new();
    for round_trips in loops {
        stale.extend(within("the produce/fetch rounds", TIMEOUT, round_trips).await???);
    }
    ensure!(
        stale.is_empty(),
        "{} of {} fetches sent right after an acknowledgement did not return the record; first ones:\n{}",
        stale.len(),
        ROUNDS * u64::from(PARTITIONS),
        stale.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// Produces one record at a time to `partition`, and after each acknowledgement fetches it.
/// Returns a description of every fetch that did not return its record.
async fn round_trips(mut data: WeirClient<Channel>, partition: u32) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        let mut builder = BatchBuilder::new();
        let value = format!("r-{partition}-{round:06}");
        builder.push(0, None, Some(value.as_bytes()), &[])?;
        let produced = data
            .produce(proto::ProduceRequest {
                topic: TOPIC.into(),
                partition,
                acks: proto::Acks::All.into(),
                batch: Bytes::from(builder.finish()),
                timeout_ms: 0,
            })
            .await?
            .into_inner();
        ensure!(
            produced.base_offset == round,
            "{partition}/{round} acknowledged at {}",
            produced.base_offset
        );
        let fetched = data
            .fetch(proto::FetchRequest {
                topic: TOPIC.into(),
                partition,
                offset: round,
                max_bytes: 0,
                max_wait_ms: 0,
                ..Default::default()
            })
            .await;
        let found = match &fetched {
            Ok(response) => BatchReader::new(response.get_ref().batches.clone())
                .filter_map(Result::ok)
                .flat_map(|batch| batch.records().unwrap_or_default())
                .any(|record| record.offset == round && record.value.as_deref() == Some(value.as_bytes())),
            Err(_) => false,
        };
        if !found {
            let answer = match fetched {
                Ok(response) => format!("answered high watermark {}", response.get_ref().high_watermark),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            };
            stale.push(format!("partition {partition} offset {round}: {answer}"));
        }
    }
    Ok(stale)
}
