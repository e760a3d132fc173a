//! Shared helpers for the process-level tests in `tests/tests`: real `weir-broker` and `weir`
//! processes on 127.0.0.1 with port 0, temporary data directories, kill -9 and restart.
//!
//! # Layout
//!
//! - [`binaries`]: finds `weir-broker` and `weir` next to the test executable
//!   (`target/<profile>/`), and builds one with cargo if it is missing, so that the tests work
//!   with a plain `cargo test --workspace` (or nextest) on a fresh clone.
//! - `process` (private): spawning children that die with the test process, and bounded waits
//!   for their exit. No wait in this crate is unbounded.
//! - [`broker`]: [`BrokerProcess`], one broker on a data directory: start (waits for its
//!   "listening on" line), `kill9`, `terminate` (SIGTERM), `pause`/`resume` (SIGSTOP/SIGCONT),
//!   `restart`; optionally run under a wrapper command (`ip netns exec NAME`). Its output is
//!   kept in a log file next to the data directory, whose tail is printed on drop (the test
//!   harness shows it for failing tests only). Dropping it kills the process: no test leaks a broker, even
//!   when it fails.
//! - [`cluster`]: [`cluster::Cluster`], N brokers forming one cluster on fixed local ports: start
//!   them together, kill and restart a node, each node's own view of a topic (leader, high
//!   watermark), the partition leader, waits for node states and replica catch-up; kill every
//!   node at once and restart them together; nodes on other addresses ([`cluster::NodeSpec`]).
//! - [`docker`]: the deployment kit on the machine's Docker engine: the local image
//!   ([`docker::LocalImage`]) and `deploy/docker-compose.yml` under a project of the test's own
//!   ([`docker::ComposeCluster`]: free ports and subnet, kill, start, network disconnect, per-node
//!   views through the published ports; `down -v` on drop).
//! - [`history`]: the history checker of RELIABILITY.md for produce histories (lost,
//!   inconsistent, duplicate, aborted read, non-monotonic send, real-time order, gaps).
//! - [`load`]: steady produce load recorded in a [`history::History`] (sequential writers per
//!   partition, unique values), optionally starting over with a new client after a write of
//!   unknown outcome.
//! - [`netns`]: [`netns::NetLab`], one Linux network namespace per node joined by a bridge in
//!   a namespace of the test's own, to cut a node off for real (root only; tests skip without).
//! - [`cli`]: [`weir`], one run of the CLI with a timeout, answering its exit status and output.
//! - [`records`]: reading a partition back from the beginning to its high watermark, and checks
//!   of what was read against what was acknowledged.
//! - [`verdict`]: the end of a fault test: two readers drain, the history checker must be
//!   clean, every replica reaches the same high watermark and size; waiting for every node to be
//!   back and caught up between rounds.
//! - [`wait`]: polling a condition until a deadline (instead of sleeping and hoping).
//!
//! A test holds a [`tempfile::TempDir`] and a [`BrokerProcess`] on a directory inside it;
//! declared in that order, the broker is dropped (killed) before the directory is removed.

pub mod binaries;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod docker;
pub mod groups;
pub mod history;
pub mod load;
pub mod netns;
pub mod process;
pub mod records;
pub mod tmpfs;
pub mod verdict;
pub mod wait;

pub use broker::BrokerProcess;
pub use cli::{weir, CliOutput};

/// A count from environment variable `name` (a test's round count, say), or `default` when it is
/// not set; a value that is not a count is an error naming the variable.
pub fn count_from_env(name: &str, default: usize) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a count")),
        Err(_) => Ok(default),
    }
}
