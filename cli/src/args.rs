//! The command line, as clap parses it. The spellings here are an interface that scripts rely
//! on: change them only compatibly.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Administer Weir, produce and consume records, run benchmarks"
)]
pub struct Cli {
    /// Brokers to bootstrap from: HOST:PORT[,HOST:PORT...]
    #[arg(long, global = true, env = "WEIR_BOOTSTRAP", default_value = weir_client::config::DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,
    /// Output format: human tables or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Upper bound on one request to a broker, in milliseconds.
    #[arg(long, global = true, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send one record per line of standard input (or a file).
    Produce(ProduceArgs),
    /// Print records of a topic, one per line (alone, or as a member of a consumer group).
    Consume(ConsumeArgs),
    /// List, describe, reset the offsets of, and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Cluster state.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long)]
        partitions: u32,
        #[arg(long)]
        replication_factor: u32,
        /// A topic setting, key=value (repeatable). Keys: retention_ms, retention_bytes,
        /// segment_bytes_max, segment_age_ms_max, batch_bytes_max.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show a topic's settings and partitions.
    Describe { name: String },
    /// Change topic settings.
    Alter {
        name: String,
        /// A topic setting to replace, key=value (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", required = true)]
        configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Acknowledged once committed on a majority of replicas.
    All,
    /// Acknowledged once the leader has it; may be lost if the leader fails.
    Leader,
}

impl From<AcksArg> for weir_client::Acks {
    fn from(acks: AcksArg) -> Self {
        match acks {
            AcksArg::All => weir_client::Acks::All,
            AcksArg::Leader => weir_client::Acks::Leader,
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Read records from this file instead of standard input.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value; a line without SEP has no key.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every record to this partition (default: by key hash, keyless records sticky).
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// How long a batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Where to start in each partition: `beginning`, `end`, an OFFSET (a plain number), or a
    /// TIMESTAMP, either RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`) or
    /// `@` followed by milliseconds since the Unix epoch (`@1714564800000`). With --group:
    /// where partitions without a committed offset start (default: end).
    #[arg(
        long,
        value_name = "beginning|end|OFFSET|TIMESTAMP",
        required_unless_present = "group"
    )]
    pub from: Option<String>,
    /// Exit after printing N records.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Read only this partition (default: all).
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Template for each record: {key} {value} {offset} {partition} {timestamp} {topic};
    /// `\n` and `\t` are newline and tab, `{{` and `}}` are braces. Ignored with --output json.
    #[arg(long, value_name = "FMT", default_value = "{value}")]
    pub format: String,
    /// Keep waiting for new records (without it, and without --count, exit at the end of every
    /// partition as it was when reading began). Implied by --group.
    #[arg(long)]
    pub follow: bool,
    /// Read from this node when it holds a replica, even a follower (committed records only,
    /// possibly a little behind the leader); otherwise from the leader.
    #[arg(long, value_name = "NODE_ID")]
    pub from_replica: Option<u64>,
    /// Consume as a member of this consumer group: read the partitions its coordinator assigns,
    /// from the group's committed offsets, and commit what was printed (every 5 s and on exit).
    /// Runs until --count records are printed or Ctrl-C, then commits and leaves the group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Static membership: a stable id for this member; restarting within the session timeout
    /// gets the same partitions back without a rebalance.
    #[arg(long, value_name = "ID", requires = "group")]
    pub instance_id: Option<String>,
    /// How the group spreads partitions over its members (the group keeps its first member's).
    #[arg(long, value_enum, requires = "group", default_value_t = StrategyArg::Sticky)]
    pub strategy: StrategyArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Keep partitions where they are; move as few as balance needs.
    Sticky,
    /// Per topic, contiguous ranges of partitions over the members.
    Range,
    /// All partitions dealt one by one over the members.
    RoundRobin,
}

impl From<StrategyArg> for weir_client::AssignmentStrategy {
    fn from(strategy: StrategyArg) -> Self {
        match strategy {
            StrategyArg::Sticky => weir_client::AssignmentStrategy::Sticky,
            StrategyArg::Range => weir_client::AssignmentStrategy::Range,
            StrategyArg::RoundRobin => weir_client::AssignmentStrategy::RoundRobin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List the cluster's consumer groups.
    List,
    /// Show a group's members and, per partition, committed offset, high watermark, lag and owner.
    Describe { group: String },
    /// Set a group's committed offsets of a topic; only while the group has no members.
    ResetOffsets(ResetOffsetsArgs),
    /// Delete a group without members, and its committed offsets.
    Delete { group: String },
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("to")
        .required(true)
        .args(["to_earliest", "to_latest", "to_timestamp", "to_offset"])
))]
pub struct ResetOffsetsArgs {
    pub group: String,
    #[arg(long)]
    pub topic: String,
    /// Only these partitions, comma-separated (default: every partition of the topic).
    #[arg(long, value_name = "P,P,...", value_delimiter = ',')]
    pub partitions: Option<Vec<u32>>,
    /// The oldest retained offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// The high watermark: skip everything produced so far.
    #[arg(long)]
    pub to_latest: bool,
    /// The first record at or after this time: milliseconds since the Unix epoch, `@` and
    /// milliseconds, or an RFC 3339 date-time (`2024-05-01T12:00:00Z`).
    #[arg(long, value_name = "MS|RFC3339")]
    pub to_timestamp: Option<String>,
    /// An explicit offset (clamped to the partition's retained range).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show nodes and partitions; exits 0 once a node answers.
    Status {
        /// Keep trying for up to this long before giving up, in milliseconds.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as the cluster takes them; report throughput and ack latency.
    Produce(BenchProduceArgs),
    /// Read a topic from the beginning; report throughput.
    Consume(BenchConsumeArgs),
}

#[derive(Debug, Args)]
pub struct BenchProduceArgs {
    #[arg(long)]
    pub topic: String,
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Size of each record's value, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Spread records round-robin over every partition of the topic (default: partition 0).
    #[arg(long)]
    pub partitions_from_topic: bool,
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 1024 * 1024)]
    pub batch_bytes_max: usize,
    /// Bytes of records the producer holds unacknowledged; a smaller buffer trades throughput
    /// for latency that is not dominated by queueing.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub buffer_bytes_max: usize,
    /// Produce without idempotence (no producer id or sequences; for comparison).
    #[arg(long)]
    pub no_idempotence: bool,
}

