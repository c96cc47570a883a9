//! Delivering a call's result to the miner as the matching `Return*`,
//! retried until the miner accepts it, then marking the call returned
//! (on disk before the bridge moves on).

use std::sync::Arc;

use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_schemas::blob::Payload;
use sealfarm_schemas::{CallError, ErrorCode, Outcome, SectorCids, StageOutput};
use serde_json::{json, Value};
use tracing::Instrument;

use super::lifecycle::{Call, CallKind, CallState};
use super::Calls;
use crate::miner::rpc::CallFailure;

impl Calls {
    /// How often the miner refused this call's Return so far (0 once returned).
    pub fn return_failures(&self, call_id: uuid::Uuid) -> u32 {
        self.return_failures.lock().unwrap().get(&call_id).copied().unwrap_or(0)
    }

    /// Removes the blobs of a returned call (its C2 input, its C1 output)
    /// that no other unreturned call names.
    fn release_blobs(&self, call: &Call) {
        for blob in call.blobs() {
            self.blobs.release(&blob, || self.store.blob_in_use(&blob.sha256, call.call_id.id));
        }
    }

    /// Calls the matching `Return*` on the miner until it accepts it.
    pub(super) async fn deliver(self: Arc<Self>, call: Call) {
        let span = match call.task() {
            Some(task) => task.span(),
            None => {
                tracing::info_span!("call", call_id = %call.call_id.id, sector = %call.sector.id, method = %call.method)
            }
        };
        self.deliver_in_span(call).instrument(span).await
    }

    async fn deliver_in_span(self: Arc<Self>, call: Call) {
        let CallState::Resulted { outcome, .. } = &call.state else { return };
        let (method, mut params) = return_call(&call, outcome);
        // An output kept as a blob (a C1 output: bytes, sent as base64; PR1
        // proofs: JSON text, sent as it is) is checked, then streamed into
        // the output slot as the request is sent, one such Return at a time.
        let mut _large = None;
        let mut blob_file = None;
        if let (Some(blob), Outcome::Done(output)) = (outcome.output_blob(), outcome.as_ref()) {
            let stage = output.stage();
            _large = self.large_returns.acquire().await.ok();
            match self.blobs.checked_path(blob).await {
                Ok(path) => blob_file = Some((path, stage == sealfarm_schemas::Stage::C1, blob.size)),
                Err(err) => {
                    // Nothing to return but the loss: the miner's state machine runs the stage again.
                    tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "the {stage} output is lost");
                    let error =
                        CallError::new(ErrorCode::UNKNOWN, format!("sealfarm lost the {stage} output: {err:#}"));
                    params[2] = serde_json::to_value(error).expect("CallError is JSON");
                }
            }
        }
        let mut pauses = Backoff::new(retry::RETURN);
        let since = std::time::Instant::now();
        loop {
            let client = self.miner.client();
            let sent = match (&blob_file, params.as_array()) {
                (Some((path, true, size)), Some(items)) if items.len() == 3 => {
                    let text = crate::blobs::Blobs::base64_stream(path.clone());
                    client.call_streamed::<Value>(method, &items[..1], text, (true, *size), &items[2..]).await
                }
                (Some((path, false, size)), Some(items)) if items.len() == 3 => {
                    let text = crate::blobs::Blobs::raw_stream(path.clone());
                    client.call_streamed::<Value>(method, &items[..1], text, (false, *size), &items[2..]).await
                }
                _ => client.call_with::<Value, _>(method, &params).await,
            };
            match sent {
                Ok(_) => break,
                Err(CallFailure::AlreadyReported(_)) => {
                    tracing::info!(call_id = %call.call_id, "the miner already has this result");
                    break;
                }
                Err(err) => {
                    let text = err.to_string();
                    let delay = pauses.next_pause().unwrap_or(retry::RETURN.max);
                    *self.return_failures.lock().unwrap().entry(call.call_id.id).or_default() += 1;
                    self.metrics.return_failures.get_or_create(&vec![("method", method.to_string())]).inc();
                    tracing::warn!(call_id = %call.call_id, method, error = %text, retry_in = ?delay, "Return not accepted; retrying");
                    if self.shutdown.wait_for(delay).await {
                        return;
                    }
                }
            }
        }
        self.return_failures.lock().unwrap().remove(&call.call_id.id);
        let stage = call.task().map_or_else(|| call.method.clone(), |t| t.stage().to_string());
        self.metrics.return_latency.get_or_create(&vec![("stage", stage)]).observe(since.elapsed().as_secs_f64());
        let delivered = call.run.as_ref().map(|r| r.attempt);
        // On disk before the bridge moves on: only a crash within this
        // fsync returns the call again after a restart.
        let recorded = self.store.mark_returned(&call.call_id.id.to_string(), delivered);
        match recorded {
            // The call as it was delivered still names its output blob.
            Ok(Ok(_)) => self.release_blobs(&call),
            Ok(Err(_opened_again)) => {}
            Err(err) => {
                tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "returned but not recorded")
            }
        }
        if let Outcome::Done(output) = outcome.as_ref() {
            self.miner.declare_outputs(call.sector, call.task().map(|t| &t.task), output).await;
        }
        tracing::info!(call_id = %call.call_id, sector = %call.sector.id, method, "returned to the miner");
    }
}

