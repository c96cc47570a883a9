//! JSON-RPC 2.0 over HTTP as lotus speaks it (go-jsonrpc, docs/LOTUS.md §1):
//! positional params with strict counts, `Filecoin.`-prefixed method names,
//! method errors with code 1 and HTTP 200, protocol errors with HTTP 500
//! (400 for an invalid request), `null` results for error-only methods.
//!
//! Both sides live here: [`serve`] turns a request body into a response for
//! a dispatch function, and [`RpcClient`] calls a remote server over HTTP POST
//! with a bearer token. The bridge uses both; so does the devminer.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// What go-jsonrpc gives an error returned by a method implementation.
pub const METHOD_ERROR: i64 = 1;

/// One request as the Go client sends it (`meta` and other fields ignored).
/// The params are borrowed from the request body, not copied: a
/// `SealCommit2` carries tens of MiB in one of them.
#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    #[serde(default)]
    pub id: Value,
    pub method: String,
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
}

impl<'a> Request<'a> {
    /// The positional params, checked to be exactly `count` (absent or
    /// `null` params count as none).
    pub fn params(&self, count: usize) -> Result<Vec<&'a RawValue>, RpcError> {
        let params: Vec<&'a RawValue> = match self.params {
            None => Vec::new(),
            Some(raw) if raw.get() == "null" => Vec::new(),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| RpcError::new(INVALID_PARAMS, "params must be a positional array"))?,
        };
        if params.len() != count {
            return Err(RpcError::new(
                INVALID_PARAMS,
                format!("wrong param count (method '{}'): {} != {count}", self.method, params.len()),
            ));
        }
        Ok(params)
    }

    /// The params as one typed value: a tuple with a type per param, its
    /// arity the method's param count (any other count is refused as
    /// go-jsonrpc refuses it), each param decoded in place.
    pub fn decode<P: Positional<'a>>(&self) -> Result<P, RpcError> {
        let params = self.params(P::COUNT)?;
        P::decode(self, &params)
    }

    /// Decodes param `index` of `params`, borrowing from the body where the
    /// type can (a `&RawValue` of tens of MiB is not copied).
    fn arg_in<T: Deserialize<'a>>(&self, params: &[&'a RawValue], index: usize) -> Result<T, RpcError> {
        serde_json::from_str(params[index].get()).map_err(|e| {
            RpcError::new(INVALID_PARAMS, format!("unmarshaling params for '{}' (param: {index}): {e}", self.method))
        })
    }
}

/// A method's params as one type: implemented for tuples of up to five
/// params, so `request.decode::<(SectorRef, Ticket, Vec<PieceInfo>)>()`
/// is the whole signature of `SealPreCommit1`.
pub trait Positional<'a>: Sized {
    const COUNT: usize;
    fn decode(request: &Request<'a>, params: &[&'a RawValue]) -> Result<Self, RpcError>;
}

macro_rules! positional {
    ($count:expr; $($param:ident $index:tt),*) => {
        impl<'a, $($param: Deserialize<'a>),*> Positional<'a> for ($($param,)*) {
            const COUNT: usize = $count;
            #[allow(unused_variables)]
            fn decode(request: &Request<'a>, params: &[&'a RawValue]) -> Result<Self, RpcError> {
                Ok(($(request.arg_in::<$param>(params, $index)?,)*))
            }
        }
    };
}

positional!(0;);
positional!(1; A 0);
positional!(2; A 0, B 1);
positional!(3; A 0, B 1, C 2);
positional!(4; A 0, B 1, C 2, D 3);
positional!(5; A 0, B 1, C 2, D 3, E 4);

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    /// An error of the method itself (code 1).
    pub fn method(message: impl Into<String>) -> Self {
        RpcError::new(METHOD_ERROR, message)
    }

    pub fn not_found(method: &str) -> Self {
        RpcError::new(METHOD_NOT_FOUND, format!("method '{method}' not found"))
    }

    fn status(&self) -> StatusCode {
        match self.code {
            INVALID_REQUEST => StatusCode::BAD_REQUEST,
            PARSE_ERROR | METHOD_NOT_FOUND | INVALID_PARAMS => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

/// Answers one HTTP request body by calling `dispatch` with the parsed request.
pub async fn serve<'a, F, Fut>(body: &'a [u8], dispatch: F) -> Response
where
    F: FnOnce(Request<'a>) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>> + 'a,
{
    match parse(body) {
        Ok(request) => {
            let id = request.id.clone();
            reply(id, dispatch(request).await)
        }
        Err(err) => reply(Value::Null, Err(err)),
    }
}

/// Parses a request body: a parse error for text that is not JSON, an
/// invalid-request error for JSON that is not a request.
pub fn parse(body: &[u8]) -> Result<Request<'_>, RpcError> {
    // A request is an object: serde would also read one from an array
    // (`[1, "Filecoin.Version", []]`), which no JSON-RPC client sends.
    let start = body.iter().find(|b| !b.is_ascii_whitespace());
    if start != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => RpcError::new(INVALID_REQUEST, "invalid request: a request is a JSON object"),
            Err(e) => RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
        });
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => RpcError::new(INVALID_REQUEST, format!("invalid request: {e}")),
        _ => RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
    })
}

