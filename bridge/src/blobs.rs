//! The bridge's blobs: stage data too large for a broker message (a 32 GiB
//! sector's C1 output is tens of MiB), kept as files named by their SHA-256
//! and exchanged with the workers over HTTP (`docs/ARCHITECTURE.md`, "Blobs").
//!
//! * A `SealCommit2` call's C1 output is written here before its `CallID` is
//!   answered; its task names the blob.
//! * A worker that computed a C1 output uploads it here before it publishes
//!   the result; the result names the blob.
//! * `GET|PUT /sealfarm/v0/blobs/{sha256}` with the worker token (or the
//!   admin token): a worker fetches a C2 input, or uploads a C1 output. An
//!   upload is streamed to disk, checked against its digest and only then
//!   renamed into place, so a blob on disk is always whole.
//!
//! A blob lives in `<state-dir>/blobs/<sha256>` until the call it belongs to
//! is returned to the miner (then [`Blobs::release`] removes it, unless
//! another unreturned call names the same bytes); it survives bridge and
//! worker restarts. Uploads whose result never arrived are removed by
//! [`Blobs::sweep`] at start once older than [`ORPHAN_AGE`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use sealfarm_runtime::partial_file::{write_whole, PartialFile};
use sealfarm_schemas::blob::{is_digest, BlobRef};
use sha2::{Digest, Sha256};

/// How long an upload no call names is kept (its result may still be on the way).
pub const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);

/// The blob folder.
pub struct Blobs {
    dir: PathBuf,
    /// The largest blob accepted.
    max_bytes: u64,
    /// Blobs just stored whose call is not recorded yet (a SealCommit2 being
    /// accepted, an upload whose result is on the way), with a count: never
    /// removed meanwhile, even when a returned call named the same bytes.
    pins: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Blobs {
    /// Opens `<state_dir>/blobs`, removing uploads a crash left unfinished.
    pub fn open(state_dir: &Path, max_bytes: u64) -> Result<Self> {
        let dir = state_dir.join("blobs");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Blobs { dir, max_bytes, pins: Default::default() })
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// True when the blob is here, whole.
    pub fn contains(&self, blob: &BlobRef) -> bool {
        blob.validate().is_ok() && std::fs::metadata(self.path(&blob.sha256)).is_ok_and(|m| m.len() == blob.size)
    }

    /// Stores `bytes` (fsynced) and names them.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<BlobRef> {
        let blob = BlobRef::of(&bytes);
        self.pin(&blob.sha256);
        if self.contains(&blob) {
            return Ok(blob);
        }
        let (path, partial) = (self.path(&blob.sha256), self.partial_path(&blob.sha256));
        tokio::task::spawn_blocking(move || -> Result<()> { Ok(write_whole(&partial, &path, &bytes)?) })
            .await?
            .inspect_err(|_| self.unpin(&blob.sha256))
            .with_context(|| format!("cannot store blob {blob}"))?;
        Ok(blob)
    }

    /// Stores the bytes of base64 `text` (a JSON-RPC parameter as the miner
    /// sent it), decoded piece by piece: no copy of the decoded bytes is held.
    pub async fn put_base64(&self, text: &str) -> Result<BlobRef, String> {
        // 4 MiB of text: a whole number of base64 quads.
        const CHUNK: usize = 4 << 20;
        use base64::Engine as _;
        let engine = &base64::engine::general_purpose::STANDARD;
        if !text.len().is_multiple_of(4) {
            return Err("invalid base64: its length is not a multiple of 4".into());
        }
        let mut file = PartialFile::create(self.partial_path("base64"))
            .await
            .map_err(|e| format!("cannot store the payload: {e}"))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = Vec::with_capacity(CHUNK / 4 * 3);
        let written: Result<(), String> = async {
            for chunk in text.as_bytes().chunks(CHUNK) {
                buffer.clear();
                engine.decode_vec(chunk, &mut buffer).map_err(|e| format!("invalid base64: {e}"))?;
                hasher.update(&buffer);
                size += buffer.len() as u64;
                if size > self.max_bytes {
                    return Err(format!("the payload is over {} bytes", self.max_bytes));
                }
                file.write_all(&buffer).await.map_err(|e| format!("cannot store the payload: {e}"))?;
            }
            Ok(())
        }
        .await;
        written?;
        let blob = BlobRef { sha256: hex::encode(hasher.finalize()), size };
        self.pin(&blob.sha256);
        if let Err(e) = file.commit(&self.path(&blob.sha256)).await {
            self.unpin(&blob.sha256);
            return Err(format!("cannot store the payload: {e}"));
        }
        Ok(blob)
    }

    /// The file of a blob, once its bytes were read through and checked
    /// against its name (in 1 MiB pieces: memory stays small whatever its size).
    pub async fn checked_path(&self, blob: &BlobRef) -> Result<PathBuf> {
        blob.validate().map_err(anyhow::Error::msg)?;
        let path = self.path(&blob.sha256);
        let (expected, file, dir) = (blob.clone(), path.clone(), self.dir.clone());
        let checked = tokio::task::spawn_blocking(move || -> Result<()> {
            let reader = std::fs::File::open(&file)
                .with_context(|| format!("blob {expected} is not in {} (removed, or never stored)", dir.display()))?;
            expected.verify_reader(reader).map_err(|e| anyhow::anyhow!("{e} (the file {} is damaged)", file.display()))
        });
        checked.await??;
        Ok(path)
    }

