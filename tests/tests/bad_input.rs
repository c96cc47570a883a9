//! Bad input never takes a worker down or costs another job: a task that can
//! never run is dead-lettered with a reason a person can read, its call is
//! failed, and a good task next to it completes.

use std::time::Duration;

use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::topology::task_queue;
use sealfarm_schemas::{
    Bytes, ErrorCode, Outcome, RegisteredSealProof, SectorSize, Stage, StageOutput, Task, TaskMessage,
};
use sealfarm_tests::{cc, FarmProcess, Publisher, TestVhost};

/// CommD/CommP of an all-zero 2 KiB sector.
const ZERO_2KIB: &str = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";
const P2K: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

#[tokio::test(flavor = "multi_thread")]
async fn bad_tasks_are_dead_lettered_with_reasons_and_a_good_one_completes() {
    let vhost = TestVhost::new("bad-input");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let mut worker = FarmProcess::start(&vhost, dir.path(), "w-bad", "ap,pc2", "2KiB");

    let ap_queue = task_queue(Stage::Ap, SectorSize::KIB2);
    // 1. not JSON at all
    publisher.publish_raw(&ap_queue, b"{this is not json").await.unwrap();
    // 2. a proof type lotus does not define
    let unknown_proof = cc::add_piece(cc::sector(1, RegisteredSealProof(42)));
    publisher.publish_raw(&ap_queue, &serde_json::to_vec(&unknown_proof).unwrap()).await.unwrap();
    // 3. an 8 MiB sector on the 2 KiB queue
    let wrong_size = cc::add_piece(cc::sector(2, RegisteredSealProof::STACKED_DRG_8MIB_V1_1));
    publisher.publish_raw(&ap_queue, &serde_json::to_vec(&wrong_size).unwrap()).await.unwrap();
    // 4. a PC2 whose sector has no files and whose PC1 output is garbage
    let no_inputs = TaskMessage::new(cc::sector(3, P2K), Task::Pc2 { pc1_out: Bytes(b"{}".to_vec()) });
    publisher.publish(&no_inputs).await.unwrap();
    // 5. a good AddPiece
    let good = cc::add_piece(cc::sector(4, P2K));
    publisher.publish(&good).await.unwrap();

    let (result, mut others) = publisher.result_of(&good, Duration::from_secs(60)).await.unwrap();
    match &result.outcome {
        Outcome::Done(StageOutput::Ap { piece }) => {
            assert_eq!(piece.size, 2048);
            assert_eq!(piece.piece_cid.to_string(), ZERO_2KIB);
            assert_eq!(Commitment::Data.from_cid(&piece.piece_cid).unwrap().len(), 32);
        }
        other => panic!("good task did not complete: {other:?}"),
    }
    assert_eq!(result.worker, "w-bad");

    let dead = publisher.dead_letters(4, Duration::from_secs(30)).await.unwrap();
    let reasons: Vec<&str> = dead.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(dead.len(), 4, "expected 4 dead letters, got {reasons:?}");
    let find = |code: &str| {
        reasons.iter().find(|r| r.starts_with(code)).copied().unwrap_or_else(|| panic!("no {code} in {reasons:?}"))
    };
    assert!(find("malformed:").contains("not JSON"));
    assert!(find("unknown-proof-type:").contains("seal proof type 42"));
    let wrong = find("wrong-sector-size:");
    assert!(wrong.contains("8MiB") && wrong.contains("serves 2KiB"), "{wrong}");
    let missing = find("missing-input:");
    assert!(missing.contains("PC1 output"), "{missing}");
    // The original bytes travel with the reason, so an operator can replay them.
    assert!(dead.iter().any(|(_, d)| d.data == b"{this is not json"));

    // Every call that could be identified was failed back with CallError 0.
    others.extend(publisher.drain_results(Duration::from_secs(2)).await);
    for task in [&unknown_proof, &wrong_size, &no_inputs] {
        let failed = others
            .iter()
            .find(|r| r.call_id == task.call_id)
            .unwrap_or_else(|| panic!("no result for {}", task.call_id));
        match &failed.outcome {
            Outcome::Failed(err) => {
                assert_eq!(err.code, ErrorCode::UNKNOWN);
                assert!(err.message.contains("rejected by sealfarm worker w-bad"), "{}", err.message);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    assert!(worker.is_running(), "worker died:\n{}", worker.log_text());
    assert!(worker.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_proofs_library_fails_only_that_job() {
    let vhost = TestVhost::new("panic");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let mut worker = FarmProcess::start(&vhost, dir.path(), "w-panic", "ap,pc1,pc2", "2KiB");

    let sector = cc::sector(10, P2K);
    let ap = cc::add_piece(sector);
    publisher.publish(&ap).await.unwrap();
    let (ap_result, _) = publisher.result_of(&ap, Duration::from_secs(60)).await.unwrap();
    let Outcome::Done(StageOutput::Ap { piece }) = ap_result.outcome else {
        panic!("AP failed: {:?}", ap_result.outcome)
    };
    let pc1 = cc::precommit1(sector, cc::randomness(), &piece);
    publisher.publish(&pc1).await.unwrap();
    let (pc1_result, _) = publisher.result_of(&pc1, Duration::from_secs(120)).await.unwrap();
    let Outcome::Done(StageOutput::Pc1 { pc1_out }) = pc1_result.outcome else {
        panic!("PC1 failed: {:?}", pc1_result.outcome)
    };

    // Damage the last layer with bytes that are not field elements.
    let cache = dir.path().join("sealing/cache").join(sector.id.file_name());
    let layer = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("layer"))
        .max()
        .expect("PC1 wrote layer files");
    let len = std::fs::metadata(&layer).unwrap().len() as usize;
    std::fs::write(&layer, vec![0xffu8; len]).unwrap();

    let pc2 = cc::precommit2(sector, &pc1_out);
    publisher.publish(&pc2).await.unwrap();
    let (pc2_result, _) = publisher.result_of(&pc2, Duration::from_secs(120)).await.unwrap();
    match &pc2_result.outcome {
        Outcome::Failed(err) => {
            eprintln!("PC2 failure: {}", err.message);
            assert!(err.message.contains("pc2 of s-t01000-10"), "{}", err.message)
        }
        other => panic!("PC2 over a damaged layer should fail, got {other:?}"),
    }

    // The worker is alive and still seals, PC2 included.
    let next = cc::sector(11, P2K);
    let ap = cc::add_piece(next);
    publisher.publish(&ap).await.unwrap();
    let (ap_result, _) = publisher.result_of(&ap, Duration::from_secs(60)).await.unwrap();
    let Outcome::Done(StageOutput::Ap { piece }) = ap_result.outcome else {
        panic!("AP failed: {:?}", ap_result.outcome)
    };
    let pc1 = cc::precommit1(next, cc::randomness(), &piece);
    publisher.publish(&pc1).await.unwrap();
    let (pc1_result, _) = publisher.result_of(&pc1, Duration::from_secs(120)).await.unwrap();
    let Outcome::Done(StageOutput::Pc1 { pc1_out }) = pc1_result.outcome else {
        panic!("PC1 failed: {:?}", pc1_result.outcome)
    };
    let pc2 = cc::precommit2(next, &pc1_out);
    publisher.publish(&pc2).await.unwrap();
    let (pc2_result, _) = publisher.result_of(&pc2, Duration::from_secs(120)).await.unwrap();
    assert!(matches!(pc2_result.outcome, Outcome::Done(StageOutput::Pc2 { .. })), "{:?}", pc2_result.outcome);
    assert!(worker.is_running(), "worker died:\n{}", worker.log_text());
    assert!(worker.terminate(Duration::from_secs(30)).success());
}

/// What the bridge and a worker cannot decode on their own queues (a
/// result, an event, a control message; garbage or a newer schema) is
/// dead-lettered with its reason and source queue, and counted; the farm
/// goes on (a call made afterwards is returned).
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_results_events_and_controls_are_dead_lettered_with_their_reason() {
    use sealfarm_schemas::topology;
    use sealfarm_tests::devminer::{add_piece_params, sector_ref};

    let farm = sealfarm_tests::BridgeFarm::start("undecodable").await;
    let _worker = farm.start_worker("w1", "ap");
    sealfarm_tests::wait_for_workers(&farm.vhost, &["w1"], Duration::from_secs(60)).await.unwrap();
    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await.unwrap();
    let sender = sealfarm_tests::TaskSender::open(&connection).await.unwrap();
    let newer = serde_json::json!({"schema": 99, "call_id": uuid::Uuid::new_v4(), "outcome": "from the future"});
    let own_queue = topology::worker_queue("w1");
    let sent: [(&str, Vec<u8>); 4] = [
        (sealfarm_tests::BRIDGE_RESULTS, b"{not json".to_vec()),
        (sealfarm_tests::BRIDGE_RESULTS, serde_json::to_vec(&newer).unwrap()),
        (sealfarm_tests::BRIDGE_EVENTS, br#"{"schema":1,"worker":"w1"}"#.to_vec()),
        (&own_queue, br#"{"schema":1,"control":"self-destruct"}"#.to_vec()),
    ];
    for (queue, body) in &sent {
        sender.publish_raw(queue, body).await.unwrap();
    }

    let dead = sealfarm_tests::dead_letters(&connection, 4, Duration::from_secs(30)).await.unwrap();
    let seen: Vec<(String, String)> = dead
        .iter()
        .map(|(reason, d)| {
            (sealfarm_runtime::broker::header(d, topology::SOURCE_QUEUE_HEADER).unwrap_or_default(), reason.clone())
        })
        .collect();
    assert_eq!(seen.len(), 4, "four dead letters: {seen:?}");
    let from = |queue: &str, start: &str| {
        seen.iter()
            .find(|(q, r)| q == queue && r.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} dead letter from {queue} in {seen:?}"))
            .1
            .clone()
    };
    assert!(from(sealfarm_tests::BRIDGE_RESULTS, "malformed:").contains("not JSON"));
    assert!(from(sealfarm_tests::BRIDGE_RESULTS, "unsupported-schema:").contains("version 99"));
    assert!(from(sealfarm_tests::BRIDGE_EVENTS, "malformed:").contains("not an event message"));
    assert!(from(&own_queue, "malformed:").contains("not a control message"));
    // The body is kept as it came, for the operator.
    assert!(dead.iter().any(|(_, d)| d.data == b"{not json"), "the unreadable body is kept");

    let metrics = reqwest::get(format!("http://{}/metrics", farm.listen)).await.unwrap().text().await.unwrap();
    for (queue, reason, count) in [
        (sealfarm_tests::BRIDGE_RESULTS, "malformed", 1),
        (sealfarm_tests::BRIDGE_RESULTS, "unsupported-schema", 1),
        (sealfarm_tests::BRIDGE_EVENTS, "malformed", 1),
    ] {
        let line = format!(
            "sealfarm_undecodable_messages_total{{miner=\"t01000\",queue=\"{queue}\",reason=\"{reason}\"}} {count}"
        );
        assert!(metrics.contains(&line), "/metrics lacks {line}:\n{metrics}");
    }

    // The farm carries on.
    let call = farm.worker.client.call("AddPiece", add_piece_params(sector_ref(1, P2K))).await.unwrap();
    let returned = farm.miner.wait_for_return(&call, Duration::from_secs(60)).await.unwrap();
    assert!(returned.params[2].is_null(), "AddPiece failed: {}", returned.params[2]);
}
