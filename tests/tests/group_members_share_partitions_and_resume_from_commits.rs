//! Three members of one consumer group share a 12-partition topic on a real broker, and a
//! member that stops hands its partitions over at its commits.
//!
//! Phase 1: N acknowledged records with unique keys exist before the members start; three
//! in-process consumers subscribe (auto-commit off, start at the earliest offset) and each
//! commits with `Consumer::commit` after processing every batch `poll` gave it. Every record
//! must be processed, each member must get partitions, and (checked on the whole run at the
//! end, from every `on_assigned` / `on_revoked` / `on_lost` on one shared clock) no partition is
//! ever owned by two members at once, and every record is processed by its partition's owner.
//! On a healthy broker no member may lose partitions (`on_lost`) or see an error. Processing a
//! batch costs a member 10 ms, so that the members' shares overlap in time.
//!
//! Phase 2: N more records; member `c` processes some of them (committing), then processes one
//! more batch *without* committing and closes. Its partitions move to `a` and `b`, which must
//! start exactly at the committed offsets: nothing below a commit acknowledged before they took
//! a partition is delivered again, and the records processed twice are exactly `c`'s last
//! (uncommitted) batch. At the end the group's committed offsets equal the high watermarks,
//! `Admin::describe_group` shows lag 0 on every partition and the two live members, a commit
//! with `c`'s old member id and epoch (raw gRPC) is fenced (FAILED_PRECONDITION +
//! `weir-fenced`), an unknown group is `Error::GroupNotFound`, and the CLI's `weir group list` /
//! `describe` show the group with lag 0 on every partition (and fail naming an unknown group).
//!
//! `WEIR_TESTS_GROUP_RECORDS` overrides N (default 3,000).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use tonic::Code;
use weir_client::{
    Admin, Client, ConsumerConfig, Error, GroupDescription, GroupState, ProducerConfig, ProducerRecord, SeekTo,
    TopicConfig,
};
use weir_proto::v1 as proto;
use weir_proto::v1::groups_client::GroupsClient;
use weir_tests::groups::{self, Journal, Member, Recorded};
use weir_tests::wait::until;
use weir_tests::BrokerProcess;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 12;
const GROUP: &str = "billing";
const UNKNOWN_GROUP: &str = "no-such-group";
const MEMBERS: [&str; 3] = ["a", "b", "c"];
/// The member that stops in phase 2.
const QUITTER: &str = "c";
const DEFAULT_RECORDS: usize = 3_000;
const SESSION_TIMEOUT_MS: u32 = 3_000;
/// Small fetches and batches, so that a member needs many polls (and commits) for its share
/// and the members really read at the same time.
const FETCH_BYTES_MAX: u32 = 2_048;
const BATCH_BYTES_MAX: usize = 1_024;
/// What processing a batch costs a member: the members' shares of phase 1 then overlap in
/// time instead of the first member to join reading everything before the others get
/// partitions.
const PROCESSING_PER_BATCH: Duration = Duration::from_millis(10);
/// Bound on each wait of the test (processing, commits, a stable group).
const WAIT: Duration = Duration::from_secs(60);

/// An acknowledged record.
#[derive(Debug, Clone)]
struct Acked {
    partition: u32,
    offset: u64,
    key: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_partitions_and_resume_from_commits() -> Result<()> {
    let records = weir_tests::count_from_env("WEIR_TESTS_GROUP_RECORDS", DEFAULT_RECORDS)?;
    ensure!(
        records >= 300,
        "WEIR_TESTS_GROUP_RECORDS must be at least 300 (c must stop mid-way)"
    );
    let test_start = Instant::now();
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path().join("broker"))?;
    let client = broker.client()?;
    let admin = client.admin();
    admin.create_topic(TOPIC, PARTITIONS, 1, TopicConfig::default()).await?;

    // Phase 1: three members read what exists.
    let mut acked = produce(&client, "first", records).await?;
    let journal = Journal::new(TOPIC);
    let mut members = Vec::new();
    for name in MEMBERS {
        let consumer = broker.client()?.consumer(member_config(name));
        members.push(groups::spawn_member(
            name,
            consumer,
            TOPIC,
            journal.clone(),
            PROCESSING_PER_BATCH,
        )?);
    }
    wait_processed(&journal, &acked, "the first records").await?;
    wait_each_member_owns_partitions(&journal).await?;
    let phase1 = journal.snapshot();
    eprintln!(
        "phase 1 done at {:.1?}:\n{}",
        test_start.elapsed(),
        groups::summary(&phase1)
    );

