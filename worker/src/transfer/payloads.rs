//! A job's large inputs and outputs, which never ride the broker
//! (`docs/ARCHITECTURE.md`, "Blobs").
//!
//! * Before a run, [`resolve_inputs`] puts the inputs where the executor
//!   reads them: a C2's C1 output (a PR2's vanilla proofs) is fetched from
//!   the bridge and checked against its digest; AddPiece (DataCid) piece data is read from
//!   `sealfarm/pieces/<id>` under the worker's sealing path, downloaded there
//!   from the bridge first when this worker does not share the bridge's
//!   storage.
//! * After a run, [`keep_output`] writes a C1 output (PR1's proofs) to
//!   `<state-dir>/blobs/<sha256>` (fsynced) and puts the reference in the
//!   result, which the job store then keeps: a crash before the result is
//!   published loses nothing. [`hand_over`] uploads the blob before the result
//!   is published (again after a restart), [`forget_output`] removes the
//!   local copy once the broker confirmed the result.
//!
//! A worker started without `--bridge` carries a C1 output inline up to
//! [`INLINE_LIMIT`] (test sizes, a worker driven straight from the broker)
//! and fails larger ones with an error that names the flag.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sealfarm_runtime::partial_file::write_whole;
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::blob::{BlobRef, Payload, INLINE_LIMIT};
use sealfarm_schemas::messages::PieceData;
use sealfarm_schemas::{Bytes, CallError, ErrorCode, Outcome, ResultMessage, Task, TaskMessage};

use super::bridge_client::{with_retries, BridgeClient};
use crate::sealing::layout::piece_path;
use crate::service::WorkerConfig;

/// Tries at a transfer before a job gives up on the bridge (about 4 minutes).
const TRANSFER_TRIES: u32 = 12;

/// The task as the executor runs it, and the piece file this worker
/// downloaded for it (removed after the run).
pub struct Resolved {
    pub task: TaskMessage,
    pub downloaded: Option<PathBuf>,
}

fn failed(message: String) -> CallError {
    CallError::new(ErrorCode::UNKNOWN, message)
}

fn bridge<'a>(config: &'a WorkerConfig, task: &TaskMessage, what: &str) -> Result<&'a BridgeClient, CallError> {
    config.bridges.get(task.bridge.as_deref()).ok_or_else(|| {
        let named = match &task.bridge {
            Some(id) => format!("--bridge {id}=<the URL of bridge {id}>"),
            None => "--bridge <the bridge's URL>".to_string(),
        };
        failed(format!(
            "sealfarm worker {}: {what}, which it fetches from the bridge: start it with {named} and \
             --worker-token (env SEALFARM_BRIDGE_URL, SEALFARM_WORKER_TOKEN)",
            config.worker_id
        ))
    })
}

/// Puts the task's inputs where the executor reads them.
pub async fn resolve_inputs(
    config: &WorkerConfig,
    task: &TaskMessage,
    shutdown: &Shutdown,
) -> Result<Resolved, CallError> {
    match &task.task {
        // A C2's C1 output, a PR2's vanilla proofs.
        Task::C2 { c1_out: Payload::Blob(blob) } | Task::Pr2 { vanilla_proofs: Payload::Blob(blob), .. } => {
            let (stage, what) = match &task.task {
                Task::C2 { .. } => ("C2", "C1 output"),
                _ => ("PR2", "vanilla proofs"),
            };
            let client = bridge(config, task, &format!("this {stage} names its {what} as blob {blob}"))?;
            let bytes = with_retries(TRANSFER_TRIES, shutdown, || client.fetch_blob(blob))
                .await
                .map_err(|e| failed(format!("cannot fetch the {what} of {}: {e:#}", task.sector.id)))?;
            tracing::info!(call_id = %task.call_id, %blob, "{what} fetched from the bridge and checked");
            let mut resolved = task.clone();
            resolved.task = task.task.with_payload(Payload::Inline(Bytes(bytes)));
            Ok(Resolved { task: resolved, downloaded: None })
        }
        Task::Ap { data: PieceData::Piece { id }, .. } | Task::Dc { data: PieceData::Piece { id }, .. } => {
            let path = piece_path(config.sealing.root(), task.bridge.as_deref(), *id);
            if path.is_file() {
                return Ok(Resolved { task: task.clone(), downloaded: None });
            }
            let what =
                format!("the piece data of {} is not in {} (not shared storage)", task.sector.id, path.display());
            let client = bridge(config, task, &what)?;
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)
                    .map_err(|e| failed(format!("cannot create {}: {e}", folder.display())))?;
            }
            let bytes = with_retries(TRANSFER_TRIES, shutdown, || client.download_piece(*id, &path))
                .await
                .map_err(|e| failed(format!("cannot download the piece data of {}: {e:#}", task.sector.id)))?;
            tracing::info!(call_id = %task.call_id, piece = %id, bytes, "piece data downloaded from the bridge");
            Ok(Resolved { task: task.clone(), downloaded: Some(path) })
        }
        _ => Ok(Resolved { task: task.clone(), downloaded: None }),
    }
}

