//! A produce that failed before anything was appended (unavailable, not leader) is retried;
//! one whose outcome is unknown (timed out) fails to the sender when the producer is not
//! idempotent, so nothing is stored twice. (An idempotent producer resends it: see
//! `idempotent_producer_resends_unknown_outcomes`.)

mod fake;

use tonic::Status;
use weir_client::{Client, ClientConfig, Error, ProducerConfig, ProducerRecord};

#[tokio::test]
async fn produce_retries_retriable_errors_but_not_unknown_outcomes() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0).idempotence(false))?;

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

#[tokio::test]
async fn idempotent_producer_resends_unknown_outcomes() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    // The fake refuses the first attempt with an unknown outcome (and stores nothing): the
    // idempotent producer sends the same batch again, and the record is stored once.
    store.fail_next_produce(Status::deadline_exceeded("not committed in time"));
    let metadata = producer.send(ProducerRecord::new("t").with_value("once")).await?;
    assert_eq!(metadata.offset, 0);
    let stored: Vec<_> = store.values("t", 0).into_iter().map(|(_, value)| value).collect();
    assert_eq!(stored, vec!["once"]);
    Ok(())
}
