//! Property tests of what the bridge decodes from outside (docs/FUZZING.md):
//! whatever arrives, an answer and no panic, and a refusal that names the
//! problem; what lotus sends is taken.
//!
//! * `/rpc/v0`: [`rpc::parse`] and every method's params as the worker API
//!   decodes them (`worker_api.rs`, `Api::dispatch`), with the checks made
//!   on them before anything runs; refusals carry JSON-RPC's codes
//!   (-32700 parse, -32600 invalid request, -32602 invalid params);
//! * tokens: [`rpc::bearer_token`] from any `Authorization` and query,
//!   `auth::same` and `auth::carries`;
//! * `MINER_API_INFO`: [`MinerApiInfo::parse`];
//! * `/remote` paths and queries: [`remote::sector_file`],
//!   [`remote::keep_ids`], [`remote::check_allocated_numbers`];
//! * the corpora `fuzz/corpus/{rpc,auth,api_info,remote}/`, file by file.

use std::collections::BTreeMap;
use std::path::Path;

use axum::http::{header, HeaderMap, HeaderValue};
use proptest::prelude::*;
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::lotus::{Range, ReaderStream, SectorLocation};
use sealfarm_schemas::sector_store::FILE_TYPES;
use sealfarm_schemas::{Bytes, Cid, PieceInfo, RegisteredSealProof, SectorCids, SectorId, SectorRef};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::miner::api_info::MinerApiInfo;
use crate::miner::remote::{check_allocated_numbers, keep_ids, sector_file};
use crate::miner::rpc::{self, Request, RpcError, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR};
use crate::miner::worker_api::{check_proof_array, download_sources, Method};

#[path = "../../../fuzz/support.rs"]
mod support;
use support::{config, corpus};

// ---------------------------------------------------------------------------
// /rpc/v0: each method's params, as the worker API decodes them.

/// What a param of the worker API is (lotus' Go type), for generating one.
#[derive(Clone, Copy, Debug)]
enum Param {
    Sector,
    Base64,
    Pieces,
    Cids,
    OneCid,
    U64,
    OptU64s,
    Reader,
    OptRanges,
    /// Decoded as any JSON (Fetch's file types and modes, MoveStorage's types).
    Any,
    /// SealCommit2's C1 output: base64 text, kept as a blob.
    C1Out,
    /// ProveReplicaUpdate2's vanilla proofs: an array of base64 strings.
    Proofs,
    Bool,
    Sources,
    /// UnsealPiece's offset and size: whole 127-byte chunks of a 2 KiB sector.
    UnsealOffset,
    UnsealSize,
}

use Param::*;

/// Every method the worker API serves and its params, in lotus' order
/// (`worker_api.rs`: each arm's `request.decode::<(…)>()`).
const METHODS: &[(&str, &[Param])] = &[
    ("Version", &[]),
    ("Session", &[]),
    ("ProcessSession", &[]),
    ("Enabled", &[]),
    ("Info", &[]),
    ("TaskTypes", &[]),
    ("Paths", &[]),
    ("AddPiece", &[Sector, OptU64s, U64, Reader]),
    ("SealPreCommit1", &[Sector, Base64, Pieces]),
    ("SealPreCommit2", &[Sector, Base64]),
    ("SealCommit1", &[Sector, Base64, Base64, Pieces, Cids]),
    ("SealCommit2", &[Sector, C1Out]),
    ("FinalizeSector", &[Sector]),
    ("ReleaseUnsealed", &[Sector, OptRanges]),
    ("Fetch", &[Sector, Any, Any, Any]),
    ("MoveStorage", &[Sector, Any]),
    ("ReplicaUpdate", &[Sector, Pieces]),
    ("ProveReplicaUpdate1", &[Sector, OneCid, OneCid, OneCid]),
    ("ProveReplicaUpdate2", &[Sector, OneCid, OneCid, OneCid, Proofs]),
    ("GenerateSectorKeyFromData", &[Sector, OneCid]),
    ("FinalizeReplicaUpdate", &[Sector]),
    ("UnsealPiece", &[Sector, UnsealOffset, UnsealSize, Base64, OneCid]),
    ("DataCid", &[U64, Reader]),
    ("DownloadSectorData", &[Sector, Bool, Sources]),
];

