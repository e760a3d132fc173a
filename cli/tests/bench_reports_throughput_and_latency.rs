//! `weir bench produce` and `weir bench consume` run to completion and report throughput (and
//! produce latency quantiles) as JSON.

#[path = "../../client/tests/fake/mod.rs"]
mod fake;

use std::process::Stdio;

use tokio::process::Command;

async fn weir_json(bootstrap: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--bootstrap", bootstrap, "--output", "json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("weir runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "weir {args:?}: {stderr}");
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_and_latency() {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("bench", 2);
    let bootstrap = addresses[0].as_str();

    let args = [
        "bench",
        "produce",
        "--topic",
        "bench",
        "--records",
        "3000",
        "--record-bytes",
        "100",
    ];
    let produced = weir_json(bootstrap, &[&args[..], &["--partitions-from-topic"]].concat()).await;
    assert_eq!(produced["records"], 3000);
    assert_eq!(produced["errors"], 0);
    assert!(produced["msgs_per_s"].as_f64().unwrap() > 0.0);
    let p50 = produced["latency"]["p50_ms"].as_f64().unwrap();
    let p999 = produced["latency"]["p999_ms"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p999, "{produced}");
    assert_eq!(
        store.values("bench", 0).len(),
        1500,
        "spread evenly over both partitions"
    );

    let consumed = weir_json(bootstrap, &["bench", "consume", "--topic", "bench"]).await;
    assert_eq!(consumed["records"], 3000);
    assert_eq!(consumed["bytes"], 300_000);
    let limited = weir_json(bootstrap, &["bench", "consume", "--topic", "bench", "--records", "10"]).await;
    assert_eq!(limited["records"], 10);
}