    /// The bytes of the blob file at `path` as they are (a blob that holds
    /// JSON text), 1 MiB at a time, two pieces ahead at most.
    pub fn raw_stream(path: PathBuf) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
        stream_file(path, 1 << 20, axum::body::Bytes::from)
    }

    /// The bytes of the blob file at `path` as standard base64 text (as a Go
    /// `[]byte` travels in JSON), 3 MiB of file at a time (a multiple of 3
    /// bytes encodes without padding: the pieces join), two pieces ahead at most.
    pub fn base64_stream(path: PathBuf) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
        use base64::Engine as _;
        stream_file(path, 3 << 20, |piece| {
            axum::body::Bytes::from(base64::engine::general_purpose::STANDARD.encode(&piece))
        })
    }

    /// Receives an upload of `sha256` from `body`: streamed to a temporary
    /// file, refused past the size limit or when the bytes do not match the
    /// name, renamed into place when whole.
    async fn receive(&self, sha256: &str, body: Body) -> Result<u64, (StatusCode, String)> {
        let outcome = async {
            let mut file = PartialFile::create(self.partial_path(sha256))
                .await
                .map_err(|e| (StatusCode::INSUFFICIENT_STORAGE, format!("cannot store blob {sha256}: {e}")))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("upload of blob {sha256} broke off: {e}")))?;
                size += chunk.len() as u64;
                if size > self.max_bytes {
                    // Read to its end (not kept), so the sender gets to read the answer.
                    while let Some(Ok(_)) = stream.next().await {}
                    return Err((
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "blob {sha256} is over the bridge's limit of {} bytes (--max-request-size)",
                            self.max_bytes
                        ),
                    ));
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|e| (StatusCode::INSUFFICIENT_STORAGE, format!("cannot store blob {sha256}: {e}")))?;
            }
            let got = hex::encode(hasher.finalize());
            if got != sha256 {
                return Err((StatusCode::BAD_REQUEST, format!("the uploaded bytes have SHA-256 {got}, not {sha256}")));
            }
            // Until the result that names it is recorded.
            self.pin(sha256);
            file.commit(&self.path(sha256))
                .await
                .map_err(|e| (StatusCode::INSUFFICIENT_STORAGE, format!("cannot store blob {sha256}: {e}")))?;
            Ok(size)
        }
        .await;
        outcome
    }

    fn partial_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.partial-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Holds a blob in place until [`unpin`](Self::unpin): its call is not recorded yet.
    pub fn pin(&self, sha256: &str) {
        *self.pins.lock().unwrap().entry(sha256.to_string()).or_default() += 1;
    }

    /// The call a pinned blob belongs to is recorded (or will not be).
    pub fn unpin(&self, sha256: &str) {
        let mut pins = self.pins.lock().unwrap();
        if let Some(count) = pins.get_mut(sha256) {
            *count -= 1;
            if *count == 0 {
                pins.remove(sha256);
            }
        }
    }

    /// Removes a blob its call no longer needs, unless it is pinned (stored
    /// again for a call being recorded) or `still_needed` says another
    /// unreturned call names the same bytes. Both are judged under the pin
    /// lock, so a blob stored again meanwhile is never removed.
    pub fn release(&self, blob: &BlobRef, still_needed: impl FnOnce() -> bool) {
        let pins = self.pins.lock().unwrap();
        if pins.contains_key(&blob.sha256) || still_needed() || blob.validate().is_err() {
            return;
        }
        match std::fs::remove_file(self.path(&blob.sha256)) {
            Ok(()) => tracing::debug!(blob = %blob, "blob removed: its call was returned"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(blob = %blob, error = %e, "cannot remove a blob"),
        }
    }

    /// Removes the blobs no unreturned call names (`keep`) that are older
    /// than `age`; how many went.
    pub fn sweep(&self, keep: &HashSet<String>, age: Duration) -> usize {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_digest(&name) || keep.contains(&name) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= age);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Every blob here: (digest, bytes).
    pub fn list(&self) -> Vec<(String, u64)> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                is_digest(&name).then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
            })
            .collect()
    }
}

/// What the blob routes need.
pub struct BlobApi {
    pub blobs: Arc<Blobs>,
    /// The workers' token (`token-worker`, or `--worker-token`).
    pub worker_token: String,
    /// The operator's admin token, accepted too.
    pub admin_token: String,
    /// Piece data for AddPiece, which workers that do not mount the bridge's storage download.
    pub pieces: Arc<crate::miner::pieces::PieceInbox>,
}

