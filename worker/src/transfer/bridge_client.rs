//! The worker's HTTP link to the bridge, for bytes that never ride the
//! broker (`docs/ARCHITECTURE.md`, "Blobs"): a C2 task's C1 output is
//! fetched from the bridge's blob path and checked against its digest; a C1
//! output is uploaded there before its result is published; piece data the
//! worker cannot read under its own sealing path is downloaded.
//!
//! The bridges' URLs and the worker token come from `--bridge` and
//! `--worker-token`; nothing in a broker message names where to connect, so a
//! forged task cannot send the token elsewhere. A farm shared by several
//! miners has a bridge for each: `--bridge t01000=URL` names the bridge a
//! task's `bridge` field picks; a `--bridge URL` without a name serves the
//! tasks of any bridge not named (a farm of one miner needs nothing more).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use sealfarm_runtime::partial_file::PartialFile;
use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_schemas::blob::BlobRef;

/// Where the bridge is and the token it expects.
#[derive(Clone)]
pub struct BridgeClient {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for BridgeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeClient").field("url", &self.url).finish_non_exhaustive()
    }
}

/// The bridges this worker reaches: by id, and one for any other.
#[derive(Clone, Debug, Default)]
pub struct Bridges {
    named: std::collections::BTreeMap<String, BridgeClient>,
    any: Option<BridgeClient>,
}

impl Bridges {
    /// From `--bridge` values (`ID=URL` or `URL`), all with one token and CA.
    pub fn parse(values: &[String], token: &str, ca: Option<&Path>) -> Result<Self> {
        let mut bridges = Bridges::default();
        for value in values {
            let value = value.trim();
            match split_named(value) {
                Some((id, url)) => {
                    sealfarm_schemas::messages::check_bridge_id(id)
                        .map_err(|e| anyhow::anyhow!("--bridge {value:?}: {e}"))?;
                    if bridges.named.insert(id.to_string(), BridgeClient::new(url, token, ca)?).is_some() {
                        bail!("--bridge names bridge {id} twice");
                    }
                }
                None => {
                    if bridges.any.replace(BridgeClient::new(value, token, ca)?).is_some() {
                        bail!(
                            "--bridge gives two URLs without a bridge id: name each bridge, e.g. \
                             --bridge t01000=http://10.0.0.9:3456 --bridge t01001=http://10.0.0.9:3457"
                        );
                    }
                }
            }
        }
        Ok(bridges)
    }

    /// The bridge of a task whose `bridge` is `id`: the one of that name,
    /// else the one for any (None: no `--bridge` fits).
    pub fn get(&self, id: Option<&str>) -> Option<&BridgeClient> {
        id.and_then(|id| self.named.get(id)).or(self.any.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.any.is_none()
    }

    /// `ID=URL` (or `URL` for the one without a name), for the start-up table.
    pub fn describe(&self) -> Vec<String> {
        let named = self.named.iter().map(|(id, client)| format!("{id}={}", client.url()));
        named.chain(self.any.iter().map(|client| client.url().to_string())).collect()
    }
}

/// `t01000=http://…` → the id and the URL; a bare URL → None.
fn split_named(value: &str) -> Option<(&str, &str)> {
    let (id, url) = value.split_once('=')?;
    // An `=` inside a URL's query comes after `://`.
    (!id.contains(['/', ':'])).then_some((id, url))
}

/// Why a transfer failed: worth another try (the bridge is away), or not.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
}

impl BridgeClient {
    /// `ca`: the CA certificates to trust for an https:// URL (default: the system's).
    pub fn new(url: &str, token: &str, ca: Option<&Path>) -> Result<Self> {
        let url = url.trim_end_matches('/').to_string();
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--bridge {url:?} is not an http:// or https:// URL (the bridge's --listen address, e.g. http://10.0.0.9:3456)"
        );
        anyhow::ensure!(!token.trim().is_empty(), "--worker-token is empty");
        if ca.is_some() && !url.starts_with("https://") {
            anyhow::bail!("--bridge-ca is for an https:// --bridge, and {url} is plain http://");
        }
        // A bridge that stops answering or sending fails the transfer (and
        // the job is retried) instead of holding its slot.
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(sealfarm_runtime::retry::STALL);
        let http = sealfarm_runtime::trust::with_roots(builder, ca)?.build().context("cannot build an HTTP client")?;
        Ok(BridgeClient { url, token: token.trim().to_string(), http })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn blob_url(&self, blob: &BlobRef) -> String {
        format!("{}/sealfarm/v0/blobs/{}", self.url, blob.sha256)
    }