/// The params of `request` decoded as the worker API decodes them, with
/// the checks it makes before accepting the call; Ok when it would accept.
fn decode_as(request: &Request<'_>) -> Result<(), RpcError> {
    let method = request.method.strip_prefix("Filecoin.").and_then(Method::parse);
    let Some(method) = method else { return Err(RpcError::not_found(&request.method)) };
    let invalid = |e: String| RpcError::new(INVALID_PARAMS, e);
    match method {
        Method::Version
        | Method::Session
        | Method::ProcessSession
        | Method::Enabled
        | Method::Info
        | Method::TaskTypes
        | Method::Paths => request.decode::<()>(),
        Method::AddPiece => request.decode::<(SectorRef, Option<Vec<u64>>, u64, ReaderStream)>().map(drop),
        Method::SealPreCommit1 => request.decode::<(SectorRef, Bytes, Vec<PieceInfo>)>().map(drop),
        Method::SealPreCommit2 => request.decode::<(SectorRef, Bytes)>().map(drop),
        Method::SealCommit1 => request.decode::<(SectorRef, Bytes, Bytes, Vec<PieceInfo>, SectorCids)>().map(drop),
        Method::SealCommit2 => request.decode::<(SectorRef, &RawValue)>().map(drop),
        Method::FinalizeSector | Method::FinalizeReplicaUpdate => request.decode::<(SectorRef,)>().map(drop),
        Method::ReleaseUnsealed => request.decode::<(SectorRef, Option<Vec<Range>>)>().map(drop),
        Method::Fetch => request.decode::<(SectorRef, Value, Value, Value)>().map(drop),
        Method::MoveStorage => request.decode::<(SectorRef, Value)>().map(drop),
        Method::ReplicaUpdate => request.decode::<(SectorRef, Vec<PieceInfo>)>().map(drop),
        Method::ProveReplicaUpdate1 => request.decode::<(SectorRef, Cid, Cid, Cid)>().map(drop),
        Method::ProveReplicaUpdate2 => {
            let (_, _, _, _, proofs) = request.decode::<(SectorRef, Cid, Cid, Cid, &RawValue)>()?;
            check_proof_array(proofs.get())
                .map_err(|e| invalid(format!("ProveReplicaUpdate2 (param: 4, the vanilla proofs): {e}")))
        }
        Method::GenerateSectorKeyFromData => request.decode::<(SectorRef, Cid)>().map(drop),
        Method::UnsealPiece => {
            let (sector, offset, size, _, _) = request.decode::<(SectorRef, u64, u64, Bytes, Cid)>()?;
            match sector.proof_type.info() {
                Some(info) => sealfarm_runtime::unsealed_file::unseal_range(offset, size, info.sector_size.0)
                    .map(drop)
                    .map_err(|e| invalid(format!("UnsealPiece: {e}"))),
                None => Ok(()),
            }
        }
        Method::DataCid => request.decode::<(u64, ReaderStream)>().map(drop),
        Method::DownloadSectorData => {
            let (_, _, sources) = request.decode::<(SectorRef, bool, BTreeMap<String, SectorLocation>)>()?;
            download_sources(sources)
                .map(drop)
                .map_err(|e| invalid(format!("DownloadSectorData (param: 2, the sources): {e}")))
        }
        other => Err(RpcError::method(format!("sealfarm-bridge does not support {other:?} yet"))),
    }
}

/// Parses a body and decodes it as the worker API would.
fn answer(body: &[u8]) -> Result<(), RpcError> {
    decode_as(&rpc::parse(body)?)
}

