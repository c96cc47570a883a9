//! `sealfarm-demo`: a local farm seals real 2 KiB CC sectors end to end.
//!
//! Starts two `sealfarm-worker` processes on a private RabbitMQ vhost — a
//! sealing box (AP, PC1, PC2, C1, finalize, release) and a proving box (C2)
//! sharing one sealing path — and plays the miner: it walks every sector
//! through AP → PC1 → PC2 → C1 → C2 → finalize → release-unsealed, prints
//! each stage as it completes, verifies every proof, and ends with a table.
//! Run it through `scripts/farm`, which does the set-up first.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use filecoin_proofs_api::seal::verify_seal;
use filecoin_proofs_api::SectorId as ApiSectorId;
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::{Outcome, RegisteredSealProof, ResultMessage, SectorRef, Stage, StageOutput, Task, TaskMessage};
use sealfarm_tests::{cc, Client, TestVhost, WorkerProcess};
use sealfarm_worker::proofs::api_proof;

const ZERO_2KIB: &str = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";

struct SectorReport {
    sector: SectorRef,
    /// Stage, worker, compute ms (the worker's own clock), round trip ms (publish → result).
    stages: Vec<(Stage, String, u64, u64)>,
    /// None when the run stopped before C2.
    verified: Option<bool>,
    total: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut sectors = 2u64;
    let mut until_c1 = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sectors" => {
                sectors =
                    args.next().context("--sectors needs a number")?.parse().context("--sectors needs a number")?
            }
            "--until-c1" => until_c1 = true,
            "-h" | "--help" => {
                println!("sealfarm-demo [--sectors N] [--until-c1]: seal N real 2 KiB CC sectors on a local farm (default 2)");
                println!("  --until-c1  stop each sector after C1 (no C2, no proof): measures dispatch without the 80 s SNARK");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let run_dir = std::env::current_dir()?.join(".farm").join(format!("run-{}", sealfarm_schemas::messages::now_ms()));
    std::fs::create_dir_all(&run_dir)?;
    let vhost = TestVhost::new("farm");
    println!("farm: RabbitMQ vhost {}, files and logs in {}", vhost.name, run_dir.display());
    let client = std::sync::Arc::new(Client::connect(&vhost).await?);
    let _sealer = WorkerProcess::start(&vhost, &run_dir, "sealing-box", "ap,pc1,pc2,c1,fin,ru", "2KiB");
    let _prover = WorkerProcess::start(&vhost, &run_dir, "proving-box", "c2", "2KiB");

    client.wait_for_workers(&["sealing-box", "proving-box"], Duration::from_secs(60)).await?;
    println!("farm: workers sealing-box and proving-box are consuming");
    let started = Instant::now();
    let mut flows = tokio::task::JoinSet::new();
    for number in 1..=sectors {
        let client = client.clone();
        flows.spawn(async move {
            seal(&client, cc::sector(number, RegisteredSealProof::STACKED_DRG_2KIB_V1_1), until_c1).await
        });
    }
    let mut reports = Vec::new();
    while let Some(report) = flows.join_next().await {
        reports.push(report??);
    }
    reports.sort_by_key(|r| r.sector.id.number);

    println!();
    let stages = [Stage::Ap, Stage::Pc1, Stage::Pc2, Stage::C1, Stage::C2, Stage::Fin, Stage::Ru];
    print!("{:<14}", "sector");
    for stage in stages {
        print!("{:>22}", stage.as_str());
    }
    println!("{:>10}  proof", "total");
    for report in &reports {
        print!("{:<14}", report.sector.id.to_string());
        for (_, worker, ms, _) in &report.stages {
            print!("{:>22}", format!("{ms} ms {worker}"));
        }
        println!(
            "{:>9.1}s  {}",
            report.total.as_secs_f64(),
            match report.verified {
                Some(true) => "verified",
                Some(false) => "INVALID",
                None => "-",
            }
        );
    }
    println!("\n{} sectors sealed in {:.1} s", reports.len(), started.elapsed().as_secs_f64());
    println!("\nper stage, median over sectors: compute on the worker vs. round trip through RabbitMQ");
    println!("{:<6} {:>12} {:>14}", "stage", "compute ms", "round trip ms");
    for stage in stages {
        let mut compute: Vec<u64> = Vec::new();
        let mut round_trip: Vec<u64> = Vec::new();
        for (_, _, ms, rt) in reports.iter().flat_map(|r| r.stages.iter()).filter(|s| s.0 == stage) {
            compute.push(*ms);
            round_trip.push(*rt);
        }
        println!("{:<6} {:>12} {:>14}", stage.as_str(), median(&mut compute), median(&mut round_trip));
    }
    if reports.iter().all(|r| r.verified != Some(false)) {
        Ok(())
    } else {
        bail!("a proof did not verify")
    }
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

async fn step(client: &Client, task: TaskMessage, report: &mut SectorReport) -> Result<StageOutput> {
    let sent = Instant::now();
    let result: ResultMessage = client.call(&task, Duration::from_secs(900)).await?;
    let round_trip = sent.elapsed().as_millis() as u64;
    let ms = result.finished_at_ms.saturating_sub(result.started_at_ms);
    match result.outcome {
        Outcome::Done(output) => {
            println!(
                "{:<14} {:<4} done on {:<12} in {ms} ms",
                report.sector.id.to_string(),
                task.stage().as_str(),
                result.worker
            );
            report.stages.push((task.stage(), result.worker, ms, round_trip));
            Ok(output)
        }
        Outcome::Failed(err) => bail!("{} of {} failed on {}: {err}", task.stage(), report.sector.id, result.worker),
    }
}

async fn seal(client: &Client, sector: SectorRef, until_c1: bool) -> Result<SectorReport> {
    let started = Instant::now();
    let mut report = SectorReport { sector, stages: Vec::new(), verified: Some(false), total: Duration::ZERO };
    let (ticket, seed) = (cc::randomness(), cc::randomness());
    let StageOutput::Ap { piece } = step(client, cc::add_piece(sector), &mut report).await? else { bail!("AP output") };
    let StageOutput::Pc1 { pc1_out } = step(client, cc::precommit1(sector, ticket, &piece), &mut report).await? else {
        bail!("PC1 output")
    };
    let StageOutput::Pc2 { cids } = step(client, cc::precommit2(sector, &pc1_out), &mut report).await? else {
        bail!("PC2 output")
    };
    if cids.unsealed.as_ref().map(|c| c.to_string()).as_deref() != Some(ZERO_2KIB) {
        bail!("CommD of {} is not the zero-piece commitment", sector.id);
    }
    let StageOutput::C1 { c1_out } =
        step(client, cc::commit1(sector, ticket, seed, &piece, &cids), &mut report).await?
    else {
        bail!("C1 output")
    };
    if until_c1 {
        report.verified = None;
        report.total = started.elapsed();
        return Ok(report);
    }
    let StageOutput::C2 { proof } = step(client, cc::commit2(sector, &c1_out), &mut report).await? else {
        bail!("C2 output")
    };
    let comm_r = Commitment::Replica.from_cid(cids.sealed.as_ref().context("CommR")?).map_err(anyhow::Error::msg)?;
    let comm_d = Commitment::Data.from_cid(cids.unsealed.as_ref().context("CommD")?).map_err(anyhow::Error::msg)?;
    let api = api_proof(sector.proof_type).context("known proof")?;
    report.verified = Some(verify_seal(
        api,
        comm_r,
        comm_d,
        sector.id.prover_id(),
        ApiSectorId::from(sector.id.number),
        ticket,
        seed,
        &proof.0,
    )?);
    step(client, TaskMessage::new(sector, Task::Fin {}), &mut report).await?;
    step(client, TaskMessage::new(sector, Task::Ru { keep_unsealed: None }), &mut report).await?;
    report.total = started.elapsed();
    Ok(report)
}
