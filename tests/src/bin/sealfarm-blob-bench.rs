//! `sealfarm-blob-bench`: what real-size payloads and a long history cost
//! the bridge (docs/BENCHMARKS.md, "Real-size payloads and the call store").
//!
//! * `c2`: 40 MiB C1 outputs (a 32 GiB sector's) sent as `SealCommit2`: the
//!   time from the miner's call to a worker holding the checked blob (call,
//!   then the task from the broker, then the fetch and digest check), p50 and
//!   p90 of `--c2-calls`, and the bridge's peak RSS.
//! * `store`: `--sequences` simulated sectors, each AddPiece → PC1 → PC2 →
//!   C1 → C2 → finalize → release through a real bridge and broker, with
//!   this program answering the tasks as a worker would (the C1 output
//!   uploaded as a `--c1-bytes` blob, fetched back for C2, no proofs): the
//!   call store's size on disk and the bridge's RSS as the history grows,
//!   with the default retention and with `--retain-returned 20s`.
//!
//! Run through `scripts/bench-blobs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use sealfarm_schemas::blob::{BlobRef, Payload};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology::{task_queue, RESULTS_QUEUE};
use sealfarm_schemas::{
    Bytes, CallId, Outcome, RegisteredSealProof, ResultMessage, SectorSize, Stage, StageOutput, Task, TaskMessage,
};
use sealfarm_tests::devminer::{sector_ref, DevMiner};
use sealfarm_tests::{free_local_address, memory_mib, noise, FarmProcess, TestVhost};
use serde_json::{json, Value};

const P2K: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

struct Options {
    parts: Vec<String>,
    c2_calls: usize,
    sequences: usize,
    c1_bytes: usize,
    concurrency: usize,
    /// `keep` (default retention), `prune` (`--retain-returned 20s`).
    retention: Vec<String>,
}

