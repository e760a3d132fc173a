//! `weir produce` sends lines, `weir consume` prints them back and stops at the end, and
//! errors and usage mistakes exit with 1 and 2. Runs the real binary against the client's
//! in-process fake broker.

#[path = "../../client/tests/fake/mod.rs"]
mod fake;

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn weir(bootstrap: &str, args: &[&str], stdin: &str) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir runs");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).await.expect("stdin accepts");
    drop(input);
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("weir finishes in time")
        .expect("weir output");
    eprintln!(
        "weir {args:?} -> {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_through_the_cli() {
    let (store, addresses) = fake::start(1).await;
    let bootstrap = addresses[0].as_str();

    let created = weir(
        bootstrap,
        &[
            "topic",
            "create",
            "lines",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        "",
    )
    .await;
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    let listed = weir(bootstrap, &["--output", "json", "topic", "list"], "").await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    assert!(listed.stdout.contains(r#""name":"lines""#), "{}", listed.stdout);

    let produced = weir(
        bootstrap,
        &["produce", "lines", "--key-separator", ":"],
        "a:one\nb:two\nthree\n",
    )
    .await;
    assert_eq!(produced.code, Some(0), "{}", produced.stderr);
    assert!(
        produced.stderr.contains("produced 3 of 3 records"),
        "{}",
        produced.stderr
    );
    assert_eq!(store.values("lines", 0).len(), 3);

    let consumed = weir(bootstrap, &["consume", "lines", "--from", "beginning"], "").await;
    assert_eq!(consumed.code, Some(0), "{}", consumed.stderr);
    assert_eq!(consumed.stdout, "one\ntwo\nthree\n");

    let formatted = weir(
        bootstrap,
        &[
            "consume",
            "lines",
            "--from",
            "1",
            "--count",
            "1",
            "--format",
            "{key}={value}@{partition}/{offset}",
        ],
        "",
    )
    .await;
    assert_eq!(formatted.code, Some(0), "{}", formatted.stderr);
    assert_eq!(formatted.stdout, "b=two@0/1\n");

    let at_end = weir(bootstrap, &["consume", "lines", "--from", "end"], "").await;
    assert_eq!((at_end.code, at_end.stdout.as_str()), (Some(0), ""));

    let missing = weir(bootstrap, &["produce", "nope"], "x\n").await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    let usage = weir(bootstrap, &["consume", "lines"], "").await;
    assert_eq!(usage.code, Some(2), "--from is required: {}", usage.stderr);

    let unreachable = weir("127.0.0.1:1", &["cluster", "status"], "").await;
    assert_eq!(unreachable.code, Some(1));
    assert!(unreachable.stderr.contains("did not answer"), "{}", unreachable.stderr);
}
