//! `sealfarm-bridge`: parse arguments, wire the parts, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sealfarm_bridge::api_info::MinerApiInfo;
use sealfarm_bridge::blobs::{self, BlobApi, Blobs};
use sealfarm_bridge::calls::leases::Leases;
use sealfarm_bridge::calls::store::CallStore;
use sealfarm_bridge::calls::Calls;
use sealfarm_bridge::dead_letters::{DeadLetter, DeadLetters, Handled};
use sealfarm_bridge::farm::Farm;
use sealfarm_bridge::metrics::Metrics;
use sealfarm_bridge::ops::{self, Ops, Tokens};
use sealfarm_bridge::pieces::PieceInbox;
use sealfarm_bridge::queues::QueueWatch;
use sealfarm_bridge::registration::Miner;
use sealfarm_bridge::server::{self, Api};
use sealfarm_bridge::status::{JobStatus, QueueStatus, StatusSource, WorkerStatus};
use sealfarm_bridge::storage::StoragePath;
use sealfarm_bridge::views;
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
    /// Every worker: host, drained or not, CPU/RAM/VMEM/GPU use, slots per
    /// stage, the jobs it holds (PC1: layer k/n). Like `lotus-miner sealing workers`.
    Workers(ViewArgs),
    /// Every call of the miner: id, sector, worker, task, state (queued,
    /// claimed, running, returning, ret-wait, done, failed, dead), attempt,
    /// time. Like `lotus-miner sealing jobs`.
    Jobs(JobsArgs),
    /// Per stage and sector size: tasks ready, unacked, consumers, rates
    /// (rates and unacked need RabbitMQ's management plugin), dead letters.
    Queues(QueuesArgs),
    /// Stop a worker taking new tasks from the stage queues; it finishes the
    /// ones it holds (and still takes tasks bound to the sector files it
    /// keeps in worker-local storage). Lasts across its restarts.
    Drain(WorkerArgs),
    /// Let a drained worker take tasks again.
    ResumeWorker(WorkerArgs),
    /// Dispatch an open call's task again now, as its next attempt (the
    /// worker holding it drops the old one). CALL: the id or its first 8+ hex digits, as `jobs` prints it.
    Requeue(CallArgs),
    /// Fail an open call: the miner gets a CallError and its sealing state
    /// machine decides what next; the worker holding it drops it.
    Abort(CallArgs),
    /// The tasks in sealfarm.dead-letters: list them with their reasons,
    /// replay them (their calls run again), or purge them.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterCommand,
    },
    /// Print the URL of the web dashboard with the read token (or, with
    /// --admin, the admin token) to open it with.
    Dashboard {
        #[command(flatten)]
        target: Target,
        /// Link with the admin token (controls on the page).
        #[arg(long)]
        admin: bool,
    },
}

/// Which bridge to ask, and with what token.
#[derive(Args, Debug)]
struct Target {
    /// The bridge's URL. Default: the `api` file in the state directory.
    #[arg(long, env = "SEALFARM_BRIDGE_URL")]
    bridge: Option<String>,
    /// Status API token. Default: `token-admin` (else `token-read`) in the state directory.
    #[arg(long, env = "SEALFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The bridge's state directory. Default: ~/.sealfarm/bridge.
    #[arg(long, env = "SEALFARM_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl Target {
    fn client(&self) -> Result<views::Client> {
        let state_dir = self.state_dir.clone().unwrap_or_else(views::default_state_dir);
        views::Client::new(self.bridge.clone(), self.token.clone(), &state_dir)
    }
}

#[derive(Args, Debug)]
struct ViewArgs {
    #[command(flatten)]
    target: Target,
    /// Print the status API's JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct JobsArgs {
    #[command(flatten)]
    view: ViewArgs,
    /// Every call ever, not only the open ones and those closed in the last hour.
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
struct QueuesArgs {
    #[command(flatten)]
    view: ViewArgs,
    /// Also the stage queues with no message and no consumer.
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The worker id, as `workers` prints it.
    worker: String,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Args, Debug)]
struct CallArgs {
    /// The call id, or its first 8 (at least 4) hex digits.
    call: String,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// What waits in sealfarm.dead-letters, and why.
    List(ViewArgs),
    /// Dispatch dead-lettered tasks again (their calls are opened again; the
    /// result is returned to the miner, and a call the miner re-issues with
    /// the same inputs gets it).
    Replay(DeadLetterSelection),
    /// Delete dead letters for good.
    Purge(DeadLetterSelection),
}

