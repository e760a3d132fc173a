//! A member the coordinator no longer knows is fenced, through a commit or through its
//! heartbeat: it drops its partitions without committing (`on_lost`), joins again as a new
//! member, and reads on from the committed offsets.

mod fake;
mod member;

use std::time::Duration;

use member::Recorder;
use weir_client::{Client, ClientConfig, Consumer, ConsumerConfig, Error, ProducerConfig, ProducerRecord, SeekTo};

/// Polls until `count` records arrived; returns their (partition, offset), sorted.
async fn read(consumer: &mut Consumer, count: usize) -> Vec<(u32, u64)> {
    let mut read = Vec::new();
    while read.len() < count {
        let records = tokio::time::timeout(Duration::from_secs(10), consumer.poll())
            .await
            .unwrap_or_else(|_| panic!("only {read:?} of {count} records"))
            .expect("poll");
        read.extend(records.iter().map(|record| (record.partition, record.offset)));
    }
    read.sort_unstable();
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_member_loses_its_partitions_and_rejoins() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 2);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    let produce = |count: usize| {
        let producer = producer.clone();
        async move {
            for index in 0..count {
                let record = ProducerRecord::new("t")
                    .with_partition((index % 2) as u32)
                    .with_value("v");
                producer.send(record).await.expect("produced");
            }
        }
    };
    produce(8).await;

    let config = ConsumerConfig::default()
        .group_id("g")
        .start(SeekTo::Beginning)
        .auto_commit(false)
        .max_wait_ms(100)
        .heartbeat_max_wait_ms(900);
    let listener = Recorder::default();
    let mut consumer = client.consumer(config);
    consumer.set_rebalance_listener(listener.clone());
    consumer.subscribe(&["t"])?;
    assert_eq!(read(&mut consumer, 8).await.len(), 8);
    consumer.commit().await?;
    assert_eq!(consumer.member_id().as_deref(), Some("member-1"));
    assert_eq!(store.coordinator.committed("g", "t", 1), Some(4));

    // Evicted while its heartbeat is held: the next commit finds out.
    store.coordinator.forget("g", "member-1");
    let error = consumer.commit_offsets(&[("t", 0, 4, "")]).await.expect_err("fenced");
    assert!(matches!(error, Error::Fenced(_)), "{error:?}");
    assert_eq!(consumer.member_id(), None, "no longer a member");
    produce(4).await;
    assert_eq!(read(&mut consumer, 4).await, vec![(0, 4), (0, 5), (1, 4), (1, 5)]);
    assert_eq!(
        listener.seen(),
        vec!["assigned t/0,t/1", "lost t/0,t/1", "assigned t/0,t/1"]
    );
    assert_eq!(consumer.member_id().as_deref(), Some("member-2"));
    consumer.commit().await?;
    assert_eq!(store.coordinator.committed("g", "t", 0), Some(6));

    // Evicted and told at once: the held heartbeat is answered "fenced".
    store.coordinator.evict("g", "member-2", &store);
    produce(2).await;
    assert_eq!(read(&mut consumer, 2).await, vec![(0, 6), (1, 6)]);
    assert_eq!(
        listener.seen()[3..],
        ["lost t/0,t/1".to_owned(), "assigned t/0,t/1".to_owned()]
    );
    assert_eq!(consumer.member_id().as_deref(), Some("member-3"));
    consumer.close().await?;
    Ok(())
}
