//! A deterministic simulation of several nodes' raft shards over an in-process network.
//!
//! Every simulated node is a [`Shard`] of the real driver with real [`crate::log::PartitionLog`]s
//! in a temp dir (tmpfs when there is one). There are no threads and no wall clock: the simulator
//! runs the rounds itself, one per running node per step, and decides what is due (a tick every
//! [`STEPS_PER_TICK`] steps, housekeeping, leader balancing). Raft messages leave through
//! [`SimTransport`] into a network that delivers them as `Command::Step` to the destination's
//! next rounds, with seeded faults: drops, duplicates, delays of a few steps (which reorder),
//! partitions (isolated node, minority/majority split, a bridge node), node pauses (no rounds,
//! messages held), crashes (the shard dropped without closing: what a crash keeps is what the
//! rounds flushed), clean stops (drain, `close_all`) and restarts (`open_group` on the same dirs).
//! Each node gets a different fixed election timeout (`election_ticks_max = election_ticks + 1`),
//! so raft-rs's own random number generator changes nothing and a seed reproduces a run.
//!
//! Checked after every step: at most one leader per term and group; the high watermark and the
//! visible (committed and persisted) index never go back within a node's life, nor across a
//! clean restart; every entry at or below a replica's visible index is the same (term and stamped
//! bytes) on every replica that ever shows it; every acknowledged proposal is in the acking
//! leader's log at the answered index and offsets, under its high watermark; a restarted replica
//! still holds every entry it showed before. When the faults heal: the cluster converges (one
//! leader, the same log end, high watermark and commit everywhere), a new proposal commits, every
//! acks=all proposal is on every replica at its offsets, no definitely refused proposal and no
//! duplicate is in any log, the read path serves contiguous offsets up to the high watermark, and
//! a clean restart of every node changes nothing. Exempt from the high watermark checks is the
//! placeholder progress `open_group` publishes before a replica's first Ready (term 0, high
//! watermark = log start), which a restarted follower shows until a leader reaches it.
//!
//! Below the seeded runs: directed tests of what the runs found (a reopen after retention, an
//! old leader's append encoded after its own round rewrote the log; the latter is still open).
//!
//! `WEIR_SIM_SEED=<n>` runs one seed, `WEIR_SIM_SEEDS=<a>,<b>,...` or `<a>..<b>` several,
//! `WEIR_SIM_STEPS=<n>` changes the number of faulty steps, `WEIR_SIM_LOG=<filter>` prints the
//! driver's and raft-rs's logs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::oneshot;

use super::driver::{open_group, Command, Due, GroupHandle, Shard};
use super::{read_log, Acks, Committed, GroupSpec, ProposeError, RaftConfig, Role, Transport};
use crate::log::batch::{parse_header, BatchBuilder, BatchKind, BatchReader, HEADER_LEN};
use crate::log::{LogConfig, StoredEntry};
use crate::types::{GroupId, NodeId, Offset, RaftIndex, Term};

/// Simulation steps per raft tick.
const STEPS_PER_TICK: u64 = 2;
/// The nominal tick, for the connection ages the transport reports.
const TICK: Duration = Duration::from_millis(100);
/// Steps between housekeeping rounds (age roll, retention) of a node.
const HOUSEKEEPING_STEPS: u64 = 20;
/// Ticks between leader balancing rounds of a node (its `leader_balance_interval`).
const BALANCE_TICKS: u64 = 20;
const MAILBOX_MESSAGES_MAX: usize = 4096;
const SEGMENT_BYTES: u64 = 64 << 10;
/// Smaller than a segment: every committed sealed segment goes, so a follower that was down
/// for a while needs a snapshot.
const RETENTION_BYTES: u64 = SEGMENT_BYTES / 2;
/// Simulated wall clock at step 0; a step is 50 ms.
const EPOCH_MS: i64 = 1_700_000_000_000;
const STEP_MS: i64 = 50;
const FAULT_STEPS: u64 = 2500;
/// Steps the healed cluster gets to converge before that counts as a failure.
const SETTLE_STEPS_MAX: u64 = 3000;
/// Every cluster shape (3 or 5 nodes, 1 or 2 groups, retention or not), and seed 14, which
/// lost the answer to a snapshot (a follower stalled before the driver reported sent snapshots).
const DEFAULT_SEEDS: [u64; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 14];

/// SplitMix64: small, fast and the same everywhere.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `[low, high]`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

/// What one seed runs: cluster shape and fault rates, all derived from the seed.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    nodes: u64,
    groups: u64,
    /// Steps with faults; afterwards the faults heal and the cluster must settle.
    fault_steps: u64,
    /// Retention by size: leaders delete committed segments, so lagging followers get snapshots.
    retention: bool,
    drop_p: f64,
    duplicate_p: f64,
    /// Extra delivery delay in steps, uniform in `[0, delay_max]` (messages overtake each other).
    delay_max: u64,
    propose_p: f64,
    partition_p: f64,
    crash_p: f64,
    clean_stop_p: f64,
    pause_p: f64,
    crash_all_p: f64,
}

impl Scenario {
    fn from_seed(seed: u64, fault_steps: u64) -> Self {
        let mut rng = Rng::new(seed, 1);
        Self {
            seed,
            nodes: if seed % 2 == 1 { 3 } else { 5 },
            groups: 1 + (seed / 2) % 2,
            fault_steps,
            retention: (seed / 4) % 2 == 1,
            drop_p: rng.range(0, 15) as f64 / 100.0,
            duplicate_p: rng.range(0, 5) as f64 / 100.0,
            delay_max: rng.range(0, 4),
            propose_p: 0.2 + rng.range(0, 30) as f64 / 100.0,
            partition_p: 0.004,
            crash_p: 0.003,
            clean_stop_p: 0.0015,
            pause_p: 0.002,
            crash_all_p: 0.0003,
        }
    }
}

/// The network state the transports and the simulator share.
#[derive(Default)]
struct Net {
    now: u64,
    /// Messages sent during the current round: (from, group, message).
    outbox: Vec<(NodeId, GroupId, Message)>,
    /// Node pairs (smaller id first) that cannot talk.
    cut: BTreeSet<(u64, u64)>,
    running: BTreeSet<u64>,
    /// Since which step each connected pair has been connected.
    since: BTreeMap<(u64, u64), u64>,
}

fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Net {
    fn connected(&self, a: u64, b: u64) -> bool {
        !self.cut.contains(&pair(a, b)) && self.running.contains(&a) && self.running.contains(&b)
    }

    fn refresh_links(&mut self, nodes: u64) {
        for a in 1..=nodes {
            for b in a + 1..=nodes {
                if self.connected(a, b) {
                    let now = self.now;
                    self.since.entry((a, b)).or_insert(now);
                } else {
                    self.since.remove(&(a, b));
                }
            }
        }
    }
}

fn lock(net: &Mutex<Net>) -> MutexGuard<'_, Net> {
    net.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One node's transport: collects what its rounds send; reports connection ages for leader
/// balancing and draining.
struct SimTransport {
    node: NodeId,
    net: Arc<Mutex<Net>>,
}

impl Transport for SimTransport {
    fn send(&self, messages: Vec<(GroupId, Message)>) {
        let mut net = lock(&self.net);
        for (group, message) in messages {
            // Encoded here, as the gRPC transport does in `send`: entries read from the log are
            // views of its mapped segments, which later truncations rewrite.
            let encoded = protobuf::Message::write_to_bytes(&message).expect("raft message encodes");
            let message = protobuf::Message::parse_from_bytes(&encoded).expect("raft message decodes");
            net.outbox.push((self.node, group, message));
        }
    }

    fn peer_up_for(&self, node: NodeId) -> Option<Duration> {
        let net = lock(&self.net);
        let since = *net.since.get(&pair(self.node.0, node.0))?;
        let ticks = (net.now - since) / STEPS_PER_TICK;
        Some(TICK * u32::try_from(ticks).unwrap_or(u32::MAX))
    }
}

struct Flight {
    from: NodeId,
    to: NodeId,
    group: GroupId,
    message: Message,
}

/// A running node: its shard, the receiving end of its group handles' mailbox, the handles.
struct Running {
    shard: Shard,
    mailbox: Receiver<Command>,
    handles: BTreeMap<GroupId, GroupHandle>,
}