#[derive(Args, Debug)]
struct DeadLetterSelection {
    /// Dead-letter ids (`<call-id>/<attempt>` or `msg-…`, as `list` prints them) or prefixes of them.
    #[arg(required_unless_present = "all")]
    ids: Vec<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    view: ViewArgs,
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
    /// RabbitMQ's management API (e.g. http://broker:15672), read with the
    /// AMQP URL's account, for unacked counts and rates in `queues` and the
    /// dashboard (sampled by RabbitMQ every 5 s). Without it the figures come
    /// from the broker protocol: ready messages and consumers, exact.
    #[arg(long, env = "SEALFARM_RABBITMQ_MANAGEMENT")]
    rabbitmq_management: Option<String>,
    /// The largest request body the worker API takes, and the largest blob
    /// (a C1 output) a worker may upload: `100MiB` as lotus' own servers.
    /// A 32 GiB sector's SealCommit2 is tens of MiB; 64 GiB ones are larger.
    /// Units: B, KiB, MiB, GiB.
    #[arg(long, env = "SEALFARM_MAX_REQUEST_SIZE", default_value = "100MiB", value_parser = parse_size)]
    max_request_size: u64,
    /// How long the call store keeps a call after it was returned to the
    /// miner (for `jobs --all` and re-issued calls); older ones are removed
    /// hourly, and the store is rewritten when removed calls leave it mostly
    /// empty, so neither its calls nor its files grow with the farm's history.
    #[arg(long, env = "SEALFARM_RETAIN_RETURNED", default_value = "3d", value_parser = humantime::parse_duration)]
    retain_returned: std::time::Duration,
    /// The secret workers present to fetch C2 inputs and upload C1 outputs
    /// (`sealfarm-worker run --bridge … --worker-token …`). Default: the
    /// `token-worker` file in the state directory, made at the first start.
    #[arg(long, env = "SEALFARM_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
}

/// Parses a byte count: `104857600`, `512KiB`, `100MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number of bytes, e.g. 100MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (B, KiB, MiB or GiB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

