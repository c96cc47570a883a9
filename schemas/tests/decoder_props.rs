//! Property tests of what the processes decode from the broker and from
//! file names (docs/FUZZING.md): whatever the bytes, a decoder answers, never
//! panics, and a refusal names the problem; a message the farm itself would
//! publish decodes to itself.
//!
//! * broker messages: `messages::decode` of tasks, results, events (with
//!   `check_bounds`) and controls, as their consumers call it;
//! * `check_worker_id`, sector file names and types, sector sizes, CIDs,
//!   base64 bytes and payloads, which those messages carry;
//! * the corpus `fuzz/corpus/messages/`, replayed file by file.

use proptest::prelude::*;
use sealfarm_schemas::blob::{BlobRef, Payload};
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::lotus::{Range, ReplicaUpdateOut};
use sealfarm_schemas::messages::{
    check_worker_id, decode, JobProgress, PieceData, ResourceUse, RunningJob, SectorSource, StageSlots,
    MAX_HEARTBEAT_ENTRIES, MAX_WORKER_ID_LEN,
};
use sealfarm_schemas::sector_store::{file_type_bit, parse_sector_name, FILE_TYPES};
use sealfarm_schemas::{
    Bytes, CallError, Cid, Control, ControlMessage, DeadLetterReason, ErrorCode, EventKind, EventMessage, Outcome,
    PieceInfo, RegisteredSealProof, ResultMessage, SectorCids, SectorId, SectorRef, SectorSize, Stage, StageOutput,
    Task, TaskMessage, SCHEMA_VERSION,
};
use serde_json::{Map, Value};
use uuid::Uuid;

#[path = "../../fuzz/support.rs"]
mod support;
use support::{config, corpus};

// ---------------------------------------------------------------------------
// The decoders, as their consumers call them.

/// A broker message type: the name its consumer decodes it under, and the
/// whole decode (with the checks the consumer makes before keeping anything).
struct Kind {
    what: &'static str,
    decode: fn(&[u8]) -> Result<(), DeadLetterReason>,
}

const KINDS: [Kind; 4] = [
    // The worker's intake (`service/intake.rs`).
    Kind { what: "a task message", decode: |body| decode::<TaskMessage>(body, "a task message").map(drop) },
    // The bridge's results consumer (`calls/results.rs`): the worker id too.
    Kind {
        what: "a result message",
        decode: |body| {
            let result: ResultMessage = decode(body, "a result message")?;
            check_worker_id(&result.worker).map_err(DeadLetterReason::malformed)
        },
    },
    // The bridge's events consumer (`calls/leases.rs`): bounds too.
    Kind { what: "an event message", decode: |body| decode::<EventMessage>(body, "an event message")?.check_bounds() },
    // The worker's control messages (`service/control.rs`).
    Kind { what: "a control message", decode: |body| decode::<ControlMessage>(body, "a control message").map(drop) },
];

fn kind(what: &str) -> &'static Kind {
    KINDS.iter().find(|k| k.what == what).expect("a known kind")
}

/// Asserts that a refusal is one an operator can act on: a known code and
/// a detail that says what was being read and what is wrong with it.
fn assert_clear(reason: &DeadLetterReason, what: &str) {
    // It travels as a message header: whatever the input, it stays short.
    assert!(reason.to_string().len() <= 2048, "a reason of {} bytes", reason.to_string().len());
    match reason.code {
        "unsupported-schema" => {
            assert!(
                reason.detail.starts_with("message schema version ")
                    && reason.detail.ends_with(&format!("this build reads version {SCHEMA_VERSION}")),
                "{reason}"
            );
        }
        "malformed" if reason.detail == "no \"schema\" version field" => {}
        "malformed" => {
            let prefixes = [
                "not JSON: ".to_string(),
                format!("not {what}: "),
                "\"schema\" is ".to_string(),
                "worker id ".to_string(),
                "a heartbeat of worker ".to_string(),
            ];
            let prefix = prefixes.iter().find(|p| reason.detail.starts_with(p.as_str()));
            let prefix = prefix.unwrap_or_else(|| panic!("a refusal that does not say what is wrong: {reason}"));
            assert!(reason.detail.len() > prefix.len(), "a refusal with no reason after {prefix:?}: {reason}");
        }
        other => panic!("unexpected dead-letter code {other:?}: {reason}"),
    }
}

