//! Leases and what ends them, through the bridge: a worker that dies and
//! stays dead, a worker stopped with `--on-stop redispatch`, a PC1 whose
//! ticket window passed, and a poison task. Each call is returned to the
//! miner exactly once.

use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use sealfarm_schemas::{CallId, EventKind, EventMessage, RegisteredSealProof, SectorRef, SectorSize};
use sealfarm_tests::devminer::{sector_ref, DevMiner, Returned};
use sealfarm_tests::{cc, child_pids, dead_letters, job_records, subscribe_events, BridgeFarm};
use serde_json::{json, Value};

const P8M: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_8MIB_V1_1;

/// AddPiece (null piece filling the sector) and its returned PieceInfo.
async fn add_piece(farm: &BridgeFarm, sector: SectorRef) -> Value {
    let size = sector.proof_type.info().unwrap().sector_size;
    let unpadded = size.unpadded();
    let call: CallId = farm
        .worker
        .client
        .call("AddPiece", json!([sector, [], unpadded, {"Type": "null", "Info": unpadded.to_string()}]))
        .await
        .unwrap();
    let returned = farm.miner.wait_for_return(&call, Duration::from_secs(120)).await.unwrap();
    assert!(returned.params[2].is_null(), "AddPiece failed: {}", returned.params[2]);
    returned.params[1].clone()
}

async fn precommit1(farm: &BridgeFarm, sector: SectorRef, piece: &Value) -> CallId {
    let ticket = base64::engine::general_purpose::STANDARD.encode(cc::randomness());
    farm.worker.client.call("SealPreCommit1", json!([sector, ticket, [piece]])).await.unwrap()
}

/// Waits for a worker's claim of `call`.
async fn claimed(events: &mut lapin::Consumer, call: &CallId) -> (String, u32) {
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(120), events.next())
            .await
            .expect("a claim within 2 min")
            .unwrap()
            .unwrap();
        let event: EventMessage = serde_json::from_slice(&delivery.data).unwrap();
        if let EventKind::Claim { call_id, attempt, .. } = event.event {
            if call_id == call.id {
                return (event.worker, attempt);
            }
        }
    }
}