fn main() {
    let cli = Cli::parse();
    tune_malloc();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=warn,amq_protocol=warn,sled=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        other => runtime.block_on(operate(other)),
    };
    if let Err(err) = outcome {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and each keeps the memory freed into it. The bridge's threads mostly wait
/// on I/O: two arenas hold its heap in about 9 MiB less RSS under load
/// (`sealfarm-bench`'s scale part). `MALLOC_ARENA_MAX` in the environment
/// still wins.
///
/// glibc also raises its mmap threshold each time a large block is freed,
/// after which MiB-sized buffers (request bodies, file chunks, blob pieces)
/// come from the arenas and leave holes there: with 40 MiB C1 outputs
/// streaming through, the bridge's resting RSS crept upwards. A fixed
/// threshold of 256 KiB keeps them mapped apart and unmapped when freed.
/// `MALLOC_MMAP_THRESHOLD_` in the environment still wins.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; no allocation races it this early.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
            }
        }
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
    let mut tokens = Tokens::load_or_create(&state_dir)?;
    if let Some(token) = &args.worker_token {
        tokens.worker = token.clone();
    }
    let blobs = Arc::new(Blobs::open(&state_dir, args.max_request_size)?);
    let pieces = Arc::new(PieceInbox::new(&storage[0].path).context("cannot prepare the piece inbox")?);
    let (trigger, shutdown) = shutdown::channel();
    let miner = Arc::new(Miner::new(info.clone(), storage, format!("http://{advertised}"), store.clone()));
    let link = Arc::new(BrokerLink::new(args.amqp_url.clone(), "sealfarm-bridge".into()));
    link.get().await.with_context(|| format!("cannot reach RabbitMQ at {}", broker::redact(&args.amqp_url)))?;
    let metrics = Arc::new(Metrics::new());
    let calls = Arc::new(Calls {
        store,
        blobs: blobs.clone(),
        link: link.clone(),
        miner: miner.clone(),
        shutdown: shutdown.clone(),
        ticket_window: args.pc1_ticket_window,
        farm: Arc::new(Farm::new(args.lease_timeout)),
        shared_storage: miner.storage.iter().map(|p| p.meta.id.clone()).collect(),
        metrics: metrics.clone(),
        return_failures: Default::default(),
        pieces: pieces.clone(),
        large_returns: tokio::sync::Semaphore::new(1),
    });
    let ops = Arc::new(Ops {
        calls: calls.clone(),
        status: StatusSource {
            hostname: hostname(),
            started_at_ms: sealfarm_schemas::messages::now_ms(),
            lease_timeout: args.lease_timeout,
            queues: QueueWatch::new(&args.amqp_url, args.rabbitmq_management.as_deref()),
        },
        tokens: tokens.clone(),
        dead_letters: DeadLetters::new(),
        metrics,
    });
    let leases = Leases::new(calls.clone(), args.lease_timeout)?;
    let api = Arc::new(Api {
        session: uuid::Uuid::new_v4(),
        hostname: hostname(),
        calls: calls.clone(),
        miner: miner.clone(),
        pieces: pieces.clone(),
        limits: args.max_concurrent.clone(),
        files_token: args.files_token.clone(),
        max_request_size: args.max_request_size,
        large_requests: tokio::sync::Semaphore::new(1),
        files_client: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the HTTP client for workers' file servers")?,
    });
    let blob_api = Arc::new(BlobApi {
        blobs,
        worker_token: tokens.worker.clone(),
        admin_token: tokens.admin.clone(),
        pieces: pieces.clone(),
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
    eprintln!("  retention    returned calls kept {}", humantime::format_duration(args.retain_returned));
    for path in &miner.storage {
        eprintln!("  storage      {} ({})", path.path.display(), path.meta.id);
    }
    // Where the operator commands on this host find the bridge.
    let local = if args.listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), args.listen.port())
    } else {
        args.listen
    };
    let api_file = state_dir.join("api");
    std::fs::write(&api_file, format!("http://{local}\n"))
        .with_context(|| format!("cannot write {}", api_file.display()))?;
    eprintln!("  dashboard    http://{local}/dashboard (sealfarm-bridge dashboard prints the link with its token)");
    eprintln!("  metrics      http://{local}/metrics");
    eprintln!(
        "  workers      sealfarm-worker run --bridge http://{advertised} --worker-token <{}> (C1 outputs and C2 inputs, up to {} bytes)",
        if args.worker_token.is_some() { "SEALFARM_WORKER_TOKEN".to_string() } else { state_dir.join("token-worker").display().to_string() },
        args.max_request_size
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, server::router(api).merge(ops::router(ops)).merge(blobs::router(blob_api)))
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
    tokio::spawn(prune_returned(calls.clone(), args.retain_returned));
    let session = miner.connect().await?;
    let keeper = {
        let miner = miner.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { miner.keep_registered(session, shutdown).await })
    };
    let _ = server.await;
    keeper.abort();
    // The marks written without a flush (dispatched, claimed, returned) are
    // on disk before a clean stop ends.
    if let Err(err) = calls.store.flush() {
        tracing::error!(error = %format!("{err:#}"), "cannot flush the call store at stop");
    }
    link.close().await;
    Ok(())
}

/// Removes calls returned longer than `retain` ago, at start and hourly (a
/// quarter of a shorter retention); then, when the store grew by a quarter
/// since it was last looked at, rewrites it if its live records are a
/// small part of it (sled does not give the space of removed records back).
async fn prune_returned(calls: Arc<Calls>, retain: std::time::Duration) {
    let mut looked_at_size = 0u64;
    loop {
        let store = calls.store.clone();
        match tokio::task::spawn_blocking(move || store.prune(retain)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "calls returned long ago removed from the call store"),
            Ok(Err(err)) => tracing::warn!(error = %format!("{err:#}"), "cannot prune the call store"),
            Err(err) => tracing::warn!(error = %err, "cannot prune the call store"),
        }
        let on_disk = calls.store.disk_bytes();
        if on_disk > 16 << 20 && on_disk > looked_at_size + looked_at_size / 4 {
            let store = calls.store.clone();
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || store.compact()).await {
                Ok(Ok(Some((before, after)))) => {
                    let took_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(before_mib = before >> 20, after_mib = after >> 20, took_ms, "call store rewritten");
                    looked_at_size = after;
                }
                Ok(Ok(None)) => looked_at_size = on_disk,
                Ok(Err(err)) => tracing::error!(error = %format!("{err:#}"), "cannot rewrite the call store"),
                Err(err) => tracing::error!(error = %err, "cannot rewrite the call store"),
            }
        }
        // Hourly; more often for a short retention.
        let every = (retain / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
        if calls.shutdown.wait_for(every).await {
            return;
        }
    }
}

