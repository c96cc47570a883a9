//! Snap deals, unsealing and DataCid through the farm, as a lotus-miner
//! drives them (real RabbitMQ, real proofs, 2 KiB sectors): the snapped
//! sector's update proof verifies with the proofs library against the CIDs
//! the miner received, unsealing gives back the pushed deal bytes, the
//! partial-file `/allocated/` answers follow what was freed, and the sector
//! key regenerated from the data is byte-identical to the original.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use filecoin_proofs_api::UnpaddedBytesAmount;
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::{Cid, PieceInfo, RegisteredSealProof, SectorCids, SectorRef};
use sealfarm_tests::devminer::{deal_bytes, sector_ref, SealReport};
use sealfarm_tests::{BridgeFarm, FarmProcess};
use serde_json::{json, Value};

const PROOF: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
const STAGE_TIMEOUT: Duration = Duration::from_secs(180);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A call whose piece data the miner pushes; its output.
async fn call_with_push(
    farm: &BridgeFarm,
    method: &str,
    params: impl FnOnce(Value) -> Value,
    data: Vec<u8>,
    report: &mut SealReport,
) -> Value {
    farm.miner
        .call_pushing(&farm.worker, method, params, data, STAGE_TIMEOUT, report)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", farm.bridge.log_text()))
}

async fn call(farm: &BridgeFarm, method: &str, params: Value, report: &mut SealReport) -> Value {
    farm.miner
        .call(&farm.worker, method, params, STAGE_TIMEOUT, report)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", farm.bridge.log_text()))
}