#[derive(Debug, Args)]
pub struct BenchConsumeArgs {
    #[arg(long)]
    pub topic: String,
    /// Stop after this many records (default: everything up to the end as of the start).
    #[arg(long)]
    pub records: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weir").chain(args.iter().copied()))
    }

    #[test]
    fn consume_needs_from_unless_it_joins_a_group() {
        assert!(parse(&["consume", "t"]).is_err());
        let Command::Consume(args) = parse(&["consume", "t", "--group", "g", "--count", "3"])
            .unwrap()
            .command
        else {
            panic!("consume")
        };
        assert_eq!(
            (args.group.as_deref(), args.from, args.count),
            (Some("g"), None, Some(3))
        );
        assert_eq!(args.strategy, StrategyArg::Sticky);
        let Command::Consume(args) = parse(&[
            "consume",
            "t",
            "--group",
            "g",
            "--instance-id",
            "i1",
            "--strategy",
            "round-robin",
            "--from",
            "beginning",
        ])
        .unwrap()
        .command
        else {
            panic!("consume")
        };
        assert_eq!(args.instance_id.as_deref(), Some("i1"));
        assert_eq!(args.strategy, StrategyArg::RoundRobin);
        assert_eq!(args.from.as_deref(), Some("beginning"));
        assert!(
            parse(&["consume", "t", "--from", "end", "--instance-id", "i"]).is_err(),
            "needs --group"
        );
        assert!(
            parse(&["consume", "t", "--group", "g", "--partition", "0"]).is_err(),
            "a group assigns"
        );
        assert!(parse(&["consume", "t", "--group", "g", "--strategy", "random"]).is_err());
    }

    #[test]
    fn group_commands_parse() {
        assert!(matches!(
            parse(&["group", "list"]).unwrap().command,
            Command::Group(GroupCommand::List)
        ));
        let Command::Group(GroupCommand::Describe { group }) = parse(&["group", "describe", "g"]).unwrap().command
        else {
            panic!("describe")
        };
        assert_eq!(group, "g");
        assert!(parse(&["group", "describe"]).is_err());
        assert!(matches!(
            parse(&["group", "delete", "g"]).unwrap().command,
            Command::Group(GroupCommand::Delete { .. })
        ));
    }

    #[test]
    fn reset_offsets_takes_exactly_one_target() {
        let Command::Group(GroupCommand::ResetOffsets(args)) = parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--partitions",
            "0,2",
            "--to-offset",
            "42",
        ])
        .unwrap()
        .command
        else {
            panic!("reset-offsets")
        };
        assert_eq!(args.partitions, Some(vec![0, 2]));
        assert_eq!(args.to_offset, Some(42));
        assert!(!args.to_earliest && !args.to_latest && args.to_timestamp.is_none());
        let base = ["group", "reset-offsets", "g", "--topic", "t"];
        assert!(parse(&base).is_err(), "a target is required");
        let both = [&base[..], &["--to-earliest", "--to-latest"]].concat();
        assert!(parse(&both).is_err(), "one target only");
        let no_topic = ["group", "reset-offsets", "g", "--to-latest"];
        assert!(parse(&no_topic).is_err());
        let time = [&base[..], &["--to-timestamp", "2024-05-01T12:00:00Z"]].concat();
        assert!(parse(&time).is_ok());
        let bad = [&base[..], &["--partitions", "0,x", "--to-latest"]].concat();
        assert!(parse(&bad).is_err());
    }
}
