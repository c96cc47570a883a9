//! `sealfarm-worker bench`: seal sectors on this machine through the same
//! job-execution code a worker runs ([`crate::sealing::proofs::execute`]),
//! with no broker, and time each stage — the in-process baseline that the
//! farm's overhead is measured against, and what an operator runs to decide
//! which stages a box should take.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use sealfarm_schemas::messages::PieceData;
use sealfarm_schemas::{
    Bytes, RegisteredSealProof, SectorId, SectorRef, SectorSize, Stage, StageOutput, Task, TaskMessage,
};
use serde::{Deserialize, Serialize};

use crate::sealing::layout::SealingPath;
use crate::sealing::proofs;

/// One timed stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageTiming {
    pub sector: u64,
    pub sector_size: SectorSize,
    pub stage: Stage,
    pub millis: f64,
    /// The process's peak resident memory during the stage (Linux: the
    /// high-water mark is reset before each stage), bytes.
    pub peak_rss_bytes: u64,
    /// Whether the library's GPU code ran the stage: it said so in its log
    /// (see [`GpuWitness`]).
    pub gpu: bool,
    /// A stage of the warm-up sector (`crate::sealing::warm_up`), not of the bench.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm_up: bool,
}

/// GPU use the proofs library reported since the last [`GpuWitness::reset`].
static GPU_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A tracing layer that watches the proofs library's log for the lines it
/// writes when GPU code runs ("generating tree c using the GPU", "GPU is
/// available for Multiexp", …): the evidence behind `bench`'s `gpu` column.
/// Settings alone do not tell: the library reads them once, at its first
/// call, so a setting made after that is silently ignored (it kept a 2 KiB
/// PC2 on the CPU in an early H100 run).
pub struct GpuWitness;

