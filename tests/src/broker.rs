//! [`BrokerProcess`]: one `weir-broker` process on a data directory.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tonic::transport::Channel;
use weir_client::{Client, ClientConfig};
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::weir_client::WeirClient;

use crate::binaries;
use crate::cli::{self, CliOutput};
use crate::process;

/// How long a broker may take from spawn to its "listening on" line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM (flush, clean markers) before it is killed.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the broker's log shown in an error or after a failed test.
const LOG_TAIL_LINES: usize = 200;

/// A running (or stopped) `weir-broker` on one data directory.
///
/// The broker listens on `127.0.0.1:0`; [`BrokerProcess::address`] is the port it reported.
/// Its stderr (and stdout) go to a log file next to the data directory
/// (`<data_dir>.broker.log`), one section per start; its tail is printed when the value is
/// dropped (the test harness shows it only for a failing test). Dropping the value kills the
/// process (SIGKILL) if it is still running.
#[derive(Debug)]
pub struct BrokerProcess {
    /// The latest process; `None` only while the first one is being spawned.
    child: Option<Child>,
    data_dir: PathBuf,
    log_path: PathBuf,
    address: SocketAddr,
    /// The HTTP endpoint's address (`/metrics`, `/healthz`, `/readyz`) as the broker printed
    /// it; `None` when it is off. Unless the test passes `--http-listen` itself, the broker
    /// gets `--http-listen 127.0.0.1:0`, so that brokers on one machine never compete for the
    /// default port.
    http_address: Option<SocketAddr>,
    /// What `--listen` gets: `127.0.0.1:0` unless the test fixed the port (cluster nodes must
    /// know each other's addresses before they start).
    listen: String,
    extra_args: Vec<OsString>,
    /// Program and arguments the broker command is run under (empty: run the broker directly),
    /// e.g. `ip netns exec NAME` to start it in a network namespace. The wrapper must exec the
    /// broker in its own process, so that signals sent to the child reach the broker.
    command_prefix: Vec<OsString>,
    /// How many times a process was started on this data directory (sections in the log).
    starts: u32,
}

impl BrokerProcess {
    /// Starts a broker on `data_dir` (created by the broker if missing) with default settings
    /// and waits for it to listen.
    pub fn start(data_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::start_with_args(data_dir, Vec::<OsString>::new())
    }

    /// Like [`BrokerProcess::start`], with more command-line arguments (kept for restarts).
    pub fn start_with_args<I, S>(data_dir: impl Into<PathBuf>, extra_args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::start_listening(data_dir, "127.0.0.1:0", extra_args)
    }

    /// Like [`BrokerProcess::start_with_args`], listening on `listen` (kept for restarts).
    pub fn start_listening<I, S>(data_dir: impl Into<PathBuf>, listen: &str, extra_args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::start_wrapped(data_dir, listen, extra_args, Vec::<OsString>::new())
    }

    /// Like [`BrokerProcess::start_listening`], with the broker run under `command_prefix`
    /// (a program and its arguments, e.g. `ip netns exec NAME`; kept for restarts). The prefix
    /// must exec the broker rather than fork it: the child's pid is the one signalled.
    pub fn start_wrapped<I, S, P, Q>(
        data_dir: impl Into<PathBuf>,
        listen: &str,
        extra_args: I,
        command_prefix: P,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
        P: IntoIterator<Item = Q>,
        Q: Into<OsString>,
    {
        let data_dir = data_dir.into();
        let mut log_name = data_dir
            .file_name()
            .context("the data directory has no name")?
            .to_owned();
        log_name.push(".broker.log");
        let log_path = data_dir.with_file_name(log_name);
        let mut broker = Self {
            child: None,
            data_dir,
            log_path,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_address: None,
            listen: listen.to_owned(),
            extra_args: extra_args.into_iter().map(Into::into).collect(),
            command_prefix: command_prefix.into_iter().map(Into::into).collect(),
            starts: 0,
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// Starts the broker again on the same data directory, after [`BrokerProcess::kill9`] or
    /// [`BrokerProcess::terminate`]; waits for it to listen. The port may differ from before.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running()? {
            bail!("restart: the broker is still running; stop it with kill9() or terminate() first");
        }
        self.spawn()
    }

    /// The address the broker listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address of the HTTP endpoint, when it is on.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address
    }