    /// Fetches a blob and checks it against its reference.
    pub async fn fetch_blob(&self, blob: &BlobRef) -> Result<Vec<u8>, TransferError> {
        blob.validate().map_err(TransferError::Refused)?;
        let url = self.blob_url(blob);
        let response = self.send(self.http.get(&url)).await?;
        if response.content_length().is_some_and(|n| n != blob.size) {
            return Err(TransferError::Refused(format!(
                "the bridge offers {} bytes for blob {blob}",
                response.content_length().unwrap_or(0)
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| TransferError::Unreachable(format!("GET {url} broke off: {e}")))?;
            if (bytes.len() + chunk.len()) as u64 > blob.size {
                return Err(TransferError::Refused(format!(
                    "the bridge sent more than the {} bytes of blob {blob}",
                    blob.size
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        blob.verify(&bytes).map_err(TransferError::Refused)?;
        Ok(bytes)
    }

    /// Uploads the file at `path` as blob `blob`.
    pub async fn upload_blob(&self, blob: &BlobRef, path: &Path) -> Result<(), TransferError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| TransferError::Refused(format!("cannot read {}: {e}", path.display())))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let request = self.http.put(self.blob_url(blob)).header(reqwest::header::CONTENT_LENGTH, blob.size).body(body);
        self.send(request).await.map(|_| ())
    }

    /// Downloads piece data `id` into `path` (via a partial file).
    pub async fn download_piece(&self, id: uuid::Uuid, path: &Path) -> Result<u64, TransferError> {
        let url = format!("{}/sealfarm/v0/pieces/{id}", self.url);
        let response = self.send(self.http.get(&url)).await?;
        let written = async {
            let mut file = PartialFile::create(path.with_extension("partial")).await.map_err(|e| e.to_string())?;
            let mut total = 0u64;
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("GET {url} broke off: {e}"))?;
                total += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            file.commit(path).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(total)
        }
        .await;
        written.map_err(TransferError::Unreachable)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, TransferError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| TransferError::Unreachable(format!("cannot reach the bridge at {}: {e}", self.url)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = format!("the bridge at {} answered {status}: {}", self.url, text.trim());
        if status.is_server_error() && status != reqwest::StatusCode::INSUFFICIENT_STORAGE {
            Err(TransferError::Unreachable(message))
        } else {
            Err(TransferError::Refused(message))
        }
    }
}

/// Runs `transfer` until it succeeds, is refused, or `attempts` tries found
/// the bridge away (waiting longer after each).
pub async fn with_retries<T, F, Fut>(
    attempts: u32,
    shutdown: &sealfarm_runtime::shutdown::Shutdown,
    mut transfer: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransferError>>,
{
    let mut pauses = Backoff::new(retry::BRIDGE);
    for attempt in 1..=attempts {
        match transfer().await {
            Ok(value) => return Ok(value),
            Err(TransferError::Refused(message)) => bail!(message),
            Err(TransferError::Unreachable(message)) if attempt == attempts => bail!(message),
            Err(TransferError::Unreachable(message)) => {
                let delay = pauses.next_pause().unwrap_or(retry::BRIDGE.max);
                tracing::warn!(error = %message, retry_in = ?delay, "bridge transfer failed; trying again");
                if shutdown.wait_for(delay).await {
                    bail!("stopping: {message}");
                }
            }
        }
    }
    bail!("no attempt made")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_are_picked_by_the_tasks_bridge_id() {
        let values = ["t01000=http://a:1".to_string(), "http://any:3".to_string(), "t01001=http://b:2/".to_string()];
        let bridges = Bridges::parse(&values, "secret", None).unwrap();
        assert_eq!(bridges.get(Some("t01000")).unwrap().url(), "http://a:1");
        assert_eq!(bridges.get(Some("t01001")).unwrap().url(), "http://b:2");
        assert_eq!(bridges.get(Some("t09999")).unwrap().url(), "http://any:3");
        assert_eq!(bridges.get(None).unwrap().url(), "http://any:3");
        let named_only = Bridges::parse(&values[..1], "secret", None).unwrap();
        assert!(named_only.get(Some("t01001")).is_none(), "no bridge for an id not named and none for any");
        let twice = Bridges::parse(&["http://a:1".into(), "http://b:2".into()], "secret", None).unwrap_err();
        assert!(format!("{twice:#}").contains("name each bridge"), "{twice:#}");
        let bad = Bridges::parse(&["t0 1=http://a:1".into()], "secret", None).unwrap_err();
        assert!(format!("{bad:#}").contains("bridge id"), "{bad:#}");
    }
}
