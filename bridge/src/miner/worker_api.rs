//! The worker API the miner calls (docs/LOTUS.md §4) on `POST /rpc/v0`.
//!
//! Every incoming token is verified through the miner's `AuthVerify` and must
//! carry `admin`, as lotus-worker requires: a token the miner rejects gets an
//! HTTP 401, a request without one gets lotus' "missing permission" error.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use sealfarm_schemas::blob::Payload;
use sealfarm_schemas::lotus::{Range, ReaderStream, SectorLocation};
use sealfarm_schemas::messages::PieceData;
use sealfarm_schemas::{Bytes as LotusBytes, Cid, PieceInfo, SectorCids, SectorRef, SectorSize, Stage, Task, TaskType};
use serde_json::{json, Value};

use crate::calls::store::CallKind;
use crate::calls::Calls;
use crate::miner::client::Miner;
use crate::miner::rpc::{self, Request, RpcError};
use crate::miner::tokens::Verdict;

/// The worker API version the miner requires (1.7.0).
pub const WORKER_API_VERSION: u64 = 67328;

/// Task types the bridge advertises: what the farm computes, plus the
/// location-bound types the miner expects of a worker holding files.
pub const TASK_TYPES: [TaskType; 16] = [
    TaskType::AddPiece,
    TaskType::PreCommit1,
    TaskType::PreCommit2,
    TaskType::Commit1,
    TaskType::Commit2,
    TaskType::Finalize,
    TaskType::FinalizeUnsealed,
    TaskType::Fetch,
    TaskType::ReplicaUpdate,
    TaskType::ProveReplicaUpdate1,
    TaskType::ProveReplicaUpdate2,
    TaskType::RegenSectorKey,
    TaskType::FinalizeReplicaUpdate,
    TaskType::Unseal,
    TaskType::DataCid,
    TaskType::DownloadSector,
];

/// Declares [`Method`]: every method of lotus' worker API
/// (`api/api_worker.go`), by its Go name.
macro_rules! worker_methods {
    ($($name:ident),* $(,)?) => {
        /// A method of lotus' worker API. The bridge serves the sealing ones
        /// and the ones the miner needs to schedule; the others (snap deals,
        /// unsealing, PoSt, storage management) it answers "not supported".
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Method {
            $($name),*
        }

        impl Method {
            /// The method a JSON-RPC name (without `Filecoin.`) calls.
            pub fn parse(name: &str) -> Option<Method> {
                match name {
                    $(stringify!($name) => Some(Method::$name),)*
                    _ => None,
                }
            }
        }
    };
}

worker_methods!(
    Version,
    Session,
    ProcessSession,
    Enabled,
    Info,
    TaskTypes,
    Paths,
    WaitQuiet,
    SetEnabled,
    TaskEnable,
    TaskDisable,
    Shutdown,
    AddPiece,
    SealPreCommit1,
    SealPreCommit2,
    SealCommit1,
    SealCommit2,
    FinalizeSector,
    ReleaseUnsealed,
    Fetch,
    MoveStorage,
    DataCid,
    UnsealPiece,
    ReplicaUpdate,
    ProveReplicaUpdate1,
    ProveReplicaUpdate2,
    GenerateSectorKeyFromData,
    FinalizeReplicaUpdate,
    DownloadSectorData,
    GenerateWinningPoSt,
    GenerateWindowPoSt,
    Remove,
    StorageAddLocal,
    StorageDetachLocal,
    StorageDetachAll,
    StorageRedeclareLocal,
    StorageLocal,
);

/// What the handlers share.
pub struct Api {
    pub session: uuid::Uuid,
    pub hostname: String,
    pub calls: Arc<Calls>,
    pub miner: Arc<Miner>,
    pub pieces: Arc<crate::miner::pieces::PieceInbox>,
    /// Per-stage limits the operator set (`--max-concurrent`); none: the
    /// live workers' slots.
    pub limits: Vec<(TaskType, u32)>,
    /// What the workers' file servers expect (worker-local storage).
    pub files_token: Option<String>,
    /// The largest request body `/rpc/v0` takes (`--max-request-size`).
    pub max_request_size: u64,
    /// One large request body is read and decoded at a time (bounded memory).
    pub large_requests: tokio::sync::Semaphore,
    /// The client `/remote` fetches worker-local files with (one, so its
    /// connections to the workers' file servers are reused).
    pub files_client: reqwest::Client,
}

