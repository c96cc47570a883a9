//! Accepting the miner's sealing calls and returning their results.
//!
//! A call is recorded in the [`CallStore`], its task published with a broker
//! confirm, and only then is its `CallID` answered. Results arrive on
//! `sealfarm.results`; each is stored durably, acknowledged, and delivered to
//! the miner as the matching `Return*`, retried with backoff until the miner
//! accepts it. At start, every stored result not yet returned is delivered.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sealfarm_schemas::broker::BrokerLink;
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::shutdown::Shutdown;
use sealfarm_schemas::topology;
use sealfarm_schemas::{CallId, Outcome, ResultMessage, SectorCids, SectorRef, StageOutput, Task, TaskMessage};
use serde_json::{json, Value};

use crate::call_store::{input_digest, Call, CallKind, CallState, CallStore};
use crate::registration::Miner;
use crate::rpc::RpcError;

/// Accepts calls and returns results.
pub struct Calls {
    pub store: CallStore,
    pub link: Arc<BrokerLink>,
    pub miner: Arc<Miner>,
    pub shutdown: Shutdown,
}

impl Calls {
    /// Accepts a farm call: record, publish, answer the CallID. A re-issued
    /// call (same method, sector and inputs) gets the open call's CallID.
    pub async fn accept(self: &Arc<Self>, method: &str, sector: SectorRef, task: Task) -> Result<CallId, RpcError> {
        let inputs = serde_json::to_value(&task).map_err(|e| RpcError::method(e.to_string()))?;
        let digest = input_digest(method, &sector, &inputs);
        if let Some(open) = self.store.open_call_with_digest(&digest).map_err(internal)? {
            tracing::info!(call_id = %open.call_id, sector = %sector.id, method, "re-issued call attaches to the open one");
            return Ok(open.call_id);
        }
        let Some(info) = sector.proof_type.info() else {
            return Err(RpcError::method(format!(
                "unknown seal proof type {} for sector {}",
                sector.proof_type.0, sector.id
            )));
        };
        let call_id = CallId::new(sector.id);
        let message = TaskMessage {
            schema: sealfarm_schemas::SCHEMA_VERSION,
            call_id: call_id.id,
            attempt: 1,
            sector,
            issued_at_ms: now_ms(),
            task,
        };
        let call = Call {
            call_id,
            sector,
            method: method.to_string(),
            kind: CallKind::Task { task: Box::new(message.clone()) },
            input_digest: digest,
            arrived_at_ms: message.issued_at_ms,
            updated_at_ms: message.issued_at_ms,
            state: CallState::Accepted,
        };
        self.store.insert(&call).map_err(internal)?;
        let queue = topology::task_queue(message.stage(), info.sector_size);
        let published = async {
            let broker = self.link.get().await?;
            broker.publish_json("", &queue, &message, &[]).await
        };
        if let Err(err) = published.await {
            let _ = self.store.remove(&call);
            tracing::error!(sector = %sector.id, method, error = %format!("{err:#}"), "cannot publish the task");
            return Err(RpcError::method(format!("sealfarm-bridge cannot reach the broker: {err:#}")));
        }
        self.store.set_state(&call_id.id.to_string(), CallState::Dispatched).map_err(internal)?;
        tracing::info!(call_id = %call_id, sector = %sector.id, stage = %message.stage(), queue, "call dispatched");
        Ok(call_id)
    }

    /// Accepts a call the bridge completes itself (Fetch, MoveStorage in
    /// shared storage): answered now, returned right after.
    pub fn accept_local(self: &Arc<Self>, method: &str, sector: SectorRef, kind: CallKind) -> Result<CallId, RpcError> {
        let call_id = CallId::new(sector.id);
        let now = now_ms();
        let call = Call {
            call_id,
            sector,
            method: method.to_string(),
            kind,
            input_digest: format!("local:{}", call_id.id),
            arrived_at_ms: now,
            updated_at_ms: now,
            state: CallState::Resulted {
                outcome: Box::new(Outcome::Done(StageOutput::Fin {})),
                worker: "bridge".into(),
            },
        };
        self.store.insert(&call).map_err(internal)?;
        let this = self.clone();
        tokio::spawn(async move {
            // Return after the CallID answer has left (the safe order, PROTOCOL.md §7.3).
            tokio::time::sleep(Duration::from_millis(50)).await;
            this.deliver(call).await;
        });
        Ok(call_id)
    }

