//! The simulated compute backend (`sealfarm-worker run --simulate-compute`),
//! the benchmark mode `sealfarm-bench` measures the farm's own throughput
//! with: it says so at start, answers AddPiece at once with a placeholder
//! piece of the sector's size, and computes nothing else — a PC1 sent to it
//! fails with a reason that names the mode instead of pretending.

use std::time::Duration;

use sealfarm_schemas::{Outcome, RegisteredSealProof, StageOutput};
use sealfarm_tests::{cc, FarmProcess, Publisher, TestVhost};

#[tokio::test(flavor = "multi_thread")]
async fn the_simulated_backend_answers_addpiece_only_and_says_what_it_is() {
    let vhost = TestVhost::new("simulate");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let worker = FarmProcess::start_with(&vhost, dir.path(), "sim", "ap,pc1", "2KiB", &["--simulate-compute"]);
    let sector = cc::sector(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);

    let ap = cc::add_piece(sector);
    publisher.publish(&ap).await.unwrap();
    let (result, _) = publisher.result_of(&ap, Duration::from_secs(60)).await.unwrap();
    let Outcome::Done(StageOutput::Ap { piece }) = result.outcome else { panic!("{:?}", result.outcome) };
    assert_eq!(piece.size, 2048, "a placeholder piece that fills the sector");
    assert!(!dir.path().join("sealing/unsealed").join(sector.id.file_name()).exists(), "no data was written");

    // Past the input checks (they look for the unsealed file) to the backend itself.
    std::fs::write(dir.path().join("sealing/unsealed").join(sector.id.file_name()), vec![0u8; 2048]).unwrap();
    let pc1 = cc::precommit1(sector, cc::randomness(), &piece);
    publisher.publish(&pc1).await.unwrap();
    let (result, _) = publisher.result_of(&pc1, Duration::from_secs(60)).await.unwrap();
    let Outcome::Failed(error) = result.outcome else { panic!("a simulated PC1 must not succeed") };
    assert!(error.message.contains("--simulate-compute"), "{error}");
    assert!(worker.log_text().contains("SIMULATED"), "the start-up table says so:\n{}", worker.log_text());
}
