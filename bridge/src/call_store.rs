//! The bridge's durable record of every call the miner made (sled).
//!
//! A call is written here before its `CallID` is answered, its result is
//! written here before the result message is acknowledged, and it is marked
//! returned once the miner accepted the matching `Return*`. The call and its
//! result are flushed before the bridge answers or acknowledges; the marks in
//! between (dispatched, claimed, returned) reach the disk within half a
//! second, and what a crash loses of them the bridge makes good at start. A
//! bridge restart therefore loses nothing: calls with a result not yet
//! returned are returned again at start. A call the miner re-issues with the
//! same sector, stage and inputs (lotus does after errors 101/102, or after
//! its own restart) finds the open call by its input digest and attaches to it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use anyhow::{Context, Result};
use sealfarm_schemas::blob::{BlobRef, Payload};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::sled_rewrite;
use sealfarm_schemas::{CallId, Outcome, SectorId, SectorRef, StageOutput, Task, TaskMessage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// sled's page cache for the call store.
const CACHE_BYTES: u64 = 16 << 20;

/// Whether a write is flushed before the call that made it returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    Now,
    Soon,
}

/// Returned calls the in-memory index keeps (the views show at most these).
pub const RETURNED_KEPT: usize = 200;

/// What a call asks for: a farm stage, or a bridge-local no-op in shared storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallKind {
    /// Computed by the farm; the task as published.
    Task { task: Box<TaskMessage> },
    /// `Fetch`: the files are already in shared storage.
    Fetch,
    /// `MoveStorage`: nothing moves in shared storage.
    MoveStorage,
}

/// Where a call stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CallState {
    /// Accepted; the task may not have reached the broker yet.
    Accepted,
    /// The broker confirmed the task.
    Dispatched,
    /// The farm answered; the miner has not accepted the Return yet.
    Resulted { outcome: Box<Outcome>, worker: String },
    /// The miner accepted the Return.
    Returned { at_ms: u64 },
}

/// One miner call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    pub call_id: CallId,
    pub sector: SectorRef,
    /// The lotus method that made the call (`SealPreCommit1`, …).
    pub method: String,
    pub kind: CallKind,
    /// Digest of method, sector and inputs: a re-issued call has the same one.
    pub input_digest: String,
    pub arrived_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(flatten)]
    pub state: CallState,
    /// The worker that claimed the current attempt, once it said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    /// The queue the current attempt was published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The attempt that gave the call its result, once one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRecord>,
}

/// How the call's result came about: who computed it, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The worker; `bridge`, `dead-letter` or `operator` when the call failed without a run.
    pub worker: String,
    pub attempt: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// The error returned to the miner, when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The task was dead-lettered (it waits in `sealfarm.dead-letters`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead: bool,
}

/// Who holds a dispatched call's current attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub worker: String,
    pub attempt: u32,
    pub since_ms: u64,
}

impl Call {
    /// The task as last dispatched, for farm calls.
    pub fn task(&self) -> Option<&TaskMessage> {
        match &self.kind {
            CallKind::Task { task } => Some(task),
            _ => None,
        }
    }

    /// Whether the call still waits for a result from the farm.
    pub fn is_open(&self) -> bool {
        matches!(self.state, CallState::Accepted | CallState::Dispatched)
    }

    /// The blobs the call names: its C2 input, its C1 output.
    pub fn blobs(&self) -> Vec<BlobRef> {
        let mut blobs = Vec::new();
        if let Some(TaskMessage { task: Task::C2 { c1_out: Payload::Blob(blob) }, .. }) = self.task() {
            blobs.push(blob.clone());
        }
        if let CallState::Resulted { outcome, .. } = &self.state {
            if let Outcome::Done(StageOutput::C1 { c1_out: Payload::Blob(blob) }) = outcome.as_ref() {
                blobs.push(blob.clone());
            }
        }
        blobs
    }
}

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

