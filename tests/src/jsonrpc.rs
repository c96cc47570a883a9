//! devminer's own JSON-RPC over HTTP, written from go-jsonrpc's rules
//! (docs/LOTUS.md §1) and independent of the bridge's code: a protocol bug
//! in the bridge (a wrong status, a wrong error shape, a wrong param count)
//! then fails the tests instead of being mirrored by them.
//!
//! * Requests: `POST`, `{"jsonrpc":"2.0","id":N,"method":"Filecoin.X","params":[…]}`.
//! * Answers: `result`, or `error: {code, message}`; code 1 for a method's
//!   own error (HTTP 200), -32700 for a body that is not JSON (HTTP 500),
//!   -32600 for JSON that is not a request (HTTP 400), -32601 for an unknown
//!   method and -32602 for wrong params (HTTP 500); a bad token is a bare 401.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// An error answer (server side) or the error a call got (client side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    /// A method's own error: code 1, HTTP 200.
    pub fn method(message: impl Into<String>) -> Self {
        RpcError { code: 1, message: message.into() }
    }

    pub fn not_found(method: &str) -> Self {
        RpcError { code: -32601, message: format!("method '{method}' not found") }
    }

    fn params(message: String) -> Self {
        RpcError { code: -32602, message }
    }

    fn http_status(&self) -> StatusCode {
        match self.code {
            -32600 => StatusCode::BAD_REQUEST,
            -32700 | -32601 | -32602 => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

/// One request, parsed.
pub struct Request {
    pub id: Value,
    pub method: String,
    params: Vec<Value>,
}

impl Request {
    /// The positional params, which must be exactly `count`.
    pub fn params(&self, count: usize) -> Result<&[Value], RpcError> {
        if self.params.len() != count {
            let message = format!("wrong param count (method '{}'): {} != {count}", self.method, self.params.len());
            return Err(RpcError::params(message));
        }
        Ok(&self.params)
    }

    /// Param `index`, decoded.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T, RpcError> {
        let value = self.params.get(index).cloned().unwrap_or(Value::Null);
        serde_json::from_value(value)
            .map_err(|e| RpcError::params(format!("unmarshaling params for '{}' (param: {index}): {e}", self.method)))
    }
}

/// Answers one request body with `dispatch`.
pub async fn serve<F, Fut>(body: &[u8], dispatch: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    let request = match serde_json::from_slice::<Value>(body) {
        Err(e) => return answer(Value::Null, Err(RpcError { code: -32700, message: format!("parse error: {e}") })),
        Ok(value) => value,
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request.get("method").and_then(Value::as_str).map(str::to_string) else {
        return answer(id, Err(RpcError { code: -32600, message: "invalid request: no method".into() }));
    };
    let params = match request.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return answer(id, Err(RpcError::params("params must be a positional array".into()))),
    };
    let result = dispatch(Request { id: id.clone(), method, params }).await;
    answer(id, result)
}

fn answer(id: Value, result: Result<Value, RpcError>) -> Response {
    match result {
        Ok(result) => axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response(),
        Err(error) => {
            let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": error.code, "message": error.message}});
            (error.http_status(), axum::Json(body)).into_response()
        }
    }
}

/// The token of a request: `Authorization: Bearer …`, or `?token=…`.
pub fn bearer_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    from_header.or_else(|| query?.split('&').find_map(|pair| pair.strip_prefix("token=").map(str::to_string)))
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Rpc(RpcError),
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
}

/// A JSON-RPC client with a bearer token.
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    next_id: AtomicU64,
}

impl Client {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self::with_http(reqwest::Client::new(), url, token)
    }

    /// A client on a given HTTP client (one that trusts a test CA, say).
    pub fn with_http(http: reqwest::Client, url: impl Into<String>, token: impl Into<String>) -> Self {
        Client { http, url: url.into(), token: token.into(), next_id: AtomicU64::new(1) }
    }

    /// Calls `Filecoin.<method>` with positional `params` (a JSON array).
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": format!("Filecoin.{method}"), "params": params});
        let transport = |e: reqwest::Error| CallError::Transport { url: self.url.clone(), detail: e.to_string() };
        let response =
            self.http.post(&self.url).bearer_auth(&self.token).json(&body).send().await.map_err(transport)?;
        let status = response.status().as_u16();
        // go-jsonrpc's client: any status above 400 but 500 is a transport failure.
        if status > 400 && status != 500 || status == 401 {
            return Err(CallError::Http { url: self.url.clone(), status });
        }
        let answer: Value = response.json().await.map_err(transport)?;
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = error.get("message").and_then(Value::as_str).unwrap_or("").to_string();
            return Err(CallError::Rpc(RpcError { code, message }));
        }
        if answer.get("id") != Some(&json!(id)) || answer.get("jsonrpc") != Some(&json!("2.0")) {
            let detail = format!("not an answer to request {id}: {answer}");
            return Err(CallError::Transport { url: self.url.clone(), detail });
        }
        let result = answer.get("result").cloned().unwrap_or(Value::Null);
        serde_json::from_value(result).map_err(|e| CallError::Transport {
            url: self.url.clone(),
            detail: format!("{method}: unexpected result: {e}"),
        })
    }
}
