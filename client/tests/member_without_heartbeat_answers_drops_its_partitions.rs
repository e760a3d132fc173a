//! A member whose heartbeats go unanswered for its session timeout has been evicted by the
//! coordinator, which may have handed its partitions to others: it stops reading them
//! (`on_lost`, no commit) and joins again once the coordinator answers.

mod fake;
mod member;

use std::sync::atomic::Ordering;
use std::time::Duration;

use member::{wait_for, Recorder};
use weir_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_heartbeat_answers_drops_its_partitions() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    producer.send(ProducerRecord::new("t").with_value("first")).await?;

    let config = ConsumerConfig::default()
        .group_id("g")
        .start(SeekTo::Beginning)
        .max_wait_ms(100)
        .session_timeout_ms(1_000)
        .heartbeat_max_wait_ms(200);
    let listener = Recorder::default();
    let mut consumer = client.consumer(config);
    consumer.set_rebalance_listener(listener.clone());
    consumer.subscribe(&["t"])?;
    let records = tokio::time::timeout(Duration::from_secs(10), consumer.poll()).await??;
    assert_eq!(records.len(), 1);
    consumer.commit().await?;

    store.coordinator.stalled.store(true, Ordering::SeqCst);
    // Waiting in poll: the loss interrupts it.
    let polled = tokio::time::timeout(Duration::from_millis(2_500), consumer.poll()).await;
    assert!(polled.is_err(), "nothing to read while it owns nothing");
    assert_eq!(listener.seen(), vec!["assigned t/0", "lost t/0"]);
    assert_eq!(consumer.member_id(), None);
    assert!(consumer.assignment().is_empty());

    store.coordinator.stalled.store(false, Ordering::SeqCst);
    producer.send(ProducerRecord::new("t").with_value("second")).await?;
    let records = tokio::time::timeout(Duration::from_secs(10), consumer.poll()).await??;
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1]);
    assert_eq!(listener.seen()[2..], ["assigned t/0".to_owned()]);
    wait_for(|| consumer.member_id().as_deref() == Some("member-2"))
        .await
        .expect("joined again as a new member");
    consumer.close().await?;
    Ok(())
}
