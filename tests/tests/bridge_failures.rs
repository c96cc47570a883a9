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
    // The farm computes while the bridge is dead; results wait in sealfarm.results.
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
