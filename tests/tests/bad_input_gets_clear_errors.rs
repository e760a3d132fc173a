//! Bad input, through the client library and raw gRPC calls, gets the gRPC status the wire
//! contract names (proto/weir.proto) with a message a person can act on, and never takes the
//! broker down: invalid topic names, unknown topics and partitions, fetch offsets past the high
//! watermark, corrupt, truncated, empty, garbage and oversized batches, oversized requests. After
//! all of it the same broker process still produces and fetches.
//!
//! Every check runs and the test reports all mismatches together.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Status};
use weir_client::{ConsumerConfig, Error, ProducerConfig, ProducerRecord, SeekTo, TopicConfig};
use weir_proto::batch::{BatchBuilder, BatchReader, HEADER_LEN};
use weir_proto::v1 as proto;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::weir_client::WeirClient;
use weir_tests::wait::within;
use weir_tests::BrokerProcess;

const TOPIC: &str = "good";
/// Records produced to `TOPIC` before the fetch checks: the high watermark they expect.
const RECORDS: u64 = 7;
const SMALL_TOPIC: &str = "small";
const SMALL_BATCH_BYTES_MAX: u32 = 4096;
/// Upper bound on any one request of this test.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Mismatches between what the broker answered and what the contract says.
#[derive(Default)]
struct Failures(String);

impl Failures {
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        let _ = writeln!(self.0, "- {what}: {detail}");
    }

    /// Expects `result` to be a status with `code` whose message contains each of `words`.
    fn expect_status<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<T, Status>,
        code: Code,
        words: &[&str],
    ) -> Option<Status> {
        let status = match result {
            Ok(value) => {
                self.fail(what, format!("expected {code:?}, got success: {value:?}"));
                return None;
            }
            Err(status) => status,
        };
        if status.code() != code {
            self.fail(
                what,
                format!("expected {code:?}, got {:?}: {}", status.code(), status.message()),
            );
        }
        for word in words {
            if !status.message().contains(word) {
                self.fail(
                    what,
                    format!("message {:?} does not mention {word:?}", status.message()),
                );
            }
        }
        Some(status)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path().join("data"))?;
    let mut admin = broker.admin_client().await?;
    let mut data = broker.data_client().await?;
    let mut failures = Failures::default();

    create(&mut admin, TOPIC, 1, None).await?;
    create(&mut admin, SMALL_TOPIC, 1, Some(SMALL_BATCH_BYTES_MAX)).await?;
    let first = produce(&mut data, TOPIC, 0, valid_batch(RECORDS as usize, 10)).await?;
    ensure!(first.base_offset == 0, "first batch at offset {}", first.base_offset);

    topic_names(&mut admin, &mut failures).await;
    within(
        "client-library checks",
        CALL_TIMEOUT,
        client_errors(&broker, &mut failures),
    )
    .await??;
    unknown_topics_and_partitions(&mut admin, &mut data, &mut failures).await;
    fetch_offsets(&mut data, &mut failures).await;
    bad_batches(&mut data, &mut failures).await;
    oversized(&mut data, &mut failures).await;

    // Still alive, and still serving: produce and fetch through a fresh connection.
    ensure!(broker.is_running()?, "the broker process died\n{}", broker.log_tail());
    let mut data = broker.data_client().await?;
    let after = produce(&mut data, TOPIC, 0, valid_batch(1, 10)).await?;
    ensure!(
        after.base_offset == RECORDS,
        "after the bad input, a batch landed at {} (expected {RECORDS}: nothing bad was stored)",
        after.base_offset
    );
    // The fetch comes right after the acknowledgement: an acknowledged record is committed, so
    // it must be readable at once (read-your-writes).
    let fetched = fetch(&mut data, TOPIC, 0, 0, 0).await?;
    let high_watermark = fetched.high_watermark;
    let offsets = record_offsets(fetched.batches)?;
    ensure!(
        offsets == (0..=RECORDS).collect::<Vec<_>>(),
        "a fetch right after offset {RECORDS} was acknowledged returned offsets {offsets:?} \
         (high watermark {high_watermark})"
    );
    ensure!(broker.is_running()?, "the broker process died\n{}", broker.log_tail());
    ensure!(
        failures.0.is_empty(),
        "the broker answered bad input wrongly:\n{}",
        failures.0
    );
    Ok(())
}

