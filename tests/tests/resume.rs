//! PC1 resumes from its last finished layer after a SIGKILL of the worker,
//! and a damaged layer is found and computed again. 8 MiB sectors (2 SDR
//! layers, ~3-5 s of PC1), real proofs; each resumed sector must reach the
//! same CommR as an uninterrupted seal of the same sector and ticket, and its
//! C2 proof must verify (8 MiB Groth parameters: `scripts/setup` makes them).

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use sealfarm_schemas::{
    Bytes, EventKind, EventMessage, Outcome, PieceInfo, RegisteredSealProof, SectorCids, SectorRef, Stage, StageOutput,
    TaskMessage,
};
use sealfarm_tests::{cc, job_records, subscribe_events, verify_sector_proof, FarmProcess, Publisher, TestVhost};

const P8M: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_8MIB_V1_1;
const STAGES: &str = "ap,pc1,pc2,c1,c2";

async fn run(publisher: &mut Publisher, task: &TaskMessage, worker: &FarmProcess) -> StageOutput {
    publisher.publish(task).await.unwrap();
    // An 8 MiB C2 takes about a minute alone on 2 cores; this file's two
    // tests may prove at once, beside the other test binaries' work.
    let wait = if task.stage() == Stage::C2 { Duration::from_secs(600) } else { Duration::from_secs(180) };
    let (result, _) =
        publisher.result_of(task, wait).await.unwrap_or_else(|e| panic!("{e:#}\nworker log:\n{}", worker.log_text()));
    match result.outcome {
        Outcome::Done(output) => output,
        Outcome::Failed(err) => panic!("{} failed: {err}\nworker log:\n{}", task.stage(), worker.log_text()),
    }
}

async fn add_piece(publisher: &mut Publisher, sector: SectorRef, worker: &FarmProcess) -> PieceInfo {
    match run(publisher, &cc::add_piece(sector), worker).await {
        StageOutput::Ap { piece } => piece,
        other => panic!("{other:?}"),
    }
}

/// PC2, C1 and C2 of a sector after its PC1; returns its CIDs once its
/// proof verified.
async fn finish_sector(
    publisher: &mut Publisher,
    sector: SectorRef,
    ticket: [u8; 32],
    piece: &PieceInfo,
    pc1_out: &Bytes,
    worker: &FarmProcess,
) -> SectorCids {
    let StageOutput::Pc2 { cids } = run(publisher, &cc::precommit2(sector, pc1_out), worker).await else {
        panic!("PC2 output expected")
    };
    let seed = cc::randomness();
    let StageOutput::C1 { c1_out } = run(publisher, &cc::commit1(sector, ticket, seed, piece, &cids), worker).await
    else {
        panic!("C1 output expected")
    };
    let StageOutput::C2 { proof } = run(publisher, &cc::commit2(sector, &c1_out), worker).await else {
        panic!("C2 output expected")
    };
    let verified = verify_sector_proof(sector, &cids, ticket, seed, &proof.0).unwrap();
    assert!(verified, "the proof of the resumed sector must verify");
    cids
}

/// CommR/CommD of the same sector and ticket sealed without interruption,
/// on a farm of its own.
async fn uninterrupted(sector: SectorRef, ticket: [u8; 32]) -> SectorCids {
    let vhost = TestVhost::new("resume-reference");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let worker = FarmProcess::start(&vhost, dir.path(), "w-reference", "ap,pc1,pc2", "8MiB");
    let piece = add_piece(&mut publisher, sector, &worker).await;
    let StageOutput::Pc1 { pc1_out } = run(&mut publisher, &cc::precommit1(sector, ticket, &piece), &worker).await
    else {
        panic!("PC1 output expected")
    };
    let StageOutput::Pc2 { cids } = run(&mut publisher, &cc::precommit2(sector, &pc1_out), &worker).await else {
        panic!("PC2 output expected")
    };
    cids
}

/// Starts PC1 and SIGKILLs the worker as soon as it reports layer 1 done.
async fn kill_after_layer_1(vhost: &TestVhost, publisher: &Publisher, pc1: &TaskMessage, worker: &mut FarmProcess) {
    let (_connection, mut events) = subscribe_events(vhost, "worker.*.progress").await.unwrap();
    publisher.publish(pc1).await.unwrap();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(120), events.next())
            .await
            .unwrap_or_else(|_| panic!("no layer progress\n{}", worker.log_text()))
            .unwrap()
            .unwrap();
        let event: EventMessage = serde_json::from_slice(&delivery.data).unwrap();
        if let EventKind::Progress { call_id, done: 1, total: 2, how, .. } = event.event {
            if call_id == pc1.call_id && how == "computed" {
                worker.kill();
                return;
            }
        }
    }
}