impl GpuWitness {
    /// The library targets that log GPU use, at INFO.
    pub fn targets() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target("bellperson", tracing::Level::INFO)
            .with_target("ec_gpu_gen", tracing::Level::INFO)
            .with_target("storage_proofs_porep", tracing::Level::INFO)
    }

    pub fn reset() {
        GPU_SEEN.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn seen() -> bool {
        GPU_SEEN.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for GpuWitness {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let text = format!("{value:?}");
                    self.0 |= text.contains("using the GPU")
                        || text.contains("with GPU")
                        || text.contains("GPU is available for");
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            GPU_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A stage's time as the table prints it: ms below 10 s, else seconds.
pub fn duration(millis: f64) -> String {
    if millis < 10_000.0 {
        format!("{millis:.1} ms")
    } else {
        format!("{:.2} s", millis / 1e3)
    }
}

/// This binary was built with the library's GPU code.
pub const GPU_BUILD: bool = cfg!(any(feature = "opencl", feature = "cuda"));

/// Resets the process's peak-RSS mark (`VmHWM`), so the next reading is the
/// peak of what runs in between.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS since the last reset, bytes (0 where unknown).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A stage of a bench (or warm-up) sector ended in a panic of the proofs
/// library: the process that ran it must end (see [`proofs::Execution`]).
#[derive(Debug)]
pub struct LibraryPanicked(pub String);

impl std::fmt::Display for LibraryPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LibraryPanicked {}

/// Seals `repeat` sectors of `size` through `stages` (a prefix of
/// AP → PC1 → PC2 → C1 → C2) in `sealing`, returning each stage's time.
/// Each sector's files are removed after it, whatever happened.
pub fn run(sealing: &SealingPath, size: SectorSize, stages: &[Stage], repeat: u32) -> Result<Vec<StageTiming>> {
    if !stages.contains(&Stage::Ap) {
        bail!("bench starts every sector with ap");
    }
    let proof = RegisteredSealProof::v1_1_for(size);
    let mut timings = Vec::new();
    for round in 0..repeat {
        let sector = SectorRef { id: SectorId { miner: 1000, number: 900_000 + u64::from(round) }, proof_type: proof };
        let sealed = seal(sealing, sector, round as u8, stages, &mut timings);
        let _ = std::fs::remove_dir_all(sealing.cache(sector.id));
        let _ = std::fs::remove_file(sealing.sealed(sector.id));
        let _ = std::fs::remove_file(sealing.unsealed(sector.id));
        sealed?;
    }
    Ok(timings)
}

/// One sector through `stages`, each timed into `timings`.
fn seal(
    sealing: &SealingPath,
    sector: SectorRef,
    round: u8,
    stages: &[Stage],
    timings: &mut Vec<StageTiming>,
) -> Result<()> {
    let size = sector.proof_type.info().context("a known proof type")?.sector_size;
    let ticket = Bytes([round + 1; 32].to_vec());
    let seed = Bytes([round + 2; 32].to_vec());
    let mut time = |task: Task| -> Result<StageOutput> {
        let message = TaskMessage::new(sector, task);
        let stage = message.stage();
        reset_peak_rss();
        GpuWitness::reset();
        let started = Instant::now();
        let execution = proofs::execute(sealing, &message);
        let millis = started.elapsed().as_secs_f64() * 1e3;
        let output = match execution.outcome {
            Ok(output) => output,
            Err(e) if execution.panicked => return Err(LibraryPanicked(format!("{stage}: {e}")).into()),
            Err(e) => bail!("{stage}: {e}"),
        };
        timings.push(StageTiming {
            sector: sector.id.number,
            sector_size: size,
            stage,
            millis,
            peak_rss_bytes: peak_rss(),
            gpu: GpuWitness::seen(),
            warm_up: false,
        });
        Ok(output)
    };
    let wants = |stage| stages.contains(&stage);
    let StageOutput::Ap { piece } =
        time(Task::Ap { existing_piece_sizes: vec![], piece_size: size.unpadded(), data: PieceData::Null })?
    else {
        bail!("AddPiece gave no piece")
    };
    if !wants(Stage::Pc1) {
        return Ok(());
    }
    let StageOutput::Pc1 { pc1_out } = time(Task::Pc1 { ticket: ticket.clone(), pieces: vec![piece.clone()] })? else {
        bail!("PC1 gave no output")
    };
    if !wants(Stage::Pc2) {
        return Ok(());
    }
    let StageOutput::Pc2 { cids } = time(Task::Pc2 { pc1_out })? else { bail!("PC2 gave no CIDs") };
    if wants(Stage::C1) {
        let StageOutput::C1 { c1_out } =
            time(Task::C1 { ticket: ticket.clone(), seed, pieces: vec![piece], cids: Box::new(cids.clone()) })?
        else {
            bail!("C1 gave no output")
        };
        if wants(Stage::C2) {
            time(Task::C2 { c1_out })?;
        }
    }
    if SNAP_STAGES.iter().any(|s| wants(*s)) {
        snap(sealing, sector, &ticket, &cids, &wants, &mut time)?;
    }
    Ok(())
}

/// The snap-deal and unseal stages the bench times after PC2.
const SNAP_STAGES: [Stage; 6] = [Stage::Update, Stage::Pr1, Stage::Pr2, Stage::Unseal, Stage::Gsk, Stage::Fru];

/// Snaps the sealed sector as lotus does: deal bytes added to a new unsealed
/// file (AddPiece), ReplicaUpdate, PR1, PR2; then the unsealed copy removed and
/// recreated from the update (UnsealPiece), the sector key removed and
/// regenerated (GenerateSectorKeyFromData), FinalizeReplicaUpdate. Each
/// stage runs only when it and the stages it needs were asked for.
fn snap(
    sealing: &SealingPath,
    sector: SectorRef,
    ticket: &Bytes,
    cids: &sealfarm_schemas::SectorCids,
    wants: &dyn Fn(Stage) -> bool,
    time: &mut dyn FnMut(Task) -> Result<StageOutput>,
) -> Result<()> {
    let size = sector.proof_type.info().context("a known proof type")?.sector_size;
    let id = uuid::Uuid::new_v4();
    let piece_file = crate::sealing::layout::piece_path(sealing.root(), None, id);
    std::fs::create_dir_all(piece_file.parent().expect("a folder"))?;
    let deal: Vec<u8> = (0..size.unpadded()).map(|i| (i * 7 % 251) as u8 & 0x3f).collect();
    std::fs::write(&piece_file, &deal)?;
    let _ = std::fs::remove_file(sealing.unsealed(sector.id));
    let StageOutput::Ap { piece } =
        time(Task::Ap { existing_piece_sizes: vec![], piece_size: size.unpadded(), data: PieceData::Piece { id } })?
    else {
        bail!("AddPiece gave no piece")
    };
    let _ = std::fs::remove_file(&piece_file);
    let key = cids.sealed.clone().context("PC2 gave no CommR")?;
    let StageOutput::Update { out } = time(Task::Update { pieces: vec![piece] })? else {
        bail!("ReplicaUpdate gave no CIDs")
    };
    let (new_sealed, new_unsealed) = (out.new_sealed, out.new_unsealed);
    if wants(Stage::Pr1) {
        let StageOutput::Pr1 { vanilla_proofs } = time(Task::Pr1 {
            sector_key: key.clone(),
            new_sealed: new_sealed.clone(),
            new_unsealed: new_unsealed.clone(),
        })?
        else {
            bail!("PR1 gave no proofs")
        };
        if wants(Stage::Pr2) {
            time(Task::Pr2 { sector_key: key, new_sealed, new_unsealed: new_unsealed.clone(), vanilla_proofs })?;
        }
    }
    if wants(Stage::Unseal) {
        std::fs::remove_file(sealing.unsealed(sector.id))?;
        let task =
            Task::Unseal { offset: 0, size: size.unpadded(), randomness: ticket.clone(), comm_d: new_unsealed.clone() };
        time(task)?;
    }
    if wants(Stage::Gsk) {
        std::fs::remove_file(sealing.sealed(sector.id))?;
        time(Task::Gsk { comm_d: new_unsealed })?;
    }
    if wants(Stage::Fru) {
        time(Task::Fru {})?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use super::*;

    /// The `gpu` column rests on the library's own lines: those of its GPU
    /// paths count, those of its CPU paths and of other crates do not.
    #[test]
    fn the_gpu_witness_counts_only_the_librarys_gpu_lines() {
        let subscriber = tracing_subscriber::registry().with(GpuWitness.with_filter(GpuWitness::targets()));
        tracing::subscriber::with_default(subscriber, || {
            GpuWitness::reset();
            tracing::info!(target: "storage_proofs_porep::stacked::vanilla::proof", "generating tree c using the CPU");
            tracing::info!(target: "sealfarm_worker", "using the GPU");
            assert!(!GpuWitness::seen());
            tracing::info!(target: "storage_proofs_porep::stacked::vanilla::proof", "generating tree c using the GPU");
            assert!(GpuWitness::seen());
            GpuWitness::reset();
            tracing::info!(target: "bellperson::gpu::locks", "GPU is available for Multiexp!");
            assert!(GpuWitness::seen());
        });
    }
}