/// What the observer saw of one replica during the node's current life.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    high_watermark: Offset,
    /// Visible index; every entry up to it has been compared with the canonical log.
    visible: RaftIndex,
}

/// What a replica showed before its node stopped.
#[derive(Debug, Clone, Copy)]
struct Floor {
    seen: Seen,
    clean: bool,
}

struct SimNode {
    id: NodeId,
    running: Option<Running>,
    /// Commands for the next round (AddGroup after a start, Drain before a clean stop).
    pending: Vec<Command>,
    paused_until: u64,
    /// A clean stop in progress: the node drains until this step, then closes.
    closing_at: Option<u64>,
    restart_at: Option<u64>,
    seen: BTreeMap<GroupId, Seen>,
    floors: BTreeMap<GroupId, Floor>,
}

impl SimNode {
    fn paused(&self, now: u64) -> bool {
        now < self.paused_until
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Acked(Committed),
    /// Refused before it reached the log (not leader, busy, disk full, no such group).
    Refused,
    /// May or may not be in the log (leadership lost, node stopped).
    Unknown,
}

struct Proposal {
    group: GroupId,
    node: NodeId,
    acks: Acks,
    data: Vec<u8>,
    records: u64,
    outcome: Outcome,
    reply: Option<oneshot::Receiver<Result<Committed, ProposeError>>>,
}

/// The entry every replica that shows `index` as visible must hold.
struct Canon {
    term: Term,
    kind: BatchKind,
    data: Bytes,
    first_seen_on: NodeId,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    proposals: u64,
    acked_all: u64,
    acked_leader: u64,
    refused: u64,
    unknown: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    clean_stops: u64,
    pauses: u64,
    partitions: u64,
    crash_alls: u64,
    leaders: u64,
    max_term: u64,
    /// Crash restarts after which the replica first showed a lower high watermark than before.
    high_watermark_dips_after_crash: u64,
    /// Observations of a restarted replica that still showed `open_group`'s placeholder
    /// progress (high watermark = log start, visible index 0, term 0) although it had shown more
    /// before: the true high watermark is published only at the replica's first Ready.
    placeholder_after_restart: u64,
    /// Replicas whose log start moved (retention, or a snapshot from the leader).
    replicas_with_log_start: u64,
    max_segments: usize,
    /// MsgSnapshot messages sent (a follower behind the leader's log start).
    snapshots_sent: u64,
    /// MsgTimeoutNow messages sent (leadership handed to the preferred leader, or by a drain).
    leader_transfers: u64,
    entries: u64,
    settle_steps: u64,
    /// A hash of every delivered message and the final logs: equal seeds give equal digests.
    digest: u64,
}

struct Sim {
    scenario: Scenario,
    dir: tempfile::TempDir,
    logger: slog::Logger,
    net: Arc<Mutex<Net>>,
    nodes: Vec<SimNode>,
    /// Per node, its election timeout in ticks (all different).
    election_ticks: Vec<usize>,
    step: u64,
    faults: bool,
    proposing: bool,
    fault_rng: Rng,
    net_rng: Rng,
    client_rng: Rng,
    in_flight: BTreeMap<(u64, u64), Flight>,
    flight_seq: u64,
    partition_heals_at: Option<u64>,
    proposals: Vec<Proposal>,
    outstanding: Vec<usize>,
    canon: BTreeMap<GroupId, BTreeMap<u64, Canon>>,
    leaders: BTreeMap<(GroupId, Term), NodeId>,
    events: Vec<String>,
    stats: Stats,
}

fn groups(scenario: &Scenario) -> impl Iterator<Item = GroupId> {
    (1..=scenario.groups).map(|g| GroupId(g * 10))
}

fn fnv(hash: &mut u64, value: u64) {
    for byte in value.to_le_bytes() {
        *hash ^= u64::from(byte);
        *hash = hash.wrapping_mul(0x0100_0000_01B3);
    }
}

fn sim_dir() -> tempfile::TempDir {
    let base = std::env::var_os("WEIR_SIM_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|path| path.is_dir()));
    let builder = tempfile::Builder::new().prefix("weir-sim-").to_owned();
    match base {
        Some(base) => builder.tempdir_in(base),
        None => builder.tempdir(),
    }
    .expect("temp dir for the simulation")
}

fn logger() -> slog::Logger {
    match std::env::var("WEIR_SIM_LOG") {
        Ok(filter) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
            super::logger::root_logger()
        }
        Err(_) => slog::Logger::root(slog::Discard, slog::o!()),
    }
}

/// The proposal id in a records batch this simulation built (first record's value).
fn proposal_id(batch: &[u8]) -> Option<usize> {
    let batch = BatchReader::new(Bytes::copy_from_slice(batch)).next()?.ok()?;
    let records = batch.records().ok()?;
    let value = records.first()?.value.as_ref()?;
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.split_once('p')?.1;
    rest.split_once('r')?.0.parse().ok()
}

impl Sim {
    fn new(scenario: Scenario) -> Self {
        let mut order: Vec<usize> = (0..scenario.nodes as usize).collect();
        let mut rng = Rng::new(scenario.seed, 2);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        // Different fixed timeouts, at least two ticks apart: elections are decided by the
        // network faults, not by raft-rs's thread RNG.
        let election_ticks = order.iter().map(|rank| 10 + 3 * rank).collect();
        let nodes = (1..=scenario.nodes)
            .map(|id| SimNode {
                id: NodeId(id),
                running: None,
                pending: Vec::new(),
                paused_until: 0,
                closing_at: None,
                restart_at: None,
                seen: BTreeMap::new(),
                floors: BTreeMap::new(),
            })
            .collect();
        let seed = scenario.seed;
        Self {
            scenario,
            dir: sim_dir(),
            logger: logger(),
            net: Arc::new(Mutex::new(Net::default())),
            nodes,
            election_ticks,
            step: 0,
            faults: true,
            proposing: true,
            fault_rng: Rng::new(seed, 3),
            net_rng: Rng::new(seed, 4),
            client_rng: Rng::new(seed, 5),
            in_flight: BTreeMap::new(),
            flight_seq: 0,
            partition_heals_at: None,
            proposals: Vec::new(),
            outstanding: Vec::new(),
            canon: BTreeMap::new(),
            leaders: BTreeMap::new(),
            events: Vec::new(),
            stats: Stats {
                digest: 0xCBF2_9CE4_8422_2325,
                ..Stats::default()
            },
        }
    }

    /// Stops the run with what broke, the seed and the recent fault events.
    fn violation(&self, what: String) -> ! {
        let recent = self.events.len().saturating_sub(40);
        panic!(
            "simulation seed {} ({:?}) step {}: {what}\nrecent events:\n  {}\nrerun with WEIR_SIM_SEED={}",
            self.scenario.seed,
            self.scenario,
            self.step,
            self.events[recent..].join("\n  "),
            self.scenario.seed
        );
    }

    fn event(&mut self, what: String) {
        self.events.push(format!("step {}: {what}", self.step));
    }

    fn group_ids(&self) -> Vec<GroupId> {
        groups(&self.scenario).collect()
    }

    fn raft_config(&self, index: usize) -> RaftConfig {
        let election_ticks = self.election_ticks[index];
        RaftConfig {
            node_id: self.nodes[index].id,
            tick_interval: TICK,
            election_ticks,
            election_ticks_max: Some(election_ticks + 1),
            heartbeat_ticks: 2,
            mailbox_messages_max: MAILBOX_MESSAGES_MAX,
            round_messages_max: MAILBOX_MESSAGES_MAX,
            message_bytes_max: 16 << 10,
            inflight_messages_max: 16,
            housekeeping_interval: TICK * (HOUSEKEEPING_STEPS / STEPS_PER_TICK) as u32,
            leader_balance_interval: TICK * BALANCE_TICKS as u32,
            // `threads` (the simulator runs each node's one shard itself) and the rest.
            ..RaftConfig::default()
        }
    }

    fn group_dir(&self, node: NodeId, group: GroupId) -> PathBuf {
        self.dir
            .path()
            .join(format!("n{}", node.0))
            .join(format!("g{}", group.0))
    }

    fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes_max: SEGMENT_BYTES,
            index_interval_bytes: 1024,
            retention_bytes: self.scenario.retention.then_some(RETENTION_BYTES),
            ..LogConfig::default()
        }
    }

    // ---- node life ----

    fn start_node(&mut self, index: usize) {
        let id = self.nodes[index].id;
        let config = self.raft_config(index);
        let (mailbox_sender, mailbox) = sync_channel(MAILBOX_MESSAGES_MAX);
        let transport = Arc::new(SimTransport {
            node: id,
            net: self.net.clone(),
        });
        let shard = Shard::new(config.clone(), transport);
        let mut handles = BTreeMap::new();
        for group in self.group_ids() {
            let spec = GroupSpec {
                id: group,
                dir: self.group_dir(id, group),
                log_config: self.log_config(),
                voters: (1..=self.scenario.nodes).map(NodeId).collect(),
                preferred_leader: Some(NodeId(1 + group.0 / 10 % self.scenario.nodes)),
                applier: None,
            };
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                open_group(&config, &self.logger, spec, mailbox_sender.clone())
            }));
            let (replica, handle) = match opened {
                Ok(Ok(opened)) => opened,
                Ok(Err(error)) => self.violation(format!("node {id} could not reopen group {group}: {error}")),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let dir = self.group_dir(id, group);
                    self.violation(format!(
                        "node {id} group {group}: open_group panicked: {message}\n  state file: {:?}\n  log_start file (index, term, offset): {:?}",
                        super::state_file::load(&dir).map(|s| s.map(|(hs, _)| hs)),
                        std::fs::read(dir.join("log_start")).ok().map(|bytes| {
                            bytes
                                .get(8..32)
                                .unwrap_or_default()
                                .chunks(8)
                                .map(|raw| u64::from_le_bytes(raw.try_into().unwrap_or_default()))
                                .collect::<Vec<_>>()
                        }),
                    ))
                }
            };
            self.check_reopened(index, group, &handle);
            self.nodes[index].pending.push(Command::AddGroup(Box::new(replica)));
            handles.insert(group, handle);
        }
        let node = &mut self.nodes[index];
        node.running = Some(Running {
            shard,
            mailbox,
            handles,
        });
        node.restart_at = None;
        node.closing_at = None;
        node.paused_until = 0;
        node.seen.clear();
        // A clean restart must show at least what the replica showed before.
        for (group, floor) in &node.floors {
            if floor.clean {
                node.seen.insert(*group, floor.seen);
            }
        }
        lock(&self.net).running.insert(id.0);
    }

    /// A restarted replica still holds every entry it showed as visible before, unchanged.
    fn check_reopened(&self, index: usize, group: GroupId, handle: &GroupHandle) {
        let node = &self.nodes[index];
        let Some(floor) = node.floors.get(&group) else {
            return;
        };
        let log = read_log(handle.log());
        let visible = floor.seen.visible;
        if visible <= log.log_start().index {
            return;
        }
        if log.last_index() < visible {
            self.violation(format!(
                "node {} group {group} reopened with last index {} below the index {visible} it showed as visible before {}",
                node.id,
                log.last_index(),
                if floor.clean { "its clean stop" } else { "its crash" }
            ));
        }
        let entries = log
            .entries(log.first_index(), visible.next(), None)
            .unwrap_or_else(|error| self.violation(format!("node {} group {group} reopened log: {error}", node.id)));
        for entry in &entries {
            self.compare_canon(node.id, group, entry, "after a restart");
        }
    }

    fn crash(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(running) = node.running.take() else {
            return;
        };
        for (group, seen) in &node.seen {
            node.floors.insert(
                *group,
                Floor {
                    seen: *seen,
                    clean: false,
                },
            );
        }
        // Dropping the shard without close_all: no hard state, no clean marker, nothing flushed
        // beyond what the rounds flushed.
        drop(running);
        node.pending.clear();
        node.closing_at = None;
        node.paused_until = 0;
        let id = node.id;
        lock(&self.net).running.remove(&id.0);
        self.stats.crashes += 1;
    }

    fn clean_close(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(mut running) = node.running.take() else {
            return;
        };
        running.shard.close_all();
        let id = node.id;
        for (group, seen) in &node.seen {
            node.floors.insert(
                *group,
                Floor {
                    seen: *seen,
                    clean: true,
                },
            );
        }
        node.pending.clear();
        node.closing_at = None;
        node.paused_until = 0;
        drop(running);
        for group in self.group_ids() {
            let marker = self.group_dir(id, group).join("clean_shutdown");
            if !marker.exists() {
                self.violation(format!(
                    "node {id} group {group}: close_all left no clean shutdown marker"
                ));
            }
        }
        lock(&self.net).running.remove(&id.0);
    }

    // ---- faults ----

    fn inject_faults(&mut self) {
        let now = self.step;
        let n = self.scenario.nodes;
        if self.partition_heals_at.is_some_and(|at| at <= now) {
            lock(&self.net).cut.clear();
            self.partition_heals_at = None;
            self.event("partition healed".into());
        }
        if self.partition_heals_at.is_none() && self.fault_rng.chance(self.scenario.partition_p) {
            let mut ids: Vec<u64> = (1..=n).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, self.fault_rng.below(i as u64 + 1) as usize);
            }
            let kind = self.fault_rng.below(3);
            let mut cut = BTreeSet::new();
            let description = match kind {
                0 => {
                    for &other in &ids[1..] {
                        cut.insert(pair(ids[0], other));
                    }
                    format!("node {} isolated", ids[0])
                }
                1 => {
                    let minority = self.fault_rng.range(1, (n - 1) / 2) as usize;
                    for &a in &ids[..minority] {
                        for &b in &ids[minority..] {
                            cut.insert(pair(a, b));
                        }
                    }
                    format!("split {:?} | {:?}", &ids[..minority], &ids[minority..])
                }
                _ => {
                    // ids[0] talks to both sides; the sides do not talk to each other.
                    let rest = &ids[1..];
                    let half = rest.len() / 2;
                    for &a in &rest[..half] {
                        for &b in &rest[half..] {
                            cut.insert(pair(a, b));
                        }
                    }
                    format!("bridge {} between {:?} and {:?}", ids[0], &rest[..half], &rest[half..])
                }
            };
            lock(&self.net).cut = cut;
            self.partition_heals_at = Some(now + self.fault_rng.range(20, 250));
            self.stats.partitions += 1;
            self.event(format!("partition: {description}"));
        }

        let unavailable = self
            .nodes
            .iter()
            .filter(|node| node.running.is_none() || node.paused(now) || node.closing_at.is_some())
            .count() as u64;
        let may_stop = unavailable < n / 2;
        if may_stop && self.fault_rng.chance(self.scenario.crash_p) {
            if let Some(index) = self.pick_running() {
                self.crash(index);
                let at = now + self.fault_rng.range(5, 200);
                self.nodes[index].restart_at = Some(at);
                self.event(format!("crash node {} (restart at {at})", index + 1));
            }
        }
        if may_stop && self.fault_rng.chance(self.scenario.clean_stop_p) {
            if let Some(index) = self.pick_running() {
                let at = now + self.fault_rng.range(3, 30);
                self.nodes[index].pending.push(Command::Drain);
                self.nodes[index].closing_at = Some(at);
                self.stats.clean_stops += 1;
                self.event(format!("drain node {} (clean close at {at})", index + 1));
            }
        }
        if may_stop && self.fault_rng.chance(self.scenario.pause_p) {
            if let Some(index) = self.pick_running() {
                let until = now + self.fault_rng.range(5, 80);
                self.nodes[index].paused_until = until;
                self.stats.pauses += 1;
                self.event(format!("pause node {} until {until}", index + 1));
            }
        }
        if self.fault_rng.chance(self.scenario.crash_all_p) {
            for index in 0..self.nodes.len() {
                self.crash(index);
                let at = now + self.fault_rng.range(1, 60);
                self.nodes[index].restart_at = Some(at);
            }
            self.stats.crash_alls += 1;
            self.event("crash every node".into());
        }
    }

    /// A running node that is neither paused nor stopping.
    fn pick_running(&mut self) -> Option<usize> {
        let now = self.step;
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let node = &self.nodes[i];
                node.running.is_some() && !node.paused(now) && node.closing_at.is_none()
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.fault_rng.below(candidates.len() as u64) as usize])
    }

    /// Clean closes and restarts that are due.
    fn scheduled(&mut self) {
        let now = self.step;
        for index in 0..self.nodes.len() {
            if self.nodes[index].closing_at.is_some_and(|at| at <= now) {
                self.clean_close(index);
                let at = now + self.fault_rng.range(5, 100);
                self.nodes[index].restart_at = Some(at);
                self.event(format!("clean close node {} (restart at {at})", index + 1));
            }
            if self.nodes[index].running.is_none() && self.nodes[index].restart_at.is_some_and(|at| at <= now) {
                self.start_node(index);
                self.event(format!("start node {}", index + 1));
            }
        }
    }

    /// Ends every fault: partitions heal, paused nodes resume, stopped nodes start.
    fn heal(&mut self) {
        self.faults = false;
        lock(&self.net).cut.clear();
        self.partition_heals_at = None;
        for index in 0..self.nodes.len() {
            if self.nodes[index].closing_at.is_some() {
                self.clean_close(index);
            }
            self.nodes[index].paused_until = 0;
            if self.nodes[index].running.is_none() {
                self.start_node(index);
            }
        }
        self.event("faults healed".into());
    }

    // ---- the network ----

    /// Queues what the node's round sent, with the network's faults.
    fn route(&mut self) {
        let mut sent = std::mem::take(&mut lock(&self.net).outbox);
        // Groups' messages come out in hash map order; each group's own order is kept.
        sent.sort_by_key(|(_, group, _)| *group);
        let now = self.step;
        for (from, group, message) in sent {
            let to = NodeId(message.to);
            self.stats.messages += 1;
            match message.get_msg_type() {
                MessageType::MsgSnapshot => self.stats.snapshots_sent += 1,
                MessageType::MsgTimeoutNow => self.stats.leader_transfers += 1,
                _ => {}
            }
            let connected = lock(&self.net).connected(from.0, to.0);
            if !connected || (self.faults && self.net_rng.chance(self.scenario.drop_p)) {
                self.stats.dropped += 1;
                continue;
            }
            let copies = if self.faults && self.net_rng.chance(self.scenario.duplicate_p) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = 1 + self.net_rng.range(0, self.scenario.delay_max);
                self.flight_seq += 1;
                let message = message.clone();
                self.in_flight.insert(
                    (now + delay, self.flight_seq),
                    Flight {
                        from,
                        to,
                        group,
                        message,
                    },
                );
            }
        }
    }

    /// The messages due at `node` now, as commands; those across a cut are lost.
    fn deliveries(&mut self, node: NodeId) -> Vec<Command> {
        let due: Vec<(u64, u64)> = self
            .in_flight
            .range(..(self.step + 1, 0))
            .filter(|(_, flight)| flight.to == node)
            .map(|(key, _)| *key)
            .collect();
        let mut commands = Vec::with_capacity(due.len());
        for key in due {
            let Some(flight) = self.in_flight.remove(&key) else {
                continue;
            };
            if !lock(&self.net).connected(flight.from.0, flight.to.0) {
                self.stats.dropped += 1;
                continue;
            }
            let digest = &mut self.stats.digest;
            fnv(digest, flight.from.0 * 1000 + flight.to.0);
            fnv(digest, flight.message.get_msg_type() as u64);
            fnv(digest, flight.message.term);
            fnv(digest, flight.message.index);
            fnv(digest, flight.message.entries.len() as u64);
            commands.push(Command::Step {
                group: flight.group,
                message: flight.message,
            });
        }
        commands
    }

    // ---- the clients ----

    /// The node the clients take for the group's leader: the highest term's leader seen.
    fn believed_leader(&self, group: GroupId) -> Option<usize> {
        let mut best: Option<(Term, usize)> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(handle) = node.running.as_ref().and_then(|r| r.handles.get(&group)) else {
                continue;
            };
            let progress = handle.progress();
            if progress.role == Role::Leader && best.is_none_or(|(term, _)| progress.term > term) {
                best = Some((progress.term, index));
            }
        }
        best.map(|(_, index)| index)
    }

    fn propose(&mut self, group: GroupId, index: usize, acks: Acks) -> Option<usize> {
        let id = self.proposals.len();
        let records = self.client_rng.range(1, 4);
        let mut builder = BatchBuilder::new();
        for r in 0..records {
            let mut value = format!("g{}p{id}r{r}", group.0).into_bytes();
            value.resize(self.client_rng.range(value.len() as u64, 400) as usize, b'.');
            let key = format!("k{}", self.client_rng.below(16));
            let key = self.client_rng.chance(0.5).then_some(key.as_bytes());
            builder
                .push(EPOCH_MS + self.step as i64 * STEP_MS + r as i64, key, Some(&value), &[])
                .expect("record fits");
        }
        let data = builder.finish();
        let node = &self.nodes[index];
        let handle = node.running.as_ref()?.handles.get(&group)?;
        let (outcome, reply) = match handle.propose(data.clone(), acks) {
            Ok(reply) => (Outcome::Pending, Some(reply)),
            Err(_) => (Outcome::Refused, None),
        };
        self.proposals.push(Proposal {
            group,
            node: node.id,
            acks,
            data,
            records,
            outcome,
            reply,
        });
        self.stats.proposals += 1;
        if outcome == Outcome::Pending {
            self.outstanding.push(id);
        } else {
            self.stats.refused += 1;
        }
        Some(id)
    }

    fn client_step(&mut self) {
        for group in self.group_ids() {
            if !self.client_rng.chance(self.scenario.propose_p) {
                continue;
            }
            let leader = self.believed_leader(group);
            let index = match leader {
                Some(index) if self.client_rng.chance(0.85) => index,
                _ => self.client_rng.below(self.nodes.len() as u64) as usize,
            };
            let acks = if self.client_rng.chance(0.8) {
                Acks::All
            } else {
                Acks::Leader
            };
            self.propose(group, index, acks);
        }
    }

    /// Collects the answers that arrived; checks every acknowledgement against the acking
    /// replica's log and high watermark.
    fn poll_replies(&mut self) {
        let mut still = Vec::with_capacity(self.outstanding.len());
        for id in std::mem::take(&mut self.outstanding) {
            let answer = match self.proposals[id].reply.as_mut() {
                Some(reply) => reply.try_recv(),
                None => continue,
            };
            match answer {
                Err(oneshot::error::TryRecvError::Empty) => {
                    still.push(id);
                    continue;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.proposals[id].outcome = Outcome::Unknown;
                    self.stats.unknown += 1;
                }
                Ok(Ok(committed)) => {
                    self.check_ack(id, committed);
                    self.proposals[id].outcome = Outcome::Acked(committed);
                    match self.proposals[id].acks {
                        Acks::All => self.stats.acked_all += 1,
                        Acks::Leader => self.stats.acked_leader += 1,
                    }
                }
                Ok(Err(error)) => {
                    let refused = matches!(
                        error,
                        ProposeError::NotLeader { .. }
                            | ProposeError::Busy(_)
                            | ProposeError::DiskFull(_)
                            | ProposeError::NoSuchGroup(_)
                    );
                    if let ProposeError::Failed(reason) = &error {
                        self.violation(format!("proposal {id} failed: {reason}"));
                    }
                    self.proposals[id].outcome = if refused { Outcome::Refused } else { Outcome::Unknown };
                    if refused {
                        self.stats.refused += 1;
                    } else {
                        self.stats.unknown += 1;
                    }
                }
            }
            self.proposals[id].reply = None;
        }
        self.outstanding = still;
    }

    fn check_ack(&self, id: usize, committed: Committed) {
        let proposal = &self.proposals[id];
        let node = &self.nodes[(proposal.node.0 - 1) as usize];
        let Some(handle) = node.running.as_ref().and_then(|r| r.handles.get(&proposal.group)) else {
            self.violation(format!(
                "proposal {id} acknowledged by node {} that is not running",
                proposal.node
            ));
        };
        let what = format!(
            "proposal {id} ({:?}) acknowledged by node {} as {committed:?}",
            proposal.acks, proposal.node
        );
        if committed.next_offset.0 - committed.base_offset.0 != proposal.records {
            self.violation(format!("{what}: {} records claimed", proposal.records));
        }
        let progress = handle.progress();
        if proposal.acks == Acks::All
            && (progress.high_watermark < committed.next_offset || progress.commit_index < committed.index)
        {
            self.violation(format!("{what}, but its high watermark is only {progress:?}"));
        }
        let log = read_log(handle.log());
        let entry = log
            .entries(committed.index, committed.index.next(), None)
            .ok()
            .and_then(|mut entries| entries.pop())
            .unwrap_or_else(|| self.violation(format!("{what}, but its log has no such entry")));
        self.check_records_entry(&entry, id, &what);
        let header = parse_header(&entry.data).unwrap_or_else(|e| self.violation(format!("{what}: {e}")));
        if header.base_offset != committed.base_offset.0 || header.next_offset() != committed.next_offset.0 {
            self.violation(format!("{what}, but the entry there holds offsets {header:?}"));
        }
    }

    /// The entry is proposal `id`'s batch, stamped with the entry's index and term.
    fn check_records_entry(&self, entry: &StoredEntry, id: usize, what: &str) {
        let proposal = &self.proposals[id];
        if entry.kind != BatchKind::Records
            || entry.data.len() != proposal.data.len()
            || entry.data[HEADER_LEN..] != proposal.data[HEADER_LEN..]
        {
            self.violation(format!(
                "{what}: entry {} does not hold the proposed batch ({:?}, {} bytes vs {})",
                entry.index,
                entry.kind,
                entry.data.len(),
                proposal.data.len()
            ));
        }
        let header = parse_header(&entry.data).unwrap_or_else(|e| self.violation(format!("{what}: {e}")));
        if header.index != entry.index.0
            || header.term != entry.term.0
            || u64::from(header.record_count) != proposal.records
        {
            self.violation(format!("{what}: entry {} stamped {header:?}", entry.index));
        }
    }

    // ---- the observer ----

    /// Checks every running replica's published progress and its newly visible entries.
    fn observe(&mut self) {
        for index in 0..self.nodes.len() {
            let Some(running) = self.nodes[index].running.as_ref() else {
                continue;
            };
            let id = self.nodes[index].id;
            let handles: Vec<(GroupId, GroupHandle)> = running.handles.iter().map(|(g, h)| (*g, h.clone())).collect();
            for (group, handle) in handles {
                let progress = handle.progress();
                if let Some(failure) = &progress.failure {
                    self.violation(format!("node {id} group {group} failed: {failure}"));
                }
                if progress.role == Role::Leader {
                    let leader = *self.leaders.entry((group, progress.term)).or_insert(id);
                    if leader != id {
                        self.violation(format!(
                            "two leaders of group {group} in term {}: nodes {leader} and {id}",
                            progress.term
                        ));
                    }
                    self.stats.max_term = self.stats.max_term.max(progress.term.0);
                }
                if progress.term == Term(0) {
                    // Before any election (pre-candidates stay in term 0), or the placeholder
                    // `open_group` publishes (high watermark = log start, visible index 0) until
                    // the replica's first Ready; see `Stats::placeholder_after_restart`.
                    let placeholder = progress.commit_index == RaftIndex(0)
                        && progress.leader.is_none()
                        && progress.role != Role::Leader
                        && progress.high_watermark == progress.log_start;
                    if !placeholder {
                        self.violation(format!("node {id} group {group}: progress in term 0: {progress:?}"));
                    }
                    if self.nodes[index]
                        .floors
                        .get(&group)
                        .is_some_and(|f| f.seen.visible.0 > 0)
                    {
                        self.stats.placeholder_after_restart += 1;
                    }
                    continue;
                }
                let seen = self.nodes[index].seen.get(&group).copied();
                let floor = self.nodes[index].floors.get(&group).copied();
                match seen {
                    Some(seen)
                        if progress.high_watermark < seen.high_watermark || progress.commit_index < seen.visible =>
                    {
                        let when = match floor {
                            Some(floor) if floor.clean && floor.seen.visible == seen.visible => "after a clean restart",
                            _ => "while running",
                        };
                        self.violation(format!(
                            "node {id} group {group}: high watermark / visible index went back {when} from {seen:?} to {} / {}",
                            progress.high_watermark, progress.commit_index
                        ));
                    }
                    None => {
                        if let Some(floor) = floor.filter(|f| !f.clean) {
                            if progress.high_watermark < floor.seen.high_watermark {
                                self.stats.high_watermark_dips_after_crash += 1;
                            }
                        }
                    }
                    _ => {}
                }
                let checked = seen.map_or(RaftIndex(0), |s| s.visible);
                if progress.commit_index > checked {
                    self.check_visible(
                        id,
                        group,
                        &handle,
                        checked,
                        progress.commit_index,
                        progress.high_watermark,
                    );
                }
                self.nodes[index].seen.insert(
                    group,
                    Seen {
                        high_watermark: progress.high_watermark,
                        visible: progress.commit_index.max(checked),
                    },
                );
            }
        }
    }

    /// Entries `(from, to]` of the replica agree with the canonical log (or become it), and the
    /// high watermark is the offset after entry `to`.
    fn check_visible(
        &mut self,
        node: NodeId,
        group: GroupId,
        handle: &GroupHandle,
        from: RaftIndex,
        to: RaftIndex,
        high_watermark: Offset,
    ) {
        let log = read_log(handle.log());
        let low = from.next().max(log.first_index());
        if low <= to {
            let entries = log.entries(low, to.next(), None).unwrap_or_else(|error| {
                self.violation(format!("node {node} group {group}: reading visible entries: {error}"))
            });
            if entries.len() as u64 != to.0 + 1 - low.0 {
                self.violation(format!(
                    "node {node} group {group}: {} entries in [{low}, {to}]",
                    entries.len()
                ));
            }
            for entry in &entries {
                if !self.compare_canon(node, group, entry, "visible") {
                    self.canon.entry(group).or_default().insert(
                        entry.index.0,
                        Canon {
                            term: entry.term,
                            kind: entry.kind,
                            data: Bytes::copy_from_slice(&entry.data),
                            first_seen_on: node,
                        },
                    );
                }
            }
        }
        let expected = if to <= log.log_start().index {
            log.start_offset()
        } else {
            log.next_offset_after(to).unwrap_or_else(|error| {
                self.violation(format!("node {node} group {group}: offset after {to}: {error}"))
            })
        };
        if expected != high_watermark {
            self.violation(format!(
                "node {node} group {group}: high watermark {high_watermark} but entry {to} ends at offset {expected}"
            ));
        }
    }

    /// Compares `entry` with the canonical entry at its index; false if there is none yet.
    fn compare_canon(&self, node: NodeId, group: GroupId, entry: &StoredEntry, context: &str) -> bool {
        let Some(canon) = self.canon.get(&group).and_then(|entries| entries.get(&entry.index.0)) else {
            return false;
        };
        if canon.term != entry.term || canon.kind != entry.kind || canon.data != entry.data {
            self.violation(format!(
                "group {group} entry {} ({context}) differs: node {node} holds term {} {:?} {} bytes, node {} showed term {} {:?} {} bytes{}",
                entry.index,
                entry.term,
                entry.kind,
                entry.data.len(),
                canon.first_seen_on,
                canon.term,
                canon.kind,
                canon.data.len(),
                if canon.term == entry.term && canon.data.len() == entry.data.len() { " (same term and length, other bytes)" } else { "" }
            ));
        }
        true
    }

    // ---- running ----

    fn run_step(&mut self) {
        lock(&self.net).now = self.step;
        if self.faults {
            self.inject_faults();
        }
        self.scheduled();
        lock(&self.net).refresh_links(self.scenario.nodes);
        if self.proposing {
            self.client_step();
        }
        let sim_ms = EPOCH_MS + self.step as i64 * STEP_MS;
        for index in 0..self.nodes.len() {
            let id = self.nodes[index].id;
            if self.nodes[index].running.is_none() || self.nodes[index].paused(self.step) {
                continue;
            }
            let deliveries = self.deliveries(id);
            let phase = index as u64;
            let due = Due {
                tick: (self.step + phase).is_multiple_of(STEPS_PER_TICK),
                housekeeping: (self.step + phase).is_multiple_of(HOUSEKEEPING_STEPS).then_some(sim_ms),
                balance: (self.step + phase).is_multiple_of(BALANCE_TICKS * STEPS_PER_TICK),
            };
            let node = &mut self.nodes[index];
            let mut commands = std::mem::take(&mut node.pending);
            let running = node.running.as_mut().expect("running");
            commands.extend(running.mailbox.try_iter());
            commands.extend(deliveries);
            if running.shard.round(commands, due).is_some() {
                self.violation(format!("node {id} got a shutdown nobody sent"));
            }
            self.route();
        }
        self.observe();
        self.poll_replies();
        self.step += 1;
    }

    /// Whether every group has one leader that every replica follows, and every replica has the
    /// same log end, all of it committed and visible.
    fn converged(&self) -> bool {
        self.group_ids().into_iter().all(|group| {
            let mut leader = None;
            let mut state = None;
            self.nodes.iter().all(|node| {
                let Some(handle) = node.running.as_ref().and_then(|r| r.handles.get(&group)) else {
                    return false;
                };
                let progress = handle.progress();
                let last = read_log(handle.log()).last_index();
                if progress.role == Role::Candidate || progress.commit_index != last {
                    return false;
                }
                let current = (progress.leader, progress.term, progress.high_watermark, last);
                let same = *state.get_or_insert(current) == current;
                if progress.role == Role::Leader {
                    leader = Some(node.id);
                }
                same
            }) && leader.is_some()
                && state.is_some_and(|(l, _, _, _)| l == leader)
        })
    }

    fn settle(&mut self) {
        let start = self.step;
        while !self.converged() {
            if self.step - start > SETTLE_STEPS_MAX {
                let state: Vec<String> = self
                    .nodes
                    .iter()
                    .flat_map(|node| {
                        node.running.iter().flat_map(move |r| {
                            r.handles.values().map(move |h| {
                                format!(
                                    "node {} group {}: {:?} last {}",
                                    node.id,
                                    h.id,
                                    h.progress(),
                                    read_log(h.log()).last_index()
                                )
                            })
                        })
                    })
                    .collect();
                self.violation(format!(
                    "no convergence within {SETTLE_STEPS_MAX} steps after the faults healed:\n  {}",
                    state.join("\n  ")
                ));
            }
            self.run_step();
        }
        self.stats.settle_steps += self.step - start;
    }

    /// A healed cluster takes writes again: one acks=all proposal per group commits.
    fn probe(&mut self) {
        for group in self.group_ids() {
            let mut attempts = 0;
            loop {
                attempts += 1;
                if attempts > 20 {
                    self.violation(format!("group {group} takes no writes after the faults healed"));
                }
                let Some(leader) = self.believed_leader(group) else {
                    self.run_step();
                    continue;
                };
                let Some(id) = self.propose(group, leader, Acks::All) else {
                    self.run_step();
                    continue;
                };
                for _ in 0..200 {
                    if self.proposals[id].outcome != Outcome::Pending {
                        break;
                    }
                    self.run_step();
                }
                if matches!(self.proposals[id].outcome, Outcome::Acked(_)) {
                    break;
                }
            }
        }
    }

    /// The end state: identical logs, every acknowledged write where it was acknowledged, no
    /// refused write and no duplicate anywhere, offsets served contiguously.
    fn verify_final(&mut self) {
        for group in self.group_ids() {
            let mut logs = Vec::new();
            for node in &self.nodes {
                let running = node.running.as_ref().expect("every node runs after healing");
                let handle = &running.handles[&group];
                let progress = handle.progress();
                let log = read_log(handle.log());
                let entries = log
                    .entries(log.first_index(), log.last_index().next(), None)
                    .unwrap_or_else(|e| self.violation(format!("node {} group {group}: {e}", node.id)));
                let chunk = log
                    .read(log.start_offset(), progress.high_watermark, usize::MAX)
                    .unwrap_or_else(|e| self.violation(format!("node {} group {group}: read: {e}", node.id)));
                self.stats.max_segments = self.stats.max_segments.max(log.segment_count());
                if log.log_start().index.0 > 0 {
                    self.stats.replicas_with_log_start += 1;
                }
                logs.push((node.id, log.log_start(), progress, entries, chunk));
            }
            let (_, _, first_progress, _, _) = &logs[0];
            let high_watermark = first_progress.high_watermark;
            for (node, start, progress, entries, chunk) in &logs {
                if progress.high_watermark != high_watermark {
                    self.violation(format!(
                        "group {group}: node {node} ends at {progress:?}, node 1 at {first_progress:?}"
                    ));
                }
                // The read path: contiguous offsets from the log start to the high watermark,
                // every record from the batch of the proposal its value names.
                let mut next = start.offset.0;
                for slice in &chunk.slices {
                    for batch in BatchReader::new(slice.clone()) {
                        let batch = batch.unwrap_or_else(|e| self.violation(format!("node {node} group {group}: {e}")));
                        for record in batch.records().unwrap_or_else(|e| self.violation(format!("{e}"))) {
                            if record.offset != next {
                                self.violation(format!(
                                    "node {node} group {group}: record at offset {} where {next} was due",
                                    record.offset
                                ));
                            }
                            next += 1;
                        }
                    }
                }
                if next != high_watermark.0 {
                    self.violation(format!(
                        "node {node} group {group}: read up to {next}, high watermark {high_watermark}"
                    ));
                }
                // Every stored entry: canonical, and if it holds records, a proposal's batch,
                // neither refused nor stored twice, at the offsets it was acknowledged with.
                let mut holds = BTreeMap::new();
                for entry in entries {
                    if !self.compare_canon(*node, group, entry, "at the end") {
                        self.violation(format!(
                            "node {node} group {group}: entry {} was never visible",
                            entry.index
                        ));
                    }
                    self.stats.digest ^= entry.term.0.wrapping_mul(entry.index.0);
                    if entry.kind != BatchKind::Records {
                        continue;
                    }
                    let what = format!("node {node} group {group} entry {}", entry.index);
                    let id = proposal_id(&entry.data)
                        .filter(|id| *id < self.proposals.len())
                        .unwrap_or_else(|| self.violation(format!("{what}: not a batch any client proposed")));
                    self.check_records_entry(entry, id, &what);
                    let proposal = &self.proposals[id];
                    if proposal.group != group {
                        self.violation(format!("{what}: proposal {id} was for group {}", proposal.group));
                    }
                    if let Some(other) = holds.insert(id, entry.index) {
                        self.violation(format!("{what}: proposal {id} stored twice (also at {other})"));
                    }
                    match proposal.outcome {
                        Outcome::Refused => {
                            self.violation(format!("{what}: proposal {id} was refused, yet it is stored"))
                        }
                        Outcome::Acked(committed) => {
                            let header = parse_header(&entry.data).expect("checked");
                            if committed.index != entry.index
                                || committed.base_offset.0 != header.base_offset
                                || committed.next_offset.0 != header.next_offset()
                            {
                                self.violation(format!(
                                    "{what}: proposal {id} ({:?}) acknowledged as {committed:?}, stored with {header:?}",
                                    proposal.acks
                                ));
                            }
                        }
                        Outcome::Pending | Outcome::Unknown => {}
                    }
                }
                for (id, proposal) in self.proposals.iter().enumerate() {
                    let Outcome::Acked(committed) = proposal.outcome else {
                        continue;
                    };
                    if proposal.group != group || proposal.acks != Acks::All {
                        continue;
                    }
                    if committed.index <= start.index {
                        if committed.next_offset > start.offset {
                            self.violation(format!(
                                "node {node} group {group}: acknowledged proposal {id} {committed:?} is neither stored nor below the log start {start:?}"
                            ));
                        }
                        continue;
                    }
                    if holds.get(&id) != Some(&committed.index) {
                        self.violation(format!(
                            "node {node} group {group}: acknowledged proposal {id} {committed:?} is lost (found at {:?})",
                            holds.get(&id)
                        ));
                    }
                }
            }
            // The replicas' logs are identical where they overlap.
            let last = logs[0].3.last().map(|e| e.index);
            for (node, _, _, entries, _) in &logs {
                if entries.last().map(|e| e.index) != last {
                    self.violation(format!(
                        "group {group}: node {node} ends at {:?}, node 1 at {last:?}",
                        entries.last().map(|e| e.index)
                    ));
                }
            }
            self.stats.entries += last.map_or(0, |i| i.0);
        }
    }

    /// Every node's stored entries per group: (first index, last index, a hash of the entries).
    fn log_fingerprints(&self) -> Vec<(NodeId, GroupId, RaftIndex, RaftIndex, u64)> {
        let mut prints = Vec::new();
        for node in &self.nodes {
            let Some(running) = node.running.as_ref() else {
                continue;
            };
            for (group, handle) in &running.handles {
                let log = read_log(handle.log());
                let mut hash = 0xCBF2_9CE4_8422_2325;
                for entry in log
                    .entries(log.first_index(), log.last_index().next(), None)
                    .unwrap_or_default()
                {
                    fnv(&mut hash, entry.index.0);
                    fnv(&mut hash, entry.term.0);
                    for byte in entry.data.iter() {
                        fnv(&mut hash, u64::from(*byte));
                    }
                }
                prints.push((node.id, *group, log.first_index(), log.last_index(), hash));
            }
        }
        prints
    }

    fn run(mut self) -> Stats {
        for index in 0..self.nodes.len() {
            self.start_node(index);
        }
        while self.step < self.scenario.fault_steps {
            self.run_step();
        }
        self.proposing = false;
        self.heal();
        self.settle();
        self.probe();
        self.settle();
        self.verify_final();

        // A clean stop and start of every node changes no log and loses nothing.
        let before = self.log_fingerprints();
        for index in 0..self.nodes.len() {
            self.clean_close(index);
        }
        self.event("clean close of every node".into());
        for index in 0..self.nodes.len() {
            self.start_node(index);
        }
        let after = self.log_fingerprints();
        if before != after {
            self.violation(format!(
                "a clean restart changed the logs:\n  before {before:?}\n  after  {after:?}"
            ));
        }
        self.settle();
        self.probe();
        self.settle();
        self.verify_final();
        self.stats.leaders = self.leaders.len() as u64;
        for (_, _, first, last, hash) in self.log_fingerprints() {
            fnv(&mut self.stats.digest, first.0 ^ last.0.rotate_left(17) ^ hash);
        }
        for node in &mut self.nodes {
            if let Some(mut running) = node.running.take() {
                running.shard.close_all();
            }
        }
        self.stats
    }
}