/// The answer to a request body over `limit` bytes, as go-jsonrpc gives it.
pub fn too_large(limit: u64) -> Response {
    let message = format!(
        "request bigger than maximum {limit} allowed (sealfarm-bridge --max-request-size, env SEALFARM_MAX_REQUEST_SIZE)"
    );
    reply(Value::Null, Err(RpcError::new(PARSE_ERROR, message)))
}

pub fn reply(id: Value, result: Result<Value, RpcError>) -> Response {
    match result {
        Ok(result) => {
            (StatusCode::OK, axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result}))).into_response()
        }
        Err(err) => {
            let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": err.code, "message": err.message}});
            (err.status(), axum::Json(body)).into_response()
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} refused the token (HTTP 401)")]
    Unauthorized { url: String },
    #[error("{0}")]
    Rpc(RpcError),
    /// The miner has a result for this call already: lotus answers a
    /// repeated `Return*` so while the first is unread (docs/LOTUS.md §5.3).
    #[error("the miner already has this result: {0}")]
    AlreadyReported(RpcError),
    #[error("unexpected answer from {url}: {detail}")]
    BadAnswer { url: String, detail: String },
}

/// Whether a method error is lotus refusing a repeated `Return*`: the only
/// place its wording is matched (`storage/sealer/manager_calltracker.go`
/// for tracked calls, `manager.go` for simple ones).
fn is_already_reported(error: &RpcError) -> bool {
    error.code == METHOD_ERROR
        && (error.message.contains("already reported") || error.message.contains("already has a response"))
}

/// How long a call to the miner may take by default: connecting, sending
/// the request and reading the whole answer (`--miner-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest a streamed request body is allowed to go: a streamed call
/// gets the timeout plus a second for every MiB of its body.
const MIN_STREAM_RATE: u64 = 1 << 20;

/// A JSON-RPC client over HTTP POST with a bearer token.
///
/// Every call has a deadline: a server that accepts the connection and
/// then stalls (reads nothing, answers nothing) fails the call with
/// [`CallFailure::Unreachable`] after it, so whoever called (a `Return*`
/// delivery, a token check, the registration keeper) gets to retry or
/// refuse instead of hanging.
pub struct RpcClient {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    timeout: Duration,
    next_id: AtomicU64,
    contact: std::sync::Mutex<Contact>,
}

/// How the last calls to the server went.
#[derive(Clone, Debug, Default)]
pub struct Contact {
    /// When a call last got an answer (Unix ms); a method error is an answer too.
    pub last_ok_ms: Option<u64>,
    /// The last failure to get an answer, and when (Unix ms).
    pub last_error: Option<(u64, String)>,
}