/// The operator commands: ask the running bridge, print its answer.
async fn operate(command: Command) -> Result<()> {
    use serde_json::json;
    let print_json = |value: &dyn erased::Json| println!("{}", value.pretty());
    match command {
        Command::Run(_) => unreachable!("run is not an operator command"),
        Command::Workers(view) => {
            let (workers, now): (Vec<WorkerStatus>, u64) =
                view.target.client()?.get_stamped("/sealfarm/v0/workers").await?;
            if view.json {
                print_json(&workers);
            } else {
                print!("{}", views::format_workers(&workers, now));
            }
        }
        Command::Jobs(args) => {
            let path = if args.all { "/sealfarm/v0/jobs?all=true" } else { "/sealfarm/v0/jobs" };
            let (jobs, now): (Vec<JobStatus>, u64) = args.view.target.client()?.get_stamped(path).await?;
            if args.view.json {
                print_json(&jobs);
            } else {
                print!("{}", views::format_jobs(&jobs, now));
            }
        }
        Command::Queues(args) => {
            #[derive(serde::Deserialize, serde::Serialize)]
            struct Queues {
                queues: Vec<QueueStatus>,
                dead_letters: u64,
            }
            let queues: Queues = args.view.target.client()?.get("/sealfarm/v0/queues").await?;
            if args.view.json {
                print_json(&queues);
            } else {
                print!("{}", views::format_queues(&queues.queues, queues.dead_letters, args.all));
            }
        }
        Command::Drain(args) => control(&args.view, &format!("/sealfarm/v0/workers/{}/drain", args.worker)).await?,
        Command::ResumeWorker(args) => {
            control(&args.view, &format!("/sealfarm/v0/workers/{}/resume", args.worker)).await?
        }
        Command::Requeue(args) => control(&args.view, &format!("/sealfarm/v0/jobs/{}/requeue", args.call)).await?,
        Command::Abort(args) => control(&args.view, &format!("/sealfarm/v0/jobs/{}/abort", args.call)).await?,
        Command::DeadLetters { action: DeadLetterCommand::List(view) } => {
            let letters: Vec<DeadLetter> = view.target.client()?.get("/sealfarm/v0/dead-letters").await?;
            if view.json {
                print_json(&letters);
            } else {
                print!("{}", views::format_dead_letters(&letters));
            }
        }
        Command::DeadLetters { action } => {
            let (verb, sel) = match action {
                DeadLetterCommand::Replay(sel) => ("replay", sel),
                DeadLetterCommand::Purge(sel) => ("purge", sel),
                DeadLetterCommand::List(_) => unreachable!("handled above"),
            };
            let body = json!({ "ids": sel.ids, "all": sel.all });
            let handled: Vec<Handled> =
                sel.view.target.client()?.post(&format!("/sealfarm/v0/dead-letters/{verb}"), body).await?;
            if sel.view.json {
                print_json(&handled);
            } else {
                print!("{}", views::format_handled(&handled));
            }
            if handled.iter().any(|h| !h.ok) {
                anyhow::bail!("some dead letters could not be {verb}ed");
            }
        }
        Command::Dashboard { target, admin } => {
            let client = target.client()?;
            let state_dir = target.state_dir.clone().unwrap_or_else(views::default_state_dir);
            let name = if admin { "token-admin" } else { "token-read" };
            let token = match &target.token {
                Some(token) => token.clone(),
                None => std::fs::read_to_string(state_dir.join(name))
                    .with_context(|| format!("cannot read {}", state_dir.join(name).display()))?
                    .trim()
                    .to_string(),
            };
            println!("{}/dashboard#token={token}", client.url);
        }
    }
    Ok(())
}

/// Sends a control and prints what the bridge says it did.
async fn control(view: &ViewArgs, path: &str) -> Result<()> {
    let answer: serde_json::Value = view.target.client()?.post(path, serde_json::json!({})).await?;
    if view.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}", answer.get("message").and_then(|m| m.as_str()).unwrap_or("done"));
    }
    Ok(())
}

mod erased {
    /// Anything printable as pretty JSON.
    pub trait Json {
        fn pretty(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
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
