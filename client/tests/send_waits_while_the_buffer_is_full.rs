//! `enqueue` waits while the producer's buffer is full, and goes on once acknowledgements free it.

mod fake;

use std::time::Duration;

use tonic::Status;
use weir_client::{ClientConfig, Producer, ProducerConfig, ProducerRecord};

#[tokio::test]
async fn send_waits_while_the_buffer_is_full() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = ClientConfig::builder()
        .bootstrap(&addresses[0])
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()?;
    let config = ProducerConfig::default()
        .linger_ms(0)
        .batch_bytes_max(1024)
        .buffer_bytes_max(1024);
    let producer = Producer::new(client, config)?;
    // The first record's batch is refused for a while (retriable), holding the whole buffer.
    for _ in 0..200 {
        store.fail_next_produce(Status::unavailable("no leader yet"));
    }
    let record = || ProducerRecord::new("t").with_value(vec![7u8; 900]);
    let first = producer.enqueue(record()).await?;
    let blocked = tokio::time::timeout(Duration::from_millis(20), producer.enqueue(record())).await;
    assert!(blocked.is_err(), "the second record waits for buffer space");
    assert!(producer.buffered_bytes() > 900);

    assert_eq!(first.await?.offset, 0);
    let second = tokio::time::timeout(Duration::from_secs(5), producer.enqueue(record())).await??;
    assert_eq!(second.await?.offset, 1);
    producer.flush().await;
    assert_eq!(producer.buffered_bytes(), 0);
    Ok(())
}
