//! `weir group list|describe|reset-offsets|delete`.

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};
use weir_client::{Admin, GroupDescription, GroupListing, SeekTo, TopicPartition};

use crate::args::{GroupCommand, Output, ResetOffsetsArgs};
use crate::output::{print_json, Table};
use crate::position::parse_rfc3339_ms;

pub async fn run(admin: &Admin, output: Output, command: GroupCommand) -> Result<()> {
    match command {
        GroupCommand::List => {
            let listing = admin.list_groups().await.context("listing consumer groups")?;
            if !listing.unanswered_nodes.is_empty() {
                eprintln!(
                    "warning: nodes {} did not answer; the groups they coordinate are missing",
                    crate::output::ids(&listing.unanswered_nodes)
                );
            }
            match output {
                Output::Json => print_json(&listing_json(&listing)),
                Output::Table => print!("{}", render_listing(&listing)),
            }
        }
        GroupCommand::Describe { group } => {
            let description = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("describing consumer group {group:?}"))?;
            match output {
                Output::Json => print_json(&description_json(&description)),
                Output::Table => print!("{}", render_description(&description)),
            }
        }
        GroupCommand::ResetOffsets(args) => reset_offsets(admin, output, args).await?,
        GroupCommand::Delete { group } => {
            admin
                .delete_group(&group)
                .await
                .with_context(|| format!("deleting consumer group {group:?}"))?;
            match output {
                Output::Json => print_json(&json!({"deleted": group})),
                Output::Table => println!("deleted consumer group {group}"),
            }
        }
    }
    Ok(())
}

