//! Sector files at real size through `/remote` (issue 16), with a real
//! `sealfarm-bridge` registered with devminer and a real `sealfarm-worker`
//! serving worker-local storage. The files are sparse (32 GiB for the cost of
//! a few blocks) with known bytes at the start, the middle and the last byte,
//! so every read is checked for content; the tree-r-last files are
//! pseudo-random, so their checksums mean something.
//!
//! What is asserted is an outcome: bytes, statuses, headers, and that the
//! bridge's and the worker's peak resident memory stays bounded while 32 GiB
//! pass through them. Speeds are printed, never asserted. The ignored test
//! `remote_bench` is `scripts/bench-remote` (docs/BENCHMARKS.md, "Sector
//! files at real size").

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sealfarm_schemas::RegisteredSealProof;
use sealfarm_tests::devminer::{add_piece_params, sector_ref, SealReport};
use sealfarm_tests::{free_local_address, wait_for_workers, BridgeFarm, FarmProcess};
use sha2::{Digest, Sha256};

const PROOF: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
/// A 32 GiB sector's sealed and unsealed file, and a layer file.
const SECTOR_SIZE: u64 = 32 << 30;
/// One `sc-02-data-tree-r-last-N.dat` of a finalized 32 GiB sector.
const TREE_R_LAST: usize = 9_633_472;
/// The peak resident memory a process may reach while serving the files.
const RSS_BOUND: u64 = 150 << 20;
const SECRET: &str = "farm-secret";

/// The known bytes of a sparse file of `size` bytes: (offset, bytes).
fn marks(size: u64) -> Vec<(u64, Vec<u8>)> {
    vec![(0, b"first bytes of the file".to_vec()), (size / 2 + 4093, b"the middle".to_vec()), (size - 1, vec![0xA5])]
}

/// A sparse file of `size` bytes holding [`marks`].
fn sparse_file(path: &Path, size: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, bytes) in marks(size) {
        file.write_all_at(&bytes, offset).unwrap();
    }
}

/// `len` bytes of xorshift64* from `seed`.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A sector's files under a sealing path: sealed and unsealed of 32 GiB, a
/// finalized cache (eight tree-r-last files, `p_aux`, `t_aux`); with
/// `layer`, the cache also holds a 32 GiB `sc-02-data-layer-1.dat` (a cache
/// before finalize).
fn sector_files(root: &Path, number: u64, layer: bool) {
    let name = format!("s-t01000-{number}");
    for kind in ["sealed", "unsealed", "cache"] {
        std::fs::create_dir_all(root.join(kind)).unwrap();
    }
    sparse_file(&root.join("sealed").join(&name), SECTOR_SIZE);
    sparse_file(&root.join("unsealed").join(&name), SECTOR_SIZE);
    let cache = root.join("cache").join(&name);
    std::fs::create_dir_all(&cache).unwrap();
    for n in 0..8 {
        let path = cache.join(format!("sc-02-data-tree-r-last-{n}.dat"));
        std::fs::write(path, pseudo_random(number * 100 + n, TREE_R_LAST)).unwrap();
    }
    std::fs::write(cache.join("p_aux"), pseudo_random(number, 64)).unwrap();
    std::fs::write(cache.join("t_aux"), pseudo_random(number + 7, 1234)).unwrap();
    if layer {
        sparse_file(&cache.join("sc-02-data-layer-1.dat"), SECTOR_SIZE);
    }
}

/// What a tar entry should hold, from the file on disk: its size and, for
/// files up to 64 MiB, its sha256 (larger ones are checked by their marks).
fn expected_entries(cache: &Path) -> BTreeMap<String, (u64, Option<String>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(cache).unwrap() {
        let entry = entry.unwrap();
        let size = entry.metadata().unwrap().len();
        let digest = (size <= 64 << 20).then(|| hex(&Sha256::digest(std::fs::read(entry.path()).unwrap())));
        out.insert(entry.file_name().to_string_lossy().into_owned(), (size, digest));
    }
    out
}

