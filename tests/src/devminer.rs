//! devminer: a lotus-miner stand-in that speaks the miner's side of the
//! worker protocol (docs/LOTUS.md §1–§10), for tests and the main job.
//!
//! It serves `POST /rpc/v0` with real HS256 JWTs (`AuthNew`/`AuthVerify`),
//! `Version` (API 1.5.0), `Session`, the actor methods, the sector-index
//! methods a worker uses (recorded), `WorkerConnect` with the synchronous
//! call-backs (`Version`, `Session`, `Info`, `TaskTypes`), and every
//! `Return*` (recorded, each CallID once). Its driver then walks CC sectors
//! through the pipeline as lotus does: AddPiece → PC1 → PC2 → C1 → C2 →
//! finalize → release-unsealed, checking CommD and verifying every proof.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::jsonrpc::{self, Client as RpcClient, Request, RpcError};
use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sealfarm_schemas::{CallId, SectorId, SectorRef};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;

/// The miner actor this stand-in plays.
pub const MINER_ID: u64 = 1000;

/// A `Return*` the miner received.
#[derive(Clone, Debug)]
pub struct Returned {
    pub method: String,
    pub params: Vec<Value>,
    pub at: Instant,
}

/// A sector-index call the miner received (`StorageDeclareSector`, …).
#[derive(Clone, Debug)]
pub struct IndexCall {
    pub method: String,
    pub params: Vec<Value>,
}

/// A worker that registered with `WorkerConnect`.
pub struct ConnectedWorker {
    pub url: String,
    pub session: String,
    pub info: Value,
    pub task_types: Value,
    pub client: RpcClient,
}

#[derive(Default)]
struct Inner {
    returns: HashMap<uuid::Uuid, Returned>,
    duplicate_returns: Vec<Returned>,
    index: Vec<IndexCall>,
    workers: Vec<Arc<ConnectedWorker>>,
}

/// The miner stand-in.
pub struct DevMiner {
    secret: [u8; 32],
    session: Mutex<uuid::Uuid>,
    sector_size: u64,
    /// The miner actor's number (`ActorAddress` is `t0<actor>`).
    pub actor: u64,
    inner: Mutex<Inner>,
    changed: Notify,
    /// While true, every request gets HTTP 503 (the miner is "away").
    pub away: std::sync::atomic::AtomicBool,
    /// While true, requests are taken and never answered (a miner that
    /// hangs): those that arrive meanwhile hang for good, as on a real
    /// stuck connection; later ones are answered again.
    pub stalled: std::sync::atomic::AtomicBool,
    /// How many `AuthVerify` calls arrived.
    pub auth_verifies: std::sync::atomic::AtomicU64,
    /// Print each call as its Return arrives.
    pub progress: std::sync::atomic::AtomicBool,
    /// The CA (PEM) to trust when a worker registers an https:// URL.
    ca: std::sync::Mutex<Option<std::path::PathBuf>>,
}

impl DevMiner {
    pub fn new(sector_size: u64) -> Arc<Self> {
        Self::for_actor(sector_size, MINER_ID)
    }

    /// A miner stand-in for actor `t0<actor>` (several miners on one farm).
    pub fn for_actor(sector_size: u64, actor: u64) -> Arc<Self> {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Arc::new(DevMiner {
            secret,
            session: Mutex::new(uuid::Uuid::new_v4()),
            sector_size,
            actor,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            away: Default::default(),
            stalled: Default::default(),
            auth_verifies: Default::default(),
            progress: Default::default(),
            ca: Default::default(),
        })
    }

    /// Trusts the CA certificates in `ca` (PEM) for workers that register
    /// an https:// URL, as a miner whose host trusts that CA would.
    pub fn trust(&self, ca: &std::path::Path) {
        *self.ca.lock().unwrap() = Some(ca.to_path_buf());
    }

    /// An HTTP client for the workers' URLs.
    fn http(&self) -> reqwest::Client {
        let ca = self.ca.lock().unwrap().clone();
        sealfarm_runtime::trust::with_roots(reqwest::Client::builder(), ca.as_deref())
            .and_then(|b| Ok(b.build()?))
            .expect("an HTTP client")
    }