    // Phase 2: c processes part of the new records, one batch of them uncommitted, and closes.
    let quitter_index = MEMBERS.iter().position(|m| *m == QUITTER).context("quitter")?;
    let quitter = members.remove(quitter_index);
    let processed_in_phase1 = quitter.processed();
    quitter.quit_after(processed_in_phase1 + records / 10);
    acked.extend(produce(&client, "second", records).await?);
    let quitter_identity = wait_quitter(quitter, processed_in_phase1).await?;
    wait_processed(&journal, &acked, "every record").await?;

    let high_watermarks = high_watermarks(&admin).await?;
    wait_committed_at(&admin, &high_watermarks).await?;
    check_description(&admin, &members, &high_watermarks).await?;
    check_stale_commit_fenced(&broker, &quitter_identity, high_watermarks[&0]).await?;
    match admin.describe_group(UNKNOWN_GROUP).await {
        Err(Error::GroupNotFound { group }) => ensure!(group == UNKNOWN_GROUP, "GroupNotFound names {group:?}"),
        other => bail!("describe_group({UNKNOWN_GROUP:?}) answered {other:?}, expected GroupNotFound"),
    }
    check_cli(&broker)?;

    for member in members {
        member.stop(WAIT).await?;
    }
    let recorded = journal.snapshot();
    eprintln!("{}", groups::summary(&recorded));
    check_journal(&recorded, &acked)?;
    eprintln!("test {:.1?}", test_start.elapsed());
    Ok(())
}

fn member_config(name: &str) -> ConsumerConfig {
    ConsumerConfig::default()
        .group_id(GROUP)
        .client_id(name)
        .start(SeekTo::Beginning)
        .auto_commit(false)
        .session_timeout_ms(SESSION_TIMEOUT_MS)
        .fetch_bytes_max(FETCH_BYTES_MAX)
        .max_wait_ms(200)
}

/// Produces `count` records with unique keys (`{prefix}-{i}`, value = key), all in flight at
/// once; every one must be acknowledged.
async fn produce(client: &Client, prefix: &str, count: usize) -> Result<Vec<Acked>> {
    let producer = client.producer(ProducerConfig::default().batch_bytes_max(BATCH_BYTES_MAX))?;
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}-{i:05}");
        let record = ProducerRecord::new(TOPIC).with_key(key.clone()).with_value(key.clone());
        pending.push((key, producer.enqueue(record).await?));
    }
    let mut acked = Vec::with_capacity(count);
    for (key, delivery) in pending {
        let metadata = delivery.await.with_context(|| format!("record {key}"))?;
        acked.push(Acked {
            partition: metadata.partition,
            offset: metadata.offset,
            key,
        });
    }
    producer.close().await;
    Ok(acked)
}

/// Acknowledged records no member has processed yet.
fn unprocessed<'a>(recorded: &Recorded, acked: &'a [Acked]) -> Vec<&'a Acked> {
    let seen: BTreeSet<(u32, u64)> = recorded.deliveries.iter().map(|d| (d.partition, d.offset)).collect();
    acked
        .iter()
        .filter(|a| !seen.contains(&(a.partition, a.offset)))
        .collect()
}

async fn wait_processed(journal: &Journal, acked: &[Acked], what: &str) -> Result<()> {
    let waited = until(&format!("{what} to be processed"), WAIT, || async {
        Ok(unprocessed(&journal.snapshot(), acked).is_empty().then_some(()))
    })
    .await;
    if waited.is_err() {
        let recorded = journal.snapshot();
        let missing = unprocessed(&recorded, acked);
        bail!(
            "{} of {} acknowledged records not processed within {WAIT:?}, e.g. {:?}\n{}\nfailures: {:?}",
            missing.len(),
            acked.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            groups::summary(&recorded),
            recorded.failures
        );
    }
    Ok(())
}

