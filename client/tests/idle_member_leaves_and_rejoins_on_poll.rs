//! A member whose application stops calling `poll` for `poll_timeout_ms` leaves the group, so
//! its partitions can go to members that read; the next `poll` drops them (`on_lost`) and joins
//! again. A `poll` that is waiting for records counts as reading.

mod fake;
mod member;

use std::time::Duration;

use fake::groups::Event;
use member::Recorder;
use weir_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_member_leaves_and_rejoins_on_poll() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    producer.send(ProducerRecord::new("t").with_value("first")).await?;

    let config = ConsumerConfig::default()
        .group_id("g")
        .start(SeekTo::Beginning)
        .max_wait_ms(100)
        .poll_timeout_ms(400)
        .session_timeout_ms(5_000)
        .heartbeat_max_wait_ms(100);
    let listener = Recorder::default();
    let mut consumer = client.consumer(config);
    consumer.set_rebalance_listener(listener.clone());
    consumer.subscribe(&["t"])?;
    let records = tokio::time::timeout(Duration::from_secs(10), consumer.poll()).await??;
    assert_eq!(records[0].offset, 0);
    consumer.commit().await?;

    // Waiting in poll for longer than the poll timeout is reading, not idling.
    let waited = tokio::time::timeout(Duration::from_millis(900), consumer.poll()).await;
    assert!(waited.is_err(), "nothing to read");
    assert!(consumer.member_id().is_some(), "still a member");

    // Not calling poll is idling.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let events = store.coordinator.events();
    assert!(
        events.contains(&Event::Leave {
            member: "member-1".into(),
            epoch: -1
        }),
        "{events:#?}"
    );
    assert_eq!(consumer.member_id(), None);
    assert!(store.coordinator.members("g").is_empty());

    producer.send(ProducerRecord::new("t").with_value("second")).await?;
    let records = tokio::time::timeout(Duration::from_secs(10), consumer.poll()).await??;
    assert_eq!(records.iter().map(|record| record.offset).collect::<Vec<_>>(), vec![1]);
    assert_eq!(listener.seen(), vec!["assigned t/0", "lost t/0", "assigned t/0"]);
    assert_eq!(consumer.member_id().as_deref(), Some("member-2"));
    consumer.close().await?;
    Ok(())
}
