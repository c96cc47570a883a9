//! Worker-local storage: this worker's sector files, served over HTTP to the
//! bridge, which passes them on to the miner through its `/remote`
//! (docs/LOTUS.md §9.5) when the miner moves a finished sector to storage.
//!
//! * `GET /files/{type}/{s-t0M-N}` — a file as `application/octet-stream`
//!   (honouring `Range`: 206 with `Content-Range`, 416 past the end), a
//!   cache directory as a flat tar of its files (`application/x-tar`), as
//!   lotus sends them, streamed in 1 MiB chunks with their exact
//!   `Content-Length` and never held in memory; 404 when this worker does not
//!   have it. The answer is [`sealfarm_runtime::sector_files::http_get`], the
//!   same the bridge's `/remote` gives for its own storage;
//! * `DELETE /files/{type}/{s-t0M-N}` — removes it (the miner moved it);
//! * `GET /files/unsealed/{s-t0M-N}/{proof}/allocated/{offset}/{size}` — 200
//!   or 416: whether the unpadded range is in the unsealed file (the
//!   bridge's `/remote/…/allocated/…` asks it; docs/LOTUS.md §9.7).
//!
//! Every request needs `Authorization: Bearer <SEALFARM_FILES_TOKEN>`; the
//! token never reaches a log.

use std::path::PathBuf;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sealfarm_runtime::sector_files::http_get;
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::sector_store::{file_type_bit, parse_sector_name};

use crate::sealing::layout::SealingPath;

/// The file server of a worker with worker-local storage.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    pub listen: std::net::SocketAddr,
    /// How the bridge reaches it.
    pub url: String,
    /// The secret the bridge presents.
    pub token: String,
}

struct Files {
    root: PathBuf,
    token: String,
}

/// Serves the sealing path's files until shutdown.
pub async fn serve(config: &FilesConfig, sealing: &SealingPath, shutdown: Shutdown) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the file server", config.listen))?;
    let files = std::sync::Arc::new(Files { root: sealing.root().to_path_buf(), token: config.token.clone() });
    let app = Router::new()
        .route("/files/{file_type}/{name}", get(request).delete(request))
        .route("/files/{file_type}/{name}/{spt}/allocated/{offset}/{size}", get(allocated))
        .with_state(files);
    spawn_server(listener, app, shutdown, "file server");
    Ok(())
}

/// Serves `app` on `listener` in the background until shutdown.
pub fn spawn_server(listener: tokio::net::TcpListener, app: Router, shutdown: Shutdown, what: &'static str) {
    let mut stop = shutdown;
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.wait().await }).await;
        if let Err(err) = served {
            tracing::error!(error = %err, "{what} stopped");
        }
    });
}

/// True when the request carries the token (compared in constant time).
fn authorized(files: &Files, headers: &HeaderMap) -> bool {
    let Some(given) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), files.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The path of a sector file, if the type and name are a sector file's.
fn sector_path(files: &Files, file_type: &str, name: &str) -> Option<PathBuf> {
    file_type_bit(file_type)?;
    let sector = parse_sector_name(name)?;
    (sector.file_name() == name).then(|| files.root.join(file_type).join(name))
}

fn refuse(files: &Files, headers: &HeaderMap, file_type: &str, name: &str) -> Result<PathBuf, (StatusCode, String)> {
    if !authorized(files, headers) {
        return Err((StatusCode::UNAUTHORIZED, "missing or wrong SEALFARM_FILES_TOKEN".into()));
    }
    sector_path(files, file_type, name)
        .ok_or_else(|| (StatusCode::BAD_REQUEST, format!("{file_type}/{name} is not a sector file")))
}

/// `GET` or `DELETE` of one sector file.
async fn request(
    method: Method,
    State(files): State<std::sync::Arc<Files>>,
    Path((file_type, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = match refuse(&files, &headers, &file_type, &name) {
        Ok(path) => path,
        Err(refusal) => return refusal.into_response(),
    };
    if method == Method::DELETE {
        remove(&path, &file_type, &name)
    } else {
        fetch(path, &file_type, &name, &headers).await
    }
}

/// Whether a range of an unsealed file is allocated (lotus' answer codes).
async fn allocated(
    State(files): State<std::sync::Arc<Files>>,
    Path((file_type, name, spt, offset, size)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = match refuse(&files, &headers, &file_type, &name) {
        Ok(path) if file_type == "unsealed" => path,
        Ok(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "unsealed files only").into_response(),
        Err(refusal) => return refusal.into_response(),
    };
    let answer = tokio::task::spawn_blocking(move || {
        sealfarm_runtime::unsealed_file::allocated_answer(&path, &spt, &offset, &size)
    })
    .await;
    match answer {
        Ok((code, text)) => {
            (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn fetch(path: PathBuf, file_type: &str, name: &str, headers: &HeaderMap) -> Response {
    match http_get(path, headers).await {
        Ok(answer) => answer.map(Body::from_stream).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, format!("this worker has no {file_type}/{name}")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {file_type}/{name}: {e}")).into_response(),
    }
}

fn remove(path: &std::path::Path, file_type: &str, name: &str) -> Response {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match removed {
        Ok(()) => {
            tracing::info!(file_type, name, "sector file removed at the bridge's request");
            StatusCode::OK.into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove {file_type}/{name}: {e}")).into_response(),
    }
}
