//! With replication factor 1 on three nodes, each node holds a replica of only some
//! partitions; Metadata from any node still names every partition's leader (it asks the
//! replicas), so a client that knows one node reaches every partition.

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
