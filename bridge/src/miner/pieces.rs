//! Piece data for `AddPiece` (`docs/ARCHITECTURE.md`, "Piece data"): lotus sends it
//! as a ReaderStream — `null` (zeros, CC sectors), `push` (the miner POSTs
//! the bytes to `/rpc/streams/v0/push/<uuid>`, before or after the call) or
//! `http` (the bridge GETs a URL).
//!
//! Pushed and fetched bytes are written to `<storage>/sealfarm/pieces/<id>`
//! and the task names them by id only, never by path: a worker reads them
//! under its own sealing path (shared storage) or downloads them from the
//! bridge (`GET /sealfarm/v0/pieces/<id>`, worker token).
//!
//! What the push endpoint takes, and for how long:
//! * bytes only for a stream id an accepted `AddPiece` call names (the call
//!   may come second: the push waits up to [`PUSH_WAIT`] for it, as lotus
//!   does), and at most that call's piece size — more is refused (413) and
//!   the call fails;
//! * one push per id; a push that breaks off leaves no file;
//! * the bytes are removed once the AddPiece call has its result
//!   ([`PieceInbox::remove`]), and at start whatever no open call names.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sealfarm_runtime::partial_file::PartialFile;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::head;
use axum::Router;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

/// How long one side of a push waits for the other (lotus: 30 s).
pub const PUSH_WAIT: Duration = Duration::from_secs(30);

/// Where a pushed stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PushState {
    /// The push came first; no call names the id yet.
    Unclaimed,
    /// An AddPiece call waits for at most `max` bytes.
    Announced { max: u64 },
    /// The bytes are coming in.
    Receiving,
    /// Stored, or why not.
    Arrived(Result<u64, String>),
}

/// Pieces being received, by stream id.
pub struct PieceInbox {
    folder: PathBuf,
    /// Where a bridge from before kept every piece (`sealfarm/pieces`).
    legacy: PathBuf,
    streams: Mutex<HashMap<uuid::Uuid, watch::Sender<PushState>>>,
}

impl PieceInbox {
    /// The inbox of bridge `bridge` under `storage_root`: a folder of its own
    /// (`sealfarm/pieces/<bridge>`), so bridges sharing storage never sweep
    /// each other's pieces.
    pub fn new(storage_root: &std::path::Path, bridge: &str) -> std::io::Result<Self> {
        let shared = storage_root.join("sealfarm").join("pieces");
        let folder = shared.join(bridge);
        std::fs::create_dir_all(&folder)?;
        Ok(PieceInbox { folder, legacy: shared, streams: Mutex::new(HashMap::new()) })
    }

    /// Where the bytes of piece `id` are kept.
    pub fn path(&self, id: uuid::Uuid) -> PathBuf {
        self.folder.join(id.to_string())
    }

    pub fn contains(&self, id: uuid::Uuid) -> bool {
        self.path(id).is_file()
    }

