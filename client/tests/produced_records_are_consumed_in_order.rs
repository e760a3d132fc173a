//! Records sent through the producer land densely and in order in their partitions, keyed
//! records in the partition of their key, and the consumer reads them all back.

mod fake;

use std::collections::HashMap;

use futures::StreamExt;
use weir_client::partitioner::partition_for_key;
use weir_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo, TopicConfig};

#[tokio::test]
async fn produced_records_are_consumed_in_order() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    let client = Client::new(ClientConfig::new(&addresses.join(","))?)?;
    client
        .admin()
        .create_topic("events", 3, 1, TopicConfig::default())
        .await?;

    let producer = client.producer(ProducerConfig::default().linger_ms(2).batch_bytes_max(4096))?;
    let mut deliveries = Vec::new();
    for index in 0..600u32 {
        let key = format!("key-{}", index % 7);
        let record = ProducerRecord::new("events")
            .with_key(key)
            .with_value(index.to_string());
        deliveries.push(producer.enqueue(record).await?);
    }
    let mut acked: HashMap<u32, Vec<u64>> = HashMap::new();
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await?;
        let key = format!("key-{}", index % 7);
        assert_eq!(metadata.partition, partition_for_key(key.as_bytes(), 3));
        acked.entry(metadata.partition).or_default().push(metadata.offset);
    }
    for (partition, offsets) in &acked {
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {partition}: offsets dense and in send order"
        );
        let stored = store.values("events", *partition);
        assert_eq!(stored.len(), offsets.len());
    }
    assert!(
        store.produce_requests.load(std::sync::atomic::Ordering::SeqCst) < 600,
        "records were batched"
    );

    // Keyless records stick to one partition per batch, and a flush sends them without linger.
    let keyless = client.producer(ProducerConfig::default().linger_ms(60_000))?;
    let pending = keyless
        .enqueue(ProducerRecord::new("events").with_value("keyless"))
        .await?;
    keyless.flush().await;
    let keyless_metadata = pending.await?;

    let mut consumer = client.consumer(ConsumerConfig::default().max_wait_ms(50));
    consumer.assign_all("events").await?;
    consumer.seek_all(SeekTo::Beginning).await?;
    let mut seen: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut stream = consumer.stream();
    for _ in 0..601 {
        let record = stream.next().await.expect("endless stream")?;
        seen.entry(record.partition).or_default().push(record.offset);
    }
    drop(stream);
    acked
        .entry(keyless_metadata.partition)
        .or_default()
        .push(keyless_metadata.offset);
    for (partition, mut offsets) in acked {
        offsets.sort_unstable();
        assert_eq!(seen[&partition], offsets, "partition {partition} read back in order");
    }
    Ok(())
}
