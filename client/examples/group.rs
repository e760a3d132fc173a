//! Reads topic `events` as a member of consumer group `example` on a broker at
//! 127.0.0.1:9292 (or the address in WEIR_BOOTSTRAP), printing each record and the partitions
//! it is given and loses; commits what it printed; leaves the group on Ctrl-C. Start it in two
//! terminals to watch the partitions move.
//!
//! `cargo run -p weir-client --example group`

use futures::future::BoxFuture;
use weir_client::{Client, ClientConfig, ConsumerConfig, GroupCommitter, RebalanceListener, SeekTo, TopicPartition};

/// Prints rebalances.
struct Announce;

impl RebalanceListener for Announce {
    fn on_revoked<'a>(&'a mut self, revoked: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { eprintln!("revoked: {}", names(revoked)) })
    }

    fn on_assigned<'a>(&'a mut self, assigned: &'a [TopicPartition], _: &'a GroupCommitter) -> BoxFuture<'a, ()> {
        Box::pin(async move { eprintln!("assigned: {}", names(assigned)) })
    }

    fn on_lost<'a>(&'a mut self, lost: &'a [TopicPartition]) -> BoxFuture<'a, ()> {
        Box::pin(async move { eprintln!("lost: {}", names(lost)) })
    }
}

fn names(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bootstrap = std::env::var("WEIR_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9292".into());
    let topic = std::env::var("WEIR_TOPIC").unwrap_or_else(|_| "events".into());
    let client = Client::new(ClientConfig::new(&bootstrap)?)?;
    let config = ConsumerConfig::default().group_id("example").start(SeekTo::Beginning);
    let mut consumer = client.consumer(config);
    consumer.set_rebalance_listener(Announce);
    consumer.subscribe(&[topic.as_str()])?;
    loop {
        tokio::select! {
            records = consumer.poll() => {
                for record in records? {
                    let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    println!("{}/{}@{}: {value}", record.topic, record.partition, record.offset);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    consumer.close().await?;
    Ok(())
}
