//! `sealfarm-worker bench`: seal sectors on this machine through the same
//! job-execution code a worker runs ([`crate::proofs::execute`]), with no
//! broker, and time each stage — the in-process baseline that the farm's
//! overhead is measured against, and what an operator runs to decide which
//! stages a box should take.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use sealfarm_schemas::messages::PieceData;
use sealfarm_schemas::{
    Bytes, RegisteredSealProof, SectorId, SectorRef, SectorSize, Stage, StageOutput, Task, TaskMessage,
};
use serde::Serialize;

use crate::proofs;
use crate::sector_files::SealingPath;

/// One timed stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageTiming {
    pub sector: u64,
    pub stage: Stage,
    pub millis: f64,
}

/// Seals `repeat` sectors of `size` through `stages` (a prefix of
/// AP → PC1 → PC2 → C1 → C2) in `sealing`, returning each stage's time.
pub fn run(sealing: &SealingPath, size: SectorSize, stages: &[Stage], repeat: u32) -> Result<Vec<StageTiming>> {
    let proof = RegisteredSealProof::v1_1_for(size);
    let mut timings = Vec::new();
    for round in 0..repeat {
        let sector = SectorRef { id: SectorId { miner: 1000, number: 900_000 + u64::from(round) }, proof_type: proof };
        let ticket = Bytes([round as u8 + 1; 32].to_vec());
        let seed = Bytes([round as u8 + 2; 32].to_vec());
        let mut time = |task: Task| -> Result<StageOutput> {
            let message = TaskMessage::new(sector, task);
            let stage = message.stage();
            let started = Instant::now();
            let output = proofs::execute(sealing, &message).outcome.map_err(|e| anyhow::anyhow!("{stage}: {e}"))?;
            timings.push(StageTiming {
                sector: sector.id.number,
                stage,
                millis: started.elapsed().as_secs_f64() * 1e3,
            });
            Ok(output)
        };
        let wants = |stage| stages.contains(&stage);
        if !wants(Stage::Ap) {
            bail!("bench starts every sector with ap");
        }
        let StageOutput::Ap { piece } =
            time(Task::Ap { existing_piece_sizes: vec![], piece_size: size.unpadded(), data: PieceData::Null })?
        else {
            bail!("AddPiece gave no piece")
        };
        if !wants(Stage::Pc1) {
            continue;
        }
        let StageOutput::Pc1 { pc1_out } = time(Task::Pc1 { ticket: ticket.clone(), pieces: vec![piece.clone()] })?
        else {
            bail!("PC1 gave no output")
        };
        if !wants(Stage::Pc2) {
            continue;
        }
        let StageOutput::Pc2 { cids } = time(Task::Pc2 { pc1_out })? else { bail!("PC2 gave no CIDs") };
        if !wants(Stage::C1) {
            continue;
        }
        let StageOutput::C1 { c1_out } =
            time(Task::C1 { ticket: ticket.clone(), seed: seed.clone(), pieces: vec![piece], cids: Box::new(cids) })?
        else {
            bail!("C1 gave no output")
        };
        if wants(Stage::C2) {
            time(Task::C2 { c1_out })?;
        }
        std::fs::remove_dir_all(sealing.cache(sector.id)).context("cleaning up")?;
        let _ = std::fs::remove_file(sealing.sealed(sector.id));
        let _ = std::fs::remove_file(sealing.unsealed(sector.id));
    }
    Ok(timings)
}