/// What `--to-*` asks for.
pub fn reset_target(args: &ResetOffsetsArgs) -> Result<SeekTo> {
    if args.to_earliest {
        return Ok(SeekTo::Beginning);
    }
    if args.to_latest {
        return Ok(SeekTo::End);
    }
    if let Some(offset) = args.to_offset {
        return Ok(SeekTo::Offset(offset));
    }
    let Some(text) = args.to_timestamp.as_deref().map(str::trim) else {
        return Err(anyhow!(
            "one of --to-earliest, --to-latest, --to-timestamp, --to-offset is required"
        ));
    };
    let millis = text.strip_prefix('@').unwrap_or(text);
    if let Ok(millis) = millis.parse::<i64>() {
        return Ok(SeekTo::Timestamp(millis));
    }
    parse_rfc3339_ms(text).map(SeekTo::Timestamp).ok_or_else(|| {
        anyhow!("--to-timestamp {text:?} is not milliseconds since the epoch or an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
    })
}

async fn reset_offsets(admin: &Admin, output: Output, args: ResetOffsetsArgs) -> Result<()> {
    let to = reset_target(&args)?;
    let group = args.group.as_str();
    let topic = args.topic.as_str();
    // For the report only: a group that never committed has nothing to show.
    let previous = admin.committed_offsets(group).await.unwrap_or_default();
    let offsets = admin
        .reset_offsets(group, topic, args.partitions.as_deref(), to)
        .await
        .with_context(|| format!("resetting the offsets of consumer group {group:?}"))?;
    let previous_of = |partition: u32| {
        previous
            .iter()
            .find(|committed| committed.topic == topic && committed.partition == partition)
            .and_then(|committed| committed.offset)
    };
    match output {
        Output::Json => print_json(&json!({
            "group": group,
            "topic": topic,
            "offsets": offsets.iter().map(|(partition, offset)| json!({
                "partition": partition, "previous": previous_of(*partition), "offset": offset,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let mut table = Table::new(&["TOPIC", "PARTITION", "PREVIOUS_OFFSET", "NEW_OFFSET"]);
            for (partition, offset) in &offsets {
                table.row(vec![
                    topic.to_owned(),
                    partition.to_string(),
                    optional(previous_of(*partition)),
                    offset.to_string(),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// Partitions as `topic/0,1,2`, one entry per topic, separated by spaces; `-` for none.
pub fn partitions_text(partitions: &[TopicPartition]) -> String {
    if partitions.is_empty() {
        return "-".to_owned();
    }
    let mut parts: Vec<(String, Vec<u32>)> = Vec::new();
    for tp in partitions {
        match parts.last_mut() {
            Some((topic, numbers)) if *topic == tp.topic => numbers.push(tp.partition),
            _ => parts.push((tp.topic.clone(), vec![tp.partition])),
        }
    }
    parts
        .iter()
        .map(|(topic, numbers)| {
            let numbers: Vec<String> = numbers.iter().map(u32::to_string).collect();
            format!("{topic}/{}", numbers.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_listing(listing: &GroupListing) -> String {
    let mut table = Table::new(&["GROUP", "STATE", "MEMBERS", "COORDINATOR"]);
    for group in &listing.groups {
        table.row(vec![
            group.group.clone(),
            group.state.to_string(),
            group.members.to_string(),
            group.coordinator.to_string(),
        ]);
    }
    table.render()
}

fn listing_json(listing: &GroupListing) -> Value {
    json!({
        "groups": listing.groups.iter().map(|group| json!({
            "group": group.group,
            "state": group.state.as_str(),
            "members": group.members,
            "coordinator": group.coordinator,
        })).collect::<Vec<_>>(),
        "unanswered_nodes": listing.unanswered_nodes,
    })
}

fn render_description(description: &GroupDescription) -> String {
    let mut out = format!(
        "group: {}\nstate: {}\nstrategy: {}\ncoordinator: {}\ngroup_epoch: {}\n\n",
        description.group, description.state, description.strategy, description.coordinator, description.group_epoch
    );
    let mut members = Table::new(&[
        "MEMBER",
        "INSTANCE",
        "CLIENT",
        "EPOCH",
        "LAST_HEARTBEAT_MS",
        "ASSIGNMENT",
        "REVOKING",
    ]);
    for member in &description.members {
        let heartbeat = if member.away {
            format!("{} (away)", member.last_heartbeat_ms_ago)
        } else {
            member.last_heartbeat_ms_ago.to_string()
        };
        members.row(vec![
            member.member_id.clone(),
            member.instance_id.clone().unwrap_or_else(|| "-".to_owned()),
            member.client_id.clone(),
            member.member_epoch.to_string(),
            heartbeat,
            partitions_text(&member.assignment),
            partitions_text(&member.revoking),
        ]);
    }
    if description.members.is_empty() {
        out.push_str("no members\n");
    } else {
        out.push_str(&members.render());
    }
    out.push('\n');
    let mut offsets = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG", "OWNER"]);
    for offset in &description.offsets {
        offsets.row(vec![
            offset.topic.clone(),
            offset.partition.to_string(),
            optional(offset.committed_offset),
            optional(offset.high_watermark),
            optional(offset.lag),
            offset.member_id.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.push_str(&offsets.render());
    out.push_str(&format!("\ntotal lag: {}\n", description.total_lag()));
    out
}

fn description_json(description: &GroupDescription) -> Value {
    let partitions = |partitions: &[TopicPartition]| -> Vec<Value> {
        partitions
            .iter()
            .map(|tp| json!({"topic": tp.topic, "partition": tp.partition}))
            .collect()
    };
    json!({
        "group": description.group,
        "state": description.state.as_str(),
        "strategy": description.strategy.as_str(),
        "coordinator": description.coordinator,
        "group_epoch": description.group_epoch,
        "members": description.members.iter().map(|member| json!({
            "member_id": member.member_id,
            "instance_id": member.instance_id,
            "client_id": member.client_id,
            "member_epoch": member.member_epoch,
            "topics": member.topics,
            "assignment": partitions(&member.assignment),
            "revoking": partitions(&member.revoking),
            "last_heartbeat_ms_ago": member.last_heartbeat_ms_ago,
            "away": member.away,
        })).collect::<Vec<_>>(),
        "offsets": description.offsets.iter().map(|offset| json!({
            "topic": offset.topic,
            "partition": offset.partition,
            "committed_offset": offset.committed_offset,
            "metadata": offset.metadata,
            "high_watermark": offset.high_watermark,
            "lag": offset.lag,
            "member_id": offset.member_id,
        })).collect::<Vec<_>>(),
        "total_lag": description.total_lag(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_client::{AssignmentStrategy, GroupMember, GroupPartitionOffset, GroupState, GroupSummary};

    fn description() -> GroupDescription {
        GroupDescription {
            group: "billing".into(),
            state: GroupState::Stable,
            group_epoch: 3,
            strategy: AssignmentStrategy::Range,
            coordinator: 2,
            members: vec![GroupMember {
                member_id: "m-1".into(),
                instance_id: Some("host-a".into()),
                client_id: "weir-cli".into(),
                member_epoch: 7,
                topics: vec!["t".into()],
                assignment: vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)],
                revoking: Vec::new(),
                last_heartbeat_ms_ago: 120,
                away: false,
            }],
            offsets: vec![
                GroupPartitionOffset {
                    topic: "t".into(),
                    partition: 0,
                    committed_offset: Some(5),
                    metadata: String::new(),
                    high_watermark: Some(8),
                    lag: Some(3),
                    member_id: Some("m-1".into()),
                },
                GroupPartitionOffset {
                    topic: "t".into(),
                    partition: 1,
                    committed_offset: None,
                    metadata: String::new(),
                    high_watermark: None,
                    lag: None,
                    member_id: None,
                },
            ],
        }
    }

    #[test]
    fn describe_shows_members_and_partition_lag() {
        let text = render_description(&description());
        let expected = "\
group: billing
state: stable
strategy: range
coordinator: 2
group_epoch: 3

MEMBER  INSTANCE  CLIENT    EPOCH  LAST_HEARTBEAT_MS  ASSIGNMENT  REVOKING
m-1     host-a    weir-cli  7      120                t/0,1       -

TOPIC  PARTITION  COMMITTED  HIGH_WATERMARK  LAG  OWNER
t      0          5          8               3    m-1
t      1          -          -               -    -

total lag: 3
";
        assert_eq!(text, expected);
        let value = description_json(&description());
        assert_eq!(value["strategy"], "range");
        assert_eq!(value["members"][0]["assignment"][1]["partition"], 1);
        assert_eq!(value["offsets"][1]["committed_offset"], Value::Null);
        assert_eq!(value["offsets"][0]["lag"], 3);
        assert_eq!(value["total_lag"], 3);
    }

    #[test]
    fn listings_show_every_group() {
        let listing = GroupListing {
            groups: vec![GroupSummary {
                group: "g".into(),
                state: GroupState::Empty,
                members: 0,
                coordinator: 1,
            }],
            unanswered_nodes: vec![3],
        };
        assert_eq!(
            render_listing(&listing),
            "GROUP  STATE  MEMBERS  COORDINATOR\ng      empty  0        1\n"
        );
        let value = listing_json(&listing);
        assert_eq!(value["groups"][0]["state"], "empty");
        assert_eq!(value["unanswered_nodes"][0], 3);
    }

    #[test]
    fn partitions_are_shown_per_topic() {
        let partitions = [
            TopicPartition::new("a", 0),
            TopicPartition::new("a", 2),
            TopicPartition::new("b", 1),
        ];
        assert_eq!(partitions_text(&partitions), "a/0,2 b/1");
        assert_eq!(partitions_text(&[]), "-");
    }

    #[test]
    fn reset_targets_parse() {
        let args = |to_timestamp: Option<&str>, to_offset: Option<u64>| ResetOffsetsArgs {
            group: "g".into(),
            topic: "t".into(),
            partitions: None,
            to_earliest: false,
            to_latest: false,
            to_timestamp: to_timestamp.map(str::to_owned),
            to_offset,
        };
        assert_eq!(reset_target(&args(None, Some(4))).unwrap(), SeekTo::Offset(4));
        assert_eq!(
            reset_target(&args(Some("1000"), None)).unwrap(),
            SeekTo::Timestamp(1000)
        );
        assert_eq!(
            reset_target(&args(Some("@1000"), None)).unwrap(),
            SeekTo::Timestamp(1000)
        );
        assert_eq!(
            reset_target(&args(Some("2024-05-01T12:00:00Z"), None)).unwrap(),
            SeekTo::Timestamp(1_714_564_800_000)
        );
        assert!(reset_target(&args(Some("yesterday"), None)).is_err());
        let mut earliest = args(None, None);
        earliest.to_earliest = true;
        assert_eq!(reset_target(&earliest).unwrap(), SeekTo::Beginning);
    }
}