/// A flat tar's length worked out from the format: a 512-byte header per
/// file (these names need no long-name entry), the data padded to 512
/// bytes, two zero blocks at the end.
fn tar_size(cache: &Path) -> u64 {
    expected_entries(cache).values().map(|(size, _)| 512 + size.next_multiple_of(512)).sum::<u64>() + 1024
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The peak resident memory of a process while it is watched: its `VmHWM`
/// is reset (`/proc/PID/clear_refs`) and `VmRSS` sampled every 10 ms.
struct RssWatch {
    pid: u32,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

/// A `/proc/PID/status` memory field (`VmRSS:`, `VmHWM:`) in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix(" kB")?.parse::<u64>().ok());
    kib.unwrap_or(0) << 10
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(Ordering::Relaxed) {
                peak = peak.max(status_bytes(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssWatch { pid, stop, sampler }
    }

    /// The peak in bytes: the largest sample or `VmHWM`, whichever is larger.
    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.sampler.join().unwrap();
        sampled.max(status_bytes(self.pid, "VmHWM:"))
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Bytes a process has read (`rchar` of `/proc/PID/io`: reads of holes too).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Whether the process stopped reading: under 16 MiB read in a second, a
/// second after the download was dropped (a reader that went on would read
/// gigabytes of the sparse file in that second).
async fn stops_reading(pid: u32) -> (bool, u64) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = bytes_read(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = bytes_read(pid) - before;
    (read < 16 << 20, read)
}

/// `/remote` of one bridge, with a miner's admin token.
struct Remote {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Remote {
    async fn get(&self, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}/{path}", self.base)).bearer_auth(&self.token);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send().await.unwrap()
    }
}

fn header<'a>(answer: &'a reqwest::Response, name: &str) -> &'a str {
    answer.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

/// A download read as it arrives: its length, the bytes at the watched
/// (offset, length) places of the body, and the time it took.
struct Body {
    length: u64,
    watched: Vec<Vec<u8>>,
    seconds: f64,
}

/// Reads a body to its end (or `stop_after` bytes) without holding it.
async fn read_body(answer: reqwest::Response, watch: &[(u64, usize)], stop_after: Option<u64>) -> Body {
    let started = Instant::now();
    let mut watched = vec![Vec::new(); watch.len()];
    let mut length = 0u64;
    let mut stream = answer.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for ((offset, len), out) in watch.iter().zip(&mut watched) {
            let (start, end) = (*offset, offset + *len as u64);
            let (from, to) = (start.max(length), end.min(length + chunk.len() as u64));
            if from < to {
                out.extend_from_slice(&chunk[(from - length) as usize..(to - length) as usize]);
            }
        }
        length += chunk.len() as u64;
        if stop_after.is_some_and(|stop| length >= stop) {
            break;
        }
    }
    Body { length, watched, seconds: started.elapsed().as_secs_f64() }
}

/// A tar entry as it arrived: its size, sha256 (entries up to 64 MiB), the
/// bytes at its [`marks`] (larger ones) and how many bytes came.
#[derive(Debug)]
struct Entry {
    name: String,
    size: u64,
    plain: bool,
    sha256: Option<String>,
    marks_ok: bool,
    received: u64,
}

/// A [`Read`] over the chunks of a download, handed over by the async side.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<axum::body::Bytes>,
    current: axum::body::Bytes,
    total: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        self.total += n as u64;
        Ok(n)
    }
}

/// A cache tar read as it arrives (to its end, or `stop_after` bytes):
/// its entries, the bytes received, the time, and the tar reader's error if
/// the tar ended early.
async fn read_tar(answer: reqwest::Response, stop_after: Option<u64>) -> (Vec<Entry>, u64, f64, Option<String>) {
    let started = Instant::now();
    let (tx, chunks) = tokio::sync::mpsc::channel(8);
    let parser = tokio::task::spawn_blocking(move || {
        let mut reader = ChunkReader { chunks, current: axum::body::Bytes::new(), total: 0 };
        let mut entries = Vec::new();
        let error = parse_tar(&mut reader, &mut entries).err().map(|e| e.to_string());
        // What follows the last entry (the end blocks) counts too.
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        (entries, reader.total, error)
    });
    let mut stream = answer.bytes_stream();
    let mut sent = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        sent += chunk.len() as u64;
        if tx.send(chunk).await.is_err() || stop_after.is_some_and(|stop| sent >= stop) {
            break;
        }
    }
    drop((tx, stream));
    let (entries, total, error) = parser.await.unwrap();
    (entries, total, started.elapsed().as_secs_f64(), error)
}

