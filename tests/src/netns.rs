//! [`NetLab`]: a private network of Linux network namespaces, one per broker, to cut a node
//! off from the others for real (packets dropped by the kernel, as in a network partition).
//!
//! # Layout
//!
//! ```text
//!   namespace <prefix>-c (the test's clients)          namespace <prefix>-n1 (node 1)
//!   br0 10.77.0.254/24 --- v1 ====(veth pair)==== eth0 10.77.0.1/24
//!                      --- v2 ====(veth pair)==== eth0 10.77.0.2/24    (namespace <prefix>-n2)
//!                      --- v3 ====(veth pair)==== eth0 10.77.0.3/24    (namespace <prefix>-n3)
//! ```
//!
//! The bridge lives in a namespace of its own (the *client namespace*) rather than in the
//! host's: nothing is added to the host's interfaces, routes or firewall (whose FORWARD policy
//! may drop bridged traffic, as Docker's does), the fixed subnet cannot collide with the host's,
//! and concurrent runs cannot collide either, since each has its own namespaces. Names are
//! `weirt-<pid>-<n>-...`, unique per test process and lab.
//!
//! Brokers run with `ip netns exec <node namespace> weir-broker ...` ([`NetLab::command_prefix`];
//! `ip` execs the broker, so the child's pid is the broker's). The test's own clients must run
//! on threads that entered the client namespace ([`enter`]); a socket belongs to the network
//! namespace of the thread that creates it, and threads inherit their creator's namespace, so
//! a tokio runtime built on such a thread keeps all its connections there.
//!
//! [`NetLab::isolate`] cuts a node off in both directions: iptables rules in its namespace drop
//! everything in and out of its `eth0` (or, without iptables, `eth0` goes down). Connections to
//! its own address from inside its namespace go over `lo` and keep working, so a client on a
//! thread in the node's namespace talks to that node only: the minority side of a partition.
//!
//! Dropping the lab deletes every namespace it made, which removes the veth pairs, the bridge
//! and the iptables rules with them; also when the test fails or panics. Namespaces left by a
//! test process that was killed (no destructor ran) are deleted by the next lab.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::process;

/// Subnet of every lab (private to its namespaces): node `i` is `10.77.0.i`.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The bridge's address in the client namespace.
const CLIENT_HOST: u8 = 254;
/// Prefix of every namespace a lab creates; followed by the test process's pid.
const NAME_PREFIX: &str = "weirt-";
/// Bound on one `ip` or `iptables` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Where `ip netns add` mounts the namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Labs made by this process so far (names stay unique when a process makes several).
static LABS: AtomicU32 = AtomicU32::new(0);

/// The tools a lab needs, found on this machine.
#[derive(Debug, Clone)]
pub struct Tools {
    ip: PathBuf,
    /// `None`: cuts bring the link down instead of dropping packets.
    iptables: Option<PathBuf>,
}

