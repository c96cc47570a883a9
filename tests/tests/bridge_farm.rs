//! The bridge end to end: a miner stand-in (devminer) registers the bridge as
//! one lotus-worker, the bridge runs every sealing call on two worker
//! processes through RabbitMQ, and every call comes back exactly once with
//! a result that verifies.

use std::time::Duration;

use sealfarm_schemas::RegisteredSealProof;
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::BridgeFarm;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn devminer_seals_two_sectors_through_the_bridge_and_two_workers() {
    let mut farm = BridgeFarm::start("bridge").await;
    let _sealer = farm.start_worker("sealing-box", "ap,pc1,pc2,c1,fin,ru");
    let _prover = farm.start_worker("proving-box", "c2");
    let (miner, worker, listen, dir) = (farm.miner.clone(), farm.worker.clone(), farm.listen, farm.dir.path());

    // What the miner learnt inside WorkerConnect (before any worker was
    // up: the compute stages appear in TaskTypes once workers take them, see
    // placement.rs; those bound to a holder's files are always there).
    assert_eq!(worker.info["IgnoreResources"], json!(true));
    for task in ["seal/v0/commit/1", "seal/v0/finalize", "seal/v0/finalizeunsealed", "seal/v0/fetch"] {
        assert!(worker.task_types.get(task).is_some(), "TaskTypes lacks {task}: {}", worker.task_types);
    }
    let index = miner.index_calls();
    assert!(index.iter().any(|c| c.method == "StorageAttach"), "the bridge attached its storage");

    let proof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
    let (one, two) = tokio::join!(
        miner.seal_cc(&worker, sector_ref(1, proof), Duration::from_secs(600)),
        miner.seal_cc(&worker, sector_ref(2, proof), Duration::from_secs(600)),
    );
    for report in [one, two] {
        let report = report.unwrap_or_else(|e| panic!("{e:#}\n{}", farm.bridge.log_text()));
        assert!(report.verified, "the proof of {} verifies", report.sector.id);
        assert_eq!(report.calls.len(), 10, "{:?}", report.calls);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(miner.duplicate_returns().is_empty(), "a call was returned twice: {:?}", miner.duplicate_returns());
    let declared: Vec<_> = miner
        .index_calls()
        .into_iter()
        .filter(|c| c.method == "StorageDeclareSector")
        .map(|c| (c.params[1]["Number"].as_u64().unwrap(), c.params[2].as_u64().unwrap()))
        .collect();
    for number in [1, 2] {
        for file_type in [1, 2, 4] {
            assert!(declared.contains(&(number, file_type)), "sector {number} type {file_type} declared: {declared:?}");
        }
    }

    // The miner fetches the finished sector from /remote as from a lotus-worker.
    let http = reqwest::Client::new();
    let token = miner.mint(&["admin"]);
    let remote = |path: &str| format!("http://{listen}/remote/{path}");
    let sealed = http.get(remote("sealed/s-t01000-1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(sealed.status(), 200);
    let on_disk = std::fs::read(dir.join("sealing/sealed/s-t01000-1")).unwrap();
    assert_eq!(sealed.bytes().await.unwrap().to_vec(), on_disk, "the sealed replica arrives byte for byte");
    let cache = http.get(remote("cache/s-t01000-1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(cache.status(), 200);
    assert_eq!(cache.headers()["content-type"], "application/x-tar");
    let tar_bytes = cache.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let names: Vec<String> =
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"p_aux".to_string()) && names.iter().any(|n| n.contains("tree-r-last")), "{names:?}");
    assert!(names.iter().all(|n| n == "p_aux" || n == "t_aux" || n.starts_with("sc-02-data-")), "{names:?}");
    let anonymous = http.get(remote("sealed/s-t01000-1")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // After moving it, the miner deletes the bridge's copy.
    let deleted = http.delete(remote("sealed/s-t01000-2?keep=elsewhere")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(!dir.join("sealing/sealed/s-t01000-2").exists());
    assert!(miner
        .index_calls()
        .iter()
        .any(|c| c.method == "StorageDropSector" && c.params[1]["Number"] == 2 && c.params[2] == 2));

    assert!(farm.bridge.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_checks_tokens_and_params_as_lotus_does() {
    let farm = BridgeFarm::start_with("bridge-auth", &["--max-concurrent", "pc1=3,c2=1"]).await;
    let (miner, listen) = (&farm.miner, farm.listen);
    // Per-stage limits reach the miner as MaxConcurrent (the only check left with IgnoreResources).
    let resources = &farm.worker.info["Resources"]["Resources"];
    assert_eq!(resources["seal/v0/precommit/1"]["5"]["MaxConcurrent"], json!(3), "{resources}");
    assert_eq!(resources["seal/v0/commit/2"]["8"]["MaxConcurrent"], json!(1));
    assert!(resources.get("seal/v0/addpiece").is_none(), "stages without a limit are left to the miner's table");
    let url = format!("http://{listen}/rpc/v0");
    let http = reqwest::Client::new();
    let post = |token: Option<String>, body: serde_json::Value| {
        let mut request = http.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let admin = Some(miner.mint(&["admin"]));

    // No-arg calls accept [] and a missing params field alike.
    for body in [
        json!({"jsonrpc":"2.0","id":1,"method":"Filecoin.Version","params":[]}),
        json!({"jsonrpc":"2.0","id":2,"method":"Filecoin.Version"}),
    ] {
        let answer: serde_json::Value = post(admin.clone(), body).await.unwrap().json().await.unwrap();
        assert_eq!(answer["result"], json!(67328));
    }
    // A token the miner did not mint: HTTP 401, empty body.
    let forged = post(
        Some("eyJhbGciOiJIUzI1NiJ9.eyJBbGxvdyI6WyJhZG1pbiJdfQ.AAAA".into()),
        json!({"jsonrpc":"2.0","id":3,"method":"Filecoin.Version","params":[]}),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    // No token, or a token without admin: lotus' permission error.
    for token in [None, Some(miner.mint(&["read", "write"]))] {
        let answer: serde_json::Value =
            post(token, json!({"jsonrpc":"2.0","id":4,"method":"Filecoin.Session","params":[]}))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert_eq!(answer["error"]["code"], json!(1));
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing permission to invoke 'Session' (need 'admin')"));
    }
    // The no-arg methods the miner calls answer in the shape of lotus' examples.
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../../schemas/tests/data/lotus-vectors.json")).unwrap();
    for method in ["Version", "Session", "Info", "TaskTypes", "Paths", "Enabled"] {
        let example = vectors
            .iter()
            .find(|v| v["method"] == format!("Filecoin.{method}") && v["api"] == "worker")
            .unwrap_or_else(|| panic!("no vector for {method}"));
        let body = json!({"jsonrpc":"2.0","id":7,"method":format!("Filecoin.{method}"),"params":[]});
        let answer: serde_json::Value = post(admin.clone(), body).await.unwrap().json().await.unwrap();
        assert_same_shape(method, &example["result"], &answer["result"]);
    }
    // Wrong param count: -32602 with HTTP 500.
    let wrong = post(admin.clone(), json!({"jsonrpc":"2.0","id":5,"method":"Filecoin.FinalizeSector","params":[]}))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 500);
    let answer: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(answer["error"]["code"], json!(-32602));
    // Unknown method: -32601 with HTTP 500.
    let unknown = post(admin.clone(), json!({"jsonrpc":"2.0","id":6,"method":"Filecoin.NoSuchMethod","params":[]}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 500);
    let answer: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(answer["error"]["code"], json!(-32601));
}

/// Same JSON type at every key of `example` (objects: every key of the
/// example is present; arrays: the first element's shape).
fn assert_same_shape(path: &str, example: &serde_json::Value, actual: &serde_json::Value) {
    use serde_json::Value::*;
    match (example, actual) {
        (Object(want), Object(got)) => {
            for (key, value) in want {
                // Maps keyed by data (task types, proof numbers) only need the same value shape.
                if key.contains('/') || key.parse::<u64>().is_ok() {
                    continue;
                }
                let got = got.get(key).unwrap_or_else(|| panic!("{path}.{key} missing in {actual}"));
                assert_same_shape(&format!("{path}.{key}"), value, got);
            }
        }
        (Array(want), Array(got)) => {
            if let (Some(w), Some(g)) = (want.first(), got.first()) {
                assert_same_shape(&format!("{path}[0]"), w, g);
            }
        }
        // lotus sends null for an empty resource table or GPU list.
        (_, Null) | (Null, _) => {}
        (Number(_), Number(_)) | (String(_), String(_)) | (Bool(_), Bool(_)) => {}
        _ => panic!("{path}: expected the shape of {example}, got {actual}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn piece_data_the_miner_pushes_is_what_the_sector_holds() {
    use filecoin_proofs_api::seal::generate_piece_commitment;
    use sealfarm_schemas::commitment::Commitment;

    let farm = BridgeFarm::start("bridge-push").await;
    let _worker = farm.start_worker("w-push", "ap");
    let (miner, worker, listen) = (&farm.miner, &farm.worker, farm.listen);

    // A deal's bytes (fr32-safe: the top bits of every 32-byte chunk clear).
    let mut data = vec![0u8; 2032];
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i * 7 % 251) as u8 & 0x3f;
    }
    let proof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
    let api = sealfarm_worker::sealing::proofs::api_proof(proof).unwrap();
    let expected = generate_piece_commitment(api, &data[..], filecoin_proofs_api::UnpaddedBytesAmount(2032)).unwrap();

    // lotus pushes the bytes and makes the call concurrently, in either order.
    let stream = uuid::Uuid::new_v4();
    let push_url = format!("http://{listen}/rpc/streams/v0/push/{stream}");
    let pushed = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let http = reqwest::Client::new();
        assert_eq!(http.head(&push_url).send().await.unwrap().status(), 200);
        http.post(&push_url)
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap()
            .status()
    });
    let sector = sector_ref(5, proof);
    let call: sealfarm_schemas::CallId = worker
        .client
        .call("AddPiece", json!([sector, [], 2032, {"Type": "push", "Info": stream.to_string()}]))
        .await
        .unwrap();
    assert_eq!(pushed.await.unwrap(), 200);
    let returned = miner.wait_for_return(&call, Duration::from_secs(60)).await.unwrap();
    assert!(returned.params[2].is_null(), "{:?}", returned.params[2]);
    let piece: sealfarm_schemas::PieceInfo = serde_json::from_value(returned.params[1].clone()).unwrap();
    assert_eq!(piece.size, 2048);
    assert_eq!(Commitment::Data.from_cid(&piece.piece_cid).unwrap(), expected.commitment, "CommP of the pushed bytes");
}
