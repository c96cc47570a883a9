//! What survives what, for the bridge: SIGKILL with calls in flight, and a
//! miner that is away while results arrive. Every call ends with exactly one
//! `Return*`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sealfarm_schemas::{CallId, RegisteredSealProof};
use sealfarm_tests::devminer::{sector_ref, DevMiner};
use sealfarm_tests::BridgeFarm;
use serde_json::json;

const ZERO_2KIB: &str = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";

async fn add_pieces(miner: &DevMiner, count: u64) -> Vec<CallId> {
    let worker = miner.workers().last().cloned().expect("a registered bridge");
    let mut calls = Vec::new();
    for number in 1..=count {
        let sector = sector_ref(number, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
        let call: CallId = worker
            .client
            .call("AddPiece", json!([sector, [], 2032, {"Type": "null", "Info": "2032"}]))
            .await
            .expect("AddPiece accepted");
        calls.push(call);
    }
    calls
}

async fn assert_returned_once(miner: &DevMiner, calls: &[CallId]) {
    for call in calls {
        let returned = miner.wait_for_return(call, Duration::from_secs(90)).await.unwrap();
        assert_eq!(returned.method, "ReturnAddPiece");
        assert!(returned.params[2].is_null(), "call failed: {:?}", returned.params[2]);
        assert_eq!(returned.params[1]["PieceCID"]["/"], ZERO_2KIB);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(miner.duplicate_returns().is_empty(), "returned twice: {:?}", miner.duplicate_returns());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_killed_with_calls_in_flight_returns_each_exactly_once_after_restart() {
    let mut farm = BridgeFarm::start("bridge-kill").await;

    // Calls accepted while no worker runs: their tasks wait in the queue.
    let calls = add_pieces(&farm.miner, 3).await;
    farm.bridge.kill();
    // The farm computes while the bridge is dead; results wait in the bridge's results queue.
    let _worker = farm.start_worker("w-kill", "ap");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(calls.iter().all(|c| farm.miner.returned(c).is_none()), "nothing can return while the bridge is dead");

    farm.start_bridge_again();
    assert_returned_once(&farm.miner, &calls).await;
    assert!(farm.bridge.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn results_wait_for_a_miner_that_is_away_and_survive_a_bridge_kill_meanwhile() {
    let mut farm = BridgeFarm::start("miner-away").await;
    let calls = add_pieces(&farm.miner, 3).await;

    // The miner goes away; the farm finishes the calls; the bridge holds the results.
    farm.miner.away.store(true, Ordering::SeqCst);
    let _worker = farm.start_worker("w-away", "ap");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The bridge dies while holding them; a new one starts while the miner is still away.
    farm.bridge.kill();
    farm.start_bridge_again();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(calls.iter().all(|c| farm.miner.returned(c).is_none()));

    farm.miner.away.store(false, Ordering::SeqCst);
    assert_returned_once(&farm.miner, &calls).await;
    assert!(farm.bridge.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_registers_again_when_the_miner_restarts() {
    let farm = BridgeFarm::start("miner-restart").await;
    let (miner, first) = (&farm.miner, &farm.worker);

    miner.restart();
    // The bridge watches the miner's session every 10 s (as lotus-worker does).
    let again = miner.wait_for_worker(Duration::from_secs(40)).await.unwrap();
    assert_eq!(again.session, first.session, "the same bridge process registered again");
    assert!(miner.index_calls().iter().any(|c| c.method == "StorageAttach"), "storage attached again");
    let _worker = farm.start_worker("w-restart", "ap");
    let calls = add_pieces(miner, 1).await;
    assert_returned_once(miner, &calls).await;
}

/// A miner that takes requests and never answers them (a hung lotus-miner,
/// a half-open connection): every call the bridge makes to it ends at the
/// `--miner-timeout` deadline, so Returns are retried and arrive once the
/// miner answers again, and a request whose token the bridge cannot check
/// gets 503 at once instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_miner_that_stops_answering_holds_nothing_up_for_good() {
    let farm = BridgeFarm::start_with("miner-stall", &["--miner-timeout", "2s"]).await;
    let calls = add_pieces(&farm.miner, 3).await;
    farm.miner.stalled.store(true, Ordering::SeqCst);
    let _worker = farm.start_worker("w-stall", "ap");

    // A token the bridge has not seen: its check with the miner hangs.
    let stranger = farm.miner.mint(&["admin", "stranger"]);
    let started = std::time::Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("http://{}/rpc/v0", farm.listen))
        .bearer_auth(&stranger)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "Filecoin.Version", "params": []}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the bridge answers while the miner hangs");
    assert_eq!(answer.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(15), "answered after {:?}", started.elapsed());
    let why = answer.text().await.unwrap();
    assert!(why.contains("no answer within 2s"), "{why}");

    // The Returns of the calls the worker finished meanwhile time out and are retried.
    let log = farm.bridge.log.clone();
    let retried = async {
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("Return not accepted; retrying") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), retried).await.expect("a Return timed out and was retried");
    assert!(calls.iter().all(|c| farm.miner.returned(c).is_none()));

    // The miner answers again: every call is returned, once.
    farm.miner.stalled.store(false, Ordering::SeqCst);
    assert_returned_once(&farm.miner, &calls).await;
}

/// A stranger's bad token costs one `AuthVerify`, not one per request: the
/// miner's refusal is remembered, and the bridge keeps refusing it.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_checked_with_the_miner_once() {
    let farm = BridgeFarm::start("bad-token-flood").await;
    let before = farm.miner.auth_verifies.load(Ordering::SeqCst);
    let http = reqwest::Client::new();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "Filecoin.Version", "params": []});
    let mut answers = Vec::new();
    for _ in 0..50 {
        let answer = http
            .post(format!("http://{}/rpc/v0", farm.listen))
            .bearer_auth("not.a.token")
            .json(&request)
            .send()
            .await
            .unwrap();
        answers.push(answer.status());
    }
    assert!(answers.iter().all(|s| *s == reqwest::StatusCode::UNAUTHORIZED), "{answers:?}");
    let asked = farm.miner.auth_verifies.load(Ordering::SeqCst) - before;
    assert_eq!(asked, 1, "the miner was asked {asked} times about one bad token");
    // A good token is still taken.
    let good = farm.miner.mint(&["admin"]);
    let answer = http.post(format!("http://{}/rpc/v0", farm.listen)).bearer_auth(&good).json(&request).send().await;
    assert_eq!(answer.unwrap().status(), reqwest::StatusCode::OK);
}
