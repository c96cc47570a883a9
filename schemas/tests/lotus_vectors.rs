//! The lotus types round-trip the request/response examples from lotus' docs
//! (`tests/data/lotus-vectors.json`, a copy of shared/lotus/vectors.json).

use std::collections::BTreeMap;

use sealfarm_schemas::lotus::{Range, ReaderStream, ReplicaUpdateOut, SectorLocation};
use sealfarm_schemas::{Bytes, CallError, CallId, Cid, PieceInfo, SectorCids, SectorId, SectorRef, TaskType};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let text = include_str!("data/lotus-vectors.json");
    serde_json::from_str(text).unwrap()
}

fn vector(method: &str, api: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| v["method"] == format!("Filecoin.{method}") && v["api"] == api)
        .unwrap_or_else(|| panic!("no vector for {method}"))
}

/// Parses `value` as `T` and checks it serialises back to the same JSON.
fn round_trip<T: Serialize + DeserializeOwned>(value: &Value) -> T {
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("cannot parse {value} as {}: {e}", std::any::type_name::<T>()));
    assert_eq!(
        &serde_json::to_value(&parsed).unwrap(),
        value,
        "{} changed in a round trip",
        std::any::type_name::<T>()
    );
    parsed
}

#[test]
fn sealing_call_params_round_trip() {
    let pc1 = vector("SealPreCommit1", "worker");
    let sector: SectorRef = round_trip(&pc1["params"][0]);
    assert_eq!(sector.id, SectorId { miner: 1000, number: 9 });
    assert_eq!(sector.proof_type.info().unwrap().name, "StackedDrg32GiBV1_1");
    let ticket: Bytes = round_trip(&pc1["params"][1]);
    assert_eq!(ticket.0, vec![7]);
    round_trip::<Vec<PieceInfo>>(&pc1["params"][2]);

    let c1 = vector("SealCommit1", "worker");
    round_trip::<SectorRef>(&c1["params"][0]);
    round_trip::<Bytes>(&c1["params"][2]);
    round_trip::<Vec<PieceInfo>>(&c1["params"][3]);
    let cids: SectorCids = round_trip(&c1["params"][4]);
    assert!(cids.sealed.is_some() && cids.unsealed.is_some());

    for method in ["SealPreCommit2", "SealCommit2"] {
        let v = vector(method, "worker");
        round_trip::<SectorRef>(&v["params"][0]);
        round_trip::<Bytes>(&v["params"][1]);
    }
    round_trip::<SectorRef>(&vector("FinalizeSector", "worker")["params"][0]);
    round_trip::<Vec<Range>>(&vector("ReleaseUnsealed", "worker")["params"][1]);

    let ap = vector("AddPiece", "worker");
    round_trip::<SectorRef>(&ap["params"][0]);
    round_trip::<Vec<u64>>(&ap["params"][1]);
    // Every async call answers with a CallID.
    for method in [
        "AddPiece",
        "SealPreCommit1",
        "SealPreCommit2",
        "SealCommit1",
        "SealCommit2",
        "FinalizeSector",
        "ReleaseUnsealed",
        "Fetch",
        "MoveStorage",
        "DataCid",
        "UnsealPiece",
        "ReplicaUpdate",
        "ProveReplicaUpdate1",
        "ProveReplicaUpdate2",
        "GenerateSectorKeyFromData",
        "FinalizeReplicaUpdate",
        "DownloadSectorData",
    ] {
        let call: CallId = round_trip(&vector(method, "worker")["result"]);
        assert_eq!(call.sector, SectorId { miner: 1000, number: 9 });
    }
}

