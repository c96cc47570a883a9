//! What the property tests of every crate share (docs/FUZZING.md): their
//! proptest configuration and the corpus. Compiled into each crate's
//! property tests with `#[path = "…/fuzz/support.rs"] mod support;`, so
//! `env!("CARGO_MANIFEST_DIR")` is the crate that includes it.

#![allow(dead_code)] // each crate uses the part it needs

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::Value;

/// Where proptest keeps the seeds of failures it found, per crate
/// (committed: they run first, every time).
pub const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/decoder_props.txt");

/// `cases` per property unless `PROPTEST_CASES` says otherwise; failures
/// kept in [`REGRESSIONS`] unless `PROPTEST_DISABLE_FAILURE_PERSISTENCE`.
pub fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if config.failure_persistence.is_some() {
        config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS)));
    }
    config
}

/// Every file of `fuzz/corpus/<target>/`, sorted, with its bytes.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    files.into_iter().map(|path| (path.clone(), std::fs::read(&path).unwrap())).collect()
}

/// A corpus file's name (`ok-…` names one that must be accepted).
pub fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Any JSON value (numbers of every kind, any text, nested a little), its
/// objects' keys drawn from `key` (a decoder's own field names make the
/// cases that get furthest in).
pub fn arb_json(key: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