/// [`CallState`] without the outcome's outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowState {
    Accepted,
    Dispatched,
    /// The farm answered; `error` when the outcome is a failure.
    Resulted {
        error: Option<String>,
    },
    Returned {
        at_ms: u64,
    },
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
            state: match &call.state {
                CallState::Accepted => RowState::Accepted,
                CallState::Dispatched => RowState::Dispatched,
                CallState::Resulted { outcome, .. } => RowState::Resulted {
                    error: match outcome.as_ref() {
                        Outcome::Failed(err) => Some(err.message.clone()),
                        _ => None,
                    },
                },
                CallState::Returned { at_ms } => RowState::Returned { at_ms: *at_ms },
            },
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
struct Index {
    unreturned: HashMap<Uuid, CallRow>,
    /// Oldest first.
    returned: VecDeque<CallRow>,
}

impl Index {
    fn record(&mut self, call: &Call) {
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

    fn forget(&mut self, id: Uuid) {
        if self.unreturned.remove(&id).is_none() {
            self.returned.retain(|r| r.call_id != id);
        }
    }

    fn get(&self, id: Uuid) -> Option<CallRow> {
        self.unreturned.get(&id).or_else(|| self.returned.iter().find(|r| r.call_id == id)).cloned()
    }
}

/// The key of a returned call in the `returned-at` tree.
fn returned_key(at_ms: u64, id: Uuid) -> Vec<u8> {
    let mut key = at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn parse_returned_key(key: &[u8]) -> Option<(u64, Uuid)> {
    let (at, id) = key.split_at_checked(8)?;
    Some((u64::from_be_bytes(at.try_into().ok()?), Uuid::from_slice(id).ok()?))
}

/// The digest that recognises a re-issued call.
pub fn input_digest(method: &str, sector: &SectorRef, inputs: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(serde_json::to_vec(sector).unwrap_or_default());
    hasher.update(serde_json::to_vec(inputs).unwrap_or_default());
    hex::encode(hasher.finalize())
}

/// Where a sector's files are: the worker that created them (AddPiece,
/// PC1) and the storage it keeps them in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub worker: String,
    /// The worker's sealing-path id; a bridge storage path with this id is shared storage.
    pub storage_id: Option<String>,
    /// The worker's file server, in worker-local storage.
    pub files_url: Option<String>,
    pub since_ms: u64,
}

/// The store's trees, opened together; replaced as a whole when the store
/// is rewritten ([`CallStore::compact`]).
struct Trees {
    db: sled::Db,
    calls: sled::Tree,
    open_by_digest: sled::Tree,
    locations: sled::Tree,
    /// Sectors with deal data (an AddPiece with piece bytes).
    deals: sled::Tree,
    /// Sector files declared in the miner's index: `<sector>/<type>` → storage id.
    declared: sled::Tree,
    /// Returned calls by when they were returned: `<at_ms, big-endian><call id>`,
    /// so pruning reads only the calls it removes.
    returned_at: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> Result<Trees> {
        // sled caches up to 1 GiB by default; the views read the index
        // instead, and a call is read back only while it changes.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .with_context(|| format!("cannot open call store {} (is another bridge using it?)", path.display()))?;
        Ok(Trees {
            calls: db.open_tree("calls")?,
            open_by_digest: db.open_tree("open-by-digest")?,
            locations: db.open_tree("sector-locations")?,
            deals: db.open_tree("deal-sectors")?,
            declared: db.open_tree("declared-files")?,
            returned_at: db.open_tree("returned-at")?,
            db,
        })
    }

    fn get(&self, id: &str) -> Result<Option<Call>> {
        match self.calls.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("call {id} is corrupt"))?)),
            None => Ok(None),
        }
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().context("flushing the call store")?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct CallStore {
    path: PathBuf,
    /// Every method reads or writes through a read guard; a rewrite holds
    /// the write guard while it copies and swaps. None only if reopening
    /// after a rewrite failed.
    trees: Arc<RwLock<Option<Trees>>>,
    /// Serialises read-change-write of calls (results, controls, leases and
    /// Return delivery change them from different tasks).
    write: Arc<Mutex<()>>,
    index: Arc<Mutex<Index>>,
}

/// A read guard on the store's trees.
struct Open<'a>(RwLockReadGuard<'a, Option<Trees>>);

impl std::ops::Deref for Open<'_> {
    type Target = Trees;
    fn deref(&self) -> &Trees {
        self.0.as_ref().expect("checked when the guard was taken")
    }
}