/// A worker heard from within this long counts towards the farm's capacity.
pub const LIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// Stages advertised only while a live worker takes them; C1, finalize,
/// release-unsealed and fetch are always advertised: the miner sends them
/// only to the worker that holds the sector's files (docs/LOTUS.md §6.2).
/// The snap-deal, unseal, DataCid and download stages are new to a farm
/// (an operator may leave them to lotus-workers): advertised only while a
/// live worker takes them.
fn advertised_while_taken(stage: Stage) -> bool {
    !matches!(stage, Stage::C1 | Stage::Fin | Stage::Ru)
}

/// `/rpc/v0`, `/rpc/streams/v0/push` and `/remote`.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/rpc/v0", post(rpc_v0))
        .with_state(api.clone())
        .merge(crate::miner::pieces::router(api.pieces.clone()))
        .merge(crate::miner::remote::router(api))
}

/// A request body over this many bytes waits for [`Api::large_requests`].
const LARGE_REQUEST: u64 = 1 << 20;

async fn rpc_v0(State(api): State<Arc<Api>>, RawQuery(query): RawQuery, headers: HeaderMap, body: Body) -> Response {
    let perms = match rpc::bearer_token(&headers, query.as_deref()) {
        None => vec!["read".to_string()],
        Some(token) => match api.miner.verify_token(&token).await {
            Verdict::Allowed(perms) => perms,
            Verdict::Refused => return StatusCode::UNAUTHORIZED.into_response(),
            Verdict::Unavailable(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        },
    };
    let limit = api.max_request_size;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Read and dropped, so the client gets to read the answer.
        discard(body).await;
        return rpc::too_large(limit);
    }
    // Large bodies (a SealCommit2 of a 32 GiB sector: tens of MiB) are read
    // one at a time; the others wait unread in their connections.
    let gate = api.clone();
    let _large = match declared {
        Some(n) if n <= LARGE_REQUEST => None,
        _ => gate.large_requests.acquire().await.ok(),
    };
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return (StatusCode::BAD_REQUEST, "the request body broke off").into_response();
        };
        if (bytes.len() + chunk.len()) as u64 > limit {
            discard_stream(stream).await;
            return rpc::too_large(limit);
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = bytes;
    rpc::serve(&body, |request| async move { api.dispatch(request, &perms).await }).await
}

/// DownloadSectorData's map (file type bit, as a decimal string → where to
/// fetch it) as the worker's list of sources. Each key must be one file
/// type; an entry marked `Local` is refused, as lotus' worker refuses it.
pub fn download_sources(
    src: std::collections::BTreeMap<String, SectorLocation>,
) -> Result<Vec<sealfarm_schemas::messages::SectorSource>, String> {
    use sealfarm_schemas::sector_store::FILE_TYPES;
    if src.is_empty() {
        return Err("no file to download".into());
    }
    src.into_iter()
        .map(|(key, location)| {
            let bit: u64 = key.parse().map_err(|_| format!("{key:?} is not a file type number"))?;
            let folder = FILE_TYPES
                .iter()
                .find(|(b, _)| *b == bit)
                .map(|(_, folder)| folder.to_string())
                .ok_or_else(|| format!("{key} is not one sector file type (1, 2, 4, 8 or 16)"))?;
            if location.local {
                return Err(format!("{folder}: a 'Local' source cannot be downloaded"));
            }
            if !(location.url.starts_with("http://") || location.url.starts_with("https://")) {
                return Err(format!("{folder}: {:?} is not an http(s) URL", location.url));
            }
            let headers = location.headers.unwrap_or_default().into_iter().map(|h| (h.key, h.value)).collect();
            Ok(sealfarm_schemas::messages::SectorSource { file_type: folder, url: location.url, headers })
        })
        .collect()
}

