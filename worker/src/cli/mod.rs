//! The `sealfarm-worker` command line: arguments, subcommands, logging, and
//! what each subcommand does (`main.rs` only calls [`main`]).
//!
//! * `run` — `run.rs`: the worker, wired from its flags;
//! * `params` — `params.rs`: Groth parameters;
//! * `probe`, `resources`, `jobs` — `inspect.rs`;
//! * `bench` and the hidden `executor` — here.
//!
//! The stage and size flags `run` and `resources` share are in
//! `placement.rs`.

mod inspect;
mod params;
mod placement;
mod run;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sealfarm_schemas::{SectorSize, Stage};

use self::params::ParamsCommand;
use self::placement::PlacementArgs;
use self::run::RunArgs;
use crate::bench;
use crate::placement::hardware;
use crate::sealing::layout::SealingPath;
use crate::sealing::{executor, warm_up};

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
        /// Stages to run, from ap on (ap,pc1,pc2,c1,c2). After pc2, the snap-deal
        /// stages snap the sector (update,pr1,pr2) and then unseal,gsk,fru: e.g.
        /// ap,pc1,pc2,update,pr1,pr2,unseal,gsk,fru.
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

/// Parses the arguments and runs the subcommand; exits 1 on an error.
pub fn main() {
    let cli = Cli::parse();
    // Child processes (executor, probe) log in the same format.
    std::env::set_var("SEALFARM_LOG_FORMAT", format!("{:?}", cli.log_format).to_lowercase());
    // bench and the executor's warm-up report whether the GPU ran a stage.
    init_logging(cli.log_format, matches!(cli.command, Command::Bench { .. } | Command::Executor { .. }));
    if let Err(err) = dispatch(cli.command) {
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

/// Runs a subcommand.
fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run::run_worker(*args),
        Command::Params(command) => params::run_params(command),
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
            if stages.contains(&Stage::Pr2) {
                crate::params::require_update_params(&[sector_size])?;
            }
            if stages.contains(&Stage::C2) {
                crate::params::require_seal_params(&[sector_size])?;
                if warm_up {
                    crate::params::require_seal_params(&[SectorSize::KIB2])?;
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
                    pr2: false,
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
        Command::Probe { path, json } => inspect::probe(&path, json),
        Command::Resources { placement, json } => inspect::resources(&placement, json),
        Command::Executor { sealing_path } => executor::serve(SealingPath::open(&sealing_path)?),
        Command::Jobs { state_dir, json } => inspect::jobs(state_dir, json),
    }
}
