//! Property tests of the worker's config file (docs/FUZZING.md): whatever
//! the file holds, `ConfigFile::load` answers and never panics, a refusal
//! names the file and the problem, and a file an operator would write
//! loads as written; its `[resources]` values then apply or are refused
//! naming the override.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sealfarm_schemas::{SectorSize, Stage};

use super::overrides::{env_size, env_task, resources_with_overrides, ConfigFile, FIELDS};
use super::Wanted;

#[path = "../../../fuzz/support.rs"]
mod support;
use support::{config, corpus};

/// Loads `text` as a config file; the file's path comes back for messages.
fn load(text: &[u8]) -> (Result<ConfigFile, String>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, text).unwrap();
    (ConfigFile::load(&path).map_err(|e| format!("{e:#}")), path)
}

/// A refusal names the file and says more than that.
fn assert_names_the_file(why: &str, path: &Path) {
    let file = path.display().to_string();
    assert!(why.contains(&file), "a refusal that does not name the file: {why}");
    assert!(why.len() > file.len() + "config file : ".len(), "a refusal with no reason: {why}");
}

/// An override name: a task, maybe a size, a field.
fn override_name() -> impl Strategy<Value = String> {
    let task = prop::sample::select(Stage::ALL.to_vec()).prop_map(env_task);
    let size = prop::option::of(prop::sample::select(SectorSize::ALL.to_vec()).prop_map(env_size));
    (task, size, prop::sample::select(FIELDS.to_vec())).prop_map(|(task, size, field)| match size {
        Some(size) => format!("{task}_{size}_{field}"),
        None => format!("{task}_{field}"),
    })
}

/// An override value as TOML, as operators write them.
fn override_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..1 << 40).prop_map(|n| n.to_string()),
        (0u64..512, prop::sample::select(vec!["KiB", "MiB", "GiB", "TiB", "k", "G", ""]))
            .prop_map(|(n, unit)| format!("\"{n}{unit}\"")),
        (0u32..8).prop_map(|n| format!("{}", f64::from(n) / 4.0)),
    ]
}

/// A config file as an operator writes it, and what it says.
#[derive(Clone, Debug)]
struct Written {
    text: String,
    stages: Option<Vec<Stage>>,
    sizes: Option<Vec<SectorSize>>,
    cpu_proving: Option<bool>,
    resources: Vec<(String, String)>,
}

fn written() -> impl Strategy<Value = Written> {
    (
        prop::option::of(prop::sample::subsequence(Stage::ALL.to_vec(), 0..=Stage::ALL.len())),
        prop::option::of(prop::sample::subsequence(SectorSize::ALL.to_vec(), 0..=SectorSize::ALL.len())),
        prop::option::of(any::<bool>()),
        prop::collection::btree_map(override_name(), override_value(), 0..6),
    )
        .prop_map(|(stages, sizes, cpu_proving, resources)| {
            let mut text = String::from("# a worker\n");
            if let Some(stages) = &stages {
                let list: Vec<String> = stages.iter().map(|s| format!("\"{s}\"")).collect();
                text += &format!("stages = [{}]\n", list.join(", "));
            }
            if let Some(sizes) = &sizes {
                let list: Vec<String> = sizes.iter().map(|s| format!("\"{s}\"")).collect();
                text += &format!("sector_sizes = [{}]\n", list.join(", "));
            }
            if let Some(cpu) = cpu_proving {
                text += &format!("cpu_proving = {cpu}\n");
            }
            if !resources.is_empty() {
                text += "[resources]\n";
                for (name, value) in &resources {
                    text += &format!("{name} = {value}   # why\n");
                }
            }
            Written { text, stages, sizes, cpu_proving, resources: resources.into_iter().collect() }
        })
}

