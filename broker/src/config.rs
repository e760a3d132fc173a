//! Broker configuration: defaults, overridden by a TOML file, overridden by `WEIR_*` environment
//! variables, overridden by flags. Every limit is named with its unit last and validated at
//! start with a message that says which setting is wrong and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::group::GroupConfig;
use crate::log::LogConfig;
use crate::raft::RaftConfig;
use crate::server::Limits;
use crate::types::NodeId;

/// Settings that flags and environment variables can set (clap fills it in main).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub node_id: Option<u64>,
    pub peers: Option<String>,
    pub http_listen: Option<String>,
}

/// The TOML file. Unknown keys are errors, so a typo does not silently keep a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    node_id: Option<u64>,
    /// `1=host:port,2=host:port,...`: every node of the cluster, this one included.
    peers: Option<String>,
    /// HOST:PORT of the HTTP endpoint (metrics, health); "" or "off" turns it off.
    http_listen: Option<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    raft: FileRaft,
    #[serde(default)]
    groups: FileGroups,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGroups {
    /// Partitions of `__consumer_offsets` (used when the topic is first created).
    offsets_topic_partitions: Option<u32>,
    offsets_topic_replication_factor: Option<u32>,
    heartbeat_interval_ms: Option<u64>,
    session_timeout_ms_default: Option<u64>,
    session_timeout_ms_min: Option<u64>,
    session_timeout_ms_max: Option<u64>,
    rebalance_timeout_ms_default: Option<u64>,
    /// Segment size of `__consumer_offsets` (when it is created); it is compacted in segments.
    offsets_topic_segment_bytes: Option<u64>,
    /// Records written to a `__consumer_offsets` partition before the coordinator checkpoints
    /// it (and the segments below the checkpoint are deleted).
    checkpoint_records: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    request_bytes_max: Option<usize>,
    batch_bytes_max: Option<u32>,
    fetch_bytes_max: Option<usize>,
    fetch_wait_ms_max: Option<u64>,
    produce_timeout_ms: Option<u64>,
    connections_max: Option<usize>,
    streams_per_connection_max: Option<u32>,
    partitions_per_topic_max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    segment_bytes_max: Option<u64>,
    /// Disk blocks of the active segment are allocated in steps of this many bytes.
    segment_allocation_step_bytes: Option<u64>,
    segment_age_ms_max: Option<u64>,
    index_interval_bytes: Option<u32>,
    /// Negative: keep forever.
    retention_ms: Option<i64>,
    /// Negative: no size limit.
    retention_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaft {
    threads: Option<usize>,
    tick_ms: Option<u64>,
    election_ticks: Option<usize>,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks.
    election_ticks_max: Option<usize>,
    heartbeat_ticks: Option<usize>,
    mailbox_messages_max: Option<usize>,
    /// Bytes of sealed segments re-checked per second by the scrub; 0 turns it off.
    scrub_bytes_per_sec: Option<u64>,
    /// Milliseconds between passes that hand leadership back to preferred replicas.
    leader_balance_interval_ms: Option<u64>,
}

/// Everything the broker runs with, validated.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    /// The address clients are told to use for this node; defaults to the bound address.
    pub advertise: Option<String>,
    pub node_id: NodeId,
    /// Every node's address (clients and peers use it), this one included; empty for a
    /// one-node cluster, which advertises its listen address.
    pub peers: BTreeMap<NodeId, String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere (off).
    pub http_listen: Option<String>,
    pub limits: Limits,
    pub batch_bytes_max: u32,
    pub log: LogConfig,
    pub raft: RaftConfig,
    pub groups: GroupConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

fn retention(value: Option<i64>) -> Option<u64> {
    value.filter(|v| *v >= 0).map(|v| v as u64)
}

impl BrokerConfig {
    pub fn load(overrides: Overrides) -> Result<Self, ConfigError> {
        let file = match &overrides.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let limit_defaults = Limits::default();
        let log_defaults = LogConfig::default();
        let raft_defaults = RaftConfig::default();
        let l = &file.limits;
        let node_id = NodeId(overrides.node_id.or(file.node_id).unwrap_or(1));
        let peers = match overrides.peers.or(file.peers) {
            Some(list) => parse_peers(&list)?,
            None => BTreeMap::new(),
        };
        let config = BrokerConfig {
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("weir-data")),
            listen: overrides
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:9292".into()),
            advertise: overrides.advertise.or(file.advertise),
            node_id,
            peers,
            http_listen: http_listen(overrides.http_listen.or(file.http_listen))?,
            limits: Limits {
                request_bytes_max: l.request_bytes_max.unwrap_or(limit_defaults.request_bytes_max),
                fetch_bytes_max: l.fetch_bytes_max.unwrap_or(limit_defaults.fetch_bytes_max),
                fetch_wait_ms_max: l.fetch_wait_ms_max.unwrap_or(limit_defaults.fetch_wait_ms_max),
                produce_timeout: l
                    .produce_timeout_ms
                    .map_or(limit_defaults.produce_timeout, Duration::from_millis),
                connections_max: l.connections_max.unwrap_or(limit_defaults.connections_max),
                streams_per_connection_max: l
                    .streams_per_connection_max
                    .unwrap_or(limit_defaults.streams_per_connection_max),
                stream_buffer_responses: limit_defaults.stream_buffer_responses,
                partitions_per_topic_max: l
                    .partitions_per_topic_max
                    .unwrap_or(limit_defaults.partitions_per_topic_max),
            },
            batch_bytes_max: l.batch_bytes_max.unwrap_or(16 << 20),
            log: LogConfig {
                segment_bytes_max: file.log.segment_bytes_max.unwrap_or(log_defaults.segment_bytes_max),
                segment_allocation_step_bytes: file
                    .log
                    .segment_allocation_step_bytes
                    .unwrap_or(log_defaults.segment_allocation_step_bytes),
                segment_age_ms_max: file.log.segment_age_ms_max.unwrap_or(log_defaults.segment_age_ms_max),
                index_interval_bytes: file
                    .log
                    .index_interval_bytes
                    .unwrap_or(log_defaults.index_interval_bytes),
                retention_ms: file
                    .log
                    .retention_ms
                    .map_or(log_defaults.retention_ms, |v| retention(Some(v))),
                retention_bytes: file
                    .log
                    .retention_bytes
                    .map_or(log_defaults.retention_bytes, |v| retention(Some(v))),
            },
            raft: RaftConfig {
                threads: file.raft.threads.unwrap_or(raft_defaults.threads),
                tick_interval: file
                    .raft
                    .tick_ms
                    .map_or(raft_defaults.tick_interval, Duration::from_millis),
                election_ticks: file.raft.election_ticks.unwrap_or(raft_defaults.election_ticks),
                // A file that sets election_ticks alone gets raft-rs's range for it (up to 2x).
                election_ticks_max: file.raft.election_ticks_max.or(if file.raft.election_ticks.is_some() {
                    None
                } else {
                    raft_defaults.election_ticks_max
                }),
                heartbeat_ticks: file.raft.heartbeat_ticks.unwrap_or(raft_defaults.heartbeat_ticks),
                mailbox_messages_max: file
                    .raft
                    .mailbox_messages_max
                    .unwrap_or(raft_defaults.mailbox_messages_max),
                scrub_bytes_per_sec: file
                    .raft
                    .scrub_bytes_per_sec
                    .unwrap_or(raft_defaults.scrub_bytes_per_sec),
                leader_balance_interval: file
                    .raft
                    .leader_balance_interval_ms
                    .map_or(raft_defaults.leader_balance_interval, Duration::from_millis),
                ..raft_defaults
            },
            groups: {
                let g = &file.groups;
                let defaults = GroupConfig::default();
                let ms = |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
                GroupConfig {
                    offsets_topic_partitions: g.offsets_topic_partitions.unwrap_or(defaults.offsets_topic_partitions),
                    offsets_topic_replication_factor: g
                        .offsets_topic_replication_factor
                        .unwrap_or(defaults.offsets_topic_replication_factor),
                    heartbeat_interval: ms(g.heartbeat_interval_ms, defaults.heartbeat_interval),
                    session_timeout_default: ms(g.session_timeout_ms_default, defaults.session_timeout_default),
                    session_timeout_min: ms(g.session_timeout_ms_min, defaults.session_timeout_min),
                    session_timeout_max: ms(g.session_timeout_ms_max, defaults.session_timeout_max),
                    rebalance_timeout_default: ms(g.rebalance_timeout_ms_default, defaults.rebalance_timeout_default),
                    offsets_topic_segment_bytes: g
                        .offsets_topic_segment_bytes
                        .unwrap_or(defaults.offsets_topic_segment_bytes),
                    checkpoint_records: g.checkpoint_records.unwrap_or(defaults.checkpoint_records),
                    ..defaults
                }
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.0 == 0 {
            return Err(invalid("node_id", "must be at least 1"));
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return Err(invalid(
                "peers",
                format!(
                    "must include this node ({}), with the address peers reach it at",
                    self.node_id
                ),
            ));
        }
        let l = &self.limits;
        if !(1024..=64 << 20).contains(&self.batch_bytes_max) {
            return Err(invalid(
                "limits.batch_bytes_max",
                "must be between 1024 and 67108864 (64 MiB)",
            ));
        }
        if l.request_bytes_max < self.batch_bytes_max as usize + 4096 {
            return Err(invalid(
                "limits.request_bytes_max",
                format!(
                    "must exceed batch_bytes_max ({}) by at least 4096",
                    self.batch_bytes_max
                ),
            ));
        }
        if u64::from(self.batch_bytes_max) * 2 > self.log.segment_bytes_max {
            return Err(invalid(
                "log.segment_bytes_max",
                format!(
                    "must be at least twice limits.batch_bytes_max ({})",
                    self.batch_bytes_max
                ),
            ));
        }
        if !(64 << 10..=1 << 34).contains(&self.log.segment_bytes_max) {
            return Err(invalid(
                "log.segment_bytes_max",
                "must be between 65536 and 17179869184 (16 GiB)",
            ));
        }
        // Larger than the segment is fine: the log allocates at most the segment.
        if self.log.segment_allocation_step_bytes < 64 << 10 {
            return Err(invalid(
                "log.segment_allocation_step_bytes",
                "must be at least 65536 (64 KiB)",
            ));
        }
        if self.log.index_interval_bytes < 64 {
            return Err(invalid("log.index_interval_bytes", "must be at least 64"));
        }
        if l.connections_max == 0 || l.streams_per_connection_max == 0 || l.fetch_bytes_max < 1024 {
            return Err(invalid(
                "limits",
                "connections_max and streams_per_connection_max must be positive, fetch_bytes_max at least 1024",
            ));
        }
        let r = &self.raft;
        if r.threads == 0 || r.threads > 64 {
            return Err(invalid("raft.threads", "must be between 1 and 64"));
        }
        if r.tick_interval < Duration::from_millis(10)
            || r.heartbeat_ticks == 0
            || r.election_ticks <= r.heartbeat_ticks
        {
            return Err(invalid(
                "raft",
                "tick_ms must be at least 10, heartbeat_ticks positive, election_ticks above heartbeat_ticks",
            ));
        }
        if r.mailbox_messages_max < 16 {
            return Err(invalid("raft.mailbox_messages_max", "must be at least 16"));
        }
        if r.election_ticks_max.is_some_and(|max| max <= r.election_ticks) {
            return Err(invalid("raft.election_ticks_max", "must be above election_ticks"));
        }
        if r.leader_balance_interval < Duration::from_millis(100) {
            return Err(invalid("raft.leader_balance_interval_ms", "must be at least 100"));
        }
        let g = &self.groups;
        if !(1..=1000).contains(&g.offsets_topic_partitions) {
            return Err(invalid("groups.offsets_topic_partitions", "must be between 1 and 1000"));
        }
        if g.offsets_topic_replication_factor == 0 {
            return Err(invalid("groups.offsets_topic_replication_factor", "must be at least 1"));
        }
        if !(256 << 10..=1 << 30).contains(&g.offsets_topic_segment_bytes) {
            return Err(invalid(
                "groups.offsets_topic_segment_bytes",
                "must be between 262144 (256 KiB) and 1073741824 (1 GiB)",
            ));
        }
        if g.checkpoint_records == 0 {
            return Err(invalid("groups.checkpoint_records", "must be at least 1"));
        }
        if g.heartbeat_interval < Duration::from_millis(10) {
            return Err(invalid("groups.heartbeat_interval_ms", "must be at least 10"));
        }
        if g.session_timeout_min < Duration::from_millis(100)
            || g.session_timeout_min > g.session_timeout_max
            || !(g.session_timeout_min..=g.session_timeout_max).contains(&g.session_timeout_default)
        {
            return Err(invalid(
                "groups.session_timeout_ms_*",
                "need 100 <= session_timeout_ms_min <= session_timeout_ms_default <= session_timeout_ms_max",
            ));
        }
        Ok(())
    }
}

/// Default of `http_listen`: next to the default gRPC port, on loopback only.
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:9393";

/// `http_listen`: unset gives the default, "" or "off" turns the endpoint off, anything else
/// must look like HOST:PORT (whether it can be bound is found out at start).
fn http_listen(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(Some(HTTP_LISTEN_DEFAULT.to_string()));
    };
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(Some(value.to_string())),
        _ => Err(invalid(
            "http_listen",
            format!("'{value}' is not HOST:PORT (or \"off\" to turn the HTTP endpoint off)"),
        )),
    }
}