/// `GET /remote/unsealed/<sector>/<spt>/allocated/<offset>/<size>`: its status.
async fn allocated(farm: &BridgeFarm, listen: SocketAddr, sector: SectorRef, offset: u64, size: u64) -> u16 {
    let url = format!(
        "http://{listen}/remote/unsealed/{}/{}/allocated/{offset}/{size}",
        sector.id.file_name(),
        sector.proof_type.0
    );
    let token = farm.miner.mint(&["admin"]);
    reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn sector_file(farm: &BridgeFarm, kind: &str, sector: SectorRef) -> PathBuf {
    farm.dir.path().join("sealing").join(kind).join(sector.id.file_name())
}

/// Unpads `len` bytes of a piece starting at padded byte `start` of an unsealed file.
fn unpadded(file: &[u8], start: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    filecoin_proofs_api::fr32::write_unpadded(&file[start..], &mut out, 0, len).unwrap();
    out
}

fn cid(value: &Value) -> Cid {
    serde_json::from_value(value.clone()).unwrap()
}

/// AddPiece (CC), PC1, PC2, FinalizeSector, ReleaseUnsealed: a committed
/// capacity sector as it waits for a snap deal; its CIDs.
async fn seal_cc(farm: &BridgeFarm, sector: SectorRef, report: &mut SealReport) -> SectorCids {
    let ticket = sealfarm_tests::cc::randomness();
    let piece = call(farm, "AddPiece", sealfarm_tests::devminer::add_piece_params(sector), report).await;
    let pc1_out = call(farm, "SealPreCommit1", json!([sector, b64(&ticket), [piece]]), report).await;
    let cids = call(farm, "SealPreCommit2", json!([sector, pc1_out]), report).await;
    call(farm, "FinalizeSector", json!([sector]), report).await;
    call(farm, "ReleaseUnsealed", json!([sector, null]), report).await;
    serde_json::from_value(cids).unwrap()
}

fn start_worker(farm: &BridgeFarm) -> FarmProcess {
    farm.start_worker("snap-w1", "ap,pc1,pc2,fin,ru,update,pr1,pr2,gsk,fru,unseal,dc")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cc_sector_is_snapped_proved_unsealed_and_its_key_regenerated() {
    let farm = BridgeFarm::start("snap").await;
    let _worker = start_worker(&farm);
    let sector = sector_ref(1, PROOF);
    let mut report = SealReport { sector, calls: Vec::new(), verified: false };
    let cc = seal_cc(&farm, sector, &mut report).await;
    let sector_key = cc.sealed.clone().expect("PC2 gave CommR");
    let original_key = std::fs::read(sector_file(&farm, "sealed", sector)).unwrap();

    // The deal: two pieces of 1016 bytes, pushed by the miner into the sector's new unsealed file.
    let (d1, d2) = (deal_bytes(1016, 1), deal_bytes(1016, 2));
    let p1 = call_with_push(&farm, "AddPiece", |r| json!([sector, [], 1016, r]), d1.clone(), &mut report).await;
    let p2 = call_with_push(&farm, "AddPiece", |r| json!([sector, [1016], 1016, r]), d2.clone(), &mut report).await;
    let pieces: Vec<PieceInfo> = vec![serde_json::from_value(p1.clone()).unwrap(), serde_json::from_value(p2).unwrap()];
    let staged = std::fs::read(sector_file(&farm, "unsealed", sector)).unwrap();
    assert_eq!(staged.len(), 2048);

    // DataCid of the first piece's bytes: the CommP AddPiece gave, and the one computed here.
    let api = sealfarm_worker::sealing::proofs::api_proof(PROOF).unwrap();
    let local = filecoin_proofs_api::seal::generate_piece_commitment(api, &d1[..], UnpaddedBytesAmount(1016)).unwrap();
    let dc = call_with_push(&farm, "DataCid", |r| json!([1016, r]), d1.clone(), &mut report).await;
    let dc: PieceInfo = serde_json::from_value(dc).unwrap();
    assert_eq!(dc, pieces[0], "DataCid gives what AddPiece gave");
    assert_eq!(Commitment::Data.from_cid(&dc.piece_cid).unwrap(), local.commitment, "CommP computed here");

    // Snap: ReplicaUpdate, then both update proofs; the SNARK verifies
    // against the CIDs the miner received.
    let out = call(&farm, "ReplicaUpdate", json!([sector, pieces]), &mut report).await;
    let (new_sealed, new_unsealed) = (cid(&out["NewSealed"]), cid(&out["NewUnsealed"]));
    let comm_d = filecoin_proofs_api::seal::compute_comm_d(
        api,
        &pieces
            .iter()
            .map(|p| filecoin_proofs_api::PieceInfo {
                commitment: Commitment::Data.from_cid(&p.piece_cid).unwrap(),
                size: UnpaddedBytesAmount(p.size / 128 * 127),
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(Commitment::Data.from_cid(&new_unsealed).unwrap(), comm_d, "the new CommD is the deal pieces'");
    assert_ne!(new_sealed, sector_key, "the replica changed");
    let cids = json!([sector, sector_key, new_sealed, new_unsealed]);
    let vanilla = call(&farm, "ProveReplicaUpdate1", cids.clone(), &mut report).await;
    assert!(vanilla.as_array().is_some_and(|a| !a.is_empty()), "vanilla proofs: {vanilla}");
    let mut pr2 = cids.as_array().unwrap().clone();
    pr2.push(vanilla);
    let proof = call(&farm, "ProveReplicaUpdate2", Value::Array(pr2), &mut report).await;
    let proof = base64::engine::general_purpose::STANDARD.decode(proof.as_str().unwrap()).unwrap();
    let verified =
        sealfarm_tests::verify_update_proof(sector, &sector_key, &new_sealed, &new_unsealed, &proof).unwrap();
    assert!(verified, "the update proof verifies (verify_empty_sector_update_proof)");

    // Retrieval: both pieces allocated; release all but the first, and the
    // second is reported as not there.
    let listen = farm.listen;
    assert_eq!(allocated(&farm, listen, sector, 0, 1016).await, 200);
    assert_eq!(allocated(&farm, listen, sector, 1016, 1016).await, 200);
    let unsealed_drops =
        || farm.miner.index_calls().iter().filter(|c| c.method == "StorageDropSector" && c.params[2] == 1).count();
    let drops_before = unsealed_drops();
    call(&farm, "ReleaseUnsealed", json!([sector, [{"Offset": 0, "Size": 1016}]]), &mut report).await;
    assert_eq!(allocated(&farm, listen, sector, 0, 1016).await, 200, "the kept piece");
    assert_eq!(allocated(&farm, listen, sector, 1016, 1016).await, 416, "the freed piece");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(unsealed_drops(), drops_before, "the partial unsealed file stays in the miner's index");

    // UnsealPiece of the freed piece: decoded from the update with the sector key.
    let ticket = sealfarm_tests::cc::randomness();
    call(&farm, "UnsealPiece", json!([sector, 1016, 1016, b64(&ticket), new_unsealed]), &mut report).await;
    assert_eq!(allocated(&farm, listen, sector, 1016, 1016).await, 200, "unsealed again");
    let unsealed = std::fs::read(sector_file(&farm, "unsealed", sector)).unwrap();
    assert_eq!(unpadded(&unsealed, 1024, 1016), d2, "the second deal's bytes, exactly");
    assert_eq!(unpadded(&unsealed, 0, 1016), d1, "the first deal's bytes, kept");
    assert_eq!(&unsealed[..2048], &staged[..], "the padded data AddPiece wrote");

    // The sector key removed (lotus' ReleaseSectorKey), then regenerated from the data.
    std::fs::remove_file(sector_file(&farm, "sealed", sector)).unwrap();
    call(&farm, "GenerateSectorKeyFromData", json!([sector, new_unsealed]), &mut report).await;
    let regenerated = std::fs::read(sector_file(&farm, "sealed", sector)).unwrap();
    assert!(regenerated == original_key, "the regenerated sector key is byte-identical to the original");

    // FinalizeReplicaUpdate leaves what lotus leaves: both caches trimmed to
    // p_aux, t_aux and tree-r-last; every sector file kept.
    call(&farm, "FinalizeReplicaUpdate", json!([sector]), &mut report).await;
    for cache in ["cache", "update-cache"] {
        let mut names: Vec<String> = std::fs::read_dir(sector_file(&farm, cache, sector))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["p_aux", "sc-02-data-tree-r-last.dat", "t_aux"], "{cache} after FinalizeReplicaUpdate");
    }
    for kind in ["sealed", "update", "unsealed"] {
        assert!(sector_file(&farm, kind, sector).is_file(), "{kind} kept");
    }
    assert!(farm.miner.duplicate_returns().is_empty(), "each call returned once");
}

#[tokio::test(flavor = "multi_thread")]
async fn unseal_piece_recreates_a_released_deal_of_a_sealed_sector() {
    let farm = BridgeFarm::start("unseal").await;
    let _worker = start_worker(&farm);
    let sector = sector_ref(2, PROOF);
    let mut report = SealReport { sector, calls: Vec::new(), verified: false };
    let deal = deal_bytes(2032, 3);
    let piece = call_with_push(&farm, "AddPiece", |r| json!([sector, [], 2032, r]), deal.clone(), &mut report).await;
    let ticket = sealfarm_tests::cc::randomness();
    let pc1_out = call(&farm, "SealPreCommit1", json!([sector, b64(&ticket), [piece]]), &mut report).await;
    let cids: SectorCids =
        serde_json::from_value(call(&farm, "SealPreCommit2", json!([sector, pc1_out]), &mut report).await).unwrap();
    let staged = std::fs::read(sector_file(&farm, "unsealed", sector)).unwrap();
    call(&farm, "FinalizeSector", json!([sector]), &mut report).await;
    call(&farm, "ReleaseUnsealed", json!([sector, null]), &mut report).await;
    assert!(!sector_file(&farm, "unsealed", sector).exists(), "released");

    let comm_d = cids.unsealed.unwrap();
    call(&farm, "UnsealPiece", json!([sector, 0, 2032, b64(&ticket), comm_d]), &mut report).await;
    let unsealed = std::fs::read(sector_file(&farm, "unsealed", sector)).unwrap();
    assert_eq!(&unsealed[..2048], &staged[..], "the padded data AddPiece wrote");
    assert_eq!(unpadded(&unsealed, 0, 2032), deal, "the deal's bytes, exactly");
    assert_eq!(allocated(&farm, farm.listen, sector, 0, 2032).await, 200);

    // Bad input is refused at the call, naming the problem; nothing runs.
    let refused = |method: &'static str, params: Value| {
        let client = &farm.worker.client;
        async move {
            let err = client.call::<Value>(method, params).await.expect_err("refused");
            format!("{err:#}")
        }
    };
    let key = b64(&ticket);
    let past_end = refused("UnsealPiece", json!([sector, 2032, 127, key, comm_d])).await;
    assert!(past_end.contains("not inside a 2048-byte sector"), "{past_end}");
    let unaligned = refused("UnsealPiece", json!([sector, 1, 127, key, comm_d])).await;
    assert!(unaligned.contains("127-byte chunks"), "{unaligned}");
    let cid = json!(comm_d);
    let not_proofs = refused("ProveReplicaUpdate2", json!([sector, cid, cid, cid, "Bw=="])).await;
    assert!(not_proofs.contains("vanilla proofs") && not_proofs.contains("JSON array"), "{not_proofs}");
    let too_big = refused("DataCid", json!([4096, {"Type": "null", "Info": "4096"}])).await;
    assert!(too_big.contains("does not fit a 2KiB sector"), "{too_big}");
    let local = refused("DownloadSectorData", json!([sector, false, {"2": {"Local": true, "URL": "http://x/"}}])).await;
    assert!(local.contains("Local"), "{local}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sector_downloaded_from_another_remote_passes_the_next_stage() {
    // Farm A seals a sector through PC2; farm B (another bridge, other
    // storage) imports it from A's /remote, then runs C1 on it.
    let a = BridgeFarm::start("download-src").await;
    let _source_worker = a.start_worker("dl-src", "ap,pc1,pc2");
    let sector = sector_ref(3, PROOF);
    let mut report = SealReport { sector, calls: Vec::new(), verified: false };
    let (ticket, seed) = (sealfarm_tests::cc::randomness(), sealfarm_tests::cc::randomness());
    let piece = call(&a, "AddPiece", sealfarm_tests::devminer::add_piece_params(sector), &mut report).await;
    let pc1_out = call(&a, "SealPreCommit1", json!([sector, b64(&ticket), [piece.clone()]]), &mut report).await;
    let cids = call(&a, "SealPreCommit2", json!([sector, pc1_out]), &mut report).await;

    let b = BridgeFarm::start("download-dst").await;
    let _importer = b.start_worker("dl-dst", "c1,dl");
    let name = sector.id.file_name();
    let source = |kind: &str, token: &str| {
        json!({"Local": false, "URL": format!("http://{}/remote/{kind}/{name}", a.listen),
               "Headers": [{"Key": "Authorization", "Value": format!("Bearer {token}")}]})
    };
    // A source that refuses (a token A's miner never minted): the call fails and says why.
    let refused = b
        .miner
        .call(
            &b.worker,
            "DownloadSectorData",
            json!([sector, false, {"2": source("sealed", "forged")}]),
            STAGE_TIMEOUT,
            &mut report,
        )
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("401"), "{refused:#}");

    let token = a.miner.mint(&["admin"]);
    let src = json!({"1": source("unsealed", &token), "2": source("sealed", &token), "4": source("cache", &token)});
    call(&b, "DownloadSectorData", json!([sector, false, src]), &mut report).await;
    for kind in ["unsealed", "sealed"] {
        let (there, here) = (
            std::fs::read(sector_file(&a, kind, sector)).unwrap(),
            std::fs::read(sector_file(&b, kind, sector)).unwrap(),
        );
        assert!(there == here, "{kind} arrived byte for byte");
    }
    let listing = |farm: &BridgeFarm| {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(sector_file(farm, "cache", sector))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        files.sort();
        files
    };
    assert_eq!(listing(&a), listing(&b), "the cache arrived whole");
    // Declared once the Return is in (each downloaded file type).
    let declared = || b.miner.index_calls().into_iter().filter(|c| c.method == "StorageDeclareSector").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while declared() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(declared(), 3, "each downloaded file type declared: {:?}", b.miner.index_calls());

    // The next stage runs on what was downloaded.
    let c1_out = call(&b, "SealCommit1", json!([sector, b64(&ticket), b64(&seed), [piece], cids]), &mut report).await;
    assert!(c1_out.as_str().is_some_and(|s| s.len() > 100), "C1 gave its output");
}