fn run_seed(seed: u64, fault_steps: u64) -> Stats {
    Sim::new(Scenario::from_seed(seed, fault_steps)).run()
}

fn parse_seeds(text: &str) -> Vec<u64> {
    if let Some((low, high)) = text.split_once("..") {
        let low: u64 = low.trim().parse().expect("WEIR_SIM_SEEDS: a..b");
        let high: u64 = high.trim().parse().expect("WEIR_SIM_SEEDS: a..b");
        return (low..high).collect();
    }
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("WEIR_SIM_SEEDS: comma-separated seeds"))
        .collect()
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("WEIR_SIM_SEED") {
        return vec![seed.trim().parse().expect("WEIR_SIM_SEED: a number")];
    }
    match std::env::var("WEIR_SIM_SEEDS") {
        Ok(seeds) => parse_seeds(&seeds),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

fn fault_steps() -> u64 {
    std::env::var("WEIR_SIM_STEPS")
        .map(|steps| steps.trim().parse().expect("WEIR_SIM_STEPS: a number"))
        .unwrap_or(FAULT_STEPS)
}

/// Runs the seeds on two threads; a failing seed is named in the panic message.
#[test]
fn seeded_clusters_keep_every_acknowledged_write() {
    let seeds = seeds();
    let steps = fault_steps();
    let queue = Mutex::new(seeds.clone());
    let failed = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 2);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(seed) = queue.lock().unwrap().pop() else {
                    return;
                };
                let started = Instant::now();
                match std::panic::catch_unwind(|| run_seed(seed, steps)) {
                    Ok(stats) => eprintln!("simulation seed {seed}: ok in {:.1?}: {stats:?}", started.elapsed()),
                    Err(_) => {
                        eprintln!("simulation seed {seed} FAILED; rerun with WEIR_SIM_SEED={seed}");
                        failed.lock().unwrap().push(seed);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "simulation seeds failed: {failed:?} (rerun one with WEIR_SIM_SEED=<seed>)"
    );
}

/// A seed reproduces its run: the same messages are delivered and the same logs result.
#[test]
fn a_seed_reproduces_its_run() {
    let seed = 1001;
    let first = run_seed(seed, 400);
    let second = run_seed(seed, 400);
    assert_eq!(first.digest, second.digest, "seed {seed}: {first:?} vs {second:?}");
    assert!(first.messages > 0 && first.acked_all > 0, "{first:?}");
}

#[test]
fn seed_lists_parse() {
    assert_eq!(parse_seeds("3..6"), vec![3, 4, 5]);
    assert_eq!(parse_seeds("7, 9,11"), vec![7, 9, 11]);
}

/// The smallest reproduction of what the simulation found first: a crash after retention
/// deleted segments beyond the commit index of the last state-file write (the commit is stored
/// lazily, with term and vote changes) left a log start above the stored commit, and raft-rs
/// refused to start the replica (`hs.commit 0 is out of range [..]`, a panic in `open_group`).
#[test]
fn a_replica_reopens_after_a_crash_that_followed_retention() {
    let dir = sim_dir();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let config = RaftConfig {
        threads: 1,
        ..RaftConfig::default()
    };
    let spec = || GroupSpec {
        id: GroupId(1),
        dir: dir.path().join("g1"),
        log_config: LogConfig {
            segment_bytes_max: SEGMENT_BYTES,
            retention_bytes: Some(2 * SEGMENT_BYTES),
            ..LogConfig::default()
        },
        voters: vec![NodeId(1)],
        preferred_leader: None,
        applier: None,
    };
    let (mailbox_sender, mailbox) = sync_channel(MAILBOX_MESSAGES_MAX);
    let mut shard = Shard::new(config.clone(), Arc::new(super::NoPeers));
    let (group, handle) = open_group(&config, &logger, spec(), mailbox_sender.clone()).unwrap();
    shard.round([Command::AddGroup(Box::new(group))], Due::default());
    let mut replies = Vec::new();
    for i in 0..400 {
        let mut builder = BatchBuilder::new();
        builder.push(EPOCH_MS + i, None, Some(&[b'v'; 1000]), &[]).unwrap();
        replies.push(handle.propose(builder.finish(), Acks::All).unwrap());
        shard.round(mailbox.try_iter().collect::<Vec<_>>(), Due::default());
    }
    shard.round(
        Vec::new(),
        Due {
            housekeeping: Some(EPOCH_MS),
            ..Due::default()
        },
    );
    for mut reply in replies {
        assert!(matches!(reply.try_recv(), Ok(Ok(_))));
    }
    let progress = handle.progress();
    assert!(
        progress.log_start > Offset(0),
        "retention deleted segments: {progress:?}"
    );
    // Crash: no close_all.
    drop((shard, handle, mailbox));

    let (group, handle) = open_group(&config, &logger, spec(), mailbox_sender).unwrap();
    let mut shard = Shard::new(config, Arc::new(super::NoPeers));
    shard.round([Command::AddGroup(Box::new(group))], Due::default());
    let reopened = handle.progress();
    assert_eq!(reopened.log_start, progress.log_start);
    assert_eq!(read_log(handle.log()).next_offset(), Offset(400));
}

/// Five nodes of one group driven message by message, for interleavings the seeded runs reach
/// only by luck.
struct Directed {
    net: Arc<Mutex<Net>>,
    nodes: Vec<(Shard, Receiver<Command>, GroupHandle)>,
    _dir: tempfile::TempDir,
}

impl Directed {
    const GROUP: GroupId = GroupId(1);

    fn new(election_ticks: [usize; 5]) -> Self {
        let dir = sim_dir();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let net = Arc::new(Mutex::new(Net::default()));
        let mut nodes = Vec::new();
        for (index, ticks) in election_ticks.into_iter().enumerate() {
            let id = NodeId(index as u64 + 1);
            let config = RaftConfig {
                node_id: id,
                election_ticks: ticks,
                election_ticks_max: Some(ticks + 1),
                heartbeat_ticks: 2,
                message_bytes_max: 16 << 10,
                ..RaftConfig::default()
            };
            let spec = GroupSpec {
                id: Self::GROUP,
                dir: dir.path().join(format!("n{}", id.0)),
                log_config: LogConfig {
                    segment_bytes_max: SEGMENT_BYTES,
                    ..LogConfig::default()
                },
                voters: (1..=5).map(NodeId).collect(),
                preferred_leader: None,
                applier: None,
            };
            let (mailbox_sender, mailbox) = sync_channel(MAILBOX_MESSAGES_MAX);
            let transport = Arc::new(SimTransport {
                node: id,
                net: net.clone(),
            });
            let mut shard = Shard::new(config.clone(), transport);
            let (group, handle) = open_group(&config, &logger, spec, mailbox_sender).unwrap();
            shard.round([Command::AddGroup(Box::new(group))], Due::default());
            nodes.push((shard, mailbox, handle));
        }
        Self { net, nodes, _dir: dir }
    }

    /// One round of node `id` with `messages` delivered; returns what it sent.
    fn round(&mut self, id: u64, messages: Vec<Message>, tick: bool) -> Vec<Message> {
        let (shard, mailbox, _) = &mut self.nodes[id as usize - 1];
        let mut commands: Vec<Command> = mailbox.try_iter().collect();
        commands.extend(messages.into_iter().map(|message| Command::Step {
            group: Self::GROUP,
            message,
        }));
        shard.round(commands, Due { tick, ..Due::default() });
        lock(&self.net)
            .outbox
            .drain(..)
            .map(|(_, _, message)| message)
            .collect()
    }

    fn handle(&self, id: u64) -> &GroupHandle {
        &self.nodes[id as usize - 1].2
    }

    /// Rounds of `nodes` until nothing is in flight among them (ticking them `ticks` times
    /// first); messages to other nodes are kept in `held`.
    fn exchange(&mut self, nodes: &[u64], ticks: usize, held: &mut Vec<Message>) {
        let mut in_flight = Vec::new();
        for tick in 0..ticks + 100 {
            for &id in nodes {
                let (mine, rest): (Vec<Message>, Vec<Message>) =
                    in_flight.into_iter().partition(|m: &Message| m.to == id);
                in_flight = rest;
                let sent = self.round(id, mine, tick < ticks);
                for message in sent {
                    if nodes.contains(&message.to) {
                        in_flight.push(message);
                    } else {
                        held.push(message);
                    }
                }
            }
            if tick >= ticks && in_flight.is_empty() {
                return;
            }
        }
        panic!("messages still in flight among {nodes:?}");
    }

    fn batch(tag: u64) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        builder
            .push(
                EPOCH_MS,
                None,
                Some(format!("p{tag}r0{}", ".".repeat(300)).as_bytes()),
                &[],
            )
            .unwrap();
        builder.finish()
    }
}

