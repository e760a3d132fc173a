//! `weir cluster status`.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use tokio::time::Instant;
use weir_client::{Admin, ClusterStatus, PartitionStatus};

use crate::args::Output;
use crate::output::{ids, leader, print_json, Table};

/// Asks the cluster for its status, retrying for up to `wait_ms` while no node answers.
pub async fn status(admin: &Admin, output: Output, wait_ms: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let status = loop {
        match admin.cluster_status().await {
            Ok(status) => break status,
            Err(error) if Instant::now() < deadline && (error.is_retriable() || error.is_outcome_unknown()) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).context("the cluster did not answer"),
        }
    };
    match output {
        Output::Json => print_json(&status_json(&status)),
        Output::Table => print!("{}", render(&status)),
    }
    Ok(())
}

fn render(status: &ClusterStatus) -> String {
    let mut out = format!(
        "cluster: {}\nanswered by node: {}\n\n",
        status.cluster_id, status.node_id
    );
    let mut nodes = Table::new(&["NODE", "ADDRESS", "STATE"]);
    for node in &status.nodes {
        nodes.row(vec![node.node_id.to_string(), node.address.clone(), node.state.clone()]);
    }
    out.push_str(&nodes.render());
    out.push('\n');
    let mut partitions = Table::new(&[
        "TOPIC",
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "LAGGING (ENTRIES BEHIND)",
        "LOG_START_OFFSET",
        "HIGH_WATERMARK",
    ]);
    for partition in &status.partitions {
        partitions.row(vec![
            partition.topic.clone(),
            partition.partition.to_string(),
            leader(partition.leader),
            ids(&partition.replicas),
            lagging(partition),
            partition.log_start_offset.to_string(),
            partition.high_watermark.to_string(),
        ]);
    }
    out.push_str(&partitions.render());
    let under = status.partitions.iter().filter(|p| p.is_under_replicated()).count();
    let unhealthy: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.state != "up")
        .map(|n| format!("node {} {}", n.node_id, n.state))
        .collect();
    out.push_str(&format!("\nunder-replicated partitions: {under}\n"));
    if !unhealthy.is_empty() {
        out.push_str(&format!("unhealthy: {}\n", unhealthy.join(", ")));
    }
    out
}

/// `3(+120)`: node 3 is 120 entries behind; a lagging node without a count failed or repairs.
fn lagging(partition: &PartitionStatus) -> String {
    if partition.lagging_replicas.is_empty() {
        return "-".to_string();
    }
    partition
        .lagging_replicas
        .iter()
        .map(|node| match partition.replica_lag.get(node) {
            Some(behind) => format!("{node}(+{behind})"),
            None => node.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn status_json(status: &ClusterStatus) -> serde_json::Value {
    json!({
        "cluster_id": status.cluster_id,
        "node_id": status.node_id,
        "nodes": status.nodes.iter().map(|node| json!({
            "node_id": node.node_id, "address": node.address, "state": node.state,
        })).collect::<Vec<_>>(),
        "partitions": status.partitions.iter().map(|partition| json!({
            "topic": partition.topic,
            "partition": partition.partition,
            "leader": partition.leader,
            "replicas": partition.replicas,
            "lagging_replicas": partition.lagging_replicas,
            "replica_lag": partition.replica_lag,
            "under_replicated": partition.is_under_replicated(),
            "log_start_offset": partition.log_start_offset,
            "high_watermark": partition.high_watermark,
        })).collect::<Vec<_>>(),
    })
}
