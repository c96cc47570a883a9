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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use anyhow::{Context, Result};
use sealfarm_runtime::sled_rewrite;
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::{SectorId, SectorRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::index::{parse_returned_key, returned_key, Index};
pub use super::index::{CallRow, RETURNED_KEPT};
pub use super::lifecycle::{Call, CallKind, CallState, Holder, RowState, RunRecord, Stale};

/// sled's page cache for the call store.
const CACHE_BYTES: u64 = 16 << 20;

/// Whether a change is on disk before [`CallStore::apply`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsynced: the bridge acts on the change (answers the miner, acks a
    /// message, moves on from a Return) only once it would survive a crash.
    Flushed,
    /// Written out by sled within half a second; a crash before that loses
    /// only what the bridge makes good at start (a dispatch mark: the task is
    /// published once more; a claim: the worker's next event or heartbeat
    /// names it again).
    Lazy,
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

/// What [`CallStore::open_or_attach`] did.
#[derive(Debug)]
pub enum Opened {
    /// The call is recorded.
    New,
    /// An open call with the same inputs was there; nothing was recorded.
    Attached(Box<Call>),
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

    /// Takes a call's inputs out of the digest index, only if the index
    /// still names this call (a re-issued call may hold it now).
    fn release_digest(&self, call: &Call) -> Result<()> {
        let id = call.call_id.id.to_string();
        let _ =
            self.open_by_digest.compare_and_swap(call.input_digest.as_bytes(), Some(id.as_bytes()), None::<&[u8]>)?;
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

    /// Records a new call durably, unless a call not yet returned has the
    /// same inputs (the miner re-issued it): then that call, untouched. The look-up and
    /// the insert are one step under the store's write lock, so two
    /// identical calls arriving together open one call.
    pub fn open_or_attach(&self, call: &Call) -> Result<Opened> {
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        if let Some(id) = t.open_by_digest.get(call.input_digest.as_bytes())? {
            // Open, or with a result not yet returned: the miner gets that result.
            if let Some(open) = t.get(&String::from_utf8_lossy(&id))? {
                return Ok(Opened::Attached(Box::new(open)));
            }
        }
        let id = call.call_id.id.to_string();
        t.calls.insert(id.as_bytes(), serde_json::to_vec(call)?)?;
        t.open_by_digest.insert(call.input_digest.as_bytes(), id.as_bytes())?;
        t.flush()?;
        self.index.lock().unwrap().record(call);
        Ok(Opened::New)
    }

    /// Claims the digest index for a call about to be opened again (a
    /// replayed dead letter), so that a re-issued call with the same inputs
    /// attaches to it. False when another open call has those inputs
    /// already (the miner re-issued it).
    pub fn claim_digest(&self, call: &Call) -> Result<bool> {
        let _one_writer = self.write.lock().unwrap();
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
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        let id = call.call_id.id.to_string();
        t.calls.remove(id.as_bytes())?;
        t.release_digest(call)?;
        t.flush()?;
        self.index.lock().unwrap().forget(call.call_id.id);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Call>> {
        self.open_trees()?.get(id)
    }

    /// Applies a named change of the call's lifecycle (a method of [`Call`])
    /// atomically with respect to every other change: the call as stored,
    /// or the [`Stale`] refusal when it had moved on (nothing written). A
    /// call that is returned leaves the digest index. With
    /// [`Durability::Flushed`] the change is on disk when this returns.
    pub fn apply(
        &self,
        id: &str,
        durability: Durability,
        change: impl FnOnce(&mut Call) -> Result<(), Stale>,
    ) -> Result<Result<Call, Stale>> {
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        let mut call = t.get(id)?.with_context(|| format!("call {id} is not in the store"))?;
        if let Err(stale) = change(&mut call) {
            return Ok(Err(stale));
        }
        call.updated_at_ms = now_ms();
        if let CallState::Returned { at_ms } = call.state {
            t.returned_at.insert(returned_key(at_ms, call.call_id.id), b"")?;
            t.release_digest(&call)?;
        }
        t.calls.insert(id.as_bytes(), serde_json::to_vec(&call)?)?;
        if durability == Durability::Flushed {
            t.flush()?;
        }
        self.index.lock().unwrap().record(&call);
        Ok(Ok(call))
    }

    /// Marks a call returned once the miner accepted the Return of the
    /// result of `attempt`, on disk before this returns: a crash after the
    /// miner's answer repeats the Return only if it falls within this one
    /// fsync (lotus answers a repeat with "already reported", or parks it).
    pub fn mark_returned(&self, id: &str, attempt: Option<u32>) -> Result<Result<Call, Stale>> {
        self.apply(id, Durability::Flushed, |c| c.returned(attempt, now_ms()))
    }

    /// Puts a call back as it was (a control that could not complete); a
    /// closed call leaves the digest index if it names it.
    pub fn restore(&self, call: &Call) -> Result<()> {
        let _one_writer = self.write.lock().unwrap();
        let t = self.open_trees()?;
        let id = call.call_id.id.to_string();
        if !call.is_open() {
            t.release_digest(call)?;
        }
        t.calls.insert(id.as_bytes(), serde_json::to_vec(call)?)?;
        t.flush()?;
        self.index.lock().unwrap().record(call);
        Ok(())
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

    /// Writes out everything stored so far (also what [`Durability::Lazy`] left).
    pub fn flush(&self) -> Result<()> {
        self.open_trees()?.flush()
    }
}

#[cfg(test)]
mod tests {
    use sealfarm_schemas::{CallId, RegisteredSealProof, SectorId};

    use super::*;

    /// Puts a call in `state` directly (the fixtures of these tests).
    fn set_state(store: &CallStore, id: &str, state: CallState) -> Call {
        store
            .apply(id, Durability::Flushed, |c| {
                c.state = state;
                Ok(())
            })
            .unwrap()
            .unwrap()
    }

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
            store.open_or_attach(call).unwrap();
        }
        let now = now_ms();
        // 0-9 returned 4 days ago, 10-19 an hour ago, 20-29 open.
        for (n, call) in calls.iter().enumerate().take(20) {
            let at_ms = if n < 10 { now - 4 * 86_400_000 } else { now - 3_600_000 };
            set_state(&store, &call.call_id.id.to_string(), CallState::Returned { at_ms });
        }
        // A returned call opened again (a replayed dead letter) is kept.
        set_state(&store, &calls[0].call_id.id.to_string(), CallState::Dispatched);
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
            store.open_or_attach(call).unwrap();
        }
        let long_ago = now_ms() - 4 * 86_400_000;
        for call in &calls[..5900] {
            set_state(&store, &call.call_id.id.to_string(), CallState::Returned { at_ms: long_ago });
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
        let reissued = Call { call_id: CallId { sector: open.sector.id, id: Uuid::new_v4() }, ..open.clone() };
        match other.open_or_attach(&reissued).unwrap() {
            Opened::Attached(found) => assert_eq!(found.call_id, open.call_id),
            Opened::New => panic!("the digest index lost the open call in the rewrite"),
        }
        set_state(&other, &open.call_id.id.to_string(), CallState::Dispatched);
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
                store.open_or_attach(call).unwrap();
            }
            // All but the last three are returned, oldest first.
            for (n, call) in calls.iter().enumerate().take(total as usize - 3) {
                set_state(&store, &call.call_id.id.to_string(), CallState::Returned { at_ms: 1_000 + n as u64 });
            }
            let rows = store.rows(false).unwrap();
            assert_eq!(rows.len(), RETURNED_KEPT + 3);
            assert_eq!(rows.iter().filter(|r| r.is_open()).count(), 3);
            // The oldest returned calls are the ones left out.
            assert_eq!(rows[0].sector.id.number, total - 3 - RETURNED_KEPT as u64);
            assert_eq!(store.rows(true).unwrap().len(), total as usize);
            // A returned call taken up again (a replayed dead letter) is open again.
            let again = calls[total as usize - 4].call_id.id.to_string();
            set_state(&store, &again, CallState::Dispatched);
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

    /// Two identical calls arriving together open one call: the look-up of
    /// a call with the same inputs and the insert are one step.
    #[test]
    fn identical_calls_arriving_together_open_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = CallStore::open(dir.path()).unwrap();
        let rounds = 20;
        for round in 0..rounds {
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let call = fetch_call(round);
                        barrier.wait();
                        match store.open_or_attach(&call).unwrap() {
                            Opened::New => call.call_id,
                            Opened::Attached(open) => open.call_id,
                        }
                    })
                })
                .collect();
            let ids: std::collections::HashSet<CallId> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(ids.len(), 1, "round {round}: {} calls opened for one set of inputs", ids.len());
        }
        assert_eq!(store.unreturned().unwrap().len(), rounds as usize);
    }

    /// A bridge killed (SIGKILL) right after the miner accepted Returns does
    /// not return those calls again: each mark is on disk before the bridge
    /// moves on. The child process marks 40 calls returned and kills itself.
    #[test]
    fn returned_marks_survive_sigkill() {
        const CHILD: &str = "SEALFARM_TEST_RETURNED_MARKS_DIR";
        let calls: Vec<Call> = (0..40).map(fetch_call).collect();
        if let Ok(dir) = std::env::var(CHILD) {
            let store = CallStore::open(Path::new(&dir)).unwrap();
            let ids: Vec<String> = store.all().unwrap().iter().map(|c| c.call_id.id.to_string()).collect();
            for id in &ids {
                store.mark_returned(id, Some(1)).unwrap().unwrap();
            }
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("killed");
        }
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CallStore::open(dir.path()).unwrap();
            for call in &calls {
                store.open_or_attach(call).unwrap();
                let id = call.call_id.id.to_string();
                let run = RunRecord {
                    worker: "w-a".into(),
                    attempt: 1,
                    started_at_ms: 1,
                    finished_at_ms: 2,
                    error: None,
                    dead: false,
                };
                let outcome = sealfarm_schemas::Outcome::Done(sealfarm_schemas::StageOutput::Fin {});
                store.apply(&id, Durability::Flushed, |c| c.result(outcome, run)).unwrap().unwrap();
            }
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "calls::store::tests::returned_marks_survive_sigkill", "--test-threads", "1"])
            .env(CHILD, dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the child must die by SIGKILL after marking: {status}");
        let store = CallStore::open(dir.path()).unwrap();
        let unreturned = store.unreturned().unwrap();
        assert!(unreturned.is_empty(), "{} of 40 calls would be returned again after the restart", unreturned.len());
    }
}
