//! `sealfarm-demo`: the main job. A local farm — RabbitMQ, a lotus-miner
//! stand-in (devminer), `sealfarm-bridge` and two `sealfarm-worker`
//! processes — seals real 2 KiB CC sectors end to end.
//!
//! devminer registers the bridge as one lotus-worker (`WorkerConnect` with
//! its call-backs), then walks every sector through AddPiece → PC1 → PC2 →
//! C1 → C2 → release-unsealed → finalize exactly as lotus' pipeline calls a
//! worker, prints each call as its `Return*` arrives, verifies every proof,
//! and ends with a table of times and of the worker that ran each stage
//! (read from the workers' claim events). With `--snap` it then snaps a
//! deal into the first sector as lotus' snap-deal pipeline does and verifies
//! the update proof. Run it through `scripts/farm`, which does the set-up
//! first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use sealfarm_schemas::{EventKind, EventMessage, RegisteredSealProof};
use sealfarm_tests::devminer::{sector_ref, DevMiner, SealReport};
use sealfarm_tests::{free_local_address, subscribe_events, wait_for_workers, FarmProcess, TestVhost};

const COLUMNS: [(&str, &str); 7] = [
    ("AddPiece", "AP"),
    ("SealPreCommit1", "PC1"),
    ("SealPreCommit2", "PC2"),
    ("SealCommit1", "C1"),
    ("SealCommit2", "C2"),
    ("ReleaseUnsealed", "RU"),
    ("FinalizeSector", "FIN"),
];