    /// Delivers every stored result that the miner has not accepted yet.
    pub async fn redeliver_pending(self: &Arc<Self>) -> Result<()> {
        for call in self.store.all()? {
            if let CallState::Resulted { .. } = call.state {
                let this = self.clone();
                tokio::spawn(async move { this.deliver(call).await });
            }
        }
        Ok(())
    }

    /// Consumes `sealfarm.results` until shutdown, reconnecting as needed.
    pub async fn consume_results(self: Arc<Self>) {
        let mut delay = Duration::from_millis(200);
        while !self.shutdown.is_set() {
            match self.clone().results_session(&mut delay).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "results consumer lost the broker");
                    if self.shutdown.wait_for(delay).await {
                        break;
                    }
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    async fn results_session(self: Arc<Self>, delay: &mut Duration) -> Result<()> {
        let broker = self.link.get().await?;
        let channel = broker.connection.create_channel().await?;
        channel.basic_qos(64, BasicQosOptions::default()).await?;
        let mut results = channel
            .basic_consume(
                topology::RESULTS_QUEUE.into(),
                "sealfarm-bridge".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        *delay = Duration::from_millis(200);
        let mut shutdown = self.shutdown.clone();
        loop {
            let delivery = tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                next = results.next() => next.context("the broker closed the results consumer")??,
            };
            match serde_json::from_slice::<ResultMessage>(&delivery.data) {
                Ok(result) => {
                    // Durable first, then ack: a crash in between only repeats the store.
                    if let Some(call) = self.record_result(&result)? {
                        let this = self.clone();
                        tokio::spawn(async move { this.deliver(call).await });
                    }
                }
                Err(err) => tracing::error!(error = %err, "unreadable result message dropped"),
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }

    /// Stores a result unless its call already has one; returns the call to deliver.
    fn record_result(&self, result: &ResultMessage) -> Result<Option<Call>> {
        let id = result.call_id.to_string();
        let Some(call) = self.store.get(&id)? else {
            tracing::warn!(call_id = %id, "result for a call this bridge does not know; ignored");
            return Ok(None);
        };
        match call.state {
            CallState::Accepted | CallState::Dispatched => {}
            _ => {
                tracing::info!(call_id = %id, attempt = result.attempt, "call already has a result; later one ignored");
                return Ok(None);
            }
        }
        let state = CallState::Resulted { outcome: Box::new(result.outcome.clone()), worker: result.worker.clone() };
        Ok(Some(self.store.set_state(&id, state)?))
    }

    /// Calls the matching `Return*` on the miner until it accepts it.
    async fn deliver(self: Arc<Self>, call: Call) {
        let CallState::Resulted { outcome, .. } = &call.state else { return };
        let (method, params) = return_call(&call, outcome);
        let mut delay = Duration::from_millis(500);
        loop {
            match self.miner.client().call::<Value>(method, params.clone()).await {
                Ok(_) => break,
                Err(err) => {
                    let text = err.to_string();
                    if text.contains("already reported") || text.contains("already has a response") {
                        tracing::info!(call_id = %call.call_id, "the miner already has this result");
                        break;
                    }
                    tracing::warn!(call_id = %call.call_id, method, error = %text, retry_in = ?delay, "Return not accepted; retrying");
                    if self.shutdown.wait_for(delay).await {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        if let Err(err) = self.store.set_state(&call.call_id.id.to_string(), CallState::Returned { at_ms: now_ms() }) {
            tracing::error!(call_id = %call.call_id, error = %format!("{err:#}"), "returned but not recorded");
        }
        if let Outcome::Done(output) = outcome.as_ref() {
            self.miner.declare_outputs(call.sector, output).await;
        }
        tracing::info!(call_id = %call.call_id, sector = %call.sector.id, method, "returned to the miner");
    }
}

/// The `Return*` method and params for a call's outcome (PROTOCOL.md §7.1):
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
    }
}

/// The value a stage's output puts in its `Return*` output slot.
fn output_slot(output: &StageOutput) -> Value {
    let value = match output {
        StageOutput::Ap { piece } => serde_json::to_value(piece),
        StageOutput::Pc1 { pc1_out } => serde_json::to_value(pc1_out),
        StageOutput::Pc2 { cids } => serde_json::to_value(cids),
        StageOutput::C1 { c1_out } => serde_json::to_value(c1_out),
        StageOutput::C2 { proof } => serde_json::to_value(proof),
        StageOutput::Fin {} | StageOutput::Ru {} => Ok(Value::Null),
    };
    value.expect("stage outputs are JSON")
}

fn internal(err: anyhow::Error) -> RpcError {
    RpcError::method(format!("sealfarm-bridge call store: {err:#}"))
}
