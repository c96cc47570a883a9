//! The operator's overrides of lotus' resource table.
//!
//! Operators override the table the way they already do for lotus-worker:
//! environment variables `<TASK>_<SIZE>_<FIELD>` or `<TASK>_<FIELD>` (e.g.
//! `PC1_32G_MAX_CONCURRENT=4`, `C2_MAX_MEMORY=64GiB`), or the same keys under
//! `[resources]` in the worker's config file. The most specific name wins;
//! for one name the environment beats the config file. Tasks:
//! `AP`, `PC1`, `PC2`, `C1`, `C2`, `FIN`, `FUS` (release unsealed), `RU`
//! (ReplicaUpdate), `PR1`, `PR2`, `GSK`, `FRU`, `UNS`, `DC`, `DL`; sizes
//! `2K`, `8M`, `512M`, `32G`, `64G`; fields `MIN_MEMORY`, `MAX_MEMORY`,
//! `GPU_UTILIZATION`, `MAX_PARALLELISM`, `MAX_PARALLELISM_GPU`,
//! `BASE_MIN_MEMORY`, `MAX_CONCURRENT`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use sealfarm_schemas::{SectorSize, Stage};
use serde::Deserialize;

use super::lotus_table::{default_resources, Resources, GIB, KIB, MIB};
use super::Wanted;

/// The short task name lotus' environment overrides use.
pub fn env_task(stage: Stage) -> &'static str {
    match stage {
        Stage::Ap => "AP",
        Stage::Pc1 => "PC1",
        Stage::Pc2 => "PC2",
        Stage::C1 => "C1",
        Stage::C2 => "C2",
        Stage::Fin => "FIN",
        Stage::Ru => "FUS",
        Stage::Update => "RU",
        Stage::Pr1 => "PR1",
        Stage::Pr2 => "PR2",
        Stage::Gsk => "GSK",
        Stage::Fru => "FRU",
        Stage::Unseal => "UNS",
        Stage::Dc => "DC",
        Stage::Dl => "DL",
    }
}

/// The size in lotus' override names: `32G`, `2K`.
pub fn env_size(size: SectorSize) -> String {
    size.to_string().trim_end_matches("iB").to_string()
}

pub(super) const FIELDS: [&str; 7] = [
    "MIN_MEMORY",
    "MAX_MEMORY",
    "GPU_UTILIZATION",
    "MAX_PARALLELISM",
    "MAX_PARALLELISM_GPU",
    "BASE_MIN_MEMORY",
    "MAX_CONCURRENT",
];

/// The worker's config file (TOML): placement choices, with the same
/// override names as the environment under `[resources]`:
///
/// ```toml
/// stages = ["ap", "pc1", "pc2", "c1", "fin", "ru"]
/// sector_sizes = ["32GiB"]
/// cpu_proving = false
/// [resources]
/// PC1_32G_MAX_CONCURRENT = 6
/// PC2_MAX_MEMORY = "16GiB"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub stages: Option<Vec<Stage>>,
    pub sector_sizes: Option<Vec<SectorSize>>,
    pub cpu_proving: Option<bool>,
    #[serde(default)]
    pub resources: BTreeMap<String, toml::Value>,
}

impl ConfigFile {
    /// Reads and checks a config file; an unknown override name is an error
    /// (a typo would otherwise be ignored silently).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        let config: ConfigFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        for name in config.resources.keys() {
            if !is_override_name(name) {
                bail!(
                    "config file {}: [resources] {name:?} is not an override name; expected <TASK>[_<SIZE>]_<FIELD> \
                     with TASK one of AP, PC1, PC2, C1, C2, FIN, FUS, RU, PR1, PR2, GSK, FRU, UNS, DC, DL, SIZE one of 2K, 8M, 512M, 32G, 64G and FIELD one of {}",
                    path.display(),
                    FIELDS.join(", ")
                );
            }
        }
        Ok(config)
    }

    /// The `[resources]` values as text, as the environment would give them.
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.resources
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect()
    }
}

fn is_override_name(name: &str) -> bool {
    Stage::ALL.into_iter().any(|stage| {
        let task = env_task(stage);
        FIELDS.iter().any(|field| {
            name == format!("{task}_{field}")
                || SectorSize::ALL.iter().any(|size| name == format!("{task}_{}_{field}", env_size(*size)))
        })
    })
}

/// Reads one override value: bytes (`64GiB`, `1024`), a count, or a fraction.
fn parse_value(name: &str, text: &str) -> Result<f64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| anyhow::anyhow!("{name}={text:?}: not a number"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => KIB as f64,
        "mib" | "m" => MIB as f64,
        "gib" | "g" => GIB as f64,
        "tib" | "t" => (GIB * 1024) as f64,
        other => bail!("{name}={text:?}: unknown unit {other:?} (use bytes, KiB, MiB, GiB or TiB)"),
    };
    let value = number * scale;
    if !value.is_finite() || value.abs() > (1u64 << 62) as f64 {
        bail!("{name}={text:?}: out of range");
    }
    Ok(value)
}

/// The row for a stage and size with every override applied.
pub fn resources_with_overrides(
    stage: Stage,
    size: SectorSize,
    wanted: &Wanted,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Resources, Vec<String>)> {
    let mut r = default_resources(stage, size);
    let mut applied = Vec::new();
    let task = env_task(stage);
    for field in FIELDS {
        let specific = format!("{task}_{}_{field}", env_size(size));
        let general = format!("{task}_{field}");
        let found = [&specific, &general].into_iter().find_map(|name| {
            env(name)
                .map(|v| (name.clone(), v, "env"))
                .or_else(|| wanted.file_overrides.get(name.as_str()).map(|v| (name.clone(), v.clone(), "config")))
        });
        let Some((name, text, from)) = found else { continue };
        let value = parse_value(&name, &text)?;
        let whole = |v: f64| -> Result<u64> {
            if v < 0.0 {
                bail!("{name}={text:?}: must not be negative");
            }
            Ok(v as u64)
        };
        match field {
            "MIN_MEMORY" => r.min_memory = whole(value)?,
            "MAX_MEMORY" => r.max_memory = whole(value)?,
            "GPU_UTILIZATION" => r.gpu_utilization = value.max(0.0),
            "MAX_PARALLELISM" => r.max_parallelism = value as i64,
            "MAX_PARALLELISM_GPU" => r.max_parallelism_gpu = value as i64,
            "BASE_MIN_MEMORY" => r.base_min_memory = whole(value)?,
            _ => r.max_concurrent = whole(value)?,
        }
        applied.push(format!("{name}={text} ({from})"));
    }
    Ok((r, applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_name_their_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(
            &path,
            "stages = [\"pc1\"]\n[resources]\nPC1_32G_MAX_CONCURRENT = 4\nC2_MAX_MEMORY = \"64GiB\"\n",
        )
        .unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(config.stages, Some(vec![Stage::Pc1]));
        assert_eq!(config.overrides()["PC1_32G_MAX_CONCURRENT"], "4");
        assert_eq!(config.overrides()["C2_MAX_MEMORY"], "64GiB");
        std::fs::write(&path, "[resources]\nPC1_32GB_MAX_CONCURRENT = 4\n").unwrap();
        let err = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"PC1_32GB_MAX_CONCURRENT\" is not an override name"), "{err}");
        std::fs::write(&path, "stagez = [\"pc1\"]\n").unwrap();
        assert!(ConfigFile::load(&path).unwrap_err().to_string().contains("unknown field `stagez`"));
    }
}