#[tokio::main]
async fn main() -> Result<()> {
    let mut sectors = 2u64;
    let mut snap = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sectors" => {
                sectors =
                    args.next().context("--sectors needs a number")?.parse().context("--sectors needs a number")?
            }
            "--snap" => snap = true,
            "-h" | "--help" => {
                println!(
                    "sealfarm-demo [--sectors N] [--snap]: seal N real 2 KiB CC sectors on a local farm (default 2); \
                     with --snap, then snap a deal into the first (ReplicaUpdate, both update proofs verified, \
                     unseal, finalize)"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let run_dir = std::env::current_dir()?.join(".farm").join(format!("run-{}", sealfarm_schemas::messages::now_ms()));
    std::fs::create_dir_all(&run_dir)?;
    let vhost = TestVhost::new("farm");
    println!("farm: RabbitMQ vhost {}, files and logs in {}", vhost.name, run_dir.display());

    let miner = DevMiner::new(2048);
    let miner_address = miner.serve("127.0.0.1:0".parse()?).await?;
    let api_info = miner.api_info(miner_address);
    println!("farm: devminer on {miner_address}; MINER_API_INFO={}…", &api_info[..20]);
    let claim_events = watch_claims(&vhost).await?;
    let listen = free_local_address();
    let _bridge = FarmProcess::start_bridge(&vhost, &run_dir, &api_info, listen, &[]);
    let sealing_stages = "ap,pc1,pc2,c1,fin,ru,update,pr1,gsk,fru,unseal,dc,dl";
    let _sealer = FarmProcess::start_for_bridge(&vhost, &run_dir, listen, "sealing-box", sealing_stages, "2KiB", &[]);
    let _prover = FarmProcess::start_for_bridge(&vhost, &run_dir, listen, "proving-box", "c2,pr2", "2KiB", &[]);
    let worker = miner.wait_for_worker(Duration::from_secs(60)).await?;
    println!("farm: sealfarm-bridge registered with the miner as {}", worker.info["Hostname"]);
    wait_for_workers(&vhost, &["sealing-box", "proving-box"], Duration::from_secs(60)).await?;
    println!("farm: workers sealing-box and proving-box are consuming");
    let state_dir = run_dir.join("state-bridge");
    let read_token = std::fs::read_to_string(state_dir.join("token-read")).context("the bridge's read token")?;
    println!("farm: dashboard http://{listen}/dashboard#token={}\n", read_token.trim());

    miner.progress.store(true, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let proof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
    let tickets: Vec<[u8; 32]> = (1..=sectors).map(|_| sealfarm_tests::cc::randomness()).collect();
    let runs = (1..=sectors)
        .zip(&tickets)
        .map(|(n, ticket)| miner.seal_cc_with(&worker, sector_ref(n, proof), *ticket, Duration::from_secs(900)));
    // What an operator sees while the C2s run, taken on the way.
    let snapshot = tokio::spawn(views_while_proving(state_dir.clone()));
    let sealed: Vec<(SealReport, sealfarm_schemas::SectorCids)> =
        futures_util::future::join_all(runs).await.into_iter().collect::<Result<_>>()?;
    let (reports, cids): (Vec<SealReport>, Vec<_>) = sealed.into_iter().unzip();
    let while_proving = snapshot.await.unwrap_or_default();
    let elapsed = started.elapsed();

    let claims = claim_events.lock().unwrap().clone();
    println!();
    print!("{:<14}", "sector");
    for (_, short) in COLUMNS {
        print!("{short:>22}");
    }
    println!("  proof");
    for report in &reports {
        print!("{:<14}", report.sector.id.to_string());
        for (method, _) in COLUMNS {
            let cell = report.calls.iter().find(|(m, _, _, _)| m == method).map(|(_, call, _, took)| {
                let worker = claims.get(&call.id).map(|(worker, _)| worker.as_str()).unwrap_or("bridge");
                format!("{} ms {worker}", took.as_millis())
            });
            print!("{:>22}", cell.unwrap_or_default());
        }
        println!("  {}", if report.verified { "verified" } else { "INVALID" });
    }
    println!(
        "\n{} sectors sealed and verified in {:.1} s (times: miner call → Return)",
        reports.len(),
        elapsed.as_secs_f64()
    );
    println!("\ndispatch: miner call → a worker claimed the task (ms, per sector)");
    for (method, short) in COLUMNS {
        let waits: Vec<String> = reports
            .iter()
            .filter_map(|r| r.calls.iter().find(|(m, _, _, _)| m == method))
            .filter_map(|(_, call, called_at, _)| {
                claims.get(&call.id).map(|(_, at)| at.saturating_sub(*called_at).to_string())
            })
            .collect();
        if !waits.is_empty() {
            println!("  {short:<4} {}", waits.join(", "));
        }
    }
    if !while_proving.is_empty() {
        println!("\nwhat an operator saw while the C2s ran:\n{while_proving}");
    }
    let mut all_verified = reports.iter().all(|r| r.verified);
    if snap {
        let sector = reports[0].sector;
        let key = cids[0].sealed.clone().context("the first sector's CommR")?;
        let bytes = proof.info().map_or(0, |i| i.sector_size.unpadded());
        println!("\nsnap deal: a deal of {bytes} bytes into {} (its CC replica is the sector key)\n", sector.id);
        let started = Instant::now();
        let report = miner.snap_deal(&worker, sector, &key, tickets[0], Duration::from_secs(900)).await?;
        let claims = claim_events.lock().unwrap().clone();
        println!();
        for (method, call, _, took) in &report.calls {
            let worker = claims.get(&call.id).map(|(worker, _)| worker.as_str()).unwrap_or("bridge");
            println!("  {method:<24} {:>8} ms  {worker}", took.as_millis());
        }
        println!(
            "\nsector {} snapped in {:.1} s; update proof {}",
            sector.id,
            started.elapsed().as_secs_f64(),
            if report.verified { "verified" } else { "INVALID" }
        );
        all_verified &= report.verified;
    }
    println!("\nand at the end:\n\n$ sealfarm-bridge queues\n{}", bridge_view(&state_dir, &["queues"])?.trim_end());
    if all_verified {
        Ok(())
    } else {
        bail!("a proof did not verify")
    }
}

/// `sealfarm-bridge ARGS` against this farm's bridge; its output.
fn bridge_view(state_dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(sealfarm_tests::binary("sealfarm-bridge"))
        .args(args)
        .env("SEALFARM_STATE_DIR", state_dir)
        .output()
        .with_context(|| format!("sealfarm-bridge {args:?}"))?;
    if !out.status.success() {
        bail!("sealfarm-bridge {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `workers` and `jobs` as soon as a C2 runs (empty if none was seen).
async fn views_while_proving(state_dir: std::path::PathBuf) -> String {
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(jobs) = bridge_view(&state_dir, &["jobs", "--json"]) else { continue };
        let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap_or_default();
        let proving = jobs.as_array().is_some_and(|j| j.iter().any(|j| j["stage"] == "c2" && j["state"] == "running"));
        if proving {
            let (Ok(workers), Ok(jobs)) = (bridge_view(&state_dir, &["workers"]), bridge_view(&state_dir, &["jobs"]))
            else {
                continue;
            };
            return format!(
                "\n$ sealfarm-bridge workers\n{}\n\n$ sealfarm-bridge jobs\n{}",
                workers.trim_end(),
                jobs.trim_end()
            );
        }
    }
    String::new()
}

/// CallID → the worker that claimed it and when (Unix ms), from the workers' claim events.
async fn watch_claims(vhost: &TestVhost) -> Result<Arc<Mutex<HashMap<uuid::Uuid, (String, u64)>>>> {
    let (connection, mut events) = subscribe_events(vhost, "worker.*.claim").await?;
    let claims: Arc<Mutex<HashMap<uuid::Uuid, (String, u64)>>> = Default::default();
    let map = claims.clone();
    tokio::spawn(async move {
        let _connection = connection;
        while let Some(Ok(delivery)) = events.next().await {
            if let Ok(EventMessage { worker, at_ms, event: EventKind::Claim { call_id, .. }, .. }) =
                serde_json::from_slice(&delivery.data)
            {
                map.lock().unwrap().insert(call_id, (worker, at_ms));
            }
        }
    });
    Ok(claims)
}
