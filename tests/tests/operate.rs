//! Operators see and steer the farm (issue 6), with real workers, a real
//! broker and the miner stand-in: the `workers` / `jobs` / `queues` views and
//! their `--json`, the controls (drain, resume-worker, requeue, abort,
//! dead-letters list/replay/purge) end to end, and the Prometheus endpoints
//! of the bridge and a worker after a sealing run — including every series
//! the Grafana dashboard and the alert rules in `deploy/` use.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use sealfarm_schemas::{CallId, RegisteredSealProof, SectorRef};
use sealfarm_tests::devminer::{sector_ref, SealReport};
use sealfarm_tests::{wait_for_workers, BridgeFarm, Publisher};
use serde_json::{json, Value};

const KIB2: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
const MIB8: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_8MIB_V1_1;
const WAIT: Duration = Duration::from_secs(120);

/// A call the miner makes and waits for; its output (the call must succeed).
async fn call(farm: &BridgeFarm, method: &str, params: Value) -> Value {
    let mut report = SealReport { sector: sector_ref(0, KIB2), calls: Vec::new(), verified: false };
    farm.miner
        .call(&farm.worker, method, params, WAIT, &mut report)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e:#}\n{}", farm.bridge.log_text()))
}

/// A call the miner makes without waiting for its Return.
async fn start(farm: &BridgeFarm, method: &str, params: Value) -> CallId {
    farm.worker.client.call(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn add_piece(sector: SectorRef) -> Value {
    sealfarm_tests::devminer::add_piece_params(sector)
}

fn ticket() -> String {
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

/// The row of `jobs --json` for a call.
fn job<'a>(jobs: &'a Value, id: &CallId) -> Option<&'a Value> {
    jobs.as_array()?.iter().find(|j| j["call_id"] == id.id.to_string())
}

fn state_of(jobs: &Value, id: &CallId) -> String {
    job(jobs, id).and_then(|j| j["state"].as_str()).unwrap_or("absent").to_string()
}

fn worker_state(workers: &Value, id: &str) -> String {
    let found = workers.as_array().and_then(|w| w.iter().find(|w| w["id"] == id));
    found.and_then(|w| w["state"].as_str()).unwrap_or("absent").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn views_show_the_farm_and_drain_requeue_abort_do_what_they_say() {
    let farm = BridgeFarm::start("operate").await;
    let stages = "ap,pc1,pc2,c1,fin,ru";
    let _a = farm.start_worker_with("w-a", stages, "2KiB,8MiB", &[]);
    let _b = farm.start_worker_with("w-b", stages, "2KiB,8MiB", &[]);
    wait_for_workers(&farm.vhost, &["w-a", "w-b"], Duration::from_secs(60)).await.unwrap();
    let workers =
        farm.wait_json(&["workers"], Duration::from_secs(30), |w| w.as_array().is_some_and(|w| w.len() == 2)).await;
    for worker in workers.as_array().unwrap() {
        assert_eq!(worker["state"], "enabled", "{worker}");
        assert!(worker["hardware"]["cores"].as_u64().unwrap() > 0, "{worker}");
        let capacity = worker["capacity"].as_array().unwrap();
        assert!(capacity.iter().any(|c| c["stage"] == "pc1" && c["sector_size"] == "8MiB"), "{worker}");
    }
    let text = farm.cli_ok(&["workers"]);
    for wanted in
        ["Worker w-a, host ", "Worker w-b, host ", "\tTASK: AP(0/", "PC1(0/", "\tCPU:  [", "\tRAM:  [", "\tVMEM: ["]
    {
        assert!(text.contains(wanted), "`workers` lacks {wanted:?}:\n{text}");
    }

    // w-a drained: the 8 MiB sector goes to w-b; w-b drained while its PC1
    // runs: it finishes that PC1 and takes nothing new.
    assert!(farm.cli_ok(&["drain", "w-a"]).contains("drains"));
    farm.wait_json(&["workers"], WAIT, |w| worker_state(w, "w-a") == "draining").await;
    let big = sector_ref(10, MIB8);
    let piece = call(&farm, "AddPiece", add_piece(big)).await;
    let pc1 = start(&farm, "SealPreCommit1", json!([big, ticket(), [piece]])).await;
    let jobs = farm.wait_json(&["jobs"], WAIT, |j| state_of(j, &pc1) == "running").await;
    assert_eq!(job(&jobs, &pc1).unwrap()["worker"], "w-b", "{jobs:#}");
    let pc1_short = &pc1.id.simple().to_string()[..8];
    let refused = farm.cli(&["requeue", pc1_short]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("is running on worker w-b"), "{said}");
    assert!(farm.cli_ok(&["drain", "w-b"]).contains("drains"));
    farm.wait_json(&["workers"], WAIT, |w| worker_state(w, "w-b") == "draining").await;
    let returned = farm.miner.wait_for_return(&pc1, WAIT).await.unwrap();
    assert!(returned.params[2].is_null(), "the drained worker finished its PC1: {:?}", returned.params);
    let jobs = farm.wait_json(&["jobs"], WAIT, |j| state_of(j, &pc1) == "done").await;
    assert_eq!(job(&jobs, &pc1).unwrap()["worker"], "w-b");

    // Both drained: a new call waits in its queue.
    let small = sector_ref(11, KIB2);
    let queued = start(&farm, "AddPiece", add_piece(small)).await;
    let jobs = farm.wait_json(&["jobs"], WAIT, |j| state_of(j, &queued) == "queued").await;
    assert!(job(&jobs, &queued).unwrap()["worker"].is_null());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(state_of(&farm.cli_json(&["jobs"]), &queued), "queued", "drained workers took no new task");
    let queues = farm.cli_json(&["queues"]);
    let ap = queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == "sealfarm.task.ap.2KiB").unwrap();
    assert_eq!(ap["ready"], 1, "{queues:#}");
    assert_eq!(ap["consumers"], 0, "drained workers do not consume: {queues:#}");
    let text = farm.cli_ok(&["queues"]);
    assert!(text.contains("sealfarm.task.ap.2KiB") && text.contains("dead letters waiting: 0"), "{text}");
    let text = farm.cli_ok(&["jobs"]);
    let short = &queued.id.simple().to_string()[..8];
    let row = text.lines().find(|l| l.starts_with(short)).unwrap_or_else(|| panic!("no row {short}:\n{text}"));
    assert!(row.contains(" AP ") && row.contains("queued"), "{row}");
    assert!(text.starts_with("ID"), "{text}");

    // requeue: the same call, attempt 2; abort: the miner gets the error.
    let said = farm.cli_ok(&["requeue", short]);
    assert!(said.contains("attempt 2"), "{said}");
    let jobs = farm.cli_json(&["jobs"]);
    assert_eq!(job(&jobs, &queued).unwrap()["attempt"], 2);
    let said = farm.cli_ok(&["abort", short]);
    assert!(said.contains("aborted"), "{said}");
    let returned = farm.miner.wait_for_return(&queued, WAIT).await.unwrap();
    assert!(returned.params[2].to_string().contains("aborted by the operator"), "{:?}", returned.params);
    assert_eq!(state_of(&farm.cli_json(&["jobs"]), &queued), "failed");
    let refused = farm.cli(&["abort", short]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("already has its result"));

    // Resumed, w-a takes work again; the aborted call's leftover tasks are dropped, not returned.
    farm.cli_ok(&["resume-worker", "w-a"]);
    farm.wait_json(&["workers"], WAIT, |w| worker_state(w, "w-a") == "enabled").await;
    let next = sector_ref(12, KIB2);
    let id = start(&farm, "AddPiece", add_piece(next)).await;
    farm.miner.wait_for_return(&id, WAIT).await.unwrap();
    let jobs = farm.wait_json(&["jobs"], WAIT, |j| state_of(j, &id) == "done").await;
    assert_eq!(job(&jobs, &id).unwrap()["worker"], "w-a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(farm.miner.duplicate_returns().is_empty(), "the aborted call was returned once");
    let queues = farm.cli_json(&["queues"]);
    let ap = queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == "sealfarm.task.ap.2KiB").unwrap();
    assert_eq!(ap["ready"], 0, "the resumed worker emptied the queue: {queues:#}");

    // The read token sees but does not steer.
    let read = farm.token("read");
    let refused = farm.cli(&["drain", "w-a", "--token", &read]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin token"));
    let refused = farm.cli(&["workers", "--token", "wrong-token-wrong-token"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    assert!(farm.cli(&["workers", "--token", &read]).status.success());
    let unknown = farm.cli(&["drain", "w-zz"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known: w-a, w-b"), "{unknown:?}");
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_replayed_and_purged_and_metrics_tell_the_story() {
    let farm = BridgeFarm::start("dead-letters").await;
    let worker = farm.start_worker("w-c", "ap,pc1,pc2,c1,fin,ru");
    wait_for_workers(&farm.vhost, &["w-c"], Duration::from_secs(60)).await.unwrap();
    let sector = sector_ref(20, KIB2);
    let piece = call(&farm, "AddPiece", add_piece(sector)).await;
    let pc1_out = call(&farm, "SealPreCommit1", json!([sector, ticket(), [piece]])).await;

    // The cache disk goes away: PC2 is dead-lettered and the miner hears of it.
    let cache = farm.dir.path().join("sealing/cache").join(sector.id.file_name());
    let unplugged = cache.with_extension("unplugged");
    std::fs::rename(&cache, &unplugged).unwrap();
    let pc2 = start(&farm, "SealPreCommit2", json!([sector, pc1_out])).await;
    let returned = farm.miner.wait_for_return(&pc2, WAIT).await.unwrap();
    assert!(returned.params[2].to_string().contains("cache directory"), "{:?}", returned.params);
    farm.wait_json(&["jobs"], WAIT, |j| state_of(j, &pc2) == "dead").await;
    let letters = farm.cli_json(&["dead-letters", "list"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["call_id"], pc2.id.to_string());
    assert_eq!(letters[0]["stage"], "pc2");
    assert_eq!(letters[0]["worker"], "w-c");
    assert!(letters[0]["reason"].as_str().unwrap().starts_with("missing-input"), "{letters:?}");
    let text = farm.cli_ok(&["dead-letters", "list"]);
    assert!(text.contains("missing-input") && text.contains(&sector.id.file_name()), "{text}");
    assert!(farm.cli_ok(&["queues"]).contains("dead letters waiting: 1"));

    // The disk is back: the replayed task completes and its result reaches the miner.
    std::fs::rename(&unplugged, &cache).unwrap();
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let said = farm.cli_ok(&["dead-letters", "replay", &id[..8]]);
    assert!(said.contains("replayed as attempt 2"), "{said}");
    let jobs = farm.wait_json(&["jobs"], WAIT, |j| state_of(j, &pc2) == "done").await;
    assert_eq!(job(&jobs, &pc2).unwrap()["attempt"], 2);
    let again = farm.miner.duplicate_returns();
    let replayed = again.iter().find(|r| r.params[0]["ID"] == pc2.id.to_string()).expect("the replayed Return");
    assert!(replayed.params[2].is_null() && replayed.params[1]["Sealed"].is_object(), "{:?}", replayed.params);
    assert_eq!(farm.cli_ok(&["dead-letters", "list"]), "no dead letters\n");

    // A message that is no task cannot be replayed; purge removes it.
    let publisher = Publisher::connect(&farm.vhost).await.unwrap();
    publisher.publish_raw("sealfarm.task.ap.2KiB", b"{ not json").await.unwrap();
    let letters = farm.wait_json(&["dead-letters", "list"], WAIT, |l| l.as_array().is_some_and(|l| l.len() == 1)).await;
    let id = letters[0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("msg-") && letters[0]["reason"].as_str().unwrap().starts_with("malformed"), "{letters}");
    let refused = farm.cli(&["dead-letters", "replay", &id]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("not a task message"), "{refused:?}");
    assert!(farm.cli_ok(&["dead-letters", "purge", "--all"]).contains("purged"));
    assert_eq!(farm.cli_ok(&["dead-letters", "list"]), "no dead letters\n");

    // Metrics, from the bridge and from the worker.
    let http = reqwest::Client::new();
    let bridge = http.get(format!("http://{}/metrics", farm.listen)).send().await.unwrap().text().await.unwrap();
    assert_eq!(sample(&bridge, "sealfarm_calls_accepted_total{miner=\"t01000\",stage=\"pc2\"}"), 1.0, "{bridge}");
    assert_eq!(sample(&bridge, "sealfarm_dead_letters_total{miner=\"t01000\",stage=\"pc2\"}"), 1.0);
    assert!(
        !bridge.contains("sealfarm_redispatches_total{miner=\"t01000\","),
        "no lease expired, nothing released: {bridge}"
    );
    assert_eq!(
        sample(&bridge, "sealfarm_stage_duration_seconds_count{miner=\"t01000\",stage=\"pc1\",sector_size=\"2KiB\"}"),
        1.0
    );
    assert!(
        sample(&bridge, "sealfarm_queue_wait_seconds_count{miner=\"t01000\",stage=\"ap\",sector_size=\"2KiB\"}") >= 1.0
    );
    assert!(
        sample(&bridge, "sealfarm_return_latency_seconds_count{miner=\"t01000\",stage=\"pc2\"}") >= 2.0,
        "error and replay"
    );
    assert_eq!(sample(&bridge, "sealfarm_calls{miner=\"t01000\",stage=\"pc2\",state=\"done\"}"), 1.0);
    assert_eq!(sample(&bridge, "sealfarm_miner_up"), 1.0);
    assert_eq!(sample(&bridge, "sealfarm_farm_worker_up{miner=\"t01000\",worker=\"w-c\""), 1.0);
    assert!(sample(&bridge, "sealfarm_farm_worker_slots{miner=\"t01000\",worker=\"w-c\",stage=\"pc1\"") >= 1.0);
    // RabbitMQ's count of a quorum queue trails an ack by a moment.
    let mut waiting = sample(&bridge, "sealfarm_dead_letters_waiting");
    for _ in 0..40 {
        if waiting == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = http.get(format!("http://{}/metrics", farm.listen)).send().await.unwrap().text().await.unwrap();
        waiting = sample(&now, "sealfarm_dead_letters_waiting");
    }
    assert_eq!(waiting, 0.0, "the purged dead letter is gone");
    assert!(bridge.trim_end().ends_with("# EOF"));

    let log = worker.log_text();
    let url = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics").map(|u| u.trim().to_string()))
        .unwrap_or_else(|| panic!("the worker prints its metrics URL:\n{log}"));
    let own = http.get(&url).send().await.unwrap().text().await.unwrap();
    let done = "sealfarm_worker_jobs_total{stage=\"pc1\",sector_size=\"2KiB\",outcome=\"done\",miner=\"t01000\"}";
    assert_eq!(sample(&own, done), 1.0, "{own}");
    assert_eq!(sample(&own, "sealfarm_worker_dead_lettered_total{reason=\"missing-input\"}"), 1.0);
    assert_eq!(sample(&own, "sealfarm_worker_dead_lettered_total{reason=\"malformed\"}"), 1.0);
    assert!(sample(&own, "sealfarm_worker_cpu_cores") >= 1.0);
    assert!(sample(&own, "sealfarm_worker_job_duration_seconds_count{stage=\"pc2\"") >= 1.0);

    // Every sealfarm series the dashboard and the alert rules use exists.
    // (An empty family writes nothing, so the names come from the registries.)
    let bridge_names = sealfarm_bridge::ops::metrics::Metrics::new().names().to_vec();
    let worker_names = sealfarm_worker::metrics::Metrics::new().names().to_vec();
    let exposed: BTreeSet<String> = bridge_names.into_iter().chain(worker_names).collect();
    assert!(exposed.contains("sealfarm_calls_accepted_total") && exposed.contains("sealfarm_worker_jobs_total"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["deploy/grafana/sealfarm.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used: BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sealfarm_") && w.len() > "sealfarm_".len())
            .map(str::to_string)
            .collect();
        assert!(!used.is_empty(), "{file} uses sealfarm metrics");
        let missing: Vec<&String> = used.difference(&exposed).collect();
        assert!(missing.is_empty(), "{file} uses series nobody exports: {missing:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_figures_come_from_the_management_api_when_the_bridge_has_it() {
    let farm = BridgeFarm::start_with("queues-mgmt", &["--rabbitmq-management", "http://127.0.0.1:15672"]).await;
    let _worker = farm.start_worker("w-m", "ap");
    wait_for_workers(&farm.vhost, &["w-m"], Duration::from_secs(60)).await.unwrap();
    call(&farm, "AddPiece", add_piece(sector_ref(30, KIB2))).await;
    // RabbitMQ samples its figures every few seconds.
    let queues = farm
        .wait_json(&["queues"], WAIT, |q| {
            q["queues"].as_array().unwrap().iter().any(|q| {
                q["name"] == "sealfarm.task.ap.2KiB"
                    && q["consumers"] == 1
                    && q["unacked"].is_u64()
                    && q["publish_rate"].is_f64()
            })
        })
        .await;
    let results =
        queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == sealfarm_tests::BRIDGE_RESULTS).unwrap();
    assert!(results["deliver_rate"].is_f64(), "{queues:#}");
    let text = farm.cli_ok(&["queues"]);
    let row = text.lines().find(|l| l.starts_with("sealfarm.task.ap.2KiB")).unwrap();
    assert!(!row.contains(" - "), "unacked and rates are filled in: {row}");
}

/// `/metrics` names no call id (half of what forging a result takes), and
/// an operator can keep it off the main listener and behind the read token.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_name_no_call_ids_and_can_take_a_token_on_their_own_address() {
    let metrics_at = sealfarm_tests::free_local_address();
    let address = metrics_at.to_string();
    let farm = BridgeFarm::start_with("metrics-access", &["--metrics-token", "--metrics-listen", &address]).await;
    // Open calls, no worker to take them: an AddPiece and a PC1 whose ticket runs.
    let sector = sector_ref(21, KIB2);
    let piece =
        json!({"Size": 2048, "PieceCID": {"/": "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"}});
    let opened = [
        start(&farm, "AddPiece", add_piece(sector_ref(22, KIB2))).await,
        start(&farm, "SealPreCommit1", json!([sector, ticket(), [piece]])).await,
    ];
    let http = reqwest::Client::new();
    let main = http.get(format!("http://{}/metrics", farm.listen)).send().await.unwrap();
    assert_eq!(main.status(), reqwest::StatusCode::NOT_FOUND, "served on --metrics-listen only");
    let url = format!("http://{metrics_at}/metrics");
    assert_eq!(http.get(&url).send().await.unwrap().status(), reqwest::StatusCode::UNAUTHORIZED);
    let text = http.get(&url).bearer_auth(farm.token("read")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("sealfarm_calls{miner=\"t01000\",stage=\"pc1\",state=\"queued\"} 1"), "{text}");
    let headroom =
        format!("sealfarm_pc1_ticket_headroom_seconds{{miner=\"t01000\",sector=\"{}\"}}", sector.id.file_name());
    assert!(sample(&text, &headroom) > 3600.0, "{text}");
    for call in &opened {
        let id = call.id.to_string();
        assert!(!text.contains(&id) && !text.contains(&id[..8]), "/metrics names call {id}:\n{text}");
    }
}

/// `dead-letters list` shows a page at a time, oldest first, however many
/// wait; the bridge never holds more than the page it lists.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_a_page_at_a_time() {
    let farm = BridgeFarm::start("dead-letter-pages").await;
    let publisher = Publisher::connect(&farm.vhost).await.unwrap();
    for n in 0..1200 {
        publisher.publish_raw("sealfarm.dead-letters", format!("letter {n:04}").as_bytes()).await.unwrap();
    }
    let page = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["dead-letters", "list"];
        all.extend_from_slice(args);
        let listed = farm.cli_json(&all);
        listed.as_array().unwrap().iter().map(|l| l["preview"].as_str().unwrap().to_string()).collect()
    };
    let first = page(&[]);
    assert_eq!(first.len(), 100);
    assert_eq!((first[0].as_str(), first[99].as_str()), ("letter 0000", "letter 0099"));
    let last = page(&["--offset", "1150", "--limit", "1000"]);
    assert_eq!(last.len(), 50, "{last:?}");
    assert_eq!((last[0].as_str(), last[49].as_str()), ("letter 1150", "letter 1199"));
    let id_at = |n: usize| {
        farm.cli_json(&["dead-letters", "list", "--offset", &n.to_string(), "--limit", "1"])[0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let text = farm.cli_ok(&["dead-letters", "list", "--offset", "100", "--limit", "10"]);
    let ids = (id_at(99), id_at(100), id_at(109));
    assert!(text.contains(&ids.1) && text.contains(&ids.2) && !text.contains(&ids.0), "{ids:?} {text}");
    assert!(text.contains("--offset 110"), "the next page is named: {text}");
    let refused = farm.cli(&["dead-letters", "list", "--limit", "1001"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("a page holds 1 to 1000"), "{said}");
    // Listing took nothing away.
    assert!(farm.cli_ok(&["queues"]).contains("dead letters waiting: 1200"), "{}", farm.cli_ok(&["queues"]));
}