/// One way to spoil a valid file, and what the refusal must then say.
fn spoil() -> impl Strategy<Value = (String, &'static str)> {
    prop_oneof![
        "[a-z_]{1,12}"
            .prop_filter("not a field", |k| !["stages", "sector_sizes", "cpu_proving", "resources"]
                .contains(&k.as_str()))
            .prop_map(|k| (format!("{k} = 1\n"), "unknown field")),
        "[a-z0-9]{1,8}"
            .prop_filter("not a stage", |s| s.parse::<Stage>().is_err())
            .prop_map(|s| (format!("stages = [\"{s}\"]\n"), "unknown variant")),
        prop_oneof!["[0-9]{1,25}[KMGT]?(iB)?", ".{0,10}"]
            .prop_filter("not a size", |s| s.parse::<SectorSize>().is_err())
            .prop_map(|s| (format!("sector_sizes = [{}]\n", toml_string(&s)), "sector size")),
        prop_oneof![Just("\"yes\""), Just("1"), Just("[]"), Just("{}")]
            .prop_map(|v| (format!("cpu_proving = {v}\n"), "invalid type")),
        "[A-Z0-9_]{1,24}"
            .prop_filter("not an override", |n| !is_override(n))
            .prop_map(|n| (format!("[resources]\n{n} = 1\n"), "is not an override name")),
        Just(("stages = []\nstages = []\n".to_string(), "duplicate key")),
        Just(("stages = [\"pc1\"\n".to_string(), "TOML parse error")),
        Just(("cpu_proving = \"unterminated\n".to_string(), "TOML parse error")),
    ]
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn is_override(name: &str) -> bool {
    Stage::ALL.into_iter().any(|stage| {
        FIELDS.iter().any(|field| {
            name == format!("{}_{field}", env_task(stage))
                || SectorSize::ALL.iter().any(|size| name == format!("{}_{}_{field}", env_task(stage), env_size(*size)))
        })
    })
}

fn nested(depth: usize) -> String {
    format!("a = {}{}\n", "[".repeat(depth), "]".repeat(depth))
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes as the file: loaded or refused naming the file.
    #[test]
    fn any_file_loads_or_is_refused_naming_the_file(text in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,200}".prop_map(String::into_bytes),
        written().prop_map(|w| w.text.into_bytes()),
    ]) {
        let (loaded, path) = load(&text);
        if let Err(why) = loaded {
            assert_names_the_file(&why, &path);
        }
    }

    /// A file as an operator writes it loads as written.
    #[test]
    fn written_files_load_as_written(file in written()) {
        let (loaded, _path) = load(file.text.as_bytes());
        let config = loaded.map_err(|e| TestCaseError::fail(format!("{}\n{}", file.text, e)))?;
        prop_assert_eq!(&config.stages, &file.stages);
        prop_assert_eq!(&config.sector_sizes, &file.sizes);
        prop_assert_eq!(config.cpu_proving, file.cpu_proving);
        let overrides = config.overrides();
        for (name, value) in &file.resources {
            prop_assert_eq!(&overrides[name], value.trim_matches('"'));
        }
    }

    /// A valid file with one thing spoilt: refused, naming the file and the
    /// problem.
    #[test]
    fn a_spoilt_file_is_refused_naming_the_problem(file in written(), (line, says) in spoil()) {
        let text = spoilt(&file.text, &line);
        let (loaded, path) = load(text.as_bytes());
        let why = loaded.err().ok_or_else(|| TestCaseError::fail(format!("took:\n{text}")))?;
        assert_names_the_file(&why, &path);
        prop_assert!(why.contains(says), "{}\n→ {}", text, why);
    }

    /// Any text as an override's value (config file or environment): it
    /// applies or is refused naming the override; never a panic.
    #[test]
    fn any_override_value_applies_or_is_refused(
        name in override_name(),
        value in prop_oneof![".{0,24}", "-?[0-9.]{0,30}[ kKmMgGtTiIbB]{0,4}", override_value()],
        from_env in any::<bool>(),
    ) {
        let mut wanted = Wanted::default();
        if !from_env {
            wanted.file_overrides.insert(name.clone(), value.clone());
        }
        let env = |n: &str| (from_env && n == name).then(|| value.clone());
        for stage in Stage::ALL {
            for size in SectorSize::ALL {
                if let Err(e) = resources_with_overrides(stage, size, &wanted, &env) {
                    let why = format!("{e:#}");
                    prop_assert!(why.contains(&format!("{name}={value:?}")), "{}", why);
                }
            }
        }
    }
}

/// `file` with `line` in it: a top-level line first (replacing the file's
/// own line of that key), an override under the file's `[resources]`.
fn spoilt(file: &str, line: &str) -> String {
    if let Some(entry) = line.strip_prefix("[resources]\n") {
        return match file.contains("[resources]\n") {
            true => file.replacen("[resources]\n", &format!("[resources]\n{entry}"), 1),
            false => format!("{file}{line}"),
        };
    }
    let key = format!("{} ", line.split(' ').next().unwrap_or(""));
    let kept: String = file.lines().filter(|l| !l.starts_with(&key)).map(|l| format!("{l}\n")).collect();
    format!("{line}{kept}")
}

proptest! {
    #![proptest_config(config(16))]

    /// Arrays nested far deeper than any config: refused, and the stack holds.
    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(depth in 100usize..12_000) {
        let (loaded, path) = load(nested(depth).as_bytes());
        let why = loaded.expect_err("an unknown field at least");
        assert_names_the_file(&why, &path);
    }
}

/// Every file of `fuzz/corpus/worker_config/`: one named `ok-…` loads and
/// its overrides apply; every other is refused, when loaded (naming the
/// file) or when its overrides apply (naming the override).
#[test]
fn the_worker_config_corpus_loads_or_is_refused() {
    for (path, _) in corpus("worker_config") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let applied = ConfigFile::load(&path).and_then(|config| {
            let wanted = Wanted { file_overrides: config.overrides(), ..Wanted::default() };
            for stage in Stage::ALL {
                for size in SectorSize::ALL {
                    resources_with_overrides(stage, size, &wanted, &|_| None)?;
                }
            }
            Ok(())
        });
        match (applied, name.starts_with("ok-")) {
            (Ok(()), true) => {}
            (Ok(()), false) => panic!("{name}: a bad config file that was taken"),
            (Err(e), true) => panic!("{name}: {e:#}"),
            (Err(e), false) => {
                let why = format!("{e:#}");
                assert!(why.contains(&path.display().to_string()) || why.contains('='), "{name}: {why}");
            }
        }
    }
}