/// `1=host:port,2=host:port`: node ids and the addresses clients and peers reach them at.
fn parse_peers(list: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| invalid("peers", format!("'{item}' is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| invalid("peers", format!("'{id}' in '{item}' is not a node id")))?;
        let address = address.trim();
        if id == 0
            || address
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid(
                "peers",
                format!("'{item}' is not ID=HOST:PORT with an id of at least 1"),
            ));
        }
        if peers.insert(NodeId(id), address.to_string()).is_some() {
            return Err(invalid("peers", format!("node {id} is listed twice")));
        }
    }
    Ok(peers)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:1\"\ndata_dir = \"/a\"\n[log]\nretention_ms = -1\nsegment_bytes_max = 1048576\n[limits]\nbatch_bytes_max = 65536\n").unwrap();
        let config = BrokerConfig::load(Overrides {
            config: Some(path.clone()),
            data_dir: Some("/b".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:1");
        assert_eq!(config.data_dir, PathBuf::from("/b"));
        assert_eq!(config.log.retention_ms, None);
        assert_eq!(config.log.segment_bytes_max, 1 << 20);

        std::fs::write(&path, "[log]\nsegment_bytes_maxx = 5\n").unwrap();
        let error = BrokerConfig::load(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("segment_bytes_maxx"), "{error}");

        std::fs::write(&path, "[log]\nsegment_bytes_max = 100000\n").unwrap();
        let error = BrokerConfig::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("segment_bytes_max"), "{error}");
    }

    #[test]
    fn segment_allocation_step_is_read_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        let defaults = BrokerConfig::load(Overrides::default()).unwrap();
        assert_eq!(defaults.log.segment_allocation_step_bytes, 16 << 20);
        std::fs::write(&path, "[log]\nsegment_allocation_step_bytes = 4194304\n").unwrap();
        let config = BrokerConfig::load(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.log.segment_allocation_step_bytes, 4 << 20);
        std::fs::write(&path, "[log]\nsegment_allocation_step_bytes = 4096\n").unwrap();
        let error = BrokerConfig::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("segment_allocation_step_bytes"), "{error}");
    }

    #[test]
    fn http_listen_defaults_turns_off_and_is_checked() {
        let load = |http_listen: Option<&str>| {
            BrokerConfig::load(Overrides {
                http_listen: http_listen.map(str::to_string),
                ..Default::default()
            })
        };
        assert_eq!(load(None).unwrap().http_listen.as_deref(), Some("127.0.0.1:9393"));
        assert_eq!(
            load(Some("0.0.0.0:0")).unwrap().http_listen.as_deref(),
            Some("0.0.0.0:0")
        );
        assert_eq!(load(Some("off")).unwrap().http_listen, None);
        assert_eq!(load(Some("")).unwrap().http_listen, None);
        let error = load(Some("9393")).unwrap_err();
        assert!(error.to_string().contains("http_listen"), "{error}");
    }

    #[test]
    fn peers_parse_and_must_include_this_node() {
        let peers = parse_peers("1=127.0.0.1:9292, 2=node-2:9292,3=[::1]:9292").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&NodeId(2)], "node-2:9292");
        for bad in ["1", "x=a:1", "0=a:1", "1=a", "1=a:1,1=b:2", "1=:5"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
        let error = BrokerConfig::load(Overrides {
            node_id: Some(4),
            peers: Some("1=a:1,2=b:2".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("must include this node"), "{error}");
    }
}
