//! Piece data for `AddPiece` (PROTOCOL.md §9.6): lotus sends it as a
//! ReaderStream — `null` (zeros, CC sectors), `push` (the miner POSTs the
//! bytes to `/rpc/streams/v0/push/<uuid>`, before or after the call) or
//! `http` (the bridge GETs a URL). Pushed and fetched bytes are written to
//! `<storage>/sealfarm/pieces/<uuid>` on the shared storage, where the worker
//! running the AddPiece reads them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::head;
use axum::Router;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// How long a call waits for its pushed data to arrive (lotus: 30 s).
const PUSH_WAIT: Duration = Duration::from_secs(30);

/// Where a stream stands: `None` while awaited, then its file or why it failed.
type Arrival = Option<Result<PathBuf, String>>;

/// Pieces being received, by stream id.
pub struct PieceInbox {
    folder: PathBuf,
    streams: Mutex<HashMap<uuid::Uuid, watch::Sender<Arrival>>>,
}

impl PieceInbox {
    pub fn new(storage_root: &std::path::Path) -> std::io::Result<Self> {
        let folder = storage_root.join("sealfarm").join("pieces");
        std::fs::create_dir_all(&folder)?;
        Ok(PieceInbox { folder, streams: Mutex::new(HashMap::new()) })
    }

    fn slot(&self, id: uuid::Uuid) -> watch::Sender<Arrival> {
        self.streams.lock().unwrap().entry(id).or_insert_with(|| watch::channel(None).0).clone()
    }

    /// Waits for the pushed data of stream `id`; its file path.
    pub async fn wait_for_push(&self, id: uuid::Uuid) -> Result<PathBuf, String> {
        let mut receiver = self.slot(id).subscribe();
        let outcome = tokio::time::timeout(PUSH_WAIT, receiver.wait_for(|state| state.is_some())).await;
        let result = match outcome {
            Ok(Ok(state)) => state.clone().expect("waited for Some"),
            _ => Err(format!("the piece data of stream {id} did not arrive within {PUSH_WAIT:?}")),
        };
        self.streams.lock().unwrap().remove(&id);
        result
    }

    /// Downloads piece data from `url` (ReaderStream type `http`).
    pub async fn fetch(&self, url: &str) -> Result<PathBuf, String> {
        let response = reqwest::get(url).await.map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let path = self.folder.join(uuid::Uuid::new_v4().to_string());
        let stream = response.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other));
        write_stream(&path, stream).await.map_err(|e| format!("storing piece from {url}: {e}"))?;
        Ok(path)
    }

    async fn receive(&self, id: uuid::Uuid, body: Body) -> Response {
        let path = self.folder.join(id.to_string());
        let stream = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other));
        let outcome = write_stream(&path, stream).await;
        let sender = self.slot(id);
        match outcome {
            Ok(bytes) => {
                tracing::info!(stream = %id, bytes, "piece data received");
                let _ = sender.send(Some(Ok(path)));
                StatusCode::OK.into_response()
            }
            Err(e) => {
                let _ = sender.send(Some(Err(format!("receiving piece data: {e}"))));
                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            }
        }
    }
}

async fn write_stream(
    path: &std::path::Path,
    mut stream: impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Unpin,
) -> std::io::Result<u64> {
    let partial = path.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial).await?;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    tokio::fs::rename(&partial, path).await?;
    Ok(total)
}

/// `HEAD|POST /rpc/streams/v0/push/{uuid}` (no auth, as in lotus).
pub fn router(inbox: Arc<PieceInbox>) -> Router {
    Router::new().route("/rpc/streams/v0/push/{id}", head(ready).post(push)).with_state(inbox)
}

async fn ready(Path(_id): Path<uuid::Uuid>) -> StatusCode {
    StatusCode::OK
}

async fn push(State(inbox): State<Arc<PieceInbox>>, Path(id): Path<uuid::Uuid>, body: Body) -> Response {
    inbox.receive(id, body).await
}
