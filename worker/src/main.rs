//! `sealfarm-worker`: parse arguments, wire the parts, run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sealfarm_schemas::messages::StageSlots;
use sealfarm_schemas::{broker, shutdown};
use sealfarm_schemas::{RegisteredSealProof, SectorSize, Stage};
use sealfarm_worker::bridge_client::BridgeClient;
use sealfarm_worker::sector_files::SealingPath;
use sealfarm_worker::service::job_store;
use sealfarm_worker::service::{self, FilesConfig, OnStop, WorkerConfig};
use sealfarm_worker::{bench, executor, hardware, paramgen, params, proofs, resources, warm_up};

/// A sealfarm worker: takes Filecoin sealing tasks from RabbitMQ and runs the
/// real proofs on this machine.
///
/// Start one per machine with `sealfarm-worker run`. It consumes the queues
/// `sealfarm.task.<stage>.<size>` for the stages and sector sizes you give it,
/// records every job in its state directory before acknowledging it (a crash
/// loses nothing: claimed jobs run again at the next start), and publishes each
/// result to `sealfarm.results`.
#[derive(Parser, Debug)]
#[command(name = "sealfarm-worker", version, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SEALFARM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the worker: consume tasks until SIGTERM/Ctrl-C.
    ///
    /// It takes the stages and sector sizes you allow that this machine fits,
    /// as many at once as lotus' resource table allows (`sealfarm-worker
    /// resources` shows the decisions without starting).
    ///
    /// Example (a PC1 box for 32 GiB sectors on shared storage):
    ///   sealfarm-worker run --sealing-path /mnt/shared/sealing --stages ap,pc1,pc2,c1,fin,ru --sector-sizes 32GiB
    Run(Box<RunArgs>),
    /// Groth parameters: generate (test sizes), fetch (published), status.
    #[command(subcommand)]
    Params(ParamsCommand),
    /// Internal: the process `run` starts to execute proofs (reads jobs on stdin).
    #[command(hide = true)]
    Executor {
        #[arg(long)]
        sealing_path: PathBuf,
    },
    /// Seal sectors on this machine with the worker's own execution code (no
    /// broker) and print each stage's time.
    ///
    /// Example: sealfarm-worker bench --sector-size 2KiB --stages ap,pc1,pc2,c1 --repeat 5
    Bench {
        #[arg(long, default_value = "2KiB")]
        sector_size: SectorSize,
        /// Stages to run, from ap on (ap,pc1,pc2,c1,c2).
        #[arg(long, value_delimiter = ',', default_value = "ap,pc1,pc2,c1")]
        stages: Vec<Stage>,
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Scratch sealing directory. Default: a temporary folder.
        #[arg(long)]
        sealing_path: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Run PC2's tree builders and C2 on the GPU: sets
        /// FIL_PROOFS_USE_GPU_TREE_BUILDER=1 and FIL_PROOFS_USE_GPU_COLUMN_BUILDER=1
        /// and clears BELLMAN_NO_GPU. Needs a build with `--features opencl` (or
        /// `cuda`) and a GPU. Without --gpu or --cpu the environment decides (the
        /// library's default: C2 on a GPU when there is one, PC2 on the CPU).
        #[arg(long, conflicts_with = "cpu")]
        gpu: bool,
        /// Run every stage on the CPU: sets BELLMAN_NO_GPU=1 and turns the GPU
        /// tree builders off.
        #[arg(long)]
        cpu: bool,
        /// First run the warm-up a worker runs before its GPU stages (a 2 KiB
        /// sector AP→C2 when --stages has c2, else AP→PC2 when it has pc2),
        /// shown as `warm` rows: the stages after it are timed warm.
        #[arg(long)]
        warm_up: bool,
    },
    /// Print what this machine has: cores, memory, swap, OpenCL devices (GPUs)
    /// and the free space of the given paths.
    ///
    /// Example: sealfarm-worker probe --path /mnt/nvme/sealing --json
    Probe {
        /// A storage path to report the free space of (repeatable).
        #[arg(long)]
        path: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what `run` would take on this machine: every stage and sector size
    /// with its slots (jobs at once) and the reason, from the hardware, lotus'
    /// resource table and your overrides (PC1_32G_MAX_CONCURRENT=4 style
    /// environment variables, the config file, the stage switches).
    ///
    /// Example: PC1_32G_MAX_CONCURRENT=4 sealfarm-worker resources --sector-sizes 32GiB --pc2=false
    Resources {
        #[command(flatten)]
        placement: PlacementArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the jobs recorded in a worker's state directory (stop the worker
    /// first: the store is locked while it runs).
    Jobs {
        /// The worker's state directory.
        #[arg(long, env = "SEALFARM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Print every record in full as JSON lines: task, state, PC1 layer
        /// checksums (with the run that computed each) and history.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// RabbitMQ URL (amqp:// or amqps://).
    #[arg(
        long = "amqp",
        env = "SEALFARM_AMQP_URL",
        default_value = broker::DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    amqp_url: String,
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
    /// bridge's storage. Needs --worker-token.
    #[arg(long = "bridge", env = "SEALFARM_BRIDGE_URL")]
    bridge_url: Option<String>,
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

/// What the worker takes: stages and sector sizes the operator allows,
/// narrowed at start to what this machine fits (see `sealfarm-worker resources`).
#[derive(Args, Debug, Clone)]
struct PlacementArgs {
    /// Config file (TOML): `stages`, `sector_sizes`, `cpu_proving` and a
    /// `[resources]` table of lotus-style overrides (PC1_32G_MAX_CONCURRENT = 4).
    /// Flags and environment variables beat it.
    #[arg(long, env = "SEALFARM_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Stages this worker may take, comma-separated: ap, pc1, pc2, c1, c2,
    /// fin, ru. Default: all (or the config file's `stages`).
    #[arg(long, env = "SEALFARM_STAGES", value_delimiter = ',')]
    stages: Option<Vec<Stage>>,
    /// Sector sizes to take, comma-separated: 2KiB, 8MiB, 512MiB, 32GiB,
    /// 64GiB. Default: 32GiB,64GiB (or the config file's `sector_sizes`).
    #[arg(long, env = "SEALFARM_SECTOR_SIZES", value_delimiter = ',')]
    sector_sizes: Option<Vec<SectorSize>>,
    /// Take AddPiece (lotus-worker --addpiece); --ap=false drops it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ap: Option<bool>,
    /// Take PreCommit1 (lotus-worker --precommit1).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pc1: Option<bool>,
    /// Take PreCommit2 (lotus-worker --precommit2).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pc2: Option<bool>,
    /// Take Commit1.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    c1: Option<bool>,
    /// Take Commit2, the SNARK (lotus-worker --commit).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    c2: Option<bool>,
    /// Take FinalizeSector.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    fin: Option<bool>,
    /// Take ReleaseUnsealed.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ru: Option<bool>,
    /// Run stages that use a GPU in lotus' table (C2; PC2 of 32/64 GiB) on
    /// the CPU when this machine has no GPU. Off by default: a CPU C2 of a
    /// 32 GiB sector takes hours.
    #[arg(long, env = "SEALFARM_CPU_PROVING")]
    cpu_proving: bool,
}

impl PlacementArgs {
    /// Flags over config file over defaults.
    fn wanted(&self) -> Result<resources::Wanted> {
        let file = match &self.config {
            Some(path) => resources::ConfigFile::load(path)?,
            None => resources::ConfigFile::default(),
        };
        let mut stages = self.stages.clone().or(file.stages.clone()).unwrap_or_else(|| Stage::ALL.to_vec());
        let switches = [
            (Stage::Ap, self.ap),
            (Stage::Pc1, self.pc1),
            (Stage::Pc2, self.pc2),
            (Stage::C1, self.c1),
            (Stage::C2, self.c2),
            (Stage::Fin, self.fin),
            (Stage::Ru, self.ru),
        ];
        for (stage, switch) in switches {
            match switch {
                Some(false) => stages.retain(|s| *s != stage),
                Some(true) if !stages.contains(&stage) => stages.push(stage),
                _ => {}
            }
        }
        let sector_sizes = self
            .sector_sizes
            .clone()
            .or(file.sector_sizes.clone())
            .unwrap_or_else(|| vec![SectorSize::GIB32, SectorSize::GIB64]);
        if stages.is_empty() || sector_sizes.is_empty() {
            bail!("no stage or no sector size left to take: check --stages, --sector-sizes and the stage switches");
        }
        Ok(resources::Wanted {
            stages,
            sector_sizes,
            cpu_proving: self.cpu_proving || file.cpu_proving.unwrap_or(false),
            file_overrides: file.overrides(),
        })
    }

    /// The decisions for this machine.
    fn plan(&self, hw: &hardware::Hardware) -> Result<Vec<resources::StagePlan>> {
        resources::plan(hw, &self.wanted()?, &|name| std::env::var(name).ok())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OnStopArg {
    Resume,
    Redispatch,
}

#[derive(Subcommand, Debug)]
enum ParamsCommand {
    /// Generate insecure local parameters for a test sector size, offline.
    ///
    /// Proofs made with them verify locally and are worthless on chain, so only
    /// 2KiB, 8MiB and 512MiB are accepted. 2KiB takes about 17 minutes on 2 cores
    /// and writes about 1.1 GB; do it once per machine.
    Generate {
        #[arg(long)]
        sector_size: SectorSize,
    },
    /// Download the published parameters of a sector size and check every digest.
    Fetch {
        #[arg(long)]
        sector_size: SectorSize,
        /// IPFS gateway to download from.
        #[arg(long, env = "IPFS_GATEWAY", default_value = params::DEFAULT_GATEWAY)]
        gateway: String,
        /// A parameters.json to use instead of the one built into the proofs library.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// List the seal parameters the cache holds.
    Status {
        /// Hash each file and say whether it is the published one (slow for big files).
        #[arg(long)]
        verify: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    // Child processes (executor, probe) log in the same format.
    std::env::set_var("SEALFARM_LOG_FORMAT", format!("{:?}", cli.log_format).to_lowercase());
    // bench and the executor's warm-up report whether the GPU ran a stage.
    init_logging(cli.log_format, matches!(cli.command, Command::Bench { .. } | Command::Executor { .. }));
    if let Err(err) = run(cli.command) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// `gpu_witness`: also watch the proofs library's log for GPU use (`bench`).
fn init_logging(format: LogFormat, gpu_witness: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,lapin=warn,amq_protocol=warn,sled=warn,storage_proofs_core::parameter_cache=warn".into()
    });
    // The witness sees the library's own INFO lines whatever the log filter
    // lets through; bench reports from it whether a stage ran on a GPU.
    let witness = gpu_witness.then(|| bench::GpuWitness.with_filter(bench::GpuWitness::targets()));
    let registry = tracing_subscriber::registry().with(witness);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Human => registry.with(fmt.with_filter(filter)).init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(filter)).init(),
    }
}

fn home_path(sub: &str) -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".sealfarm").join(sub)
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run_worker(*args),
        Command::Params(command) => run_params(command),
        Command::Bench { sector_size, stages, repeat, sealing_path, json, gpu, cpu, warm_up } => {
            if warm_up && !stages.contains(&Stage::Pc2) && !stages.contains(&Stage::C2) {
                bail!("--warm-up warms PC2 and C2: give --stages with pc2 or c2 (e.g. ap,pc1,pc2,c1,c2)");
            }
            let scratch = tempfile::tempdir()?;
            let sealing = SealingPath::open(sealing_path.as_deref().unwrap_or(scratch.path()))?;
            // The probe (a child process loading OpenCL) only for --gpu and the table's header.
            let gpus = if gpu || !json { hardware::probe_in_child(&[]).gpus().count() } else { 0 };
            // The library reads these once, at its first call: set them before any.
            if gpu {
                if !bench::GPU_BUILD {
                    bail!("--gpu: this sealfarm-worker was built without GPU code (build it with --features opencl)");
                }
                if gpus == 0 {
                    bail!(
                        "--gpu: no GPU found (`sealfarm-worker probe` lists the OpenCL devices; see OCL_ICD_VENDORS)"
                    );
                }
                std::env::remove_var("BELLMAN_NO_GPU");
                std::env::set_var("FIL_PROOFS_USE_GPU_TREE_BUILDER", "1");
                std::env::set_var("FIL_PROOFS_USE_GPU_COLUMN_BUILDER", "1");
            }
            if cpu {
                std::env::set_var("BELLMAN_NO_GPU", "1");
                std::env::set_var("FIL_PROOFS_USE_GPU_TREE_BUILDER", "0");
                std::env::set_var("FIL_PROOFS_USE_GPU_COLUMN_BUILDER", "0");
            }
            // Only now: finding the parameters reads the library's settings,
            // which it reads once (a check before the lines above kept the
            // GPU tree builder off whatever --gpu said).
            if stages.contains(&Stage::C2) {
                params::require_seal_params(&[sector_size])?;
                if warm_up {
                    params::require_seal_params(&[SectorSize::KIB2])?;
                }
            }
            if !json {
                println!(
                    "{sector_size} sectors, {} of them; GPU code built in: {}; GPUs found: {gpus}",
                    repeat.max(1),
                    if bench::GPU_BUILD { "yes" } else { "no" }
                );
            }
            let mut timings = Vec::new();
            if warm_up {
                let plan = warm_up::Plan {
                    c2: stages.contains(&Stage::C2),
                    pc2: stages.contains(&Stage::Pc2),
                    preload: Vec::new(),
                    scratch: sealing.root().join("warm-up"),
                };
                timings.extend(warm_up::run(&plan)?.stages);
            }
            timings.extend(bench::run(&sealing, sector_size, &stages, repeat.max(1))?);
            if json {
                println!("{}", serde_json::to_string_pretty(&timings)?);
            } else {
                println!("{:<10} {:<6} {:>12} {:>12} {:>4}", "sector", "stage", "time", "peak RSS", "gpu");
                for t in &timings {
                    let sector = if t.warm_up { format!("warm {}", t.sector_size) } else { t.sector.to_string() };
                    println!(
                        "{:<10} {:<6} {:>12} {:>8.1} MiB {:>4}",
                        sector,
                        t.stage.as_str(),
                        bench::duration(t.millis),
                        t.peak_rss_bytes as f64 / (1u64 << 20) as f64,
                        if t.gpu { "yes" } else { "no" }
                    );
                }
            }
            Ok(())
        }
        Command::Probe { path, json } => {
            let paths: Vec<&std::path::Path> = path.iter().map(|p| p.as_path()).collect();
            let hw = hardware::probe(&paths);
            if json {
                println!("{}", serde_json::to_string_pretty(&hw)?);
            } else {
                for line in hardware::describe(&hw) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        Command::Resources { placement, json } => {
            let hw = hardware::probe_in_child(&[]);
            let plan = placement.plan(&hw)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                for line in resources::describe(&plan) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        Command::Executor { sealing_path } => executor::serve(SealingPath::open(&sealing_path)?),
        Command::Jobs { state_dir, json } => {
            let store = job_store::JobStore::open(&state_dir.unwrap_or_else(|| home_path("worker")))?;
            for record in store.all()? {
                if json {
                    println!("{}", serde_json::to_string(&record)?);
                    continue;
                }
                let state = serde_json::to_value(&record.state)?;
                println!(
                    "{}  {:<4} {:<16} attempt {}  {}",
                    record.task.call_id,
                    record.task.stage().as_str(),
                    record.task.sector.id.to_string(),
                    record.task.attempt,
                    state["state"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
    }
}

fn run_worker(args: RunArgs) -> Result<()> {
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
        let table = resources::describe(&plan).join("\n  ");
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
    let hostname = sealfarm_worker::hostname();
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
    let bridge = match (&args.bridge_url, &args.worker_token) {
        (None, None) => None,
        (Some(url), Some(token)) => Some(BridgeClient::new(url, token)?),
        (Some(_), None) => {
            bail!("--bridge needs --worker-token (env SEALFARM_WORKER_TOKEN): the bridge's token-worker")
        }
        (None, Some(_)) => bail!("--worker-token needs --bridge (env SEALFARM_BRIDGE_URL): the bridge's URL"),
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
    let config = WorkerConfig {
        worker_id: args.worker_id.unwrap_or_else(|| hostname.clone()),
        hostname,
        amqp_url: args.amqp_url,
        sealing,
        storage_id: storage.id,
        state_dir,
        capacity,
        needs,
        hardware: hw,
        files,
        bridge,
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
    say(format!("  broker        {}", broker::redact(&config.amqp_url)));
    say(format!("  sealing path  {} (storage {})", config.sealing.root().display(), config.storage_id));
    match &config.files {
        Some(files) => say(format!("  files         worker-local, served on {} as {}", files.listen, files.url)),
        None => say("  files         shared storage (the bridge mounts the sealing path too)".into()),
    }
    say(format!("  state dir     {}", config.state_dir.display()));
    let big_stages = config.stages().into_iter().any(|s| matches!(s, Stage::C1 | Stage::C2));
    match &config.bridge {
        Some(bridge) => say(format!("  bridge        {} (C1 outputs, C2 inputs, piece data)", bridge.url())),
        None if big_stages => say(
            "  bridge        none: C1 outputs travel inline only up to 512 KiB (test sizes) and C2 tasks that name \
             a blob fail; give --bridge and --worker-token"
                .into(),
        ),
        None => {}
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
    for line in resources::describe(&plan) {
        say(format!("    {line}"));
    }
    say(format!("  queues        {}", config.queues().join(", ")));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (trigger, shutdown) = shutdown::channel();
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
        service::run(config, shutdown).await
    })?;
    // Proof threads still running after the grace period must not hold the exit.
    std::process::exit(0);
}

fn run_params(command: ParamsCommand) -> Result<()> {
    match command {
        ParamsCommand::Generate { sector_size } => {
            if !sector_size.is_test_size() {
                bail!(
                    "refusing to generate {sector_size} parameters: locally generated parameters make proofs the chain rejects; \
                     real sector sizes use the published ones (`sealfarm-worker params fetch --sector-size {sector_size}`)"
                );
            }
            let (params_path, vk_path) = params::seal_param_paths(sector_size)?;
            if params_path.exists() && vk_path.exists() {
                eprintln!("{sector_size} parameters already present: {}", params_path.display());
                return Ok(());
            }
            std::fs::create_dir_all(params::cache_dir())
                .with_context(|| format!("cannot create parameter cache {}", params::cache_dir().display()))?;
            // Measured: 2 cores 13-20 min and 5-7 GB for either test size; 16 cores about 2 min.
            eprintln!(
                "generating {sector_size} seal parameters into {} (test sizes: 13-20 min on 2 cores, 5-7 GB RAM; \
                 about 2 min on 16 cores)",
                params::cache_dir().display()
            );
            let started = Instant::now();
            let ticker = std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(30));
                eprintln!("  still generating: {:.0} s elapsed", started.elapsed().as_secs_f64());
            });
            drop(ticker);
            let proof = proofs::api_proof(RegisteredSealProof::v1_1_for(sector_size)).expect("known proof");
            paramgen::generate_porep_params(proof)?;
            eprintln!("done in {:.0} s: {}", started.elapsed().as_secs_f64(), params_path.display());
            Ok(())
        }
        ParamsCommand::Fetch { sector_size, gateway, manifest } => {
            let manifest = params::manifest(manifest.as_deref())?;
            let outcomes = params::fetch(sector_size, &gateway, &manifest)?;
            eprintln!("{} files for {sector_size} in {}", outcomes.len(), params::cache_dir().display());
            Ok(())
        }
        ParamsCommand::Status { verify } => {
            let manifest = params::manifest(None)?;
            println!("parameter cache: {}", params::cache_dir().display());
            println!("{:<7} {:<6} {:>14}  {:<10} file", "size", "kind", "bytes", "origin");
            for line in params::status(verify, &manifest)? {
                let origin = match (line.bytes, line.published) {
                    (None, _) => "missing",
                    (Some(_), None) => "present",
                    (Some(_), Some(true)) => "published",
                    (Some(_), Some(false)) => "local",
                };
                let bytes = line.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
                let name = line.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                println!("{:<7} {:<6} {:>14}  {:<10} {name}", line.size.to_string(), line.kind, bytes, origin);
            }
            Ok(())
        }
    }
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