    /// Serves the miner API on `listen`; returns the bound address.
    pub async fn serve(self: &Arc<Self>, listen: SocketAddr) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let router = axum::Router::new()
            .route("/rpc/v0", post(handle))
            // lotus-miner takes request bodies up to 100 MiB (a 32 GiB ReturnSealCommit1 is tens of MiB).
            .layer(axum::extract::DefaultBodyLimit::max(100 << 20))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(address)
    }

    /// `MINER_API_INFO` for a token with every permission, as
    /// `lotus-miner auth api-info --perm admin` prints it.
    pub fn api_info(&self, address: SocketAddr) -> String {
        let token = self.mint(&["read", "write", "sign", "admin"]);
        format!("{token}:/ip4/{}/tcp/{}/http", address.ip(), address.port())
    }

    /// An HS256 JWT with payload `{"Allow": perms}`.
    pub fn mint(&self, perms: &[&str]) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64.encode(serde_json::to_vec(&json!({ "Allow": perms })).unwrap());
        let signing_input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    /// The permissions of a valid token, or None.
    pub fn verify(&self, token: &str) -> Option<Vec<String>> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (signing_input, signature) = token.rsplit_once('.')?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&b64.decode(signature).ok()?).ok()?;
        let payload: Value = serde_json::from_slice(&b64.decode(signing_input.split_once('.')?.1).ok()?).ok()?;
        serde_json::from_value(payload.get("Allow")?.clone()).ok()
    }

    /// Acts as a miner restart: a new session, no registered workers, an
    /// empty sector index (returns already received are kept, as lotus keeps
    /// its call tracker).
    pub fn restart(&self) {
        *self.session.lock().unwrap() = uuid::Uuid::new_v4();
        let mut inner = self.inner.lock().unwrap();
        inner.workers.clear();
        inner.index.clear();
    }

    pub fn workers(&self) -> Vec<Arc<ConnectedWorker>> {
        self.inner.lock().unwrap().workers.clone()
    }

    pub fn index_calls(&self) -> Vec<IndexCall> {
        self.inner.lock().unwrap().index.clone()
    }

    /// The CallIDs of every `Return*` received (each once).
    pub fn returned_calls(&self) -> Vec<uuid::Uuid> {
        self.inner.lock().unwrap().returns.keys().copied().collect()
    }

    /// Every `Return*` that named an already-returned CallID.
    pub fn duplicate_returns(&self) -> Vec<Returned> {
        self.inner.lock().unwrap().duplicate_returns.clone()
    }

    /// Forgets the params of a call's `Return*` (long runs keep only that it came).
    pub fn drop_params(&self, call: &CallId) {
        if let Some(returned) = self.inner.lock().unwrap().returns.get_mut(&call.id) {
            returned.params = Vec::new();
        }
    }

    pub fn returned(&self, call: &CallId) -> Option<Returned> {
        self.inner.lock().unwrap().returns.get(&call.id).cloned()
    }

    /// Waits for a worker to register.
    pub async fn wait_for_worker(&self, timeout: Duration) -> Result<Arc<ConnectedWorker>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(worker) = self.inner.lock().unwrap().workers.last().cloned() {
                return Ok(worker);
            }
            if tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified).await.is_err() {
                bail!("no worker called WorkerConnect within {timeout:?}");
            }
        }
    }

    /// Waits for the `Return*` of a call.
    pub async fn wait_for_return(&self, call: &CallId, timeout: Duration) -> Result<Returned> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(returned) = self.returned(call) {
                return Ok(returned);
            }
            if tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified).await.is_err() {
                bail!("no Return for call {} of sector {} within {timeout:?}", call.id, call.sector);
            }
        }
    }

    async fn dispatch(self: &Arc<Self>, request: Request, perms: &[String]) -> Result<Value, RpcError> {
        let name = request.method.strip_prefix("Filecoin.").unwrap_or("").to_string();
        let read_only = ["Version", "Session", "AuthVerify", "ActorAddress", "ActorSectorSize"];
        let need = if read_only.contains(&name.as_str()) { "read" } else { "admin" };
        if !perms.iter().any(|p| p == need) {
            return Err(RpcError::method(format!("missing permission to invoke '{name}' (need '{need}')")));
        }
        match name.as_str() {
            "Version" => {
                request.params(0)?;
                Ok(json!({"Version": "devminer+sealfarm", "APIVersion": 66816, "BlockDelay": 30, "Agent": "devminer"}))
            }
            "Session" => {
                request.params(0)?;
                Ok(json!(*self.session.lock().unwrap()))
            }
            "AuthNew" => {
                request.params(1)?;
                let perms: Vec<String> = request.arg(0)?;
                Ok(json!(self.mint(&perms.iter().map(String::as_str).collect::<Vec<_>>())))
            }
            "AuthVerify" => {
                self.auth_verifies.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                request.params(1)?;
                let token: String = request.arg(0)?;
                self.verify(&token).map(|p| json!(p)).ok_or_else(|| RpcError::method("JWT Verification failed"))
            }
            "ActorAddress" => {
                request.params(0)?;
                Ok(json!(format!("t0{}", self.actor)))
            }
            "ActorSectorSize" => {
                request.params(1)?;
                Ok(json!(self.sector_size))
            }
            "StorageAttach" | "StorageDeclareSector" | "StorageDropSector" | "StorageReportHealth" => {
                let count = match name.as_str() {
                    "StorageDeclareSector" => 4,
                    "StorageDropSector" => 3,
                    _ => 2,
                };
                let params = request.params(count)?.to_vec();
                self.inner.lock().unwrap().index.push(IndexCall { method: name, params });
                Ok(Value::Null)
            }
            "WorkerConnect" => {
                request.params(1)?;
                let url: String = request.arg(0)?;
                self.connect_worker(url).await.map_err(|e| RpcError::method(format!("{e:#}")))?;
                Ok(Value::Null)
            }
            method if method.starts_with("Return") => {
                let params = request.params(if return_has_output(method) { 3 } else { 2 })?.to_vec();
                let call: CallId = request.arg(0)?;
                let returned = Returned { method: method.to_string(), params, at: Instant::now() };
                let mut inner = self.inner.lock().unwrap();
                if inner.returns.contains_key(&call.id) {
                    inner.duplicate_returns.push(returned);
                    return Err(RpcError::method(format!("result for call {} already reported", call.id)));
                }
                inner.returns.insert(call.id, returned);
                drop(inner);
                self.changed.notify_waiters();
                Ok(Value::Null)
            }
            _ => Err(RpcError::not_found(&request.method)),
        }
    }

    /// What the miner does inside `WorkerConnect` (docs/LOTUS.md §3.3).
    async fn connect_worker(&self, url: String) -> Result<()> {
        let client = RpcClient::with_http(self.http(), url.clone(), self.mint(&["admin"]));
        let version: u64 = client.call("Version", json!([])).await.context("worker Version")?;
        if version & 0xffff00 != 67328 & 0xffff00 {
            bail!("worker API version {version} is not 1.7");
        }
        let session: String = client.call("Session", json!([])).await.context("worker Session")?;
        if session == "00000000-0000-0000-0000-000000000000" {
            bail!("worker is shutting down");
        }
        let info: Value = client.call("Info", json!([])).await.context("worker Info")?;
        let task_types: Value = client.call("TaskTypes", json!([])).await.context("worker TaskTypes")?;
        let worker = Arc::new(ConnectedWorker { url, session, info, task_types, client });
        self.inner.lock().unwrap().workers.push(worker);
        self.changed.notify_waiters();
        Ok(())
    }
}