/// Asserts that a refusal of a body is one go-jsonrpc's client reads: one
/// of JSON-RPC's codes, a message that says what is wrong.
fn assert_rpc_error(error: &RpcError) {
    let prefixes: &[&str] = match error.code {
        PARSE_ERROR => &["parse error: "],
        INVALID_REQUEST => &["invalid request: "],
        INVALID_PARAMS => &[
            "params must be a positional array",
            "wrong param count (method '",
            "unmarshaling params for '",
            "UnsealPiece: ",
            "ProveReplicaUpdate2 (param: 4, ",
            "DownloadSectorData (param: 2, ",
        ],
        rpc::METHOD_NOT_FOUND => &["method '"],
        other => panic!("unexpected JSON-RPC code {other}: {}", error.message),
    };
    assert!(prefixes.iter().any(|p| error.message.starts_with(p)), "{error}");
    assert!(error.message.len() > 12, "a refusal that says too little: {error}");
}

/// A request body for `method` with `params` (a JSON text, as sent).
fn body(method: &str, params: &str) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":7,"method":"Filecoin.{method}","params":{params},"meta":{{}}}}"#).into_bytes()
}

fn cid() -> impl Strategy<Value = Value> {
    (any::<[u8; 32]>(), any::<bool>()).prop_map(|(c, data)| {
        let cid: Cid = if data { Commitment::Data } else { Commitment::Replica }.to_cid(&c);
        serde_json::to_value(cid).unwrap()
    })
}

fn base64() -> impl Strategy<Value = Value> {
    prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| serde_json::to_value(Bytes(b)).unwrap())
}

/// A valid value of a param.
fn param(kind: Param) -> BoxedStrategy<Value> {
    match kind {
        Sector => (any::<u64>(), any::<u64>(), prop_oneof![0i64..20, any::<i64>()])
            .prop_map(|(miner, number, proof)| {
                let sector = SectorRef { id: SectorId { miner, number }, proof_type: RegisteredSealProof(proof) };
                serde_json::to_value(sector).unwrap()
            })
            .boxed(),
        Base64 => base64().boxed(),
        Pieces => prop::collection::vec((any::<u64>(), cid()), 0..3)
            .prop_map(|p| {
                Value::Array(p.into_iter().map(|(size, cid)| json!({"Size": size, "PieceCID": cid})).collect())
            })
            .boxed(),
        Cids => (prop_oneof![Just(Value::Null), cid()], prop_oneof![Just(Value::Null), cid()])
            .prop_map(|(unsealed, sealed)| json!({"Unsealed": unsealed, "Sealed": sealed}))
            .boxed(),
        OneCid => cid().boxed(),
        U64 => any::<u64>().prop_map(Value::from).boxed(),
        OptU64s => prop::option::of(prop::collection::vec(any::<u64>(), 0..4)).prop_map(|v| json!(v)).boxed(),
        Reader => (prop::sample::select(vec!["null", "push", "http"]), ".{0,20}")
            .prop_map(|(kind, info)| serde_json::to_value(ReaderStream { kind: kind.into(), info }).unwrap())
            .boxed(),
        OptRanges => prop::option::of(prop::collection::vec((any::<u64>(), any::<u64>()), 0..3))
            .prop_map(|r| {
                json!(r.map(|r| r.into_iter().map(|(offset, size)| Range { offset, size }).collect::<Vec<_>>()))
            })
            .boxed(),
        Any => arb_json().boxed(),
        C1Out => base64().boxed(),
        Proofs => prop::collection::vec(prop::collection::vec(any::<u8>(), 1..24), 1..4)
            .prop_map(|p| json!(p.into_iter().map(|b| serde_json::to_value(Bytes(b)).unwrap()).collect::<Vec<_>>()))
            .boxed(),
        Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Sources => prop::collection::btree_map(
            prop::sample::select(FILE_TYPES.iter().map(|(bit, _)| bit.to_string()).collect::<Vec<_>>()),
            ("[a-z0-9.]{1,12}", prop::bool::ANY, prop::option::of(("[A-Za-z-]{1,8}", ".{0,12}"))),
            1..4,
        )
        .prop_map(|sources| {
            let map = sources.into_iter().map(|(bit, (host, https, header))| {
                let scheme = if https { "https" } else { "http" };
                let headers = header.map(|(key, value)| json!([{"Key": key, "Value": value}]));
                (bit, json!({"Local": false, "URL": format!("{scheme}://{host}/f"), "Headers": headers}))
            });
            Value::Object(map.collect())
        })
        .boxed(),
        UnsealOffset => Just(Value::from(0)).boxed(),
        UnsealSize => (1u64..=16).prop_map(|n| Value::from(n * 127)).boxed(),
    }
}

