//! With replication factor 1 on three nodes, each node holds a replica of only some
//! partitions; Metadata from any node still names every partition's leader (it asks the
//! replicas), so a client that knows one node reaches every partition. And nodes whose clients
//! use other addresses than their peers (`--advertise`) hand clients those addresses.

use std::time::Duration;

use anyhow::{ensure, Result};
use weir_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, TopicConfig};
use weir_proto::v1 as proto;
use weir_tests::cluster::Cluster;
use weir_tests::wait::until;

const TOPIC: &str = "spread";
const PARTITIONS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_names_leaders_without_a_local_replica() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), 3)?;
    cluster
        .client()?
        .admin()
        .create_topic(TOPIC, PARTITIONS, 1, TopicConfig::default())
        .await?;
    for id in cluster.ids() {
        let node = cluster.node(id);
        until(
            &format!("node {id} to name every leader"),
            Duration::from_secs(30),
            || async {
                let mut data = node.data_client().await?;
                let request = proto::MetadataRequest {
                    topics: vec![TOPIC.to_owned()],
                };
                let metadata = data.metadata(request).await?.into_inner();
                let partitions = &metadata.topics[0].partitions;
                let complete = partitions.len() == PARTITIONS as usize
                    && partitions.iter().all(|p| p.leader != 0 && p.replicas == [p.leader]);
                Ok(complete.then_some(()))
            },
        )
        .await?;
    }
    // A client that knows only node 1 produces to every partition, wherever it lives.
    let client = Client::new(ClientConfig::new(&cluster.node(1).bootstrap())?)?;
    let producer = client.producer(ProducerConfig::default())?;
    for partition in 0..PARTITIONS {
        let record = ProducerRecord::new(TOPIC)
            .with_partition(partition)
            .with_value(format!("to {partition}"));
        let metadata = producer.send(record).await?;
        ensure!(metadata.partition == partition);
    }
    Ok(())
}

/// Nodes reached by peers at one address and by clients at another (containers, NAT): each
/// announces its `--advertise` address to the others, and Metadata, leader hints and cluster
/// status hand clients those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_tell_clients_their_advertised_addresses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // `localhost:PORT` reaches the same listener as the peers' `127.0.0.1:PORT`, under
    // another name that only the announcement can teach the other nodes.
    let cluster = Cluster::start_with_node_args(dir.path(), 3, |_, port| {
        vec!["--advertise".to_string(), format!("localhost:{port}")]
    })?;
    let advertised: Vec<(u64, String)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.node(id).bootstrap().replace("127.0.0.1", "localhost")))
        .collect();
    for id in cluster.ids() {
        let node = cluster.node(id);
        until(
            &format!("node {id} to know every advertised address"),
            Duration::from_secs(30),
            || async {
                let mut data = node.data_client().await?;
                let metadata = data.metadata(proto::MetadataRequest::default()).await?.into_inner();
                let mut brokers: Vec<(u64, String)> =
                    metadata.brokers.into_iter().map(|b| (b.node_id, b.address)).collect();
                brokers.sort();
                anyhow::ensure!(brokers == advertised, "node {id} names {brokers:?}, not {advertised:?}");
                Ok(Some(()))
            },
        )
        .await?;
    }
    let status = cluster.status_on(1).await?;
    for node in &status.nodes {
        ensure!(node.address.starts_with("localhost:"), "{node:?}");
    }
    // A client that only knows the advertised names works.
    let bootstrap: Vec<String> = advertised.iter().map(|(_, a)| a.clone()).collect();
    let client = Client::new(ClientConfig::new(&bootstrap.join(","))?)?;
    client
        .admin()
        .create_topic("advertised", 3, 3, TopicConfig::default())
        .await?;
    let producer = client.producer(ProducerConfig::default())?;
    for partition in 0..3 {
        producer
            .send(
                ProducerRecord::new("advertised")
                    .with_partition(partition)
                    .with_value("x"),
            )
            .await?;
    }
    Ok(())
}