fn pc1_record(state_dir: &Path, pc1: &TaskMessage) -> serde_json::Value {
    job_records(state_dir)
        .into_iter()
        .find(|r| r["task"]["call_id"] == pc1.call_id.to_string())
        .expect("the PC1 job is recorded")
}

/// (layer, run that computed it) from a job record.
fn layer_runs(record: &serde_json::Value) -> Vec<(u64, u64)> {
    record["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["layer"].as_u64().unwrap(), l["computed_in_run"].as_u64().unwrap()))
        .collect()
}

/// A farm whose worker was SIGKILLed right after PC1 layer 1 of an 8 MiB
/// sector, with the CommR an uninterrupted seal of that sector reaches.
struct Interrupted {
    vhost: TestVhost,
    dir: tempfile::TempDir,
    publisher: Publisher,
    sector: SectorRef,
    ticket: [u8; 32],
    piece: PieceInfo,
    pc1: TaskMessage,
    worker_id: &'static str,
    reference: tokio::task::JoinHandle<SectorCids>,
}

impl Interrupted {
    async fn new(label: &str, number: u64, worker_id: &'static str) -> Self {
        let vhost = TestVhost::new(label);
        let dir = tempfile::tempdir().unwrap();
        let mut publisher = Publisher::connect(&vhost).await.unwrap();
        let sector = cc::sector(number, P8M);
        let ticket = cc::randomness();
        let reference = tokio::spawn(uninterrupted(sector, ticket));
        let mut worker = FarmProcess::start(&vhost, dir.path(), worker_id, STAGES, "8MiB");
        let piece = add_piece(&mut publisher, sector, &worker).await;
        let pc1 = cc::precommit1(sector, ticket, &piece);
        kill_after_layer_1(&vhost, &publisher, &pc1, &mut worker).await;
        Interrupted { vhost, dir, publisher, sector, ticket, piece, pc1, worker_id, reference }
    }

    /// Starts the worker again, lets it finish PC1, runs PC2 and C1, checks
    /// CommR against the uninterrupted seal, stops the worker; returns its
    /// log and the PC1 job record.
    async fn resume_and_finish(mut self) -> (String, serde_json::Value) {
        let mut worker = FarmProcess::start(&self.vhost, self.dir.path(), self.worker_id, STAGES, "8MiB");
        let (result, _) = self.publisher.result_of(&self.pc1, Duration::from_secs(180)).await.unwrap();
        let Outcome::Done(StageOutput::Pc1 { pc1_out }) = result.outcome else {
            panic!("PC1 failed: {:?}\n{}", result.outcome, worker.log_text())
        };
        let cids = finish_sector(&mut self.publisher, self.sector, self.ticket, &self.piece, &pc1_out, &worker).await;
        assert_eq!(cids, self.reference.await.unwrap(), "the resumed sector must equal an uninterrupted seal");
        let log = worker.log_text();
        assert!(worker.terminate(Duration::from_secs(30)).success());
        (log, pc1_record(&self.dir.path().join(format!("state-{}", self.worker_id)), &self.pc1))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pc1_killed_after_layer_1_resumes_from_layer_2_and_the_sector_verifies() {
    let interrupted = Interrupted::new("resume", 21, "w-resume").await;
    let (log, record) = interrupted.resume_and_finish().await;

    // The job's own record: layer 1 from the first run, kept; layer 2 from the second.
    assert_eq!(layer_runs(&record), vec![(1, 1), (2, 2)], "{record:#}");
    let history: Vec<&str> = record["history"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(history.contains(&"run 2: layers 1 verified (blake3) and kept"), "{history:?}");
    // And the proofs library's own word for it.
    assert!(log.contains("skipping layer 1, already generated"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_layer_is_found_on_resume_and_computed_again() {
    let interrupted = Interrupted::new("resume-damaged", 22, "w-damaged").await;

    // Flip bytes in the middle of layer 1, keeping its length (all the library checks).
    let cache = interrupted.dir.path().join("sealing/cache").join(interrupted.sector.id.file_name());
    let layer = cache.join("sc-02-data-layer-1.dat");
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&layer, &bytes).unwrap();

    let (_, record) = interrupted.resume_and_finish().await;
    assert_eq!(layer_runs(&record), vec![(1, 2), (2, 2)], "both layers computed in run 2: {record:#}");
    let history = record["history"].to_string();
    assert!(history.contains("run 2: layer 1 removed and recomputed: checksum mismatch"), "{history}");
}