/// A method and valid params for it, as the miner sends them.
fn valid_call() -> impl Strategy<Value = (&'static str, Vec<Value>)> {
    call_of(METHODS.to_vec())
}

/// [`valid_call`] of a method that takes params.
fn call_with_params() -> impl Strategy<Value = (&'static str, Vec<Value>)> {
    call_of(METHODS.iter().filter(|(_, params)| !params.is_empty()).copied().collect())
}

fn call_of(methods: Vec<(&'static str, &'static [Param])>) -> impl Strategy<Value = (&'static str, Vec<Value>)> {
    prop::sample::select(methods).prop_flat_map(|(method, params)| {
        let params: Vec<BoxedStrategy<Value>> = params.iter().map(|p| param(*p)).collect();
        (Just(method), params)
    })
}

/// Any JSON value, its keys now and then a request's own.
fn arb_json() -> impl Strategy<Value = Value> {
    support::arb_json(prop_oneof![Just("method".to_string()), Just("params".to_string()), ".{0,8}"].boxed())
}

/// Numbers no param holds, as text: beyond u64 and f64, negative, fractional.
const ODD_NUMBERS: [&str; 8] = [
    "1e400",
    "-0",
    "18446744073709551616",
    "-1",
    "1.5",
    "-9223372036854775809",
    "1e-400",
    "123456789012345678901234567890",
];

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes as a body: a parse error or an invalid request, never a
    /// panic.
    #[test]
    fn any_body_is_answered(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(error) = answer(&body) {
            assert_rpc_error(&error);
        }
    }

    /// Any JSON as a body: a request, or an invalid request (valid JSON is
    /// never a parse error).
    #[test]
    fn any_json_is_a_request_or_invalid(value in arb_json()) {
        match rpc::parse(value.to_string().as_bytes()) {
            Ok(request) => {
                prop_assert!(value.is_object(), "only an object is a request: {}", value);
                prop_assert_eq!(Some(request.method.as_str()), value["method"].as_str());
                if let Err(error) = decode_as(&request) {
                    assert_rpc_error(&error);
                }
            }
            Err(error) => {
                assert_rpc_error(&error);
                prop_assert_eq!(error.code, INVALID_REQUEST, "{}", error);
            }
        }
    }

    /// What lotus sends is taken: each method with valid params.
    #[test]
    fn valid_calls_are_taken((method, params) in valid_call()) {
        let body = body(method, &Value::Array(params).to_string());
        prop_assert_eq!(answer(&body), Ok(()));
    }

    /// One param more or less: refused as go-jsonrpc refuses it, naming the
    /// method and both counts.
    #[test]
    fn a_wrong_param_count_is_named((method, mut params) in valid_call(), extra in arb_json(), fewer in any::<bool>()) {
        let want = params.len();
        if fewer && !params.is_empty() {
            params.pop();
        } else {
            params.push(extra);
        }
        let error = answer(&body(method, &Value::Array(params.clone()).to_string())).unwrap_err();
        prop_assert_eq!(error.code, INVALID_PARAMS);
        let said = format!("wrong param count (method 'Filecoin.{method}'): {} != {want}", params.len());
        prop_assert_eq!(error.message, said);
    }

    /// One param replaced by anything: taken (it fit), or refused naming
    /// the param.
    #[test]
    fn a_wrong_param_is_named(
        (method, mut params) in call_with_params(),
        pick in any::<prop::sample::Index>(),
        replacement in prop_oneof![arb_json(), ".{0,1024}".prop_map(Value::String)],
    ) {
        let index = pick.index(params.len());
        params[index] = replacement;
        if let Err(error) = answer(&body(method, &Value::Array(params).to_string())) {
            assert_rpc_error(&error);
            prop_assert_eq!(error.code, INVALID_PARAMS, "{}", error);
            let named = error.message.contains(&format!("(param: {index}"))
                || (method == "UnsealPiece" && error.message.starts_with("UnsealPiece: range"));
            prop_assert!(named, "{}", error);
        }
    }

    /// Numbers no param holds, in any param: refused naming the param (or
    /// taken, where the param is any JSON).
    #[test]
    fn odd_numbers_are_refused_naming_the_param(
        (method, params) in call_with_params(),
        pick in any::<prop::sample::Index>(),
        number in prop::sample::select(ODD_NUMBERS.to_vec()),
    ) {
        let index = pick.index(params.len());
        let texts: Vec<String> = params.iter().enumerate()
            .map(|(i, p)| if i == index { number.to_string() } else { p.to_string() })
            .collect();
        if let Err(error) = answer(&body(method, &format!("[{}]", texts.join(",")))) {
            assert_rpc_error(&error);
        }
    }

    /// Params that are no array: refused as such; `null` or none count as
    /// no params.
    #[test]
    fn params_must_be_an_array(
        (method, params) in valid_call(),
        other in arb_json().prop_filter("not an array", |v| !v.is_array()),
    ) {
        let error = answer(&body(method, &other.to_string()));
        if other.is_null() {
            prop_assert_eq!(error.is_ok(), params.is_empty(), "{:?}", error);
        } else {
            let error = error.unwrap_err();
            prop_assert_eq!(error.code, INVALID_PARAMS);
            prop_assert_eq!(error.message, "params must be a positional array");
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Nesting far past serde_json's limit, as the body, the id or a param:
    /// refused, and the stack holds.
    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(
        (method, params) in valid_call(),
        pick in any::<prop::sample::Index>(),
        depth in 100usize..12_000,
    ) {
        let deep = nested(depth);
        let error = answer(deep.as_bytes()).unwrap_err();
        assert_rpc_error(&error);
        let with_id = format!(r#"{{"id":{deep},"method":"Filecoin.{method}","params":[]}}"#);
        if let Err(error) = answer(with_id.as_bytes()) {
            assert_rpc_error(&error);
        }
        if !params.is_empty() {
            let index = pick.index(params.len());
            let texts: Vec<String> = params.iter().enumerate()
                .map(|(i, p)| if i == index { deep.clone() } else { p.to_string() })
                .collect();
            if let Err(error) = answer(&body(method, &format!("[{}]", texts.join(",")))) {
                assert_rpc_error(&error);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens.

/// A token as the miner issues them (a JWT: base64url and dots).
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{4,24}\\.[A-Za-z0-9_-]{4,24}\\.[A-Za-z0-9_-]{4,24}"
}

fn headers_with(authorization: &[u8]) -> Option<HeaderMap> {
    let value = HeaderValue::from_bytes(authorization).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    Some(headers)
}

proptest! {
    #![proptest_config(config(512))]

    /// A token in `Authorization: Bearer …` or `?token=…` is found as sent.
    #[test]
    fn tokens_are_found_where_lotus_puts_them(token in token(), before in "[a-z]{1,5}=[a-z0-9]{0,5}", after in "[a-z]{1,5}=[a-z0-9]{0,5}") {
        let headers = headers_with(format!("Bearer {token}").as_bytes()).unwrap();
        prop_assert_eq!(rpc::bearer_token(&headers, None), Some(token.clone()));
        let query = format!("{before}&token={token}&{after}");
        prop_assert_eq!(rpc::bearer_token(&HeaderMap::new(), Some(&query)), Some(token.clone()));
        prop_assert!(crate::auth::carries(&headers, None, &["other", token.as_str()]));
        let longer = format!("{token}x");
        prop_assert!(!crate::auth::carries(&headers, None, &[longer.as_str()]));
    }

    /// Any `Authorization` value and query: an answer, and one that came
    /// from them (a `Bearer ` value, or a `token=` pair of the query).
    #[test]
    fn any_authorization_and_query_are_answered(
        authorization in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), "Bearer .{0,30}".prop_map(String::into_bytes)],
        query in prop::option::of(prop_oneof![".{0,40}", "([a-z]{0,4}=?[a-z0-9]{0,4}&){0,3}token=.{0,10}"]),
    ) {
        let headers = headers_with(&authorization).unwrap_or_default();
        let found = rpc::bearer_token(&headers, query.as_deref());
        if let Some(token) = &found {
            let from_header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            let from_query = query.as_deref().unwrap_or("").split('&').any(|p| p == format!("token={token}"));
            prop_assert!(from_header == Some(token.as_str()) || from_query, "{:?} from {:?} and {:?}", token, headers, query);
        }
        prop_assert_eq!(crate::auth::carries(&headers, query.as_deref(), &["t0k3n"]), found.as_deref() == Some("t0k3n"));
    }

    /// Tokens match only themselves, whatever their length.
    #[test]
    fn tokens_match_only_themselves(a in ".{0,40}", b in ".{0,40}") {
        prop_assert_eq!(crate::auth::same(&a, &b), a == b);
        prop_assert!(crate::auth::same(&a, &a));
    }
}

// ---------------------------------------------------------------------------
// MINER_API_INFO.

/// A host lotus would print in a multiaddr or URL, and how it appears in the URL.
fn miner_address() -> impl Strategy<Value = (String, String)> {
    let port = 1u16..;
    prop_oneof![
        (any::<[u8; 4]>(), port.clone(), prop::sample::select(vec!["http", "ws"])).prop_map(|(ip, port, proto)| {
            let ip = std::net::Ipv4Addr::from(ip);
            (format!("/ip4/{ip}/tcp/{port}/{proto}"), format!("http://{ip}:{port}/rpc/v0"))
        }),
        (any::<[u16; 8]>(), port.clone()).prop_map(|(ip, port)| {
            let ip = std::net::Ipv6Addr::from(ip);
            (format!("/ip6/{ip}/tcp/{port}/http"), format!("http://[{ip}]:{port}/rpc/v0"))
        }),
        ("[a-wyz][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}", port.clone(), prop::sample::select(vec!["dns", "dns4", "dns6"]))
            .prop_map(|(host, port, dns)| {
                (format!("/{dns}/{host}/tcp/{port}/https"), format!("https://{host}:{port}/rpc/v0"))
            }),
        ("[a-wyz][a-z0-9-]{0,10}", port.clone()).prop_map(|(host, port)| {
            (format!("/dns4/{host}/tcp/{port}/wss"), format!("https://{host}:{port}/rpc/v0"))
        }),
        ("[a-wyz][a-z0-9-]{0,10}", port, prop::sample::select(vec!["http", "https", "ws", "wss"]), any::<bool>())
            .prop_map(|(host, port, scheme, suffix)| {
                let tls = if scheme == "https" || scheme == "wss" { "https" } else { "http" };
                let tail = if suffix { "/rpc/v0" } else { "" };
                (format!("{scheme}://{host}:{port}{tail}"), format!("{tls}://{host}:{port}/rpc/v0"))
            }),
    ]
}

/// An answer of `MinerApiInfo::parse` is a URL a client can use, and a
/// refusal names the setting and never the token.
fn assert_api_info(text: &str, token: Option<&str>) {
    match MinerApiInfo::parse(text) {
        Ok(info) => {
            let url = url::Url::parse(&info.url).unwrap_or_else(|e| panic!("{text:?} gave {:?}: {e}", info.url));
            assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{text:?} gave {:?}", info.url);
            assert!(info.url.ends_with("/rpc/v0") && url.query().is_none(), "{text:?} gave {:?}", info.url);
            assert!(!format!("{info:?}").contains(token.unwrap_or("\u{0}")), "the token in {info:?}");
        }
        Err(e) => {
            let why = format!("{e:#}");
            assert!(why.contains("MINER_API_INFO"), "{text:?}: {why}");
            if let Some(token) = token {
                assert!(!why.contains(token), "the token in the refusal of {text:?}: {why}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// What `lotus-miner auth api-info` prints (and the URL forms) parses
    /// to the miner's URL and token.
    #[test]
    fn api_info_as_lotus_prints_it_parses(token in token(), (address, url) in miner_address(), list in any::<bool>()) {
        let text = format!("{token}:{address}");
        // A list: the first entry counts.
        let text = if list { format!(" {text},other:/ip4/1.1.1.1/tcp/1/http") } else { text };
        let info = MinerApiInfo::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e:#}")))?;
        prop_assert_eq!(info.token.as_deref(), Some(token.as_str()));
        prop_assert_eq!(&info.url, &url);
        assert_api_info(&text, Some(&token));
    }

    /// Any text: a usable URL, or a refusal naming the setting.
    #[test]
    fn any_api_info_is_parsed_or_refused(text in prop_oneof![
        ".{0,60}",
        "[a-z]{0,6}:?/(ip4|ip6|dns4|tcp|http|tls|[0-9.:]{0,8})(/[a-z0-9.:]{0,8}){0,6}",
    ]) {
        assert_api_info(&text, None);
    }

    /// A valid value with one character changed, removed or added after the
    /// token: a usable URL or a refusal that keeps the token out.
    #[test]
    fn mutated_api_info_is_parsed_or_refused(
        token in token(),
        (address, _) in miner_address(),
        at in any::<prop::sample::Index>(),
        edit in 0u8..3,
        c in prop_oneof![Just('/'), Just(':'), Just('.'), Just('['), Just('%'), Just(' '), any::<char>()],
    ) {
        let mut chars: Vec<char> = address.chars().collect();
        let i = at.index(chars.len());
        match edit {
            0 => chars[i] = c,
            1 => { chars.remove(i); }
            _ => chars.insert(i, c),
        }
        let address: String = chars.into_iter().collect();
        // A ':' or ',' in front of the address would move the token boundary.
        prop_assume!(!address.starts_with(':') && !address.starts_with(','));
        let text = format!("{token}:{address}");
        assert_api_info(&text, if address.trim().is_empty() { None } else { Some(&token) });
    }
}

// ---------------------------------------------------------------------------
// /remote paths and queries.

proptest! {
    #![proptest_config(config(512))]

    /// A `/remote/{type}/{name}` names a sector exactly when the type is a
    /// file type and the name a sector's; what passes stays in its folder.
    #[test]
    fn remote_paths_name_sector_files_only(
        file_type in prop_oneof![
            prop::sample::select(FILE_TYPES.iter().map(|(_, f)| f.to_string()).collect::<Vec<_>>()),
            ".{0,12}",
            Just("..".to_string()),
        ],
        name in prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(m, n)| SectorId { miner: m, number: n }.file_name()),
            ".{0,24}",
            "s-t0[0-9+]{0,6}-[0-9./+\\x00-]{0,8}",
        ],
    ) {
        let known = FILE_TYPES.iter().any(|(_, f)| *f == file_type);
        let sector = sector_file(&file_type, &name);
        prop_assert_eq!(sector.is_some(), known && sealfarm_schemas::sector_store::parse_sector_name(&name).is_some());
        if sector.is_some() {
            let path = Path::new("/storage").join(&file_type).join(&name);
            prop_assert!(path.starts_with("/storage") && path.components().count() == 4, "{}", path.display());
            prop_assert!(!name.contains('\0'));
        }
    }

    /// `?keep=` of a DELETE: the ids of its first `keep=` pair, split at
    /// dots; any query gives an answer.
    #[test]
    fn keep_lists_come_from_the_first_keep_pair(
        ids in prop::collection::vec("[a-f0-9-]{1,36}", 1..4),
        before in "([a-z]{1,4}=[a-z0-9]{0,4}&){0,2}",
        query in prop::option::of(".{0,40}"),
    ) {
        let asked = format!("{before}keep={}&keep=other", ids.join("."));
        prop_assert_eq!(keep_ids(Some(&asked)), ids);
        let kept = keep_ids(query.as_deref());
        prop_assert!(kept.iter().all(|id| !id.contains('.') && !id.contains('&')), "{:?}", kept);
    }

    /// `…/{proof type}/allocated/{offset}/{size}`: numbers pass, anything
    /// else is refused quoting all three.
    #[test]
    fn allocated_numbers_are_checked(
        spt in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), ".{0,8}"],
        offset in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{20,25}", ".{0,8}"],
        size in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), ".{0,8}"],
    ) {
        let numbers = [&spt, &offset, &size].iter().all(|n| n.parse::<u64>().is_ok());
        match check_allocated_numbers(&spt, &offset, &size) {
            Ok(()) => prop_assert!(numbers),
            Err(why) => {
                prop_assert!(!numbers);
                prop_assert!(why.contains(&format!("{spt:?}")) && why.contains(&format!("{offset:?}")), "{}", why);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The corpora.

/// Each request body: answered with JSON-RPC's codes; one named `ok-…` taken.
#[test]
fn the_rpc_corpus_is_answered() {
    for (path, body) in corpus("rpc") {
        let name = support::name(&path);
        match answer(&body) {
            Ok(()) => {}
            Err(error) if name.starts_with("ok-") => panic!("{name}: {error}"),
            Err(error) => assert_rpc_error(&error),
        }
    }
}

/// Each `Authorization` value (and, after a first line break, a query):
/// an answer; one named `ok-…` carries the token `t0k3n`.
#[test]
fn the_auth_corpus_is_answered() {
    for (path, bytes) in corpus("auth") {
        let name = support::name(&path);
        let (authorization, query) = match bytes.iter().position(|b| *b == b'\n') {
            Some(i) => (&bytes[..i], Some(String::from_utf8_lossy(&bytes[i + 1..]).into_owned())),
            None => (&bytes[..], None),
        };
        let headers = headers_with(authorization).unwrap_or_default();
        let carried = crate::auth::carries(&headers, query.as_deref(), &["t0k3n"]);
        assert_eq!(carried, name.starts_with("ok-"), "{name}: {:?}", rpc::bearer_token(&headers, query.as_deref()));
    }
}

/// Each `MINER_API_INFO` value: a usable URL or a refusal naming the
/// setting; one named `ok-…` parses.
#[test]
fn the_api_info_corpus_is_parsed_or_refused() {
    for (path, bytes) in corpus("api_info") {
        let name = support::name(&path);
        let text = String::from_utf8_lossy(&bytes);
        assert_api_info(&text, None);
        assert_eq!(MinerApiInfo::parse(&text).is_ok(), name.starts_with("ok-"), "{name}");
    }
}

/// Each `/remote` request target (`{type}/{name}[/…][?query]`, after
/// `/remote/`): an answer from every check; one named `ok-…` names a
/// sector file on one of the router's routes.
#[test]
fn the_remote_corpus_is_answered() {
    let missing = tempfile::tempdir().unwrap();
    for (path, bytes) in corpus("remote") {
        let name = support::name(&path);
        let target = String::from_utf8_lossy(&bytes).into_owned();
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target.as_str(), None),
        };
        let segments: Vec<&str> = path.split('/').collect();
        // The router's two shapes: `{type}/{name}` and `…/{spt}/allocated/{offset}/{size}`.
        let sector = match segments.as_slice() {
            [file_type, name] | [file_type, name, _, "allocated", _, _] => sector_file(file_type, name),
            _ => None,
        };
        assert_eq!(sector.is_some(), name.starts_with("ok-"), "{name}: {target:?}");
        keep_ids(query);
        rpc::bearer_token(&HeaderMap::new(), query);
        if let [_, _, spt, "allocated", offset, size] = segments.as_slice() {
            if check_allocated_numbers(spt, offset, size).is_ok() {
                let file = missing.path().join("unsealed");
                let (code, text) = sealfarm_runtime::unsealed_file::allocated_answer(&file, spt, offset, size);
                assert!(code == 500 && !text.is_empty(), "{name}: {code} {text}");
            }
        }
    }
}
