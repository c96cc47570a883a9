//! Which stages and sector sizes this machine serves, and how many jobs of
//! each it runs at once (its slots), decided at start from the hardware
//! probe and lotus' default resource table (PROTOCOL.md §8.2).
//!
//! Operators override the table the way they already do for lotus-worker:
//! environment variables `<TASK>_<SIZE>_<FIELD>` or `<TASK>_<FIELD>` (e.g.
//! `PC1_32G_MAX_CONCURRENT=4`, `C2_MAX_MEMORY=64GiB`), or the same keys under
//! `[resources]` in the worker's config file. The most specific name wins;
//! for one name the environment beats the config file. Tasks:
//! `AP`, `PC1`, `PC2`, `C1`, `C2`, `FIN`, `FUS` (release unsealed); sizes
//! `2K`, `8M`, `512M`, `32G`, `64G`; fields `MIN_MEMORY`, `MAX_MEMORY`,
//! `GPU_UTILIZATION`, `MAX_PARALLELISM`, `MAX_PARALLELISM_GPU`,
//! `BASE_MIN_MEMORY`, `MAX_CONCURRENT`.
//!
//! A stage and size is served when the operator wants it and one job fits:
//! `MinMemory + BaseMinMemory` within the RAM, `MaxMemory + BaseMinMemory`
//! within RAM and swap, its threads within the cores, and — for a stage that
//! uses a GPU in lotus' table (C2; PC2 of 32/64 GiB) — a GPU, unless CPU
//! proving is allowed. Its slots are how many such jobs fit side by side
//! (lotus' own fit rules), capped by `MAX_CONCURRENT` and, for stages that
//! claim no threads (C1, finalize, release), by the cores.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::{SectorSize, Stage};
use serde::{Deserialize, Serialize};

use crate::budget::Need;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One row of lotus' resource table (`storiface.Resources`), in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub min_memory: u64,
    pub max_memory: u64,
    /// GPUs a job occupies (0: none; 1.0: one whole GPU).
    pub gpu_utilization: f64,
    /// Threads a job uses on CPU: 0 none counted, -1 all (92 % of the cores).
    pub max_parallelism: i64,
    /// Threads a job uses when it runs on a GPU.
    pub max_parallelism_gpu: i64,
    /// Memory counted once per job on top of its own (lotus: base).
    pub base_min_memory: u64,
    /// Jobs at once at most; 0: no limit.
    pub max_concurrent: u64,
}

impl Resources {
    const fn row(min: u64, max: u64, gpu: f64, par: i64, par_gpu: i64, base: u64) -> Self {
        Resources {
            min_memory: min,
            max_memory: max,
            gpu_utilization: gpu,
            max_parallelism: par,
            max_parallelism_gpu: par_gpu,
            base_min_memory: base,
            max_concurrent: 0,
        }
    }

    pub fn uses_gpu(&self) -> bool {
        self.gpu_utilization > 0.0
    }
}

/// lotus' default row for a stage and size (`storiface.ResourceTable`).
/// Finalize and release-unsealed have no row in lotus: all zero.
pub fn default_resources(stage: Stage, size: SectorSize) -> Resources {
    let r = Resources::row;
    let small = |bytes: u64, gpu: f64, par: i64| r(bytes, bytes, gpu, par, 0, bytes);
    let i = SectorSize::ALL.iter().position(|s| *s == size).unwrap_or(3);
    match (stage, i) {
        (Stage::Ap, 0) => small(2 * KIB, 0.0, 1),
        (Stage::Ap, 1) => small(8 * MIB, 0.0, 1),
        (Stage::Ap, 2) => small(GIB, 0.0, 1),
        (Stage::Ap, 3) => r(4 * GIB, 4 * GIB, 0.0, 1, 0, GIB),
        (Stage::Ap, _) => r(8 * GIB, 8 * GIB, 0.0, 1, 0, GIB),
        (Stage::Pc1, 0) => small(2 * KIB, 0.0, 1),
        (Stage::Pc1, 1) => small(8 * MIB, 0.0, 1),
        (Stage::Pc1, 2) => r(768 * MIB, GIB, 0.0, 1, 0, MIB),
        (Stage::Pc1, 3) => r(56 * GIB, 64 * GIB, 0.0, 1, 0, 10 * MIB),
        (Stage::Pc1, _) => r(112 * GIB, 128 * GIB, 0.0, 1, 0, 10 * MIB),
        (Stage::Pc2, 0) => small(2 * KIB, 0.0, -1),
        (Stage::Pc2, 1) => small(8 * MIB, 0.0, -1),
        (Stage::Pc2, 2) => r(GIB, 3 * GIB / 2, 0.0, -1, 0, GIB),
        (Stage::Pc2, 3) => r(15 * GIB, 15 * GIB, 1.0, -1, 6, GIB),
        (Stage::Pc2, _) => r(30 * GIB, 30 * GIB, 1.0, -1, 6, GIB),
        (Stage::C1, 0) => small(2 * KIB, 0.0, 0),
        (Stage::C1, 1) => small(8 * MIB, 0.0, 0),
        (Stage::C1, _) => r(GIB, GIB, 0.0, 0, 0, GIB),
        (Stage::C2, 0) => small(2 * KIB, 1.0, 1),
        (Stage::C2, 1) => small(8 * MIB, 1.0, 1),
        (Stage::C2, 2) => r(GIB, 3 * GIB / 2, 1.0, 1, 0, 10 * GIB),
        (Stage::C2, 3) => r(30 * GIB, 150 * GIB, 1.0, -1, 6, 32 * GIB),
        (Stage::C2, _) => r(60 * GIB, 190 * GIB, 1.0, -1, 6, 64 * GIB),
        (Stage::Fin, _) | (Stage::Ru, _) => r(0, 0, 0.0, 0, 0, 0),
    }
}

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
    }
}

