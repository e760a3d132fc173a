//! The deployment kit for real: `deploy/docker-compose.yml` on this machine's Docker engine.
//!
//! Builds the local image (`deploy/docker/build-local-image.sh`, FROM scratch with the host's
//! broker and CLI binaries), brings the three nodes up under a project name and host ports of
//! its own, waits for Docker's health checks, creates a topic with replication factor 3 with
//! the CLI from the host, and produces and consumes a few records with the CLI through the
//! published ports (to a second topic). Then a history-recording load (two producers per partition, acks=all) runs
//! through the published ports while
//! 1. one node's container is killed (`docker kill`, SIGKILL) and started again on its volume,
//! 2. another node is cut off the compose network (`docker network disconnect`) and connected
//!    again,
//!
//! each followed by waiting until every node is up and caught up. The load stops, two readers
//! drain every partition and the history checker must find nothing lost, duplicated or
//! reordered; every replica must reach the same high watermark. Finally `docker stop` of each
//! node must end in exit code 0 (the broker, PID 1 in its container, handles SIGTERM) and
//! `compose down -v` removes containers, network and volumes (also when the test fails), and
//! the image tag is removed.
//!
//! Skipped, with a message, when no Docker engine answers or no compose tool runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use weir_tests::docker::{self, ComposeCluster, LocalImage, NODES};
use weir_tests::history::{self, History, Read};
use weir_tests::load::{outcomes, Load};
use weir_tests::records::drain_partition;
use weir_tests::wait::{until, within};

