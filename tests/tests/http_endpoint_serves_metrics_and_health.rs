//! The broker's HTTP endpoint (`--http-listen`): `/healthz` answers while the process runs,
//! `/readyz` once the node caught up with the controller, and `/metrics` counts produce and
//! fetch requests, records and bytes exactly, and shows each partition's Raft and log state
//! with `{topic, partition}` labels (the high watermark is the number of records produced),
//! and consumer-group lag with `{group, topic, partition}` labels.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use weir_proto::batch::BatchBuilder;
use weir_proto::v1 as proto;
use weir_tests::wait::until;
use weir_tests::BrokerProcess;

const TOPIC: &str = "metered";
const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_serves_metrics_and_health() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path().join("data"))?;
    ensure!(broker.http_address().is_some(), "the broker printed no HTTP address");
    let (status, body) = broker.http_get("/healthz")?;
    ensure!(status == 200, "/healthz answered {status}: {body}");
    until("/readyz to answer 200", TIMEOUT, || async {
        let (status, _) = broker.http_get("/readyz")?;
        Ok((status == 200).then_some(()))
    })
    .await?;
    let (status, _) = broker.http_get("/nowhere")?;
    ensure!(status == 404, "an unknown path answered {status}");

    broker
        .admin_client()
        .await?
        .create_topic(proto::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 2,
            replication_factor: 1,
            config: None,
        })
        .await?;
    let before = scrape(&broker)?;

    // Partition 0 gets 5 batches of 3 records, partition 1 2 batches of 4.
    let mut data = broker.data_client().await?;
    let mut produced_bytes = 0;
    for (partition, batches, records) in [(0u32, 5, 3), (1, 2, 4)] {
        for batch_number in 0..batches {
            let mut builder = BatchBuilder::new();
            for record in 0..records {
                let value = format!("value {partition}-{batch_number}-{record}");
                builder.push(0, Some(b"key"), Some(value.as_bytes()), &[])?;
            }
            let batch = Bytes::from(builder.finish());
            produced_bytes += batch.len() as u64;
            data.produce(proto::ProduceRequest {
                topic: TOPIC.into(),
                partition,
                acks: proto::Acks::All.into(),
                batch,
                timeout_ms: 0,
            })
            .await?;
        }
    }
    let unknown = data
        .produce(proto::ProduceRequest {
            topic: "no-such-topic".into(),
            partition: 0,
            acks: proto::Acks::All.into(),
            batch: Bytes::from(BatchBuilder::new().finish()),
            timeout_ms: 0,
        })
        .await;
    ensure!(unknown.is_err(), "a produce to an unknown topic succeeded");
    let fetched = data.fetch(fetch_request(0, 0)).await?.into_inner();
    ensure!(!fetched.batches.is_empty(), "the fetch returned nothing");
    let out_of_range = data.fetch(fetch_request(0, 1_000)).await;
    ensure!(
        out_of_range.as_ref().err().map(tonic::Status::code) == Some(tonic::Code::OutOfRange),
        "a fetch past the end answered {out_of_range:?}"
    );

    let after = scrape(&broker)?;
    let moved = |name: &str| after.value(name).unwrap_or(0.0) - before.value(name).unwrap_or(0.0);
    let expectations = [
        ("weir_requests_total{rpc=\"produce\",code=\"ok\"}", 7.0),
        ("weir_requests_total{rpc=\"produce\",code=\"not_found\"}", 1.0),
        ("weir_request_duration_seconds_count{rpc=\"produce\"}", 8.0),
        ("weir_produce_records_total", 23.0),
        ("weir_produce_bytes_total", produced_bytes as f64),
        ("weir_requests_total{rpc=\"fetch\",code=\"ok\"}", 1.0),
        ("weir_requests_total{rpc=\"fetch\",code=\"out_of_range\"}", 1.0),
        ("weir_request_duration_seconds_count{rpc=\"fetch\"}", 2.0),
        ("weir_fetch_bytes_total", fetched.batches.len() as f64),
    ];
    for (name, expected) in expectations {
        ensure!(
            moved(name) == expected,
            "{name} moved by {} instead of {expected}\n{}",
            moved(name),
            after.text
        );
    }
    for (partition, records) in [(0, 15.0), (1, 8.0)] {
        let labels = format!("{{topic=\"{TOPIC}\",partition=\"{partition}\"}}");
        let value = |name: &str| after.value(&format!("{name}{labels}"));
        let wanted = [
            ("weir_partition_high_watermark", Some(records)),
            ("weir_partition_log_start_offset", Some(0.0)),
            ("weir_partition_raft_role", Some(2.0)),
            ("weir_partition_leader", Some(1.0)),
            ("weir_partition_under_replicated", Some(0.0)),
            ("weir_partition_out_of_service", Some(0.0)),
        ];
        for (name, expected) in wanted {
            ensure!(
                value(name) == expected,
                "{name}{labels} is {:?}, not {expected:?}",
                value(name)
            );
        }
        for name in [
            "weir_partition_raft_term",
            "weir_partition_raft_commit_index",
            "weir_partition_log_size_bytes",
            "weir_partition_log_segments",
        ] {
            ensure!(
                value(name).is_some_and(|v| v >= 1.0),
                "{name}{labels} is {:?}",
                value(name)
            );
        }
    }
    for (name, expected) in [
        ("weir_node_ready", Some(1.0)),
        ("weir_replicas", Some(2.0)),
        ("weir_replicas_leading", Some(2.0)),
        ("weir_under_replicated_partitions", Some(0.0)),
        ("weir_controller_raft_role", Some(2.0)),
    ] {
        ensure!(
            after.value(name) == expected,
            "{name} is {:?}, not {expected:?}",
            after.value(name)
        );
    }
    ensure!(
        after.value("weir_disk_free_bytes").is_some_and(|free| free > 0.0)
            && after.value("weir_disk_total_bytes") >= after.value("weir_disk_free_bytes"),
        "disk space: {:?} free of {:?}",
        after.value("weir_disk_free_bytes"),
        after.value("weir_disk_total_bytes")
    );

    // A group that committed offset 10 of partition 0 (15 records): lag 5, per group and
    // partition.
    let mut groups = proto::groups_client::GroupsClient::connect(broker.endpoint()).await?;
    groups
        .commit_offsets(proto::CommitOffsetsRequest {
            group: "billing".into(),
            member_id: String::new(),
            member_epoch: -1,
            offsets: vec![proto::CommitOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset: 10,
                metadata: String::new(),
            }],
        })
        .await?;
    let labels = format!("{{group=\"billing\",topic=\"{TOPIC}\",partition=\"0\"}}");
    let with_group = scrape(&broker)?;
    for (name, expected) in [
        ("weir_consumer_group_lag", 5.0),
        ("weir_consumer_group_committed_offset", 10.0),
    ] {
        ensure!(
            with_group.value(&format!("{name}{labels}")) == Some(expected),
            "{name}{labels} is {:?}, not {expected}\n{}",
            with_group.value(&format!("{name}{labels}")),
            with_group.text
        );
    }
    Ok(())
}

fn fetch_request(partition: u32, offset: u64) -> proto::FetchRequest {
    proto::FetchRequest {
        topic: TOPIC.into(),
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
        from_replica: false,
    }
}

/// One `/metrics` answer.
struct Scrape {
    text: String,
}

impl Scrape {
    /// The value of the sample written exactly as `series` (name and labels).
    fn value(&self, series: &str) -> Option<f64> {
        self.text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        })
    }
}

fn scrape(broker: &BrokerProcess) -> Result<Scrape> {
    let (status, text) = broker.http_get("/metrics").context("GET /metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}: {text}");
    }
    ensure!(text.ends_with("# EOF\n"), "the exposition does not end with # EOF");
    Ok(Scrape { text })
}
