//! The spine: one real 2 KiB CC sector travels AddPiece → PC1 → PC2 → C1 →
//! C2 → finalize → release-unsealed through a real RabbitMQ to a real worker
//! process, and comes back as a proof the library verifies.
//!
//! This is the one test that runs C2 (≈1–2 minutes on 2 cores).

use std::time::{Duration, Instant};

use filecoin_proofs_api::seal::verify_seal;
use filecoin_proofs_api::SectorId as ApiSectorId;
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::{Outcome, RegisteredSealProof, ResultMessage, SectorRef, StageOutput, Task, TaskMessage};
use sealfarm_tests::{cc, FarmProcess, Publisher, TestVhost};
use sealfarm_worker::sealing::proofs::api_proof;

const ZERO_2KIB: &str = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";

async fn run(publisher: &mut Publisher, task: TaskMessage, timings: &mut Vec<(String, u64, u128)>) -> StageOutput {
    let sent = Instant::now();
    publisher.publish(&task).await.unwrap();
    let (result, _): (ResultMessage, _) = publisher.result_of(&task, Duration::from_secs(600)).await.unwrap();
    let round_trip = sent.elapsed().as_millis();
    timings.push((task.stage().to_string(), result.finished_at_ms - result.started_at_ms, round_trip));
    match result.outcome {
        Outcome::Done(output) => output,
        Outcome::Failed(err) => panic!("{} failed: {err}", task.stage()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2kib_cc_sector_seals_through_rabbitmq_and_its_proof_verifies() {
    let vhost = TestVhost::new("spine");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let mut worker = FarmProcess::start(&vhost, dir.path(), "w-spine", "ap,pc1,pc2,c1,c2,fin,ru", "2KiB");
    let sector: SectorRef = cc::sector(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    let (ticket, seed) = (cc::randomness(), cc::randomness());
    let mut timings = Vec::new();

    let StageOutput::Ap { piece } = run(&mut publisher, cc::add_piece(sector), &mut timings).await else { panic!() };
    assert_eq!(piece.piece_cid.to_string(), ZERO_2KIB);
    let StageOutput::Pc1 { pc1_out } = run(&mut publisher, cc::precommit1(sector, ticket, &piece), &mut timings).await
    else {
        panic!()
    };
    let pc1_json: serde_json::Value = serde_json::from_slice(&pc1_out.0).unwrap();
    assert!(pc1_json.get("_lotus_SealRandomness").is_some(), "PC1 output carries lotus' ticket key");
    let StageOutput::Pc2 { cids } = run(&mut publisher, cc::precommit2(sector, &pc1_out), &mut timings).await else {
        panic!()
    };
    // CommD of a CC sector is the zero-piece commitment of its size.
    assert_eq!(cids.unsealed.as_ref().unwrap().to_string(), ZERO_2KIB);
    let StageOutput::C1 { c1_out } =
        run(&mut publisher, cc::commit1(sector, ticket, seed, &piece, &cids), &mut timings).await
    else {
        panic!()
    };
    let StageOutput::C2 { proof } = run(&mut publisher, cc::commit2(sector, &c1_out), &mut timings).await else {
        panic!()
    };
    assert_eq!(proof.0.len(), 192, "one partition of 192 bytes for 2 KiB");

    let api = api_proof(sector.proof_type).unwrap();
    let comm_r = Commitment::Replica.from_cid(cids.sealed.as_ref().unwrap()).unwrap();
    let comm_d = Commitment::Data.from_cid(cids.unsealed.as_ref().unwrap()).unwrap();
    let prover = sector.id.prover_id();
    let id = ApiSectorId::from(sector.id.number);
    assert!(verify_seal(api, comm_r, comm_d, prover, id, ticket, seed, &proof.0).unwrap(), "the proof verifies");
    let mut wrong_seed = seed;
    wrong_seed[0] ^= 1;
    assert!(
        !verify_seal(api, comm_r, comm_d, prover, id, ticket, wrong_seed, &proof.0).unwrap(),
        "a wrong seed is rejected"
    );

    // Finalize trims the cache to what proving needs; release removes the unsealed copy.
    let cache = dir.path().join("sealing/cache").join(sector.id.file_name());
    let names = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    // lotus' tar extractor rejects any cache file the proofs library did not write.
    let sealing_files = names(&cache);
    assert!(
        sealing_files.iter().all(|f| f == "p_aux" || f == "t_aux" || f.starts_with("sc-02-data-")),
        "foreign files in the cache directory: {sealing_files:?}"
    );
    let before = sealing_files.len();
    run(&mut publisher, TaskMessage::new(sector, Task::Fin {}), &mut timings).await;
    let left: Vec<String> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.len() < before, "finalize removed nothing: {left:?}");
    assert!(left.iter().any(|f| f == "p_aux") && left.iter().any(|f| f.contains("tree-r-last")), "{left:?}");
    assert!(!left.iter().any(|f| f.contains("layer")), "layers survive finalize: {left:?}");
    let unsealed = dir.path().join("sealing/unsealed").join(sector.id.file_name());
    assert!(unsealed.exists());
    run(&mut publisher, TaskMessage::new(sector, Task::Ru { keep_unsealed: None }), &mut timings).await;
    assert!(!unsealed.exists(), "release-unsealed removed the unsealed file");

    eprintln!("stage  worker ms  round trip ms (2 KiB, through RabbitMQ)");
    for (stage, worker_ms, round_trip_ms) in &timings {
        eprintln!("{stage:<6} {worker_ms:>9}  {round_trip_ms:>13}");
    }
    assert!(worker.terminate(Duration::from_secs(60)).success());
}