const TOPIC: &str = "compose";
/// The CLI's own records go to a topic of their own: the history checker reads `TOPIC` only
/// what the recorded load wrote.
const CLI_TOPIC: &str = "compose-cli";
const PARTITIONS: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on the cluster forming, a node coming back, produce resuming.
const STEP_WAIT: Duration = Duration::from_secs(90);
/// How long each fault lasts under load.
const FAULT_HOLD: Duration = Duration::from_secs(4);
const KILLED: u64 = 1;
const CUT_OFF: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_cluster_loses_no_acked_record() -> Result<()> {
    if !docker::engine_answers() {
        eprintln!("skipped: no Docker engine answers (`docker info` failed)");
        return Ok(());
    }
    let Some(compose) = docker::compose_command() else {
        eprintln!("skipped: neither `docker compose` nor `docker-compose` runs");
        return Ok(());
    };
    let test_start = Instant::now();
    let project = docker::unique_name("weirtest");
    // Declared before the cluster: dropped after it (the tag goes once the containers are gone).
    let image = LocalImage::build(&format!("weir-compose-test:{project}"))?;
    let built = test_start.elapsed();
    let cluster = ComposeCluster::up(compose, &project, &image.tag)?;
    eprintln!(
        "project {project}: ports {:?}, nodes known as {}:<port>, network {}",
        cluster.ports, cluster.gateway, cluster.network
    );
    cluster.wait_healthy(STEP_WAIT).await?;
    let healthy = test_start.elapsed();

    let bootstrap = cluster.bootstrap();
    for topic in [TOPIC, CLI_TOPIC] {
        let partitions = PARTITIONS.to_string();
        let args = [
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions,
            "--replication-factor",
            "3",
        ];
        weir_tests::weir(&bootstrap, &args, "")?.ensure_success()?;
    }
    for topic in [TOPIC, CLI_TOPIC] {
        for partition in 0..PARTITIONS {
            until(&format!("a leader for {topic}/{partition}"), STEP_WAIT, || {
                cluster.leader_of(topic, partition)
            })
            .await?;
        }
    }
    let status = weir_tests::weir(&bootstrap, &["cluster", "status"], "")?.ensure_success()?;
    eprintln!("{}", status.stdout);
    // A few records through the CLI, by key to every partition, and read back.
    let lines: Vec<String> = (0..9).map(|i| format!("k{i}:cli-{i}")).collect();
    weir_tests::weir(
        &bootstrap,
        &["produce", CLI_TOPIC, "--key-separator", ":"],
        &(lines.join("\n") + "\n"),
    )?
    .ensure_success()?;
    let consumed = weir_tests::weir(
        &bootstrap,
        &[
            "consume",
            CLI_TOPIC,
            "--from",
            "beginning",
            "--count",
            "9",
            "--format",
            "{value}",
        ],
        "",
    )?
    .ensure_success()?;
    let mut values: Vec<&str> = consumed.lines();
    values.sort_unstable();
    let expected: Vec<String> = (0..9).map(|i| format!("cli-{i}")).collect();
    ensure!(values == expected, "consumed {values:?}, produced {expected:?}");

    let history = Arc::new(History::new());
    let mut load = Load::new(
        TOPIC,
        PARTITIONS,
        cluster.client_config(REQUEST_TIMEOUT, CONNECT_TIMEOUT)?,
    );
    load.reconnect_after_unknown = true;
    let load = load.start(history.clone());
    wait_flowing(&history, "before the faults").await?;

    // 1. SIGKILL one node's container under load, then start it again on its volume.
    let killed_at = history.now();
    cluster.docker_on(&["kill"], KILLED)?;
    eprintln!("killed node {KILLED} at {killed_at:.2?}");
    wait_flowing(&history, "with node 1 killed").await?;
    tokio::time::sleep(FAULT_HOLD).await;
    cluster.docker_on(&["start"], KILLED)?;
    let started = Instant::now();
    cluster
        .wait_all_back(TOPIC, PARTITIONS, STEP_WAIT)
        .await
        .context("the killed node did not come back")?;
    eprintln!(
        "node {KILLED} started again, up and caught up after {:.2?}",
        started.elapsed()
    );
    wait_flowing(&history, "after the restart").await?;

    // 2. Cut another node off the network under load, then connect it again.
    cluster.disconnect(CUT_OFF)?;
    eprintln!("disconnected node {CUT_OFF} at {:.2?}", history.now());
    wait_flowing(&history, "with node 2 cut off").await?;
    tokio::time::sleep(FAULT_HOLD).await;
    cluster.connect(CUT_OFF)?;
    let connected = Instant::now();
    cluster
        .wait_all_back(TOPIC, PARTITIONS, STEP_WAIT)
        .await
        .context("the cut-off node did not come back")?;
    eprintln!(
        "node {CUT_OFF} connected again, up and caught up after {:.2?}",
        connected.elapsed()
    );
    wait_flowing(&history, "after reconnecting").await?;

    load.stop(Duration::from_secs(60)).await?;
    eprint!("{}", outcomes(&history));
    let acked = history
        .ops()
        .iter()
        .filter(|op| matches!(op.outcome, history::Outcome::Ok { .. }))
        .count();

    // Two readers through the published ports; the history checker must find nothing.
    let mut reads = Vec::new();
    for reader in ["reader-a", "reader-b"] {
        let client = cluster.client()?;
        for partition in 0..PARTITIONS {
            let drained = within("draining", STEP_WAIT, drain_partition(&client, TOPIC, partition)).await??;
            reads.push(Read::from_drained(reader, &drained));
        }
    }
    let report = history::check(&history.ops(), &reads);
    eprintln!("history checker:\n{report}");
    report.into_result()?;
    let mut high_watermarks = Vec::new();
    for partition in 0..PARTITIONS {
        let views: Vec<u64> = reads
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.high_watermark)
            .collect();
        ensure!(
            views.windows(2).all(|pair| pair[0] == pair[1]),
            "readers saw different high watermarks on partition {partition}: {views:?}"
        );
        high_watermarks.push(views[0]);
    }
    cluster.wait_replicas_at(TOPIC, &high_watermarks, STEP_WAIT).await?;
    for node in NODES {
        let description = cluster.describe_on(node, TOPIC).await?;
        for p in &description.partitions {
            ensure!(
                p.high_watermark == high_watermarks[p.partition as usize],
                "node {node} partition {}: high watermark {}, the drain read up to {}",
                p.partition,
                p.high_watermark,
                high_watermarks[p.partition as usize]
            );
        }
    }
    eprintln!("{acked} acknowledged writes, all read back; high watermarks {high_watermarks:?} on every node");

    // A graceful stop of each container: SIGTERM to the broker as PID 1, exit code 0.
    for node in NODES {
        let stopping = Instant::now();
        cluster.docker_on(&["stop", "-t", "30"], node)?;
        let (state, code) = cluster.state(node)?;
        eprintln!(
            "docker stop of node {node}: {state}, exit code {code}, after {:.2?}",
            stopping.elapsed()
        );
        ensure!(
            state == "exited" && code == 0,
            "node {node} did not stop cleanly: {state}, exit code {code}\n{}",
            cluster.logs_tail(node, 20)
        );
    }
    eprintln!(
        "image built in {built:.1?}, cluster healthy at {healthy:.1?}; test {:.1?} before compose down",
        test_start.elapsed()
    );
    Ok(())
}

/// Waits until a write to every partition invoked from now on is acknowledged.
async fn wait_flowing(history: &History, when: &str) -> Result<()> {
    let since = history.now();
    for partition in 0..PARTITIONS {
        until(
            &format!("produce to partition {partition} flowing {when}"),
            STEP_WAIT,
            || async { Ok(history.first_ok_invoked_after(partition, since)) },
        )
        .await?;
    }
    Ok(())
}
