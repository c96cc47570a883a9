//! The operators' side of the bridge, on its `--listen` address:
//!
//! * `GET /sealfarm/v0/{overview,workers,jobs,queues,dead-letters}` — the
//!   status API (JSON; `?all=true` on `jobs`/`overview` for every call ever);
//! * `POST /sealfarm/v0/workers/{id}/{drain,resume}`,
//!   `POST /sealfarm/v0/jobs/{call}/{requeue,abort}`,
//!   `POST /sealfarm/v0/dead-letters/{replay,purge}` — the controls;
//! * `GET /dashboard` — the web dashboard (its data comes from the API);
//! * `GET /metrics` — Prometheus (or on `--metrics-listen` alone; with
//!   `--metrics-token` it takes the read token too).
//!
//! The API takes `Authorization: Bearer <token>`: the read token sees, the
//! admin token also steers. Both are made at the bridge's first start and
//! kept in its state directory (`token-read`, `token-admin`, mode 0600),
//! where `sealfarm-bridge workers` & co. find them; `api` there holds the URL.
//!
//! What the handlers draw on:
//! * [`snapshot`] — the snapshot of the farm every view is drawn from;
//! * [`queues`](mod@queues) — queue figures; [`dead_letters`] — the dead-letter queue;
//! * [`metrics`](mod@metrics) — the Prometheus metrics.

pub(crate) mod dead_letters;
mod exposition;
pub mod metrics;
pub(crate) mod queues;
pub(crate) mod snapshot;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::{topology, Control, ControlMessage};
use serde::Deserialize;
use serde_json::json;

use crate::calls::Calls;
use crate::ops::dead_letters::{Action, DeadLetters, Page};
use crate::ops::metrics::Metrics;
use crate::ops::snapshot::StatusSource;

/// The two tokens of the status API, the workers' token for blobs, and the
/// key of the attempt tokens.
#[derive(Clone)]
pub(crate) struct Tokens {
    pub read: String,
    pub admin: String,
    /// What workers present to fetch and upload blobs (`token-worker`).
    pub worker: String,
    /// The key of the tasks' attempt tokens (`attempt-key`; never sent anywhere).
    pub attempt_key: String,
}

impl Tokens {
    /// Reads the tokens from `state_dir`, making them at the first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Tokens> {
        let read = token_file(&state_dir.join("token-read"))?;
        let admin = token_file(&state_dir.join("token-admin"))?;
        let worker = token_file(&state_dir.join("token-worker"))?;
        let attempt_key = token_file(&state_dir.join("attempt-key"))?;
        Ok(Tokens { read, admin, worker, attempt_key })
    }

    fn access(&self, headers: &HeaderMap) -> Option<Access> {
        if crate::auth::carries(headers, None, &[&self.admin]) {
            Some(Access::Admin)
        } else if crate::auth::carries(headers, None, &[&self.read]) {
            Some(Access::Read)
        } else {
            None
        }
    }
}

fn token_file(path: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_string();
        anyhow::ensure!(token.len() >= 16, "{} holds no usable token (delete it to make a new one)", path.display());
        return Ok(token);
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(token)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Admin,
}

/// A request with the read or the admin token: what the status routes
/// take. `admin` says which (the dashboard shows the controls then).
pub(crate) struct Reader {
    admin: bool,
}

/// A request with the admin token: what the controls take.
pub(crate) struct Admin;

type Refused = (StatusCode, Json<serde_json::Value>);

impl FromRequestParts<Arc<Ops>> for Reader {
    type Rejection = Refused;
    async fn from_request_parts(parts: &mut Parts, ops: &Arc<Ops>) -> Result<Self, Refused> {
        let access = check(ops, &parts.headers, Access::Read)?;
        Ok(Reader { admin: access == Access::Admin })
    }
}

impl FromRequestParts<Arc<Ops>> for Admin {
    type Rejection = Refused;
    async fn from_request_parts(parts: &mut Parts, ops: &Arc<Ops>) -> Result<Self, Refused> {
        check(ops, &parts.headers, Access::Admin)?;
        Ok(Admin)
    }
}