async fn returned_once(miner: &DevMiner, call: &CallId, timeout: Duration) -> Returned {
    let returned = miner.wait_for_return(call, timeout).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(miner.duplicate_returns().is_empty(), "returned twice: {:?}", miner.duplicate_returns());
    returned
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dies_for_good_loses_its_lease_and_another_worker_finishes_the_call() {
    let farm = BridgeFarm::start_sized("lease-expiry", SectorSize::MIB8, &["--lease-timeout", "4s"]).await;
    let sector = sector_ref(31, P8M);
    let (_events_connection, mut claims) = subscribe_events(&farm.vhost, "worker.*.claim").await.unwrap();

    let mut first = farm.start_worker_with("w-dies", "ap,pc1", "8MiB", &[]);
    let piece = add_piece(&farm, sector).await;
    let call = precommit1(&farm, sector, &piece).await;
    assert_eq!(claimed(&mut claims, &call).await, ("w-dies".to_string(), 1));
    first.kill();

    // Nobody renews the lease; after it expires the bridge dispatches attempt 2.
    let second = farm.start_worker_with("w-takes-over", "pc1", "8MiB", &[]);
    assert_eq!(claimed(&mut claims, &call).await, ("w-takes-over".to_string(), 2));
    let returned = returned_once(&farm.miner, &call, Duration::from_secs(120)).await;
    assert_eq!(returned.method, "ReturnSealPreCommit1");
    assert!(returned.params[2].is_null(), "PC1 failed: {}\n{}", returned.params[2], second.log_text());
    assert!(farm.bridge.log_text().contains("task dispatched again"), "{}", farm.bridge.log_text());

    // The dead worker comes back: it is told its attempt was superseded and
    // the miner still hears of the call once.
    let mut back = farm.start_worker_with("w-dies", "ap,pc1", "8MiB", &[]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(farm.miner.duplicate_returns().is_empty(), "returned twice: {:?}", farm.miner.duplicate_returns());
    assert!(back.terminate(Duration::from_secs(30)).success());
    let records = job_records(&farm.dir.path().join("state-w-dies"));
    let old = records.iter().find(|r| r["task"]["call_id"] == call.id.to_string()).expect("attempt 1 recorded");
    assert!(["superseded", "done"].contains(&old["state"].as_str().unwrap()), "{old:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_on_stop_redispatch_hands_its_job_to_another_worker_at_once() {
    // The default lease (10 min) would be far too long: the release is what re-dispatches.
    let farm = BridgeFarm::start_sized("release", SectorSize::MIB8, &[]).await;
    let sector = sector_ref(32, P8M);
    let (_events_connection, mut claims) = subscribe_events(&farm.vhost, "worker.*.claim").await.unwrap();

    let extra = ["--on-stop", "redispatch", "--shutdown-grace", "0s"];
    let mut first = farm.start_worker_with("w-stops", "ap,pc1", "8MiB", &extra);
    let piece = add_piece(&farm, sector).await;
    let call = precommit1(&farm, sector, &piece).await;
    assert_eq!(claimed(&mut claims, &call).await.1, 1);
    assert!(first.terminate(Duration::from_secs(30)).success());
    let records = job_records(&farm.dir.path().join("state-w-stops"));
    let released = records.iter().find(|r| r["task"]["call_id"] == call.id.to_string()).unwrap();
    assert_eq!(released["state"], "released", "{released:#}");

    let started = Instant::now();
    let _second = farm.start_worker_with("w-next", "pc1", "8MiB", &[]);
    assert_eq!(claimed(&mut claims, &call).await, ("w-next".to_string(), 2));
    let returned = returned_once(&farm.miner, &call, Duration::from_secs(120)).await;
    assert!(returned.params[2].is_null(), "PC1 failed: {}", returned.params[2]);
    assert!(started.elapsed() < Duration::from_secs(300), "re-dispatched by the release, not a lease expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pc1_still_waiting_when_its_ticket_window_passed_fails_so_the_miner_draws_a_new_ticket() {
    let farm = BridgeFarm::start_with("ticket", &["--pc1-ticket-window", "2s"]).await;
    let sector = sector_ref(33, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    let _ap = farm.start_worker("w-ap", "ap");
    let piece = add_piece(&farm, sector).await;
    let call = precommit1(&farm, sector, &piece).await;
    // No PC1 worker until the window has passed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pc1 = farm.start_worker("w-pc1", "pc1");
    let returned = returned_once(&farm.miner, &call, Duration::from_secs(60)).await;
    assert_eq!(returned.method, "ReturnSealPreCommit1");
    assert!(returned.params[1].is_null(), "no PC1 output for an expired ticket");
    assert_eq!(returned.params[2]["Code"], 0, "{}", returned.params[2]);
    let message = returned.params[2]["Message"].as_str().unwrap();
    assert!(message.contains("ticket expired"), "{message}");
    let cache = farm.dir.path().join("sealing/cache").join(sector.id.file_name());
    assert!(!cache.join("sc-02-data-layer-1.dat").exists(), "nothing was sealed\n{}", pc1.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_keeps_killing_its_process_is_dead_lettered_and_the_miner_gets_a_call_error() {
    let farm = BridgeFarm::start_sized("poison", SectorSize::MIB8, &[]).await;
    let sector = sector_ref(34, P8M);
    let worker = farm.start_worker_with("w-poison", "ap,pc1", "8MiB", &["--retry-backoff", "500ms"]);
    let piece = add_piece(&farm, sector).await;
    let call = precommit1(&farm, sector, &piece).await;

    // Every process that runs the PC1 dies (SIGKILL), as under an OOM killer.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut kills = 0;
    while farm.miner.returned(&call).is_none() {
        assert!(Instant::now() < deadline, "no Return\n{}", worker.log_text());
        if worker.log_text().contains(&call.id.to_string()) {
            for pid in child_pids(worker.pid()) {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
                kills += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let returned = returned_once(&farm.miner, &call, Duration::from_secs(5)).await;
    assert!(kills >= 3, "{kills} kills\n{}", worker.log_text());
    assert_eq!(returned.params[2]["Code"], 0, "{}", returned.params[2]);
    let message = returned.params[2]["Message"].as_str().unwrap();
    assert!(message.contains("poison"), "{message}");

    let connection =
        lapin::Connection::connect(&farm.vhost.url(), lapin::ConnectionProperties::default()).await.unwrap();
    let dead = dead_letters(&connection, 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(dead.len(), 1, "the task is in sealfarm.dead-letters");
    assert!(dead[0].0.starts_with("poison: "), "{}", dead[0].0);
    let task: Value = serde_json::from_slice(&dead[0].1.data).unwrap();
    assert_eq!(task["call_id"], call.id.to_string());
}

/// A call whose every attempt is claimed and then abandoned (a worker that
/// takes tasks and goes quiet about them, or results that never arrive) is
/// failed after `--max-attempts` with a CallError that names the cause,
/// instead of being dispatched again after every lease timeout forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_abandoned_at_every_attempt_fails_after_max_attempts() {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    use sealfarm_schemas::messages::StageSlots;
    use sealfarm_schemas::{topology, Stage, TaskMessage};

    let farm = BridgeFarm::start_with("max-attempts", &["--lease-timeout", "2s", "--max-attempts", "2"]).await;
    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await.unwrap();
    let sender = sealfarm_tests::TaskSender::open(&connection).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = topology::task_queue(Stage::Ap, SectorSize::KIB2);
    let mut tasks = channel
        .basic_consume(queue.as_str().into(), "ghost".into(), BasicConsumeOptions::default(), Default::default())
        .await
        .unwrap();
    let sector = sector_ref(7, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    let call: CallId =
        farm.worker.client.call("AddPiece", sealfarm_tests::devminer::add_piece_params(sector)).await.unwrap();

    // The ghost: heartbeats (so the bridge knows the farm is there), claims
    // each attempt it is given, and never says a word about it again.
    let attempts = std::sync::Mutex::new(Vec::new());
    let event = |kind| serde_json::to_vec(&EventMessage::new("ghost", kind)).unwrap();
    let ghost = async {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                Some(Ok(delivery)) = tasks.next() => {
                    let task: TaskMessage = serde_json::from_slice(&delivery.data).unwrap();
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                    let claim = EventKind::Claim {
                        call_id: task.call_id,
                        attempt: task.attempt,
                        sector: task.sector,
                        stage: task.stage(),
                    };
                    sender.publish_raw(sealfarm_tests::BRIDGE_EVENTS, &event(claim)).await.unwrap();
                    attempts.lock().unwrap().push(task.attempt);
                }
                _ = beat.tick() => {
                    let heartbeat = EventKind::Heartbeat {
                        hostname: "ghost".into(),
                        stages: vec![Stage::Ap],
                        sector_sizes: vec![SectorSize::KIB2],
                        slots: 1,
                        running: vec![],
                        capacity: vec![StageSlots { stage: Stage::Ap, sector_size: SectorSize::KIB2, slots: 1 }],
                        hardware: None,
                        storage_id: None,
                        files_url: None,
                        draining: false,
                        warming: vec![],
                        in_use: None,
                    };
                    sender.publish_raw(sealfarm_tests::BRIDGE_EVENTS, &event(heartbeat)).await.unwrap();
                }
            }
        }
    };
    let returned = tokio::select! {
        returned = returned_once(&farm.miner, &call, Duration::from_secs(60)) => returned,
        () = ghost => unreachable!("the ghost never stops"),
    };
    let error = returned.params[2].to_string();
    assert!(error.contains("after 2 attempts"), "the CallError names the attempts: {error}");
    assert!(error.contains("worker ghost held attempt 2 and sent no sign of life"), "and the cause: {error}");
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2], "two attempts were dispatched, no third");
}
