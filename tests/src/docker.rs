//! The deployment kit under test: the local image (`deploy/docker/build-local-image.sh`) and a
//! three-node cluster from `deploy/docker-compose.yml`, run for real on the machine's Docker
//! engine.
//!
//! [`ComposeCluster::up`] starts the compose file under a project name of the test's own, on
//! host ports found free at that moment and a network subnet no other network uses, so that two
//! runs do not collide; dropping it runs `down -v` (containers, network and volumes go, also when
//! the test fails) and removes the image tag the test built. Every docker command is bounded.
//!
//! Tests that need Docker check [`engine_answers`] first and skip with a printed message when no
//! engine answers.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use weir_client::{Client, ClientConfig, ClusterStatus, TopicDescription};
use weir_proto::v1 as proto;

use crate::binaries;
use crate::process;
use crate::wait::until;

/// Bound on one docker command (a compose up or down of three containers, a container stop
/// with its 30 s grace period).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on building the image (copying and stripping the binaries, `docker build`).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on one admin request to one node through its published port.
const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The nodes of the compose file: services `weir1`..`weir3`, node ids 1..=3.
pub const NODES: [u64; 3] = [1, 2, 3];

/// What one command printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn ensure_success(self, what: &str) -> Result<Self> {
        if !self.status.success() {
            bail!(
                "{what} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs `program args` with `env` added, waiting up to `timeout` (killing it after that).
pub fn run(program: &str, args: &[&str], env: &[(String, String)], timeout: Duration) -> Result<Output> {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = process::spawn(command)?;
    let stdout = read_all(child.stdout.take().context("stdout is not piped")?);
    let stderr = read_all(child.stderr.take().context("stderr is not piped")?);
    let status = process::wait_timeout(&mut child, timeout)?;
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => process::kill_and_reap(&mut child)?,
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        bail!(
            "`{program} {}` did not finish within {timeout:?} (killed it); stderr:\n{}",
            args.join(" "),
            output.stderr
        );
    }
    Ok(output)
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn docker(args: &[&str]) -> Result<Output> {
    run("docker", args, &[], DOCKER_TIMEOUT)?.ensure_success(&format!("docker {}", args.join(" ")))
}

/// Whether a Docker engine answers `docker info` (within 20 s).
pub fn engine_answers() -> bool {
    run(
        "docker",
        &["info", "--format", "{{.ServerVersion}}"],
        &[],
        Duration::from_secs(20),
    )
    .is_ok_and(|output| output.status.success() && !output.stdout.trim().is_empty())
}

/// The compose command: `docker compose` (the plugin) or `docker-compose` (the standalone tool,
/// as Debian packages it); `None` if neither runs.
pub fn compose_command() -> Option<Vec<String>> {
    let answers = |program: &str, args: &[&str]| {
        run(program, args, &[], Duration::from_secs(20)).is_ok_and(|output| output.status.success())
    };
    if answers("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if answers("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// The repository root (the tests crate's parent).
pub fn repository() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?
        .to_path_buf())
}

/// An image tag the test built with `deploy/docker/build-local-image.sh`; dropping it removes
/// the tag (the layers may stay cached until nothing uses them).
#[derive(Debug)]
pub struct LocalImage {
    pub tag: String,
}

impl LocalImage {
    /// Builds the local image tagged `tag` from the binaries the other process tests run
    /// (`target/<profile>/`, or `WEIR_BROKER_BIN` and `WEIR_CLI_BIN`): the debug binaries of
    /// `cargo test` load the same libraries as release ones, and a release build would cost
    /// minutes.
    pub fn build(tag: &str) -> Result<Self> {
        let script = repository()?.join("deploy/docker/build-local-image.sh");
        let env = vec![
            ("WEIR_BROKER_BIN".to_owned(), path_string(&binaries::broker()?)?),
            ("WEIR_CLI_BIN".to_owned(), path_string(&binaries::cli()?)?),
        ];
        let output =
            run(&path_string(&script)?, &[tag], &env, BUILD_TIMEOUT)?.ensure_success("build-local-image.sh")?;
        eprint!("{}", output.stdout);
        Ok(Self { tag: tag.to_owned() })
    }
}

impl Drop for LocalImage {
    fn drop(&mut self) {
        if let Err(error) = docker(&["rmi", &self.tag]) {
            eprintln!("removing image {} failed: {error:#}", self.tag);
        }
    }
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A unique name for this run: `prefix` + process id + clock, lowercase letters and digits (valid
/// as a compose project name and an image tag).
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("{prefix}{}x{nanos:x}", std::process::id())
}

/// `deploy/docker-compose.yml` running under a project of its own. Dropping it takes everything
/// down (`down -v`: containers, network, volumes).
#[derive(Debug)]
pub struct ComposeCluster {
    compose: Vec<String>,
    file: PathBuf,
    pub project: String,
    pub image: String,
    env: Vec<(String, String)>,
    /// Host ports of nodes 1, 2, 3.
    pub ports: Vec<u16>,
    /// The compose network's gateway: the address the nodes know each other (and clients them) by.
    pub gateway: String,
    /// The compose network's name as Docker knows it.
    pub network: String,
}

impl ComposeCluster {
    /// `compose up -d` of `deploy/docker-compose.yml` as project `project`, running `image`, on
    /// free host ports and a free /24 in 172.29.0.0/16;
    /// tries another subnet and ports when Docker says they are taken (another run got them).
    pub fn up(compose: Vec<String>, project: &str, image: &str) -> Result<Self> {
        let file = repository()?.join("deploy/docker-compose.yml");
        let mut cluster = Self {
            compose,
            file,
            project: project.to_owned(),
            image: image.to_owned(),
            env: Vec::new(),
            ports: Vec::new(),
            gateway: String::new(),
            network: String::new(),
        };
        let taken = taken_subnets();
        let seed = std::process::id() as usize + unique_nanos();
        let mut last_error = None;
        for attempt in 0..8 {
            let third = (seed + attempt * 37) % 256;
            let subnet = format!("172.29.{third}.0/24");
            if taken.iter().any(|t| t == &subnet) {
                continue;
            }
            cluster.gateway = format!("172.29.{third}.1");
            cluster.ports = crate::cluster::free_ports(3)?;
            cluster.env = vec![
                ("WEIR_IMAGE".into(), image.to_owned()),
                ("WEIR_SUBNET".into(), subnet),
                ("WEIR_GATEWAY".into(), cluster.gateway.clone()),
                ("WEIR_HOST".into(), cluster.gateway.clone()),
                ("WEIR_LOG".into(), "info,raft=warn".into()),
            ];
            for (node, port) in NODES.iter().zip(&cluster.ports) {
                cluster.env.push((format!("WEIR_PORT_{node}"), port.to_string()));
            }
            match cluster.compose(&["up", "-d", "--no-build"]) {
                Ok(_) => {
                    cluster.network = cluster.network_of(1)?;
                    return Ok(cluster);
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    // Leave nothing half-created behind before the next attempt.
                    let _ = cluster.compose(&["down", "-v", "--remove-orphans"]);
                    let retry = ["overlap", "already in use", "already allocated"]
                        .iter()
                        .any(|sign| message.contains(sign));
                    if !retry {
                        return Err(error);
                    }
                    eprintln!("compose up attempt {attempt} collided with another network or port; trying again");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free subnet in 172.29.0.0/16")))
            .context("compose up did not find a free subnet and ports in 8 attempts")
    }

    /// Runs the compose command with this project's file, name and settings.
    pub fn compose(&self, args: &[&str]) -> Result<Output> {
        let file = path_string(&self.file)?;
        let mut all: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        all.extend(["-f", &file, "-p", &self.project]);
        all.extend(args);
        run(&self.compose[0], &all, &self.env, DOCKER_TIMEOUT)?.ensure_success(&format!(
            "{} {}",
            self.compose.join(" "),
            args.join(" ")
        ))
    }

    /// The container id of node `node` (service `weir<node>`).
    pub fn container(&self, node: u64) -> Result<String> {
        let output = self.compose(&["ps", "-q", &format!("weir{node}")])?;
        let id = output.stdout.trim();
        if id.is_empty() {
            bail!("compose has no container for service weir{node}");
        }
        Ok(id.to_owned())
    }

    fn network_of(&self, node: u64) -> Result<String> {
        let container = self.container(node)?;
        let output = docker(&[
            "inspect",
            "--format",
            "{{range $name, $network := .NetworkSettings.Networks}}{{$name}} {{end}}",
            &container,
        ])?;
        output
            .stdout
            .split_whitespace()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("node {node}'s container is on no network"))
    }

    /// `docker <verb> <node's container>` (kill, start, stop, ...).
    pub fn docker_on(&self, verb: &[&str], node: u64) -> Result<Output> {
        let container = self.container(node)?;
        let mut args = verb.to_vec();
        args.push(&container);
        docker(&args)
    }

    /// Cuts node `node` off the compose network (`docker network disconnect`).
    pub fn disconnect(&self, node: u64) -> Result<()> {
        let container = self.container(node)?;
        docker(&["network", "disconnect", &self.network, &container])?;
        Ok(())
    }

    /// Connects node `node` to the compose network again; Docker puts its published port back.
    pub fn connect(&self, node: u64) -> Result<()> {
        let container = self.container(node)?;
        docker(&["network", "connect", &self.network, &container])?;
        Ok(())
    }

    /// Node `node`'s container state: `running`, `exited`, ... and its exit code.
    pub fn state(&self, node: u64) -> Result<(String, i64)> {
        let output = self.docker_on(&["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}"], node)?;
        let mut words = output.stdout.split_whitespace();
        let status = words.next().context("no state")?.to_owned();
        let code = words.next().context("no exit code")?.parse()?;
        Ok((status, code))
    }

    /// Node `node`'s health as Docker's health check last found it (`starting`, `healthy`, ...).
    pub fn health(&self, node: u64) -> Result<String> {
        let output = self.docker_on(
            &[
                "inspect",
                "--format",
                "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
            ],
            node,
        )?;
        Ok(output.stdout.trim().to_owned())
    }

    /// Waits until Docker reports every node healthy.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        until("every node healthy (docker health check)", timeout, || async {
            for node in NODES {
                let health = self.health(node)?;
                if health != "healthy" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// The last `lines` lines node `node` logged.
    pub fn logs_tail(&self, node: u64, lines: usize) -> String {
        match self.docker_on(&["logs", "--tail", &lines.to_string()], node) {
            Ok(output) => format!("{}{}", output.stdout, output.stderr),
            Err(error) => format!("(no logs: {error:#})"),
        }
    }

    /// The published ports, as a bootstrap list for clients on this host.
    pub fn bootstrap(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client settings that know every node's published port.
    pub fn client_config(&self, request_timeout: Duration, connect_timeout: Duration) -> Result<ClientConfig> {
        Ok(ClientConfig::builder()
            .bootstrap(&self.bootstrap())
            .request_timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .build()?)
    }

    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(
            self.client_config(Duration::from_secs(10), Duration::from_secs(1))?,
        )?)
    }

    fn endpoint(&self, node: u64) -> Result<String> {
        let index = NODES.iter().position(|n| *n == node).context("no such node")?;
        Ok(format!("http://127.0.0.1:{}", self.ports[index]))
    }

    /// `topic` as node `node` itself sees it (through its published port).
    pub async fn describe_on(&self, node: u64, topic: &str) -> Result<TopicDescription> {
        let endpoint = self.endpoint(node)?;
        let description = tokio::time::timeout(NODE_REQUEST_TIMEOUT, async {
            let mut admin = proto::admin_client::AdminClient::connect(endpoint).await?;
            let request = proto::DescribeTopicRequest { name: topic.to_owned() };
            anyhow::Ok(admin.describe_topic(request).await?.into_inner())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {NODE_REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("describe {topic} on node {node}"))?;
        Ok(description.into())
    }

    /// The cluster as node `node` sees it.
    pub async fn status_on(&self, node: u64) -> Result<ClusterStatus> {
        let endpoint = self.endpoint(node)?;
        let status = tokio::time::timeout(NODE_REQUEST_TIMEOUT, async {
            let mut admin = proto::admin_client::AdminClient::connect(endpoint).await?;
            anyhow::Ok(admin.cluster_status(proto::ClusterStatusRequest {}).await?.into_inner())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {NODE_REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("cluster status on node {node}"))?;
        Ok(status.into())
    }

    /// The leader of `topic`/`partition` when the node claiming it is named by every node that
    /// answers.
    pub async fn leader_of(&self, topic: &str, partition: u32) -> Result<Option<u64>> {
        let mut views = Vec::new();
        for node in NODES {
            if let Ok(description) = self.describe_on(node, topic).await {
                let leader = description
                    .partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .and_then(|p| p.leader);
                views.push((node, leader));
            }
        }
        let claimed: Vec<u64> = views
            .iter()
            .filter(|(node, leader)| *leader == Some(*node))
            .map(|(node, _)| *node)
            .collect();
        let [leader] = claimed[..] else {
            return Ok(None);
        };
        Ok(views
            .iter()
            .all(|(_, view)| view.is_none() || *view == Some(leader))
            .then_some(leader))
    }

    /// Waits until every node sees every node up, then until every replica of `topic` has
    /// caught up with the high watermarks its partitions' leaders have now.
    pub async fn wait_all_back(&self, topic: &str, partitions: u32, timeout: Duration) -> Result<()> {
        until("every node seeing every node up", timeout, || async {
            for observer in NODES {
                let status = self.status_on(observer).await?;
                let all_up = NODES
                    .iter()
                    .all(|id| status.nodes.iter().any(|n| n.node_id == *id && n.state == "up"));
                if !all_up {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
        let mut high_watermarks = Vec::new();
        for partition in 0..partitions {
            let leader = until(&format!("a leader for {topic}/{partition}"), timeout, || {
                self.leader_of(topic, partition)
            })
            .await?;
            let description = self.describe_on(leader, topic).await?;
            let hw = description
                .partitions
                .iter()
                .find(|p| p.partition == partition)
                .map(|p| p.high_watermark)
                .with_context(|| format!("node {leader} does not describe partition {partition}"))?;
            high_watermarks.push(hw);
        }
        self.wait_replicas_at(topic, &high_watermarks, timeout).await
    }

    /// Waits until every node's replica of every partition of `topic` has a leader and a high
    /// watermark of at least `min_high_watermarks[partition]`.
    pub async fn wait_replicas_at(&self, topic: &str, min_high_watermarks: &[u64], timeout: Duration) -> Result<()> {
        until(
            &format!("every replica of {topic} at high watermarks {min_high_watermarks:?}"),
            timeout,
            || async {
                for node in NODES {
                    let description = self.describe_on(node, topic).await?;
                    for p in &description.partitions {
                        let wanted = min_high_watermarks.get(p.partition as usize).copied().unwrap_or(0);
                        if p.leader.is_none() || p.high_watermark < wanted {
                            return Ok(None);
                        }
                    }
                }
                Ok(Some(()))
            },
        )
        .await
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        // The test harness shows this only for a failing test.
        for node in NODES {
            eprintln!(
                "--- last lines of node {node} ({}) ---\n{}",
                self.project,
                self.logs_tail(node, 15)
            );
        }
        if let Err(error) = self.compose(&["down", "-v", "--remove-orphans", "-t", "30"]) {
            eprintln!("compose down -v of {} failed: {error:#}", self.project);
        }
    }
}

fn unique_nanos() -> usize {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos() as usize)
}

/// Subnets of the engine's existing networks.
fn taken_subnets() -> Vec<String> {
    let Ok(ids) = docker(&["network", "ls", "-q"]) else {
        return Vec::new();
    };
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(ids);
    docker(&args).map_or_else(
        |_| Vec::new(),
        |output| output.stdout.split_whitespace().map(str::to_owned).collect(),
    )
}
