//! `sealfarm-bench`: what the farm costs next to the proofs, measured side by
//! side in one run (issue 7).
//!
//! * **Overhead** — the same stages (AP → C1; C2 with `--c2`) sealed by the
//!   worker's own execution code in this process, with no broker, and
//!   through devminer → bridge → RabbitMQ → worker → bridge → devminer (miner
//!   call → `Return*`); per stage the median of each and their ratio.
//! * **Dispatch latency** — `--tasks` real 2 KiB AddPiece calls one after
//!   another: miner call → the worker's claim, and the worker's result → the
//!   miner's receipt of the `Return*`; p50 / p99.
//!
//! Prints a Markdown section; `--write FILE` also puts it into FILE between
//! the markers `<!-- sealfarm-bench -->` and `<!-- /sealfarm-bench -->`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use futures_util::StreamExt;
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::{CallId, EventKind, EventMessage, RegisteredSealProof, SectorRef, SectorSize, Stage};
use sealfarm_tests::devminer::{add_piece_params, sector_ref, DevMiner, SealReport};
use sealfarm_tests::memory_mib;
use sealfarm_tests::{free_local_address, subscribe_events, wait_for_workers, FarmProcess, TestVhost};
use serde_json::{json, Value};

struct Options {
    sizes: Vec<SectorSize>,
    repeat: usize,
    tasks: usize,
    round_trips: usize,
    window: usize,
    scale_workers: usize,
    scale_calls: usize,
    crash_runs: u32,
    c2: bool,
    write: Option<std::path::PathBuf>,
    /// The parts to run (all when empty).
    only: Vec<String>,
}

/// The parts of a run, in the order they run.
const PARTS: [&str; 5] = ["overhead", "dispatch", "throughput", "scale", "crash"];

