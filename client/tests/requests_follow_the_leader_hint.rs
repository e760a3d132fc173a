//! When metadata names a node that no longer leads, the client follows the NotLeader hint to
//! the real leader, for produce and for fetch.

mod fake;

use std::sync::atomic::Ordering;

use weir_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};

#[tokio::test]
async fn requests_follow_the_leader_hint() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(2).await;
    store.create_topic("t", 1);
    // Metadata still says node 1 leads; node 2 does.
    store.leader.store(2, Ordering::SeqCst);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    let metadata = producer.send(ProducerRecord::new("t").with_value("moved")).await?;
    assert_eq!(metadata.offset, 0);

    let mut consumer = client.consumer(ConsumerConfig::default().max_wait_ms(50));
    consumer.assign("t", &[0]).await?;
    consumer.seek("t", 0, SeekTo::Beginning).await?;
    let records = consumer.poll().await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"moved"[..]));
    Ok(())
}
