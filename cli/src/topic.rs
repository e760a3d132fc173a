//! `weir topic create|list|describe|alter|delete`.

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use weir_client::{Admin, TopicConfig, TopicDescription};

use crate::args::{Output, TopicCommand};
use crate::output::{ids, leader, print_json, Table};

pub async fn run(admin: &Admin, output: Output, command: TopicCommand) -> Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let config = parse_configs(&configs)?;
            let topic = admin
                .create_topic(&name, partitions, replication_factor, config)
                .await
                .with_context(|| format!("creating topic {name:?}"))?;
            match output {
                Output::Json => print_json(&topic_json(&topic)),
                Output::Table => {
                    println!("created topic {name} ({partitions} partitions, replication factor {replication_factor})")
                }
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await.context("listing topics")?;
            match output {
                Output::Json => print_json(&Value::Array(
                    topics
                        .iter()
                        .map(|topic| {
                            json!({"name": topic.name, "partitions": topic.partitions,
                                "replication_factor": topic.replication_factor})
                        })
                        .collect(),
                )),
                Output::Table => {
                    let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICATION_FACTOR"]);
                    for topic in &topics {
                        table.row(vec![
                            topic.name.clone(),
                            topic.partitions.to_string(),
                            topic.replication_factor.to_string(),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin
                .describe_topic(&name)
                .await
                .with_context(|| format!("describing topic {name:?}"))?;
            show_topic(output, &topic);
        }
        TopicCommand::Alter { name, configs } => {
            let config = parse_configs(&configs)?;
            let topic = admin
                .alter_topic_config(&name, config)
                .await
                .with_context(|| format!("altering topic {name:?}"))?;
            show_topic(output, &topic);
        }
        TopicCommand::Delete { name } => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("deleting topic {name:?}"))?;
            match output {
                Output::Json => print_json(&json!({"deleted": name})),
                Output::Table => println!("deleted topic {name}"),
            }
        }
    }
    Ok(())
}

/// Parses `key=value` settings.
pub fn parse_configs(configs: &[String]) -> Result<TopicConfig> {
    let mut config = TopicConfig::default();
    for entry in configs {
        let Some((key, value)) = entry.split_once('=') else {
            bail!("--config {entry:?} is not key=value");
        };
        config.set(key.trim(), value).map_err(anyhow::Error::msg)?;
    }
    Ok(config)
}

fn show_topic(output: Output, topic: &TopicDescription) {
    if output == Output::Json {
        print_json(&topic_json(topic));
        return;
    }
    println!("topic: {}", topic.name);
    println!("replication_factor: {}", topic.replication_factor);
    for (key, value) in topic.config.entries() {
        println!("{key}: {value}");
    }
    println!();
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "LOG_START_OFFSET",
        "HIGH_WATERMARK",
        "SIZE_BYTES",
        "SEGMENTS",
    ]);
    for partition in &topic.partitions {
        table.row(vec![
            partition.partition.to_string(),
            leader(partition.leader),
            ids(&partition.replicas),
            partition.log_start_offset.to_string(),
            partition.high_watermark.to_string(),
            partition.size_bytes.to_string(),
            partition.segments.to_string(),
        ]);
    }
    print!("{}", table.render());
}

fn topic_json(topic: &TopicDescription) -> Value {
    let config: serde_json::Map<String, Value> = topic
        .config
        .entries()
        .into_iter()
        .map(|(key, value)| {
            let number = value.parse::<i64>().map(Value::from).unwrap_or(Value::String(value));
            (key.to_owned(), number)
        })
        .collect();
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|partition| {
            json!({
                "partition": partition.partition,
                "leader": partition.leader,
                "replicas": partition.replicas,
                "log_start_offset": partition.log_start_offset,
                "high_watermark": partition.high_watermark,
                "size_bytes": partition.size_bytes,
                "segments": partition.segments,
            })
        })
        .collect();
    json!({
        "name": topic.name,
        "replication_factor": topic.replication_factor,
        "config": config,
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_as_key_value() {
        let config = parse_configs(&["retention_ms=1000".into(), "segment_bytes_max = 4096".into()]).unwrap();
        assert_eq!(config.retention_ms, Some(1000));
        assert_eq!(config.segment_bytes_max, Some(4096));
        assert!(parse_configs(&["retention_ms".into()]).is_err());
        assert!(parse_configs(&["colour=blue".into()]).is_err());
    }
}
