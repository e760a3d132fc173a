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
//!   "listening on" line), `kill9`, `terminate` (SIGTERM), `restart`. Its output is kept in a
//!   log file next to the data directory, whose tail is printed on drop (the test harness shows
//!   it for failing tests only). Dropping it kills the process: no test leaks a broker, even
//!   when it fails.
//! - [`cluster`]: [`cluster::Cluster`], N brokers forming one cluster on fixed local ports: start
//!   them together, kill and restart a node, each node's own view of a topic (leader, high
//!   watermark), the partition leader, waits for node states and replica catch-up.
//! - [`history`]: the history checker of RELIABILITY.md for produce histories (lost,
//!   inconsistent, duplicate, aborted read, non-monotonic send, real-time order, gaps).
//! - [`cli`]: [`weir`], one run of the CLI with a timeout, answering its exit status and output.
//! - [`records`]: reading a partition back from the beginning to its high watermark, and checks
//!   of what was read against what was acknowledged.
//! - [`wait`]: polling a condition until a deadline (instead of sleeping and hoping).
//!
//! A test holds a [`tempfile::TempDir`] and a [`BrokerProcess`] on a directory inside it;
//! declared in that order, the broker is dropped (killed) before the directory is removed.

pub mod binaries;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod history;
mod process;
pub mod records;
pub mod wait;

pub use broker::BrokerProcess;
pub use cli::{weir, CliOutput};
