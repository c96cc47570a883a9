//! `/remote`: the sector files of the bridge's storage, served to the miner
//! as lotus-worker serves them (docs/LOTUS.md §9.5), so the miner can move a
//! finished sector to long-term storage.
//!
//! * `GET /remote/{type}/{s-t0M-N}` — a file as `application/octet-stream`
//!   (honouring `Range`: 206 with `Content-Range`, 416 past the end), a
//!   cache directory as a flat tar (`application/x-tar`) of its files, both
//!   with their exact `Content-Length`;
//! * `DELETE /remote/{type}/{s-t0M-N}?keep=<id>[.<id>…]` — remove the copy
//!   from every path not listed, and drop it from the miner's index;
//! * `GET /remote/stat/{storage-id}` — the path's `FsStat`;
//! * `GET /remote/unsealed/{s-t0M-N}/{proof type}/allocated/{offset}/{size}`
//!   — 200 when the unpadded range is all in the sector's unsealed file, 416
//!   when some of it is not (the miner asks before reading a piece for a
//!   retrieval), 500 for anything else, as lotus answers (docs/LOTUS.md §9.7).
//!
//! Every request needs a token with `admin`, verified with the miner.
//!
//! Files and tars stream in 1 MiB chunks from a blocking thread that waits
//! while the connection is behind, so memory stays bounded whatever the size
//! (a 32 GiB file or an unfinalized cache of hundreds of GiB), and stops
//! when the client goes away: the answer is
//! [`sealfarm_runtime::sector_files::http_get`], the same the workers' file
//! servers give (ranges: [`sealfarm_runtime::byte_range`]). In worker-local
//! storage the GET goes to the holder's file server with the client's
//! `Range`, and its status (200/206/416), `Content-Type`, `Content-Length`,
//! `Content-Range`, `Accept-Ranges` and body come back as they arrive.
//! tests/tests/big_files.rs proves it on sparse 32 GiB files.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::miner::rpc;
use crate::miner::storage::FILE_TYPES;
use crate::miner::tokens::Verdict;
use crate::miner::worker_api::Api;
use sealfarm_runtime::sector_files::http_get;
use sealfarm_runtime::unsealed_file;
use sealfarm_schemas::sector_store::{file_type_bit, parse_sector_name};
use sealfarm_schemas::SectorId;

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/remote/stat/{id}", get(stat))
        .route("/remote/{file_type}/{name}", get(fetch).delete(remove))
        .route("/remote/{file_type}/{name}/{spt}/allocated/{offset}/{size}", get(allocated))
        .with_state(api)
}

async fn authorized(api: &Api, headers: &HeaderMap, query: Option<&str>) -> bool {
    match rpc::bearer_token(headers, query) {
        Some(token) => match api.miner.verify_token(&token).await {
            Verdict::Allowed(perms) => perms.iter().any(|p| p == "admin"),
            Verdict::Refused | Verdict::Unavailable(_) => false,
        },
        None => false,
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"Error": "unauthorized: missing admin permission"}))).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// The sector a `/remote/{type}/{name}` path names: `type` one of lotus'
/// file type folders, `name` a sector's file name `s-t0<miner>-<number>`;
/// None for anything else. Both are joined to a storage path, so nothing
/// but those names (no `..`, `/` or NUL) may pass.
pub(crate) fn sector_file(file_type: &str, name: &str) -> Option<SectorId> {
    if !FILE_TYPES.iter().any(|(_, folder)| *folder == file_type) {
        return None;
    }
    parse_sector_name(name)
}

/// The storage ids of a DELETE's `?keep=<id>[.<id>…]`: the copies to keep.
pub(crate) fn keep_ids(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("keep="))
        .map(|ids| ids.split('.').map(str::to_string).collect())
        .unwrap_or_default()
}

