//! The simulated compute backend (`sealfarm-worker run --simulate-compute`),
//! the benchmark mode `sealfarm-bench` measures the farm's own throughput
//! with: it says so at start and answers AddPiece at once with a placeholder
//! piece of the sector's size — and it refuses to start where it could
//! answer a real miner's calls (any stage but AddPiece, a real sector size).

use std::time::Duration;

use sealfarm_schemas::{Outcome, RegisteredSealProof, StageOutput};
use sealfarm_tests::{binary, cc, FarmProcess, Publisher, TestVhost};

#[tokio::test(flavor = "multi_thread")]
async fn the_simulated_backend_answers_addpiece_with_a_placeholder_and_says_so() {
    let vhost = TestVhost::new("simulate");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let worker = FarmProcess::start_with(&vhost, dir.path(), "sim", "ap", "2KiB", &["--simulate-compute"]);
    let sector = cc::sector(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    let ap = cc::add_piece(sector);
    publisher.publish(&ap).await.unwrap();
    let (result, _) = publisher.result_of(&ap, Duration::from_secs(60)).await.unwrap();
    let Outcome::Done(StageOutput::Ap { piece }) = result.outcome else { panic!("{:?}", result.outcome) };
    assert_eq!(piece.size, 2048, "a placeholder piece that fills the sector");
    assert!(!dir.path().join("sealing/unsealed").join(sector.id.file_name()).exists(), "no data was written");
    assert!(worker.log_text().contains("SIMULATED"), "the start-up table says so:\n{}", worker.log_text());
}

#[test]
fn the_simulated_backend_refuses_anything_a_real_miner_could_send() {
    for (stages, sizes, named) in [("ap,pc1", "2KiB", "pc1"), ("ap", "32GiB", "32GiB")] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(binary("sealfarm-worker"))
            .args(["run", "--simulate-compute", "--stages", stages, "--sector-sizes", sizes, "--cpu-proving"])
            .args(["--metrics-listen", "off", "--amqp", "amqp://127.0.0.1:1/%2f"])
            .arg("--sealing-path")
            .arg(dir.path().join("sealing"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("benchmark mode") && stderr.contains(named), "{stderr}");
    }
}
