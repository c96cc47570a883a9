//! DownloadSectorData: a sector's files fetched from the URLs the miner
//! gives (a sealing service, another lotus-worker's or bridge's `/remote`),
//! into the lotus layout of the sealing path (docs/LOTUS.md §11.4).
//!
//! What lotus checks, sealfarm checks: the answer is a 200; a file comes as
//! `application/octet-stream`, a cache directory as `application/x-tar`;
//! anything else is refused. sealfarm also refuses a body shorter than its
//! `Content-Length`, a body larger than announced or than the file type can
//! be (a sector for `sealed`/`update`, plus a trailer for `unsealed`, 20
//! sectors for a cache), a source silent for 2 minutes, and a tar entry that
//! is not a plain file with a plain name (it could write outside the sector's
//! directory). Each file is
//! written under `sealfarm/fetching/` first, fsynced, and renamed into place
//! only when whole, so a crash or a broken download leaves no half file
//! where the next stage would read it. Bytes stream through in 1 MiB
//! pieces: memory stays bounded whatever the size.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use sealfarm_schemas::messages::SectorSource;
use sealfarm_schemas::sector_store::FILE_TYPES;
use sealfarm_schemas::{SectorRef, StageOutput};

use super::layout::SealingPath;

/// How long a source may send nothing (connecting, answering, mid-body).
const STALL: Duration = Duration::from_secs(120);
/// The largest partial-file trailer an unsealed file carries.
const MAX_TRAILER: u64 = 16 << 20;
/// A cache directory before finalize holds the layers and trees: at most
/// this many times the sector size.
const CACHE_FACTOR: u64 = 20;

/// Fetches every source of the task, then reports the stage done.
pub fn download(sealing: &SealingPath, sector: SectorRef, sources: &[SectorSource]) -> Result<StageOutput> {
    ensure!(!sources.is_empty(), "no file to download");
    for source in sources {
        fetch_one(sealing, sector, source).with_context(|| format!("{} from {}", source.file_type, source.url))?;
    }
    Ok(StageOutput::Dl {})
}

fn fetch_one(sealing: &SealingPath, sector: SectorRef, source: &SectorSource) -> Result<()> {
    ensure!(
        FILE_TYPES.iter().any(|(_, folder)| *folder == source.file_type),
        "{:?} is not a sector file type",
        source.file_type
    );
    let name = sector.id.file_name();
    let target = sealing.root().join(&source.file_type).join(&name);
    let staging = sealing.root().join("sealfarm").join("fetching").join(&source.file_type).join(&name);
    remove_any(&staging)?;
    if let Some(folder) = staging.parent() {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    // A source that stops sending fails the job instead of holding its slot.
    let mut request = ureq::get(&source.url)
        .config()
        .timeout_connect(Some(STALL))
        .timeout_recv_response(Some(STALL))
        .timeout_per_read(Some(STALL))
        .build();
    for (key, value) in &source.headers {
        request = request.header(key.as_str(), value.as_str());
    }
    let response = request.call().context("the download failed")?;
    let status = response.status().as_u16();
    ensure!(status == 200, "the source answered {status}, not 200");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type").unwrap_or_default();
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    // At most what a file of this type can be (and what was announced):
    // a source cannot fill the disk.
    let sector_size = super::proofs::sector_bytes(sector)?;
    let cap = match source.file_type.as_str() {
        "sealed" | "update" => sector_size,
        "unsealed" => sector_size + MAX_TRAILER,
        _ => sector_size.saturating_mul(CACHE_FACTOR),
    };
    if let Some(length) = length {
        ensure!(length <= cap, "the source announces {length} bytes; a {} is at most {cap}", source.file_type);
    }
    let limit = length.unwrap_or(cap).min(cap);
    let mut body = Counting { inner: response.into_body().into_reader().take(limit + 1), read: 0 };
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/octet-stream" => {
            let mut file = File::create(&staging).with_context(|| format!("creating {}", staging.display()))?;
            io::copy(&mut body, &mut file).context("receiving the file")?;
            file.sync_all()?;
        }
        "application/x-tar" => {
            std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
            unpack_flat_tar(&mut body, &staging)?;
        }
        other => bail!(
            "the source sent {other:?}; a sector file comes as application/octet-stream, a cache as application/x-tar"
        ),
    }
    ensure!(body.read <= limit, "the source sent more than {limit} bytes");
    if let Some(length) = length {
        ensure!(body.read == length, "received {} bytes of the {length} announced", body.read);
    }
    remove_any(&target)?;
    std::fs::rename(&staging, &target)
        .with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
    tracing::info!(sector = %sector.id, file_type = source.file_type, bytes = body.read, "downloaded");
    Ok(())
}

/// Unpacks a tar of plain files with plain names into `dir` (each fsynced).
fn unpack_flat_tar(body: &mut impl Read, dir: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(body);
    for entry in archive.entries().context("reading the tar")? {
        let mut entry = entry.context("reading the tar")?;
        let path = entry.path().context("a tar entry's name")?.into_owned();
        let name = path.to_str().unwrap_or("");
        ensure!(
            entry.header().entry_type().is_file()
                && !name.is_empty()
                && !name.contains('/')
                && name != "."
                && name != "..",
            "tar entry {path:?} is not a plain file of the cache directory"
        );
        let out: PathBuf = dir.join(name);
        let mut file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        io::copy(&mut entry, &mut file).with_context(|| format!("writing {}", out.display()))?;
        file.flush()?;
        file.sync_all()?;
    }
    // Read to the end: the announced length counts the tar's trailing blocks.
    io::copy(archive.into_inner(), &mut io::sink())?;
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

/// A reader that counts what passes through.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}
