//! The bridge's side of lotus-worker registration (docs/LOTUS.md §3, §9.4):
//! check the miner's API version, attach the storage paths, declare sector
//! files, heartbeat the paths' health, `WorkerConnect`, and watch the miner's
//! session to register again after a miner restart. Also the miner-facing
//! bookkeeping after each call: declaring new sector files, verifying the
//! tokens the miner presents.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use sealfarm_runtime::retry::{self, Backoff};
use sealfarm_runtime::shutdown::Shutdown;
use sealfarm_schemas::{SectorRef, SectorSize, StageOutput, Task};
use serde_json::{json, Value};

use crate::calls::store::CallStore;
use crate::miner::api_info::MinerApiInfo;
use crate::miner::rpc::{CallFailure, RpcClient};
use crate::miner::storage::StoragePath;
use crate::miner::tokens::{TokenChecks, Verdict};

/// The miner API version lotus-worker requires (1.5.0).
pub const MINER_API_VERSION: u64 = 66816;
/// How often the storage health and the miner session are checked (lotus: 10 s).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The miner as the bridge knows it.
pub struct Miner {
    client: RpcClient,
    pub info: MinerApiInfo,
    pub storage: Vec<StoragePath>,
    /// `http://<advertised host:port>`, the base of `/rpc/v0` and `/remote`.
    pub advertised: String,
    tokens: TokenChecks,
    /// The miner's sector size, once asked (`ActorSectorSize`).
    sector_size: std::sync::OnceLock<SectorSize>,
    /// The number of the miner's actor (`t01000` → 1000), once asked: files
    /// of other miners' sectors (on storage shared by several) are not served.
    actor: std::sync::OnceLock<u64>,
    /// Where the bridge remembers what it declared (worker-local files are
    /// declared again after a miner restart from this record).
    store: CallStore,
}

impl Miner {
    /// `timeout`: how long any one call to the miner may take (`--miner-timeout`).
    pub fn new(
        info: MinerApiInfo,
        storage: Vec<StoragePath>,
        advertised: String,
        store: CallStore,
        timeout: Duration,
    ) -> Self {
        Miner {
            client: RpcClient::with_timeout(info.url.clone(), info.token.clone(), timeout),
            info,
            storage,
            advertised,
            tokens: TokenChecks::default(),
            sector_size: std::sync::OnceLock::new(),
            actor: std::sync::OnceLock::new(),
            store,
        }
    }

    /// The sector size of the miner's actor (`ActorAddress`, then
    /// `ActorSectorSize`; asked once).
    pub async fn sector_size(&self) -> Result<SectorSize> {
        if let Some(size) = self.sector_size.get() {
            return Ok(*size);
        }
        let address: String = self.client.call("ActorAddress", json!([])).await.context("ActorAddress")?;
        let bytes: u64 = self.client.call("ActorSectorSize", json!([address])).await.context("ActorSectorSize")?;
        let size = SectorSize(bytes);
        anyhow::ensure!(
            SectorSize::ALL.contains(&size),
            "the miner's sector size {bytes} is not a Filecoin sector size"
        );
        Ok(*self.sector_size.get_or_init(|| size))
    }

    /// The miner's actor address (e.g. `t01000`), asked until the miner answers.
    pub async fn actor_address(&self, shutdown: &Shutdown) -> Result<String> {
        let mut pauses = Backoff::new(retry::MINER);
        loop {
            match self.client.call::<String>("ActorAddress", json!([])).await {
                Ok(address) => {
                    if let Some(number) = actor_number(&address) {
                        let _ = self.actor.set(number);
                    }
                    return Ok(address);
                }
                Err(err) => {
                    let delay = pauses.next_pause().unwrap_or(retry::MINER.max);
                    tracing::warn!(miner = %self.info.url, error = %format!("{err:#}"), retry_in = ?delay, "cannot ask the miner its actor address (the bridge's id by default)");
                    if shutdown.wait_for(delay).await {
                        anyhow::bail!("stopped before the miner said its actor address");
                    }
                }
            }
        }
    }

    /// Whether a sector is this miner's: true until the actor address is known.
    pub fn owns(&self, sector: sealfarm_schemas::SectorId) -> bool {
        self.actor.get().is_none_or(|actor| *actor == sector.miner)
    }

    /// The record of declared sector files.
    pub fn declarations(&self) -> &CallStore {
        &self.store
    }

    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    /// Whether the miner accepts a token, and with which permissions
    /// (`AuthVerify`, remembered briefly: [`TokenChecks`]).
    pub async fn verify_token(&self, token: &str) -> Verdict {
        self.tokens.verify(&self.client, token).await
    }

    /// The token checks (how many reached the miner).
    pub fn token_checks(&self) -> &TokenChecks {
        &self.tokens
    }

    /// Checks the miner's API version, retrying while the miner is away.
    pub async fn check_version(&self, shutdown: &Shutdown) -> Result<()> {
        let mut pauses = Backoff::new(retry::MINER);
        loop {
            match self.client.call::<Value>("Version", json!([])).await {
                Ok(version) => {
                    let api = version.get("APIVersion").and_then(Value::as_u64).unwrap_or(0);
                    if api != MINER_API_VERSION {
                        bail!(
                            "the miner at {} speaks API version {} ({}), sealfarm-bridge needs {} (1.5.0, as lotus-worker does)",
                            self.info.url,
                            version_text(api),
                            version.get("Version").and_then(Value::as_str).unwrap_or("?"),
                            version_text(MINER_API_VERSION)
                        );
                    }
                    return Ok(());
                }
                Err(CallFailure::Unauthorized { .. }) => {
                    bail!("the miner at {} refused the MINER_API_INFO token (HTTP 401)", self.info.url)
                }
                Err(err) => {
                    let delay = pauses.next_pause().unwrap_or(retry::MINER.max);
                    tracing::warn!(error = %err, retry_in = ?delay, "waiting for the miner");
                    if shutdown.wait_for(delay).await {
                        bail!("stopped while waiting for the miner");
                    }
                }
            }
        }
    }

