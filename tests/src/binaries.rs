//! Finding the `weir-broker` and `weir` executables.
//!
//! Cargo puts a test executable in `target/<profile>/deps/` and the workspace's binaries in
//! `target/<profile>/`. `cargo test --workspace` builds the binaries of every package that has
//! integration tests (the broker and the CLI have some), so they are normally there. When one is
//! missing (say after `cargo test -p weir-tests` on a fresh clone) it is built here with
//! `cargo build -p <package> --bin <name>`, once per test process.
//!
//! `WEIR_BROKER_BIN` and `WEIR_CLI_BIN` override the paths (to test a release or installed build).
//!
//! A binary that exists is used as it is: after changing the broker, run the tests with
//! `--workspace` (or build it) so that the binary is current.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::process;

/// The broker executable.
pub fn broker() -> Result<PathBuf> {
    locate("WEIR_BROKER_BIN", "weir-broker", "weir-broker")
}

/// The CLI executable.
pub fn cli() -> Result<PathBuf> {
    locate("WEIR_CLI_BIN", "weir-cli", "weir")
}

/// Upper bound on building a missing binary (a clean build of the broker takes minutes on two
/// cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Serialises builds within one test process; cargo's own lock serialises them across processes.
static BUILDING: Mutex<()> = Mutex::new(());

fn locate(override_var: &str, package: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{override_var}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let profile_dir = profile_dir()?;
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        return Ok(path);
    }
    let _building = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
    if !path.is_file() {
        build(&profile_dir, package, name)?;
    }
    if !path.is_file() {
        bail!(
            "`cargo build -p {package} --bin {name}` succeeded but {} is still missing",
            path.display()
        );
    }
    Ok(path)
}

/// `target/<profile>`: the parent of the `deps` directory that holds the test executable.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().context("the test executable has no directory")?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().context("deps has no parent directory")?;
    }
    Ok(dir.to_path_buf())
}

fn build(profile_dir: &Path, package: &str, name: &str) -> Result<()> {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let target_dir = profile_dir.parent().context("the profile directory has no parent")?;
    eprintln!(
        "weir-tests: {name} is missing from {}; building it with `cargo build -p {package} --bin {name} \
         --profile {profile}` (this can take a few minutes)",
        profile_dir.display()
    );
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .args(["build", "-p", package, "--bin", name, "--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null());
    let mut child = process::spawn(command)?;
    let Some(status) = process::wait_timeout(&mut child, BUILD_TIMEOUT)? else {
        process::kill_and_reap(&mut child)?;
        bail!("`cargo build -p {package} --bin {name}` did not finish within {BUILD_TIMEOUT:?}");
    };
    if !status.success() {
        bail!("`cargo build -p {package} --bin {name}` failed ({status}); its output is above");
    }
    Ok(())
}