async fn topic_names(admin: &mut AdminClient<Channel>, failures: &mut Failures) {
    let long = "x".repeat(250);
    for name in [".", "..", "a b", "a/b", "", long.as_str()] {
        let result = admin
            .create_topic(proto::CreateTopicRequest {
                name: name.to_owned(),
                partitions: 1,
                replication_factor: 1,
                config: None,
            })
            .await;
        let what = format!("create topic {:?}", truncate(name));
        failures.expect_status(&what, result, Code::InvalidArgument, &[]);
    }
    let longest = "y".repeat(249);
    match create(admin, &longest, 1, None).await {
        Ok(()) => {
            if let Err(status) = admin
                .delete_topic(proto::DeleteTopicRequest { name: longest.clone() })
                .await
            {
                failures.fail("delete a topic with a 249-character name", status);
            }
        }
        Err(error) => failures.fail("create a topic with a 249-character name (the longest allowed)", error),
    }
    let result = admin
        .create_topic(proto::CreateTopicRequest {
            name: "zero".to_owned(),
            partitions: 0,
            replication_factor: 1,
            config: None,
        })
        .await;
    failures.expect_status("create a topic with 0 partitions", result, Code::InvalidArgument, &[]);
    let result = admin
        .create_topic(proto::CreateTopicRequest {
            name: TOPIC.to_owned(),
            partitions: 1,
            replication_factor: 1,
            config: None,
        })
        .await;
    failures.expect_status("create an existing topic", result, Code::AlreadyExists, &[TOPIC]);
}

fn truncate(name: &str) -> String {
    if name.len() > 20 {
        format!("{}... ({} characters)", &name[..10], name.len())
    } else {
        name.to_owned()
    }
}

/// The client library turns the statuses into typed errors.
async fn client_errors(broker: &BrokerProcess, failures: &mut Failures) -> Result<()> {
    let client = broker.client()?;
    match client.admin().create_topic("a b", 1, 1, TopicConfig::default()).await {
        Err(Error::InvalidArgument(_)) => {}
        other => failures.fail("client: create topic \"a b\"", format!("{other:?}")),
    }
    match client.admin().describe_topic("no-such-topic").await {
        Err(Error::TopicNotFound { .. }) => {}
        other => failures.fail("client: describe an unknown topic", format!("{other:?}")),
    }
    let producer = client.producer(ProducerConfig::default())?;
    match producer
        .send(ProducerRecord::new("no-such-topic").with_value("x"))
        .await
    {
        Err(Error::TopicNotFound { .. }) => {}
        other => failures.fail("client: send to an unknown topic", format!("{other:?}")),
    }
    let mut consumer = client.consumer(ConsumerConfig::default().retry_timeout_ms(5_000));
    consumer.assign(TOPIC, &[0]).await?;
    consumer.seek(TOPIC, 0, SeekTo::Offset(1_000)).await?;
    match consumer.poll().await {
        Err(Error::OffsetOutOfRange { start, end, .. }) if start == Some(0) && end == Some(RECORDS) => {}
        other => failures.fail(
            "client: poll at offset 1000",
            format!("expected OffsetOutOfRange [0, {RECORDS}], got {other:?}"),
        ),
    }
    Ok(())
}

async fn unknown_topics_and_partitions(
    admin: &mut AdminClient<Channel>,
    data: &mut WeirClient<Channel>,
    failures: &mut Failures,
) {
    let missing = "no-such-topic";
    let result = admin
        .describe_topic(proto::DescribeTopicRequest { name: missing.into() })
        .await;
    failures.expect_status("describe an unknown topic", result, Code::NotFound, &[missing]);
    let result = admin
        .delete_topic(proto::DeleteTopicRequest { name: missing.into() })
        .await;
    failures.expect_status("delete an unknown topic", result, Code::NotFound, &[missing]);
    let result = data
        .metadata(proto::MetadataRequest {
            topics: vec![missing.into()],
        })
        .await;
    failures.expect_status("metadata of an unknown topic", result, Code::NotFound, &[missing]);
    let result = produce(data, missing, 0, valid_batch(1, 10)).await;
    failures.expect_status("produce to an unknown topic", result, Code::NotFound, &[missing]);
    let result = fetch(data, missing, 0, 0, 0).await;
    failures.expect_status("fetch from an unknown topic", result, Code::NotFound, &[missing]);
    let result = list_latest(data, missing, 0).await;
    failures.expect_status("list offsets of an unknown topic", result, Code::NotFound, &[missing]);
    let result = produce(data, TOPIC, 7, valid_batch(1, 10)).await;
    failures.expect_status(
        "produce to partition 7 of a 1-partition topic",
        result,
        Code::NotFound,
        &[],
    );
    let result = fetch(data, TOPIC, 7, 0, 0).await;
    failures.expect_status(
        "fetch from partition 7 of a 1-partition topic",
        result,
        Code::NotFound,
        &[],
    );
    let result = list_latest(data, TOPIC, u32::MAX).await;
    failures.expect_status("list offsets of partition u32::MAX", result, Code::NotFound, &[]);
    let result = fetch(data, "a b", 0, 0, 0).await;
    failures.expect_status("fetch from an invalid topic name", result, Code::InvalidArgument, &[]);
}

