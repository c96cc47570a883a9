//! Placement and data locality (issue 5), with real workers, a real broker
//! and the miner stand-in: each worker receives only the stages it takes,
//! the location-bound stages of a sector go where its files are, C2 goes to
//! the worker that may prove, and in worker-local storage the miner fetches
//! a finished sector through the bridge's `/remote`.

use std::time::Duration;

use sealfarm_schemas::{RegisteredSealProof, Stage};
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::{collect_claims, free_local_address, wait_for_workers, BridgeFarm};
use serde_json::json;

const PROOF: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

#[tokio::test(flavor = "multi_thread")]
async fn each_worker_gets_its_stages_and_a_sectors_stages_follow_its_files() {
    let farm = BridgeFarm::start("placement").await;
    let (_events, claims) = collect_claims(&farm.vhost).await.unwrap();
    // A box without C2, and one that proves (on the CPU here) but takes no AddPiece.
    let _sealer = farm.start_worker("pc1-box", "ap,pc1,pc2,c1,fin,ru");
    let _prover = farm.start_worker("mixed-box", "pc1,pc2,c1,fin,ru,c2");
    wait_for_workers(&farm.vhost, &["pc1-box", "mixed-box"], Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // the bridge reads the same heartbeats

    // What the miner sees: the farm's live task types, and slots per proof type (5: 2 KiB V1_1).
    let task_types: serde_json::Value = farm.worker.client.call("TaskTypes", json!([])).await.unwrap();
    for task in ["seal/v0/addpiece", "seal/v0/precommit/1", "seal/v0/precommit/2", "seal/v0/commit/2"] {
        assert!(task_types.get(task).is_some(), "TaskTypes lacks {task}: {task_types}");
    }
    let info: serde_json::Value = farm.worker.client.call("Info", json!([])).await.unwrap();
    let table = &info["Resources"]["Resources"];
    let c2 = table["seal/v0/commit/2"]["5"]["MaxConcurrent"].as_u64().unwrap_or(0);
    let pc1 = table["seal/v0/precommit/1"]["5"]["MaxConcurrent"].as_u64().unwrap_or(0);
    assert!(c2 >= 1 && pc1 >= 2 * c2, "PC1 slots of two workers, C2 slots of one: {table}");
    assert!(table["seal/v0/commit/2"].get("3").is_none(), "no slots for 32 GiB sectors: {table}");

    let (one, two) = tokio::join!(
        farm.miner.seal_cc(&farm.worker, sector_ref(1, PROOF), Duration::from_secs(600)),
        farm.miner.seal_cc(&farm.worker, sector_ref(2, PROOF), Duration::from_secs(600)),
    );
    for report in [one, two] {
        let report = report.unwrap_or_else(|e| panic!("{e:#}\n{}", farm.bridge.log_text()));
        assert!(report.verified, "the proof of {} verifies", report.sector.id);
    }
    let claims = claims.lock().unwrap().clone();
    for number in [1, 2] {
        let of = |stage: Stage| -> Vec<String> {
            claims.iter().filter(|(_, s, n)| *s == stage && *n == number).map(|(w, _, _)| w.clone()).collect()
        };
        assert_eq!(of(Stage::Ap), ["pc1-box"], "only pc1-box takes AddPiece: {claims:?}");
        for stage in [Stage::Pc1, Stage::Pc2, Stage::C1, Stage::Ru, Stage::Fin] {
            assert_eq!(of(stage), ["pc1-box"], "{stage} of sector {number} runs where its files are: {claims:?}");
        }
        assert_eq!(of(Stage::C2), ["mixed-box"], "C2 goes to the worker that proves: {claims:?}");
    }
    assert!(farm.miner.duplicate_returns().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_local_storage_is_fetched_through_the_bridges_remote() {
    let farm =
        BridgeFarm::start_with("local-storage", &["--files-token", "farm-secret", "--lease-timeout", "4s"]).await;
    let local = farm.dir.path().join("local-box-disk");
    let files = free_local_address();
    let mut worker = farm.start_worker_with(
        "local-box",
        "ap,pc1,pc2,c1,c2,fin,ru",
        "2KiB",
        &[
            "--sealing-path",
            local.to_str().unwrap(),
            "--files-listen",
            &files.to_string(),
            "--files-token",
            "farm-secret",
        ],
    );
    wait_for_workers(&farm.vhost, &["local-box"], Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sector = sector_ref(1, PROOF);
    let report = farm
        .miner
        .seal_cc(&farm.worker, sector, Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", farm.bridge.log_text(), worker.log_text()));
    assert!(report.verified, "the proof verifies");
    let name = "s-t01000-1";
    let bridge_disk = farm.dir.path().join("sealing");
    assert!(!bridge_disk.join("sealed").join(name).exists(), "the files stay on the worker");

    // The miner fetches the finished sector from the bridge, as from a lotus-worker.
    let http = reqwest::Client::new();
    let token = farm.miner.mint(&["admin"]);
    let url = |kind: &str| format!("http://{}/remote/{kind}/{name}", farm.listen);
    let sealed = http.get(url("sealed")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(sealed.status(), 200, "{}", farm.bridge.log_text());
    assert_eq!(sealed.headers()["content-type"], "application/octet-stream");
    let sealed = sealed.bytes().await.unwrap();
    assert_eq!(sealed.len(), 2048);
    assert_eq!(sealed.as_ref(), std::fs::read(local.join("sealed").join(name)).unwrap(), "the worker's replica");
    let cache = http.get(url("cache")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(cache.status(), 200);
    assert_eq!(cache.headers()["content-type"], "application/x-tar");
    let tar_bytes = cache.bytes().await.unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_ref());
    let mut fetched = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let file = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        fetched.insert(file, bytes);
    }
    let mut on_worker = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(local.join("cache").join(name)).unwrap() {
        let entry = entry.unwrap();
        on_worker.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap());
    }
    assert!(fetched.contains_key("p_aux") && fetched.contains_key("t_aux"), "{:?}", fetched.keys());
    assert_eq!(fetched, on_worker, "the finalized cache, file for file");

    // The miner's retrieval check reaches the holder: an unsealed file on
    // the worker, its second half freed (hole and trailer, as lotus frees).
    let unsealed = local.join("unsealed").join(name);
    std::fs::write(&unsealed, vec![1u8; 2048]).unwrap();
    sealfarm_runtime::unsealed_file::free(&unsealed, 2048, &[(1024, 2048)]).unwrap();
    let allocated = |o: u64, s: u64| format!("http://{}/remote/unsealed/{name}/5/allocated/{o}/{s}", farm.listen);
    assert_eq!(http.get(allocated(0, 1016)).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(http.get(allocated(1016, 1016)).bearer_auth(&token).send().await.unwrap().status(), 416);
    assert_eq!(http.get(allocated(0, 1016)).send().await.unwrap().status(), 401, "admin only");

    // The worker's file server wants the farm's token; the miner's token gets nowhere there.
    let direct = format!("http://{files}/files/sealed/{name}");
    assert_eq!(http.get(&direct).bearer_auth(&token).send().await.unwrap().status(), 401);
    assert_eq!(http.get(&direct).bearer_auth("farm-secret").send().await.unwrap().status(), 200);

    // A miner restart empties its (in-memory) sector index: the bridge
    // registers again and declares the worker's files again.
    farm.miner.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let declared_again = |file_type: u64| {
        farm.miner
            .index_calls()
            .iter()
            .any(|c| c.method == "StorageDeclareSector" && c.params[1]["Number"] == 1 && c.params[2] == file_type)
    };
    while !(declared_again(2) && declared_again(4)) {
        assert!(
            std::time::Instant::now() < deadline,
            "sealed and cache not declared again: {}",
            farm.bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let farm_worker = farm.miner.wait_for_worker(Duration::from_secs(60)).await.unwrap();

    // The miner moved the sector away: the delete reaches the worker and the index.
    let deleted = http.delete(url("sealed")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 200, "{}", farm.bridge.log_text());
    assert!(!local.join("sealed").join(name).exists());
    assert!(farm.miner.index_calls().iter().any(|c| c.method == "StorageDropSector" && c.params[2] == 2));

    // The holder goes away for good. A stage bound to its files fails with an
    // error the miner's state machine acts on, instead of waiting forever:
    // one already waiting in the holder's queue once the holder counts as
    // gone (--lease-timeout), one called later at once.
    worker.kill();
    let waiting: sealfarm_schemas::CallId = farm_worker.client.call("FinalizeSector", json!([sector])).await.unwrap();
    let returned = farm.miner.wait_for_return(&waiting, Duration::from_secs(60)).await.unwrap();
    let later: sealfarm_schemas::CallId =
        farm_worker.client.call("ReleaseUnsealed", json!([sector, null])).await.unwrap();
    let returned_later = farm.miner.wait_for_return(&later, Duration::from_secs(30)).await.unwrap();
    for returned in [returned, returned_later] {
        let error = &returned.params[1];
        assert_eq!(error["Code"], 0, "{error}");
        let message = error["Message"].as_str().unwrap();
        assert!(message.contains("local-box") && message.contains("no heartbeat"), "{message}");
    }
}