fn parse_tar(reader: &mut ChunkReader, entries: &mut Vec<Entry>) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let size = entry.header().size()?;
        let plain = entry.header().entry_type() == tar::EntryType::Regular;
        entries.push(Entry { name, size, plain, sha256: None, marks_ok: false, received: 0 });
        let last = entries.last_mut().unwrap();
        let mut hasher = (size <= 64 << 20).then(Sha256::new);
        let expected = marks(size);
        let mut seen = vec![Vec::new(); expected.len()];
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if let Some(hasher) = &mut hasher {
                hasher.update(&buf[..n]);
            }
            for ((offset, bytes), out) in expected.iter().zip(&mut seen) {
                let (start, end) = (*offset, offset + bytes.len() as u64);
                let (from, to) = (start.max(last.received), end.min(last.received + n as u64));
                if from < to {
                    out.extend_from_slice(&buf[(from - last.received) as usize..(to - last.received) as usize]);
                }
            }
            last.received += n as u64;
        }
        last.sha256 = hasher.map(|h| hex(&h.finalize()));
        last.marks_ok = expected.iter().zip(&seen).all(|((_, bytes), got)| bytes == got);
    }
    Ok(())
}

/// Checks a complete cache tar against the folder it came from.
fn check_tar(what: &str, entries: &[Entry], cache: &Path) {
    let expected = expected_entries(cache);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(names, expected_names, "{what}: the cache's files, in name order");
    for entry in entries {
        let (size, sha256) = &expected[&entry.name];
        assert!(entry.plain, "{what}: {} is a plain tar entry", entry.name);
        assert_eq!((entry.size, entry.received), (*size, *size), "{what}: {} arrived whole", entry.name);
        match sha256 {
            Some(sha256) => assert_eq!(entry.sha256.as_ref(), Some(sha256), "{what}: sha256 of {}", entry.name),
            None => assert!(entry.marks_ok, "{what}: the marked bytes of {}", entry.name),
        }
    }
}

/// Range requests on a 32 GiB sparse file: 206 with the marked bytes, 416
/// past the end.
async fn check_ranges(what: &str, remote: &Remote, path: &str) {
    let size = SECTOR_SIZE;
    let [(_, first), (middle, middle_bytes), (_, last)] = <[_; 3]>::try_from(marks(size)).unwrap();
    let cases: Vec<(String, u64, u64, Vec<u8>)> = vec![
        ("bytes=0-0".into(), 0, 0, first[..1].to_vec()),
        (format!("bytes={0}-{0}", size - 1), size - 1, size - 1, last.clone()),
        (format!("bytes={}-{}", middle, middle + 9), middle, middle + 9, middle_bytes.clone()),
        (format!("bytes={}-", size - 4096), size - 4096, size - 1, [vec![0; 4095], last.clone()].concat()),
        ("bytes=-1".into(), size - 1, size - 1, last.clone()),
    ];
    for (range, start, end, bytes) in cases {
        let answer = remote.get(path, Some(&range)).await;
        assert_eq!(answer.status(), 206, "{what} {path} {range}");
        assert_eq!(header(&answer, "content-range"), format!("bytes {start}-{end}/{size}"), "{what} {range}");
        assert_eq!(header(&answer, "content-length"), (end - start + 1).to_string(), "{what} {range}");
        assert_eq!(header(&answer, "content-type"), "application/octet-stream", "{what} {range}");
        assert_eq!(header(&answer, "accept-ranges"), "bytes", "{what} {range}");
        let body = read_body(answer, &[(0, bytes.len())], None).await;
        assert_eq!(body.length, end - start + 1, "{what} {range}");
        assert_eq!(body.watched[0], bytes, "{what} {range}: the bytes of the file");
    }
    for range in [format!("bytes={size}-"), format!("bytes={}-{}", size + 10, size + 20)] {
        let answer = remote.get(path, Some(&range)).await;
        assert_eq!(answer.status(), 416, "{what} {path} {range}");
        assert_eq!(header(&answer, "content-range"), format!("bytes */{size}"), "{what} {range}");
    }
}

