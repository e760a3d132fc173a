//! Sends ten records to topic `events` on a broker at 127.0.0.1:9292 and prints where each
//! one was stored. Create the topic first: `weir topic create events --partitions 3
//! --replication-factor 1`.
//!
//! `cargo run -p weir-client --example produce`

use weir_client::{Client, ClientConfig, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::new(ClientConfig::new("127.0.0.1:9292")?)?;
    let producer = client.producer(ProducerConfig::default())?;
    // Enqueue everything first so the records share batches, then wait for the acks.
    let mut deliveries = Vec::new();
    for index in 0..10 {
        let record = ProducerRecord::new("events")
            .with_key(format!("user-{}", index % 3))
            .with_value(format!("hello {index}"));
        deliveries.push(producer.enqueue(record).await?);
    }
    for delivery in deliveries {
        let metadata = delivery.await?;
        println!("stored at partition {} offset {}", metadata.partition, metadata.offset);
    }
    Ok(())
}