/// Every member owns partitions and every partition has an owner.
async fn wait_each_member_owns_partitions(journal: &Journal) -> Result<()> {
    until("each member to own partitions", WAIT, || async {
        let intervals = groups::ownership(&journal.snapshot())?;
        let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
        let mut owned = 0;
        for list in intervals.values() {
            if let Some(open) = list.iter().find(|interval| interval.to.is_none()) {
                *owners.entry(open.member.as_str()).or_default() += 1;
                owned += 1;
            }
        }
        let done = owners.len() == MEMBERS.len() && owned == PARTITIONS as usize;
        Ok(done.then(|| eprintln!("partitions per member: {owners:?}")))
    })
    .await
}

/// Waits for the quitter to close; answers its last member id and epoch.
async fn wait_quitter(quitter: Member, processed_in_phase1: usize) -> Result<(String, i64)> {
    let name = quitter.name.clone();
    let finished = until(&format!("member {name} to quit"), WAIT, || async {
        Ok(quitter.is_finished().then_some(()))
    })
    .await;
    let identity = quitter.identity();
    let processed = quitter.processed() - processed_in_phase1;
    finished?;
    quitter.join(WAIT).await?;
    eprintln!("member {name} closed after processing {processed} records of phase 2");
    identity.with_context(|| format!("member {name} never joined"))
}

async fn high_watermarks(admin: &Admin) -> Result<BTreeMap<u32, u64>> {
    let description = admin.describe_topic(TOPIC).await?;
    Ok(description
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect())
}

async fn committed(admin: &Admin) -> Result<BTreeMap<u32, Option<u64>>> {
    Ok(admin
        .committed_offsets(GROUP)
        .await?
        .into_iter()
        .filter(|c| c.topic == TOPIC)
        .map(|c| (c.partition, c.offset))
        .collect())
}

async fn wait_committed_at(admin: &Admin, high_watermarks: &BTreeMap<u32, u64>) -> Result<()> {
    let expected: BTreeMap<u32, Option<u64>> = high_watermarks.iter().map(|(p, hw)| (*p, Some(*hw))).collect();
    let waited = until("committed offsets at the high watermarks", WAIT, || async {
        Ok((committed(admin).await? == expected).then_some(()))
    })
    .await;
    if waited.is_err() {
        bail!(
            "committed offsets {:?} did not reach the high watermarks {high_watermarks:?}",
            committed(admin).await?
        );
    }
    Ok(())
}

/// describe_group: stable, the live members only, every partition at lag 0 and owned by one
/// of them.
async fn check_description(admin: &Admin, members: &[Member], high_watermarks: &BTreeMap<u32, u64>) -> Result<()> {
    let live: BTreeSet<String> = members
        .iter()
        .map(|m| m.identity().map(|(id, _)| id))
        .collect::<Option<_>>()
        .context("a live member never joined")?;
    let last: Mutex<Option<GroupDescription>> = Mutex::new(None);
    let settled = until("the group to be stable with lag 0", WAIT, || async {
        let description = admin.describe_group(GROUP).await?;
        let ok = description_matches(&description, &live, high_watermarks);
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(description);
        Ok(ok.then_some(()))
    })
    .await;
    let description = last.into_inner().unwrap_or_else(|p| p.into_inner());
    if settled.is_err() {
        bail!("describe_group never showed {live:?} stable with lag 0 on every partition; last: {description:#?}");
    }
    let description = description.context("described")?;
    eprintln!(
        "describe_group: {} ({} members, coordinator {}), total lag {}",
        description.state,
        description.members.len(),
        description.coordinator,
        description.total_lag()
    );
    Ok(())
}

fn description_matches(description: &GroupDescription, live: &BTreeSet<String>, hws: &BTreeMap<u32, u64>) -> bool {
    let members: BTreeSet<String> = description.members.iter().map(|m| m.member_id.clone()).collect();
    let partitions: BTreeMap<u32, _> = description
        .offsets
        .iter()
        .filter(|o| o.topic == TOPIC)
        .map(|o| (o.partition, o))
        .collect();
    description.state == GroupState::Stable
        && members == *live
        && partitions.len() == PARTITIONS as usize
        && partitions.iter().all(|(partition, offset)| {
            offset.lag == Some(0)
                && offset.committed_offset == hws.get(partition).copied()
                && offset.member_id.as_ref().is_some_and(|id| live.contains(id))
        })
}