/// A whole 32 GiB file: 200, its length, the marked bytes; MiB/s.
async fn check_full_file(what: &str, remote: &Remote, path: &str) -> f64 {
    let answer = remote.get(path, None).await;
    assert_eq!(answer.status(), 200, "{what} {path}");
    assert_eq!(header(&answer, "content-length"), SECTOR_SIZE.to_string(), "{what} {path}");
    assert_eq!(header(&answer, "accept-ranges"), "bytes", "{what} {path}");
    assert_eq!(header(&answer, "content-type"), "application/octet-stream", "{what} {path}");
    let expected = marks(SECTOR_SIZE);
    let watch: Vec<(u64, usize)> = expected.iter().map(|(o, b)| (*o, b.len())).collect();
    let body = read_body(answer, &watch, None).await;
    assert_eq!(body.length, SECTOR_SIZE, "{what} {path}: every byte");
    for ((offset, bytes), got) in expected.iter().zip(&body.watched) {
        assert_eq!(got, bytes, "{what} {path}: the bytes at {offset}");
    }
    mib(body.length) / body.seconds
}

/// A whole cache tar: 200, `Content-Length` equal to the bytes sent, the
/// files; MiB/s.
async fn check_full_tar(what: &str, remote: &Remote, path: &str, cache: &Path) -> f64 {
    let answer = remote.get(path, Some("bytes=0-0")).await;
    assert_eq!(answer.status(), 200, "{what} {path}: a Range on a tar is ignored");
    assert_eq!(header(&answer, "content-type"), "application/x-tar", "{what} {path}");
    let announced: u64 = header(&answer, "content-length").parse().expect("a Content-Length");
    assert_eq!(announced, tar_size(cache), "{what} {path}: the tar's exact length");
    let (entries, total, seconds, error) = read_tar(answer, None).await;
    assert_eq!(error, None, "{what} {path}");
    assert_eq!(total, announced, "{what} {path}: Content-Length is the bytes sent");
    check_tar(what, &entries, cache);
    mib(total) / seconds
}

/// A bridge and a worker that keeps its files (worker-local storage).
struct LocalFarm {
    farm: BridgeFarm,
    worker: FarmProcess,
    /// The worker's sealing path.
    local: PathBuf,
    /// The worker's file server, `http://ADDRESS`.
    files: String,
}

