//! RabbitMQ restarted under a running farm (`rabbitmqctl stop_app` /
//! `start_app`): bridge and worker reconnect, redeclare and carry on; every
//! call is returned exactly once. Alone in its test binary, because it stops
//! the broker every other test uses.

use std::process::Command;
use std::time::{Duration, Instant};

use sealfarm_schemas::{CallId, RegisteredSealProof};
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::BridgeFarm;
use serde_json::json;

/// Starts the broker's application again if the test ends while it is stopped.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        start_app();
    }
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl").args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

fn start_app() {
    rabbitmqctl(&["start_app"]);
    for _ in 0..60 {
        if rabbitmqctl(&["await_startup", "--timeout", "60"]) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// AddPiece for sector `number`, retried while the bridge cannot reach the broker.
async fn add_piece(farm: &BridgeFarm, number: u64) -> CallId {
    let sector = sector_ref(number, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    call(farm, "AddPiece", json!([sector, [], 2032, {"Type": "null", "Info": "2032"}])).await
}

async fn call(farm: &BridgeFarm, method: &str, params: serde_json::Value) -> CallId {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = farm.worker.client.call(method, params.clone()).await;
        match answer {
            Ok(call) => return call,
            Err(err) if Instant::now() < deadline => {
                eprintln!("{method} refused ({err}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => panic!("the bridge never took {method} again: {err}\n{}", farm.bridge.log_text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_is_returned_exactly_once_across_a_rabbitmq_restart() {
    let farm = BridgeFarm::start("broker-restart").await;
    let worker = farm.start_worker("w-broker", "ap");
    let mut calls = Vec::new();
    for number in 1..=2 {
        calls.push(add_piece(&farm, number).await);
    }
    for call in &calls {
        farm.miner.wait_for_return(call, Duration::from_secs(60)).await.unwrap();
    }

    // Calls in flight when the broker goes down: no worker serves `ru` yet,
    // so their tasks wait in their queue across the restart.
    for number in 1..=2 {
        let sector = sector_ref(number, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
        calls.push(call(&farm, "ReleaseUnsealed", json!([sector, null])).await);
    }
    let guard = RestartOnDrop;
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app failed");
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(guard); // start_app, and wait for it
    let _late = farm.start_worker("w-late", "ru");

    // Calls after it is back: taken once the bridge has reconnected, run by
    // the worker that lived through the restart.
    for number in 6..=7 {
        calls.push(add_piece(&farm, number).await);
    }
    for call in &calls {
        let returned = farm
            .miner
            .wait_for_return(call, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{e}\nbridge:\n{}\nworker:\n{}", farm.bridge.log_text(), worker.log_text()));
        let error = returned.params.last().unwrap();
        assert!(error.is_null(), "{} carried an error: {error}", returned.method);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(farm.miner.duplicate_returns().is_empty(), "returned twice: {:?}", farm.miner.duplicate_returns());
    assert!(worker.log_text().contains("lost the broker"), "the worker saw the broker go");
    let log = worker.log_text();
    let after = log.rsplit("lost the broker").next().unwrap();
    assert!(after.contains("job done"), "the worker that lived through the restart ran the later calls:\n{log}");
}