/// What the handlers share.
pub(crate) struct Ops {
    pub calls: Arc<Calls>,
    pub status: StatusSource,
    pub tokens: Tokens,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    /// Who may read `/metrics`, and where.
    pub metrics_access: MetricsAccess,
    /// The last exposition and when it was made: scrapes within
    /// [`METRICS_FRESH`] of it get it again (a status snapshot per scrape
    /// would let anyone who can reach `/metrics` keep the bridge busy).
    pub metrics_text: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long one exposition of `/metrics` is served to every scrape.
pub(crate) const METRICS_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Where `/metrics` is served and whether it takes a token.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MetricsAccess {
    /// `--metrics-token`: the read (or admin) token is needed.
    pub token: bool,
    /// `--metrics-listen`: served on that address only, not on `--listen`.
    pub own_address: bool,
}

pub(crate) fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/sealfarm/v0/overview", get(overview))
        .route("/sealfarm/v0/workers", get(workers))
        .route("/sealfarm/v0/jobs", get(jobs))
        .route("/sealfarm/v0/queues", get(queues))
        .route("/sealfarm/v0/dead-letters", get(list_dead_letters))
        .route("/sealfarm/v0/dead-letters/{action}", post(act_on_dead_letters))
        .route("/sealfarm/v0/workers/{id}/{action}", post(worker_control))
        .route("/sealfarm/v0/jobs/{id}/{action}", post(job_control))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(dashboard))
        .route("/", get(dashboard))
        .with_state(ops)
}

type Answer = Result<Response, (StatusCode, Json<serde_json::Value>)>;

fn refuse(status: StatusCode, message: impl Into<String>) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(json!({ "error": message.into() })))
}

fn check(ops: &Ops, headers: &HeaderMap, need: Access) -> Result<Access, (StatusCode, Json<serde_json::Value>)> {
    match ops.tokens.access(headers) {
        None => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a token is needed: `Authorization: Bearer <token>` with the read or admin token from the bridge's state \
             directory (token-read, token-admin)",
        )),
        Some(Access::Read) if need == Access::Admin => {
            Err(refuse(StatusCode::FORBIDDEN, "the read token only sees the farm; controls need the admin token"))
        }
        Some(access) => Ok(access),
    }
}