/// Checks that `text` is a JSON array of base64 strings without building
/// it (it may be tens of MiB): `[`, then strings of base64 characters
/// separated by commas, `]`, whitespace between tokens.
pub fn check_proof_array(text: &str) -> Result<(), String> {
    let bytes = text.trim().as_bytes();
    let inner =
        bytes.strip_prefix(b"[").and_then(|b| b.strip_suffix(b"]")).ok_or("expected a JSON array of base64 strings")?;
    if inner.trim_ascii().is_empty() {
        return Err("no vanilla proofs given".into());
    }
    for (index, item) in inner.split(|b| *b == b',').enumerate() {
        let item = item.trim_ascii();
        let body = item
            .strip_prefix(b"\"")
            .and_then(|b| b.strip_suffix(b"\""))
            .ok_or_else(|| format!("item {} is not a string", index + 1))?;
        if body.is_empty()
            || !body.len().is_multiple_of(4)
            || !body.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        {
            return Err(format!("item {} is not base64", index + 1));
        }
    }
    Ok(())
}

/// Reads a refused body to its end without keeping it.
async fn discard(body: Body) {
    discard_stream(body.into_data_stream()).await
}

async fn discard_stream(mut stream: axum::body::BodyDataStream) {
    while let Some(Ok(_)) = stream.next().await {}
}