fn blob_dir(config: &WorkerConfig) -> PathBuf {
    config.state_dir.join("blobs")
}

/// Keeps a large output (a C1 output, PR1 proofs) as a local blob for the
/// bridge (or inline when small and there is no bridge); other outcomes
/// pass through.
pub fn keep_output(config: &WorkerConfig, outcome: Outcome) -> Outcome {
    let Outcome::Done(output) = &outcome else { return outcome };
    let Some(Payload::Inline(bytes)) = output.payload() else { return outcome };
    let stage = output.stage();
    if config.bridges.is_empty() {
        if bytes.0.len() <= INLINE_LIMIT {
            return outcome;
        }
        return Outcome::Failed(failed(format!(
            "sealfarm worker {}: the {stage} output is {} bytes, more than a broker message carries ({INLINE_LIMIT}); \
             start the worker with --bridge and --worker-token so it goes to the bridge as a blob",
            config.worker_id,
            bytes.0.len()
        )));
    }
    match write_blob(&blob_dir(config), &bytes.0) {
        Ok(blob) => Outcome::Done(output.with_payload(Payload::Blob(blob))),
        Err(err) => Outcome::Failed(failed(format!("cannot keep the {stage} output on this worker: {err:#}"))),
    }
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<BlobRef> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let blob = BlobRef::of(bytes);
    let path = dir.join(&blob.sha256);
    write_whole(&path.with_extension("partial"), &path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(blob)
}

/// Uploads the blob a result names to the bridge (before the result is
/// published). A local copy already gone was handed over before.
pub async fn hand_over(
    config: &WorkerConfig,
    bridge: Option<&str>,
    result: &ResultMessage,
    shutdown: &Shutdown,
) -> Result<()> {
    let Some(blob) = result.outcome.output_blob() else { return Ok(()) };
    let path = blob_dir(config).join(&blob.sha256);
    if !path.is_file() {
        return Ok(());
    }
    let client = config.bridges.get(bridge).with_context(|| match bridge {
        Some(id) => {
            format!("a blob to hand over to bridge {id}, but no --bridge {id}=URL (nor one --bridge URL for any)")
        }
        None => "a blob to hand over, but no --bridge".to_string(),
    })?;
    with_retries(TRANSFER_TRIES, shutdown, || client.upload_blob(blob, &path))
        .await
        .with_context(|| format!("cannot upload the {} output {blob} to the bridge", result.stage))?;
    tracing::info!(call_id = %result.call_id, %blob, "{} output handed to the bridge", result.stage.as_str().to_uppercase());
    Ok(())
}

/// Removes the local copy of a result's blob once the broker has the result.
pub fn forget_output(config: &WorkerConfig, result: &ResultMessage) {
    if let Some(blob) = result.outcome.output_blob() {
        let _ = std::fs::remove_file(blob_dir(config).join(&blob.sha256));
    }
}
