//! `weir consume`: prints records, one per line.
//!
//! Stops after `--count` records; or, without `--count` and `--follow`, once every partition has
//! been read up to the high watermark it had when reading began (records past it are not
//! printed); with `--follow` it keeps tailing.
//!
//! With `--group` it reads as a member of that consumer group (the partitions its coordinator
//! assigns, from the committed offsets) until `--count` records are printed, standard output
//! closes, or Ctrl-C; it commits exactly what it printed (auto-commit on the way, then a final
//! commit) and leaves the group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Write as _};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};
use weir_client::{Client, Consumer, ConsumerConfig, ConsumerRecord, SeekTo};

use crate::args::{ConsumeArgs, Output};
use crate::position::parse_from;
use crate::template::Template;

/// What a consume prints and when it stops.
struct Plan {
    template: Template,
    json: bool,
    count: Option<u64>,
    /// With neither --count nor --follow: each partition's end as of the start.
    ends: Option<HashMap<u32, u64>>,
}

pub async fn run(client: &Client, output: Output, args: ConsumeArgs) -> Result<()> {
    if let Some(group) = args.group.clone() {
        return run_member(client, output, args, &group).await;
    }
    let from = parse_from(args.from.as_deref().context("--from is required without --group")?)?;
    let template = Template::parse(&args.format)?;
    let topic = args.topic.as_str();
    let mut config = ConsumerConfig::default();
    if let Some(node) = args.from_replica {
        config = config.read_from_replica(node);
    }
    let mut consumer = client.consumer(config);
    let partitions = match args.partition {
        Some(partition) => {
            consumer.assign(topic, &[partition]).await?;
            vec![partition]
        }
        None => consumer.assign_all(topic).await?,
    };
    let mut pending = HashSet::new();
    let mut ends = HashMap::new();
    let stop_at_end = args.count.is_none() && !args.follow;
    for &partition in &partitions {
        let position = consumer
            .seek(topic, partition, from)
            .await
            .with_context(|| format!("seeking partition {partition} of {topic:?}"))?;
        if stop_at_end {
            let end = consumer.watermarks(topic, partition).await?.high_watermark;
            ends.insert(partition, end);
            if position < end {
                pending.insert(partition);
            }
        }
    }
    let plan = Plan {
        template,
        json: output == Output::Json,
        count: args.count,
        ends: stop_at_end.then_some(ends),
    };
    if plan.count == Some(0) || (stop_at_end && pending.is_empty()) {
        return Ok(());
    }
    let mut printed = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let records = consumer.poll().await?;
        let done = plan.print(&records, &mut printed, &mut out);
        if !write_stdout(&out)? {
            return Ok(()); // the reader went away (`| head`): nothing left to do
        }
        out.clear();
        if done {
            return Ok(());
        }
        if let Some(ends) = &plan.ends {
            pending.retain(
                |partition| match (consumer.position(topic, *partition), ends.get(partition)) {
                    (Some(position), Some(end)) => position < *end,
                    _ => true,
                },
            );
            if pending.is_empty() {
                return Ok(());
            }
        }
    }
}

/// How long the final commit and leave may take before `weir` gives up on them (the group's
/// session timeout evicts the member anyway).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// `weir consume --group`: see the module doc.
async fn run_member(client: &Client, output: Output, args: ConsumeArgs, group: &str) -> Result<()> {
    let start = match args.from.as_deref() {
        Some(from) => parse_from(from)?,
        None => SeekTo::End,
    };
    let mut config = ConsumerConfig::default()
        .group_id(group)
        .start(start)
        .assignment_strategy(args.strategy.into())
        .client_id("weir-cli");
    if let Some(instance) = &args.instance_id {
        config = config.group_instance_id(instance.as_str());
    }
    if let Some(node) = args.from_replica {
        config = config.read_from_replica(node);
    }
    let mut consumer = client.consumer(config);
    consumer
        .subscribe(&[args.topic.as_str()])
        .with_context(|| format!("joining consumer group {group:?}"))?;
    let plan = Plan {
        template: Template::parse(&args.format)?,
        json: output == Output::Json,
        count: args.count,
        ends: None,
    };
    let printed = if plan.count == Some(0) {
        Ok(())
    } else {
        print_as_member(&mut consumer, &plan).await
    };
    let closed = tokio::select! {
        closed = tokio::time::timeout(CLOSE_TIMEOUT, consumer.close()) => match closed {
            Ok(closed) => closed.with_context(|| format!("committing to consumer group {group:?}")),
            Err(_) => Err(anyhow!("the final commit to consumer group {group:?} did not finish in time")),
        },
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted while committing to consumer group {group:?}")),
    };
    printed.and(closed)
}