impl Api {
    async fn dispatch(&self, request: Request<'_>, perms: &[String]) -> Result<Value, RpcError> {
        let method = request.method.strip_prefix("Filecoin.").and_then(Method::parse);
        let Some(method) = method else {
            return Err(RpcError::not_found(&request.method));
        };
        let name = format!("{method:?}");
        if !perms.iter().any(|p| p == "admin") {
            return Err(RpcError::method(format!("missing permission to invoke '{name}' (need 'admin')")));
        }
        let calls = &self.calls;
        let call_id = |id| serde_json::to_value(id).map_err(|e| RpcError::method(e.to_string()));
        let reader = |data: ReaderStream, size: u64| async move {
            Ok::<_, RpcError>(match data.kind.as_str() {
                "null" => PieceData::Null,
                "push" => {
                    let id: uuid::Uuid = data
                        .info
                        .parse()
                        .map_err(|_| RpcError::method(format!("push stream id {:?} is not a UUID", data.info)))?;
                    self.pieces.wait_for_push(id, size).await.map_err(RpcError::method)?;
                    PieceData::Piece { id }
                }
                "http" => PieceData::Piece { id: self.pieces.fetch(&data.info, size).await.map_err(RpcError::method)? },
                other => return Err(RpcError::method(format!("unknown piece data type {other:?}"))),
            })
        };
        // Each arm decodes the method's params as one typed tuple (lotus'
        // signature); a wrong count or type is refused before anything runs.
        match method {
            Method::Version => {
                let () = request.decode()?;
                Ok(json!(WORKER_API_VERSION))
            }
            Method::Session | Method::ProcessSession => {
                let () = request.decode()?;
                Ok(json!(self.session))
            }
            Method::Enabled => {
                let () = request.decode()?;
                Ok(json!(true))
            }
            Method::Info => {
                let () = request.decode()?;
                Ok(self.info())
            }
            Method::TaskTypes => {
                let () = request.decode()?;
                let map: serde_json::Map<String, Value> = self
                    .task_types()
                    .iter()
                    .map(|t| (serde_json::to_value(t).unwrap().as_str().unwrap().to_string(), json!({})))
                    .collect();
                Ok(Value::Object(map))
            }
            Method::Paths => {
                let () = request.decode()?;
                Ok(Value::Array(self.miner.storage.iter().map(|p| p.worker_path()).collect()))
            }
            Method::AddPiece => {
                let (sector, existing, piece_size, data): (SectorRef, Option<Vec<u64>>, u64, ReaderStream) =
                    request.decode()?;
                let data = reader(data, piece_size).await?;
                let task = Task::Ap { existing_piece_sizes: existing.unwrap_or_default(), piece_size, data };
                call_id(calls.accept(&name, sector, task).await?)
            }
            Method::SealPreCommit1 => {
                let (sector, ticket, pieces): (SectorRef, _, Vec<PieceInfo>) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Pc1 { ticket, pieces }).await?)
            }
            Method::SealPreCommit2 => {
                let (sector, pc1_out): (SectorRef, LotusBytes) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Pc2 { pc1_out }).await?)
            }
            Method::SealCommit1 => {
                let (sector, ticket, seed, pieces, cids): (SectorRef, _, _, _, SectorCids) = request.decode()?;
                let task = Task::C1 { ticket, seed, pieces, cids: Box::new(cids) };
                call_id(calls.accept(&name, sector, task).await?)
            }
            Method::SealCommit2 => {
                // The C1 output, borrowed from the body: tens of MiB for a
                // 32 GiB sector, kept as a blob, never sent through the broker.
                let (sector, c1_out): (SectorRef, &serde_json::value::RawValue) = request.decode()?;
                let c1_out = match c1_out.get() {
                    raw if raw.starts_with('"') && !raw.contains('\\') => {
                        self.calls.blobs.put_base64(&raw[1..raw.len() - 1]).await
                    }
                    raw => match serde_json::from_str::<LotusBytes>(raw) {
                        Ok(bytes) => self.calls.blobs.put(bytes.0).await.map_err(|e| format!("{e:#}")),
                        Err(e) => Err(e.to_string()),
                    },
                }
                .map_err(|e| {
                    RpcError::new(rpc::INVALID_PARAMS, format!("SealCommit2 (param: 1, the C1 output): {e}"))
                })?;
                let sha256 = c1_out.sha256.clone();
                let task = Task::C2 { c1_out: Payload::Blob(c1_out) };
                let accepted = calls.accept(&name, sector, task).await;
                // Recorded (or refused): the store decides its fate from here on.
                self.calls.blobs.unpin(&sha256);
                call_id(accepted?)
            }
            Method::FinalizeSector => {
                let (sector,): (SectorRef,) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Fin {}).await?)
            }
            Method::ReleaseUnsealed => {
                let (sector, keep_unsealed): (SectorRef, Option<Vec<Range>>) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Ru { keep_unsealed }).await?)
            }
            Method::Fetch => {
                // The file types, path type and acquire mode do not matter in shared storage.
                let (sector, _, _, _): (SectorRef, Value, Value, Value) = request.decode()?;
                call_id(calls.accept_local(&name, sector, CallKind::Fetch)?)
            }
            Method::MoveStorage => {
                let (sector, _types): (SectorRef, Value) = request.decode()?;
                call_id(calls.accept_local(&name, sector, CallKind::MoveStorage)?)
            }
            Method::ReplicaUpdate => {
                let (sector, pieces): (SectorRef, Vec<PieceInfo>) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Update { pieces }).await?)
            }
            Method::ProveReplicaUpdate1 => {
                let (sector, sector_key, new_sealed, new_unsealed): (SectorRef, Cid, Cid, Cid) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Pr1 { sector_key, new_sealed, new_unsealed }).await?)
            }
            Method::ProveReplicaUpdate2 => {
                // The vanilla proofs (a JSON array of base64 strings, tens of
                // MiB for a 32 GiB sector) are kept as a blob of that text,
                // never sent through the broker.
                let (sector, sector_key, new_sealed, new_unsealed, proofs): (
                    SectorRef,
                    Cid,
                    Cid,
                    Cid,
                    &serde_json::value::RawValue,
                ) = request.decode()?;
                let text = proofs.get();
                check_proof_array(text).map_err(|e| {
                    RpcError::new(
                        rpc::INVALID_PARAMS,
                        format!("ProveReplicaUpdate2 (param: 4, the vanilla proofs): {e}"),
                    )
                })?;
                let blob = self.calls.blobs.put(text.as_bytes().to_vec()).await.map_err(|e| {
                    RpcError::method(format!("ProveReplicaUpdate2: cannot keep the vanilla proofs: {e:#}"))
                })?;
                let sha256 = blob.sha256.clone();
                let task = Task::Pr2 { sector_key, new_sealed, new_unsealed, vanilla_proofs: Payload::Blob(blob) };
                let accepted = calls.accept(&name, sector, task).await;
                self.calls.blobs.unpin(&sha256);
                call_id(accepted?)
            }
            Method::GenerateSectorKeyFromData => {
                let (sector, comm_d): (SectorRef, Cid) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Gsk { comm_d }).await?)
            }
            Method::FinalizeReplicaUpdate => {
                let (sector,): (SectorRef,) = request.decode()?;
                call_id(calls.accept(&name, sector, Task::Fru {}).await?)
            }
            Method::UnsealPiece => {
                let (sector, offset, size, randomness, comm_d): (SectorRef, u64, u64, LotusBytes, Cid) =
                    request.decode()?;
                if let Some(info) = sector.proof_type.info() {
                    sealfarm_runtime::unsealed_file::unseal_range(offset, size, info.sector_size.0)
                        .map_err(|e| RpcError::new(rpc::INVALID_PARAMS, format!("UnsealPiece: {e}")))?;
                }
                call_id(calls.accept(&name, sector, Task::Unseal { offset, size, randomness, comm_d }).await?)
            }
            Method::DataCid => {
                let (piece_size, data): (u64, ReaderStream) = request.decode()?;
                // No sector: lotus names the call's sector {0, 0}; the
                // task goes to the queue of the miner's sector size.
                let size = self.miner.sector_size().await.map_err(|e| RpcError::method(format!("DataCid: {e:#}")))?;
                if piece_size == 0 || piece_size > size.unpadded() {
                    return Err(RpcError::method(format!(
                        "DataCid: a piece of {piece_size} bytes does not fit a {size} sector"
                    )));
                }
                let data = reader(data, piece_size).await?;
                let sector = SectorRef {
                    id: sealfarm_schemas::SectorId { miner: 0, number: 0 },
                    proof_type: sealfarm_schemas::RegisteredSealProof::v1_1_for(size),
                };
                call_id(calls.accept(&name, sector, Task::Dc { piece_size, data }).await?)
            }
            Method::DownloadSectorData => {
                let (sector, finalized, src): (SectorRef, bool, std::collections::BTreeMap<String, SectorLocation>) =
                    request.decode()?;
                let sources = download_sources(src).map_err(|e| {
                    RpcError::new(rpc::INVALID_PARAMS, format!("DownloadSectorData (param: 2, the sources): {e}"))
                })?;
                call_id(calls.accept(&name, sector, Task::Dl { finalized, sources }).await?)
            }
            other => Err(RpcError::method(format!("sealfarm-bridge does not support {other:?} yet"))),
        }
    }

    /// The task types the farm takes now: the compute stages some live
    /// worker takes, and the location-bound ones a file holder must list.
    pub fn task_types(&self) -> Vec<TaskType> {
        let capacity = self.calls.farm.capacity(LIVE);
        TASK_TYPES
            .into_iter()
            .filter(|t| {
                let compute = Stage::ALL.into_iter().find(|s| s.task_type() == *t && advertised_while_taken(*s));
                compute.is_none_or(|stage| capacity.iter().any(|((s, _), slots)| *s == stage && *slots > 0))
            })
            .collect()
    }

    /// `storiface.WorkerInfo` for the farm (docs/LOTUS.md §6.3): the live
    /// workers' cores, memory and GPUs added up, and per task and proof
    /// type the slots they have (`MaxConcurrent`; the operator's
    /// `--max-concurrent` instead when given).
    fn info(&self) -> Value {
        let workers = self.calls.farm.live(LIVE);
        let hardware: Vec<_> = workers.iter().filter_map(|w| w.hardware.as_ref()).collect();
        let (physical, used, swap, swap_used, cores) = if hardware.is_empty() {
            let (physical, available, swap, swap_free) = meminfo();
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            (physical, physical.saturating_sub(available), swap, swap.saturating_sub(swap_free), cores)
        } else {
            // Saturating: the figures are what workers report.
            let sum = |f: fn(&&sealfarm_schemas::hardware::Hardware) -> u64| {
                hardware.iter().map(f).fold(0u64, u64::saturating_add)
            };
            (
                sum(|h| h.memory_bytes),
                sum(|h| h.memory_used_bytes),
                sum(|h| h.swap_bytes),
                sum(|h| h.swap_used_bytes),
                hardware.iter().map(|h| h.cores).fold(0, usize::saturating_add),
            )
        };
        let gpus: Vec<String> = hardware.iter().flat_map(|h| h.gpus().map(|g| g.name.clone())).collect();
        let limits: Vec<(TaskType, SectorSize, u32)> = if self.limits.is_empty() {
            self.calls
                .farm
                .capacity(LIVE)
                .into_iter()
                .map(|((stage, size), slots)| (stage.task_type(), size, slots))
                .collect()
        } else {
            self.limits
                .iter()
                .flat_map(|(task, limit)| SectorSize::ALL.into_iter().map(move |size| (*task, size, *limit)))
                .collect()
        };
        json!({
            "Hostname": self.hostname,
            "IgnoreResources": true,
            "Resources": {
                "MemPhysical": physical, "MemUsed": used, "MemSwap": swap, "MemSwapUsed": swap_used,
                "CPUs": cores.max(1), "GPUs": gpus, "Resources": resource_table(&limits)
            }
        })
    }
}

