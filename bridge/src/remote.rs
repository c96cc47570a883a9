//! `/remote`: the sector files of the bridge's storage, served to the miner
//! as lotus-worker serves them (PROTOCOL.md §9.4), so the miner can move a
//! finished sector to long-term storage.
//!
//! * `GET /remote/{type}/{s-t0M-N}` — a file as `application/octet-stream`,
//!   a cache directory as a flat tar (`application/x-tar`) of its files;
//! * `DELETE /remote/{type}/{s-t0M-N}?keep=<id>[.<id>…]` — remove the copy
//!   from every path not listed, and drop it from the miner's index;
//! * `GET /remote/stat/{storage-id}` — the path's `FsStat`.
//!
//! Every request needs a token with `admin`, verified with the miner.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::rpc;
use crate::server::Api;
use crate::storage::{parse_sector_name, FILE_TYPES};

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/remote/stat/{id}", get(stat))
        .route("/remote/{file_type}/{name}", get(fetch).delete(remove))
        .with_state(api)
}

async fn authorized(api: &Api, headers: &HeaderMap, query: Option<&str>) -> bool {
    match rpc::bearer_token(headers, query) {
        Some(token) => api.miner.verify_token(&token).await.is_some_and(|perms| perms.iter().any(|p| p == "admin")),
        None => false,
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"Error": "unauthorized: missing admin permission"}))).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// The local copies of a sector file: (storage id, path); None when the
/// type or name is not a sector file's.
fn copies(api: &Api, file_type: &str, name: &str) -> Option<Vec<(String, PathBuf)>> {
    if !FILE_TYPES.iter().any(|(_, folder)| *folder == file_type) || parse_sector_name(name).is_none() {
        return None;
    }
    Some(
        api.miner
            .storage
            .iter()
            .map(|p| (p.meta.id.clone(), p.path.join(file_type).join(name)))
            .filter(|(_, path)| path.exists())
            .collect(),
    )
}

async fn fetch(
    State(api): State<Arc<Api>>,
    Path((file_type, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&api, &headers, query.as_deref()).await {
        return unauthorized();
    }
    let Some(copies) = copies(&api, &file_type, &name) else {
        return error(StatusCode::BAD_REQUEST, format!("no sector file {file_type}/{name}"));
    };
    let Some((_, path)) = copies.into_iter().next() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("sector file {file_type}/{name} not found"));
    };
    if path.is_dir() {
        let tarred = tokio::task::spawn_blocking(move || flat_tar(&path)).await;
        return match tarred {
            Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/x-tar")], bytes).into_response(),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot tar {file_type}/{name}: {e}")),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot open {}: {e}", path.display())),
    }
}

/// A tar of a directory's files, names without the directory (as lotus writes it).
fn flat_tar(dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_type()?.is_file() {
            builder.append_path_with_name(entry.path(), entry.file_name())?;
        }
    }
    builder.into_inner()
}

async fn remove(
    State(api): State<Arc<Api>>,
    Path((file_type, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&api, &headers, query.as_deref()).await {
        return unauthorized();
    }
    let keep: Vec<String> = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("keep="))
        .map(|ids| ids.split('.').map(str::to_string).collect())
        .unwrap_or_default();
    let Some(copies) = copies(&api, &file_type, &name) else {
        return error(StatusCode::BAD_REQUEST, format!("no sector file {file_type}/{name}"));
    };
    let sector = parse_sector_name(&name).expect("checked by copies");
    let mask = FILE_TYPES.iter().find(|(_, folder)| *folder == file_type).map(|(m, _)| *m).unwrap_or(0);
    for (id, path) in copies.into_iter().filter(|(id, _)| !keep.contains(id)) {
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if let Err(e) = removed {
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove {}: {e}", path.display()));
        }
        if let Err(e) =
            api.miner.client().call::<serde_json::Value>("StorageDropSector", json!([id, sector, mask])).await
        {
            tracing::warn!(error = %e, %sector, "StorageDropSector after a remote delete failed");
        }
        tracing::info!(%sector, file_type, "removed at the miner's request");
    }
    StatusCode::OK.into_response()
}

async fn stat(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&api, &headers, query.as_deref()).await {
        return unauthorized();
    }
    match api.miner.storage.iter().find(|p| p.meta.id == id) {
        Some(path) => axum::Json(path.fs_stat()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no storage path {id}")),
    }
}
