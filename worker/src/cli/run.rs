//! `sealfarm-worker run`: the worker's flags, the [`WorkerConfig`] built
//! from them (checked against this machine), the start-up table, and the
//! service run until SIGTERM/Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use sealfarm_runtime::{broker, shutdown};
use sealfarm_schemas::messages::StageSlots;
use sealfarm_schemas::{SectorSize, Stage};

use super::home_path;
use super::placement::PlacementArgs;
use crate::files::FilesConfig;
use crate::params;
use crate::placement::{self, hardware};
use crate::sealing::layout::SealingPath;
use crate::sealing::warm_up;
use crate::service::job_store;
use crate::service::{self, OnStop, WorkerConfig};
use crate::transfer::bridge_client::Bridges;

#[derive(Args, Debug)]
pub(super) struct RunArgs {
    #[command(flatten)]
    broker: broker::BrokerArgs,
    /// Sealing directory, laid out as lotus does (unsealed/, sealed/, cache/).
    /// Default: ~/.sealfarm/sealing.
    #[arg(long, env = "SEALFARM_SEALING_PATH")]
    sealing_path: Option<PathBuf>,
    /// Where the worker keeps its job store. Default: ~/.sealfarm/worker.
    #[arg(long, env = "SEALFARM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    placement: PlacementArgs,
    /// This worker's id: names its own queue and appears in results. Default: the host name.
    #[arg(long, env = "SEALFARM_WORKER_ID")]
    worker_id: Option<String>,
    /// Worker-local storage: serve this worker's sector files over HTTP on
    /// this address (the bridge fetches them for the miner through its
    /// `/remote`). Needs SEALFARM_FILES_TOKEN. Without it the sealing path
    /// must be shared storage that the bridge mounts too.
    #[arg(long, env = "SEALFARM_FILES_LISTEN")]
    files_listen: Option<std::net::SocketAddr>,
    /// The URL the bridge reaches the file server at. Default:
    /// http://<--files-listen>, with this host's name when it listens on 0.0.0.0.
    #[arg(long, env = "SEALFARM_FILES_URL")]
    files_url: Option<String>,
    /// The secret the bridge presents to the file server (the same value on
    /// the bridge and every worker).
    #[arg(long, env = "SEALFARM_FILES_TOKEN", hide_env_values = true)]
    files_token: Option<String>,
    /// The bridge's URL (its --listen address, e.g. http://10.0.0.9:3456).
    /// C2 inputs, C1 outputs and piece data travel there over HTTP, never on
    /// the broker: needed by workers that take C1 or C2 (a C1 output of a real
    /// sector is tens of MiB) and by AddPiece workers that do not mount the
    /// bridge's storage. Needs --worker-token. A farm shared by several
    /// miners: one per bridge, named by its bridge id (`--bridge
    /// t01000=http://10.0.0.9:3456 --bridge t01001=http://10.0.0.9:3457`, or
    /// comma-separated in the environment variable); a URL without a name
    /// serves any bridge not named.
    #[arg(long = "bridge", env = "SEALFARM_BRIDGE_URL", value_delimiter = ',')]
    bridge_url: Vec<String>,
    /// The CA certificates (PEM) to trust for an https:// --bridge (a bridge
    /// run with --tls-cert). Default: the system's CAs. The certificate must
    /// name the host or address in --bridge.
    #[arg(long, env = "SEALFARM_BRIDGE_CA")]
    bridge_ca: Option<PathBuf>,
    /// The bridge's worker token (the `token-worker` file in its state
    /// directory, or its own --worker-token).
    #[arg(long, env = "SEALFARM_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// How long the job store keeps the record of a job that ended (done,
    /// released, superseded); older ones are removed hourly, and the store
    /// is rewritten at start when they left it mostly empty.
    #[arg(long, env = "SEALFARM_RETAIN_DONE", default_value = "3d", value_parser = humantime::parse_duration)]
    retain_done: Duration,
    /// Serve Prometheus metrics (`GET /metrics`) on this address; `off`:
    /// none. Port 0 picks a free port (the start-up table shows it).
    #[arg(long, env = "SEALFARM_METRICS_LISTEN", default_value = "0.0.0.0:9464", value_parser = parse_listen)]
    metrics_listen: Listen,
    /// BENCHMARK ONLY: compute nothing. AddPiece answers at once with a
    /// placeholder piece (no data, a fake CommP); this measures what the farm
    /// itself costs (sealfarm-bench's throughput figure). Refused unless the
    /// worker takes only `ap` of test sector sizes, with a state dir that
    /// holds no real jobs.
    #[arg(long)]
    simulate_compute: bool,
    /// How often the worker says it is alive.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long SIGTERM waits for running jobs before stopping them (a PC1
    /// keeps its finished layers). What happens to them then: --on-stop.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Jobs still running when the grace period ends: `resume` keeps them
    /// claimed for this worker's next start (PC1 goes on from its last finished
    /// layer; the bridge waits for them as long as its --lease-timeout);
    /// `redispatch` gives them back to the bridge, which sends them to another
    /// worker at once (choose it when this machine goes away for long).
    #[arg(long, env = "SEALFARM_ON_STOP", value_enum, default_value_t = OnStopArg::Resume)]
    on_stop: OnStopArg,
    /// The bridge's broker user: control messages (drain, resume, stop a
    /// superseded job) are obeyed only when RabbitMQ says it published them.
    /// Default: this worker's own broker user (a farm on one shared account).
    /// Several bridges (one per miner) with users of their own: repeat it,
    /// or separate the users with commas.
    #[arg(long = "bridge-user", env = "SEALFARM_BRIDGE_USER", value_delimiter = ',')]
    bridge_users: Vec<String>,
    /// Pause before running again a job whose last run ended without a result
    /// (the process died under it); doubles with each run. After 3 runs the
    /// task is dead-lettered as poison and its call fails.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
    /// Before taking its GPU stages, prove a 2 KiB sector in a scratch folder
    /// of the state dir, so the first real task finds the GPU kernels built
    /// (on an H100 with an empty kernel cache the first C2 took 120 s, the
    /// next 5 s). For C2 the sector goes AP→C2 (needs the 2 KiB parameters:
    /// `sealfarm-worker params generate --sector-size 2KiB`), then the C2
    /// sizes' parameters are read into the page cache; for PC2 alone (with
    /// FIL_PROOFS_USE_GPU_TREE_BUILDER) AP→PC2. Meanwhile the worker takes its
    /// other stages and reports `warming`. `auto`: when C2 or PC2 would run on
    /// a GPU; `always`: whenever it takes C2 or PC2 (on CPUs too); `never`.
    #[arg(long, env = "SEALFARM_WARM_UP", value_enum, default_value_t = WarmUpArg::Auto)]
    warm_up: WarmUpArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WarmUpArg {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OnStopArg {
    Resume,
    Redispatch,
}

pub(super) fn run_worker(args: RunArgs) -> Result<()> {
    let sealing_dir = args.sealing_path.unwrap_or_else(|| home_path("sealing"));
    let sealing = SealingPath::open(&sealing_dir)
        .with_context(|| format!("cannot use sealing path {}", sealing_dir.display()))?;
    let storage = sealfarm_schemas::sector_store::open_meta(sealing.root())
        .with_context(|| format!("cannot use sealing path {}", sealing_dir.display()))?;
    let state_dir = args.state_dir.unwrap_or_else(|| home_path("worker"));
    let _ = std::fs::create_dir_all(&state_dir);
    let hw = hardware::probe_in_child(&[sealing.root(), &state_dir]);
    let plan = args.placement.plan(&hw)?;
    let capacity: Vec<StageSlots> = plan
        .iter()
        .filter(|p| p.slots > 0)
        .map(|p| StageSlots { stage: p.stage, sector_size: p.sector_size, slots: p.slots })
        .collect();
    if capacity.is_empty() {
        let table = placement::describe(&plan).join("\n  ");
        bail!("this machine fits none of the stages it may take:\n  {table}");
    }
    if args.simulate_compute {
        // A benchmark mode must never answer a real miner's calls.
        let not_ap: Vec<String> =
            capacity.iter().filter(|c| c.stage != Stage::Ap).map(|c| c.stage.to_string()).collect();
        let real: Vec<String> =
            capacity.iter().filter(|c| !c.sector_size.is_test_size()).map(|c| c.sector_size.to_string()).collect();
        if !not_ap.is_empty() || !real.is_empty() {
            bail!(
                "--simulate-compute is a benchmark mode: it takes only AddPiece (--stages ap) of test sector sizes \
                 (2KiB, 8MiB, 512MiB), never a real miner's sectors; this worker would take {}",
                [not_ap, real].concat().join(", ")
            );
        }
        let store = job_store::JobStore::open(&state_dir)?;
        if !store.unfinished()?.is_empty() {
            bail!(
                "--simulate-compute: {} holds unfinished real jobs; give the benchmark a --state-dir of its own",
                state_dir.display()
            );
        }
    }
    let c2_sizes: Vec<SectorSize> = capacity.iter().filter(|c| c.stage == Stage::C2).map(|c| c.sector_size).collect();
    if !c2_sizes.is_empty() {
        params::require_seal_params(&c2_sizes)?;
    }
    let pr2_sizes: Vec<SectorSize> =
        capacity.iter().filter(|c| c.stage == Stage::Pr2 && c.slots > 0).map(|c| c.sector_size).collect();
    if !pr2_sizes.is_empty() {
        params::require_update_params(&pr2_sizes)?;
    }
    let warm_up = warm_up::decide(
        match args.warm_up {
            WarmUpArg::Auto => warm_up::Mode::Auto,
            WarmUpArg::Always => warm_up::Mode::Always,
            WarmUpArg::Never => warm_up::Mode::Never,
        },
        &capacity,
        &hw,
        state_dir.join("warm-up"),
        &|name| std::env::var(name).ok(),
    )?;
    let hostname = sealfarm_runtime::hostname();
    let files = match (args.files_listen, args.files_token) {
        (None, _) => None,
        (Some(_), None) => bail!("--files-listen needs SEALFARM_FILES_TOKEN (the secret the bridge presents)"),
        (Some(_), Some(token)) if token.trim().len() < 8 => {
            bail!("SEALFARM_FILES_TOKEN is too short: use a random secret of 8 characters or more")
        }
        (Some(listen), Some(token)) => {
            let url = args.files_url.unwrap_or_else(|| {
                let host = if listen.ip().is_unspecified() { hostname.clone() } else { listen.ip().to_string() };
                format!("http://{host}:{}", listen.port())
            });
            Some(FilesConfig { listen, url, token })
        }
    };
    let bridges = match (args.bridge_url.is_empty(), &args.worker_token) {
        (true, None) => Bridges::default(),
        (false, Some(token)) => Bridges::parse(&args.bridge_url, token, args.bridge_ca.as_deref())?,
        (false, None) => {
            bail!("--bridge needs --worker-token (env SEALFARM_WORKER_TOKEN): the bridge's token-worker")
        }
        (true, Some(_)) => bail!("--worker-token needs --bridge (env SEALFARM_BRIDGE_URL): the bridge's URL"),
    };
    let (mut capacity, mut needs) = (
        capacity,
        plan.iter()
            .filter(|p| p.slots > 0)
            .map(|p| ((p.stage, p.sector_size), p.need(hw.cores)))
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    if args.simulate_compute {
        // Simulated jobs take nothing from the machine.
        for c in &mut capacity {
            c.slots = SIMULATED_SLOTS;
        }
        needs.clear();
    }
    let metrics_listener = match args.metrics_listen {
        Listen::Off => None,
        Listen::At(address) => Some(std::sync::Arc::new(std::net::TcpListener::bind(address).with_context(|| {
            format!("cannot listen on {address} for metrics: pass --metrics-listen ADDRESS:PORT (or `off`)")
        })?)),
    };
    let worker_id = args.worker_id.unwrap_or_else(|| hostname.clone());
    sealfarm_schemas::messages::check_worker_id(&worker_id)
        .map_err(|e| anyhow::anyhow!("--worker-id (default: the host name): {e}"))?;
    let config = WorkerConfig {
        worker_id,
        hostname,
        bridge_users: args.bridge_users.clone(),
        broker: args.broker.config()?,
        sealing,
        storage_id: storage.id,
        state_dir,
        capacity,
        needs,
        hardware: hw,
        files,
        bridges,
        retain_done: args.retain_done,
        heartbeat_interval: args.heartbeat_interval,
        shutdown_grace: args.shutdown_grace,
        on_stop: match args.on_stop {
            OnStopArg::Resume => OnStop::Resume,
            OnStopArg::Redispatch => OnStop::Redispatch,
        },
        retry_backoff: args.retry_backoff,
        simulate_compute: args.simulate_compute,
        metrics_listener,
        warm_up: warm_up.plan.clone(),
    };
    // The start-up table: plain lines for people, log records in JSON mode.
    let json = matches!(std::env::var("SEALFARM_LOG_FORMAT").as_deref(), Ok("json"));
    let say = |line: String| {
        if json {
            tracing::info!(target: "sealfarm_worker::startup", "{}", line.trim());
        } else {
            eprintln!("{line}");
        }
    };
    say(format!("sealfarm-worker {}", config.worker_id));
    say(format!("  broker        {}", config.broker.redacted()));
    say(format!("  sealing path  {} (storage {})", config.sealing.root().display(), config.storage_id));
    match &config.files {
        Some(files) => say(format!("  files         worker-local, served on {} as {}", files.listen, files.url)),
        None => say("  files         shared storage (the bridge mounts the sealing path too)".into()),
    }
    say(format!("  state dir     {}", config.state_dir.display()));
    let big_stages = config.stages().into_iter().any(|s| matches!(s, Stage::C1 | Stage::C2));
    match config.bridges.describe().as_slice() {
        [] if big_stages => say(
            "  bridge        none: C1 outputs travel inline only up to 512 KiB (test sizes) and C2 tasks that name \
             a blob fail; give --bridge and --worker-token"
                .into(),
        ),
        [] => {}
        bridges => {
            for (n, bridge) in bridges.iter().enumerate() {
                let label = if n == 0 { "bridge" } else { "" };
                say(format!("  {label:<13} {bridge} (C1 outputs, C2 inputs, piece data)"));
            }
        }
    }
    if config.simulate_compute {
        say("  compute       SIMULATED (--simulate-compute, a benchmark mode): no proofs, AddPiece placeholders only"
            .into());
    }
    match config.metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
        Some(address) => say(format!("  metrics       http://{address}/metrics")),
        None => say("  metrics       off".into()),
    }
    say(format!("  parameters    {}", params::cache_dir().display()));
    match (&warm_up.plan, &warm_up.note) {
        (Some(plan), note) => {
            say(format!("  warm-up       {}", plan.describe()));
            if let Some(note) = note {
                tracing::warn!("{note}");
            }
        }
        (None, Some(note)) => say(format!("  warm-up       {note}")),
        (None, None) => {}
    }
    for line in hardware::describe(&config.hardware) {
        say(format!("  {line}"));
    }
    say("  what this worker takes (slots = jobs at once; see `sealfarm-worker resources`):".into());
    for line in placement::describe(&plan) {
        say(format!("    {line}"));
    }
    say(format!("  queues        {}", config.queues().join(", ")));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (trigger, shutdown) = shutdown::channel();
        trigger.on_signals();
        service::run(config, shutdown).await
    })?;
    // Proof threads still running after the grace period must not hold the exit.
    std::process::exit(0);
}

/// Jobs of each stage a worker with `--simulate-compute` runs at once.
const SIMULATED_SLOTS: u32 = 64;

/// `--metrics-listen`: an address, or `off`.
#[derive(Clone, Debug)]
enum Listen {
    Off,
    At(std::net::SocketAddr),
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    text.parse().map(Listen::At).map_err(|_| format!("{text:?}: expected ADDRESS:PORT (e.g. 0.0.0.0:9464) or `off`"))
}
