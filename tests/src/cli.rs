//! Running the `weir` CLI binary with a timeout.

use std::fmt;
use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::binaries;
use crate::process;

/// Upper bound on one CLI run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What one CLI run did.
#[derive(Debug)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code (`None` if a signal ended the process).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails with the whole output unless the run exited 0.
    pub fn ensure_success(self) -> Result<Self> {
        if !self.success() {
            bail!("weir exited with {}, expected 0:\n{self}", self.status);
        }
        Ok(self)
    }

    /// stdout split into lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// stdout parsed as one JSON value (for `--output json`).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(self.stdout.trim()).with_context(|| format!("stdout is not one JSON value:\n{self}"))
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ weir {}", self.args.join(" "))?;
        writeln!(f, "exit: {}", self.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

/// Runs `weir --bootstrap <bootstrap> <args>`, writing `stdin` to its input, and waits up to
/// [`CLI_TIMEOUT`] for it (killing it and failing after that).
pub fn weir(bootstrap: &str, args: &[&str], stdin: &str) -> Result<CliOutput> {
    let binary = binaries::cli()?;
    let mut all_args = vec!["--bootstrap".to_owned(), bootstrap.to_owned()];
    all_args.extend(args.iter().map(|arg| (*arg).to_owned()));
    let mut command = Command::new(binary);
    command
        .args(&all_args)
        .env_remove("WEIR_BOOTSTRAP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = process::spawn(command)?;
    // Threads on every pipe: a child that fills stdout while we still write stdin must not
    // deadlock the test.
    let mut input = child.stdin.take().context("stdin is not piped")?;
    let stdin = stdin.to_owned();
    let writer = thread::spawn(move || {
        // An error means the CLI exited without reading everything; its status tells why.
        let _ = input.write_all(stdin.as_bytes());
    });
    let stdout = read_all(child.stdout.take().context("stdout is not piped")?);
    let stderr = read_all(child.stderr.take().context("stderr is not piped")?);
    let status = process::wait_timeout(&mut child, CLI_TIMEOUT)?;
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => process::kill_and_reap(&mut child)?,
    };
    let _ = writer.join();
    let output = CliOutput {
        args: all_args,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        bail!("weir did not finish within {CLI_TIMEOUT:?} (killed it):\n{output}");
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