fn return_has_output(method: &str) -> bool {
    matches!(
        method,
        "ReturnDataCid"
            | "ReturnAddPiece"
            | "ReturnSealPreCommit1"
            | "ReturnSealPreCommit2"
            | "ReturnSealCommit1"
            | "ReturnSealCommit2"
            | "ReturnReplicaUpdate"
            | "ReturnProveReplicaUpdate1"
            | "ReturnProveReplicaUpdate2"
            | "ReturnReadPiece"
    )
}

async fn handle(
    State(miner): State<Arc<DevMiner>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if miner.away.load(std::sync::atomic::Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if miner.stalled.load(std::sync::atomic::Ordering::SeqCst) {
        return std::future::pending().await;
    }
    let perms = match jsonrpc::bearer_token(&headers, query.as_deref()) {
        None => vec!["read".to_string()],
        Some(token) => match miner.verify(&token) {
            Some(perms) => perms,
            None => return StatusCode::UNAUTHORIZED.into_response(),
        },
    };
    jsonrpc::serve(&body, |request| async move { miner.dispatch(request, &perms).await }).await
}

/// The params of a CC `AddPiece` call that fills `sector` (lotus' order:
/// sector, existing piece sizes, piece size, a `null` reader of that size).
pub fn add_piece_params(sector: SectorRef) -> Value {
    let unpadded = sector.proof_type.info().map_or(0, |i| i.sector_size.unpadded());
    json!([sector, [], unpadded, {"Type": "null", "Info": unpadded.to_string()}])
}

/// One sector of the driver's pledge.
pub fn sector_ref(number: u64, proof: sealfarm_schemas::RegisteredSealProof) -> SectorRef {
    SectorRef { id: SectorId { miner: MINER_ID, number }, proof_type: proof }
}

/// What sealing one sector through the worker API gave.
#[derive(Debug)]
pub struct SealReport {
    pub sector: SectorRef,
    /// Method, CallID, when the call was made (Unix ms) and the time from
    /// the call to its `Return*`.
    pub calls: Vec<(String, CallId, u64, Duration)>,
    pub verified: bool,
}

impl DevMiner {
    /// Makes an async call on a worker and waits for its `Return*`; the
    /// output slot (or `null` for error-only returns) on success.
    pub async fn call(
        &self,
        worker: &ConnectedWorker,
        method: &str,
        params: Value,
        timeout: Duration,
        report: &mut SealReport,
    ) -> Result<Value> {
        let started = Instant::now();
        let called_at_ms = sealfarm_schemas::messages::now_ms();
        let call: CallId = worker.client.call(method, params).await.with_context(|| format!("{method} call"))?;
        let returned = self.wait_for_return(&call, timeout).await?;
        report.calls.push((method.to_string(), call, called_at_ms, started.elapsed()));
        if self.progress.load(std::sync::atomic::Ordering::Relaxed) {
            println!(
                "{:<14} {:<16} returned after {:>8} ms",
                call.sector.to_string(),
                method,
                started.elapsed().as_millis()
            );
        }
        let (output, error) = match returned.params.len() {
            3 => (returned.params[1].clone(), returned.params[2].clone()),
            _ => (Value::Null, returned.params[1].clone()),
        };
        if !error.is_null() {
            bail!("{method} of sector {} failed: {error}", call.sector);
        }
        Ok(output)
    }

    /// Walks one CC sector through the pipeline in lotus' order and encoding
    /// (docs/LOTUS.md §10), checking CommD and verifying the proof.
    pub async fn seal_cc(&self, worker: &ConnectedWorker, sector: SectorRef, timeout: Duration) -> Result<SealReport> {
        self.seal_cc_with(worker, sector, crate::cc::randomness(), timeout).await.map(|(report, _)| report)
    }

    /// [`DevMiner::seal_cc`] with the ticket given; the report and the sector's CIDs.
    pub async fn seal_cc_with(
        &self,
        worker: &ConnectedWorker,
        sector: SectorRef,
        ticket: [u8; 32],
        timeout: Duration,
    ) -> Result<(SealReport, sealfarm_schemas::SectorCids)> {
        use sealfarm_schemas::{PieceInfo, SectorCids};

        let mut report = SealReport { sector, calls: Vec::new(), verified: false };
        let size = sector.proof_type.info().context("known proof type")?.sector_size;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let seed = crate::cc::randomness();

        let piece = self.call(worker, "AddPiece", add_piece_params(sector), timeout, &mut report).await?;
        let piece: PieceInfo = serde_json::from_value(piece).context("ReturnAddPiece output")?;
        if piece.size != size.0 {
            bail!("AddPiece returned a piece of {} bytes for a {size} sector", piece.size);
        }
        self.call(worker, "Fetch", json!([sector, 1, "sealing", "move"]), timeout, &mut report).await?;
        let pc1_out =
            self.call(worker, "SealPreCommit1", json!([sector, b64(&ticket), [piece]]), timeout, &mut report).await?;
        self.call(worker, "Fetch", json!([sector, 6, "sealing", "move"]), timeout, &mut report).await?;
        let cids = self.call(worker, "SealPreCommit2", json!([sector, pc1_out]), timeout, &mut report).await?;
        let cids: SectorCids = serde_json::from_value(cids).context("ReturnSealPreCommit2 output")?;
        // One CC piece fills the sector: CommD is that piece's CommP.
        if cids.unsealed.as_ref() != Some(&piece.piece_cid) {
            bail!("CommD {:?} of sector {} does not match its piece {}", cids.unsealed, sector.id, piece.piece_cid);
        }
        self.call(worker, "Fetch", json!([sector, 6, "sealing", "move"]), timeout, &mut report).await?;
        let c1_out = self
            .call(worker, "SealCommit1", json!([sector, b64(&ticket), b64(&seed), [piece], cids]), timeout, &mut report)
            .await?;
        let proof = self.call(worker, "SealCommit2", json!([sector, c1_out]), timeout, &mut report).await?;
        let proof = base64::engine::general_purpose::STANDARD.decode(proof.as_str().context("proof is base64")?)?;
        report.verified = crate::verify_sector_proof(sector, &cids, ticket, seed, &proof)?;
        self.call(worker, "ReleaseUnsealed", json!([sector, null]), timeout, &mut report).await?;
        self.call(worker, "FinalizeSector", json!([sector]), timeout, &mut report).await?;
        Ok((report, cids))
    }
}

/// Deal bytes for a test or the demo (fr32-safe: the top bits of every
/// 32-byte chunk clear, as real padded-then-unpadded data is).
pub fn deal_bytes(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed * 13) % 251) as u8 & 0x3f).collect()
}