impl Options {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

fn options() -> Result<Options> {
    let mut options = Options {
        sizes: vec![SectorSize::KIB2, SectorSize::MIB8],
        repeat: 5,
        tasks: 1000,
        round_trips: 2000,
        window: 32,
        scale_workers: 1000,
        scale_calls: 10_000,
        crash_runs: 3,
        c2: false,
        write: None,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                options.sizes =
                    value()?.split(',').map(|s| s.parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?
            }
            "--repeat" => options.repeat = value()?.parse().context("--repeat needs a number")?,
            "--tasks" => options.tasks = value()?.parse().context("--tasks needs a number")?,
            "--round-trips" => options.round_trips = value()?.parse().context("--round-trips needs a number")?,
            "--window" => options.window = value()?.parse().context("--window needs a number")?,
            "--scale-workers" => options.scale_workers = value()?.parse().context("--scale-workers needs a number")?,
            "--scale-calls" => options.scale_calls = value()?.parse().context("--scale-calls needs a number")?,
            "--crash-runs" => options.crash_runs = value()?.parse().context("--crash-runs needs a number")?,
            "--c2" => options.c2 = true,
            "--write" => options.write = Some(value()?.into()),
            "--only" => {
                options.only = value()?.split(',').map(str::to_string).collect();
                if let Some(unknown) = options.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    bail!("--only: no part {unknown:?} (parts: {})", PARTS.join(","));
                }
            }
            "-h" | "--help" => {
                println!(
                    "sealfarm-bench [--sizes 2KiB,8MiB] [--repeat 5] [--tasks 1000] [--round-trips 2000]\n\
                     \x20              [--window 32] [--scale-workers 1000] [--scale-calls 10000] [--crash-runs 3] [--c2]\n\
                     \x20              [--only overhead,dispatch,throughput,scale,crash] [--write docs/BENCHMARKS.md]\n\
                     Measures the farm against the proofs library and the raw broker in one run: per-stage\n\
                     overhead (in-process vs through bridge and broker), dispatch latency (p50/p99 over --tasks\n\
                     AddPiece calls) and throughput (--round-trips AddPiece calls, --window in flight, on a worker\n\
                     with the simulated compute backend, against a raw lapin round trip on the same broker) and\n\
                     the bridge's memory and CPU under --scale-workers heartbeating and --scale-calls open calls,\n\
                     and what a crash costs an 8 MiB PC1 (--crash-runs kill-and-resume runs; 0 skips it).\n\
                     --only runs just the parts named (comma-separated); the report has only their tables."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if options.write.is_some() && !options.only.is_empty() {
        bail!("--write replaces the whole sealfarm-bench section: run every part (drop --only) to write it");
    }
    Ok(options)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let options = options()?;
    let mut stages = vec![Stage::Ap, Stage::Pc1, Stage::Pc2, Stage::C1];
    if options.c2 {
        stages.push(Stage::C2);
    }
    let run_dir = std::env::current_dir()?.join(".farm").join(format!("bench-{}", now_ms()));
    std::fs::create_dir_all(&run_dir)?;
    let mut report = String::new();
    report.push_str(&format!(
        "Machine: {} logical CPUs, {:.1} GiB RAM; `sealfarm-bench --sizes {} --repeat {} --tasks {} \
         --round-trips {} --window {} --scale-workers {} --scale-calls {} --crash-runs {}{}{}` ({}; dev profile: \
         sealfarm's crates \
         at opt-level 1, dependencies at 3).\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        total_memory_gib(),
        options.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        options.repeat,
        options.tasks,
        options.round_trips,
        options.window,
        options.scale_workers,
        options.scale_calls,
        options.crash_runs,
        if options.c2 { " --c2" } else { "" },
        if options.only.is_empty() { String::new() } else { format!(" --only {}", options.only.join(",")) },
        date(),
    ));

    // The farm: devminer, bridge, one worker on shared storage.
    let vhost = TestVhost::new("bench");
    let miner = DevMiner::new(2048);
    let miner_address = miner.serve("127.0.0.1:0".parse()?).await?;
    let claims = watch_claims(&vhost).await?;
    let listen = free_local_address();
    let _bridge = FarmProcess::start_bridge(&vhost, &run_dir, &miner.api_info(miner_address), listen, &[]);
    let sizes = options.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let box_stages = "ap,pc1,pc2,c1,fin,ru";
    let mut real_worker = FarmProcess::start_for_bridge(&vhost, &run_dir, listen, "bench-box", box_stages, &sizes, &[]);
    let worker = miner.wait_for_worker(Duration::from_secs(60)).await?;
    wait_for_workers(&vhost, &["bench-box"], Duration::from_secs(60)).await?;
    // C2 on a worker of its own, started fresh: its first C2 is the cold one.
    let prover = if options.c2 && options.runs("overhead") {
        let started = std::time::Instant::now();
        let prover = FarmProcess::start_for_bridge(&vhost, &run_dir, listen, "prover", "c2", "2KiB", &[]);
        wait_for_workers(&vhost, &["prover"], Duration::from_secs(120)).await?;
        Some((prover, started.elapsed()))
    } else {
        None
    };
    let mut c2_in_order = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;

    if options.runs("overhead") {
        report.push_str("### Overhead: in-process vs through the farm (median ms per stage)\n\n");
        report.push_str(
            "| size | stage | in-process | through the farm | farm ÷ in-process |\n|---|---|---:|---:|---:|\n",
        );
    }
    let sealing = sealfarm_worker::sealing::layout::SealingPath::open(run_dir.join("in-process"))?;
    let mut number = 1;
    let sizes_measured = if options.runs("overhead") { options.sizes.as_slice() } else { &[] };
    for size in sizes_measured {
        let only_c2_on_2kib = |stage: &Stage| *stage != Stage::C2 || *size == SectorSize::KIB2;
        let stages: Vec<Stage> = stages.iter().copied().filter(only_c2_on_2kib).collect();
        eprintln!("bench: {size} in-process, {} sectors", options.repeat);
        let direct = {
            let (sealing, size, stages, repeat) = (sealing.clone(), *size, stages.clone(), options.repeat as u32);
            tokio::task::spawn_blocking(move || sealfarm_worker::bench::run(&sealing, size, &stages, repeat)).await??
        };
        eprintln!("bench: {size} through the farm, {} sectors", options.repeat);
        let mut farm: HashMap<Stage, Vec<f64>> = HashMap::new();
        for _ in 0..options.repeat {
            let sector = sector_ref(number, RegisteredSealProof::v1_1_for(*size));
            number += 1;
            for (stage, ms) in seal_through_farm(&miner, &worker, sector, &stages).await? {
                farm.entry(stage).or_default().push(ms);
            }
        }
        if *size == SectorSize::KIB2 {
            c2_in_order = farm.get(&Stage::C2).cloned().unwrap_or_default();
        }
        let (mut total_direct, mut total_farm) = (0.0, 0.0);
        for stage in &stages {
            let mut ours: Vec<f64> = direct.iter().filter(|t| t.stage == *stage).map(|t| t.millis).collect();
            let (a, b) = (median(&mut ours), median(farm.entry(*stage).or_default()));
            total_direct += a;
            total_farm += b;
            let stage = stage.to_string().to_uppercase();
            report.push_str(&format!("| {size} | {stage} | {a:.1} | {b:.1} | {:.2} |\n", b / a));
        }
        report.push_str(&format!(
            "| {size} | **all** | {total_direct:.1} | {total_farm:.1} | **{:.2}** |\n",
            total_farm / total_direct
        ));
    }

    if let (Some((_, warm_up)), Some((first, rest))) = (&prover, c2_in_order.split_first()) {
        let steady = median(&mut rest.to_vec());
        report.push_str(&format!(
            "\n### Warm worker (2 KiB C2 on a freshly started worker `prover`)\n\n\
             | figure | value | target |\n|---|---:|---|\n\
             | start → first heartbeat (consuming) | {:.1} s | |\n\
             | first C2 task | {:.1} s | |\n\
             | steady-state C2 (median of the next {}) | {:.1} s | |\n\
             | **first ÷ steady** | **{:.2}** | ≤ 1.1 |\n",
            warm_up.as_secs_f64(),
            first / 1e3,
            rest.len(),
            steady / 1e3,
            first / steady
        ));
    }

    if options.runs("dispatch") {
        eprintln!("bench: dispatch latency over {} AddPiece calls", options.tasks);
        let (mut to_claim, mut to_return) = (Vec::new(), Vec::new());
        let mut calls = Vec::new();
        for _ in 0..options.tasks {
            let sector = sector_ref(number, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
            number += 1;
            let called_at = now_ms();
            let call: CallId = worker.client.call("AddPiece", add_piece_params(sector)).await.context("AddPiece")?;
            let returned = miner.wait_for_return(&call, Duration::from_secs(60)).await?;
            let returned_at = now_ms().saturating_sub(returned.at.elapsed().as_millis() as u64);
            calls.push((call, called_at, returned_at));
        }
        // The worker's result time, from the bridge's record of each call.
        let state_dir = run_dir.join("state-bridge");
        let jobs: Value = serde_json::from_str(&bridge_cli(&state_dir, &["jobs", "--all", "--json"])?)?;
        let finished: HashMap<String, u64> = jobs
            .as_array()
            .context("jobs JSON")?
            .iter()
            .filter_map(|j| Some((j["call_id"].as_str()?.to_string(), j["finished_at_ms"].as_u64()?)))
            .collect();
        let claims = claims.lock().unwrap().clone();
        for (call, called_at, returned_at) in &calls {
            if let Some(claimed) = claims.get(&call.id) {
                to_claim.push(claimed.saturating_sub(*called_at) as f64);
            }
            if let Some(done) = finished.get(&call.id.to_string()) {
                to_return.push(returned_at.saturating_sub(*done) as f64);
            }
        }
        report.push_str(&format!(
            "\n### Dispatch latency ({} AddPiece calls, one at a time, loopback)\n\n\
         | path | samples | p50 ms | p99 ms | target |\n|---|---:|---:|---:|---|\n\
         | miner call → worker claims the task | {} | {:.0} | {:.0} | p50 ≤ 5, p99 ≤ 50 |\n\
         | worker result → miner receives `Return*` | {} | {:.0} | {:.0} | p50 ≤ 5, p99 ≤ 50 |\n",
            calls.len(),
            to_claim.len(),
            percentile(&mut to_claim, 50.0),
            percentile(&mut to_claim, 99.0),
            to_return.len(),
            percentile(&mut to_return, 50.0),
            percentile(&mut to_return, 99.0),
        ));
    }

    // Throughput: the farm with zero-length jobs against the raw broker.
    real_worker.terminate(Duration::from_secs(30));
    if options.runs("throughput") {
        let _simulated = FarmProcess::start_with(&vhost, &run_dir, "sim-box", "ap", "2KiB", &["--simulate-compute"]);
        wait_for_workers(&vhost, &["sim-box"], Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("bench: throughput, {} round trips, {} in flight", options.round_trips, options.window);
        let farm_rate =
            sealfarm_tests::farm_round_trips(&miner, &worker, &mut number, options.round_trips, options.window).await?;
        let raw_rate = raw_round_trips(&vhost, options.round_trips, options.window).await?;
        report.push_str(&format!(
            "\n### Throughput ({} round trips, {} in flight, zero-length jobs)\n\n\
         | path | round trips/s |\n|---|---:|\n\
         | devminer → bridge → RabbitMQ → worker (`--simulate-compute`) → bridge → devminer | {farm_rate:.0} |\n\
         | raw lapin: publish (confirmed) → consume → publish result (confirmed) → ack → consume | {raw_rate:.0} |\n\
         | **farm ÷ raw** (target ≥ 0.5) | **{:.2}** |\n",
            options.round_trips,
            options.window,
            farm_rate / raw_rate
        ));
    }
    if options.runs("scale") && (options.scale_workers > 0 || options.scale_calls > 0) {
        report.push_str(&scale(&run_dir, options.scale_workers, options.scale_calls).await?);
    }
    if options.runs("crash") && options.crash_runs > 0 {
        report.push_str(&crash_cost(options.crash_runs)?);
    }
    println!("{report}");
    if let Some(path) = &options.write {
        write_section(path, &report)?;
        eprintln!("bench: written into {}", path.display());
    }
    Ok(())
}

/// The PC1 kill-and-resume runs of `sealfarm-resume-bench` (8 MiB): its
/// table, and the range of killed+resumed ÷ uninterrupted.
fn crash_cost(runs: u32) -> Result<String> {
    eprintln!("bench: crash cost, {runs} PC1 kill-and-resume runs (8 MiB)");
    let out = std::process::Command::new(sealfarm_tests::binary("sealfarm-resume-bench"))
        .args(["--runs", &runs.to_string()])
        .output()
        .context("sealfarm-resume-bench")?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("sealfarm-resume-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ratios: Vec<f64> =
        table.lines().skip(1).filter_map(|l| l.split_whitespace().nth(4)?.parse::<f64>().ok()).collect();
    let range = |f: fn(f64, f64) -> f64, start| ratios.iter().copied().fold(start, f);
    Ok(format!(
        "\n### Crash cost (8 MiB PC1, the worker SIGKILLed halfway through its last layer and restarted)\n\n\
         killed+resumed ÷ uninterrupted: {:.2}–{:.2} over {} runs (`sealfarm-resume-bench --runs {runs}`; test \
         sizes have 2 layers, so half a layer is a quarter of the PC1; at 32 GiB, 11 layers, the same kill \
         loses half a layer of eleven):\n\n```text\n{}\n```\n",
        range(f64::min, f64::INFINITY),
        range(f64::max, 0.0),
        ratios.len(),
        table.trim_end()
    ))
}

fn rss_mib(pid: u32) -> f64 {
    memory_mib(pid, "VmRSS:")
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state(0) ppid(1) … utime(11) stime(12), in clock ticks (100 Hz on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// One bridge under `workers` simulated workers heartbeating every 5 s and
/// `calls` open calls: its RSS and CPU share; and one idle real worker's RSS.
async fn scale(run_dir: &std::path::Path, workers: usize, calls: usize) -> Result<String> {
    let vhost = TestVhost::new("bench-scale");
    let miner = DevMiner::new(2048);
    let miner_address = miner.serve("127.0.0.1:0".parse()?).await?;
    let dir = run_dir.join("scale");
    std::fs::create_dir_all(&dir)?;
    let listen = free_local_address();
    let bridge = FarmProcess::start_bridge(&vhost, &dir, &miner.api_info(miner_address), listen, &[]);
    let worker = miner.wait_for_worker(Duration::from_secs(60)).await?;
    let started_rss = rss_mib(bridge.pid());

    // Heartbeats of `workers` simulated workers, as a real one sends them.
    let probe = std::process::Command::new(sealfarm_tests::binary("sealfarm-worker"))
        .args(["probe", "--json", "--path"])
        .arg(&dir)
        .output()?;
    let hardware: sealfarm_schemas::hardware::Hardware =
        serde_json::from_slice(&probe.stdout).context("sealfarm-worker probe --json")?;
    let capacity: Vec<sealfarm_schemas::messages::StageSlots> = [Stage::Pc1, Stage::Pc2, Stage::C1]
        .into_iter()
        .map(|stage| sealfarm_schemas::messages::StageSlots { stage, sector_size: SectorSize::GIB32, slots: 4 })
        .collect();
    let connection = lapin::Connection::connect(&vhost.url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beats = {
        let (stop, hardware, capacity) = (stop.clone(), hardware.clone(), capacity.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let round = std::time::Instant::now();
                for n in 0..workers {
                    let event = EventMessage::new(
                        &format!("sim-{n:04}"),
                        EventKind::Heartbeat {
                            hostname: format!("sim-{n:04}"),
                            stages: vec![Stage::Pc1, Stage::Pc2, Stage::C1],
                            sector_sizes: vec![SectorSize::GIB32],
                            slots: 12,
                            running: Vec::new(),
                            capacity: capacity.clone(),
                            hardware: Some(hardware.clone()),
                            storage_id: Some(format!("store-{n}")),
                            files_url: None,
                            draining: false,
                            warming: Vec::new(),
                            in_use: None,
                        },
                    );
                    let body = serde_json::to_vec(&event).unwrap_or_default();
                    let _ = channel
                        .basic_publish(
                            sealfarm_schemas::topology::EVENTS_EXCHANGE.into(),
                            event.routing_key().as_str().into(),
                            Default::default(),
                            &body,
                            Default::default(),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(5).saturating_sub(round.elapsed())).await;
            }
        })
    };

    // `calls` open calls: AddPiece of 32 GiB sectors nobody here takes.
    eprintln!("bench: scale, {calls} open calls, {workers} simulated workers");
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    let mut made = tokio::task::JoinSet::new();
    for n in 0..calls {
        let permit = slots.clone().acquire_owned().await?;
        let worker = worker.clone();
        made.spawn(async move {
            let sector = sector_ref(1_000_000 + n as u64, RegisteredSealProof::STACKED_DRG_32GIB_V1_1);
            let call: Result<CallId, _> = worker.client.call("AddPiece", add_piece_params(sector)).await;
            drop(permit);
            call.map(|_| ()).map_err(|e| anyhow::anyhow!("AddPiece: {e}"))
        });
    }
    while let Some(done) = made.join_next().await {
        done??;
    }
    // Steady state: heartbeats flowing, calls open; CPU over 30 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu_before, wall) = (cpu_seconds(bridge.pid()), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu_share = (cpu_seconds(bridge.pid()) - cpu_before) / wall.elapsed().as_secs_f64();
    let loaded_rss = rss_mib(bridge.pid());
    let peak_rss = memory_mib(bridge.pid(), "VmHWM:");
    let state_dir = dir.join("state-bridge");
    let view = std::time::Instant::now();
    let jobs = bridge_cli(&state_dir, &["jobs", "--json"])?;
    let view_ms = view.elapsed().as_secs_f64() * 1e3;
    let listed = serde_json::from_str::<Value>(&jobs)?.as_array().map_or(0, |a| a.len());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beats.abort();

    // An idle real worker.
    let idle = FarmProcess::start(&vhost, &dir, "idle-box", "ap,pc1,pc2,c1,fin,ru", "2KiB");
    wait_for_workers(&vhost, &["idle-box"], Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let worker_rss = rss_mib(idle.pid());
    let executor_rss: f64 = sealfarm_tests::child_pids(idle.pid()).into_iter().map(rss_mib).sum();
    Ok(format!(
        "\n### Scale (one bridge; {workers} simulated workers heartbeating every 5 s; {calls} open calls)\n\n\
         | figure | value | target |\n|---|---:|---|\n\
         | bridge RSS at start | {started_rss:.1} MiB | |\n\
         | bridge RSS with the load (peak) | {loaded_rss:.1} MiB ({peak_rss:.1} MiB) | ≤ 60 MB (57.2 MiB) |\n\
         | bridge CPU share over 30 s of heartbeats | {:.1} % of one core | |\n\
         | `sealfarm-bridge jobs --json` with {listed} open calls | {view_ms:.0} ms | |\n\
         | idle worker RSS (its executor child: {executor_rss:.1} MiB) | {worker_rss:.1} MiB | ≤ 40 MB (38.1 MiB) |\n",
        cpu_share * 100.0
    ))
}

/// The same round trip on the bare broker: a task published with a confirm
/// to a quorum queue, consumed, its result published with a confirm to
/// another quorum queue, the task acked, the result consumed; `window` in
/// flight. Round trips per second.
async fn raw_round_trips(vhost: &TestVhost, count: usize, window: usize) -> Result<f64> {
    tokio::time::timeout(Duration::from_secs(600), raw_round_trips_within(vhost, count, window))
        .await
        .context("the raw round trips did not finish within 10 minutes")?
}

async fn raw_round_trips_within(vhost: &TestVhost, count: usize, window: usize) -> Result<f64> {
    use lapin::options::{
        BasicAckOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let url = vhost.url();
    let connect = || lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
    let (client, server) = (connect().await?, connect().await?);
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let declare = QueueDeclareOptions { durable: true, ..Default::default() };
    let setup = client.create_channel().await?;
    for queue in ["bench.raw.tasks", "bench.raw.results"] {
        setup.queue_declare(queue.into(), declare, quorum.clone()).await?;
    }
    let persistent = || lapin::BasicProperties::default().with_delivery_mode(2);
    // The "worker": consume a task, publish its result (confirmed), ack.
    let work = server.create_channel().await?;
    work.basic_qos(window as u16, BasicQosOptions::default()).await?;
    work.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut tasks = work
        .basic_consume("bench.raw.tasks".into(), "raw-worker".into(), Default::default(), FieldTable::default())
        .await?;
    let worker = tokio::spawn(async move {
        while let Some(Ok(delivery)) = tasks.next().await {
            let work = work.clone();
            tokio::spawn(async move {
                let results = "bench.raw.results".into();
                let confirm = work
                    .basic_publish("".into(), results, BasicPublishOptions::default(), &delivery.data, persistent())
                    .await?;
                anyhow::ensure!(confirm.await?.is_ack(), "the broker refused a result");
                delivery.ack(BasicAckOptions::default()).await?;
                anyhow::Ok(())
            });
        }
    });
    // The "bridge": publish tasks (confirmed), `window` in flight, until every result came back.
    let results_channel = client.create_channel().await?;
    results_channel.basic_qos(window as u16, BasicQosOptions::default()).await?;
    let mut results = results_channel
        .basic_consume("bench.raw.results".into(), "raw-bridge".into(), Default::default(), FieldTable::default())
        .await?;
    let publisher = client.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; 400];
    let in_flight = Arc::new(tokio::sync::Semaphore::new(window));
    let started = std::time::Instant::now();
    let collector = {
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                let Some(Ok(result)) = results.next().await else { break };
                result.ack(BasicAckOptions::default()).await?;
                in_flight.add_permits(1);
            }
            anyhow::Ok(())
        })
    };
    let mut confirms = tokio::task::JoinSet::new();
    for _ in 0..count {
        in_flight.acquire().await?.forget();
        let confirm = publisher
            .basic_publish("".into(), "bench.raw.tasks".into(), BasicPublishOptions::default(), &body, persistent())
            .await?;
        confirms.spawn(confirm);
    }
    while let Some(confirmed) = confirms.join_next().await {
        anyhow::ensure!(confirmed??.is_ack(), "the broker refused a task");
    }
    collector.await??;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    worker.abort();
    for queue in ["bench.raw.tasks", "bench.raw.results"] {
        let _ = setup.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    }
    Ok(rate)
}

/// One sector through the farm, stage by stage as lotus calls them; each
/// stage's miner call → `Return*` time in ms.
async fn seal_through_farm(
    miner: &DevMiner,
    worker: &sealfarm_tests::devminer::ConnectedWorker,
    sector: SectorRef,
    stages: &[Stage],
) -> Result<Vec<(Stage, f64)>> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (ticket, seed) = ([3u8; 32], [4u8; 32]);
    let mut report = SealReport { sector, calls: Vec::new(), verified: false };
    let timeout = Duration::from_secs(900);
    let piece = miner.call(worker, "AddPiece", add_piece_params(sector), timeout, &mut report).await?;
    let pc1 =
        miner.call(worker, "SealPreCommit1", json!([sector, b64(&ticket), [piece]]), timeout, &mut report).await?;
    let cids = miner.call(worker, "SealPreCommit2", json!([sector, pc1]), timeout, &mut report).await?;
    let c1 = miner
        .call(worker, "SealCommit1", json!([sector, b64(&ticket), b64(&seed), [piece], cids]), timeout, &mut report)
        .await?;
    if stages.contains(&Stage::C2) {
        miner.call(worker, "SealCommit2", json!([sector, c1]), timeout, &mut report).await?;
    }
    miner.call(worker, "FinalizeSector", json!([sector]), timeout, &mut report).await?;
    let stage_of = |method: &str| match method {
        "AddPiece" => Some(Stage::Ap),
        "SealPreCommit1" => Some(Stage::Pc1),
        "SealPreCommit2" => Some(Stage::Pc2),
        "SealCommit1" => Some(Stage::C1),
        "SealCommit2" => Some(Stage::C2),
        _ => None,
    };
    Ok(report
        .calls
        .iter()
        .filter_map(|(method, _, _, took)| Some((stage_of(method)?, took.as_secs_f64() * 1e3)))
        .collect())
}

/// CallID → when a worker claimed it (Unix ms), from the claim events.
async fn watch_claims(vhost: &TestVhost) -> Result<Arc<Mutex<HashMap<uuid::Uuid, u64>>>> {
    let (connection, mut events) = subscribe_events(vhost, "worker.*.claim").await?;
    let claims: Arc<Mutex<HashMap<uuid::Uuid, u64>>> = Default::default();
    let map = claims.clone();
    tokio::spawn(async move {
        let _connection = connection;
        while let Some(Ok(delivery)) = events.next().await {
            if let Ok(EventMessage { at_ms, event: EventKind::Claim { call_id, .. }, .. }) =
                serde_json::from_slice(&delivery.data)
            {
                map.lock().unwrap().insert(call_id, at_ms);
            }
        }
    });
    Ok(claims)
}

fn bridge_cli(state_dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(sealfarm_tests::binary("sealfarm-bridge"))
        .args(args)
        .env("SEALFARM_STATE_DIR", state_dir)
        .output()?;
    if !out.status.success() {
        bail!("sealfarm-bridge {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces the text between the bench markers in `path` (appends them if missing).
fn write_section(path: &std::path::Path, section: &str) -> Result<()> {
    const BEGIN: &str = "<!-- sealfarm-bench -->";
    const END: &str = "<!-- /sealfarm-bench -->";
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}\n{END}");
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + END.len()..]),
        _ => format!("{}\n\n## Farm against library: `sealfarm-bench`\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

fn total_memory_gib() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / (1024.0 * 1024.0)
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