/// A fetch outside [log start, high watermark] is OUT_OF_RANGE; the message names the valid
/// range and the metadata carries it. A fetch at the high watermark is not an error.
async fn fetch_offsets(data: &mut WeirClient<Channel>, failures: &mut Failures) {
    for offset in [RECORDS + 1, 1_000_000, u64::MAX] {
        let what = format!("fetch at offset {offset} (high watermark {RECORDS})");
        let result = fetch(data, TOPIC, 0, offset, 0).await;
        let Some(status) = failures.expect_status(&what, result, Code::OutOfRange, &[]) else {
            continue;
        };
        let numbers: Vec<u64> = status
            .message()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|word| word.parse().ok())
            .collect();
        if !numbers.contains(&0) || !numbers.contains(&RECORDS) {
            failures.fail(
                &what,
                format!("message {:?} does not name the range 0..{RECORDS}", status.message()),
            );
        }
        let metadata = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let high_watermark = metadata("weir-high-watermark");
        let log_start = metadata("weir-log-start-offset");
        if high_watermark.as_deref() != Some("7") || log_start.as_deref() != Some("0") {
            failures.fail(
                &what,
                format!("metadata: weir-high-watermark {high_watermark:?}, weir-log-start-offset {log_start:?}"),
            );
        }
    }
    match fetch(data, TOPIC, 0, RECORDS, 0).await {
        Ok(response) if response.batches.is_empty() && response.high_watermark == RECORDS => {}
        other => failures.fail(
            "fetch at the high watermark without waiting",
            format!("expected an empty answer, got {other:?}"),
        ),
    }
}

async fn bad_batches(data: &mut WeirClient<Channel>, failures: &mut Failures) {
    let valid = valid_batch(3, 100);
    let mut flipped_value = valid.clone();
    let last = flipped_value.len() - 1;
    flipped_value[last] ^= 0x55;
    let mut flipped_header = valid.clone();
    flipped_header[HEADER_LEN - 10] ^= 0x01;
    let mut bad_magic = valid.clone();
    bad_magic[0] ^= 0xff;
    let mut longer = valid.clone();
    longer.extend_from_slice(&[0u8; 16]);
    let mut huge_length = valid.clone();
    huge_length[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a batch with a byte of a record value flipped (CRC mismatch)",
            flipped_value,
        ),
        ("a batch with a header byte flipped (CRC mismatch)", flipped_header),
        ("a batch with a bad magic", bad_magic),
        ("a batch cut short by 5 bytes", valid[..valid.len() - 5].to_vec()),
        ("a batch followed by 16 extra bytes", longer),
        ("a batch whose length field says 4 GiB", huge_length),
        ("a batch of only its header", valid[..HEADER_LEN].to_vec()),
        ("a batch with no records", BatchBuilder::new().finish()),
        ("an empty batch", Vec::new()),
        ("4 KiB of random bytes", garbage(4096, 1)),
        (
            "random bytes after the magic",
            [&b"WEIR"[..], &garbage(200, 2)].concat(),
        ),
    ];
    for (what, batch) in cases {
        let result = produce(data, TOPIC, 0, batch).await;
        failures.expect_status(&format!("produce {what}"), result, Code::InvalidArgument, &[]);
    }
    let result = data
        .produce(proto::ProduceRequest {
            topic: TOPIC.into(),
            partition: 0,
            acks: 9,
            batch: Bytes::from(valid_batch(1, 10)),
            timeout_ms: 0,
        })
        .await;
    failures.expect_status("produce with acks = 9", result, Code::InvalidArgument, &[]);
}

