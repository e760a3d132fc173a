//! The real `weir` binary against a real broker: cluster status, topic create / list / describe
//! / alter / delete, produce from stdin with keys, consume from the beginning, from an offset
//! and to the end, in tables and JSON; and errors (a deleted topic, an unknown topic) exit
//! non-zero with a message that names the problem.

use anyhow::{ensure, Result};
use serde_json::Value;
use weir_tests::{BrokerProcess, CliOutput};

const TOPIC: &str = "lines";
const FORMAT: &str = "{offset} {key} {value}";

#[test]
fn cli_round_trip_against_real_broker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path().join("data"))?;
    let weir = |args: &[&str], stdin: &str| broker.weir(args, stdin);

    weir(&["cluster", "status"], "")?.ensure_success()?;
    let status = weir(&["--output", "json", "cluster", "status"], "")?.ensure_success()?;
    ensure!(
        status.json()?["nodes"].as_array().is_some_and(|nodes| nodes.len() == 1),
        "{status}"
    );

    let created = weir(
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        "",
    )?
    .ensure_success()?;
    ensure!(created.stdout.contains(TOPIC), "{created}");

    let listed = weir(&["topic", "list"], "")?.ensure_success()?;
    ensure!(listed.lines().iter().any(|line| line.starts_with(TOPIC)), "{listed}");
    let listed = weir(&["--output", "json", "topic", "list"], "")?.ensure_success()?;
    let topics = listed.json()?;
    let entry = topics
        .as_array()
        .and_then(|topics| topics.iter().find(|topic| topic["name"] == TOPIC));
    ensure!(
        entry.is_some_and(|topic| topic["partitions"] == 1 && topic["replication_factor"] == 1),
        "{listed}"
    );

    let described = describe(&broker)?;
    ensure!(
        described["partitions"].as_array().is_some_and(|p| p.len() == 1),
        "{described}"
    );
    ensure!(described["partitions"][0]["high_watermark"] == 0, "{described}");

    let produced = weir(
        &["produce", TOPIC, "--key-separator", ":"],
        "alpha:one\nbeta:two\ngamma:three:and:more\nno key here\n",
    )?
    .ensure_success()?;
    let expected = ["0 alpha one", "1 beta two", "2 gamma three:and:more", "3  no key here"];

    let all = weir(
        &[
            "consume",
            TOPIC,
            "--from",
            "beginning",
            "--count",
            "4",
            "--format",
            FORMAT,
        ],
        "",
    )?
    .ensure_success()?;
    ensure!(all.lines() == expected, "after {produced}\n{all}");
    let one = weir(
        &["consume", TOPIC, "--from", "2", "--count", "1", "--format", FORMAT],
        "",
    )?
    .ensure_success()?;
    ensure!(one.lines() == expected[2..3], "{one}");
    // Without --count or --follow, consume stops at the end.
    let to_end = weir(&["consume", TOPIC, "--from", "beginning"], "")?.ensure_success()?;
    ensure!(
        to_end.lines() == ["one", "two", "three:and:more", "no key here"],
        "{to_end}"
    );
    let json = weir(
        &["--output", "json", "consume", TOPIC, "--from", "1", "--count", "1"],
        "",
    )?
    .ensure_success()?;
    let record = json.json()?;
    ensure!(
        record["offset"] == 1 && record["key"] == "beta" && record["value"] == "two",
        "{json}"
    );
    ensure!(
        describe(&broker)?["partitions"][0]["high_watermark"] == 4,
        "high watermark after produce"
    );

    let altered = weir(&["topic", "alter", TOPIC, "--config", "retention_ms=3600000"], "")?.ensure_success()?;
    let described = describe(&broker)?;
    ensure!(
        described["config"]["retention_ms"] == 3_600_000,
        "after {altered}\n{described}"
    );

    weir(&["topic", "delete", TOPIC], "")?.ensure_success()?;
    let missing = weir(&["topic", "describe", TOPIC], "")?;
    expect_failure(&missing, &[TOPIC, "not found"])?;
    let listed = weir(&["--output", "json", "topic", "list"], "")?.ensure_success()?;
    ensure!(
        !listed
            .json()?
            .as_array()
            .is_some_and(|topics| topics.iter().any(|t| t["name"] == TOPIC)),
        "{listed}"
    );

    let unknown = weir(&["produce", "no-such-topic"], "lost\n")?;
    expect_failure(&unknown, &["no-such-topic"])?;
    Ok(())
}

fn describe(broker: &BrokerProcess) -> Result<Value> {
    broker
        .weir(&["topic", "describe", TOPIC, "--output", "json"], "")?
        .ensure_success()?
        .json()
}

/// A failed run: exit code 1 (an error, not a usage error or a crash) and a message on stderr
/// that contains every one of `words` (case-insensitively).
fn expect_failure(output: &CliOutput, words: &[&str]) -> Result<()> {
    ensure!(output.code() == Some(1), "expected exit code 1:\n{output}");
    let stderr = output.stderr.to_lowercase();
    for word in words {
        ensure!(
            stderr.contains(&word.to_lowercase()),
            "stderr does not mention {word:?}:\n{output}"
        );
    }
    Ok(())
}