/// `GET|PUT /sealfarm/v0/blobs/{sha256}`, `GET /sealfarm/v0/pieces/{id}`.
pub fn router(api: Arc<BlobApi>) -> Router {
    Router::new()
        .route("/sealfarm/v0/blobs/{sha256}", get(fetch).put(upload))
        .route("/sealfarm/v0/pieces/{id}", get(fetch_piece))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(api)
}

/// Why a request is refused: its status and what to say.
type Refusal = (StatusCode, String);

fn authorized(api: &BlobApi, headers: &HeaderMap) -> Result<(), Refusal> {
    if !crate::auth::carries(headers, None, &[&api.worker_token, &api.admin_token]) {
        let text = "blobs and pieces need `Authorization: Bearer <worker token>` (the bridge's token-worker file, or \
                    its --worker-token)";
        return Err((StatusCode::UNAUTHORIZED, text.to_string()));
    }
    Ok(())
}

fn check(api: &BlobApi, headers: &HeaderMap, sha256: &str) -> Result<(), Refusal> {
    authorized(api, headers)?;
    if !is_digest(sha256) {
        return Err((StatusCode::BAD_REQUEST, format!("{sha256:?} is not a SHA-256 in lower-case hex")));
    }
    Ok(())
}

async fn fetch(State(api): State<Arc<BlobApi>>, UrlPath(sha256): UrlPath<String>, headers: HeaderMap) -> Response {
    if let Err(refusal) = check(&api, &headers, &sha256) {
        return refusal.into_response();
    }
    let missing = format!("no blob {sha256} on this bridge (its call was returned, or it never arrived)");
    send_file(api.blobs.path(&sha256), &headers, missing).await
}

async fn fetch_piece(
    State(api): State<Arc<BlobApi>>,
    UrlPath(id): UrlPath<uuid::Uuid>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = authorized(&api, &headers) {
        return refusal.into_response();
    }
    let missing = format!("no piece data {id} on this bridge (its AddPiece has its result, or it never arrived)");
    send_file(api.pieces.path(id), &headers, missing).await
}

/// A file as the body through the answer `/remote` gives (bounded reads,
/// exact `Content-Length`, `Range`); 404 with `missing` when absent.
async fn send_file(path: PathBuf, headers: &HeaderMap, missing: String) -> Response {
    match sealfarm_runtime::sector_files::http_get(path.clone(), headers).await {
        Ok(answer) => answer.map(Body::from_stream).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, missing).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {}: {e}", path.display())).into_response(),
    }
}

async fn upload(
    State(api): State<Arc<BlobApi>>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(refusal) = check(&api, &headers, &sha256) {
        return refusal.into_response();
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api.blobs.max_bytes) {
        // Read to its end (not kept), so the sender gets to read the answer
        // (answered at once, the sender was cut off writing: a broken pipe).
        let mut stream = body.into_data_stream();
        while let Some(Ok(_)) = stream.next().await {}
        let text =
            format!("blob {sha256} is over the bridge's limit of {} bytes (--max-request-size)", api.blobs.max_bytes);
        return (StatusCode::PAYLOAD_TOO_LARGE, text).into_response();
    }
    match api.blobs.receive(&sha256, body).await {
        Ok(size) => {
            tracing::info!(blob = &sha256[..12], size, "blob received");
            StatusCode::CREATED.into_response()
        }
        Err((status, text)) => {
            tracing::warn!(blob = %sha256, error = %text, "blob upload refused");
            (status, text).into_response()
        }
    }
}

/// Reads the file at `path` in pieces of `piece_len` bytes on a blocking
/// thread, each turned into a body chunk by `encode`, at most two ahead of
/// the reader.
fn stream_file(
    path: PathBuf,
    piece_len: u64,
    encode: fn(Vec<u8>) -> axum::body::Bytes,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut piece = Vec::with_capacity(piece_len as usize);
            match (&mut file).take(piece_len).read_to_end(&mut piece) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.blocking_send(Ok(encode(piece))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob stored again for a call being accepted is not removed by the
    /// return of an earlier call that named the same bytes (a C1 output and
    /// the SealCommit2 input made of it).
    #[tokio::test]
    async fn a_blob_stored_again_outlives_the_release_of_an_earlier_call() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path(), 1 << 20).unwrap();
        let blob = blobs.put(b"c1 output".to_vec()).await.unwrap();
        // Pinned until its call is recorded: a release finds it pinned.
        blobs.release(&blob, || false);
        assert!(blobs.contains(&blob));
        blobs.unpin(&blob.sha256);
        // Named by another unreturned call: kept.
        blobs.release(&blob, || true);
        assert!(blobs.contains(&blob));
        blobs.release(&blob, || false);
        assert!(!blobs.contains(&blob));
        // Stored from base64 text: the same bytes, the same name; a bad length is refused.
        let again = blobs.put_base64("YzEgb3V0cHV0").await.unwrap();
        assert_eq!(again, blob);
        assert!(blobs.put_base64("abc").await.unwrap_err().contains("multiple of 4"));
        assert_eq!(std::fs::read(blobs.checked_path(&blob).await.unwrap()).unwrap(), b"c1 output");
        assert_eq!(blobs.list().len(), 1, "no partial file left behind");
    }
}