/// `WorkerResources.Resources` carrying only `MaxConcurrent` per task type and
/// proof type (sector size): with `IgnoreResources` the miner enforces
/// nothing else. `null` without limits (the miner then uses its own table:
/// unlimited).
pub fn resource_table(limits: &[(TaskType, SectorSize, u32)]) -> Value {
    if limits.is_empty() {
        return Value::Null;
    }
    let mut table = serde_json::Map::new();
    for (task, size, limit) in limits {
        let name = serde_json::to_value(task).expect("task types are strings");
        let rows = table.entry(name.as_str().expect("task types are strings").to_string()).or_insert(json!({}));
        // Proof types 0-14 are the five sizes in order, three times (V1, V1_1, synthetic).
        for proof in (0..15i64).filter(|p| SectorSize::ALL[*p as usize % 5] == *size) {
            let row = json!({"MinMemory": 0, "MaxMemory": 0, "GPUUtilization": 0.0, "MaxParallelism": 0,
                             "MaxParallelismGPU": 0, "BaseMinMemory": 0, "MaxConcurrent": limit});
            rows[proof.to_string()] = row;
        }
    }
    Value::Object(table)
}

/// Parses `--max-concurrent` values: `<stage>=<n>` (`pc1=64`).
pub fn parse_limit(text: &str) -> Result<(TaskType, u32), String> {
    let (stage, limit) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected <stage>=<number>, e.g. pc1=64"))?;
    let stage: sealfarm_schemas::Stage = stage.parse()?;
    let limit = limit.trim().parse().map_err(|_| format!("{text:?}: {limit:?} is not a number"))?;
    Ok((stage.task_type(), limit))
}

