//! The simulated compute backend (`--simulate-compute`, benchmarks only):
//! an AddPiece "fills" the sector with a placeholder piece at once; nothing
//! else is computed.

use sealfarm_schemas::{CallError, ErrorCode, Outcome, StageOutput, Task, TaskMessage};

/// What a job "computes" on a simulated worker.
pub(super) fn simulated(task: &TaskMessage) -> Outcome {
    match (&task.task, task.sector.proof_type.info()) {
        (Task::Ap { .. }, Some(info)) => Outcome::Done(StageOutput::Ap {
            piece: sealfarm_schemas::PieceInfo {
                size: info.sector_size.0,
                piece_cid: sealfarm_schemas::commitment::Commitment::Data.to_cid(&[0u8; 32]),
            },
        }),
        _ => Outcome::Failed(CallError::new(
            ErrorCode::UNKNOWN,
            format!(
                "this worker runs the simulated compute backend (--simulate-compute, a benchmark mode): it answers \
                 AddPiece with a placeholder and computes no {}",
                task.stage()
            ),
        )),
    }
}
