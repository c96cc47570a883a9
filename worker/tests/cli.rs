//! The worker's command line as an operator meets it: parameter fetching
//! with digest checks against a local HTTP server, and clear refusals.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealfarm-worker"))
}

/// Serves `files` (URL path → body) over HTTP/1.1 until the test ends.
fn serve(files: Vec<(String, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(body);
                }
                None => {
                    let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    format!("http://{address}/ipfs/")
}

fn digest(bytes: &[u8]) -> String {
    blake2b_simd::Params::new().hash_length(64).hash(bytes).to_hex()[..32].to_string()
}

#[test]
fn params_fetch_keeps_good_files_and_removes_corrupted_ones() {
    let good = b"good parameter bytes".repeat(1000);
    let corrupted = b"these bytes do not match the manifest".to_vec();
    let gateway = serve(vec![("/ipfs/QmGood".to_string(), good.clone()), ("/ipfs/QmBad".to_string(), corrupted)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("parameters.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "v28-test-good.params": {"cid": "QmGood", "digest": digest(&good), "sector_size": 2048},
            "v28-test-bad.params": {"cid": "QmBad", "digest": digest(b"what was published"), "sector_size": 2048},
            "v28-test-other-size.params": {"cid": "QmNone", "digest": "00", "sector_size": 8388608}
        })
        .to_string(),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let out = worker()
        .args(["params", "fetch", "--sector-size", "2KiB", "--manifest"])
        .arg(&manifest)
        .env("IPFS_GATEWAY", &gateway)
        .env("FIL_PROOFS_PARAMETER_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupted download must fail the command:\n{stderr}");
    assert!(stderr.contains("v28-test-bad.params") && stderr.contains("digest mismatch"), "{stderr}");
    assert_eq!(std::fs::read(cache.join("v28-test-good.params")).unwrap(), good);
    let left: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "only the good file stays: {left:?}");

    // A second run finds the good file in place and still refuses the bad one.
    let again = worker()
        .args(["params", "fetch", "--sector-size", "2KiB", "--manifest"])
        .arg(&manifest)
        .env("IPFS_GATEWAY", &gateway)
        .env("FIL_PROOFS_PARAMETER_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("v28-test-good.params: present, digest ok"), "{stderr}");
    assert!(!again.status.success());
}

#[test]
fn params_generate_refuses_real_sector_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = worker()
        .args(["params", "generate", "--sector-size", "32GiB"])
        .env("FIL_PROOFS_PARAMETER_CACHE", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing") && stderr.contains("params fetch --sector-size 32GiB"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was written");
}

#[test]
fn a_c2_worker_without_parameters_refuses_to_start_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = worker()
        .args(["run", "--stages", "c2", "--sector-sizes", "2KiB", "--cpu-proving", "--amqp", "amqp://127.0.0.1:1/%2f"])
        .arg("--sealing-path")
        .arg(dir.path().join("sealing"))
        .env("FIL_PROOFS_PARAMETER_CACHE", dir.path().join("empty"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("params generate --sector-size 2KiB"), "{stderr}");
}

#[test]
fn bad_flags_name_the_problem() {
    let out = worker().args(["run", "--sector-sizes", "3KiB"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a Filecoin sector size"), "{stderr}");
    let out = worker().args(["run", "--stages", "pc3"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown stage"));
}

#[test]
fn bench_times_every_stage_it_runs_with_the_worker_code() {
    let out =
        worker().args(["bench", "--sector-size", "2KiB", "--stages", "ap,pc1,pc2,c1", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let timings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let stages: Vec<&str> = timings.iter().map(|t| t["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["ap", "pc1", "pc2", "c1"]);
    assert!(timings.iter().all(|t| t["millis"].as_f64().unwrap() > 0.0), "{timings:?}");
    // A CPU build: nothing ran on a GPU; every stage has its peak memory.
    assert!(timings.iter().all(|t| t["gpu"] == false), "{timings:?}");
    assert!(timings.iter().all(|t| t["peak_rss_bytes"].as_u64().unwrap() > 1 << 20), "{timings:?}");
    // --gpu is refused by a build without GPU code, naming the fix.
    let out = worker().args(["bench", "--gpu"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features opencl"), "{out:?}");
}

/// `bench --warm-up` runs the warm-up a GPU worker runs (here on the CPU)
/// before the timed stages and shows it apart: for PC2, a 2 KiB sector AP→PC2.
#[test]
fn bench_shows_the_warm_up_before_the_stages_it_warms() {
    let out = worker()
        .args(["bench", "--sector-size", "2KiB", "--stages", "ap,pc1,pc2", "--warm-up", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let timings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(bool, &str, &str)> = timings
        .iter()
        .map(|t| (t["warm_up"] == true, t["sector_size"].as_str().unwrap(), t["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            (true, "2KiB", "ap"),
            (true, "2KiB", "pc1"),
            (true, "2KiB", "pc2"),
            (false, "2KiB", "ap"),
            (false, "2KiB", "pc1"),
            (false, "2KiB", "pc2")
        ]
    );
    assert!(timings.iter().all(|t| t["millis"].as_f64().unwrap() > 0.0), "{timings:?}");
    // Nothing to warm without pc2 or c2: refused, naming what to give.
    let out = worker().args(["bench", "--stages", "ap,pc1", "--warm-up"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stages with pc2 or c2"), "{out:?}");
}

#[test]
fn params_status_lists_what_the_cache_holds() {
    let dir = tempfile::tempdir().unwrap();
    let name = "v28-stacked-proof-of-replication-merkletree-poseidon_hasher-8-0-0-sha256_hasher-032d3138d22506ec0082ed72b2dcba18df18477904e35bafee82b3793b06832f.vk";
    std::fs::write(dir.path().join(name), b"not the published key").unwrap();
    let out =
        worker().args(["params", "status", "--verify"]).env("FIL_PROOFS_PARAMETER_CACHE", dir.path()).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |size: &str, kind: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(size) && l.split_whitespace().nth(1) == Some(kind))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("2KiB", "vk").contains("local"), "a file that is not the published one is flagged:\n{stdout}");
    assert!(line("2KiB", "params").contains("missing"), "{stdout}");
    assert!(line("32GiB", "params").contains("missing"), "{stdout}");
}

fn probe(ocl_icd_vendors: Option<&std::path::Path>) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let mut command = worker();
    command.args(["probe", "--json", "--path"]).arg(dir.path());
    if let Some(vendors) = ocl_icd_vendors {
        command.env("OCL_ICD_VENDORS", vendors);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let hw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(hw["cores"].as_u64().unwrap() >= 1 && hw["memory_bytes"].as_u64().unwrap() > 0, "{hw:#}");
    assert_eq!(hw["storage"][0]["path"], dir.path().to_str().unwrap());
    assert!(hw["storage"][0]["available_bytes"].as_u64().unwrap() > 0);
    hw
}

#[test]
fn probe_lists_the_pocl_opencl_device_scripts_setup_installs() {
    let hw = probe(None);
    let devices = hw["opencl_devices"].as_array().unwrap();
    assert!(
        devices.iter().any(|d| d["platform"] == "Portable Computing Language" && d["kind"] == "cpu"),
        "PoCL (pocl-opencl-icd) should give one CPU device: {hw:#}"
    );
}

#[test]
fn probe_without_any_opencl_icd_reports_no_devices_and_says_why() {
    let empty = tempfile::tempdir().unwrap();
    let hw = probe(Some(empty.path()));
    assert_eq!(hw["opencl_devices"], serde_json::json!([]), "{hw:#}");
    let note = hw["opencl_note"].as_str().unwrap();
    assert!(note.contains("OpenCL"), "{note}");
}

/// `sealfarm-worker resources --json` with extra arguments and environment.
fn plan(args: &[&str], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut command = worker();
    command.args(["resources", "--json", "--sector-sizes", "2KiB"]).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entry<'a>(plan: &'a [serde_json::Value], stage: &str) -> &'a serde_json::Value {
    plan.iter().find(|p| p["stage"] == stage).unwrap_or_else(|| panic!("no {stage} in {plan:#?}"))
}

#[test]
fn without_a_gpu_c2_is_refused_unless_cpu_proving_is_allowed() {
    let plan1 = plan(&["--stages", "pc1,c2"], &[]);
    assert_eq!(entry(&plan1, "c2")["slots"], 0);
    assert!(entry(&plan1, "c2")["why"].as_str().unwrap().contains("needs a GPU"), "{plan1:#?}");
    assert!(entry(&plan1, "pc1")["slots"].as_u64().unwrap() >= 1);
    let plan2 = plan(&["--stages", "pc1,c2", "--cpu-proving"], &[]);
    assert!(entry(&plan2, "c2")["slots"].as_u64().unwrap() >= 1, "{plan2:#?}");
    assert!(entry(&plan2, "c2")["why"].as_str().unwrap().contains("on CPU"), "{plan2:#?}");
}

#[test]
fn lotus_style_overrides_and_stage_switches_change_what_a_worker_takes() {
    let cores = probe(None)["cores"].as_u64().unwrap();
    let default = plan(&["--stages", "ap,pc1,c1"], &[]);
    assert_eq!(entry(&default, "pc1")["slots"], cores, "one thread per PC1: a slot per core");
    // The environment, as lotus-worker reads it: size-specific, then general.
    let env = plan(&["--stages", "ap,pc1,c1"], &[("PC1_2K_MAX_CONCURRENT", "1"), ("C1_MAX_CONCURRENT", "1")]);
    assert_eq!(entry(&env, "pc1")["slots"], 1);
    assert_eq!(entry(&env, "pc1")["overrides"][0], "PC1_2K_MAX_CONCURRENT=1 (env)");
    assert_eq!(entry(&env, "c1")["slots"], 1);
    assert_eq!(entry(&env, "ap")["slots"], cores, "other stages keep their slots");
    // The config file, and a stage switch like lotus-worker's --precommit1=false.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(&config, "stages = [\"ap\", \"pc1\", \"c1\"]\n[resources]\nAP_2K_MAX_CONCURRENT = 1\n").unwrap();
    let file = plan(&["--config", config.to_str().unwrap(), "--pc1=false"], &[("AP_MAX_CONCURRENT", "5")]);
    let stages: Vec<&str> = file.iter().map(|p| p["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["ap", "c1"], "--pc1=false drops PC1");
    assert_eq!(
        entry(&file, "ap")["slots"],
        1,
        "the size-specific name in the file beats the general one in the environment"
    );
    // A typo in the config file is an error that names it.
    std::fs::write(&config, "[resources]\nAP_2KB_MAX_CONCURRENT = 1\n").unwrap();
    let out = worker().args(["resources", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"AP_2KB_MAX_CONCURRENT\" is not an override name"));
}

#[test]
fn a_worker_that_fits_no_stage_does_not_start_and_shows_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = worker()
        .args(["run", "--stages", "c2", "--sector-sizes", "2KiB", "--amqp", "amqp://127.0.0.1:1/%2f"])
        .arg("--sealing-path")
        .arg(dir.path().join("sealing"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fits none of the stages") && stderr.contains("needs a GPU"), "{stderr}");
}