    /// Attaches every storage path and declares the sector files on it.
    pub async fn attach_storage(&self) -> Result<()> {
        let remote = format!("{}/remote", self.advertised);
        for path in &self.storage {
            self.client
                .call::<Value>("StorageAttach", json!([path.storage_info(&remote), path.fs_stat()]))
                .await
                .with_context(|| format!("StorageAttach of {}", path.path.display()))?;
            for (sector, file_type) in path.sector_files() {
                self.client
                    .call::<Value>("StorageDeclareSector", json!([path.meta.id, sector, file_type, false]))
                    .await
                    .with_context(|| format!("declaring {sector} on {}", path.path.display()))?;
            }
        }
        // Files the workers hold (worker-local storage), declared before:
        // the miner's index lives in memory and starts empty after a restart.
        let here: Vec<&str> = self.storage.iter().map(|p| p.meta.id.as_str()).collect();
        for (sector, file_type, id) in self.store.declared() {
            if here.contains(&id.as_str()) {
                self.client
                    .call::<Value>("StorageDeclareSector", json!([id, sector, file_type, false]))
                    .await
                    .with_context(|| format!("declaring {sector} again"))?;
            }
        }
        Ok(())
    }

    /// `WorkerConnect`: the miner calls back Version, Session, Info and
    /// TaskTypes before it answers, so the server must already run.
    pub async fn connect(&self) -> Result<String> {
        let session: String = self.client.call("Session", json!([])).await.context("miner Session")?;
        let url = format!("{}/rpc/v0", self.advertised);
        self.client.call::<Value>("WorkerConnect", json!([url])).await.context("WorkerConnect")?;
        tracing::info!(miner = %self.info.url, worker_url = %url, "registered with the miner");
        Ok(session)
    }

    /// Health heartbeats and the session watch, until shutdown.
    pub async fn keep_registered(&self, mut session: String, shutdown: Shutdown) {
        loop {
            if shutdown.wait_for(HEARTBEAT).await {
                return;
            }
            for path in &self.storage {
                let health = json!({"Stat": path.fs_stat(), "Err": ""});
                if let Err(err) = self.client.call::<Value>("StorageReportHealth", json!([path.meta.id, health])).await
                {
                    tracing::warn!(error = %err, "storage health report failed");
                }
            }
            match self.client.call::<String>("Session", json!([])).await {
                Ok(now) if now == session => {}
                Ok(now) => {
                    tracing::warn!(old = %session, new = %now, "the miner restarted; registering again");
                    let again = async {
                        self.attach_storage().await?;
                        self.connect().await
                    };
                    match again.await {
                        Ok(new_session) => session = new_session,
                        Err(err) => tracing::warn!(error = %format!("{err:#}"), "registration failed; retrying"),
                    }
                }
                Err(err) => tracing::warn!(error = %err, "miner unreachable"),
            }
        }
    }

    /// Declares the files a finished stage created, drops the ones it removed.
    pub async fn declare_outputs(&self, sector: SectorRef, task: Option<&Task>, output: &StageOutput) {
        let Some(path) = self.storage.first() else { return };
        let downloaded: Vec<u64> = match task {
            Some(Task::Dl { sources, .. }) => {
                sources.iter().filter_map(|s| sealfarm_schemas::sector_store::file_type_bit(&s.file_type)).collect()
            }
            _ => Vec::new(),
        };
        let (method, types): (&str, &[u64]) = match output {
            StageOutput::Dl {} => ("StorageDeclareSector", &downloaded),
            StageOutput::Ap { .. } => ("StorageDeclareSector", &[1]),
            StageOutput::Pc1 { .. } => ("StorageDeclareSector", &[2, 4]),
            // With ranges kept, the file stays (a partial file).
            StageOutput::Ru {} if matches!(task, Some(Task::Ru { keep_unsealed: Some(k) }) if !k.is_empty()) => return,
            StageOutput::Ru {} => ("StorageDropSector", &[1]),
            StageOutput::Update { .. } => ("StorageDeclareSector", &[8, 16]),
            StageOutput::Gsk {} => ("StorageDeclareSector", &[2]),
            StageOutput::Unseal {} => ("StorageDeclareSector", &[1]),
            _ => return,
        };
        for file_type in types {
            let params = if method == "StorageDeclareSector" {
                json!([path.meta.id, sector.id, file_type, false])
            } else {
                json!([path.meta.id, sector.id, file_type])
            };
            match self.client.call::<Value>(method, params).await {
                Ok(_) if method == "StorageDeclareSector" => {
                    let _ = self.store.declared_add(sector.id, *file_type, &path.meta.id);
                }
                Ok(_) => {
                    let _ = self.store.declared_remove(sector.id, *file_type);
                }
                Err(err) => tracing::warn!(sector = %sector.id, error = %err, method, "sector index update failed"),
            }
        }
    }
}

fn version_text(v: u64) -> String {
    format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// The number of an ID address (`t01000`, `f01000` → 1000); None for others.
pub fn actor_number(address: &str) -> Option<u64> {
    let digits = address.strip_prefix("t0").or_else(|| address.strip_prefix("f0"))?;
    digits.parse().ok()
}