/// A commit with the closed member's id and last epoch, spoken raw: refused as fenced.
async fn check_stale_commit_fenced(broker: &BrokerProcess, identity: &(String, i64), offset: u64) -> Result<()> {
    let (member_id, member_epoch) = identity.clone();
    let mut groups = GroupsClient::connect(broker.endpoint()).await?;
    let request = proto::CommitOffsetsRequest {
        group: GROUP.into(),
        member_id: member_id.clone(),
        member_epoch,
        offsets: vec![proto::CommitOffset {
            topic: TOPIC.into(),
            partition: 0,
            offset,
            metadata: String::new(),
        }],
    };
    match groups.commit_offsets(request).await {
        Ok(_) => bail!("a commit from closed member {member_id} (epoch {member_epoch}) was accepted"),
        Err(status) => ensure!(
            status.code() == Code::FailedPrecondition && status.metadata().get("weir-fenced").is_some(),
            "a commit from closed member {member_id} (epoch {member_epoch}): {status:?}, expected \
             FAILED_PRECONDITION with weir-fenced"
        ),
    }
    Ok(())
}

/// `weir group list` and `describe` against the broker: the group, its partitions at lag 0; an
/// unknown group fails naming it.
fn check_cli(broker: &BrokerProcess) -> Result<()> {
    let list = broker.weir(&["group", "list"], "")?.ensure_success()?;
    ensure!(
        list.lines()
            .iter()
            .any(|line| line.split_whitespace().next() == Some(GROUP)),
        "group list does not name {GROUP}:\n{list}"
    );
    let describe = broker.weir(&["group", "describe", GROUP], "")?.ensure_success()?;
    let lags = describe_lags(&describe.lines())
        .with_context(|| format!("group describe has no partition table with a LAG column:\n{describe}"))?;
    let expected: BTreeMap<u32, String> = (0..PARTITIONS).map(|p| (p, "0".to_owned())).collect();
    ensure!(
        lags == expected,
        "group describe should list partitions 0..{PARTITIONS} of {TOPIC} with lag 0, found {lags:?}:\n{describe}"
    );
    eprint!(
        "$ weir group list\n{}$ weir group describe {GROUP}\n{}",
        list.stdout, describe.stdout
    );
    let unknown = broker.weir(&["group", "describe", UNKNOWN_GROUP], "")?;
    ensure!(
        !unknown.success() && (unknown.stderr.contains(UNKNOWN_GROUP) || unknown.stdout.contains(UNKNOWN_GROUP)),
        "describing an unknown group must fail naming it:\n{unknown}"
    );
    eprint!(
        "$ weir group describe {UNKNOWN_GROUP}: {}\n{}",
        unknown.status, unknown.stderr
    );
    Ok(())
}

/// The lag cell of each partition row of `weir group describe`'s partition table (a header
/// naming TOPIC, PARTITION and LAG, then one row per partition); `None` without such a table.
fn describe_lags(lines: &[&str]) -> Option<BTreeMap<u32, String>> {
    let header = lines.iter().position(|line| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        ["TOPIC", "PARTITION", "LAG"].iter().all(|name| cells.contains(name))
    })?;
    let columns: Vec<&str> = lines[header].split_whitespace().collect();
    let column = |name: &str| columns.iter().position(|c| *c == name);
    let (topic, partition, lag) = (column("TOPIC")?, column("PARTITION")?, column("LAG")?);
    let mut lags = BTreeMap::new();
    for line in &lines[header + 1..] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.get(topic) != Some(&TOPIC) {
            continue;
        }
        let number = cells.get(partition)?.parse().ok()?;
        lags.insert(number, (*cells.get(lag)?).to_owned());
    }
    Some(lags)
}

