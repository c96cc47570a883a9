//! `sealfarm-bridge`: parse arguments, wire the parts, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sealfarm_bridge::api_info::MinerApiInfo;
use sealfarm_bridge::call_store::CallStore;
use sealfarm_bridge::calls::Calls;
use sealfarm_bridge::farm::Farm;
use sealfarm_bridge::leases::Leases;
use sealfarm_bridge::pieces::PieceInbox;
use sealfarm_bridge::registration::Miner;
use sealfarm_bridge::server::{self, Api};
use sealfarm_bridge::storage::StoragePath;
use sealfarm_schemas::broker::{self, BrokerLink};
use sealfarm_schemas::shutdown;

/// sealfarm's bridge to lotus-miner: it registers with the miner as one
/// lotus-worker and runs every sealing call the miner sends on the farm's
/// workers through RabbitMQ.
///
/// Point it at the miner the way lotus-worker is pointed at it:
///   export MINER_API_INFO=$(lotus-miner auth api-info --perm admin | cut -d= -f2)
///   sealfarm-bridge run --listen 10.0.0.9:3456 --storage /mnt/shared/sealing
#[derive(Parser, Debug)]
#[command(name = "sealfarm-bridge", version)]
struct Cli {
    /// Log format: `human`, or `json` (one object per line; lines about a
    /// call carry its call id and sector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SEALFARM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register with the miner and serve its calls until SIGTERM/Ctrl-C.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The miner's API: TOKEN:MULTIADDR, from `lotus-miner auth api-info --perm admin`.
    #[arg(long, env = "MINER_API_INFO", hide_env_values = true)]
    miner_api_info: String,
    /// Address the worker API listens on; the miner calls back here.
    #[arg(long, env = "SEALFARM_LISTEN", default_value = "0.0.0.0:3456")]
    listen: SocketAddr,
    /// RabbitMQ URL (amqp:// or amqps://).
    #[arg(
        long = "amqp",
        env = "SEALFARM_AMQP_URL",
        default_value = broker::DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    amqp_url: String,
    /// Where the bridge keeps its call store. Default: ~/.sealfarm/bridge.
    #[arg(long, env = "SEALFARM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Sealing storage that every worker also mounts (shared-storage mode). Repeatable.
    #[arg(long, required = true)]
    storage: Vec<PathBuf>,
    /// How many calls of a stage the miner may have running at once on the
    /// farm, e.g. `pc1=64` (repeatable or comma-separated; default unlimited).
    #[arg(long, env = "SEALFARM_MAX_CONCURRENT", value_delimiter = ',', value_parser = server::parse_limit)]
    max_concurrent: Vec<(sealfarm_schemas::TaskType, u32)>,
    /// How long a worker may hold a call without a sign of life (claim,
    /// heartbeat, progress) before the bridge dispatches it to another worker.
    /// Keep it well above the time a worker needs to restart: a worker that is
    /// back in time resumes its jobs (a PC1 from its last finished layer).
    #[arg(long, env = "SEALFARM_LEASE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    lease_timeout: std::time::Duration,
    /// How long after a PC1 call arrives its ticket can still land on chain.
    /// lotus draws the ticket 900 epochs (7.5 h) before it calls PC1 and
    /// rejects a precommit whose ticket is older than 3780 epochs (31.5 h):
    /// 24 h are left. A PC1 still pending or resuming after that is failed
    /// (CallError) rather than run, so the miner draws a new ticket.
    #[arg(long, env = "SEALFARM_PC1_TICKET_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pc1_ticket_window: std::time::Duration,
    /// The secret the workers' file servers expect (worker-local storage:
    /// `/remote` fetches a sector's files from the worker that holds them).
    /// The same value as the workers' SEALFARM_FILES_TOKEN.
    #[arg(long, env = "SEALFARM_FILES_TOKEN", hide_env_values = true)]
    files_token: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=warn,amq_protocol=warn,sled=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let Command::Run(args) = cli.command;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(err) = runtime.block_on(run(args)) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let info = MinerApiInfo::parse(&args.miner_api_info)?;
    let storage = args
        .storage
        .iter()
        .map(|p| StoragePath::open(p).with_context(|| format!("cannot use storage path {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let advertised = advertised_address(&args.listen, &info).await?;
    let state_dir = args.state_dir.unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into()).join(".sealfarm/bridge")
    });
    let store = CallStore::open(&state_dir)?;
    let (trigger, shutdown) = shutdown::channel();
    let miner = Arc::new(Miner::new(info.clone(), storage, format!("http://{advertised}"), store.clone()));
    let link = Arc::new(BrokerLink::new(args.amqp_url.clone(), "sealfarm-bridge".into()));
    link.get().await.with_context(|| format!("cannot reach RabbitMQ at {}", broker::redact(&args.amqp_url)))?;
    let calls = Arc::new(Calls {
        store,
        link: link.clone(),
        miner: miner.clone(),
        shutdown: shutdown.clone(),
        ticket_window: args.pc1_ticket_window,
        farm: Arc::new(Farm::new(args.lease_timeout)),
        shared_storage: miner.storage.iter().map(|p| p.meta.id.clone()).collect(),
    });
    let leases = Leases::new(calls.clone(), args.lease_timeout)?;
    let api = Arc::new(Api {
        session: uuid::Uuid::new_v4(),
        hostname: hostname(),
        calls: calls.clone(),
        miner: miner.clone(),
        pieces: Arc::new(PieceInbox::new(&miner.storage[0].path).context("cannot prepare the piece inbox")?),
        limits: args.max_concurrent.clone(),
        files_token: args.files_token.clone(),
    });
    eprintln!("sealfarm-bridge");
    eprintln!("  miner        {}", info.url);
    eprintln!("  listen       {} (advertised as http://{advertised})", args.listen);
    eprintln!("  broker       {}", broker::redact(&args.amqp_url));
    eprintln!("  state dir    {}", state_dir.display());
    eprintln!(
        "  leases       {} without a sign of life, then dispatched again",
        humantime::format_duration(args.lease_timeout)
    );
    for path in &miner.storage {
        eprintln!("  storage      {} ({})", path.path.display(), path.meta.id);
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, server::router(api))
            .with_graceful_shutdown(async move { server_shutdown.wait().await })
            .await
    });
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received; stopping");
        trigger.fire();
    });

    miner.check_version(&shutdown).await?;
    miner.attach_storage().await?;
    calls.redeliver_pending().await?;
    tokio::spawn(calls.clone().consume_results());
    tokio::spawn(calls.clone().consume_dead_letters());
    tokio::spawn(leases.clone().consume_events());
    tokio::spawn(leases.clone().expire());
    let session = miner.connect().await?;
    let keeper = {
        let miner = miner.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { miner.keep_registered(session, shutdown).await })
    };
    let _ = server.await;
    keeper.abort();
    link.close().await;
    Ok(())
}

/// The address the miner reaches the bridge at: the listen address, or, when
/// that is unspecified (0.0.0.0), this host's address on the route to the miner.
async fn advertised_address(listen: &SocketAddr, miner: &MinerApiInfo) -> Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(*listen);
    }
    let stream = tokio::net::TcpStream::connect(&miner.address)
        .await
        .with_context(|| format!("cannot reach the miner at {} to find this host's address", miner.address))?;
    Ok(SocketAddr::new(stream.local_addr()?.ip(), listen.port()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "sealfarm-bridge".into())
}
