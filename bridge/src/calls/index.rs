//! The in-memory index of the call store: the rows of every call not yet
//! returned and of the latest returned ones, so that the views, the lease
//! keeper and redelivery never read the whole history.

use std::collections::{HashMap, VecDeque};

use sealfarm_schemas::SectorRef;
use uuid::Uuid;

use super::lifecycle::{Call, CallKind, Holder, RowState, RunRecord};

/// Returned calls the in-memory index keeps (the views show at most these).
pub const RETURNED_KEPT: usize = 200;

/// What the views need of a call: its identity, stage and state, without
/// the task's inputs or the result's outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRow {
    pub call_id: Uuid,
    pub method: String,
    /// A farm stage, or `fetch` / `move` for the calls the bridge completes itself.
    pub stage: String,
    pub sector: SectorRef,
    pub attempt: u32,
    pub ticket_deadline_ms: Option<u64>,
    pub arrived_at_ms: u64,
    pub state: RowState,
    pub holder: Option<Holder>,
    pub queue: Option<String>,
    pub run: Option<RunRecord>,
    /// The digests of the blobs the call names.
    pub blobs: Vec<String>,
}

impl CallRow {
    pub fn is_open(&self) -> bool {
        matches!(self.state, RowState::Accepted | RowState::Dispatched)
    }
}

impl From<&Call> for CallRow {
    fn from(call: &Call) -> Self {
        let task = call.task();
        CallRow {
            call_id: call.call_id.id,
            method: call.method.clone(),
            stage: match &call.kind {
                CallKind::Task { task } => task.stage().to_string(),
                CallKind::Fetch => "fetch".into(),
                CallKind::MoveStorage => "move".into(),
            },
            sector: call.sector,
            attempt: task.map_or(1, |t| t.attempt),
            ticket_deadline_ms: task.and_then(|t| t.ticket_deadline_ms),
            arrived_at_ms: call.arrived_at_ms,
            state: RowState::from(&call.state),
            holder: call.holder.clone(),
            queue: call.queue.clone(),
            run: call.run.clone(),
            blobs: call.blobs().into_iter().map(|b| b.sha256).collect(),
        }
    }
}

/// The rows of every call not yet returned, and of the last
/// [`RETURNED_KEPT`] returned: what the status API and the lease keeper
/// read, so that neither parses the whole store (which keeps every call
/// ever made) each time.
#[derive(Default)]
pub(super) struct Index {
    pub(super) unreturned: HashMap<Uuid, CallRow>,
    /// Oldest first.
    pub(super) returned: VecDeque<CallRow>,
}

impl Index {
    pub(super) fn record(&mut self, call: &Call) {
        let row = CallRow::from(call);
        self.forget(row.call_id);
        if let RowState::Returned { .. } = row.state {
            self.returned.push_back(row);
            if self.returned.len() > RETURNED_KEPT {
                self.returned.pop_front();
            }
        } else {
            self.unreturned.insert(row.call_id, row);
        }
    }

    pub(super) fn forget(&mut self, id: Uuid) {
        if self.unreturned.remove(&id).is_none() {
            self.returned.retain(|r| r.call_id != id);
        }
    }

    pub(super) fn get(&self, id: Uuid) -> Option<CallRow> {
        self.unreturned.get(&id).or_else(|| self.returned.iter().find(|r| r.call_id == id)).cloned()
    }
}

/// The key of a returned call in the `returned-at` tree.
pub(super) fn returned_key(at_ms: u64, id: Uuid) -> Vec<u8> {
    let mut key = at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

pub(super) fn parse_returned_key(key: &[u8]) -> Option<(u64, Uuid)> {
    let (at, id) = key.split_at_checked(8)?;
    Some((u64::from_be_bytes(at.try_into().ok()?), Uuid::from_slice(id).ok()?))
}
