//! Groth parameters: where they live, fetching the published ones, checking
//! what the cache holds; generating insecure ones for test sizes is
//! [`generate`].
//!
//! The cache is `FIL_PROOFS_PARAMETER_CACHE` (default
//! `/var/tmp/filecoin-proof-parameters`), the same folder lotus uses. The
//! manifest of published files (IPFS CID, digest, sector size) is the
//! `parameters.json` compiled into the proofs library; a file's digest is the
//! first 32 hex characters of its BLAKE2b-512 hash.

pub(crate) mod generate;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sealfarm_schemas::{RegisteredSealProof, SectorSize};
use serde::Deserialize;

use crate::sealing::proofs::api_proof;

/// The gateway lotus fetches parameters from when `IPFS_GATEWAY` is unset.
pub const DEFAULT_GATEWAY: &str = "https://proofs.filecoin.io/ipfs/";

/// One published parameter file.
#[derive(Clone, Debug, Deserialize)]
pub struct ManifestEntry {
    pub cid: String,
    pub digest: String,
    pub sector_size: u64,
}

/// File name → entry.
pub type Manifest = BTreeMap<String, ManifestEntry>;

/// The parameter cache directory in effect for this process.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FIL_PROOFS_PARAMETER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/filecoin-proof-parameters"))
}

/// The manifest compiled into the proofs library, or one read from `path`.
pub fn manifest(path: Option<&Path>) -> Result<Manifest> {
    match path {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("manifest {} is not a parameters.json", path.display()))
        }
        None => Ok(storage_proofs_core::parameter_cache::PARAMETERS
            .iter()
            .map(|(name, data)| {
                (
                    name.clone(),
                    ManifestEntry { cid: data.cid.clone(), digest: data.digest.clone(), sector_size: data.sector_size },
                )
            })
            .collect()),
    }
}

/// The digest the manifest uses: first 32 hex chars of BLAKE2b-512.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut state = blake2b_simd::Params::new().hash_length(64).to_state();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        state.update(&buffer[..n]);
    }
    Ok(state.finalize().to_hex()[..32].to_string())
}

/// Paths of the seal (PoRep) parameters and verifying key for a size.
pub fn seal_param_paths(size: SectorSize) -> Result<(PathBuf, PathBuf)> {
    let proof = api_proof(RegisteredSealProof::v1_1_for(size)).expect("V1_1 proofs are known");
    Ok((proof.cache_params_path()?, proof.cache_verifying_key_path()?))
}

/// Paths of the empty-sector-update (snap deal) parameters and verifying key for a size.
pub fn update_param_paths(size: SectorSize) -> Result<(PathBuf, PathBuf)> {
    generate::update_param_paths(size)
}

/// Fails with instructions unless the update parameters of every size exist.
pub fn require_update_params(sizes: &[SectorSize]) -> Result<()> {
    for size in sizes {
        let (params, vk) = update_param_paths(*size)?;
        if let Some(path) = [params, vk].into_iter().find(|p| !p.exists()) {
            bail!(
                "ProveReplicaUpdate2 of {size} sectors needs the empty-sector-update Groth parameters, and {} is missing \
                 (parameter cache {}); run `{}` first, or drop pr2 from --stages",
                path.display(),
                cache_dir().display(),
                how_to_get(*size)
            );
        }
    }
    Ok(())
}

fn how_to_get(size: SectorSize) -> String {
    if size.is_test_size() {
        format!("sealfarm-worker params generate --sector-size {size}")
    } else {
        format!("sealfarm-worker params fetch --sector-size {size}")
    }
}

/// Fails with instructions unless the seal parameters of every size exist.
pub fn require_seal_params(sizes: &[SectorSize]) -> Result<()> {
    for size in sizes {
        let (params, vk) = seal_param_paths(*size)?;
        for path in [&params, &vk] {
            if !path.exists() {
                let how = if size.is_test_size() {
                    format!("sealfarm-worker params generate --sector-size {size}")
                } else {
                    format!("sealfarm-worker params fetch --sector-size {size}")
                };
                bail!(
                    "C2 of {size} sectors needs Groth parameters, and {} is missing (parameter cache {}); run `{how}` first, or drop c2 from --stages",
                    path.display(),
                    cache_dir().display()
                );
            }
        }
    }
    Ok(())
}

