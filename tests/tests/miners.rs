//! One farm, several miners: two miner stand-ins (actors t01000 and
//! t01001), a bridge each, on one virtual host and one shared storage, and
//! two workers that serve both. Real RabbitMQ, real proofs.

use std::time::Duration;

use sealfarm_schemas::{RegisteredSealProof, SectorId, SectorRef, Stage};
use sealfarm_tests::devminer::{DevMiner, SealReport};
use sealfarm_tests::*;

const PROOF: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

fn sector(actor: u64, number: u64) -> SectorRef {
    SectorRef { id: SectorId { miner: actor, number }, proof_type: PROOF }
}

/// Both miners seal a 2 KiB sector at once through their own bridges on
/// the shared workers. Bridge t01000 is killed while its C2 runs and started
/// again: the other miner's calls go on untouched, and the killed bridge's
/// result, queued for it meanwhile, is returned after the restart. Every
/// call is returned once, to the miner that made it, and each proof
/// verifies with its own miner's prover id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_miners_seal_on_one_farm_and_a_killed_bridge_loses_nothing() {
    let vhost = TestVhost::new("miners");
    let dir = tempfile::tempdir().unwrap();
    let miners = [DevMiner::for_actor(2048, 1000), DevMiner::for_actor(2048, 1001)];
    let mut addresses = Vec::new();
    let mut listens = Vec::new();
    let mut bridges = Vec::new();
    for (miner, name) in miners.iter().zip(["bridge-a", "bridge-b"]) {
        let address = miner.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let listen = free_local_address();
        bridges.push(FarmProcess::start_named_bridge(&vhost, dir.path(), name, &miner.api_info(address), listen, &[]));
        addresses.push(address);
        listens.push(listen);
    }
    let mut registered = Vec::new();
    for (miner, bridge) in miners.iter().zip(&bridges) {
        let worker = miner
            .wait_for_worker(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}\nbridge log:\n{}", bridge.log_text()));
        registered.push(worker);
    }
    // Each bridge took its miner's actor address as its id.
    for (name, id) in [("bridge-a", "t01000"), ("bridge-b", "t01001")] {
        let kept = std::fs::read_to_string(dir.path().join(format!("state-{name}/bridge-id"))).unwrap();
        assert_eq!(kept.trim(), id);
    }

    let (a_url, b_url) = (format!("t01000=http://{}", listens[0]), format!("t01001=http://{}", listens[1]));
    let token = vhost.worker_token();
    let worker_args = ["--bridge", &a_url, "--bridge", &b_url, "--worker-token", &token];
    let stages = "ap,pc1,pc2,c1,c2,fin,ru";
    let _workers: Vec<FarmProcess> = ["shared-1", "shared-2"]
        .iter()
        .map(|id| FarmProcess::start_with(&vhost, dir.path(), id, stages, "2KiB", &worker_args))
        .collect();
    wait_for_workers(&vhost, &["shared-1", "shared-2"], Duration::from_secs(60)).await.unwrap();
    let (_claims_connection, claims) = collect_claims(&vhost).await.unwrap();

    let sectors = [sector(1000, 11), sector(1001, 21)];
    let mut sealing = tokio::task::JoinSet::new();
    for (n, (miner, worker)) in miners.iter().zip(&registered).enumerate() {
        let (miner, worker, sector) = (miner.clone(), worker.clone(), sectors[n]);
        sealing.spawn(async move { (n, miner.seal_cc(&worker, sector, Duration::from_secs(900)).await) });
    }

    // Bridge t01000 dies while a worker runs its C2.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !claims.lock().unwrap().iter().any(|(_, stage, number)| *stage == Stage::C2 && *number == 11) {
        assert!(std::time::Instant::now() < deadline, "the C2 of t01000's sector was never claimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bridges[0].kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    bridges[0] = FarmProcess::start_named_bridge(
        &vhost,
        dir.path(),
        "bridge-a",
        &miners[0].api_info(addresses[0]),
        listens[0],
        &[],
    );

    let mut reports: Vec<Option<SealReport>> = vec![None, None];
    while let Some(done) = sealing.join_next().await {
        let (n, report) = done.unwrap();
        let report = report.unwrap_or_else(|e| {
            panic!(
                "miner {n} could not seal: {e:#}\nbridge log:\n{}\nother bridge log:\n{}",
                bridges[n].log_text(),
                bridges[1 - n].log_text()
            )
        });
        reports[n] = Some(report);
    }
    for (n, report) in reports.iter().enumerate() {
        let report = report.as_ref().unwrap();
        let miner = &miners[n];
        // verify_sector_proof checks with the sector's own prover id (its miner's).
        assert!(report.verified, "the proof of {} does not verify", report.sector.id);
        assert!(miner.duplicate_returns().is_empty(), "a call returned twice to t0{}", miner.actor);
        let issued: std::collections::HashSet<uuid::Uuid> =
            report.calls.iter().map(|(_, call, _, _)| call.id).collect();
        let mut returned = miner.returned_calls();
        returned.sort();
        let mut expected: Vec<uuid::Uuid> = issued.iter().copied().collect();
        expected.sort();
        assert_eq!(returned, expected, "t0{} got exactly the Returns of the calls it made", miner.actor);
        for (method, call, _, _) in &report.calls {
            assert_eq!(call.sector.miner, miner.actor, "{method} of another miner's sector went to t0{}", miner.actor);
        }
    }
    // Both miners' sector files side by side on the shared storage.
    for name in ["s-t01000-11", "s-t01001-21"] {
        assert!(dir.path().join("sealing/sealed").join(name).is_file(), "sealed/{name} is missing");
    }
}