/// Runs a body through every decoder: each answers, and a refusal is clear.
fn through_every_decoder(body: &[u8]) {
    for kind in &KINDS {
        if let Err(reason) = (kind.decode)(body) {
            assert_clear(&reason, kind.what);
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies: messages as the farm publishes them.

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn sector() -> impl Strategy<Value = SectorRef> {
    (any::<u64>(), any::<u64>(), prop_oneof![0i64..20, any::<i64>()]).prop_map(|(miner, number, proof)| SectorRef {
        id: SectorId { miner, number },
        proof_type: RegisteredSealProof(proof),
    })
}

fn cid() -> impl Strategy<Value = Cid> {
    (any::<[u8; 32]>(), any::<bool>())
        .prop_map(|(c, data)| if data { Commitment::Data } else { Commitment::Replica }.to_cid(&c))
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..48).prop_map(Bytes)
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![bytes().prop_map(Payload::Inline), bytes().prop_map(|b| Payload::Blob(BlobRef::of(&b.0)))]
}

fn pieces() -> impl Strategy<Value = Vec<PieceInfo>> {
    prop::collection::vec((any::<u64>(), cid()).prop_map(|(size, piece_cid)| PieceInfo { size, piece_cid }), 0..4)
}

fn sector_cids() -> impl Strategy<Value = SectorCids> {
    (prop::option::of(cid()), prop::option::of(cid())).prop_map(|(unsealed, sealed)| SectorCids { unsealed, sealed })
}

fn piece_data() -> impl Strategy<Value = PieceData> {
    prop_oneof![
        Just(PieceData::Null),
        uuid().prop_map(|id| PieceData::Piece { id }),
        text().prop_map(|path| PieceData::File { path })
    ]
}

fn stage() -> impl Strategy<Value = Stage> {
    prop::sample::select(Stage::ALL.to_vec())
}

fn sector_size() -> impl Strategy<Value = SectorSize> {
    prop::sample::select(SectorSize::ALL.to_vec())
}

fn task() -> impl Strategy<Value = Task> {
    let sealing = prop_oneof![
        (prop::collection::vec(any::<u64>(), 0..4), any::<u64>(), piece_data())
            .prop_map(|(existing_piece_sizes, piece_size, data)| Task::Ap { existing_piece_sizes, piece_size, data }),
        (bytes(), pieces()).prop_map(|(ticket, pieces)| Task::Pc1 { ticket, pieces }),
        bytes().prop_map(|pc1_out| Task::Pc2 { pc1_out }),
        (bytes(), bytes(), pieces(), sector_cids()).prop_map(|(ticket, seed, pieces, cids)| Task::C1 {
            ticket,
            seed,
            pieces,
            cids: Box::new(cids)
        }),
        payload().prop_map(|c1_out| Task::C2 { c1_out }),
        Just(Task::Fin {}),
        prop::option::of(prop::collection::vec(
            (any::<u64>(), any::<u64>()).prop_map(|(offset, size)| Range { offset, size }),
            0..3
        ))
        .prop_map(|keep_unsealed| Task::Ru { keep_unsealed }),
    ];
    let snap = prop_oneof![
        pieces().prop_map(|pieces| Task::Update { pieces }),
        (cid(), cid(), cid()).prop_map(|(sector_key, new_sealed, new_unsealed)| Task::Pr1 {
            sector_key,
            new_sealed,
            new_unsealed
        }),
        (cid(), cid(), cid(), payload()).prop_map(|(sector_key, new_sealed, new_unsealed, vanilla_proofs)| {
            Task::Pr2 { sector_key, new_sealed, new_unsealed, vanilla_proofs }
        }),
        cid().prop_map(|comm_d| Task::Gsk { comm_d }),
        Just(Task::Fru {}),
        (any::<u64>(), any::<u64>(), bytes(), cid()).prop_map(|(offset, size, randomness, comm_d)| Task::Unseal {
            offset,
            size,
            randomness,
            comm_d
        }),
        (any::<u64>(), piece_data()).prop_map(|(piece_size, data)| Task::Dc { piece_size, data }),
        (any::<bool>(), prop::collection::vec((text(), text(), prop::collection::vec((text(), text()), 0..2)), 0..3))
            .prop_map(|(finalized, sources)| Task::Dl {
                finalized,
                sources: sources
                    .into_iter()
                    .map(|(file_type, url, headers)| SectorSource { file_type, url, headers })
                    .collect()
            }),
    ];
    prop_oneof![sealing, snap]
}

fn task_message() -> impl Strategy<Value = TaskMessage> {
    (
        (uuid(), any::<u32>(), sector(), any::<u64>(), prop::option::of(text())),
        (prop::option::of(any::<u64>()), any::<bool>(), prop::option::of(text()), task()),
    )
        .prop_map(
            |((call_id, attempt, sector, issued_at_ms, bridge), (ticket_deadline_ms, deal, attempt_token, task))| {
                TaskMessage {
                    schema: SCHEMA_VERSION,
                    call_id,
                    attempt,
                    sector,
                    issued_at_ms,
                    ticket_deadline_ms,
                    deal,
                    attempt_token,
                    bridge,
                    task,
                }
            },
        )
}

fn stage_output() -> impl Strategy<Value = StageOutput> {
    let first = prop_oneof![
        (any::<u64>(), cid()).prop_map(|(size, piece_cid)| StageOutput::Ap { piece: PieceInfo { size, piece_cid } }),
        bytes().prop_map(|pc1_out| StageOutput::Pc1 { pc1_out }),
        sector_cids().prop_map(|cids| StageOutput::Pc2 { cids }),
        payload().prop_map(|c1_out| StageOutput::C1 { c1_out }),
        bytes().prop_map(|proof| StageOutput::C2 { proof }),
        Just(StageOutput::Fin {}),
        Just(StageOutput::Ru {}),
        (cid(), cid()).prop_map(|(new_sealed, new_unsealed)| StageOutput::Update {
            out: ReplicaUpdateOut { new_sealed, new_unsealed }
        }),
    ];
    let second = prop_oneof![
        payload().prop_map(|vanilla_proofs| StageOutput::Pr1 { vanilla_proofs }),
        bytes().prop_map(|proof| StageOutput::Pr2 { proof }),
        Just(StageOutput::Gsk {}),
        Just(StageOutput::Fru {}),
        Just(StageOutput::Unseal {}),
        (any::<u64>(), cid()).prop_map(|(size, piece_cid)| StageOutput::Dc { piece: PieceInfo { size, piece_cid } }),
        Just(StageOutput::Dl {}),
    ];
    prop_oneof![first, second]
}

/// 1 to 64 characters a worker id may hold.
fn worker_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn result_message() -> impl Strategy<Value = ResultMessage> {
    let outcome = prop_oneof![
        stage_output().prop_map(Outcome::Done),
        (any::<u64>(), text()).prop_map(|(code, message)| Outcome::Failed(CallError::new(ErrorCode(code), message))),
    ];
    (
        (uuid(), any::<u32>(), sector(), stage(), worker_id()),
        (prop::option::of(text()), any::<u64>(), any::<u64>(), outcome, prop::option::of(text())),
    )
        .prop_map(
            |((call_id, attempt, sector, stage, worker), (storage_id, started, finished, outcome, token))| {
                ResultMessage {
                    schema: SCHEMA_VERSION,
                    call_id,
                    attempt,
                    sector,
                    stage,
                    worker,
                    storage_id,
                    started_at_ms: started,
                    finished_at_ms: finished,
                    outcome,
                    attempt_token: token,
                }
            },
        )
}

fn hardware() -> impl Strategy<Value = Hardware> {
    (any::<u32>(), any::<u64>(), any::<u64>(), prop::option::of(text())).prop_map(|(cores, memory, used, note)| {
        Hardware {
            cores: cores as usize,
            physical_cores: Some(cores as usize / 2),
            memory_bytes: memory,
            memory_used_bytes: used,
            opencl_note: note,
            ..Hardware::default()
        }
    })
}

fn running_job() -> impl Strategy<Value = RunningJob> {
    (uuid(), any::<u32>(), sector(), stage(), any::<u64>(), prop::option::of(any::<u64>()), any::<bool>()).prop_map(
        |(call_id, attempt, sector, stage, started_at_ms, running_since_ms, progress)| RunningJob {
            call_id,
            attempt,
            sector,
            stage,
            started_at_ms,
            running_since_ms,
            progress: progress.then(|| JobProgress { step: "layer".into(), done: 2, total: 11, bytes: 7, eta_s: None }),
        },
    )
}

fn heartbeat() -> impl Strategy<Value = EventKind> {
    (
        (text(), prop::collection::vec(stage(), 0..4), prop::collection::vec(sector_size(), 0..3), any::<u32>()),
        (prop::collection::vec(running_job(), 0..3), prop::option::of(hardware()), any::<bool>()),
        (prop::option::of(text()), prop::option::of(text()), prop::collection::vec(stage(), 0..2)),
        (prop::collection::vec((stage(), sector_size(), any::<u32>()), 0..3), prop::option::of(0u32..64)),
    )
        .prop_map(
            |(
                (hostname, stages, sector_sizes, slots),
                (running, hardware, draining),
                (storage_id, files_url, warming),
                (capacity, in_use),
            )| EventKind::Heartbeat {
                hostname,
                stages,
                sector_sizes,
                slots,
                running,
                capacity: capacity
                    .into_iter()
                    .map(|(stage, sector_size, slots)| StageSlots { stage, sector_size, slots })
                    .collect(),
                hardware,
                storage_id,
                files_url,
                draining,
                warming,
                // Quarters: exact in JSON, as a GPU share is.
                in_use: in_use.map(|n| ResourceUse { memory_bytes: 1 << 30, threads: 4, gpus: f64::from(n) / 4.0 }),
            },
        )
}

fn event_message() -> impl Strategy<Value = EventMessage> {
    let kind = prop_oneof![
        heartbeat(),
        (uuid(), any::<u32>(), sector(), stage()).prop_map(|(call_id, attempt, sector, stage)| EventKind::Claim {
            call_id,
            attempt,
            sector,
            stage
        }),
        (
            uuid(),
            any::<u32>(),
            stage(),
            text(),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(call_id, attempt, stage, step, (done, total, bytes), eta_s)| EventKind::Progress {
                call_id,
                attempt,
                stage,
                step,
                done,
                total,
                bytes,
                eta_s,
                how: "computed".into(),
            }),
        (uuid(), any::<u32>(), text()).prop_map(|(call_id, attempt, reason)| EventKind::Release {
            call_id,
            attempt,
            reason
        }),
    ];
    (worker_id(), any::<u64>(), kind).prop_map(|(worker, at_ms, event)| EventMessage {
        schema: SCHEMA_VERSION,
        worker,
        at_ms,
        event,
    })
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    let control = prop_oneof![
        (uuid(), any::<u32>(), text()).prop_map(|(call_id, attempt, reason)| Control::Supersede {
            call_id,
            attempt,
            reason
        }),
        text().prop_map(|reason| Control::Drain { reason }),
        Just(Control::Resume {}),
    ];
    control.prop_map(|control| ControlMessage { schema: SCHEMA_VERSION, control })
}

/// A valid message of any kind, as JSON, with the name its consumer gives it.
fn any_message() -> impl Strategy<Value = (&'static str, Value)> {
    fn json(message: impl serde::Serialize) -> Value {
        serde_json::to_value(message).expect("messages serialise")
    }
    prop_oneof![
        task_message().prop_map(|m| ("a task message", json(m))),
        result_message().prop_map(|m| ("a result message", json(m))),
        event_message().prop_map(|m| ("an event message", json(m))),
        control_message().prop_map(|m| ("a control message", json(m))),
    ]
}

// ---------------------------------------------------------------------------
// Strategies: what else may arrive.

/// Field names the decoders know, so that arbitrary objects reach past the
/// first missing field now and then.
const FIELD_NAMES: [&str; 16] = [
    "schema",
    "call_id",
    "attempt",
    "sector",
    "stage",
    "kind",
    "control",
    "worker",
    "at_ms",
    "outcome",
    "ID",
    "Miner",
    "Number",
    "ProofType",
    "issued_at_ms",
    "reason",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![prop::sample::select(FIELD_NAMES.to_vec()).prop_map(str::to_string), ".{0,12}"]
}

/// Any JSON value, its keys now and then a message's own field names.
fn arb_json() -> impl Strategy<Value = Value> {
    support::arb_json(key().boxed())
}

/// A step into a JSON value: a key or an index.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every path in `value` (the root excepted), depth first.
fn paths(value: &Value) -> Vec<Vec<Step>> {
    fn walk(value: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &Value)> = match value {
            Value::Object(map) => map.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
            Value::Array(items) => items.iter().enumerate().map(|(i, v)| (Step::Index(i), v)).collect(),
            _ => Vec::new(),
        };
        for (step, child) in children {
            at.push(step);
            out.push(at.clone());
            walk(child, at, out);
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn at_mut<'v>(value: &'v mut Value, path: &[Step]) -> &'v mut Value {
    path.iter().fold(value, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// Removes what `path` names; the key of a removed object field.
fn remove(value: &mut Value, path: &[Step]) -> Option<String> {
    let (last, parent) = path.split_last()?;
    match (at_mut(value, parent), last) {
        (Value::Object(map), Step::Key(k)) => {
            map.remove(k);
            Some(k.clone())
        }
        (Value::Array(items), Step::Index(i)) => {
            items.remove(*i);
            None
        }
        _ => None,
    }
}

/// A JSON value's type, as serde names it in "invalid type" errors.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `body` with the text `"@@"` (a placeholder string put in a value)
/// replaced by `raw`: how numbers serde_json would not write get in.
fn with_raw(value: &Value, raw: &str) -> Vec<u8> {
    value.to_string().replacen("\"@@\"", raw, 1).into_bytes()
}

/// Numbers no message holds: beyond u64, beyond f64, negative, fractional.
const ODD_NUMBERS: [&str; 10] = [
    "1e400",
    "-1e400",
    "-0",
    "18446744073709551616",
    "-9223372036854775809",
    "-1",
    "1.5",
    "1e-400",
    "123456789012345678901234567890",
    "0.0",
];

fn nested(depth: usize, object: bool) -> String {
    if object {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

// ---------------------------------------------------------------------------
// Properties of the broker decoders.

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes at all: an answer, and a refusal that says why.
    #[test]
    fn arbitrary_bytes_are_refused_with_a_reason(body in prop::collection::vec(any::<u8>(), 0..512)) {
        through_every_decoder(&body);
    }

    /// Any JSON value: the same.
    #[test]
    fn arbitrary_json_is_refused_with_a_reason(value in arb_json()) {
        through_every_decoder(value.to_string().as_bytes());
    }

    /// An object with a supported schema and a few known field names with
    /// arbitrary values: the decoders get past the version check.
    #[test]
    fn arbitrary_fields_under_the_current_schema_are_refused_with_a_reason(
        fields in prop::collection::vec((key(), arb_json()), 0..10)
    ) {
        let mut map: Map<String, Value> = fields.into_iter().collect();
        map.insert("schema".into(), Value::from(SCHEMA_VERSION));
        through_every_decoder(Value::Object(map).to_string().as_bytes());
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// What the farm publishes decodes to itself.
    #[test]
    fn tasks_decode_to_themselves(message in task_message()) {
        let body = serde_json::to_vec(&message).unwrap();
        prop_assert_eq!(decode::<TaskMessage>(&body, "a task message"), Ok(message));
    }

    #[test]
    fn results_decode_to_themselves(message in result_message()) {
        let body = serde_json::to_vec(&message).unwrap();
        prop_assert_eq!(decode::<ResultMessage>(&body, "a result message"), Ok(message));
        prop_assert_eq!((kind("a result message").decode)(&body), Ok(()));
    }

    #[test]
    fn events_decode_to_themselves_and_are_within_bounds(message in event_message()) {
        let body = serde_json::to_vec(&message).unwrap();
        prop_assert_eq!(decode::<EventMessage>(&body, "an event message"), Ok(message.clone()));
        prop_assert_eq!(message.check_bounds(), Ok(()));
    }

    #[test]
    fn controls_decode_to_themselves(message in control_message()) {
        let body = serde_json::to_vec(&message).unwrap();
        prop_assert_eq!(decode::<ControlMessage>(&body, "a control message"), Ok(message));
    }

    /// A valid message without one of its fields: still valid (the field
    /// was optional), or refused naming the field.
    #[test]
    fn a_missing_field_is_named(
        (what, mut value) in any_message(),
        pick in any::<prop::sample::Index>(),
    ) {
        let all = paths(&value);
        let path = &all[pick.index(all.len())];
        let removed = remove(&mut value, path);
        if let Err(reason) = (kind(what).decode)(value.to_string().as_bytes()) {
            assert_clear(&reason, what);
            if let (Some(field), [_]) = (removed, path.as_slice()) {
                prop_assert!(reason.detail.contains(&field), "{} without {:?}: {}", what, field, reason);
            }
        }
    }

    /// A valid message with one value replaced by anything: refused with a
    /// reason (or still valid); a top-level field of the wrong JSON type is
    /// refused saying what was expected.
    #[test]
    fn a_retyped_field_is_refused_with_a_reason(
        (what, mut value) in any_message(),
        pick in any::<prop::sample::Index>(),
        replacement in arb_json(),
    ) {
        let all = paths(&value);
        let path = &all[pick.index(all.len())];
        let slot = at_mut(&mut value, path);
        let retyped = json_type(slot) != json_type(&replacement) && !slot.is_null();
        *slot = replacement;
        if let Err(reason) = (kind(what).decode)(value.to_string().as_bytes()) {
            assert_clear(&reason, what);
            if retyped && path.len() == 1 && reason.code == "malformed" && reason.detail.starts_with("not ") {
                prop_assert!(
                    ["invalid type", "invalid value", "expected", "unknown variant", "invalid", "missing field"]
                        .iter()
                        .any(|why| reason.detail.contains(why)),
                    "{}: {}",
                    what,
                    reason
                );
            }
        }
    }

    /// Numbers beyond what a field holds, anywhere in a valid message.
    #[test]
    fn odd_numbers_are_refused_with_a_reason(
        (what, mut value) in any_message(),
        pick in any::<prop::sample::Index>(),
        number in prop::sample::select(ODD_NUMBERS.to_vec()),
    ) {
        let all = paths(&value);
        *at_mut(&mut value, &all[pick.index(all.len())]) = Value::String("@@".into());
        if let Err(reason) = (kind(what).decode)(&with_raw(&value, number)) {
            assert_clear(&reason, what);
        }
    }

    /// Another schema version than this build's: refused as unsupported,
    /// naming the version.
    #[test]
    fn other_schema_versions_are_named(
        (what, mut value) in any_message(),
        version in prop_oneof![0u64..1, 2u64..100, any::<u64>()].prop_filter("not ours", |v| *v != 1),
    ) {
        value["schema"] = Value::from(version);
        let reason = (kind(what).decode)(value.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(reason.code, "unsupported-schema");
        prop_assert!(reason.detail.contains(&format!("version {version},")), "{}", reason);
    }

    /// A `schema` that is no version number at all is refused saying so.
    #[test]
    fn a_schema_that_is_not_a_number_is_named(
        (what, mut value) in any_message(),
        schema in prop_oneof![
            arb_json().prop_filter("not an unsigned integer", |v| !v.is_u64()),
            prop::sample::select(ODD_NUMBERS.to_vec()).prop_map(|n| Value::String(format!("@@{n}"))),
        ],
    ) {
        let body = match &schema {
            Value::String(s) if s.starts_with("@@") && ODD_NUMBERS.contains(&&s[2..]) => {
                value["schema"] = Value::String("@@".into());
                with_raw(&value, &s[2..])
            }
            _ => {
                value["schema"] = schema;
                value.to_string().into_bytes()
            }
        };
        let reason = (kind(what).decode)(&body).unwrap_err();
        assert_clear(&reason, what);
        let said = &reason.detail;
        prop_assert!(
            said.starts_with("\"schema\" is ")
                // "-0" reads as 0: a version, unsupported.
                || reason.code == "unsupported-schema"
                // 1e400: no JSON number.
                || said.starts_with("not JSON: number out of range"),
            "{}",
            reason
        );
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Nesting far past serde_json's limit (128), at the top or inside a
    /// field: refused, and the stack holds.
    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(
        (what, mut value) in any_message(),
        pick in any::<prop::sample::Index>(),
        depth in 100usize..12_000,
        object in any::<bool>(),
    ) {
        let deep = nested(depth, object);
        through_every_decoder(deep.as_bytes());
        let all = paths(&value);
        *at_mut(&mut value, &all[pick.index(all.len())]) = Value::String("@@".into());
        if let Err(reason) = (kind(what).decode)(&with_raw(&value, &deep)) {
            assert_clear(&reason, what);
        }
    }

    /// Long strings in any field of a valid message; a long worker id is
    /// refused naming its length.
    #[test]
    fn long_strings_are_decoded_or_refused_with_a_reason(
        (what, mut value) in any_message(),
        pick in any::<prop::sample::Index>(),
        len in prop_oneof![65usize..1024, Just(1 << 20)],
    ) {
        let long = "x".repeat(len);
        let all = paths(&value);
        let mut mutated = value.clone();
        *at_mut(&mut mutated, &all[pick.index(all.len())]) = Value::String(long.clone());
        if let Err(reason) = (kind(what).decode)(mutated.to_string().as_bytes()) {
            assert_clear(&reason, what);
        }
        if value.get("worker").is_some() {
            value["worker"] = Value::String(long);
            let reason = (kind(what).decode)(value.to_string().as_bytes()).unwrap_err();
            prop_assert!(reason.detail.contains(&format!("worker id of {len} bytes")), "{}", reason);
        }
    }

    /// A heartbeat's lists are bounded: up to MAX_HEARTBEAT_ENTRIES kept,
    /// more refused naming the bound.
    #[test]
    fn heartbeat_lists_are_bounded(
        list in prop::sample::select(vec!["stages", "warming", "sector_sizes"]),
        len in (MAX_HEARTBEAT_ENTRIES - 2)..(MAX_HEARTBEAT_ENTRIES + 3),
    ) {
        let entry = if list == "sector_sizes" { Value::from("2KiB") } else { Value::from("pc1") };
        let mut value = serde_json::to_value(EventMessage::new(
            "w1",
            EventKind::Heartbeat {
                hostname: "h".into(),
                stages: vec![],
                sector_sizes: vec![],
                slots: 1,
                running: vec![],
                capacity: vec![],
                hardware: None,
                storage_id: None,
                files_url: None,
                draining: false,
                warming: vec![],
                in_use: None,
            },
        ))
        .unwrap();
        value[list] = Value::Array(vec![entry; len]);
        let answer = (kind("an event message").decode)(value.to_string().as_bytes());
        if len <= MAX_HEARTBEAT_ENTRIES {
            prop_assert_eq!(answer, Ok(()));
        } else {
            let reason = answer.unwrap_err();
            prop_assert!(reason.detail.contains(&format!("more than {MAX_HEARTBEAT_ENTRIES} entries")), "{}", reason);
        }
    }
}

// ---------------------------------------------------------------------------
// Properties of what messages and paths carry.

proptest! {
    #![proptest_config(config(512))]

    /// A worker id is accepted exactly when it is 1 to 64 of `A-Za-z0-9._-`;
    /// a refusal says which rule it breaks.
    #[test]
    fn worker_ids_are_checked(id in prop_oneof![worker_id(), ".{0,80}", "[A-Za-z0-9._-]{60,70}"]) {
        let valid = (1..=MAX_WORKER_ID_LEN).contains(&id.len())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        match check_worker_id(&id) {
            Ok(()) => prop_assert!(valid, "{:?} accepted", id),
            Err(why) => {
                prop_assert!(!valid, "{:?} refused: {}", id, why);
                prop_assert!(why.starts_with("worker id "), "{}", why);
                prop_assert!(why.contains("bytes") || why.contains("only A-Z"), "{}", why);
            }
        }
    }

    /// Sector file names: lotus' own always parse back; anything else parses
    /// only to a name that cannot leave its folder.
    #[test]
    fn sector_names_parse_back_and_never_name_another_path(
        miner in any::<u64>(),
        number in any::<u64>(),
        other in prop_oneof![".{0,40}", "s-t0[0-9+-]{0,12}-[0-9./+\\x00-]{0,12}"],
    ) {
        let id = SectorId { miner, number };
        prop_assert_eq!(parse_sector_name(&id.file_name()), Some(id));
        if parse_sector_name(&other).is_some() {
            prop_assert!(other.starts_with("s-t0"), "{:?}", other);
            prop_assert!(!other.contains('/') && !other.contains('\0') && !other.contains(".."), "{:?}", other);
        }
    }

    /// File types: the five folder names, nothing else.
    #[test]
    fn file_types_are_the_five_folders(name in prop_oneof![".{0,16}", prop::sample::select(vec![
        "unsealed", "sealed", "cache", "update", "update-cache", "Sealed", "cache/", "../cache", "piece",
    ]).prop_map(str::to_string)]) {
        let known = FILE_TYPES.iter().find(|(_, folder)| *folder == name).map(|(bit, _)| *bit);
        prop_assert_eq!(file_type_bit(&name), known);
    }

    /// Sector sizes as operators and heartbeats write them: the five sizes
    /// parse, anything else is refused quoting the text.
    #[test]
    fn sector_sizes_parse_or_quote_the_text(
        text in prop_oneof![
            ".{0,16}",
            "[0-9]{1,25}[ KMGTkmgtiIbB]{0,4}",
            prop::sample::select(SectorSize::ALL.to_vec()).prop_map(|s| s.to_string()),
        ],
    ) {
        match text.parse::<SectorSize>() {
            Ok(size) => prop_assert!(SectorSize::ALL.contains(&size), "{:?} → {}", text, size),
            Err(why) => prop_assert!(why.contains(&format!("{text:?}")), "{:?}: {}", text, why),
        }
        // Through JSON, as a heartbeat or a config file carries it.
        if let Err(e) = serde_json::from_value::<SectorSize>(Value::String(text.clone())) {
            prop_assert!(e.to_string().contains("sector size"), "{:?}: {}", text, e);
        }
    }

    /// CIDs: lotus' commitments round-trip; other text is refused naming it.
    #[test]
    fn cids_round_trip_or_are_refused(cid in cid(), text in ".{0,80}") {
        prop_assert_eq!(cid.to_string().parse::<Cid>(), Ok(cid));
        if let Err(why) = text.parse::<Cid>() {
            prop_assert!(why.starts_with("invalid CID"), "{}", why);
        }
    }

    /// Bytes: base64 round-trips; other text is refused as invalid base64.
    #[test]
    fn bytes_round_trip_or_are_refused(bytes in bytes(), text in prop_oneof![".{0,40}", "[A-Za-z0-9+/=]{0,40}"]) {
        let json = serde_json::to_value(&bytes).unwrap();
        prop_assert_eq!(serde_json::from_value::<Bytes>(json).unwrap(), bytes);
        if let Err(why) = Bytes::decode(&text) {
            prop_assert!(why.starts_with("invalid base64"), "{}", why);
        }
    }

    /// Payloads: anything is inline base64 or a blob reference with a digest
    /// that names no other file; the rest is refused with a reason.
    #[test]
    fn payloads_name_only_digests(value in prop_oneof![
        arb_json(),
        (".{0,70}", any::<u64>()).prop_map(|(sha256, size)| serde_json::json!({"blob": {"sha256": sha256, "size": size}})),
    ]) {
        match serde_json::from_value::<Payload>(value) {
            Ok(Payload::Blob(blob)) => prop_assert!(blob.validate().is_ok(), "{:?}", blob),
            Ok(Payload::Inline(_)) => {}
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------
// The corpus.

/// Each corpus file goes through every decoder; a file named
/// `ok-<kind>-….json` must decode as that kind (`task`, `result`, `event`,
/// `control`), any other is refused with a clear reason by each decoder.
#[test]
fn the_messages_corpus_decodes_or_is_refused_with_a_reason() {
    for (path, body) in corpus("messages") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected = ["task", "result", "event", "control"]
            .iter()
            .position(|k| name.starts_with(&format!("ok-{k}-")))
            .map(|i| KINDS[i].what);
        for kind in &KINDS {
            match ((kind.decode)(&body), expected == Some(kind.what)) {
                (Ok(()), _) => {}
                (Err(reason), true) => panic!("{name} should decode as {}: {reason}", kind.what),
                (Err(reason), false) => assert_clear(&reason, kind.what),
            }
        }
        if expected.is_none() && !name.starts_with("ok-") {
            let decoded = KINDS.iter().filter(|k| (k.decode)(&body).is_ok()).count();
            assert_eq!(decoded, 0, "{name}: bad input that some decoder took");
        }
    }
}