    /// `GET path` on the HTTP endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let address = self.http_address.context("the broker's HTTP endpoint is off")?;
        http_get(address, path)
    }

    /// `127.0.0.1:PORT`, as `--bootstrap` and `ClientConfig::new` take it.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// `http://127.0.0.1:PORT`, for raw tonic clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the broker wrote to stdout and stderr so far, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What the current (latest) process wrote: the log's last section.
    pub fn current_log(&self) -> String {
        let log = self.log();
        let marker = section_marker(self.starts);
        match log.rfind(&marker) {
            Some(at) => log[at..].to_owned(),
            None => log,
        }
    }

    /// The process id of the current process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> Result<bool> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// A client library handle on this broker (connections are made on first use).
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(ClientConfig::new(&self.bootstrap())?)?)
    }

    /// A raw gRPC client of the data service.
    pub async fn data_client(&self) -> Result<WeirClient<Channel>> {
        let client = WeirClient::connect(self.endpoint())
            .await
            .with_context(|| format!("connecting to {}", self.endpoint()))?;
        Ok(client.max_decoding_message_size(64 << 20))
    }

    /// A raw gRPC client of the admin service.
    pub async fn admin_client(&self) -> Result<AdminClient<Channel>> {
        AdminClient::connect(self.endpoint())
            .await
            .with_context(|| format!("connecting to {}", self.endpoint()))
    }

    /// Runs `weir --bootstrap <this broker> <args>` with `stdin` as its input (bounded by
    /// [`cli::CLI_TIMEOUT`]).
    pub fn weir(&self, args: &[&str], stdin: &str) -> Result<CliOutput> {
        cli::weir(&self.bootstrap(), args, stdin)
    }

    /// SIGKILL, then reap the process: nothing gets flushed or closed.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("no broker process")?;
        process::kill_and_reap(child)
    }

    /// Sends `signal` to the current process (a no-op once it has exited and been reaped).
    /// SIGSTOP and SIGCONT pause and resume it; see also [`BrokerProcess::pause`].
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        let child = self.child.as_mut().context("no broker process")?;
        process::signal(child, signal)
    }

    /// SIGSTOP, and wait until the kernel reports every thread of the process stopped. It keeps
    /// its sockets open: the kernel still accepts connections and buffers requests for it,
    /// which it never answers until resumed.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        let pid = self.pid().context("no broker process")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid)? {
            if Instant::now() >= deadline {
                bail!("process {pid} did not stop within 10 s of SIGSTOP");
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGCONT after [`BrokerProcess::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM, then wait up to [`TERMINATE_TIMEOUT`] for the orderly shutdown. A broker that
    /// does not exit in time is killed and the call fails.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("no broker process")?;
        process::signal(child, libc::SIGTERM)?;
        if let Some(status) = process::wait_timeout(child, TERMINATE_TIMEOUT)? {
            return Ok(status);
        }
        process::kill_and_reap(child)?;
        bail!(
            "the broker did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM (killed it)\n{}",
            self.log_tail()
        )
    }

    /// The last lines of the log, with its path, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "----- last {} lines of {} -----\n{tail}\n----- end of broker log -----",
            LOG_TAIL_LINES.min(lines.len()),
            self.log_path.display()
        )
    }

    fn open_log(&self) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))
    }

    /// Spawns a process on the data directory and waits for its "listening on" line.
    fn spawn(&mut self) -> Result<()> {
        let binary = binaries::broker()?;
        self.starts += 1;
        let mut log = self.open_log()?;
        writeln!(log, "{}", section_marker(self.starts))?;
        let mut command = match self.command_prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        if !self.extra_args.iter().any(|arg| arg == "--http-listen") {
            command.args(["--http-listen", "127.0.0.1:0"]);
        }
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?));
        // Settings from the environment would make runs differ from machine to machine; only the
        // log filter may come from there (WEIR_LOG=debug to investigate a failure).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WEIR_") && key != "WEIR_LOG" {
                command.env_remove(key);
            }
        }
        let mut child = process::spawn(command)?;
        let stdout = child.stdout.take().context("the broker's stdout is not piped")?;
        self.child = Some(child);
        let lines = forward_stdout(stdout, log)?;
        self.http_address = None;
        self.address = self.wait_listening(&lines)?;
        Ok(())
    }

    fn wait_listening(&mut self, lines: &mpsc::Receiver<String>) -> Result<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match lines.recv_timeout(slice) {
                Ok(line) => {
                    // The broker prints its HTTP line (if on) before the listening line.
                    if let Some(http) = parse_http(&line) {
                        self.http_address = Some(http);
                    }
                    if let Some(address) = parse_listening(&line) {
                        return Ok(address);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        if let Some(child) = self.child.as_mut() {
                            process::kill_and_reap(child)?;
                        }
                        bail!(
                            "the broker did not print its listening line within {START_TIMEOUT:?} (killed it)\n{}",
                            self.log_tail()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is exiting (or closed stdout, which it must not).
                    let child = self.child.as_mut().context("no broker process")?;
                    let status = match process::wait_timeout(child, Duration::from_secs(5))? {
                        Some(status) => status.to_string(),
                        None => {
                            process::kill_and_reap(child)?;
                            "closed its stdout (killed it)".to_owned()
                        }
                    };
                    bail!("the broker exited before it listened: {status}\n{}", self.log_tail());
                }
            }
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Err(error) = process::kill_and_reap(child) {
                eprintln!("weir-tests: could not kill broker {}: {error:#}", child.id());
            }
        }
        // Always printed: a test that fails by returning an error does not panic, and the test
        // harness shows a test's output only when it fails.
        eprintln!("{}", self.log_tail());
    }
}

fn section_marker(start: u32) -> String {
    format!("===== weir-tests: weir-broker start #{start} =====")
}

/// True when every thread of process `pid` is in the stopped state (`T` in `/proc`).
fn all_threads_stopped(pid: u32) -> Result<bool> {
    let tasks = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
        let stat_path = task?.path().join("stat");
        // A thread that exited since the listing has no state to report.
        let Ok(stat) = std::fs::read_to_string(&stat_path) else {
            continue;
        };
        // The state follows the command name, which is in parentheses and may itself hold
        // spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state != Some("T") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copies the broker's stdout into its log and to the returned channel, line by line, until the
/// process closes it. The channel's receiver may go away; the copying goes on so that the
/// broker never blocks on a full pipe.
fn forward_stdout(stdout: std::process::ChildStdout, mut log: File) -> Result<mpsc::Receiver<String>> {
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("weir-broker-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "[stdout] {line}");
                let _ = sender.send(line);
            }
        })
        .context("spawning the stdout reader thread")?;
    Ok(receiver)
}

/// The address in `weir-broker listening on 127.0.0.1:PORT (data in DIR)`.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The address in `weir-broker http on 127.0.0.1:PORT (...)`.
fn parse_http(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("weir-broker http on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A plain HTTP/1.1 GET (one request, then the connection closes), bounded by 10 s: (status
/// code, body). Enough for the broker's endpoint, which answers with a full body at once.
pub fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::Read as _;
    let timeout = Duration::from_secs(10);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to http://{address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer to GET http://{address}{path}"))?;
    let response = String::from_utf8(response).context("the answer is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    if head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        bail!("GET http://{address}{path}: chunked answers are not supported here");
    }
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_line_parses() {
        let line = "weir-broker http on 127.0.0.1:40124 (/metrics, /healthz, /readyz)";
        assert_eq!(parse_http(line), Some(SocketAddr::from(([127, 0, 0, 1], 40124))));
        assert_eq!(parse_http("weir-broker listening on 127.0.0.1:1 (data in x)"), None);
    }

    #[test]
    fn listening_line_parses() {
        let line = "weir-broker listening on 127.0.0.1:40123 (data in /tmp/x y)";
        assert_eq!(parse_listening(line), Some(SocketAddr::from(([127, 0, 0, 1], 40123))));
        assert_eq!(parse_listening("starting"), None);
    }
}