impl Contact {
    /// True when the last call got an answer.
    pub fn up(&self) -> bool {
        match (&self.last_ok_ms, &self.last_error) {
            (Some(ok), Some((failed, _))) => ok >= failed,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

impl RpcClient {
    pub fn new(url: impl Into<String>, token: Option<String>) -> Self {
        Self::with_timeout(url, token, DEFAULT_TIMEOUT)
    }

    /// A client whose calls fail after `timeout` (streamed ones get more:
    /// see [`call_streamed`](Self::call_streamed)).
    pub fn with_timeout(url: impl Into<String>, token: Option<String>, timeout: Duration) -> Self {
        let connect = timeout.min(Duration::from_secs(10));
        let http = reqwest::Client::builder().connect_timeout(connect).build().expect("HTTP client");
        RpcClient { http, url: url.into(), token, timeout, next_id: AtomicU64::new(1), contact: Default::default() }
    }

    /// How the last calls went.
    pub fn contact(&self) -> Contact {
        self.contact.lock().unwrap().clone()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `Filecoin.<method>` with positional `params`.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T, CallFailure> {
        self.call_with(method, &params).await
    }

    /// [`call`](Self::call) with params of any serialisable shape (written
    /// straight into the request body: no JSON tree of large params is built).
    pub async fn call_with<T: DeserializeOwned, P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<T, CallFailure> {
        let outcome = self.call_once(method, params).await;
        self.record(outcome)
    }

    /// Calls `Filecoin.<method>` with params `[head…, "<text>", tail…]`
    /// where the string's text (base64, which needs no escaping) comes from
    /// `text` as the request is sent: a `ReturnSealCommit1` of tens of MiB
    /// is never whole in memory. Not `quoted`: `text` is a JSON value of its
    /// own (the array of `ReturnProveReplicaUpdate1`), put in as it comes.
    /// `size`: about how many bytes `text` gives; the call's deadline grows
    /// by a second per MiB of it (a 50 MiB body over a slow link is not a
    /// stalled miner).
    pub async fn call_streamed<T: DeserializeOwned>(
        &self,
        method: &str,
        head: &[Value],
        text: impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + 'static,
        (quoted, size): (bool, u64),
        tail: &[Value],
    ) -> Result<T, CallFailure> {
        use futures_util::StreamExt as _;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut start = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"Filecoin.{method}","params":["#);
        for item in head {
            start.push_str(&item.to_string());
            start.push(',');
        }
        let quote = if quoted { "\"" } else { "" };
        start.push_str(quote);
        let mut end = String::from(quote);
        for item in tail {
            end.push(',');
            end.push_str(&item.to_string());
        }
        end.push_str("]}");
        let pieces = futures_util::stream::once(async move { Ok(axum::body::Bytes::from(start)) })
            .chain(text)
            .chain(futures_util::stream::once(async move { Ok(axum::body::Bytes::from(end)) }));
        let deadline = self.timeout + Duration::from_secs(size / MIN_STREAM_RATE);
        let outcome = self.send(method, reqwest::Body::wrap_stream(pieces), deadline).await;
        self.record(outcome)
    }

    /// Notes how a call went (the miner's status in the views).
    fn record<T>(&self, outcome: Result<T, CallFailure>) -> Result<T, CallFailure> {
        let now = sealfarm_schemas::messages::now_ms();
        let mut contact = self.contact.lock().unwrap();
        match &outcome {
            Ok(_) | Err(CallFailure::Rpc(_) | CallFailure::AlreadyReported(_)) => contact.last_ok_ms = Some(now),
            Err(failure) => contact.last_error = Some((now, failure.to_string())),
        }
        outcome
    }

    async fn call_once<T: DeserializeOwned, P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<T, CallFailure> {
        #[derive(Serialize)]
        struct Outgoing<'a, P: ?Sized> {
            jsonrpc: &'static str,
            id: u64,
            method: String,
            params: &'a P,
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::to_vec(&Outgoing { jsonrpc: "2.0", id, method: format!("Filecoin.{method}"), params })
            .map_err(|e| CallFailure::BadAnswer {
            url: self.url.clone(),
            detail: format!("cannot encode {method}: {e}"),
        })?;
        self.send(method, reqwest::Body::from(body), self.timeout).await
    }

    /// Posts a JSON-RPC request body and reads the answer, all within `deadline`.
    async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        body: reqwest::Body,
        deadline: Duration,
    ) -> Result<T, CallFailure> {
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(deadline)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let url = self.url.clone();
        let unreachable = |e: reqwest::Error| {
            let detail = if e.is_timeout() {
                format!("{method}: no answer within {} (--miner-timeout)", humantime::format_duration(deadline))
            } else {
                e.to_string()
            };
            CallFailure::Unreachable { url: url.clone(), detail }
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallFailure::Unauthorized { url });
        }
        if status.as_u16() > 400 && status != reqwest::StatusCode::INTERNAL_SERVER_ERROR {
            return Err(CallFailure::Unreachable { url, detail: format!("HTTP {status}") });
        }
        let answer: Value = response.json().await.map_err(|e| match e.is_timeout() {
            true => unreachable(e),
            false => CallFailure::BadAnswer { url: url.clone(), detail: e.to_string() },
        })?;
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            let error = RpcError::new(
                error.get("code").and_then(Value::as_i64).unwrap_or(0),
                error.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
            );
            return Err(if is_already_reported(&error) {
                CallFailure::AlreadyReported(error)
            } else {
                CallFailure::Rpc(error)
            });
        }
        let result = answer.get("result").cloned().unwrap_or(Value::Null);
        serde_json::from_value(result).map_err(|e| CallFailure::BadAnswer { url, detail: format!("{method}: {e}") })
    }
}

/// The bearer token of a request: `Authorization: Bearer …` or `?token=…`.
pub fn bearer_token(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some(token.trim().to_string());
        }
    }
    query?.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_string)
}