    /// Removes the bytes of a piece whose AddPiece has its result.
    pub fn remove(&self, id: uuid::Uuid) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => tracing::info!(piece = %id, "piece data removed: its AddPiece has its result"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(piece = %id, error = %e, "cannot remove piece data"),
        }
    }

    /// At start: removes every piece file (and partial upload) that no open
    /// AddPiece call names; how many went. A piece an open call names that a
    /// bridge from before kept in the shared folder is moved into this
    /// bridge's (the others there are left alone: they may be another's).
    pub fn sweep(&self, keep: &HashSet<uuid::Uuid>) -> usize {
        for id in keep {
            let old = self.legacy.join(id.to_string());
            if old.is_file() {
                match std::fs::rename(&old, self.path(*id)) {
                    Ok(()) => {
                        tracing::info!(piece = %id, "piece data of an open AddPiece moved into this bridge's folder")
                    }
                    Err(e) => {
                        tracing::warn!(piece = %id, error = %e, "cannot move piece data into this bridge's folder")
                    }
                }
            }
        }
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.folder).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kept = name.parse::<uuid::Uuid>().is_ok_and(|id| keep.contains(&id));
            if !kept && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn slot(&self, id: uuid::Uuid, initial: PushState) -> watch::Sender<PushState> {
        self.streams.lock().unwrap().entry(id).or_insert_with(|| watch::channel(initial).0).clone()
    }

    /// Called by an AddPiece with a `push` stream: announces that the call
    /// takes at most `max` bytes on stream `id`, and waits until they are
    /// stored (the push must start within [`PUSH_WAIT`]).
    pub async fn wait_for_push(&self, id: uuid::Uuid, max: u64) -> Result<(), String> {
        let slot = self.slot(id, PushState::Announced { max });
        let duplicate = !slot.send_if_modified(|state| match state {
            PushState::Unclaimed => {
                *state = PushState::Announced { max };
                true
            }
            _ => false,
        }) && *slot.borrow() != PushState::Announced { max };
        if duplicate {
            return Err(format!("push stream {id} is already named by another AddPiece call"));
        }
        let mut state = slot.subscribe();
        let started = tokio::time::timeout(PUSH_WAIT, state.wait_for(|s| !matches!(s, PushState::Announced { .. })))
            .await
            .is_ok_and(|s| s.is_ok());
        let outcome = match started {
            true => match state.wait_for(|s| matches!(s, PushState::Arrived(_))).await.map(|s| s.clone()) {
                Ok(PushState::Arrived(Ok(_))) => Ok(()),
                Ok(PushState::Arrived(Err(e))) => Err(e),
                _ => Err(format!("the push of stream {id} ended without its bytes")),
            },
            false => Err(format!("the piece data of stream {id} did not arrive within {PUSH_WAIT:?}")),
        };
        self.streams.lock().unwrap().remove(&id);
        if outcome.is_err() {
            let _ = std::fs::remove_file(self.path(id));
        }
        outcome
    }

    /// Downloads piece data from `url` (ReaderStream type `http`), at most
    /// `max` bytes; the new piece's id.
    pub async fn fetch(&self, url: &str, max: u64) -> Result<uuid::Uuid, String> {
        // A source that stops sending fails the AddPiece, not holds it.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(sealfarm_runtime::retry::STALL)
            .build()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let response = client.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let id = uuid::Uuid::new_v4();
        let stream = response.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other));
        self.store(id, stream, max).await.map_err(|e| format!("storing the piece from {url}: {e}"))?;
        Ok(id)
    }

    /// Writes a piece's bytes to a partial file, renamed into place when
    /// whole; nothing is left behind on an error.
    async fn store(
        &self,
        id: uuid::Uuid,
        mut stream: impl Stream<Item = std::io::Result<axum::body::Bytes>> + Unpin,
        max: u64,
    ) -> Result<u64, String> {
        let path = self.path(id);
        let mut file = PartialFile::create(path.with_extension("partial")).await.map_err(|e| e.to_string())?;
        let written = async {
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("the upload broke off: {e}"))?;
                total += chunk.len() as u64;
                if total > max {
                    return Err(format!("more than the {max} bytes of the piece the AddPiece call announced"));
                }
                file.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            Ok(total)
        }
        .await?;
        file.commit(&path).await.map_err(|e| e.to_string())?;
        Ok(written)
    }

    /// Waits (up to [`PUSH_WAIT`]) for an AddPiece call that names stream
    /// `id`; the bytes it takes at most, or None.
    async fn announced(&self, id: uuid::Uuid) -> Option<(watch::Sender<PushState>, u64)> {
        let slot = self.slot(id, PushState::Unclaimed);
        let mut state = slot.subscribe();
        let waited = tokio::time::timeout(PUSH_WAIT, state.wait_for(|s| *s != PushState::Unclaimed)).await;
        let max = match waited {
            Ok(Ok(s)) => match *s {
                PushState::Announced { max } => Some(max),
                _ => None,
            },
            _ => None,
        };
        if max.is_none() {
            // Nobody named it: forget the slot, unless a call has it now.
            let mut streams = self.streams.lock().unwrap();
            if streams.get(&id).is_some_and(|s| *s.borrow() == PushState::Unclaimed) {
                streams.remove(&id);
            }
        }
        max.map(|max| (slot, max))
    }

    async fn receive(&self, id: uuid::Uuid, body: Body) -> Response {
        let Some((slot, max)) = self.announced(id).await else {
            let text = format!("no AddPiece call names push stream {id} (waited {PUSH_WAIT:?})");
            tracing::warn!(stream = %id, "piece data refused: no call names it");
            return (StatusCode::NOT_FOUND, text).into_response();
        };
        let claimed = slot.send_if_modified(|state| match state {
            PushState::Announced { .. } => {
                *state = PushState::Receiving;
                true
            }
            _ => false,
        });
        if !claimed {
            return (StatusCode::CONFLICT, format!("push stream {id} was pushed already")).into_response();
        }
        // Whatever happens to this request, the call hears how it ended.
        let mut guard = Arrival { slot: &slot, outcome: Err(format!("the push of stream {id} broke off")) };
        let stream = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other));
        let outcome = self.store(id, stream, max).await;
        guard.outcome = outcome.clone();
        drop(guard);
        match outcome {
            Ok(bytes) => {
                tracing::info!(stream = %id, bytes, "piece data received");
                StatusCode::OK.into_response()
            }
            Err(e) if e.starts_with("more than") => {
                tracing::warn!(stream = %id, error = %e, "piece data refused");
                (StatusCode::PAYLOAD_TOO_LARGE, e).into_response()
            }
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
    }
}

/// Sets a stream's end state when dropped.
struct Arrival<'a> {
    slot: &'a watch::Sender<PushState>,
    outcome: Result<u64, String>,
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        let outcome = std::mem::replace(&mut self.outcome, Err(String::new()));
        self.slot.send_replace(PushState::Arrived(outcome));
    }
}

/// `HEAD|POST /rpc/streams/v0/push/{uuid}` (no auth, as in lotus: what may
/// be pushed is bounded by the calls instead).
pub fn router(inbox: Arc<PieceInbox>) -> Router {
    Router::new().route("/rpc/streams/v0/push/{id}", head(ready).post(push)).with_state(inbox)
}

/// 200 once a call names the stream (the sender then POSTs), 404 if none does.
async fn ready(State(inbox): State<Arc<PieceInbox>>, Path(id): Path<uuid::Uuid>) -> StatusCode {
    match inbox.announced(id).await {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    }
}

async fn push(State(inbox): State<Arc<PieceInbox>>, Path(id): Path<uuid::Uuid>, body: Body) -> Response {
    inbox.receive(id, body).await
}