/// A batch over the topic's batch_bytes_max is RESOURCE_EXHAUSTED, a request over the broker's
/// request_bytes_max OUT_OF_RANGE (the transport's answer), both with the limit in the message.
async fn oversized(data: &mut WeirClient<Channel>, failures: &mut Failures) {
    let batch = valid_batch(8, 1024);
    assert!(batch.len() > 2 * SMALL_BATCH_BYTES_MAX as usize);
    let result = produce(data, SMALL_TOPIC, 0, batch).await;
    let limit = SMALL_BATCH_BYTES_MAX.to_string();
    failures.expect_status(
        "produce an 8 KiB batch to a topic with batch_bytes_max=4096",
        result,
        Code::ResourceExhausted,
        &[limit.as_str()],
    );
    let fits = valid_batch(2, 1024);
    if let Err(status) = produce(data, SMALL_TOPIC, 0, fits).await {
        failures.fail("produce a 2 KiB batch to a topic with batch_bytes_max=4096", status);
    }
    // Over the broker's default request_bytes_max (17 MiB): the transport refuses it before any
    // handler runs, with OUT_OF_RANGE and the limit in the message (see proto/weir.proto).
    let limit = (17u64 << 20).to_string();
    let result = produce(data, TOPIC, 0, valid_batch(18, 1 << 20)).await;
    failures.expect_status("produce an 18 MiB request", result, Code::OutOfRange, &[limit.as_str()]);
}

async fn create(
    admin: &mut AdminClient<Channel>,
    name: &str,
    partitions: u32,
    batch_bytes_max: Option<u32>,
) -> Result<()> {
    let config = proto::TopicConfig {
        batch_bytes_max,
        ..Default::default()
    };
    let request = proto::CreateTopicRequest {
        name: name.to_owned(),
        partitions,
        replication_factor: 1,
        config: Some(config),
    };
    within("create topic", CALL_TIMEOUT, admin.create_topic(request))
        .await?
        .with_context(|| format!("creating topic {}", truncate(name)))?;
    Ok(())
}

async fn produce(
    data: &mut WeirClient<Channel>,
    topic: &str,
    partition: u32,
    batch: Vec<u8>,
) -> Result<proto::ProduceResponse, Status> {
    let request = proto::ProduceRequest {
        topic: topic.to_owned(),
        partition,
        acks: proto::Acks::All.into(),
        batch: Bytes::from(batch),
        timeout_ms: 0,
    };
    bounded(data.produce(request)).await
}

async fn fetch(
    data: &mut WeirClient<Channel>,
    topic: &str,
    partition: u32,
    offset: u64,
    max_wait_ms: u32,
) -> Result<proto::FetchResponse, Status> {
    let request = proto::FetchRequest {
        topic: topic.to_owned(),
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms,
        ..Default::default()
    };
    bounded(data.fetch(request)).await
}

async fn list_latest(
    data: &mut WeirClient<Channel>,
    topic: &str,
    partition: u32,
) -> Result<proto::ListOffsetsResponse, Status> {
    let request = proto::ListOffsetsRequest {
        topic: topic.to_owned(),
        partition,
        spec: Some(proto::list_offsets_request::Spec::Latest(true)),
    };
    bounded(data.list_offsets(request)).await
}

/// A call bounded by [`CALL_TIMEOUT`]; a timeout reads as a DEADLINE_EXCEEDED status.
async fn bounded<T>(call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

/// A valid batch of `records` records with `value_bytes`-byte values.
fn valid_batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for index in 0..records {
        let value = vec![b'a' + (index % 26) as u8; value_bytes];
        builder
            .push(
                1_700_000_000_000 + index as i64,
                Some(&b"key"[..]),
                Some(&value[..]),
                &[],
            )
            .expect("a small record fits");
    }
    builder.finish()
}

/// Deterministic pseudo-random bytes (xorshift64).
fn garbage(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn record_offsets(batches: Bytes) -> Result<Vec<u64>> {
    let mut offsets = Vec::new();
    for batch in BatchReader::new(batches) {
        for record in batch?.records()? {
            offsets.push(record.offset);
        }
    }
    Ok(offsets)
}
