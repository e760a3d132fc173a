//! Two members of a group split a topic's partitions; the one that gives partitions up commits
//! them, reports them released, and only then does the other get them, so every record is read
//! once. When a member closes, the other takes over from the committed offsets. The group's
//! coordinator starts on another node than metadata says, and `__consumer_offsets` does not
//! exist before the first group request.

mod fake;
mod member;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake::groups::Event;
use member::{wait_for, Recorder};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use weir_client::{Client, ClientConfig, Consumer, ConsumerConfig, ProducerConfig, ProducerRecord, SeekTo};

type Read = (String, u32, u64, String);

/// Polls in the background, sending what it reads, until told to stop; then hands the
/// consumer back.
fn spawn_reader(
    mut consumer: Consumer,
    name: &str,
    sink: mpsc::UnboundedSender<Read>,
) -> (oneshot::Sender<()>, JoinHandle<Consumer>) {
    let (stop, mut stopped) = oneshot::channel();
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                records = consumer.poll() => {
                    for record in records.expect("poll") {
                        let _ = sink.send((name.clone(), record.partition, record.offset, record.topic));
                    }
                }
                _ = &mut stopped => return consumer,
            }
        }
    });
    (stop, task)
}

async fn produce(client: &Client, per_partition: u64) -> anyhow::Result<()> {
    let producer = client.producer(ProducerConfig::default().linger_ms(0))?;
    for index in 0..per_partition * 4 {
        let partition = (index % 4) as u32;
        producer
            .send(
                ProducerRecord::new("t")
                    .with_partition(partition)
                    .with_value(format!("{index}")),
            )
            .await?;
    }
    Ok(())
}

/// Receives `count` reads, failing after a while.
async fn receive(reads: &mut mpsc::UnboundedReceiver<Read>, count: usize) -> Vec<Read> {
    let mut got = Vec::new();
    while got.len() < count {
        let read = tokio::time::timeout(Duration::from_secs(15), reads.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records read: {got:?}", got.len()))
            .expect("readers run");
        got.push(read);
    }
    got
}

fn member_config() -> ConsumerConfig {
    ConsumerConfig::default()
        .group_id("g")
        .start(SeekTo::Beginning)
        .max_wait_ms(100)
        .heartbeat_max_wait_ms(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_partitions_and_hand_them_over() -> anyhow::Result<()> {
    let (store, addresses) = fake::start(2).await;
    store.create_topic("t", 4);
    // Metadata says node 1 leads everything; node 2 does (and so coordinates every group).
    store.leader.store(2, Ordering::SeqCst);
    let client = Client::new(ClientConfig::new(&addresses[0])?)?;
    produce(&client, 5).await?;

    let (sink, mut reads) = mpsc::unbounded_channel();
    let first_listener = Recorder::default();
    let mut first = client.consumer(member_config());
    first.set_rebalance_listener(first_listener.clone());
    first.subscribe(&["t"])?;
    let (stop_first, first_task) = spawn_reader(first, "first", sink.clone());
    let mut read = receive(&mut reads, 20).await;
    assert!(read.iter().all(|(name, ..)| name == "first"));
    assert_eq!(first_listener.seen(), vec!["assigned t/0,t/1,t/2,t/3"]);

    let second_listener = Recorder::default();
    let mut second = client.consumer(member_config());
    second.set_rebalance_listener(second_listener.clone());
    second.subscribe(&["t"])?;
    let (stop_second, second_task) = spawn_reader(second, "second", sink.clone());
    // Round-robin over member-1 and member-2: the second member gets partitions 1 and 3.
    let reported =
        |event: &Event| matches!(event, Event::Owned { member, owned } if member == "member-2" && !owned.is_empty());
    wait_for(|| store.coordinator.events().iter().any(reported))
        .await
        .unwrap_or_else(|()| {
            panic!(
                "the second member reports its partitions: {:#?} {:?} {:?}",
                store.coordinator.events(),
                first_listener.seen(),
                second_listener.seen()
            )
        });
    assert_eq!(first_listener.seen()[1..], ["revoked t/1,t/3".to_owned()]);
    assert_eq!(second_listener.seen(), vec!["assigned t/1,t/3"]);

    // The first member committed what it read of partitions 1 and 3 and reported them released
    // before the second member was handed them.
    let events = store.coordinator.events();
    let commit = events
        .iter()
        .position(|event| {
            matches!(event, Event::Commit { member, offsets, .. }
                if member == "member-1" && offsets.iter().any(|((_, p), offset)| *p == 1 && *offset == 5))
        })
        .expect("the revoked partitions were committed");
    let released = events
        .iter()
        .position(|event| {
            matches!(event, Event::Owned { member, owned }
                if member == "member-1" && owned.len() == 2 && owned.iter().all(|(_, p)| p % 2 == 0))
        })
        .expect("the release was reported");
    let taken = events
        .iter()
        .position(reported)
        .expect("the second member reported owning its partitions");
    assert!(commit < released && released < taken, "{events:#?}");

    produce(&client, 5).await?;
    read.extend(receive(&mut reads, 20).await);
    let _ = stop_first.send(());
    let first = first_task.await?;
    first.close().await?;
    assert!(
        store.coordinator.events().iter().any(|event| *event
            == Event::Leave {
                member: "member-1".into(),
                epoch: -1
            }),
        "close leaves the group"
    );
    produce(&client, 5).await?;
    read.extend(receive(&mut reads, 20).await);
    assert_eq!(
        second_listener.seen(),
        vec!["assigned t/1,t/3", "assigned t/0,t/2"],
        "the survivor takes the partitions over"
    );

    // Every record was read exactly once, in order per partition.
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (_, partition, offset, topic) in &read {
        assert_eq!(topic, "t");
        per_partition.entry(*partition).or_default().push(*offset);
    }
    for (partition, offsets) in per_partition {
        assert_eq!(offsets, (0..15).collect::<Vec<u64>>(), "partition {partition}");
    }
    let _ = stop_second.send(());
    let second = second_task.await?;
    second.close().await?;
    assert!(store.coordinator.members("g").is_empty());
    assert_eq!(store.coordinator.committed("g", "t", 0), Some(15));
    Ok(())
}