/// The numbers of an `…/{proof type}/allocated/{offset}/{size}` path,
/// checked before anything is read (lotus answers 500 for others).
pub(crate) fn check_allocated_numbers(spt: &str, offset: &str, size: &str) -> Result<(), String> {
    if [spt, offset, size].iter().any(|n| n.parse::<u64>().is_err()) {
        return Err(format!("proof type {spt:?}, offset {offset:?} and size {size:?} must be numbers"));
    }
    Ok(())
}

/// The local copies of a sector file: (storage id, path); None when the
/// type or name is not a sector file's.
fn copies(api: &Api, file_type: &str, name: &str) -> Option<Vec<(String, PathBuf)>> {
    // Storage shared by several miners' bridges holds their sectors side by
    // side: each bridge serves (and removes) its own miner's only.
    sector_file(file_type, name).filter(|sector| api.miner.owns(*sector))?;
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
    match copies.into_iter().next() {
        Some((_, path)) => match http_get(path, &headers).await {
            Ok(answer) => answer.map(Body::from_stream).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {file_type}/{name}: {e}")),
        },
        // Worker-local storage: the worker that made the file serves it.
        None => through_holder(&api, &file_type, &name, &headers).await,
    }
}

/// The headers of a holder's answer that travel on with its body.
const PASSED_ON: [header::HeaderName; 4] =
    [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::CONTENT_RANGE, header::ACCEPT_RANGES];

/// A GET passed on to the file server of the worker holding the sector (the
/// client's `Range` with it), and its answer — 200, 206 or 416, with
/// [`PASSED_ON`] and the body streamed as it arrives — passed back; another
/// status is a 500 that quotes it.
async fn through_holder(api: &Api, file_type: &str, name: &str, headers: &HeaderMap) -> Response {
    let answer = match from_holder(api, reqwest::Method::GET, file_type, name, headers.get(header::RANGE)).await {
        Ok(answer) => answer,
        Err(refusal) => return refusal.into_response(),
    };
    let status = answer.status();
    if !(status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE) {
        let text = answer.text().await.unwrap_or_default();
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the worker holding {file_type}/{name} answered {status}: {text}"),
        );
    }
    let mut response = Response::builder().status(status);
    for passed in PASSED_ON {
        if let Some(value) = answer.headers().get(&passed) {
            response = response.header(passed, value);
        }
    }
    response.body(Body::from_stream(answer.bytes_stream())).unwrap_or_else(|e| {
        error(StatusCode::INTERNAL_SERVER_ERROR, format!("the worker's answer for {file_type}/{name}: {e}"))
    })
}

