//! A produce that failed before anything was appended (unavailable, not leader) is retried;
//! one whose outcome is unknown (timed out) fails to the sender, so nothing is stored twice.

mod fake;

use tonic::Status;
use weir_client::{Client, ClientConfig, Error, ProducerConfig, ProducerRecord};

#[tokio::test]
async fn produce_retries_retriable_errors_but_not_unknown_outcomes() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;

    store.fail_next_produce(Status::unavailable("no leader yet"));
    let mut full = Status::resource_exhausted("mailbox full; retry later");
    full.metadata_mut()
        .insert(weir_client::error::RETRIABLE_KEY, "true".parse()?);
    store.fail_next_produce(full);
    let metadata = producer.send(ProducerRecord::new("t").with_value("first")).await?;
    assert_eq!(metadata.offset, 0);

    store.fail_next_produce(Status::deadline_exceeded("not committed in time"));
    let error = producer
        .send(ProducerRecord::new("t").with_value("second"))
        .await
        .expect_err("a timeout is reported");
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    assert!(error.is_outcome_unknown());

    store.fail_next_produce(Status::resource_exhausted("disk full"));
    let error = producer
        .send(ProducerRecord::new("t").with_value("third"))
        .await
        .expect_err("a full disk is not retried");
    assert!(
        matches!(error, Error::ResourceExhausted { retriable: false, .. }),
        "{error:?}"
    );

    let stored: Vec<_> = store.values("t", 0).into_iter().map(|(_, value)| value).collect();
    assert_eq!(
        stored,
        vec!["first", "second"],
        "the timed-out write is stored once, not retried"
    );

    let oversized = ProducerRecord::new("t").with_value(vec![0u8; 2 << 20]);
    assert!(matches!(producer.send(oversized).await, Err(Error::InvalidArgument(_))));
    let missing = producer
        .send(ProducerRecord::new("t").with_partition(5).with_value("x"))
        .await;
    assert!(
        matches!(missing, Err(Error::PartitionNotFound { partition: 5, .. })),
        "{missing:?}"
    );
    Ok(())
}