/// The snap-deal, unseal, DataCid and download calls: each parameter
/// count and type as lotus declares them (api/api_worker.go).
#[test]
fn snap_unseal_and_data_call_params_round_trip() {
    let count = |method: &str, n: usize| {
        let params = vector(method, "worker")["params"].clone();
        assert_eq!(params.as_array().map(Vec::len), Some(n), "{method} takes {n} params");
        params
    };
    let dc = count("DataCid", 2);
    round_trip::<u64>(&dc[0]);
    let unseal = count("UnsealPiece", 5);
    round_trip::<SectorRef>(&unseal[0]);
    round_trip::<u64>(&unseal[1]);
    round_trip::<u64>(&unseal[2]);
    round_trip::<Bytes>(&unseal[3]);
    round_trip::<Cid>(&unseal[4]);
    let update = count("ReplicaUpdate", 2);
    round_trip::<Vec<PieceInfo>>(&update[1]);
    let pr1 = count("ProveReplicaUpdate1", 4);
    for cid in &pr1.as_array().unwrap()[1..] {
        round_trip::<Cid>(cid);
    }
    let pr2 = count("ProveReplicaUpdate2", 5);
    round_trip::<Vec<Bytes>>(&pr2[4]);
    let gsk = count("GenerateSectorKeyFromData", 2);
    round_trip::<Cid>(&gsk[1]);
    round_trip::<SectorRef>(&count("FinalizeReplicaUpdate", 1)[0]);
    let download = count("DownloadSectorData", 3);
    round_trip::<bool>(&download[1]);
    let sources: BTreeMap<String, SectorLocation> = round_trip(&download[2]);
    assert_eq!(sources["2"].url, "https://example.com/sealingservice/sectors/s-f0123-12345");
}

#[test]
fn reader_stream_wire_form_parses() {
    // The docs show `{}`; the Go client sends Type/Info (docs/LOTUS.md §8.6).
    let stream: ReaderStream = round_trip(&serde_json::json!({"Type": "null", "Info": "2032"}));
    assert_eq!(stream.kind, "null");
}

/// Checks the output slot of a `Return*` call.
type Check = fn(&Value);

#[test]
fn return_calls_round_trip() {
    let outputs: [(&str, Check); 9] = [
        ("ReturnAddPiece", |v| {
            round_trip::<PieceInfo>(v);
        }),
        ("ReturnSealPreCommit1", |v| {
            round_trip::<Bytes>(v);
        }),
        ("ReturnSealPreCommit2", |v| {
            round_trip::<SectorCids>(v);
        }),
        ("ReturnSealCommit1", |v| {
            round_trip::<Bytes>(v);
        }),
        ("ReturnSealCommit2", |v| {
            round_trip::<Bytes>(v);
        }),
        ("ReturnDataCid", |v| {
            round_trip::<PieceInfo>(v);
        }),
        ("ReturnReplicaUpdate", |v| {
            round_trip::<ReplicaUpdateOut>(v);
        }),
        ("ReturnProveReplicaUpdate1", |v| {
            round_trip::<Vec<Bytes>>(v);
        }),
        ("ReturnProveReplicaUpdate2", |v| {
            round_trip::<Bytes>(v);
        }),
    ];
    for (method, check_output) in outputs {
        let params = &vector(method, "miner")["params"];
        round_trip::<CallId>(&params[0]);
        check_output(&params[1]);
        let err: CallError = round_trip(&params[2]);
        assert_eq!(err.code.0, 0);
    }
    for method in [
        "ReturnFinalizeSector",
        "ReturnReleaseUnsealed",
        "ReturnFetch",
        "ReturnMoveStorage",
        "ReturnGenerateSectorKeyFromData",
        "ReturnFinalizeReplicaUpdate",
        "ReturnUnsealPiece",
        "ReturnDownloadSector",
    ] {
        let params = &vector(method, "miner")["params"];
        assert_eq!(params.as_array().map(Vec::len), Some(2), "{method} carries the CallID and the error only");
        round_trip::<CallId>(&params[0]);
        round_trip::<CallError>(&params[1]);
    }
}

#[test]
fn task_types_are_the_lotus_names() {
    let result = &vector("TaskTypes", "worker")["result"];
    let types: BTreeMap<String, Value> = serde_json::from_value(result.clone()).unwrap();
    assert!(!types.is_empty());
    for name in types.keys() {
        let parsed: TaskType = serde_json::from_value(Value::String(name.clone()))
            .unwrap_or_else(|e| panic!("task type {name} not known: {e}"));
        assert_eq!(serde_json::to_value(parsed).unwrap(), Value::String(name.clone()));
    }
}

#[test]
fn resource_table_proof_keys_are_known_proofs() {
    let info = &vector("Info", "worker")["result"];
    let table = info["Resources"]["Resources"].as_object().expect("Info carries the resource table");
    for (task, per_proof) in table {
        serde_json::from_value::<TaskType>(Value::String(task.clone())).unwrap();
        for key in per_proof.as_object().unwrap().keys() {
            let number: i64 = key.parse().unwrap();
            assert!(sealfarm_schemas::RegisteredSealProof(number).info().is_some(), "proof {key} of {task}");
        }
    }
}