/// Regression test for a hazard in the driver, found while building this simulation (fixed:
/// a ready that rewrites the log gives its messages' entries their own copies). Entries that
/// raft-rs reads from the log for a MsgAppend are zero-copy views of the mapped segments, and a
/// round sends its messages (the transport encodes them) only after it appended and flushed.
/// When one round of an old leader first answers a follower's rejection (a MsgAppend built from
/// views of its uncommitted tail) and then steps the new leader's conflicting entries, the
/// append truncates and rewrites that tail before the stale MsgAppend is encoded: the follower
/// gets other bytes under the old entries' index and term, fails the CRC/length check in
/// `append` and takes its replica out of service until the broker restarts (or, should the
/// bytes happen to form a valid batch of the same length, stores them; such entries are never
/// committed, but they are not what the old leader wrote).
#[test]
fn an_old_leader_does_not_send_entries_its_round_truncated() {
    // Node 1 leads first; among nodes 3-5, node 3 times out first.
    let mut cluster = Directed::new([10, 40, 15, 50, 60]);
    let mut held = Vec::new();
    cluster.exchange(&[1, 2, 3, 4, 5], 40, &mut held);
    assert_eq!(cluster.handle(1).progress().role, Role::Leader);
    let term = cluster.handle(1).progress().term;
    for tag in 0..3 {
        cluster.handle(1).propose(Directed::batch(tag), Acks::All).unwrap();
    }
    cluster.exchange(&[1, 2, 3, 4, 5], 0, &mut held);
    let committed = cluster.handle(1).progress().commit_index;
    assert!(committed.0 >= 4, "{:?}", cluster.handle(1).progress());

    // Node 1 (still leading in its term) appends three more entries that reach nobody.
    for tag in 3..6 {
        cluster.handle(1).propose(Directed::batch(tag), Acks::All).unwrap();
    }
    let lost = cluster.round(1, Vec::new(), false);
    assert!(lost.iter().any(|m| !m.entries.is_empty()));
    assert_eq!(
        read_log(cluster.handle(1).log()).last_index(),
        RaftIndex(committed.0 + 3)
    );

    // Nodes 3-5 elect a leader of a later term, whose first entry conflicts with node 1's tail.
    let mut to_old_side = Vec::new();
    cluster.exchange(&[3, 4, 5], 200, &mut to_old_side);
    let leader = (3..=5)
        .find(|id| cluster.handle(*id).progress().role == Role::Leader)
        .expect("nodes 3-5 elect a leader");
    let append = to_old_side
        .into_iter()
        .find(|m| {
            m.from == leader
                && m.to == 1
                && m.get_msg_type() == MessageType::MsgAppend
                && m.index == committed.0
                && !m.entries.is_empty()
        })
        .expect("the new leader's append to node 1");
    assert!(append.term > term.0);

    // Node 1 probes node 2 (which lacks the tail) until node 2 rejects.
    let mut rejection = None;
    let mut to_node_2 = cluster.round(1, Vec::new(), true);
    to_node_2.extend(cluster.round(1, Vec::new(), true));
    for _ in 0..10 {
        let answers = cluster.round(2, to_node_2.drain(..).filter(|m| m.to == 2).collect(), false);
        if let Some(reject) = answers
            .iter()
            .find(|m| m.get_msg_type() == MessageType::MsgAppendResponse && m.reject)
        {
            rejection = Some(reject.clone());
            break;
        }
        to_node_2 = cluster.round(1, answers, false);
    }
    let rejection = rejection.expect("node 2 rejects node 1's probe");

    // One round of node 1: the rejection (node 1 sends its tail to node 2 from the log), then the
    // new leader's append (node 1 follows it and overwrites its tail).
    let sent = cluster.round(1, vec![rejection, append], false);
    let stale = sent
        .into_iter()
        .filter(|m| m.to == 2 && m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty())
        .collect::<Vec<_>>();
    assert!(!stale.is_empty(), "node 1 sent its tail to node 2 in that round");
    // What node 1 sent must be what its log held when raft-rs read it: unstamped (from memory)
    // or stamped with the entry's own index and term.
    let mut rewritten = Vec::new();
    for message in &stale {
        for entry in message.entries.iter().filter(|e| !e.data.is_empty()) {
            let header = parse_header(&entry.data);
            let intact = header.as_ref().is_ok_and(|h| {
                h.length as usize == entry.data.len()
                    && (h.index == 0 || (h.index == entry.index && h.term == entry.term))
            });
            if !intact {
                rewritten.push(format!(
                    "entry {} (term {}, {} bytes) holds {header:?}",
                    entry.index,
                    entry.term,
                    entry.data.len()
                ));
            }
        }
    }
    cluster.round(2, stale, false);
    let progress = cluster.handle(2).progress();
    assert!(
        rewritten.is_empty() && progress.failure.is_none(),
        "node 1's MsgAppend of term {} to node 2 was encoded after the same round rewrote its log:\n  {}\nnode 2 after stepping it: {progress:?}",
        term,
        rewritten.join("\n  ")
    );
}
