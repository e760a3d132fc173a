//! A broker whose data directory fills up refuses produce with RESOURCE_EXHAUSTED, stays up,
//! keeps serving every acknowledged record, and accepts writes again once space is freed.
//!
//! The data directory is a small tmpfs, so this test needs root (mount); elsewhere it says so
//! and passes without running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use weir_proto::batch::{BatchBuilder, BatchReader};
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::weir_client::WeirClient;
use weir_proto::v1::{CreateTopicRequest, DeleteTopicRequest, FetchRequest, ProduceRequest, TopicConfig};

const BROKER: &str = env!("CARGO_BIN_EXE_weir-broker");
const SEGMENT_BYTES: u64 = 1 << 20;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The broker process, killed on drop.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(data: &Path, config: &Path) -> (Broker, String) {
    let mut child = Command::new(BROKER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--log",
            "warn",
            "--config",
        ])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weir-broker");
    let stdout = child.stdout.take().expect("stdout");
    let broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("broker stdout");
        if let Some(rest) = line.strip_prefix("weir-broker listening on ") {
            let address = rest.split_whitespace().next().expect("address").to_string();
            return (broker, format!("http://{address}"));
        }
        assert!(Instant::now() < deadline, "broker did not start");
    }
    panic!("broker exited before listening");
}

fn batch(records: usize, value_bytes: usize) -> bytes::Bytes {
    let value = vec![b'v'; value_bytes];
    let mut builder = BatchBuilder::new();
    for _ in 0..records {
        builder.push(1_700_000_000_000, None, Some(&value), &[]).unwrap();
    }
    builder.finish().into()
}

fn produce_request(topic: &str) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks: 0,
        batch: batch(30, 1000),
        timeout_ms: 10_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_rejects_produce_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data, "6m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!("[log]\nsegment_bytes_max = {SEGMENT_BYTES}\n[limits]\nbatch_bytes_max = 65536\n"),
    )
    .unwrap();
    let (broker, address) = start_broker(&data, &config);
    let mut admin = AdminClient::connect(address.clone()).await.unwrap();
    let mut data_plane = WeirClient::connect(address).await.unwrap();
    for name in ["ballast", "events"] {
        admin
            .create_topic(CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                replication_factor: 1,
                config: Some(TopicConfig::default()),
            })
            .await
            .unwrap();
    }

    // Fill the disk through the ballast topic, then through events.
    for topic in ["ballast", "events"] {
        let mut refused = None;
        for _ in 0..400 {
            if let Err(status) = data_plane.produce(produce_request(topic)).await {
                refused = Some(status);
                break;
            }
        }
        let status = refused.expect("a 6 MiB disk fills up");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("disk full"), "{}", status.message());
    }
    let acked_events = fetch_all(&mut data_plane, "events").await;
    assert!(acked_events > 0, "events got some records before the disk filled");
    eprintln!("events acknowledged {acked_events} records before the disk filled");

    // Still up, still serving, still refusing.
    let again = data_plane.produce(produce_request("events")).await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert_eq!(fetch_all(&mut data_plane, "events").await, acked_events);

    // Free space: writes resume, and nothing acknowledged was lost.
    admin
        .delete_topic(DeleteTopicRequest { name: "ballast".into() })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match data_plane.produce(produce_request("events")).await {
            Ok(response) => {
                assert_eq!(response.into_inner().base_offset, acked_events);
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("produce after freeing space: {status:?}"),
        }
    }
    assert_eq!(fetch_all(&mut data_plane, "events").await, acked_events + 30);
    drop(broker);
}

/// Reads a partition from offset 0 to its high watermark; returns the record count, checking
/// that offsets are contiguous.
async fn fetch_all(client: &mut WeirClient<tonic::transport::Channel>, topic: &str) -> u64 {
    let mut next = 0u64;
    loop {
        let response = client
            .fetch(FetchRequest {
                topic: topic.into(),
                partition: 0,
                offset: next,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for batch in BatchReader::new(response.batches) {
            for record in batch.unwrap().records().unwrap() {
                if record.offset >= next {
                    assert_eq!(record.offset, next, "offsets are contiguous");
                    next += 1;
                }
            }
        }
        if next >= response.high_watermark {
            return next;
        }
    }
}