impl DevMiner {
    /// Makes a call whose piece data the miner pushes to the worker's
    /// `/rpc/streams/v0/push/<id>` (lotus pushes the bytes and makes the
    /// call concurrently); the call's output.
    pub async fn call_pushing(
        &self,
        worker: &ConnectedWorker,
        method: &str,
        params: impl FnOnce(Value) -> Value,
        data: Vec<u8>,
        timeout: Duration,
        report: &mut SealReport,
    ) -> Result<Value> {
        let stream = uuid::Uuid::new_v4();
        let base = worker.url.trim_end_matches("/rpc/v0").to_string();
        let push_url = format!("{base}/rpc/streams/v0/push/{stream}");
        let http = self.http();
        let pushed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            http.post(&push_url)
                .header("Content-Type", "application/octet-stream")
                .body(data)
                .send()
                .await
                .map(|r| r.status())
        });
        let reader = json!({"Type": "push", "Info": stream.to_string()});
        let output = self.call(worker, method, params(reader), timeout, report).await;
        let status = pushed.await.context("the push task")?.context("pushing the piece")?;
        if !status.is_success() {
            bail!("the push of {method}'s piece data answered {status}");
        }
        output
    }

    /// Snaps a finalized CC sector as lotus' snap-deal pipeline does: a deal
    /// piece filling the sector pushed with AddPiece, ReplicaUpdate,
    /// ProveReplicaUpdate1 and 2 (the proof verified), the unsealed copy
    /// released and one deal recreated with UnsealPiece, FinalizeReplicaUpdate.
    pub async fn snap_deal(
        &self,
        worker: &ConnectedWorker,
        sector: SectorRef,
        sector_key: &sealfarm_schemas::Cid,
        ticket: [u8; 32],
        timeout: Duration,
    ) -> Result<SealReport> {
        let mut report = SealReport { sector, calls: Vec::new(), verified: false };
        let size = sector.proof_type.info().context("known proof type")?.sector_size;
        let deal = deal_bytes(size.unpadded() as usize, sector.id.number as usize);
        let unpadded = size.unpadded();
        let piece = self
            .call_pushing(worker, "AddPiece", |r| json!([sector, [], unpadded, r]), deal, timeout, &mut report)
            .await?;
        let out = self.call(worker, "ReplicaUpdate", json!([sector, [piece]]), timeout, &mut report).await?;
        let (new_sealed, new_unsealed): (sealfarm_schemas::Cid, sealfarm_schemas::Cid) =
            (serde_json::from_value(out["NewSealed"].clone())?, serde_json::from_value(out["NewUnsealed"].clone())?);
        let cids = json!([sector, sector_key, new_sealed, new_unsealed]);
        let vanilla = self.call(worker, "ProveReplicaUpdate1", cids.clone(), timeout, &mut report).await?;
        let mut params = cids.as_array().context("params")?.clone();
        params.push(vanilla);
        let proof = self.call(worker, "ProveReplicaUpdate2", Value::Array(params), timeout, &mut report).await?;
        let proof = base64::engine::general_purpose::STANDARD.decode(proof.as_str().context("proof is base64")?)?;
        report.verified = crate::verify_update_proof(sector, sector_key, &new_sealed, &new_unsealed, &proof)?;
        self.call(worker, "ReleaseUnsealed", json!([sector, null]), timeout, &mut report).await?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(ticket);
        self.call(worker, "UnsealPiece", json!([sector, 0, unpadded, b64, new_unsealed]), timeout, &mut report).await?;
        self.call(worker, "FinalizeReplicaUpdate", json!([sector]), timeout, &mut report).await?;
        Ok(report)
    }
}