fn options() -> Result<Options> {
    let mut options = Options {
        parts: vec!["c2".into(), "store".into()],
        c2_calls: 20,
        sequences: 10_000,
        c1_bytes: 100 << 10,
        concurrency: 32,
        retention: vec!["keep".into(), "prune".into()],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--only" => options.parts = value()?.split(',').map(str::to_string).collect(),
            "--c2-calls" => options.c2_calls = value()?.parse()?,
            "--sequences" => options.sequences = value()?.parse()?,
            "--c1-bytes" => options.c1_bytes = value()?.parse()?,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--retention" => options.retention = value()?.split(',').map(str::to_string).collect(),
            "--help" | "-h" => {
                println!(
                    "sealfarm-blob-bench [--only c2,store] [--c2-calls 20] [--sequences 10000] [--c1-bytes 102400] \
                     [--concurrency 32] [--retention keep,prune]\nc2: 40 MiB SealCommit2 inputs to a worker holding the checked blob; store: \
                     the call store and the bridge's memory over simulated sector sequences"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(options)
}

/// A bridge registered with devminer on a vhost of its own.
struct Farm {
    vhost: TestVhost,
    _dir: tempfile::TempDir,
    state_dir: std::path::PathBuf,
    miner: Arc<DevMiner>,
    bridge: FarmProcess,
    worker: Arc<sealfarm_tests::devminer::ConnectedWorker>,
    listen: std::net::SocketAddr,
    http: reqwest::Client,
}

impl Farm {
    async fn start(label: &str, bridge_args: &[&str]) -> Result<Farm> {
        let vhost = TestVhost::new(label);
        let dir = tempfile::tempdir()?;
        let miner = DevMiner::new(2048);
        let address = miner.serve("127.0.0.1:0".parse()?).await?;
        let listen = free_local_address();
        let bridge = FarmProcess::start_bridge(&vhost, dir.path(), &miner.api_info(address), listen, bridge_args);
        let worker = miner.wait_for_worker(Duration::from_secs(60)).await?;
        let state_dir = dir.path().join("state-bridge");
        Ok(Farm { vhost, _dir: dir, state_dir, miner, bridge, worker, listen, http: reqwest::Client::new() })
    }

    fn blob_url(&self, blob: &BlobRef) -> String {
        format!("http://{}/sealfarm/v0/blobs/{}", self.listen, blob.sha256)
    }

    async fn fetch(&self, blob: &BlobRef) -> Result<Vec<u8>> {
        let answer = self.http.get(self.blob_url(blob)).bearer_auth(self.vhost.worker_token()).send().await?;
        anyhow::ensure!(answer.status().is_success(), "GET blob: {}", answer.status());
        let bytes = answer.bytes().await?.to_vec();
        blob.verify(&bytes).map_err(anyhow::Error::msg)?;
        Ok(bytes)
    }

    async fn upload(&self, bytes: Vec<u8>) -> Result<BlobRef> {
        let blob = BlobRef::of(&bytes);
        let answer =
            self.http.put(self.blob_url(&blob)).bearer_auth(self.vhost.worker_token()).body(bytes).send().await?;
        anyhow::ensure!(answer.status().is_success(), "PUT blob: {}", answer.status());
        Ok(blob)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 40 MiB SealCommit2 inputs: miner call → worker holds the checked blob.
async fn c2(calls: usize) -> Result<()> {
    let farm = Farm::start("blob-bench-c2", &[]).await?;
    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = task_queue(Stage::C2, SectorSize::KIB2);
    let mut tasks = channel
        .basic_consume(queue.as_str().into(), "bench".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let (mut total, mut call_part, mut fetch_part) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..calls {
        let input = noise(40 << 20, n as u64);
        let params = json!([sector_ref(n as u64 + 1, P2K), Bytes(input)]);
        let started = Instant::now();
        let _: CallId = farm.worker.client.call("SealCommit2", params).await?;
        let answered = started.elapsed();
        let delivery = tasks.next().await.context("no C2 task")??;
        delivery.ack(BasicAckOptions::default()).await?;
        let task: TaskMessage = serde_json::from_slice(&delivery.data)?;
        let Task::C2 { c1_out: Payload::Blob(blob) } = &task.task else { bail!("the C2 task carries no blob") };
        let fetch_started = Instant::now();
        farm.fetch(blob).await?;
        total.push(started.elapsed().as_secs_f64() * 1000.0);
        call_part.push(answered.as_secs_f64() * 1000.0);
        fetch_part.push(fetch_started.elapsed().as_secs_f64() * 1000.0);
    }
    for list in [&mut total, &mut call_part, &mut fetch_part] {
        list.sort_by(f64::total_cmp);
    }
    let peak = memory_mib(farm.bridge.pid(), "VmHWM:");
    println!("## c2: {calls} SealCommit2 calls with a 40 MiB C1 output (one at a time)");
    println!("| | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, list) in [
        ("miner call → worker holds the checked blob", &total),
        ("  of which the call (body in, blob stored, task published)", &call_part),
        ("  of which the worker's GET and digest check", &fetch_part),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            percentile(list, 0.5),
            percentile(list, 0.9),
            list[list.len() - 1]
        );
    }
    println!("bridge peak RSS: {peak:.1} MiB\n");
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Answers the 2 KiB stage tasks as a worker would, without proofs.
async fn answer_tasks(farm: Arc<Farm>, c1_bytes: usize) -> Result<()> {
    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(64, BasicQosOptions::default()).await?;
    sealfarm_runtime::queues::declare(&channel).await?;
    let mut streams = Vec::new();
    for stage in Stage::ALL {
        let queue = task_queue(stage, SectorSize::KIB2);
        let tag = format!("bench-{stage}");
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        streams.push(consumer);
    }
    let storage_id = sealfarm_schemas::sector_store::open_meta(&farm._dir.path().join("sealing"))?.id;
    let mut all = futures_util::stream::select_all(streams);
    let zero_piece: Value = json!({"/": "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"});
    let cids = json!({"Unsealed": zero_piece, "Sealed": {"/": "bagboea4b5abcbwtpvlhz6ho4ev2c5p4mzc2jcf3c3ld7ly3ox4nnyiatw6ktahia"}});
    while let Some(delivery) = all.next().await {
        let delivery = delivery?;
        let task: TaskMessage = serde_json::from_slice(&delivery.data)?;
        let output = match &task.task {
            Task::Ap { .. } => {
                StageOutput::Ap { piece: serde_json::from_value(json!({"Size": 2048, "PieceCID": zero_piece}))? }
            }
            Task::Pc1 { .. } => StageOutput::Pc1 { pc1_out: Bytes(vec![7; 512]) },
            Task::Pc2 { .. } => StageOutput::Pc2 { cids: serde_json::from_value(cids.clone())? },
            Task::C1 { .. } => {
                let bytes = noise(c1_bytes, task.sector.id.number);
                StageOutput::C1 { c1_out: Payload::Blob(farm.upload(bytes).await?) }
            }
            Task::C2 { c1_out } => {
                if let Payload::Blob(blob) = c1_out {
                    farm.fetch(blob).await?;
                }
                StageOutput::C2 { proof: Bytes(vec![9; 192]) }
            }
            Task::Fin {} => StageOutput::Fin {},
            Task::Ru { .. } => StageOutput::Ru {},
            other => anyhow::bail!("the blob bench drives the sealing pipeline only, not {}", other.stage()),
        };
        let result = ResultMessage {
            schema: sealfarm_schemas::SCHEMA_VERSION,
            call_id: task.call_id,
            attempt: task.attempt,
            sector: task.sector,
            stage: task.stage(),
            worker: "bench-worker".into(),
            storage_id: Some(storage_id.clone()),
            started_at_ms: now_ms(),
            finished_at_ms: now_ms(),
            outcome: Outcome::Done(output),
            attempt_token: task.attempt_token.clone(),
        };
        let body = serde_json::to_vec(&result)?;
        channel
            .basic_publish(
                "".into(),
                RESULTS_QUEUE.into(),
                BasicPublishOptions::default(),
                &body,
                // Stamped as a worker's results are (the bench's vhost account).
                BasicProperties::default().with_delivery_mode(2).with_user_id("guest".into()),
            )
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// One simulated sector through every stage, as lotus calls them.
async fn sequence(farm: &Farm, number: u64) -> Result<()> {
    let sector = sector_ref(number, P2K);
    let zero_piece =
        json!({"Size": 2048, "PieceCID": {"/": "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"}});
    let calls: [(&str, Value); 7] = [
        ("AddPiece", sealfarm_tests::devminer::add_piece_params(sector)),
        ("SealPreCommit1", json!([sector, Bytes(vec![1; 32]), [zero_piece]])),
        ("SealPreCommit2", json!([sector, Bytes(vec![7; 512])])),
        (
            "SealCommit1",
            json!([sector, Bytes(vec![1; 32]), Bytes(vec![2; 32]), [zero_piece], {"Unsealed": zero_piece["PieceCID"], "Sealed": {"/": "bagboea4b5abcbwtpvlhz6ho4ev2c5p4mzc2jcf3c3ld7ly3ox4nnyiatw6ktahia"}}]),
        ),
        ("SealCommit2", Value::Null),
        ("FinalizeSector", json!([sector])),
        ("ReleaseUnsealed", json!([sector, null])),
    ];
    let mut c1_out = Value::Null;
    for (method, params) in calls {
        let params = if method == "SealCommit2" { json!([sector, c1_out.clone()]) } else { params };
        let id: CallId =
            farm.worker.client.call(method, params).await.with_context(|| format!("{method} of {number}"))?;
        let returned = farm.miner.wait_for_return(&id, Duration::from_secs(120)).await?;
        if !returned.params.get(2).is_none_or(Value::is_null) && returned.params.len() == 3 {
            bail!("{method} of sector {number} failed: {}", returned.params[2]);
        }
        if method == "SealCommit1" {
            c1_out = returned.params[1].clone();
        }
        farm.miner.drop_params(&id);
    }
    Ok(())
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The call store and the bridge's memory over `sequences` simulated sectors.
async fn store(options: &Options, label: &str, bridge_args: &[&str]) -> Result<()> {
    let farm = Arc::new(Farm::start(label, bridge_args).await?);
    let answering = tokio::spawn({
        let farm = farm.clone();
        let c1_bytes = options.c1_bytes;
        async move {
            if let Err(err) = answer_tasks(farm, c1_bytes).await {
                eprintln!("the simulated worker stopped: {err:#}");
                std::process::exit(1);
            }
        }
    });
    println!(
        "## store: {} sector sequences (7 calls each, {} B C1 blobs), bridge {:?}",
        options.sequences, options.c1_bytes, bridge_args
    );
    println!("| sequences | store on disk MiB | rewrites | blobs kept | bridge RSS MiB | bridge peak MiB | s |");
    println!("|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let report = |done: usize| {
        let blobs = std::fs::read_dir(farm.state_dir.join("blobs")).map(|d| d.count()).unwrap_or(0);
        let rewrites = farm.bridge.log_text().matches("call store rewritten").count();
        println!(
            "| {done} | {:.1} | {rewrites} | {blobs} | {:.1} | {:.1} | {:.0} |",
            dir_size(&farm.state_dir.join("calls.sled")) as f64 / (1 << 20) as f64,
            memory_mib(farm.bridge.pid(), "VmRSS:"),
            memory_mib(farm.bridge.pid(), "VmHWM:"),
            started.elapsed().as_secs_f64()
        );
    };
    report(0);
    let step = (options.sequences / 8).max(1);
    let mut done = 0;
    while done < options.sequences {
        let batch = step.min(options.sequences - done);
        let numbers: Vec<u64> = (done..done + batch).map(|n| n as u64 + 1).collect();
        let results: Vec<Result<()>> = futures_util::stream::iter(numbers)
            .map(|n| {
                let farm = farm.clone();
                async move { sequence(&farm, n).await }
            })
            .buffer_unordered(options.concurrency)
            .collect()
            .await;
        for result in results {
            result?;
        }
        done += batch;
        report(done);
    }
    answering.abort();
    let took: Vec<u64> = farm
        .bridge
        .log_text()
        .lines()
        .filter(|l| l.contains("call store rewritten"))
        .filter_map(|l| plain(l).split("took_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    if let (Some(min), Some(max)) = (took.iter().min(), took.iter().max()) {
        println!("{} rewrites of the call store took {min}-{max} ms (calls wait meanwhile)", took.len());
    }
    // Counted once the bridge is gone (a status request for every call would weigh on its memory).
    let pid = farm.bridge.pid();
    std::process::Command::new("kill").arg(pid.to_string()).status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default().contains("zombie")
    {
        anyhow::ensure!(Instant::now() < deadline, "the bridge did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = sealfarm_bridge::calls::store::CallStore::open(&farm.state_dir)?;
    let (calls, bytes) = store.size();
    println!("calls in the store at the end: {calls} ({:.1} MiB on disk)\n", bytes as f64 / (1 << 20) as f64);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options()?;
    println!(
        "sealfarm-blob-bench on {} cores, {}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::consts::ARCH
    );
    if options.parts.iter().any(|p| p == "c2") {
        c2(options.c2_calls).await?;
    }
    if options.parts.iter().any(|p| p == "store") {
        if options.retention.iter().any(|r| r == "keep") {
            store(&options, "blob-bench-keep", &[]).await?;
        }
        if options.retention.iter().any(|r| r == "prune") {
            store(&options, "blob-bench-prune", &["--retain-returned", "20s"]).await?;
        }
    }
    Ok(())
}
