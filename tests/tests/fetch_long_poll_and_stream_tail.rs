//! A fetch at the high watermark waits (long poll): with nothing produced it answers empty after
//! its max wait, and when a record is produced while it waits it answers with that record right
//! away instead of waiting out its max wait. A FetchStream started before records are produced
//! delivers them as they are committed, after the records that were already there.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::time::Instant;
use weir_client::{Client, ProducerConfig, ProducerRecord, RecordMetadata, TopicConfig};
use weir_proto::batch::BatchReader;
use weir_proto::v1 as proto;
use weir_tests::wait::within;
use weir_tests::BrokerProcess;

/// Upper bound on any one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_at_the_high_watermark_waits_and_wakes_on_produce() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path().join("data"))?;
    let client = broker.client()?;
    client
        .admin()
        .create_topic("poll", 1, 1, TopicConfig::default())
        .await?;
    send(&client, "poll", "first").await?;
    let mut data = broker.data_client().await?;

    // Nothing new: the fetch waits its whole max wait, then answers empty.
    let max_wait = Duration::from_millis(500);
    let started = Instant::now();
    let empty = within(
        "an idle long poll",
        STEP_TIMEOUT,
        data.fetch(request("poll", 1, max_wait)),
    )
    .await??;
    let waited = started.elapsed();
    let empty = empty.into_inner();
    ensure!(empty.batches.is_empty(), "records past the high watermark: {empty:?}");
    ensure!(empty.high_watermark == 1, "high watermark {}", empty.high_watermark);
    ensure!(
        waited >= max_wait - Duration::from_millis(50),
        "an idle fetch answered after {waited:?}, before its max wait of {max_wait:?}"
    );

    // A record produced while the fetch waits ends the wait at once.
    let max_wait = Duration::from_secs(20);
    let mut waiting = data.clone();
    let started = Instant::now();
    let fetch = tokio::spawn(async move {
        let response = waiting.fetch(request("poll", 1, max_wait)).await;
        (response, Instant::now())
    });
    // Not synchronisation (the assertions hold either way): a head start so that the fetch is
    // parked at the broker when the record arrives, which is the case under test.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metadata = send(&client, "poll", "late").await?;
    let acked_at = Instant::now();
    ensure!(metadata.offset == 1, "late record at offset {}", metadata.offset);
    let (response, answered_at) = within("the woken long poll", STEP_TIMEOUT, fetch).await??;
    let response = response?.into_inner();
    let values = values_from(response.batches, 1)?;
    ensure!(
        values == [(1, "late".to_owned())],
        "the woken fetch returned {values:?}"
    );
    let after_ack = answered_at.saturating_duration_since(acked_at);
    ensure!(
        after_ack < Duration::from_secs(2),
        "the fetch answered {after_ack:?} after the record was acknowledged (max wait {max_wait:?})"
    );
    ensure!(
        answered_at - started < max_wait / 2,
        "the fetch took {:?}, close to its max wait",
        answered_at - started
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_stream_delivers_records_produced_after_it_started() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path().join("data"))?;
    let client = broker.client()?;
    client
        .admin()
        .create_topic("tail", 1, 1, TopicConfig::default())
        .await?;
    for value in ["old-0", "old-1"] {
        send(&client, "tail", value).await?;
    }
    let mut data = broker.data_client().await?;
    let mut stream = within(
        "opening the fetch stream",
        STEP_TIMEOUT,
        data.fetch_stream(request("tail", 0, Duration::from_secs(1))),
    )
    .await??
    .into_inner();

    let mut received = Vec::new();
    within(
        "the records already there",
        STEP_TIMEOUT,
        read(&mut stream, &mut received, 2),
    )
    .await??;
    // One record at a time, each acknowledged before the next is sent: the stream must carry
    // each one as it is committed, not only what was there when it started.
    for index in 0..3usize {
        let value = format!("new-{index}");
        send(&client, "tail", &value).await?;
        within(
            &format!("{value} on the stream"),
            STEP_TIMEOUT,
            read(&mut stream, &mut received, 3 + index),
        )
        .await??;
    }
    let expected: Vec<(u64, String)> = ["old-0", "old-1", "new-0", "new-1", "new-2"]
        .iter()
        .enumerate()
        .map(|(offset, value)| (offset as u64, (*value).to_owned()))
        .collect();
    ensure!(received == expected, "the stream delivered {received:?}");
    Ok(())
}

/// Reads the stream until `received` holds `total` records.
async fn read(
    stream: &mut tonic::Streaming<proto::FetchResponse>,
    received: &mut Vec<(u64, String)>,
    total: usize,
) -> Result<()> {
    while received.len() < total {
        let response = stream
            .next()
            .await
            .context("the fetch stream ended")?
            .context("the fetch stream failed")?;
        let next = received.last().map_or(0, |(offset, _)| offset + 1);
        received.extend(values_from(response.batches, next)?);
    }
    Ok(())
}

fn request(topic: &str, offset: u64, max_wait: Duration) -> proto::FetchRequest {
    proto::FetchRequest {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        max_bytes: 0,
        max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

async fn send(client: &Client, topic: &str, value: &str) -> Result<RecordMetadata> {
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    let record = ProducerRecord::new(topic).with_value(value.to_owned());
    within("a send", STEP_TIMEOUT, producer.send(record))
        .await?
        .with_context(|| format!("sending {value}"))
}

/// (offset, value) of the records in `batches` at or after `from` (a fetch may start with a
/// batch that begins before the offset asked for).
fn values_from(batches: Bytes, from: u64) -> Result<Vec<(u64, String)>> {
    let mut values = Vec::new();
    for batch in BatchReader::new(batches) {
        for record in batch?.records()? {
            if record.offset >= from {
                let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
                values.push((record.offset, value));
            }
        }
    }
    Ok(values)
}
