//! `weir`: the command-line tool for Weir.
//!
//! # Layout
//! - `args`: the command line (clap derive). Its spellings are an interface scripts rely on.
//! - `topic`, `group`, `cluster`: admin commands, shown as tables or JSON (`output`).
//! - `produce`, `consume`: records from lines of input, and records to lines of output
//!   (`position` parses `--from`, `template` renders `--format`); `consume --group` reads as a
//!   consumer-group member and commits what it printed.
//! - `bench`: produce and consume benchmarks.
//!
//! Exit codes: 0 success, 1 an error (printed on standard error), 2 a usage error (clap).
//! `consume --group` stopped by Ctrl-C commits, leaves its group and exits 0.

mod args;
mod bench;
mod cluster;
mod consume;
mod group;
mod output;
mod position;
mod produce;
mod template;
mod topic;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use weir_client::{Client, ClientConfig};

use args::{BenchCommand, Cli, ClusterCommand, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = ClientConfig::builder()
        .bootstrap(&cli.bootstrap)
        .request_timeout(Duration::from_millis(cli.request_timeout_ms))
        .build()?;
    let client = Client::new(config)?;
    let output = cli.output;
    match cli.command {
        Command::Topic(command) => topic::run(&client.admin(), output, command).await,
        Command::Produce(args) => produce::run(&client, output, args).await,
        Command::Consume(args) => consume::run(&client, output, args).await,
        Command::Group(command) => group::run(&client.admin(), output, command).await,
        Command::Cluster(ClusterCommand::Status { wait_ms }) => cluster::status(&client.admin(), output, wait_ms).await,
        Command::Bench(BenchCommand::Produce(args)) => bench::produce(&client, output, args).await,
        Command::Bench(BenchCommand::Consume(args)) => bench::consume(&client, output, args).await,
    }
}
