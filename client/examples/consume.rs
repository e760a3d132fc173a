//! Reads topic `events` from the beginning on a broker at 127.0.0.1:9292 and prints each
//! record; stops with Ctrl-C.
//!
//! `cargo run -p weir-client --example consume`

use futures::StreamExt;
use weir_client::{Client, ClientConfig, ConsumerConfig, SeekTo};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::new(ClientConfig::new("127.0.0.1:9292")?)?;
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("events").await?;
    consumer.seek_all(SeekTo::Beginning).await?;
    let mut records = consumer.stream();
    while let Some(record) = records.next().await {
        let record = record?;
        let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        println!("{}@{}: {value}", record.partition, record.offset);
    }
    Ok(())
}
