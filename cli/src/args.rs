//! The command line, as clap parses it. The spellings here are an interface that scripts rely
//! on: change them only compatibly.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Print records of a topic, one per line.
    Consume(ConsumeArgs),
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
    /// `@` followed by milliseconds since the Unix epoch (`@1714564800000`).
    #[arg(long, value_name = "beginning|end|OFFSET|TIMESTAMP")]
    pub from: String,
    /// Exit after printing N records.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Template for each record: {key} {value} {offset} {partition} {timestamp} {topic};
    /// `\n` and `\t` are newline and tab, `{{` and `}}` are braces. Ignored with --output json.
    #[arg(long, value_name = "FMT", default_value = "{value}")]
    pub format: String,
    /// Keep waiting for new records (without it, and without --count, exit at the end of every
    /// partition as it was when reading began).
    #[arg(long)]
    pub follow: bool,
    /// Read from this node when it holds a replica, even a follower (committed records only,
    /// possibly a little behind the leader); otherwise from the leader.
    #[arg(long, value_name = "NODE_ID")]
    pub from_replica: Option<u64>,
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
}

#[derive(Debug, Args)]
pub struct BenchConsumeArgs {
    #[arg(long)]
    pub topic: String,
    /// Stop after this many records (default: everything up to the end as of the start).
    #[arg(long)]
    pub records: Option<u64>,
}