fn internal(err: anyhow::Error) -> (StatusCode, Json<serde_json::Value>) {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn overview(State(ops): State<Arc<Ops>>, reader: Reader, Query(query): Query<ListQuery>) -> Answer {
    let overview = ops.status.overview(&ops.calls, reader.admin, query.all).await.map_err(internal)?;
    Ok(Json(overview).into_response())
}

/// The bridge's clock, for views that print "how long ago" from a part of the overview.
pub(crate) const NOW_HEADER: &str = "sealfarm-now-ms";

fn with_now(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(NOW_HEADER, now_ms().into());
    response
}

async fn workers(State(ops): State<Arc<Ops>>, _reader: Reader) -> Answer {
    Ok(with_now(Json(ops.status.workers(&ops.calls))))
}

async fn jobs(State(ops): State<Arc<Ops>>, _reader: Reader, Query(query): Query<ListQuery>) -> Answer {
    let jobs = ops.status.jobs(&ops.calls, query.all).map_err(internal)?;
    Ok(with_now(Json(jobs)))
}

async fn queues(State(ops): State<Arc<Ops>>, _reader: Reader) -> Answer {
    let workers = ops.status.workers(&ops.calls);
    let (queues, dead_letters) = ops.status.queues(&ops.calls, &workers).await;
    Ok(Json(json!({ "queues": queues, "dead_letters": dead_letters })).into_response())
}

/// `?offset=&limit=` of a dead-letter listing.
#[derive(Deserialize, Default)]
struct PageQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn list_dead_letters(State(ops): State<Arc<Ops>>, _reader: Reader, Query(query): Query<PageQuery>) -> Answer {
    let page = Page::new(query.offset.unwrap_or(0), query.limit.unwrap_or(dead_letters::PAGE))
        .map_err(|why| refuse(StatusCode::BAD_REQUEST, why))?;
    let listed = ops.dead_letters.handle(&ops.calls, Action::List, &[], false, page).await.map_err(internal)?;
    let letters: Vec<_> = listed.into_iter().map(|h| h.dead_letter).collect();
    Ok(Json(letters).into_response())
}

/// Which dead letters a replay or purge is for.
#[derive(Deserialize, Default)]
pub(crate) struct Selection {
    /// Ids (`<call-id>/<attempt>`, `msg-<digest>`) or prefixes of them.
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

async fn act_on_dead_letters(
    State(ops): State<Arc<Ops>>,
    _admin: Admin,
    UrlPath(action): UrlPath<String>,
    Json(selection): Json<Selection>,
) -> Answer {
    let action = match action.as_str() {
        "replay" => Action::Replay,
        "purge" => Action::Purge,
        other => return Err(refuse(StatusCode::NOT_FOUND, format!("no dead-letter action {other:?} (replay, purge)"))),
    };
    if selection.ids.is_empty() && !selection.all {
        return Err(refuse(StatusCode::BAD_REQUEST, "name the dead letters (ids or id prefixes), or all"));
    }
    let handled = ops
        .dead_letters
        .handle(&ops.calls, action, &selection.ids, selection.all, Page::default())
        .await
        .map_err(internal)?;
    ops.status.queues.forget().await;
    Ok(Json(handled).into_response())
}

async fn worker_control(
    State(ops): State<Arc<Ops>>,
    _admin: Admin,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> Answer {
    let control = match action.as_str() {
        "drain" => Control::Drain { reason: "drained by the operator (sealfarm-bridge drain)".into() },
        "resume" => Control::Resume {},
        other => return Err(refuse(StatusCode::NOT_FOUND, format!("no worker action {other:?} (drain, resume)"))),
    };
    if ops.calls.farm.get(&id).is_none() {
        let known: Vec<String> = ops.calls.farm.all().into_iter().map(|w| w.id).collect();
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no worker {id:?} has sent a heartbeat since the bridge started (known: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ),
        ));
    }
    let queue = topology::worker_queue(&id);
    let message = ControlMessage { schema: sealfarm_schemas::SCHEMA_VERSION, control };
    let sent = async {
        let broker = ops.calls.link.get().await?;
        broker.declare_queue(&sealfarm_runtime::queues::QueueSpec::work(&queue)).await?;
        broker.publish_json("", &queue, &message, &[]).await
    };
    sent.await.map_err(internal)?;
    ops.status.queues.forget().await;
    tracing::warn!(worker = %id, action, "operator control sent");
    let text = match action.as_str() {
        "drain" => {
            format!("worker {id} drains: it takes no new tasks from the stage queues and finishes the ones it holds")
        }
        _ => format!("worker {id} takes tasks again"),
    };
    Ok(Json(json!({ "message": text })).into_response())
}

async fn job_control(
    State(ops): State<Arc<Ops>>,
    _admin: Admin,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> Answer {
    let call = find_call(&ops.calls, &id)?;
    let done = match action.as_str() {
        "requeue" => ops.calls.requeue(&call).await,
        "abort" => ops.calls.abort(&call, "sealfarm-bridge abort").await,
        other => return Err(refuse(StatusCode::NOT_FOUND, format!("no job action {other:?} (requeue, abort)"))),
    };
    match done {
        Ok(message) => {
            ops.status.queues.forget().await;
            tracing::warn!(call_id = %call.call_id, action, "operator control");
            Ok(Json(json!({ "message": message })).into_response())
        }
        Err(err) => Err(refuse(StatusCode::CONFLICT, format!("{err:#}"))),
    }
}

/// The call a full id or an id prefix (as `jobs` prints it) names.
fn find_call(calls: &Calls, id: &str) -> Result<crate::calls::store::Call, (StatusCode, Json<serde_json::Value>)> {
    let wanted = id.replace('-', "").to_lowercase();
    if wanted.len() < 4 {
        return Err(refuse(StatusCode::BAD_REQUEST, "give at least 4 hex digits of the call id"));
    }
    let matches = |all: bool| -> Result<Vec<uuid::Uuid>, _> {
        let rows = calls.store.rows(all).map_err(internal)?;
        Ok(rows.into_iter().map(|r| r.call_id).filter(|id| id.simple().to_string().starts_with(&wanted)).collect())
    };
    // The open and recent calls first; the whole store only for an old one.
    let mut matching = matches(false)?;
    if matching.is_empty() {
        matching = matches(true)?;
    }
    match matching.len() {
        1 => calls
            .store
            .get(&matching[0].to_string())
            .map_err(internal)?
            .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("no call with id {id}"))),
        0 => Err(refuse(StatusCode::NOT_FOUND, format!("no call with id {id}"))),
        n => Err(refuse(StatusCode::CONFLICT, format!("{n} calls start with {id}: give more of the id"))),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Answer {
    if ops.metrics_access.own_address {
        let why = "/metrics is served on the bridge's --metrics-listen address, not here";
        return Err(refuse(StatusCode::NOT_FOUND, why));
    }
    exposition(&ops, &headers).await
}

/// The metrics, the token checked when `--metrics-token` asks for it.
async fn exposition(ops: &Ops, headers: &HeaderMap) -> Answer {
    if ops.metrics_access.token {
        check(ops, headers, Access::Read)?;
    }
    let mut last = ops.metrics_text.lock().await;
    let text = match last.as_ref() {
        Some((at, text)) if at.elapsed() < METRICS_FRESH => text.clone(),
        _ => {
            let overview = ops.status.overview(&ops.calls, false, false).await.map_err(internal)?;
            let text = ops.metrics.render(&overview);
            *last = Some((std::time::Instant::now(), text.clone()));
            text
        }
    };
    Ok(([(axum::http::header::CONTENT_TYPE, sealfarm_runtime::metrics::CONTENT_TYPE)], text).into_response())
}

/// `/metrics` alone, for `--metrics-listen`.
pub(crate) fn metrics_router(ops: Arc<Ops>) -> Router {
    async fn scrape(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Answer {
        exposition(&ops, &headers).await
    }
    Router::new().route("/metrics", get(scrape)).with_state(ops)
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
