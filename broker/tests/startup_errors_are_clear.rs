//! The broker binary refuses bad settings and a data directory in use, with a message that names
//! the problem, and exits non-zero instead of starting half-configured.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BROKER: &str = env!("CARGO_BIN_EXE_weir-broker");
/// Every broker here serves HTTP on a free port (flags override it): brokers of tests running
/// side by side must not compete for the default port.
const HTTP_LISTEN_ENV: (&str, &str) = ("WEIR_HTTP_LISTEN", "127.0.0.1:0");

fn run_to_exit(args: &[&str]) -> (bool, String) {
    let output = Command::new(BROKER)
        .args(args)
        .env(HTTP_LISTEN_ENV.0, HTTP_LISTEN_ENV.1)
        .stdin(Stdio::null())
        .output()
        .expect("run weir-broker");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts the broker with a config file holding `contents`; returns (exited ok, stderr).
fn run_with_config(contents: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, contents).unwrap();
    let data = dir.path().join("data");
    run_to_exit(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

#[test]
fn unknown_config_key_is_rejected() {
    let (ok, stderr) = run_with_config("[log]\nsegment_bytez_max = 1\n");
    assert!(!ok);
    assert!(stderr.contains("segment_bytez_max"), "{stderr}");
}

#[test]
fn invalid_limit_names_the_setting() {
    let (ok, stderr) = run_with_config("[log]\nsegment_bytes_max = 1000\n");
    assert!(!ok);
    assert!(stderr.contains("segment_bytes_max"), "{stderr}");
}

#[test]
fn peers_without_this_node_are_refused() {
    let (ok, stderr) = run_with_config("node_id = 4\npeers = \"1=127.0.0.1:1,2=127.0.0.1:2\"\n");
    assert!(!ok);
    assert!(stderr.contains("must include this node"), "{stderr}");
}

#[test]
fn second_broker_on_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut first = Command::new(BROKER)
        .args(["--data-dir", data, "--listen", "127.0.0.1:0"])
        .env(HTTP_LISTEN_ENV.0, HTTP_LISTEN_ENV.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir-broker");
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listening = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => break true,
            Some(Ok(_)) if Instant::now() < deadline => continue,
            _ => break false,
        }
    };
    let (ok, stderr) = run_to_exit(&["--data-dir", data, "--listen", "127.0.0.1:0"]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(listening, "the first broker did not start");
    assert!(!ok);
    assert!(stderr.contains("in use"), "{stderr}");
}

/// Starts the broker on a data directory whose controller state snapshot holds `bytes`.
fn run_with_controller_snapshot(bytes: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let controller = dir.path().join("controller");
    std::fs::create_dir_all(&controller).unwrap();
    std::fs::write(controller.join("state-snapshot"), bytes).unwrap();
    run_to_exit(&["--data-dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
}

#[test]
fn corrupt_controller_snapshot_is_a_clear_error() {
    let (ok, stderr) = run_with_controller_snapshot(b"WSNP\x01\0\0\0 not a snapshot at all, just bytes");
    assert!(!ok);
    assert!(
        stderr.contains("state snapshot") && stderr.contains("is corrupt"),
        "{stderr}"
    );
    assert!(stderr.contains("state-snapshot"), "names the file: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn controller_snapshot_of_an_unknown_version_is_a_clear_error() {
    let mut bytes = b"WSNP\x09\0\0\0".to_vec();
    bytes.resize(64, 0);
    let (ok, stderr) = run_with_controller_snapshot(&bytes);
    assert!(!ok);
    assert!(stderr.contains("format version 9"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn http_port_in_use_names_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = run_to_exit(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        &address,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("http_listen") && stderr.contains("--http-listen") && stderr.contains(&address),
        "{stderr}"
    );
    let (ok, stderr) = run_to_exit(&["--data-dir", dir.path().to_str().unwrap(), "--http-listen", "9393"]);
    assert!(!ok);
    assert!(
        stderr.contains("http_listen") && stderr.contains("HOST:PORT"),
        "{stderr}"
    );
}