impl CallStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join("calls.sled");
        sled_rewrite::recover(&path).context("finishing an interrupted rewrite of the call store")?;
        let store = CallStore {
            trees: Arc::new(RwLock::new(Some(Trees::open(&path)?))),
            path,
            write: Default::default(),
            index: Default::default(),
        };
        // The one read of the whole store at start (bounded by --retain-returned).
        let mut calls = store.all()?;
        calls.sort_by_key(|c| match c.state {
            CallState::Returned { at_ms } => at_ms,
            _ => 0,
        });
        let t = store.open_trees()?;
        let mut index = store.index.lock().unwrap();
        for call in &calls {
            index.record(call);
            if let CallState::Returned { at_ms } = call.state {
                // Calls returned before this index existed.
                t.returned_at.insert(returned_key(at_ms, call.call_id.id), b"")?;
            }
        }
        drop((index, t));
        Ok(store)
    }

    fn open_trees(&self) -> Result<Open<'_>> {
        let guard = self.trees.read().unwrap();
        if guard.is_none() {
            anyhow::bail!(
                "the call store {} could not be opened again after a rewrite; restart the bridge",
                self.path.display()
            );
        }
        Ok(Open(guard))
    }

    /// Rewrites the store into a fresh directory when its live records are
    /// under a quarter of its size on disk (see [`sled_rewrite`]); calls wait
    /// meanwhile. Returns the size on disk before and after, or None when
    /// the store was not worth rewriting.
    pub fn compact(&self) -> Result<Option<(u64, u64)>> {
        {
            let t = self.open_trees()?;
            let (live, on_disk) = sled_rewrite::usage(&t.db)?;
            if !sled_rewrite::worth_rewriting(live, on_disk) {
                return Ok(None);
            }
        }
        let _one_writer = self.write.lock().unwrap();
        let mut guard = self.trees.write().unwrap();
        let Some(trees) = guard.as_ref() else { anyhow::bail!("the call store is not open") };
        let before = trees.db.size_on_disk()?;
        trees.flush()?;
        sled_rewrite::copy(&trees.db, &self.path).context("copying the call store")?;
        // Every handle of the old store goes before the swap.
        *guard = None;
        sled_rewrite::swap(&self.path).context("putting the rewritten call store in place")?;
        let trees = Trees::open(&self.path)?;
        let after = trees.db.size_on_disk()?;
        *guard = Some(trees);
        sled_rewrite::trim_heap();
        Ok(Some((before, after)))
    }

    /// The calls not yet returned to the miner, read from the store (not the whole history).
    pub fn unreturned(&self) -> Result<Vec<Call>> {
        let ids: Vec<Uuid> = self.index.lock().unwrap().unreturned.keys().copied().collect();
        let mut calls = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(call) = self.get(&id.to_string())? {
                calls.push(call);
            }
        }
        calls.sort_by_key(|c| c.arrived_at_ms);
        Ok(calls)
    }

    /// Removes the calls returned more than `retain` ago, and what the store
    /// keeps of sectors none of whose calls is left open (location, deal
    /// mark) once they are that old; how many calls went.
    pub fn prune(&self, retain: std::time::Duration) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(retain.as_millis() as u64);
        let mut removed = 0;
        // Lock order, everywhere: `write`, then the trees.
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        for entry in t.returned_at.range(..returned_key(cutoff, Uuid::nil()).as_slice()) {
            let (key, _) = entry?;
            let Some((at_ms, id)) = parse_returned_key(&key) else {
                t.returned_at.remove(&key)?;
                continue;
            };
            let id_text = id.to_string();
            // Only if it is still returned, then (a replayed call is open again).
            if let Some(call) = t.get(&id_text)? {
                if call.state == (CallState::Returned { at_ms }) {
                    t.calls.remove(id_text.as_bytes())?;
                    self.index.lock().unwrap().forget(id);
                    removed += 1;
                }
            }
            t.returned_at.remove(&key)?;
        }
        let open_sectors: std::collections::HashSet<SectorId> =
            self.index.lock().unwrap().unreturned.values().map(|r| r.sector.id).collect();
        for entry in t.locations.iter() {
            let (key, bytes) = entry?;
            let old = serde_json::from_slice::<Location>(&bytes).map_or(true, |l| l.since_ms < cutoff);
            let sector = sealfarm_schemas::sector_store::parse_sector_name(&String::from_utf8_lossy(&key));
            if old && !sector.is_some_and(|s| open_sectors.contains(&s)) {
                t.locations.remove(&key)?;
            }
        }
        for entry in t.deals.iter() {
            let (key, value) = entry?;
            let since = value.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            let sector = sealfarm_schemas::sector_store::parse_sector_name(&String::from_utf8_lossy(&key));
            if since < cutoff && !sector.is_some_and(|s| open_sectors.contains(&s)) {
                t.deals.remove(&key)?;
            }
        }
        t.flush()?;
        Ok(removed)
    }

    /// How many calls the store holds, and its size on disk in bytes.
    pub fn size(&self) -> (usize, u64) {
        match self.open_trees() {
            Ok(t) => (t.calls.len(), t.db.size_on_disk().unwrap_or(0)),
            Err(_) => (0, 0),
        }
    }

    /// The store's size on disk in bytes (without counting its calls).
    pub fn disk_bytes(&self) -> u64 {
        self.open_trees().map_or(0, |t| t.db.size_on_disk().unwrap_or(0))
    }

    /// The rows of the calls not yet returned and of the last
    /// [`RETURNED_KEPT`] returned ones, or (`all`) of every call; oldest first.
    pub fn rows(&self, all: bool) -> Result<Vec<CallRow>> {
        let mut rows: Vec<CallRow> = if all {
            self.all()?.iter().map(CallRow::from).collect()
        } else {
            let index = self.index.lock().unwrap();
            index.unreturned.values().chain(index.returned.iter()).cloned().collect()
        };
        rows.sort_by_key(|r| (r.arrived_at_ms, r.call_id));
        Ok(rows)
    }

    /// The row of a call that is open or was returned lately, without a read of the store.
    pub fn row(&self, id: Uuid) -> Option<CallRow> {
        self.index.lock().unwrap().get(id)
    }

    /// Whether an unreturned call other than `except` names blob `sha256`.
    pub fn blob_in_use(&self, sha256: &str, except: Uuid) -> bool {
        let index = self.index.lock().unwrap();
        index.unreturned.values().any(|r| r.call_id != except && r.blobs.iter().any(|b| b == sha256))
    }

    /// The open (not yet returned) call with this input digest, if any.
    pub fn open_call_with_digest(&self, digest: &str) -> Result<Option<Call>> {
        let t = self.open_trees()?;
        match t.open_by_digest.get(digest.as_bytes())? {
            Some(id) => t.get(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Records a new call durably.
    pub fn insert(&self, call: &Call) -> Result<()> {
        let t = self.open_trees()?;
        t.calls.insert(call.call_id.id.to_string().as_bytes(), serde_json::to_vec(call)?)?;
        t.open_by_digest.insert(call.input_digest.as_bytes(), call.call_id.id.to_string().as_bytes())?;
        t.flush()?;
        self.index.lock().unwrap().record(call);
        Ok(())
    }

    /// Opens a call again (a replayed dead letter): a re-issued call with
    /// the same inputs will attach to it. False when another open call has
    /// those inputs already (the miner re-issued it).
    pub fn reopen(&self, call: &Call) -> Result<bool> {
        let id = call.call_id.id.to_string();
        let t = self.open_trees()?;
        let swapped =
            t.open_by_digest.compare_and_swap(call.input_digest.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))?;
        t.flush()?;
        Ok(match swapped {
            Ok(()) => true,
            Err(taken) => taken.current.as_deref() == Some(id.as_bytes()),
        })
    }

    /// Forgets a call that never reached the broker (the miner got an error).
    pub fn remove(&self, call: &Call) -> Result<()> {
        let t = self.open_trees()?;
        t.calls.remove(call.call_id.id.to_string().as_bytes())?;
        t.open_by_digest.remove(call.input_digest.as_bytes())?;
        t.flush()?;
        self.index.lock().unwrap().forget(call.call_id.id);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Call>> {
        self.open_trees()?.get(id)
    }

    /// Moves a call to `state`; a returned call leaves the digest index.
    pub fn set_state(&self, id: &str, state: CallState) -> Result<Call> {
        self.modify(id, |call| call.state = state)
    }

    /// Changes a stored call and returns it as stored.
    pub fn modify(&self, id: &str, change: impl FnOnce(&mut Call)) -> Result<Call> {
        let changed = self.update(id, |call| {
            change(call);
            true
        })?;
        Ok(changed.expect("an unconditional change"))
    }

    /// Changes a stored call if `change` says so (returns true), atomically
    /// with respect to every other change; the call as stored, or None when
    /// `change` declined (the call had moved on). A call that is returned
    /// leaves the digest index.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Call) -> bool) -> Result<Option<Call>> {
        self.change(id, change, Flush::Now)
    }

    /// [`update`](Self::update) for a change that need not be on disk before
    /// the bridge acts on it: sled writes it out within half a second, and a
    /// crash before that loses only what the bridge makes good at start (a
    /// dispatch mark: the task is published once more; a claim: the worker's
    /// next event or heartbeat names it again; a Return mark: the Return is
    /// made again and the miner says it has it).
    pub fn update_soon(&self, id: &str, change: impl FnOnce(&mut Call) -> bool) -> Result<Option<Call>> {
        self.change(id, change, Flush::Soon)
    }

    fn change(&self, id: &str, change: impl FnOnce(&mut Call) -> bool, flush: Flush) -> Result<Option<Call>> {
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        let mut call = t.get(id)?.with_context(|| format!("call {id} is not in the store"))?;
        if !change(&mut call) {
            return Ok(None);
        }
        call.updated_at_ms = now_ms();
        if let CallState::Returned { at_ms } = call.state {
            t.returned_at.insert(returned_key(at_ms, call.call_id.id), b"")?;
            // Only if the index still names this call (a re-issued call may hold it now).
            let _ =
                t.open_by_digest.compare_and_swap(call.input_digest.as_bytes(), Some(id.as_bytes()), None::<&[u8]>)?;
        }
        t.calls.insert(id.as_bytes(), serde_json::to_vec(&call)?)?;
        if flush == Flush::Now {
            t.flush()?;
        }
        self.index.lock().unwrap().record(&call);
        Ok(Some(call))
    }

    /// Puts a call back as it was (a control that could not complete); a
    /// closed call leaves the digest index if it names it.
    pub fn restore(&self, call: &Call) -> Result<()> {
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        let id = call.call_id.id.to_string();
        if !call.is_open() {
            let digest = call.input_digest.as_bytes();
            let _ = t.open_by_digest.compare_and_swap(digest, Some(id.as_bytes()), None::<&[u8]>)?;
        }
        t.calls.insert(id.as_bytes(), serde_json::to_vec(call)?)?;
        t.flush()?;
        self.index.lock().unwrap().record(call);
        Ok(())
    }

    /// Marks a call whose task the broker confirmed as dispatched, unless
    /// something (its result) came first.
    pub fn confirm_dispatch(&self, id: &str, attempt: u32, queue: &str) -> Result<Option<Call>> {
        self.update_soon(id, |c| {
            if !matches!(c.state, CallState::Accepted) || c.task().map(|t| t.attempt) != Some(attempt) {
                return false;
            }
            c.state = CallState::Dispatched;
            c.queue = Some(queue.to_string());
            true
        })
    }

    /// Every call, oldest first.
    pub fn all(&self) -> Result<Vec<Call>> {
        let mut calls = Vec::new();
        let t = self.open_trees()?;
        for entry in t.calls.iter() {
            let (_, bytes) = entry?;
            calls.push(serde_json::from_slice::<Call>(&bytes).context("a call record is corrupt")?);
        }
        calls.sort_by_key(|c| c.arrived_at_ms);
        Ok(calls)
    }

    /// Where a sector's files are, if a worker created them.
    pub fn location(&self, sector: SectorId) -> Result<Option<Location>> {
        match self.open_trees()?.locations.get(sector.file_name().as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).context("a sector location is corrupt")?)),
            None => Ok(None),
        }
    }

    /// Records where a sector's files are. Not flushed here: the result that
    /// brought the location is stored (and flushed) right after it, before
    /// the result message is acknowledged.
    pub fn set_location(&self, sector: SectorId, location: &Location) -> Result<()> {
        self.open_trees()?.locations.insert(sector.file_name().as_bytes(), serde_json::to_vec(location)?)?;
        Ok(())
    }

    /// Notes that a sector holds deal data.
    pub fn mark_deal(&self, sector: SectorId) -> Result<()> {
        let t = self.open_trees()?;
        t.deals.insert(sector.file_name().as_bytes(), &now_ms().to_be_bytes())?;
        t.flush()
    }

    pub fn is_deal(&self, sector: SectorId) -> bool {
        self.open_trees().is_ok_and(|t| t.deals.contains_key(sector.file_name().as_bytes()).unwrap_or(false))
    }

    /// Notes a sector file the bridge declared to the miner.
    pub fn declared_add(&self, sector: SectorId, file_type: u64, storage_id: &str) -> Result<()> {
        let key = format!("{}/{file_type}", sector.file_name());
        let t = self.open_trees()?;
        t.declared.insert(key.as_bytes(), storage_id.as_bytes())?;
        t.flush()
    }

    /// Notes that a sector file was dropped from the miner's index.
    pub fn declared_remove(&self, sector: SectorId, file_type: u64) -> Result<()> {
        let t = self.open_trees()?;
        t.declared.remove(format!("{}/{file_type}", sector.file_name()).as_bytes())?;
        t.flush()
    }

    /// Every sector file declared and not dropped: (sector, type, storage id).
    pub fn declared(&self) -> Vec<(SectorId, u64, String)> {
        let Ok(t) = self.open_trees() else { return Vec::new() };
        t.declared
            .iter()
            .flatten()
            .filter_map(|(key, id)| {
                let key = String::from_utf8_lossy(&key).into_owned();
                let (name, file_type) = key.split_once('/')?;
                let sector = sealfarm_schemas::sector_store::parse_sector_name(name)?;
                Some((sector, file_type.parse().ok()?, String::from_utf8_lossy(&id).into_owned()))
            })
            .collect()
    }

    /// Writes out everything stored so far (also what [`update_soon`](Self::update_soon) left).
    pub fn flush(&self) -> Result<()> {
        self.open_trees()?.flush()
    }
}