/// The size in lotus' override names: `32G`, `2K`.
pub fn env_size(size: SectorSize) -> String {
    size.to_string().trim_end_matches("iB").to_string()
}

const FIELDS: [&str; 7] = [
    "MIN_MEMORY",
    "MAX_MEMORY",
    "GPU_UTILIZATION",
    "MAX_PARALLELISM",
    "MAX_PARALLELISM_GPU",
    "BASE_MIN_MEMORY",
    "MAX_CONCURRENT",
];

/// What the operator wants, before the hardware has its say.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    /// Stages the operator lets this worker take.
    pub stages: Vec<Stage>,
    pub sector_sizes: Vec<SectorSize>,
    /// Let stages that use a GPU in lotus' table run on the CPU.
    pub cpu_proving: bool,
    /// `[resources]` of the config file: override name → value.
    pub file_overrides: BTreeMap<String, String>,
}

/// The decision for one stage and sector size.
#[derive(Clone, Debug, Serialize)]
pub struct StagePlan {
    pub stage: Stage,
    pub sector_size: SectorSize,
    /// Jobs at once; 0: not served.
    pub slots: u32,
    /// Why: the limit that decided the slots, or why it is not served.
    pub why: String,
    /// Whether its jobs run on a GPU.
    pub gpu: bool,
    pub resources: Resources,
    /// The overrides that applied: `NAME=value (env|config)`.
    pub overrides: Vec<String>,
}

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
                     with TASK one of AP, PC1, PC2, C1, C2, FIN, FUS, SIZE one of 2K, 8M, 512M, 32G, 64G and FIELD one of {}",
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