/// What `params fetch` did with each file.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    AlreadyPresent,
    Downloaded,
}

/// Downloads every file of `size` in the manifest that is missing or damaged,
/// checking each digest. A file that does not match is removed.
pub fn fetch(size: SectorSize, gateway: &str, manifest: &Manifest) -> Result<Vec<(String, FetchOutcome)>> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create parameter cache {}", dir.display()))?;
    let wanted: Vec<_> = manifest.iter().filter(|(_, e)| e.sector_size == size.0).collect();
    if wanted.is_empty() {
        bail!("the manifest lists no parameter files for {size} sectors");
    }
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (name, entry) in wanted {
        let path = dir.join(name);
        if path.exists() && file_digest(&path)? == entry.digest {
            eprintln!("{name}: present, digest ok");
            outcomes.push((name.clone(), FetchOutcome::AlreadyPresent));
            continue;
        }
        match download(gateway, name, entry, &path) {
            Ok(()) => outcomes.push((name.clone(), FetchOutcome::Downloaded)),
            Err(err) => {
                eprintln!("{name}: {err:#}");
                failures.push(format!("{name}: {err:#}"));
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} of the {size} parameter files could not be fetched:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(outcomes)
}

fn download(gateway: &str, name: &str, entry: &ManifestEntry, path: &Path) -> Result<()> {
    let url = format!("{}/{}", gateway.trim_end_matches('/'), entry.cid);
    let partial = path.with_extension(format!("{}.partial", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let response = ureq::get(&url).call().with_context(|| format!("GET {url}"))?;
    let total: Option<u64> =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let mut reader = response.into_body().into_reader();
    let mut out = File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
    let mut state = blake2b_simd::Params::new().hash_length(64).to_state();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut done, started, mut last_report) = (0u64, Instant::now(), Instant::now());
    // A progress bar on a terminal; a line every 5 s in a log.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(name.to_string());
        bar
    });
    loop {
        let n = reader.read(&mut buffer).with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        state.update(&buffer[..n]);
        out.write_all(&buffer[..n]).with_context(|| format!("writing {}", partial.display()))?;
        done += n as u64;
        if let Some(bar) = &bar {
            bar.set_position(done);
        } else if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64() / 1e6;
            match total {
                Some(total) => eprintln!(
                    "{name}: {:.1}% of {} MB, {rate:.1} MB/s",
                    done as f64 * 100.0 / total as f64,
                    total / 1_000_000
                ),
                None => eprintln!("{name}: {} MB, {rate:.1} MB/s", done / 1_000_000),
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    out.sync_all()?;
    drop(out);
    let digest = state.finalize().to_hex()[..32].to_string();
    if digest != entry.digest {
        let _ = std::fs::remove_file(&partial);
        bail!("digest mismatch (expected {}, got {digest}); the download was removed", entry.digest);
    }
    std::fs::rename(&partial, path).with_context(|| format!("cannot move the download to {}", path.display()))?;
    eprintln!("{name}: downloaded {} bytes, digest ok", done);
    Ok(())
}

/// One line of `params status`.
#[derive(Debug)]
pub struct StatusLine {
    pub size: SectorSize,
    /// `params`/`vk` of the seal circuit, `u-params`/`u-vk` of the
    /// empty-sector-update (snap deal) one.
    pub kind: &'static str,
    pub path: PathBuf,
    pub bytes: Option<u64>,
    /// With verification: whether the file is the published one.
    pub published: Option<bool>,
}

/// The seal parameters and verifying keys the cache holds, per sector size.
pub fn status(verify: bool, manifest: &Manifest) -> Result<Vec<StatusLine>> {
    let mut lines = Vec::new();
    for size in SectorSize::ALL {
        let (params, vk) = seal_param_paths(size)?;
        let (update_params, update_vk) = update_param_paths(size)?;
        let files = [("params", params), ("vk", vk), ("u-params", update_params), ("u-vk", update_vk)];
        for (kind, path) in files {
            let bytes = std::fs::metadata(&path).ok().map(|m| m.len());
            let published = match (verify, bytes) {
                (true, Some(_)) => {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let digest = file_digest(&path)?;
                    Some(manifest.get(name).is_some_and(|e| e.digest == digest))
                }
                _ => None,
            };
            lines.push(StatusLine { size, kind, path, bytes, published });
        }
    }
    Ok(lines)
}