/// Why a lab cannot be made here (not root, no `ip`), or the tools it would use. A test that
/// gets `Err` should say "skipped: <reason>" and pass without its assertions.
pub fn tools() -> std::result::Result<Tools, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("network namespaces need root (running as uid {euid})"));
    }
    let ip = find_tool("ip").ok_or("the `ip` tool (iproute2) is not installed")?;
    Ok(Tools {
        ip,
        iptables: find_tool("iptables"),
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// A lab cannot be made on this machine although the tools are there (no permission to
/// create namespaces); a test may treat it as a reason to skip, like an `Err` from [`tools`].
#[derive(Debug, Clone)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// How a node is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMethod {
    /// iptables DROP of everything in and out of the node's `eth0`: peers see silence.
    IptablesDrop,
    /// The node's `eth0` down: its own connects fail at once, peers see silence.
    LinkDown,
}

/// A network of namespaces, one per node plus the client namespace; see the module doc.
#[derive(Debug)]
pub struct NetLab {
    tools: Tools,
    prefix: String,
    nodes: usize,
    /// Every namespace created so far, deleted on drop (nodes first, the client's last).
    created: Vec<String>,
    isolated: Vec<bool>,
}

impl NetLab {
    /// Creates the client namespace with the bridge, and one namespace per node (ids
    /// `1..=nodes`) joined to it. A failure leaves nothing behind.
    pub fn create(tools: Tools, nodes: usize) -> Result<Self> {
        if nodes == 0 || nodes >= usize::from(CLIENT_HOST) {
            bail!("a lab has 1 to {} nodes, not {nodes}", CLIENT_HOST - 1);
        }
        sweep_stale(&tools);
        let prefix = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            tools,
            prefix,
            nodes,
            created: Vec::new(),
            isolated: vec![false; nodes],
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let client = self.client_namespace();
        // The first namespace tells whether this machine allows them at all (a container may
        // run tests as a root without CAP_SYS_ADMIN).
        if let Err(error) = self.add_namespace(&client) {
            return Err(Unsupported(format!("cannot create a network namespace: {error:#}")).into());
        }
        let bridge_address = format!("{}/24", address(CLIENT_HOST));
        self.ip(&["-n", &client, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &client, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &client, "addr", "add", &bridge_address, "dev", "br0"])?;
        self.ip(&["-n", &client, "link", "set", "br0", "up"])?;
        for id in 1..=self.nodes as u64 {
            let node = self.node_namespace(id);
            self.add_namespace(&node)?;
            let port = format!("v{id}");
            let node_address = format!("{}/24", self.node_address(id));
            self.ip(&["-n", &node, "link", "set", "lo", "up"])?;
            self.ip(&[
                "-n", &client, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node,
            ])?;
            self.ip(&["-n", &client, "link", "set", &port, "master", "br0"])?;
            self.ip(&["-n", &client, "link", "set", &port, "up"])?;
            self.ip(&["-n", &node, "addr", "add", &node_address, "dev", "eth0"])?;
            self.ip(&["-n", &node, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn add_namespace(&mut self, name: &str) -> Result<()> {
        self.ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    /// The namespace the test's clients should run in ([`enter`]): it reaches every node that
    /// is not isolated.
    pub fn client_namespace(&self) -> String {
        format!("{}-c", self.prefix)
    }

    /// Node `id`'s namespace (ids `1..=N`).
    pub fn node_namespace(&self, id: u64) -> String {
        format!("{}-n{id}", self.prefix)
    }

    /// Node `id`'s address on the lab's network.
    pub fn node_address(&self, id: u64) -> Ipv4Addr {
        let host = u8::try_from(id).ok().filter(|host| *host < CLIENT_HOST);
        address(host.expect("node ids are below 254"))
    }

    /// What to run the broker of node `id` under: `ip netns exec <its namespace>`.
    pub fn command_prefix(&self, id: u64) -> Vec<OsString> {
        vec![
            self.tools.ip.clone().into(),
            "netns".into(),
            "exec".into(),
            self.node_namespace(id).into(),
        ]
    }

    /// How [`NetLab::isolate`] cuts a node off on this machine.
    pub fn cut_method(&self) -> CutMethod {
        match self.tools.iptables {
            Some(_) => CutMethod::IptablesDrop,
            None => CutMethod::LinkDown,
        }
    }

    /// Cuts node `id` off from every other namespace, both directions.
    pub fn isolate(&mut self, id: u64) -> Result<()> {
        let index = self.index(id)?;
        if self.isolated[index] {
            bail!("node {id} is already isolated");
        }
        self.set_cut(id, true)?;
        self.isolated[index] = true;
        Ok(())
    }

    /// Undoes [`NetLab::isolate`].
    pub fn heal(&mut self, id: u64) -> Result<()> {
        let index = self.index(id)?;
        if !self.isolated[index] {
            bail!("node {id} is not isolated");
        }
        self.set_cut(id, false)?;
        self.isolated[index] = false;
        Ok(())
    }

    fn set_cut(&self, id: u64, cut: bool) -> Result<()> {
        let node = self.node_namespace(id);
        match &self.tools.iptables {
            Some(iptables) => {
                let action = if cut { "-A" } else { "-D" };
                let iptables = iptables.as_os_str().to_owned();
                let exec = |chain: &str, direction: &str| {
                    let mut args: Vec<OsString> = ["netns", "exec", &node].iter().map(OsString::from).collect();
                    args.push(iptables.clone());
                    args.extend(["-w", action, chain, direction, "eth0", "-j", "DROP"].map(OsString::from));
                    run(&self.tools.ip, &args)
                };
                exec("INPUT", "-i")?;
                exec("OUTPUT", "-o")?;
            }
            None => {
                let state = if cut { "down" } else { "up" };
                self.ip(&["-n", &node, "link", "set", "eth0", state])?;
            }
        }
        Ok(())
    }

    fn index(&self, id: u64) -> Result<usize> {
        match usize::try_from(id) {
            Ok(id) if (1..=self.nodes).contains(&id) => Ok(id - 1),
            _ => bail!("no node {id} in a lab of {} nodes", self.nodes),
        }
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        run(&self.tools.ip, &args)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // The node namespaces first: a veth pair goes with either end's namespace, the bridge
        // with the client namespace. A namespace whose processes still run lives on, unnamed,
        // until they exit; the brokers are killed before the lab is dropped.
        for name in self.created.iter().rev() {
            let args = [OsString::from("netns"), "del".into(), name.into()];
            if let Err(error) = run(&self.tools.ip, &args) {
                eprintln!("weir-tests: could not delete network namespace {name}: {error:#}");
            }
        }
    }
}

/// Moves the calling thread (only it) into network namespace `name`. Threads it spawns later
/// start in that namespace too.
pub fn enter(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    let namespace = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns takes a file descriptor that stays open for the call and changes only the
    // calling thread's network namespace; no memory is involved.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering network namespace {name}"));
    }
    Ok(())
}

/// Runs `work` on a new thread inside network namespace `name` and returns its handle.
pub fn spawn_in<T, F>(name: &str, thread_name: &str, work: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || {
            enter(&name)?;
            work()
        })
        .context("spawning a thread")
}

fn address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
}

/// Deletes namespaces left by labs of test processes that no longer exist (killed before
/// their labs' destructors ran). Best effort: a failure here only leaves them in place.
fn sweep_stale(tools: &Tools) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let args = [OsString::from("netns"), "del".into(), name.clone().into()];
        match run(&tools.ip, &args) {
            Ok(()) => eprintln!("weir-tests: deleted network namespace {name} left by a dead test process"),
            Err(error) => eprintln!("weir-tests: could not delete stale network namespace {name}: {error:#}"),
        }
    }
}

/// Runs `program args...`, bounded by [`COMMAND_TIMEOUT`]; fails with its output if it fails.
fn run(program: &Path, args: &[OsString]) -> Result<()> {
    let line = format!(
        "{} {}",
        program.display(),
        args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = process::spawn(command).with_context(|| format!("running {line}"))?;
    let Some(status) = process::wait_timeout(&mut child, COMMAND_TIMEOUT)? else {
        process::kill_and_reap(&mut child)?;
        bail!("`{line}` did not finish within {COMMAND_TIMEOUT:?}");
    };
    if !status.success() {
        // The output is small (an error message): the pipes hold it until it is read.
        let mut output = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut output);
        }
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut output);
        }
        bail!("`{line}` failed ({status}): {}", output.trim());
    }
    Ok(())
}