/// The `Return*` method and params for a call's outcome (docs/LOTUS.md §5.1):
/// `[callID, output, error]`, or `[callID, error]` for error-only returns. A
/// failed call carries `null` as output (the zero SectorCids for PC2).
pub fn return_call(call: &Call, outcome: &Outcome) -> (&'static str, Value) {
    let id = serde_json::to_value(call.call_id).expect("CallID is JSON");
    let (output, error) = match outcome {
        Outcome::Done(output) => (output_slot(output), Value::Null),
        Outcome::Failed(err) => (Value::Null, serde_json::to_value(err).expect("CallError is JSON")),
    };
    use sealfarm_schemas::Stage::*;
    let stage = match &call.kind {
        CallKind::Fetch => return ("ReturnFetch", json!([id, error])),
        CallKind::MoveStorage => return ("ReturnMoveStorage", json!([id, error])),
        CallKind::Task { task } => task.stage(),
    };
    match stage {
        Ap => ("ReturnAddPiece", json!([id, output, error])),
        Pc1 => ("ReturnSealPreCommit1", json!([id, output, error])),
        Pc2 => {
            let cids = if output.is_null() { json!(SectorCids::default()) } else { output };
            ("ReturnSealPreCommit2", json!([id, cids, error]))
        }
        C1 => ("ReturnSealCommit1", json!([id, output, error])),
        C2 => ("ReturnSealCommit2", json!([id, output, error])),
        Fin => ("ReturnFinalizeSector", json!([id, error])),
        Ru => ("ReturnReleaseUnsealed", json!([id, error])),
        Update => {
            let out = if output.is_null() { json!({"NewSealed": null, "NewUnsealed": null}) } else { output };
            ("ReturnReplicaUpdate", json!([id, out, error]))
        }
        Pr1 => ("ReturnProveReplicaUpdate1", json!([id, output, error])),
        Pr2 => ("ReturnProveReplicaUpdate2", json!([id, output, error])),
        Gsk => ("ReturnGenerateSectorKeyFromData", json!([id, error])),
        Fru => ("ReturnFinalizeReplicaUpdate", json!([id, error])),
        Unseal => ("ReturnUnsealPiece", json!([id, error])),
        Dc => ("ReturnDataCid", json!([id, output, error])),
        Dl => ("ReturnDownloadSector", json!([id, error])),
    }
}

/// The value a stage's output puts in its `Return*` output slot (`null` for
/// a C1 output or PR1 proofs kept as a blob: they are put there when sent).
fn output_slot(output: &StageOutput) -> Value {
    let value = match output {
        StageOutput::Ap { piece } => serde_json::to_value(piece),
        StageOutput::Pc1 { pc1_out } => serde_json::to_value(pc1_out),
        StageOutput::Pc2 { cids } => serde_json::to_value(cids),
        StageOutput::C1 { c1_out: Payload::Inline(c1_out) } => serde_json::to_value(c1_out),
        StageOutput::C1 { c1_out: Payload::Blob(_) } => Ok(Value::Null),
        StageOutput::C2 { proof } | StageOutput::Pr2 { proof } => serde_json::to_value(proof),
        StageOutput::Update { out } => serde_json::to_value(out),
        // The JSON array of base64 proofs, as the worker wrote it.
        // Checked when the result was recorded.
        StageOutput::Pr1 { vanilla_proofs: Payload::Inline(text) } => {
            Ok(serde_json::from_slice(&text.0).unwrap_or_default())
        }
        StageOutput::Pr1 { vanilla_proofs: Payload::Blob(_) } => Ok(Value::Null),
        StageOutput::Dc { piece } => serde_json::to_value(piece),
        StageOutput::Fin {}
        | StageOutput::Ru {}
        | StageOutput::Gsk {}
        | StageOutput::Fru {}
        | StageOutput::Unseal {}
        | StageOutput::Dl {} => Ok(Value::Null),
    };
    value.expect("stage outputs are JSON")
}
