//! Seeking by offset, by timestamp and to the end, and long-polling for new records.

mod fake;

use std::time::Duration;

use weir_client::{Client, ClientConfig, ConsumerConfig, Error, ProducerConfig, ProducerRecord, SeekTo};

#[tokio::test]
async fn consumer_seeks_by_offset_time_and_end() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    for (index, timestamp_ms) in [1_000i64, 2_000, 3_000, 4_000].into_iter().enumerate() {
        let record = ProducerRecord::new("t")
            .with_value(format!("v{index}"))
            .with_timestamp_ms(timestamp_ms);
        producer.send(record).await?;
    }

    let mut consumer = client.consumer(ConsumerConfig::default().max_wait_ms(100));
    consumer.assign("t", &[0]).await?;
    assert_eq!(consumer.seek("t", 0, SeekTo::Offset(2)).await?, 2);
    let records = consumer.poll().await?;
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(consumer.position("t", 0), Some(4));

    assert_eq!(consumer.seek("t", 0, SeekTo::Timestamp(2_500)).await?, 2);
    assert_eq!(consumer.poll().await?[0].timestamp_ms, 3_000);

    assert_eq!(consumer.seek("t", 0, SeekTo::End).await?, 4);
    let waiting = tokio::time::timeout(Duration::from_millis(300), consumer.poll()).await;
    assert!(waiting.is_err(), "nothing to read at the end");
    producer.send(ProducerRecord::new("t").with_value("late")).await?;
    let records = tokio::time::timeout(Duration::from_secs(5), consumer.poll()).await??;
    assert_eq!(records[0].value.as_deref(), Some(&b"late"[..]));
    assert_eq!(records[0].offset, 4);

    consumer.seek("t", 0, SeekTo::Offset(99)).await?;
    let error = consumer.poll().await.expect_err("beyond the end");
    assert!(
        matches!(
            error,
            Error::OffsetOutOfRange {
                requested: Some(99),
                end: Some(5),
                ..
            }
        ),
        "{error:?}"
    );
    Ok(())
}