/// Sends a request for a sector file (with the client's `Range`, if any) to
/// the file server of the worker that holds the sector (worker-local
/// storage); an Err is the answer to give.
async fn from_holder(
    api: &Api,
    method: reqwest::Method,
    file_type: &str,
    name: &str,
    range: Option<&header::HeaderValue>,
) -> Result<reqwest::Response, (StatusCode, String)> {
    let not_found = |why: String| Err((StatusCode::INTERNAL_SERVER_ERROR, why));
    let sector_name = name.split('/').next().unwrap_or(name);
    let Some(sector) = parse_sector_name(sector_name) else {
        return Err((StatusCode::BAD_REQUEST, format!("no sector file {file_type}/{name}")));
    };
    let location = match api.calls.store.location(sector) {
        Ok(Some(location)) => location,
        Ok(None) => return not_found(format!("sector file {file_type}/{name} not found")),
        Err(e) => return not_found(format!("sealfarm-bridge call store: {e:#}")),
    };
    let url = api.calls.farm.get(&location.worker).and_then(|w| w.files_url).or(location.files_url);
    let Some(url) = url else {
        return not_found(format!(
            "sector file {file_type}/{name} not found in the bridge's storage, and worker {} (which made it) serves no files",
            location.worker
        ));
    };
    let Some(token) = &api.files_token else {
        return not_found(format!(
            "{file_type}/{name} is on worker {}; set SEALFARM_FILES_TOKEN on the bridge to fetch it",
            location.worker
        ));
    };
    let target = format!("{}/files/{file_type}/{name}", url.trim_end_matches('/'));
    let mut request = api.files_client.request(method, &target).bearer_auth(token);
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    match request.send().await {
        Ok(answer) => Ok(answer),
        Err(e) => not_found(format!("cannot reach worker {} at {url}: {e}", location.worker)),
    }
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
    let keep = keep_ids(query.as_deref());
    let Some(copies) = copies(&api, &file_type, &name) else {
        return error(StatusCode::BAD_REQUEST, format!("no sector file {file_type}/{name}"));
    };
    let sector = parse_sector_name(&name).expect("checked by copies");
    let mask = file_type_bit(&file_type).unwrap_or(0);
    let declared_as = api.miner.storage.first().map(|p| p.meta.id.clone()).unwrap_or_default();
    if copies.is_empty() && !keep.contains(&declared_as) {
        // Worker-local storage: the holder deletes its copy.
        match from_holder(&api, reqwest::Method::DELETE, &file_type, &name, None).await {
            Ok(answer) if answer.status().is_success() => {}
            Ok(answer) => {
                let status = answer.status();
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the worker holding {file_type}/{name} answered {status}"),
                );
            }
            Err(refusal) => return refusal.into_response(),
        }
        let _ = api.miner.declarations().declared_remove(sector, mask);
        if let Err(e) =
            api.miner.client().call::<serde_json::Value>("StorageDropSector", json!([declared_as, sector, mask])).await
        {
            tracing::warn!(error = %e, %sector, "StorageDropSector after a remote delete failed");
        }
        tracing::info!(%sector, file_type, "removed from its worker at the miner's request");
        return StatusCode::OK.into_response();
    }
    for (id, path) in copies.into_iter().filter(|(id, _)| !keep.contains(id)) {
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if let Err(e) = removed {
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove {}: {e}", path.display()));
        }
        let _ = api.miner.declarations().declared_remove(sector, mask);
        if let Err(e) =
            api.miner.client().call::<serde_json::Value>("StorageDropSector", json!([id, sector, mask])).await
        {
            tracing::warn!(error = %e, %sector, "StorageDropSector after a remote delete failed");
        }
        tracing::info!(%sector, file_type, "removed at the miner's request");
    }
    StatusCode::OK.into_response()
}

async fn allocated(
    State(api): State<Arc<Api>>,
    Path((file_type, name, spt, offset, size)): Path<(String, String, String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&api, &headers, query.as_deref()).await {
        return unauthorized();
    }
    if file_type != "unsealed" {
        let why = format!("allocated ranges exist for unsealed files only, not {file_type:?}");
        return error(StatusCode::INTERNAL_SERVER_ERROR, why);
    }
    if let Err(why) = check_allocated_numbers(&spt, &offset, &size) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, why);
    }
    let Some(copies) = copies(&api, &file_type, &name) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("no sector file {file_type}/{name}"));
    };
    let Some((_, path)) = copies.into_iter().next() else {
        // Worker-local storage: the worker holding the file answers.
        let suffix = format!("{spt}/allocated/{offset}/{size}");
        return match from_holder(&api, reqwest::Method::GET, &file_type, &format!("{name}/{suffix}"), None).await {
            Ok(answer) => {
                let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let text = answer.text().await.unwrap_or_default();
                let status =
                    if matches!(status.as_u16(), 200 | 416) { status } else { StatusCode::INTERNAL_SERVER_ERROR };
                (status, text).into_response()
            }
            Err(refusal) => refusal.into_response(),
        };
    };
    let answer =
        tokio::task::spawn_blocking(move || unsealed_file::allocated_answer(&path, &spt, &offset, &size)).await;
    match answer {
        Ok((code, text)) => {
            (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), text).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{file_type}/{name}: {e}")),
    }
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
