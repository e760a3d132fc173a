//! The admin client's group operations, through a coordinator that is not the node metadata
//! names: list, describe (high watermarks the coordinator cannot tell are asked of the
//! partition leaders, and lag follows), committed offsets, reset (offsets looked up per
//! partition and sent as explicit values; refused while the group has members) and delete.

mod fake;

use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_client::{
    Client, ClientConfig, ConsumerConfig, Error, GroupState, ProducerConfig, ProducerRecord, SeekTo, TopicPartition,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admin_describes_resets_and_deletes() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(2).await;
    store.create_topic("t", 2);
    store.leader.store(2, Ordering::SeqCst); // metadata says node 1
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let admin = client.admin();
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    for (index, timestamp_ms) in [1_000i64, 2_000, 3_000, 4_000, 5_000, 6_000].into_iter().enumerate() {
        let record = ProducerRecord::new("t")
            .with_partition((index % 2) as u32)
            .with_timestamp_ms(timestamp_ms)
            .with_value("v");
        producer.send(record).await?;
    }
    assert!(matches!(
        admin.describe_group("g").await,
        Err(Error::GroupNotFound { group }) if group == "g"
    ));

    let mut member = client.consumer(
        ConsumerConfig::default()
            .group_id("g")
            .start(SeekTo::Beginning)
            .max_wait_ms(100)
            .heartbeat_max_wait_ms(200),
    );
    member.subscribe(&["t"])?;
    let mut read = 0;
    while read < 2 {
        read += tokio::time::timeout(Duration::from_secs(10), member.poll())
            .await??
            .len();
    }
    member.commit_offsets(&[("t", 0, 2, ""), ("t", 1, 1, "")]).await?;

    let listing = admin.list_groups().await?;
    assert_eq!(listing.groups.len(), 1);
    assert_eq!((listing.groups[0].group.as_str(), listing.groups[0].members), ("g", 1));
    let description = admin.describe_group("g").await?;
    assert_eq!(description.state, GroupState::Stable);
    assert_eq!(description.members.len(), 1);
    assert_eq!(
        description.members[0].assignment,
        vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)]
    );
    // (partition, committed, high watermark, lag)
    let lags: Vec<_> = description
        .offsets
        .iter()
        .map(|offset| {
            (
                offset.partition,
                offset.committed_offset,
                offset.high_watermark,
                offset.lag,
            )
        })
        .collect();
    assert_eq!(
        lags,
        vec![(0, Some(2), Some(3), Some(1)), (1, Some(1), Some(3), Some(2))]
    );
    assert_eq!(description.total_lag(), 3);
    assert_eq!(description.offsets[0].member_id.as_deref(), Some("member-1"));

    let busy = admin
        .reset_offsets("g", "t", None, SeekTo::Beginning)
        .await
        .expect_err("the group has a member");
    assert!(matches!(busy, Error::GroupNotEmpty(_)), "{busy:?}");
    assert!(matches!(admin.delete_group("g").await, Err(Error::GroupNotEmpty(_))));
    member.close().await?;

    assert_eq!(
        admin.reset_offsets("g", "t", None, SeekTo::Beginning).await?,
        vec![(0, 0), (1, 0)]
    );
    assert_eq!(
        admin.reset_offsets("g", "t", Some(&[1]), SeekTo::Offset(99)).await?,
        vec![(1, 3)],
        "clamped to the high watermark"
    );
    // Partition 0 holds timestamps 1000, 3000, 5000; partition 1: 2000, 4000, 6000.
    assert_eq!(
        admin.reset_offsets("g", "t", None, SeekTo::Timestamp(3_500)).await?,
        vec![(0, 2), (1, 1)]
    );
    assert!(matches!(
        admin.reset_offsets("g", "t", Some(&[2]), SeekTo::End).await,
        Err(Error::PartitionNotFound { partition: 2, .. })
    ));
    let committed = admin.committed_offsets("g").await?;
    let committed: Vec<(u32, Option<u64>)> = committed.iter().map(|c| (c.partition, c.offset)).collect();
    assert_eq!(committed, vec![(0, Some(2)), (1, Some(1))]);
    let description = admin.describe_group("g").await?;
    assert_eq!(description.state, GroupState::Empty);
    assert_eq!(description.total_lag(), 3);

    admin.delete_group("g").await?;
    assert!(matches!(
        admin.describe_group("g").await,
        Err(Error::GroupNotFound { .. })
    ));
    assert!(admin.list_groups().await?.groups.is_empty());
    Ok(())
}
