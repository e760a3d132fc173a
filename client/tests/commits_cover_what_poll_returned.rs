//! A commit covers what `poll`/`stream` handed out, not what was fetched; it carries the
//! member's id and epoch; committed offsets never move backwards; a consumer outside group
//! management commits as member "" with epoch -1, and only while the group has no members;
//! `close` auto-commits before it leaves.

mod fake;

use std::time::Duration;

use fake::groups::Event;
use futures::StreamExt;
use weir_client::{Client, ClientConfig, ConsumerConfig, Error, ProducerConfig, ProducerRecord, SeekTo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_cover_what_poll_returned() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(1).await;
    store.create_topic("t", 1);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    for index in 0..10 {
        producer
            .send(ProducerRecord::new("t").with_value(format!("{index}")))
            .await?;
    }
    let config = ConsumerConfig::default()
        .group_id("g")
        .start(SeekTo::Beginning)
        .max_wait_ms(100)
        .heartbeat_max_wait_ms(200);

    let mut member = client.consumer(config.clone().auto_commit(false));
    member.subscribe(&["t"])?;
    {
        // One fetch buffers all ten records; three are handed out.
        let mut records = member.stream().take(3);
        while let Some(record) = tokio::time::timeout(Duration::from_secs(10), records.next()).await? {
            record?;
        }
    }
    member.commit().await?;
    assert_eq!(member.committed("t", 0).await?, Some(3));
    let epoch = member.member_epoch().expect("a member");
    let events = store.coordinator.events();
    assert!(
        events.contains(&Event::Commit {
            member: "member-1".into(),
            epoch,
            offsets: vec![(("t".into(), 0), 3)]
        }),
        "{events:#?}"
    );
    let backwards = member.commit_offsets(&[("t", 0, 1, "")]).await.expect_err("backwards");
    assert!(matches!(backwards, Error::InvalidArgument(_)), "{backwards:?}");
    member.commit_offsets(&[("t", 0, 5, "processed up to 4")]).await?;
    assert_eq!(member.committed("t", 0).await?, Some(5));

    // Outside group management: refused while the group has a member.
    let mut outsider = client.consumer(config.clone());
    outsider.assign("t", &[0]).await?;
    outsider.seek("t", 0, SeekTo::Offset(6)).await?;
    let refused = outsider.commit().await.expect_err("the group has a member");
    assert!(matches!(refused, Error::GroupNotEmpty(_)), "{refused:?}");
    let mixed = outsider
        .subscribe(&["t"])
        .expect_err("assign and subscribe exclude each other");
    assert!(matches!(mixed, Error::InvalidArgument(_)), "{mixed:?}");
    let mixed = member
        .assign("t", &[0])
        .await
        .expect_err("assign and subscribe exclude each other");
    assert!(matches!(mixed, Error::InvalidArgument(_)), "{mixed:?}");

    member.close().await?; // auto-commit off: leaves without committing
    outsider.commit().await?;
    assert!(store.coordinator.events().contains(&Event::Commit {
        member: String::new(),
        epoch: -1,
        offsets: vec![(("t".into(), 0), 6)]
    }));

    // With auto-commit, close commits what was handed out, then leaves.
    let mut closing = client.consumer(config.clone());
    closing.subscribe(&["t"])?;
    {
        let mut records = closing.stream().take(2);
        let mut offsets = Vec::new();
        while let Some(record) = tokio::time::timeout(Duration::from_secs(10), records.next()).await? {
            offsets.push(record?.offset);
        }
        assert_eq!(offsets, vec![6, 7], "from the committed offset");
    }
    closing.close().await?;
    let events = store.coordinator.events();
    let commit = events.iter().position(|event| {
        matches!(event, Event::Commit { member, offsets, .. }
            if member == "member-2" && *offsets == vec![(("t".to_owned(), 0), 8)])
    });
    let leave = events.iter().position(|event| {
        *event
            == Event::Leave {
                member: "member-2".into(),
                epoch: -1,
            }
    });
    assert!(commit.is_some() && commit < leave, "{events:#?}");
    assert_eq!(store.coordinator.committed("g", "t", 0), Some(8));

    let no_group = client.consumer(ConsumerConfig::default());
    assert!(matches!(no_group.committed("t", 0).await, Err(Error::Config(_))));
    Ok(())
}