/// The checks of the whole run: see the module doc.
fn check_journal(recorded: &Recorded, acked: &[Acked]) -> Result<()> {
    ensure!(
        recorded.failures.is_empty(),
        "members ran into errors: {:#?}",
        recorded.failures
    );
    let lost: Vec<_> = recorded
        .rebalances
        .iter()
        .filter(|r| r.change == groups::Change::Lost)
        .collect();
    ensure!(lost.is_empty(), "members lost partitions on a healthy broker: {lost:?}");
    let intervals = groups::ownership(recorded)?;
    groups::check_exclusive(&intervals)?;
    groups::check_delivered_to_owner(recorded, &intervals)?;
    let takeovers = groups::check_no_delivery_below_commit(recorded, &intervals)?;

    // Every delivery is an acknowledged record, with its key.
    let by_position: BTreeMap<(u32, u64), &str> = acked
        .iter()
        .map(|a| ((a.partition, a.offset), a.key.as_str()))
        .collect();
    let mut times: BTreeMap<(u32, u64), Vec<&groups::Delivery>> = BTreeMap::new();
    for delivery in &recorded.deliveries {
        let expected = by_position.get(&(delivery.partition, delivery.offset));
        ensure!(
            expected.is_some_and(|key| delivery.key.as_deref() == Some(*key) && delivery.value == *key),
            "{} processed {}/{} = {:?}/{:?}, acknowledged there: {expected:?}",
            delivery.member,
            delivery.partition,
            delivery.offset,
            delivery.key,
            delivery.value
        );
        times
            .entry((delivery.partition, delivery.offset))
            .or_default()
            .push(delivery);
    }
    ensure!(unprocessed(recorded, acked).is_empty(), "records not processed");

    // Processed twice: exactly the quitter's last, uncommitted batch, each once more.
    let uncommitted: BTreeSet<(u32, u64)> = recorded
        .deliveries
        .iter()
        .filter(|d| d.left_uncommitted)
        .map(|d| (d.partition, d.offset))
        .collect();
    ensure!(!uncommitted.is_empty(), "{QUITTER} processed no last batch");
    // c stopped mid-way: its successors read records of its last partitions that it never got
    // to (besides the ones it left uncommitted).
    let quitter_close = recorded
        .rebalances
        .iter()
        .rev()
        .find(|r| r.member == QUITTER)
        .context("the quitter's last callback")?;
    ensure!(
        quitter_close.change == groups::Change::Revoked,
        "{QUITTER}'s last callback: {quitter_close:?}"
    );
    let left_over = recorded
        .deliveries
        .iter()
        .filter(|d| d.at > quitter_close.at && quitter_close.partitions.contains(&d.partition))
        .filter(|d| !uncommitted.contains(&(d.partition, d.offset)))
        .count();
    ensure!(
        left_over > 0,
        "{QUITTER} did not stop mid-way: nothing of its partitions {:?} was left for the others",
        quitter_close.partitions
    );
    let twice: BTreeSet<(u32, u64)> = times
        .iter()
        .filter(|(_, deliveries)| deliveries.len() > 1)
        .map(|(position, _)| *position)
        .collect();
    let more: Vec<_> = times.iter().filter(|(_, d)| d.len() > 2).map(|(p, _)| p).collect();
    ensure!(more.is_empty(), "records processed more than twice: {more:?}");
    let unexpected: Vec<_> = twice.difference(&uncommitted).collect();
    ensure!(
        unexpected.is_empty(),
        "records processed twice that {QUITTER} did not leave uncommitted: {unexpected:?}"
    );
    let skipped: Vec<_> = uncommitted.difference(&twice).collect();
    ensure!(
        skipped.is_empty(),
        "records {QUITTER} left uncommitted that its successors did not deliver again (they started past the \
         committed offset): {skipped:?}"
    );
    let quitter_commits = recorded.commits.iter().filter(|c| c.member == QUITTER).fold(
        BTreeMap::new(),
        |mut max: BTreeMap<u32, u64>, commit| {
            for (p, o) in &commit.offsets {
                let entry = max.entry(*p).or_insert(*o);
                *entry = (*entry).max(*o);
            }
            max
        },
    );
    eprintln!(
        "{} records processed twice (all {QUITTER}'s uncommitted last batch, partitions {:?}); {QUITTER}'s last \
         commits: {quitter_commits:?}; {left_over} records of its partitions left for the others; {takeovers} \
         ownership intervals began at a commit",
        twice.len(),
        uncommitted.iter().map(|(p, _)| *p).collect::<BTreeSet<_>>()
    );
    Ok(())
}
