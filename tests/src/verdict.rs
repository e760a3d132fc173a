//! The end of a fault test, once every fault has healed: drain, check the history, and check
//! that the replicas converged.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};

use crate::cluster::Cluster;
use crate::history::{self, History, Read, Report};
use crate::records::drain_partition;
use crate::wait::{until, within};

/// Bound on draining one partition.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the replicas reaching the drained high watermark and the same size.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Two readers, each with its own client, drain every partition of `topic` from the start to
/// its high watermark; the history checker must find nothing (its report is printed either
/// way). Then every node's own replica of each partition must reach the high watermark the
/// readers saw, no more, and the replicas of a partition must hold the same number of bytes
/// (describe has no checksum; equal sizes of logs whose offsets agree).
pub async fn drain_check_converge(
    cluster: &Cluster,
    topic: &str,
    partitions: u32,
    history: &History,
) -> Result<Report> {
    let mut reads = Vec::new();
    for reader in ["reader-a", "reader-b"] {
        let client = cluster.client()?;
        for partition in 0..partitions {
            let drained = within("draining", DRAIN_TIMEOUT, drain_partition(&client, topic, partition)).await??;
            reads.push(Read::from_drained(reader, &drained));
        }
    }
    let report = history::check(&history.ops(), &reads);
    eprintln!("history checker:\n{report}");
    let report = report.into_result()?;

    let mut high_watermarks = Vec::new();
    for p in 0..partitions {
        let views: Vec<u64> = reads
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.high_watermark)
            .collect();
        ensure!(
            views.windows(2).all(|pair| pair[0] == pair[1]),
            "readers saw different high watermarks on partition {p}: {views:?}"
        );
        high_watermarks.push(views.first().copied().unwrap_or(0));
    }
    cluster
        .wait_replicas_at(topic, &high_watermarks, CONVERGE_TIMEOUT)
        .await
        .context("replicas did not reach the drained high watermarks")?;
    for id in cluster.ids() {
        let description = cluster.describe_on(id, topic).await?;
        for partition in &description.partitions {
            eprintln!(
                "node {id} partition {}: high watermark {}, {} bytes in {} segments, leader {:?}",
                partition.partition,
                partition.high_watermark,
                partition.size_bytes,
                partition.segments,
                partition.leader
            );
            let drained = high_watermarks[partition.partition as usize];
            ensure!(
                partition.high_watermark == drained,
                "node {id} partition {}: high watermark {}, the drain read up to {drained}",
                partition.partition,
                partition.high_watermark,
            );
        }
    }
    until(
        "every replica of a partition to hold the same bytes",
        CONVERGE_TIMEOUT,
        || async {
            let mut sizes = Vec::new();
            for id in cluster.ids() {
                let description = cluster.describe_on(id, topic).await?;
                sizes.push(description.partitions.iter().map(|p| p.size_bytes).collect::<Vec<_>>());
            }
            Ok(sizes.windows(2).all(|pair| pair[0] == pair[1]).then_some(()))
        },
    )
    .await?;
    Ok(report)
}

/// Waits until every node sees every node up, then until every replica of `topic` has caught
/// up with the high watermarks its partitions' leaders have now: a node that was cut off,
/// paused or restarted is back.
pub async fn wait_all_back(cluster: &Cluster, topic: &str, partitions: u32, timeout: Duration) -> Result<()> {
    let all_up: Vec<(u64, &str)> = cluster.ids().into_iter().map(|id| (id, "up")).collect();
    for observer in cluster.ids() {
        cluster.wait_node_states(observer, &all_up, timeout).await?;
    }
    let mut high_watermarks = Vec::new();
    for p in 0..partitions {
        let leader = cluster.wait_leader(topic, p, timeout).await?;
        let description = cluster.describe_on(leader, topic).await?;
        let partition = description
            .partitions
            .iter()
            .find(|d| d.partition == p)
            .with_context(|| format!("node {leader} does not describe partition {p}"))?;
        high_watermarks.push(partition.high_watermark);
    }
    cluster
        .wait_replicas_at(topic, &high_watermarks, timeout)
        .await
        .context("a replica did not catch up")
}
