//! Running the `weir` binary from the group tests.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `weir --bootstrap BOOTSTRAP ARGS...` to completion.
pub async fn weir(bootstrap: &str, args: &[&str]) -> Outcome {
    let child = spawn(bootstrap, args);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("weir finishes in time")
        .expect("weir output");
    let outcome = Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "weir {args:?} -> {:?}\n{}{}",
        outcome.code, outcome.stdout, outcome.stderr
    );
    outcome
}

/// Starts `weir` with piped output and no input.
pub fn spawn(bootstrap: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("weir runs")
}

/// Reads `count` lines of a running `weir`'s standard output.
pub async fn lines(child: &mut Child, count: usize) -> Vec<String> {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    while lines.len() < count {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(15), reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("only {lines:?} of {count} lines"))
            .expect("stdout reads");
        assert!(read > 0, "weir closed its output after {lines:?}");
        lines.push(line.trim_end().to_owned());
    }
    lines
}

/// Sends SIGINT (Ctrl-C) and waits for the exit code.
pub async fn interrupt(mut child: Child) -> (Option<i32>, String) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("weir stops in time")
        .expect("weir exit status");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    (status.code(), stderr)
}
