//! Payloads of real sector sizes through the bridge: a 32 GiB sector's C1
//! output is tens of MiB, and it must reach C2 and the miner without riding
//! the broker (docs/ARCHITECTURE.md, "Blobs"). The payloads here are real
//! bytes of real size, not real proofs.

use std::time::Duration;

use base64::Engine as _;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use sealfarm_schemas::blob::{BlobRef, Payload};
use sealfarm_schemas::topology::task_queue;
use sealfarm_schemas::{
    Bytes, CallId, Outcome, RegisteredSealProof, ResultMessage, SectorSize, Stage, StageOutput, Task, TaskMessage,
};
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::BRIDGE_RESULTS;
use sealfarm_tests::{noise, BridgeFarm, FarmProcess, Publisher, TestVhost};
use serde_json::{json, Value};

const P2K: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

/// The most a message sealfarm publishes may hold.
const MESSAGE_LIMIT: usize = 1 << 20;

/// The blobs the bridge keeps now.
fn blob_files(farm: &BridgeFarm) -> Vec<String> {
    let dir = farm.state_dir().join("blobs");
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Takes the one message waiting on `queue` (acknowledged, or put back).
async fn take_message(farm: &BridgeFarm, queue: &str, keep: bool) -> Vec<u8> {
    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(message) = channel.basic_get(queue.into(), BasicGetOptions::default()).await.unwrap() {
            let data = message.delivery.data.clone();
            if keep {
                message.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
            } else {
                message.delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
            let _ = connection.close(200, "done".into()).await;
            return data;
        }
        assert!(std::time::Instant::now() < deadline, "no message on {queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(farm: &BridgeFarm, method: &str, params: Value) -> CallId {
    farm.worker.client.call(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// A 40 MiB C1 output (the size of a 32 GiB sector's) arrives in a
/// SealCommit2: the task on the broker is small, the C2 worker fetches the
/// blob and checks its digest, the library refuses the bytes (they are no
/// proof) and the miner hears why; the blob is gone once the call is returned.
#[tokio::test(flavor = "multi_thread")]
async fn a_40_mib_c2_input_travels_as_a_blob_and_its_refusal_reaches_the_miner() {
    let farm = BridgeFarm::start("large-c2").await;
    let c1_out = noise(40 << 20, 7);
    let blob = BlobRef::of(&c1_out);
    let sector = sector_ref(1, P2K);
    let id = call(&farm, "SealCommit2", json!([sector, Bytes(c1_out)])).await;

    // What the broker carries: the reference, not the bytes.
    let queue = task_queue(Stage::C2, SectorSize::KIB2);
    let message = take_message(&farm, &queue, true).await;
    assert!(message.len() < 4096, "the C2 task is {} bytes", message.len());
    let task: TaskMessage = serde_json::from_slice(&message).unwrap();
    assert_eq!(task.task, Task::C2 { c1_out: Payload::Blob(blob.clone()) });
    assert_eq!(blob_files(&farm), vec![blob.sha256.clone()]);

    let worker = farm.start_worker("w-c2", "c2");
    let returned =
        farm.miner.wait_for_return(&id, Duration::from_secs(120)).await.unwrap_or_else(|e| {
            panic!("{e}\nworker log:\n{}\nbridge log:\n{}", worker.log_text(), farm.bridge.log_text())
        });
    assert_eq!(returned.method, "ReturnSealCommit2");
    let error = returned.params[2]["Message"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("not a rust-fil-proofs C1 output"), "the miner got: {:?}", returned.params);
    let log = worker.log_text();
    assert!(log.contains("C1 output fetched from the bridge and checked"), "worker log:\n{log}");
    // Returned: the bridge keeps nothing of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !blob_files(&farm).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the blob outlived its call: {:?}", blob_files(&farm));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most memory the bridge ever held (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    sealfarm_tests::memory_mib(pid, "VmHWM:")
}

/// Four SealCommit2 calls of 40 MiB each arriving at once: the bridge takes
/// them all and its memory stays bounded (large bodies are read one at a
/// time and decoded into their blobs piece by piece).
#[tokio::test(flavor = "multi_thread")]
async fn four_40_mib_c2_calls_at_once_keep_the_bridge_under_150_mb() {
    let farm = BridgeFarm::start("large-four").await;
    let inputs: Vec<Vec<u8>> = (0..4).map(|n| noise(40 << 20, 2 * n + 101)).collect();
    let calls = inputs.iter().enumerate().map(|(n, bytes)| {
        let params = json!([sector_ref(n as u64 + 1, P2K), Bytes(bytes.clone())]);
        let client = &farm.worker.client;
        async move { client.call::<CallId>("SealCommit2", params).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    for answer in &answers {
        assert!(answer.is_ok(), "{answer:?}");
    }
    let mut kept = blob_files(&farm);
    let mut expected: Vec<String> = inputs.iter().map(|b| BlobRef::of(b).sha256).collect();
    kept.sort();
    expected.sort();
    assert_eq!(kept, expected);
    let peak = peak_rss_mib(farm.bridge.pid());
    eprintln!("bridge peak RSS with four 40 MiB SealCommit2 calls at once: {peak:.1} MiB");
    assert!(peak < 150.0 * 1e6 / (1 << 20) as f64, "the bridge peaked at {peak:.1} MiB");
}

/// A 40 MiB C1 output a worker uploads reaches the miner byte for byte as
/// `ReturnSealCommit1`; a result naming a blob that never arrived fails
/// its call with a reason instead. Blob uploads are checked.
#[tokio::test(flavor = "multi_thread")]
async fn a_40_mib_c1_output_reaches_the_miner_through_the_blob_path() {
    let farm = BridgeFarm::start("large-c1").await;
    let http = reqwest::Client::new();
    let blob_url = |sha: &str| format!("http://{}/sealfarm/v0/blobs/{sha}", farm.listen);
    let token = farm.vhost.worker_token();
    let c1_params = |number: u64| {
        let cids = json!({"Unsealed": {"/": "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"},
                          "Sealed": {"/": "bagboea4b5abcbwtpvlhz6ho4ev2c5p4mzc2jcf3c3ld7ly3ox4nnyiatw6ktahia"}});
        json!([sector_ref(number, P2K), Bytes(vec![1; 32]), Bytes(vec![2; 32]), [], cids])
    };
    let queue = task_queue(Stage::C1, SectorSize::KIB2);

    // Uploads: without the token, with bytes that are not the ones named.
    let c1_out = noise(40 << 20, 11);
    let blob = BlobRef::of(&c1_out);
    let refused = http.put(blob_url(&blob.sha256)).body(b"no token".to_vec()).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = http.put(blob_url(&blob.sha256)).bearer_auth(&token).body(b"other".to_vec()).send().await.unwrap();
    assert_eq!(wrong.status(), 400);
    assert!(wrong.text().await.unwrap().contains("not"));
    assert!(blob_files(&farm).is_empty(), "a refused upload left {:?}", blob_files(&farm));

    // The call, its task (taken by this test, standing in for a worker), the upload, the result.
    let id = call(&farm, "SealCommit1", c1_params(1)).await;
    let task: TaskMessage = serde_json::from_slice(&take_message(&farm, &queue, false).await).unwrap();
    assert_eq!(task.call_id, id.id);
    let stored = http.put(blob_url(&blob.sha256)).bearer_auth(&token).body(c1_out.clone()).send().await.unwrap();
    assert_eq!(stored.status(), 201, "{}", stored.text().await.unwrap_or_default());
    let result = |task: &TaskMessage, blob: &BlobRef| ResultMessage {
        schema: sealfarm_schemas::SCHEMA_VERSION,
        call_id: task.call_id,
        attempt: task.attempt,
        sector: task.sector,
        stage: Stage::C1,
        worker: "test-worker".into(),
        storage_id: None,
        started_at_ms: 1,
        finished_at_ms: 2,
        outcome: Outcome::Done(StageOutput::C1 { c1_out: Payload::Blob(blob.clone()) }),
        attempt_token: task.attempt_token.clone(),
    };
    // Publishes only: a consumer of the results queue would compete with the bridge.
    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await.unwrap();
    let publisher = sealfarm_tests::TaskSender::open(&connection).await.unwrap();
    let message = serde_json::to_vec(&result(&task, &blob)).unwrap();
    assert!(message.len() < MESSAGE_LIMIT);
    publisher.publish_raw(BRIDGE_RESULTS, &message).await.unwrap();
    let returned = farm.miner.wait_for_return(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(returned.method, "ReturnSealCommit1");
    assert!(returned.params[2].is_null(), "{:?}", returned.params[2]);
    let received = base64::engine::general_purpose::STANDARD.decode(returned.params[1].as_str().unwrap()).unwrap();
    let peak = peak_rss_mib(farm.bridge.pid());
    eprintln!("bridge peak RSS after a 40 MiB upload and ReturnSealCommit1: {peak:.1} MiB");
    assert!(peak < 150.0 * 1e6 / (1 << 20) as f64, "the bridge peaked at {peak:.1} MiB");
    assert!(received == c1_out, "the miner got {} bytes, not the 40 MiB uploaded", received.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !blob_files(&farm).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the blob outlived its call: {:?}\n{}",
            blob_files(&farm),
            farm.bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A result naming a blob the bridge never got.
    let id = call(&farm, "SealCommit1", c1_params(2)).await;
    let task: TaskMessage = serde_json::from_slice(&take_message(&farm, &queue, false).await).unwrap();
    let missing = BlobRef::of(b"never uploaded");
    publisher.publish_raw(BRIDGE_RESULTS, &serde_json::to_vec(&result(&task, &missing)).unwrap()).await.unwrap();
    let returned = farm
        .miner
        .wait_for_return(&id, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\nbridge log:\n{}", farm.bridge.log_text()));
    let error = returned.params[2]["Message"].as_str().unwrap_or_default();
    assert!(error.contains("never reached the bridge"), "{:?}", returned.params);
    let _ = connection.close(200, "done".into()).await;
}

/// Bodies over `--max-request-size` get go-jsonrpc's error naming the
/// limit (not a bare HTTP 413); blob uploads over it are refused.
#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_size_limit_get_an_error_that_names_it() {
    let farm = BridgeFarm::start_with("large-limit", &["--max-request-size", "1MiB"]).await;
    let big = Bytes(noise(2 << 20, 3));
    let failure = farm.worker.client.call::<Value>("SealCommit2", json!([sector_ref(1, P2K), big])).await;
    let text = failure.expect_err("a 2.7 MB body passed a 1 MiB limit").to_string();
    assert!(text.contains("request bigger than maximum 1048576 allowed"), "{text}");
    assert!(text.contains("--max-request-size"), "{text}");
    // Under the limit the same call is taken.
    let small = Bytes(noise(100 << 10, 4));
    call(&farm, "SealCommit2", json!([sector_ref(2, P2K), small])).await;
    let blob = BlobRef::of(&noise(2 << 20, 5));
    let url = format!("http://{}/sealfarm/v0/blobs/{}", farm.listen, blob.sha256);
    let answer = reqwest::Client::new()
        .put(url)
        .bearer_auth(farm.vhost.worker_token())
        .body(noise(2 << 20, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
}

/// The push endpoint takes bytes only for a stream an AddPiece call names,
/// at most the piece's size; accepted piece data is gone once the AddPiece
/// has its result.
#[tokio::test(flavor = "multi_thread")]
async fn pushed_piece_data_is_taken_only_for_a_waiting_add_piece_and_removed_after_it() {
    let farm = BridgeFarm::start("large-push").await;
    let http = reqwest::Client::new();
    let push_url = |id: uuid::Uuid| format!("http://{}/rpc/streams/v0/push/{id}", farm.listen);
    let pieces = farm.dir.path().join("sealing/sealfarm/pieces/t01000");
    let unpadded = SectorSize::KIB2.unpadded();
    let add_piece = |number: u64, id: uuid::Uuid| json!([sector_ref(number, P2K), [], unpadded, {"Type": "push", "Info": id.to_string()}]);

    // An id no call names, pushed on its own: refused after lotus' 30 s wait.
    let stray = http.post(push_url(uuid::Uuid::new_v4())).body(vec![1u8; 64]).send();
    // Oversize: the call announces 2032 bytes, the push sends more.
    let big_id = uuid::Uuid::new_v4();
    let big_call = farm.worker.client.call::<CallId>("AddPiece", add_piece(1, big_id));
    let big_push = http.post(push_url(big_id)).body(vec![7u8; 4096]).send();
    let (big_call, big_push) = tokio::join!(big_call, big_push);
    assert_eq!(big_push.unwrap().status(), 413);
    let text = big_call.expect_err("an oversize piece was taken").to_string();
    assert!(text.contains("more than the 2032 bytes"), "{text}");

    // A good push, pushed before its call arrives; a worker adds the piece.
    let _worker = farm.start_worker("w-push", "ap");
    let data = noise(unpadded as usize, 9);
    let id = uuid::Uuid::new_v4();
    let push = http.post(push_url(id)).body(data.clone()).send();
    let delayed_call = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        farm.worker.client.call::<CallId>("AddPiece", add_piece(2, id)).await
    };
    let (push, call_id) = tokio::join!(push, delayed_call);
    assert_eq!(push.unwrap().status(), 200);
    let call_id = call_id.unwrap();
    let returned = farm.miner.wait_for_return(&call_id, Duration::from_secs(60)).await.unwrap();
    assert!(returned.params[2].is_null(), "AddPiece failed: {:?}", returned.params[2]);
    assert_eq!(returned.params[1]["Size"], 2048);
    // The piece data and the unsealed file hold the same bytes (fr32 padding aside: compare CommP).
    let expected = filecoin_proofs_api::seal::generate_piece_commitment(
        filecoin_proofs_api::RegisteredSealProof::StackedDrg2KiBV1_1,
        &data[..],
        filecoin_proofs_api::UnpaddedBytesAmount(unpadded),
    )
    .unwrap();
    let expected = sealfarm_schemas::commitment::Commitment::Data.to_cid(&expected.commitment).to_string();
    assert_eq!(returned.params[1]["PieceCID"]["/"].as_str().unwrap(), expected);
    let left: Vec<_> = std::fs::read_dir(&pieces).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "piece data left after AddPiece: {left:?}");

    let stray = stray.await.unwrap();
    assert_eq!(stray.status(), 404);
    assert!(stray.text().await.unwrap().contains("no AddPiece call names push stream"));
}

/// A task that names piece data by path is dead-lettered without the file
/// being opened (anyone able to publish to the broker could otherwise make
/// a worker read any file it can read). The path is a FIFO: an open for
/// reading would block the worker and be seen by a writer.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_naming_a_piece_path_is_dead_lettered_unread() {
    let vhost = TestVhost::new("piece-path");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("passwd");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let _worker = FarmProcess::start(&vhost, dir.path(), "w-path", "ap", "2KiB");
    let mut task = sealfarm_tests::cc::add_piece(sealfarm_tests::cc::sector(1, P2K));
    let Task::Ap { data, .. } = &mut task.task else { unreachable!() };
    *data = sealfarm_schemas::messages::PieceData::File { path: fifo.display().to_string() };
    publisher.publish(&task).await.unwrap();
    let mut etc = sealfarm_tests::cc::add_piece(sealfarm_tests::cc::sector(2, P2K));
    let Task::Ap { data, .. } = &mut etc.task else { unreachable!() };
    *data = sealfarm_schemas::messages::PieceData::File { path: "/etc/passwd".into() };
    publisher.publish(&etc).await.unwrap();

    let dead = publisher.dead_letters(2, Duration::from_secs(60)).await.unwrap();
    assert_eq!(dead.len(), 2);
    for (reason, _) in &dead {
        assert!(reason.starts_with("malformed:") && reason.contains("by file path"), "{reason}");
    }
    let (result, _) = publisher.result_of(&task, Duration::from_secs(30)).await.unwrap();
    let Outcome::Failed(error) = result.outcome else { panic!("the call was not failed: {result:?}") };
    assert!(error.message.contains("by file path"), "{}", error.message);
    // No reader ever opened the FIFO: a non-blocking open for writing finds none.
    use std::os::unix::fs::OpenOptionsExt;
    let open = std::fs::OpenOptions::new().write(true).custom_flags(libc_o_nonblock()).open(&fifo);
    assert_eq!(open.err().and_then(|e| e.raw_os_error()), Some(6), "a reader has the FIFO open (ENXIO expected)");
}

/// `O_NONBLOCK` on Linux.
fn libc_o_nonblock() -> i32 {
    0o4000
}