/// (MemTotal, MemAvailable, SwapTotal, SwapFree) in bytes from /proc/meminfo.
fn meminfo() -> (u64, u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"), field("SwapTotal:"), field("SwapFree:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_limits_parse_like_operators_write_them() {
        assert_eq!(parse_limit("pc1=64"), Ok((TaskType::PreCommit1, 64)));
        assert_eq!(parse_limit("C2=1"), Ok((TaskType::Commit2, 1)));
        assert!(parse_limit("pc1").unwrap_err().contains("<stage>=<number>"));
        assert!(parse_limit("pc9=1").unwrap_err().contains("unknown stage"));
        assert!(parse_limit("pc1=lots").unwrap_err().contains("not a number"));
        assert_eq!(resource_table(&[]), Value::Null);
    }

    #[test]
    fn download_sources_name_one_file_type_each() {
        let parse = |v: Value| download_sources(serde_json::from_value(v).unwrap());
        let sources =
            parse(json!({"2": {"Local": false, "URL": "http://a/s", "Headers": [{"Key": "K", "Value": "V"}]},
                                   "4": {"Local": false, "URL": "https://a/c", "Headers": null}}))
            .unwrap();
        assert_eq!(sources.len(), 2);
        assert_eq!((sources[0].file_type.as_str(), sources[0].headers[0].0.as_str()), ("sealed", "K"));
        assert_eq!(sources[1].file_type, "cache");
        assert!(parse(json!({"6": {"URL": "http://a"}})).unwrap_err().contains("not one sector file type"));
        assert!(parse(json!({"2": {"Local": true, "URL": "http://a"}})).unwrap_err().contains("Local"));
        assert!(parse(json!({"2": {"URL": "file:///etc/passwd"}})).unwrap_err().contains("not an http(s) URL"));
        assert!(parse(json!({})).unwrap_err().contains("no file"));
    }

    #[test]
    fn vanilla_proofs_must_be_an_array_of_base64_strings() {
        assert_eq!(check_proof_array(r#"["Ynl0ZSBhcnJheQ==", "Bw=="]"#), Ok(()));
        assert!(check_proof_array(r#""Bw==""#).unwrap_err().contains("JSON array"));
        assert!(check_proof_array("[]").unwrap_err().contains("no vanilla proofs"));
        assert!(check_proof_array(r#"["Bw==", 7]"#).unwrap_err().contains("item 2 is not a string"));
        assert!(check_proof_array(r#"["B w=="]"#).unwrap_err().contains("item 1 is not base64"));
    }
}