/// Decides every stage and size the operator wants.
pub fn plan(hw: &Hardware, wanted: &Wanted, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<StagePlan>> {
    let mut out = Vec::new();
    for stage in Stage::ALL.into_iter().filter(|s| wanted.stages.contains(s)) {
        for &size in &wanted.sector_sizes {
            let (resources, overrides) = resources_with_overrides(stage, size, wanted, env)?;
            let (slots, why, gpu) = fit(hw, &resources, wanted.cpu_proving);
            out.push(StagePlan { stage, sector_size: size, slots, why, gpu, resources, overrides });
        }
    }
    Ok(out)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= MIB => format!("{} MiB", b / MIB),
        b if b >= KIB => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

/// How many jobs with these resources fit on this machine side by side, why,
/// and whether they run on a GPU.
fn fit(hw: &Hardware, r: &Resources, cpu_proving: bool) -> (u32, String, bool) {
    let gpus = hw.gpus().count() as u64;
    let on_gpu = r.uses_gpu() && gpus > 0;
    if r.uses_gpu() && gpus == 0 && !cpu_proving {
        return (0, "needs a GPU (none found); --cpu-proving runs it on the CPU".into(), false);
    }
    let cores = hw.cores.max(1) as u64;
    let mut limits: Vec<(u64, String)> = Vec::new();
    if r.min_memory.saturating_add(r.base_min_memory) > hw.memory_bytes {
        let need = human(r.min_memory.saturating_add(r.base_min_memory));
        return (0, format!("needs {need} of RAM, this machine has {}", human(hw.memory_bytes)), on_gpu);
    }
    if let Some(n) = (hw.memory_bytes - r.base_min_memory).checked_div(r.min_memory) {
        limits.push((n, format!("RAM: {} each", human(r.min_memory))));
    }
    let virtual_memory = hw.memory_bytes.saturating_add(hw.swap_bytes);
    if r.max_memory.saturating_add(r.base_min_memory) > virtual_memory {
        let need = human(r.max_memory.saturating_add(r.base_min_memory));
        return (0, format!("needs up to {need} of RAM and swap, this machine has {}", human(virtual_memory)), on_gpu);
    }
    if let Some(n) = (virtual_memory - r.base_min_memory).checked_div(r.max_memory) {
        limits.push((n, format!("RAM+swap: up to {} each", human(r.max_memory))));
    }
    let threads = threads(r, on_gpu, cores);
    if threads > cores {
        return (0, format!("needs {threads} threads, this machine has {cores} cores"), on_gpu);
    }
    match cores.checked_div(threads) {
        Some(n) => limits.push((n, format!("{cores} cores, {threads} thread(s) each"))),
        None => limits.push((cores, format!("one per core ({cores})"))),
    }
    if on_gpu {
        let n = (gpus as f64 / r.gpu_utilization).floor() as u64;
        limits.push((n, format!("{gpus} GPU(s), {} each", r.gpu_utilization)));
    }
    if r.max_concurrent > 0 {
        limits.push((r.max_concurrent, format!("MAX_CONCURRENT {}", r.max_concurrent)));
    }
    let (slots, why) = limits.into_iter().min_by_key(|(n, _)| *n).expect("the cores always limit");
    let device = if on_gpu {
        " on GPU"
    } else if r.uses_gpu() {
        " on CPU (--cpu-proving)"
    } else {
        ""
    };
    (slots.min(u64::from(u32::MAX)) as u32, format!("{why}{device}"), on_gpu)
}

/// The threads a job uses: on the GPU or the CPU; -1 is 92 % of the cores.
fn threads(r: &Resources, on_gpu: bool, cores: u64) -> u64 {
    let threads = if on_gpu { r.max_parallelism_gpu } else { r.max_parallelism };
    if threads < 0 {
        (cores * 92 / 100).max(1)
    } else {
        threads as u64
    }
}

impl StagePlan {
    /// What one job takes from a machine with `cores` cores while it runs.
    pub fn need(&self, cores: usize) -> Need {
        let r = &self.resources;
        Need {
            memory: r.min_memory,
            base_memory: r.base_min_memory,
            threads: threads(r, self.gpu, cores.max(1) as u64),
            gpus: if self.gpu { r.gpu_utilization } else { 0.0 },
        }
    }
}

/// The plan as a table for people: one line per stage and size.
pub fn describe(plan: &[StagePlan]) -> Vec<String> {
    let mut lines = vec![format!("{:<5} {:<7} {:>5}  why", "stage", "size", "slots")];
    for p in plan {
        let slots = if p.slots == 0 { "-".to_string() } else { p.slots.to_string() };
        lines.push(format!("{:<5} {:<7} {:>5}  {}", p.stage.as_str(), p.sector_size.to_string(), slots, p.why));
        for o in &p.overrides {
            lines.push(format!("{:<5} {:<7} {:>5}  override {o}", "", "", ""));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealfarm_schemas::hardware::OpenClDevice;

    fn machine(cores: usize, memory: u64, gpus: usize) -> Hardware {
        let gpu = OpenClDevice {
            platform: "NVIDIA CUDA".into(),
            name: "NVIDIA H100".into(),
            vendor: "NVIDIA".into(),
            kind: "gpu".into(),
            memory_bytes: 80 * GIB,
        };
        Hardware { cores, memory_bytes: memory, opencl_devices: vec![gpu; gpus], ..Hardware::default() }
    }

    fn wanted(stages: &[Stage], size: SectorSize) -> Wanted {
        Wanted { stages: stages.to_vec(), sector_sizes: vec![size], ..Wanted::default() }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn slots(plan: &[StagePlan], stage: Stage) -> u32 {
        plan.iter().find(|p| p.stage == stage).unwrap().slots
    }

    #[test]
    fn a_pc1_box_fits_pc1s_by_memory_and_refuses_c2_without_a_gpu() {
        let hw = machine(64, 512 * GIB, 0);
        let plan = plan(&hw, &wanted(&[Stage::Pc1, Stage::C2], SectorSize::GIB32), &no_env).unwrap();
        // RAM: (512 GiB - 10 MiB) / 56 GiB = 9; RAM+swap: (512 GiB - 10 MiB) / 64 GiB = 7.
        assert_eq!(slots(&plan, Stage::Pc1), 7);
        assert!(plan[0].why.contains("RAM+swap: up to 64 GiB each"), "{}", plan[0].why);
        assert_eq!(slots(&plan, Stage::C2), 0);
        assert!(plan[1].why.contains("needs a GPU"), "{}", plan[1].why);
    }

    #[test]
    fn a_gpu_box_runs_one_c2_per_gpu_and_cpu_proving_is_explicit() {
        let plan = plan(&machine(32, 512 * GIB, 2), &wanted(&[Stage::C2], SectorSize::GIB32), &no_env).unwrap();
        assert_eq!(plan[0].slots, 2);
        assert!(plan[0].gpu);
        let mut cpu = wanted(&[Stage::C2], SectorSize::KIB2);
        cpu.cpu_proving = true;
        let plan = super::plan(&machine(2, 24 * GIB, 0), &cpu, &no_env).unwrap();
        assert_eq!(plan[0].slots, 2);
        assert!(!plan[0].gpu && plan[0].why.contains("--cpu-proving"), "{}", plan[0].why);
    }

    #[test]
    fn a_small_machine_does_not_take_32gib_pc1() {
        let plan = plan(&machine(2, 24 * GIB, 0), &wanted(&[Stage::Pc1], SectorSize::GIB32), &no_env).unwrap();
        assert_eq!(plan[0].slots, 0);
        assert!(plan[0].why.contains("needs 56.0 GiB of RAM"), "{}", plan[0].why);
    }

    #[test]
    fn environment_beats_config_file_beats_table_and_specific_beats_general() {
        let mut w = wanted(&[Stage::Pc1], SectorSize::GIB32);
        w.file_overrides.insert("PC1_MAX_CONCURRENT".into(), "3".into());
        let hw = machine(64, 512 * GIB, 0);
        let plan1 = plan(&hw, &w, &no_env).unwrap();
        assert_eq!(plan1[0].slots, 3);
        assert_eq!(plan1[0].overrides, vec!["PC1_MAX_CONCURRENT=3 (config)".to_string()]);
        let env = |name: &str| match name {
            "PC1_32G_MAX_CONCURRENT" => Some("2".to_string()),
            "PC1_MIN_MEMORY" => Some("100GiB".to_string()),
            _ => None,
        };
        let plan2 = plan(&hw, &w, &env).unwrap();
        assert_eq!(plan2[0].slots, 2);
        assert_eq!(plan2[0].resources.min_memory, 100 * GIB);
        let env = |name: &str| (name == "PC1_MIN_MEMORY").then(|| "200GiB".to_string());
        assert_eq!(plan(&hw, &wanted(&[Stage::Pc1], SectorSize::GIB32), &env).unwrap()[0].slots, 2);
        let bad = |name: &str| (name == "PC1_MAX_CONCURRENT").then(|| "lots".to_string());
        let err = plan(&hw, &wanted(&[Stage::Pc1], SectorSize::GIB32), &bad).unwrap_err();
        assert!(err.to_string().contains("PC1_MAX_CONCURRENT=\"lots\": not a number"), "{err}");
    }

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

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sealfarm/worker.toml");
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(config.sector_sizes, Some(vec![SectorSize::GIB32]));
        let w = Wanted {
            stages: config.stages.clone().unwrap(),
            sector_sizes: config.sector_sizes.clone().unwrap(),
            cpu_proving: config.cpu_proving.unwrap(),
            file_overrides: config.overrides(),
        };
        let plan = plan(&machine(64, 512 * GIB, 0), &w, &no_env).unwrap();
        assert_eq!(slots(&plan, Stage::Pc1), 6, "{plan:#?}");
    }

    #[test]
    fn pc2_of_test_sizes_takes_the_whole_cpu() {
        let plan = plan(&machine(16, 128 * GIB, 0), &wanted(&[Stage::Pc2, Stage::C1], SectorSize::KIB2), &no_env);
        let plan = plan.unwrap();
        assert_eq!(slots(&plan, Stage::Pc2), 1, "-1 threads = 92 % of the cores");
        assert_eq!(slots(&plan, Stage::C1), 16, "no threads claimed: one per core");
        assert_eq!(env_size(SectorSize::KIB2), "2K");
        assert_eq!(env_size(SectorSize::MIB512), "512M");
    }
}