#[cfg(test)]
mod tests {
    use sealfarm_schemas::{RegisteredSealProof, SectorId};

    use super::*;

    fn fetch_call(number: u64) -> Call {
        let sector =
            SectorRef { id: SectorId { miner: 1000, number }, proof_type: RegisteredSealProof::STACKED_DRG_2KIB_V1_1 };
        Call {
            call_id: CallId { sector: sector.id, id: Uuid::new_v4() },
            sector,
            method: "Fetch".into(),
            kind: CallKind::Fetch,
            input_digest: format!("digest-{number}"),
            arrived_at_ms: number,
            updated_at_ms: number,
            state: CallState::Accepted,
            holder: None,
            queue: None,
            run: None,
        }
    }

    /// Returned calls older than the retention go, with nothing else; the
    /// store then holds what it held before they came.
    #[test]
    fn prune_removes_only_calls_returned_before_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = CallStore::open(dir.path()).unwrap();
        let calls: Vec<Call> = (0..30).map(fetch_call).collect();
        for call in &calls {
            store.insert(call).unwrap();
        }
        let now = now_ms();
        // 0-9 returned 4 days ago, 10-19 an hour ago, 20-29 open.
        for (n, call) in calls.iter().enumerate().take(20) {
            let at_ms = if n < 10 { now - 4 * 86_400_000 } else { now - 3_600_000 };
            store.set_state(&call.call_id.id.to_string(), CallState::Returned { at_ms }).unwrap();
        }
        // A returned call opened again (a replayed dead letter) is kept.
        store.set_state(&calls[0].call_id.id.to_string(), CallState::Dispatched).unwrap();
        let removed = store.prune(std::time::Duration::from_secs(3 * 86_400)).unwrap();
        assert_eq!(removed, 9);
        let left: Vec<u64> = store.all().unwrap().iter().map(|c| c.sector.id.number).collect();
        assert_eq!(left, [0].into_iter().chain(10..30).collect::<Vec<u64>>());
        assert!(store.rows(false).unwrap().iter().all(|r| r.sector.id.number == 0 || r.sector.id.number >= 10));
        assert_eq!(store.prune(std::time::Duration::from_secs(3 * 86_400)).unwrap(), 0);
        // After a restart the index knows the same.
        drop(store);
        let store = CallStore::open(dir.path()).unwrap();
        assert_eq!(store.unreturned().unwrap().len(), 11);
        assert_eq!(store.prune(std::time::Duration::from_secs(60)).unwrap(), 10);
        assert_eq!(store.size().0, 11);
    }

    /// A store pruned down to a few calls is rewritten smaller, keeps every
    /// call and index entry, stays usable while and after it is rewritten,
    /// and opens again as it was.
    #[test]
    fn compact_gives_disk_back_and_keeps_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = CallStore::open(dir.path()).unwrap();
        let mut calls: Vec<Call> = (0..6000).map(fetch_call).collect();
        for call in &mut calls {
            call.input_digest = format!("{}-{}", call.input_digest, "x".repeat(3000));
            store.insert(call).unwrap();
        }
        let long_ago = now_ms() - 4 * 86_400_000;
        for call in &calls[..5900] {
            store.set_state(&call.call_id.id.to_string(), CallState::Returned { at_ms: long_ago }).unwrap();
        }
        assert_eq!(store.prune(std::time::Duration::from_secs(86_400)).unwrap(), 5900);
        let before = store.disk_bytes();
        let (was, now) = store.compact().unwrap().expect("mostly empty: rewritten");
        assert_eq!(was, before);
        assert!(now * 4 < before, "{before} bytes before, {now} after");
        assert_eq!(store.disk_bytes(), now);
        assert_eq!(store.compact().unwrap(), None, "just rewritten: not worth another");
        // The clones the bridge's tasks hold see the rewritten store.
        let other = store.clone();
        assert_eq!(other.all().unwrap().len(), 100);
        let open = &calls[5950];
        assert_eq!(other.open_call_with_digest(&open.input_digest).unwrap().unwrap().call_id, open.call_id);
        other.set_state(&open.call_id.id.to_string(), CallState::Dispatched).unwrap();
        drop((store, other));
        let store = CallStore::open(dir.path()).unwrap();
        assert_eq!(store.unreturned().unwrap().len(), 100);
        assert_eq!(store.get(&open.call_id.id.to_string()).unwrap().unwrap().state, CallState::Dispatched);
        assert!(!dir.path().join("calls.sled.new").exists() && !dir.path().join("calls.sled.old").exists());
    }

    /// The views read the index: it must list every unreturned call and the
    /// newest returned ones, as the store itself does, also after a restart.
    #[test]
    fn index_lists_unreturned_and_latest_returned_calls_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let total = RETURNED_KEPT as u64 + 10;
        let ids: Vec<String> = {
            let store = CallStore::open(dir.path()).unwrap();
            let calls: Vec<Call> = (0..total).map(fetch_call).collect();
            for call in &calls {
                store.insert(call).unwrap();
            }
            // All but the last three are returned, oldest first.
            for (n, call) in calls.iter().enumerate().take(total as usize - 3) {
                store.set_state(&call.call_id.id.to_string(), CallState::Returned { at_ms: 1_000 + n as u64 }).unwrap();
            }
            let rows = store.rows(false).unwrap();
            assert_eq!(rows.len(), RETURNED_KEPT + 3);
            assert_eq!(rows.iter().filter(|r| r.is_open()).count(), 3);
            // The oldest returned calls are the ones left out.
            assert_eq!(rows[0].sector.id.number, total - 3 - RETURNED_KEPT as u64);
            assert_eq!(store.rows(true).unwrap().len(), total as usize);
            // A returned call taken up again (a replayed dead letter) is open again.
            let again = calls[total as usize - 4].call_id.id.to_string();
            store.set_state(&again, CallState::Dispatched).unwrap();
            let row = store.row(calls[total as usize - 4].call_id.id).unwrap();
            assert_eq!(row.state, RowState::Dispatched);
            calls.iter().map(|c| c.call_id.id.to_string()).collect()
        };
        let store = CallStore::open(dir.path()).unwrap();
        let rows = store.rows(false).unwrap();
        assert_eq!(rows.iter().filter(|r| r.is_open()).count(), 4);
        assert_eq!(rows.len(), RETURNED_KEPT + 4);
        assert!(rows.iter().any(|r| r.call_id.to_string() == ids[total as usize - 1]));
        // Each row says what the stored call says.
        for row in &rows {
            let call = store.get(&row.call_id.to_string()).unwrap().unwrap();
            assert_eq!(*row, CallRow::from(&call));
        }
    }
}