/// Prints what the group hands this member until `--count`, a closed standard output, or
/// Ctrl-C. Records returned but not printed are handed back (`unread`), so that the final
/// commit covers only what was printed.
async fn print_as_member(consumer: &mut Consumer, plan: &Plan) -> Result<()> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut printed = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let records = tokio::select! {
            records = consumer.poll() => records?,
            signal = &mut interrupted => {
                signal.context("listening for Ctrl-C")?;
                return Ok(());
            }
        };
        let before = printed;
        let done = plan.print(&records, &mut printed, &mut out);
        if !write_stdout(&out)? {
            return unread(consumer, &records).await; // the reader went away (`| head`)
        }
        out.clear();
        if done {
            let shown = usize::try_from(printed - before)
                .unwrap_or(usize::MAX)
                .min(records.len());
            return unread(consumer, &records[shown..]).await;
        }
    }
}

/// Moves each partition's consumed position back to the first of `records` in it.
async fn unread(consumer: &mut Consumer, records: &[ConsumerRecord]) -> Result<()> {
    for ((topic, partition), offset) in first_offsets(records) {
        consumer
            .seek(&topic, partition, SeekTo::Offset(offset))
            .await
            .with_context(|| format!("moving back to offset {offset} of partition {partition} of {topic:?}"))?;
    }
    Ok(())
}

/// The lowest offset of each partition among `records`.
fn first_offsets(records: &[ConsumerRecord]) -> BTreeMap<(String, u32), u64> {
    let mut first = BTreeMap::new();
    for record in records {
        first
            .entry((record.topic.clone(), record.partition))
            .and_modify(|offset: &mut u64| *offset = (*offset).min(record.offset))
            .or_insert(record.offset);
    }
    first
}

impl Plan {
    /// Renders the records that are to be printed into `out`; returns true once `--count` is
    /// reached.
    fn print(&self, records: &[ConsumerRecord], printed: &mut u64, out: &mut Vec<u8>) -> bool {
        for record in records {
            let past_end = self
                .ends
                .as_ref()
                .is_some_and(|ends| ends.get(&record.partition).is_none_or(|end| record.offset >= *end));
            if past_end {
                continue;
            }
            if self.json {
                out.extend_from_slice(record_json(record).to_string().as_bytes());
            } else {
                self.template.render(record, out);
            }
            out.push(b'\n');
            *printed += 1;
            if self.count.is_some_and(|count| *printed >= count) {
                return true;
            }
        }
        false
    }
}

/// Writes to standard output; false if it is closed.
fn write_stdout(bytes: &[u8]) -> Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error).context("writing to standard output"),
    }
}

fn text(bytes: Option<&[u8]>) -> Value {
    bytes.map_or(Value::Null, |bytes| {
        Value::String(String::from_utf8_lossy(bytes).into_owned())
    })
}

fn record_json(record: &ConsumerRecord) -> Value {
    let headers: serde_json::Map<String, Value> = record
        .headers
        .iter()
        .map(|header| (header.key.clone(), text(header.value.as_deref())))
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": text(record.key.as_deref()),
        "value": text(record.value.as_deref()),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(partition: u32, offset: u64) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition,
            offset,
            timestamp_ms: 5,
            key: None,
            value: Some(Bytes::from(format!("{partition}:{offset}"))),
            headers: Vec::new(),
        }
    }

    #[test]
    fn stops_at_the_count_and_hides_records_past_the_end() {
        let plan = Plan {
            template: Template::parse("{value}").unwrap(),
            json: false,
            count: None,
            ends: Some(HashMap::from([(0, 2)])),
        };
        let mut printed = 0;
        let mut out = Vec::new();
        let records = [record(0, 1), record(0, 2), record(1, 0)];
        assert!(!plan.print(&records, &mut printed, &mut out));
        assert_eq!(String::from_utf8(out).unwrap(), "0:1\n");
        let counted = Plan {
            count: Some(2),
            ends: None,
            ..plan
        };
        let mut out = Vec::new();
        printed = 0;
        assert!(counted.print(&records, &mut printed, &mut out));
        assert_eq!(String::from_utf8(out).unwrap(), "0:1\n0:2\n");
    }

    #[test]
    fn records_not_printed_are_handed_back_per_partition() {
        let records = [record(0, 7), record(1, 3), record(0, 8), record(1, 4)];
        let first = first_offsets(&records[1..]);
        assert_eq!(
            first.into_iter().collect::<Vec<_>>(),
            vec![(("t".to_owned(), 0), 8), (("t".to_owned(), 1), 3)]
        );
        assert!(first_offsets(&[]).is_empty());
    }

    #[test]
    fn json_records_carry_every_field() {
        let value = record_json(&record(3, 9));
        assert_eq!(value["partition"], 3);
        assert_eq!(value["offset"], 9);
        assert_eq!(value["key"], Value::Null);
        assert_eq!(value["value"], "3:9");
    }
}
