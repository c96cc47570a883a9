//! `sealfarm-resume-bench`: what a crash costs a PC1 with sealfarm's resume.
//!
//! For one sector size (8 MiB by default; 512 MiB with `--size 512MiB`) it
//! runs, on a private RabbitMQ vhost with a real `sealfarm-worker` process:
//! 1. an uninterrupted PC1 (publish → result);
//! 2. the same PC1 on a new sector, with the worker SIGKILLed halfway
//!    through its last layer (timed from the uninterrupted run's layer pace)
//!    and started again at once.
//!
//! It prints both times and their ratio per run. `--no-resume` deletes the
//! layer files after the kill, as a restart without resume would start over
//! (lotus-worker wipes the cache before PC1): the baseline to compare with.
//! Not a test: run it by hand (`scripts/bench-resume`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use sealfarm_schemas::{EventKind, EventMessage, Outcome, RegisteredSealProof, SectorSize, StageOutput};
use sealfarm_tests::{cc, subscribe_events, FarmProcess, Publisher, TestVhost};

#[tokio::main]
async fn main() -> Result<()> {
    let mut size = SectorSize::MIB8;
    let mut runs = 3u32;
    let mut resume = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size" => size = args.next().context("--size needs a value")?.parse().map_err(anyhow::Error::msg)?,
            "--runs" => runs = args.next().context("--runs needs a value")?.parse()?,
            "--no-resume" => resume = false,
            other => bail!(
                "unknown argument {other}; usage: sealfarm-resume-bench [--size 8MiB|512MiB] [--runs N] [--no-resume]"
            ),
        }
    }
    let proof = RegisteredSealProof::v1_1_for(size);
    let vhost = TestVhost::new("resume-bench");
    let dir = tempfile::tempdir()?;
    let mut publisher = Publisher::connect(&vhost).await?;
    let sizes = size.to_string();
    let start = || FarmProcess::start(&vhost, dir.path(), "w-bench", "ap,pc1", &sizes);
    let mut worker = start();

    println!(
        "{:<4} {:>8} {:>16} {:>16} {:>8} {:>14}",
        "run", "size", "uninterrupted s", "killed+resumed s", "ratio", "kill at s"
    );
    for run in 0..runs {
        // Uninterrupted.
        let sector = cc::sector(1000 + u64::from(run) * 2, proof);
        let piece = add_piece(&mut publisher, sector).await?;
        let (_c, mut events) = subscribe_events(&vhost, "worker.*.progress").await?;
        let pc1 = cc::precommit1(sector, cc::randomness(), &piece);
        let started = Instant::now();
        let call_id = pc1.call_id;
        // When the last layer started (the one before it finished): with the
        // end of the PC1, the pace that places the kill later.
        let last_layer_start = tokio::spawn(async move {
            while let Some(Ok(delivery)) = events.next().await {
                if let Ok(EventMessage { event: EventKind::Progress { done, total, call_id: id, .. }, .. }) =
                    serde_json::from_slice(&delivery.data)
                {
                    if id == call_id && done + 1 == total {
                        return Some(started.elapsed());
                    }
                }
            }
            None
        });
        publisher.publish(&pc1).await?;
        let (result, _) = publisher.result_of(&pc1, Duration::from_secs(7200)).await?;
        let uninterrupted = started.elapsed();
        ensure_done(&result.outcome)?;
        let last_layer_start = last_layer_start.await?.context("no layer progress seen")?;
        let last_layer = uninterrupted.saturating_sub(last_layer_start);

        // Killed halfway through the last layer, restarted at once.
        let sector = cc::sector(1001 + u64::from(run) * 2, proof);
        let piece = add_piece(&mut publisher, sector).await?;
        let (_c, mut events) = subscribe_events(&vhost, "worker.*.progress").await?;
        let pc1 = cc::precommit1(sector, cc::randomness(), &piece);
        let started = Instant::now();
        publisher.publish(&pc1).await?;
        loop {
            let delivery = events.next().await.context("events ended")??;
            if let Ok(EventMessage { event: EventKind::Progress { done, total, call_id, .. }, .. }) =
                serde_json::from_slice(&delivery.data)
            {
                if call_id == pc1.call_id && done + 1 == total {
                    break;
                }
            }
        }
        tokio::time::sleep(last_layer / 2).await;
        let kill_at = started.elapsed();
        let killed_ms = sealfarm_schemas::messages::now_ms();
        worker.kill();
        if !resume {
            // The baseline: what a restart costs without resume (lotus-worker
            // wipes the cache before PC1): the layers are gone.
            let cache = dir.path().join("sealing/cache").join(sector.id.file_name());
            for entry in std::fs::read_dir(&cache)? {
                let path = entry?.path();
                if path.file_name().is_some_and(|n| n.to_string_lossy().contains("layer")) {
                    std::fs::remove_file(path)?;
                }
            }
        }
        worker = start();
        let (result, _) = publisher.result_of(&pc1, Duration::from_secs(7200)).await?;
        ensure_done(&result.outcome)?;
        let resumed = started.elapsed();
        if result.started_at_ms < killed_ms {
            println!("{:<4} run discarded: the PC1 finished before the kill landed", run + 1);
            continue;
        }
        println!(
            "{:<4} {:>8} {:>16.2} {:>16.2} {:>8.2} {:>14.2}",
            run + 1,
            sizes,
            uninterrupted.as_secs_f64(),
            resumed.as_secs_f64(),
            resumed.as_secs_f64() / uninterrupted.as_secs_f64(),
            kill_at.as_secs_f64()
        );
    }
    worker.terminate(Duration::from_secs(30));
    Ok(())
}

async fn add_piece(
    publisher: &mut Publisher,
    sector: sealfarm_schemas::SectorRef,
) -> Result<sealfarm_schemas::PieceInfo> {
    let ap = cc::add_piece(sector);
    publisher.publish(&ap).await?;
    let (result, _) = publisher.result_of(&ap, Duration::from_secs(3600)).await?;
    match result.outcome {
        Outcome::Done(StageOutput::Ap { piece }) => Ok(piece),
        other => bail!("AddPiece failed: {other:?}"),
    }
}

fn ensure_done(outcome: &Outcome) -> Result<()> {
    match outcome {
        Outcome::Done(_) => Ok(()),
        Outcome::Failed(err) => bail!("PC1 failed: {err}"),
    }
}
