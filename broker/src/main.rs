//! `weir-broker`: starts one Weir broker.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use weir_broker::config::{BrokerConfig, Overrides};
use weir_broker::node::Node;

/// Weir broker. Settings come from defaults, then --config FILE (TOML), then WEIR_* environment
/// variables, then flags.
#[derive(Debug, Parser)]
#[command(name = "weir-broker", version)]
struct Args {
    /// TOML config file.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Where partitions and metadata are stored [default: ./weir-data].
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:9292]; port 0 picks a free port.
    #[arg(long, env = "WEIR_LISTEN")]
    listen: Option<String>,
    /// Address clients are told to use for this node [default: the bound address].
    #[arg(long, env = "WEIR_ADVERTISE")]
    advertise: Option<String>,
    /// This node's id in the cluster [default: 1].
    #[arg(long, env = "WEIR_NODE_ID")]
    node_id: Option<u64>,
    /// Every node of the cluster, this one included: 1=HOST:PORT,2=HOST:PORT,... Without it the
    /// broker is a one-node cluster.
    #[arg(long, env = "WEIR_PEERS")]
    peers: Option<String>,
    /// Address of the HTTP endpoint (/metrics, /healthz, /readyz) [default: 127.0.0.1:9393];
    /// port 0 picks a free port, "off" (or "") turns it off.
    #[arg(long, env = "WEIR_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or weir_broker=debug,raft=info.
    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = BrokerConfig::load(Overrides {
        config: args.config,
        data_dir: args.data_dir,
        listen: args.listen,
        advertise: args.advertise,
        node_id: args.node_id,
        peers: args.peers,
        http_listen: args.http_listen,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let node = Node::start(config).await?;
    // Printed before the "listening on" line, so that whoever waits for that one has seen it.
    if let Some(http) = node.http_address() {
        println!("weir-broker http on {http} (/metrics, /healthz, /readyz)");
        tracing::info!(address = %http, "HTTP endpoint serving");
    }
    // Scripts and tests wait for this line (and read the port from it when listening on :0).
    println!(
        "weir-broker listening on {} (data in {})",
        node.address(),
        data_dir.display()
    );
    tracing::info!(address = %node.address(), data_dir = %data_dir.display(), "serving");
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
        }
    };
    node.serve(shutdown).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}