/// Starts a bridge (worker-local storage allowed) and a worker serving
/// its own sealing path; AddPiece of each sector in `local_sectors` runs on
/// the worker, so the bridge records the worker as the holder.
async fn farm_with_local_worker(label: &str, local_sectors: &[u64]) -> LocalFarm {
    let farm = BridgeFarm::start_with(label, &["--files-token", SECRET]).await;
    let local = farm.dir.path().join("local-box-disk");
    let files = free_local_address().to_string();
    let extra = ["--sealing-path", local.to_str().unwrap(), "--files-listen", &files, "--files-token", SECRET];
    let worker = farm.start_worker_with("local-box", "ap", "2KiB", &extra);
    wait_for_workers(&farm.vhost, &["local-box"], Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // the bridge reads the same heartbeats
    for number in local_sectors {
        let sector = sector_ref(*number, PROOF);
        let mut report = SealReport { sector, calls: Vec::new(), verified: false };
        farm.miner
            .call(&farm.worker, "AddPiece", add_piece_params(sector), Duration::from_secs(120), &mut report)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", farm.bridge.log_text(), worker.log_text()));
    }
    LocalFarm { farm, worker, local, files: format!("http://{files}") }
}

fn remote_of(farm: &BridgeFarm) -> Remote {
    Remote {
        http: reqwest::Client::new(),
        base: format!("http://{}/remote", farm.listen),
        token: farm.miner.mint(&["admin"]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sector_files_of_32_gib_stream_through_remote_and_the_worker_proxy() {
    // Sectors 1 and 2 in the bridge's (shared) storage, 3 and 4 on the worker.
    let LocalFarm { farm, worker, local, .. } = farm_with_local_worker("big-files", &[3, 4]).await;
    let shared = farm.dir.path().join("sealing");
    sector_files(&shared, 1, false);
    sector_files(&shared, 2, true);
    sector_files(&local, 3, false);
    sector_files(&local, 4, true);
    let remote = remote_of(&farm);
    let (bridge_pid, worker_pid) = (farm.bridge.pid(), worker.pid());
    let logs = || format!("bridge log:\n{}\nworker log:\n{}", farm.bridge.log_text(), worker.log_text());

    // Shared storage: the bridge reads the files itself.
    let watch = RssWatch::start(bridge_pid);
    check_ranges("shared", &remote, "unsealed/s-t01000-1").await;
    check_ranges("shared", &remote, "sealed/s-t01000-1").await;
    let sealed_rate = check_full_file("shared", &remote, "sealed/s-t01000-1").await;
    let finalized_rate = check_full_tar("shared", &remote, "cache/s-t01000-1", &shared.join("cache/s-t01000-1")).await;
    let unfinalized_rate =
        check_full_tar("shared", &remote, "cache/s-t01000-2", &shared.join("cache/s-t01000-2")).await;
    // A client that goes away mid-file: the bridge stops reading.
    let answer = remote.get("sealed/s-t01000-1", None).await;
    let partial = read_body(answer, &[], Some(1 << 30)).await;
    assert!(partial.length >= 1 << 30);
    let (stopped, read) = stops_reading(bridge_pid).await;
    let bridge_peak = watch.peak();
    eprintln!(
        "shared storage: sealed 32 GiB at {sealed_rate:.0} MiB/s, finalized cache tar at {finalized_rate:.0} MiB/s, \
         unfinalized cache tar (32 GiB layer) at {unfinalized_rate:.0} MiB/s; bridge peak RSS {:.1} MiB",
        mib(bridge_peak)
    );
    assert!(stopped, "the bridge read {read} bytes in the second after its client went away\n{}", logs());
    assert!(bridge_peak < RSS_BOUND, "bridge peak RSS {bridge_peak} bytes\n{}", logs());

    // Worker-local storage: the bridge passes the request (and its Range) to
    // the worker's file server and streams the answer back.
    let (bridge_watch, worker_watch) = (RssWatch::start(bridge_pid), RssWatch::start(worker_pid));
    check_ranges("proxied", &remote, "unsealed/s-t01000-3").await;
    check_ranges("proxied", &remote, "sealed/s-t01000-3").await;
    let sealed_rate = check_full_file("proxied", &remote, "sealed/s-t01000-3").await;
    let finalized_rate = check_full_tar("proxied", &remote, "cache/s-t01000-3", &local.join("cache/s-t01000-3")).await;
    // The unfinalized tar: p_aux, then 4 GiB of the 32 GiB layer; then the
    // client goes away, and the bridge and the worker stop reading.
    let answer = remote.get("cache/s-t01000-4", None).await;
    assert_eq!(answer.status(), 200, "{}", logs());
    let announced: u64 = header(&answer, "content-length").parse().expect("a Content-Length through the proxy");
    let cache = local.join("cache/s-t01000-4");
    let layer = std::fs::metadata(cache.join("sc-02-data-layer-1.dat")).unwrap().len();
    assert_eq!(announced, tar_size(&cache), "the tar's exact length");
    let (entries, received, seconds, error) = read_tar(answer, Some(4 << 30)).await;
    assert!(error.is_some(), "the tar was cut short");
    assert_eq!(entries[0].name, "p_aux");
    assert_eq!(entries[0].sha256, expected_entries(&cache)["p_aux"].1, "p_aux came whole");
    assert_eq!((entries[1].name.as_str(), entries[1].size, entries[1].plain), ("sc-02-data-layer-1.dat", layer, true));
    assert!(entries[1].received >= 3 << 30, "{:?}", entries[1]);
    let (bridge_stopped, bridge_read) = stops_reading(bridge_pid).await;
    let (worker_stopped, worker_read) = stops_reading(worker_pid).await;
    let (bridge_peak, worker_peak) = (bridge_watch.peak(), worker_watch.peak());
    eprintln!(
        "worker-local storage through the bridge: sealed 32 GiB at {sealed_rate:.0} MiB/s, finalized cache tar at \
         {finalized_rate:.0} MiB/s, 4 GiB of the unfinalized tar at {:.0} MiB/s; peak RSS bridge {:.1} MiB, \
         worker {:.1} MiB",
        mib(received) / seconds,
        mib(bridge_peak),
        mib(worker_peak)
    );
    assert!(bridge_stopped && worker_stopped, "read after the client left: bridge {bridge_read}, worker {worker_read}");
    assert!(bridge_peak < RSS_BOUND, "bridge peak RSS {bridge_peak} bytes\n{}", logs());
    assert!(worker_peak < RSS_BOUND, "worker peak RSS {worker_peak} bytes\n{}", logs());
}

/// Downloads `url` with curl to /dev/null: (bytes, seconds, HTTP status).
fn curl(url: &str, token: &str) -> (u64, f64, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.split_whitespace();
    let mut next = || fields.next().unwrap_or_else(|| panic!("curl printed {text:?}"));
    (next().parse().unwrap(), next().parse().unwrap(), next().to_string())
}

/// What any server could do here: one answer to one request, from a thread
/// that reads the file 1 MiB at a time and writes it to the socket (no
/// framework, no zero-copy).
fn bare_server(file: PathBuf) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8];
        while !request.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap() == 1 {
            request.push(byte[0]);
        }
        let mut file = std::fs::File::open(file).unwrap();
        let length = file.metadata().unwrap().len();
        write!(socket, "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf).unwrap() {
                0 => break,
                n => socket.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    address
}

/// `scripts/bench-remote`: a full download of a 32 GiB sparse sealed file
/// (`SEALFARM_BENCH_GIB` to change the size) with curl on loopback, through
/// the bridge from its own storage, from the worker's file server directly,
/// and through the bridge from the worker (worker-local storage), and from a
/// bare server as the yardstick of what this machine's loopback allows; each
/// against `cat FILE > /dev/null` of the same file, with the peak RSS of the
/// bridge and the worker during the download. Prints a Markdown table.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: scripts/bench-remote"]
async fn remote_bench() {
    let gib: u64 = std::env::var("SEALFARM_BENCH_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let size = gib << 30;
    let LocalFarm { farm, worker, local, files } = farm_with_local_worker("remote-bench", &[3]).await;
    let shared = farm.dir.path().join("sealing");
    for (root, number) in [(&shared, 1), (&local, 3)] {
        std::fs::create_dir_all(root.join("sealed")).unwrap();
        sparse_file(&root.join(format!("sealed/s-t01000-{number}")), size);
    }
    let remote = remote_of(&farm);
    let (bridge, farm_token) = (&remote.base, &remote.token);
    let (own, held) = (shared.join("sealed/s-t01000-1"), local.join("sealed/s-t01000-3"));
    let bare = format!("http://{}/", bare_server(own.clone()));
    let routes = [
        ("bare server (a thread: read 1 MiB, write it to the socket)", bare, farm_token, own.clone()),
        ("bridge, its own storage", format!("{bridge}/sealed/s-t01000-1"), farm_token, own),
        (
            "worker's file server, directly",
            format!("{files}/files/sealed/s-t01000-3"),
            &SECRET.to_string(),
            held.clone(),
        ),
        ("bridge → worker (worker-local storage)", format!("{bridge}/sealed/s-t01000-3"), farm_token, held),
    ];
    println!("| route | MiB/s | `cat` MiB/s | ÷ cat | bridge peak RSS MiB | worker peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (route, url, token, file) in routes {
        // The first read of a hole fills the page cache with zero pages: an
        // untimed cat first, so cat and curl find the file as cached as each
        // other (a file larger than the memory is read from the disk by both).
        let cat = || {
            let started = Instant::now();
            let cat = std::process::Command::new("sh").arg("-c").arg("cat \"$0\" > /dev/null").arg(&file).status();
            assert!(cat.unwrap().success());
            mib(size) / started.elapsed().as_secs_f64()
        };
        cat();
        let cat_rate = cat();
        let (bridge, worker_rss) = (RssWatch::start(farm.bridge.pid()), RssWatch::start(worker.pid()));
        let (url, token) = (url.clone(), token.clone());
        let (bytes, seconds, status) = tokio::task::spawn_blocking(move || curl(&url, &token)).await.unwrap();
        assert_eq!((bytes, status.as_str()), (size, "200"), "{route}");
        let rate = mib(bytes) / seconds;
        println!(
            "| {route} | {rate:.0} | {cat_rate:.0} | {:.2} | {:.1} | {:.1} |",
            rate / cat_rate,
            mib(bridge.peak()),
            mib(worker_rss.peak())
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n{gib} GiB sparse file, curl -o /dev/null on loopback; peak RSS: VmHWM reset before each download; \
         load average at the end: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}
