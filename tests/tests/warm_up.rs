//! Warm-up (issue 8): a worker that takes a GPU stage proves a small sector
//! of its own before it takes that stage's first task, takes its other
//! stages meanwhile, and says so in its heartbeat; the bridge shows it
//! `warming` and sends the stage's tasks where any worker can take them.
//!
//! This machine has no GPU: `--warm-up always` runs the same warm-up on the
//! CPU, a 2 KiB sector AP → C2 (a minute or so here: the C2).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use sealfarm_schemas::{EventKind, EventMessage, RegisteredSealProof, SectorCids, Stage};
use sealfarm_tests::devminer::{add_piece_params, sector_ref, SealReport};
use sealfarm_tests::{subscribe_events, BridgeFarm};
use serde_json::{json, Value};

/// Long enough for the warm-up's CPU C2 on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(600);

/// What the worker said, in the order the broker delivered it.
#[derive(Debug, Clone, PartialEq)]
enum Said {
    Heartbeat { warming: Vec<Stage> },
    Claim(Stage),
}

/// A call the miner makes and waits for; its output (the call must succeed).
async fn call(farm: &BridgeFarm, method: &str, params: Value) -> Value {
    let mut report = SealReport {
        sector: sector_ref(0, RegisteredSealProof::STACKED_DRG_2KIB_V1_1),
        calls: Vec::new(),
        verified: false,
    };
    farm.miner.call(&farm.worker, method, params, WAIT, &mut report).await.unwrap_or_else(|e| {
        panic!("{method}: {e:#}\nworker log:\n{}", std::fs::read_to_string(warm_log(farm)).unwrap_or_default())
    })
}

fn worker<'a>(workers: &'a Value, id: &str) -> Option<&'a Value> {
    workers.as_array()?.iter().find(|w| w["id"] == id)
}

fn state(workers: &Value, id: &str) -> String {
    worker(workers, id).and_then(|w| w["state"].as_str()).unwrap_or("absent").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warming_worker_takes_its_gpu_stage_only_after_the_warm_up() {
    let farm = BridgeFarm::start("warm-up").await;
    let (_connection, mut events) = subscribe_events(&farm.vhost, "worker.w-warm.*").await.unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = events.next().await {
            let Ok(event) = serde_json::from_slice::<EventMessage>(&delivery.data) else { continue };
            match event.event {
                EventKind::Heartbeat { warming, .. } => sink.lock().unwrap().push(Said::Heartbeat { warming }),
                EventKind::Claim { stage, .. } => sink.lock().unwrap().push(Said::Claim(stage)),
                _ => {}
            }
        }
    });
    let mut warm = farm.start_worker_with("w-warm", "ap,pc1,pc2,c1,c2", "2KiB", &["--warm-up", "always"]);

    // The bridge shows it warming, with the stages it does not take yet.
    let workers = farm.wait_json(&["workers"], WAIT, |w| state(w, "w-warm") == "warming").await;
    assert_eq!(worker(&workers, "w-warm").unwrap()["warming"], json!(["pc2", "c2"]));
    let text = farm.cli_ok(&["workers"]);
    assert!(text.contains("warming up: takes pc2, c2"), "{text}");
    // … and in its metrics (the series behind the Grafana workers table).
    let series = "sealfarm_farm_worker_warming{miner=\"t01000\",worker=\"w-warm\"} ";
    let mut metrics = String::new();
    for _ in 0..40 {
        metrics = reqwest::get(format!("http://{}/metrics", farm.listen)).await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l == format!("{series}1")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(metrics.lines().any(|l| l == format!("{series}1")), "{metrics}");

    // The miner seals a sector meanwhile: AddPiece and PC1 run at once, PC2
    // waits for the warm-up and then succeeds.
    let sector = sector_ref(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    let piece = call(&farm, "AddPiece", add_piece_params(sector)).await;
    let ticket = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let pc1_out = call(&farm, "SealPreCommit1", json!([sector, ticket, [piece.clone()]])).await;
    let cids: SectorCids =
        serde_json::from_value(call(&farm, "SealPreCommit2", json!([sector, pc1_out])).await).unwrap();
    assert_eq!(cids.unsealed.unwrap().to_string(), piece["PieceCID"]["/"].as_str().unwrap(), "CommD is the piece's");
    farm.wait_json(&["workers"], WAIT, |w| state(w, "w-warm") == "enabled").await;

    let said = said.lock().unwrap().clone();
    let warm_at = said
        .iter()
        .position(|s| *s == Said::Heartbeat { warming: vec![] })
        .unwrap_or_else(|| panic!("no heartbeat said the worker was warm: {said:?}"));
    assert!(
        said[..warm_at]
            .iter()
            .all(|s| !matches!(s, Said::Heartbeat { warming } if *warming != vec![Stage::Pc2, Stage::C2])),
        "every heartbeat before it lists pc2 and c2 as warming: {said:?}"
    );
    let claim = |stage| {
        said.iter().position(|s| *s == Said::Claim(stage)).unwrap_or_else(|| panic!("no {stage} claim: {said:?}"))
    };
    assert!(claim(Stage::Ap) < warm_at, "AddPiece ran during the warm-up: {said:?}");
    assert!(claim(Stage::Pc1) < warm_at, "PC1 ran during the warm-up: {said:?}");
    assert!(claim(Stage::Pc2) > warm_at, "PC2 was taken only once warm: {said:?}");

    // The warm-up sealed its own sector in a scratch folder, now gone; the
    // shared sealing path holds only the miner's sector.
    let log = std::fs::read_to_string(warm_log(&farm)).unwrap();
    assert!(log.contains("warmed up; taking pc2, c2"), "{log}");
    assert!(log.contains("warm-up c2 of its 2KiB sector"), "the warm-up's C2 is logged: {log}");
    assert!(!farm.dir.path().join("state-w-warm/warm-up").exists(), "the scratch folder is removed");
    let cache: Vec<String> = std::fs::read_dir(farm.dir.path().join("sealing/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cache, vec![sector.id.file_name()]);
    assert!(warm.terminate(Duration::from_secs(60)).success());
}

fn warm_log(farm: &BridgeFarm) -> std::path::PathBuf {
    farm.dir.path().join("w-warm.log")
}
