//! Which stages and sector sizes this machine serves, and how many jobs of
//! each it runs at once (its slots), decided at start from the hardware
//! probe ([`hardware`]) and lotus' default resource table ([`lotus_table`],
//! docs/LOTUS.md §6.4) with the operator's overrides ([`overrides`]); while
//! the worker runs, its jobs share the machine through the [`budget`].
//!
//! A stage and size is served when the operator wants it and one job fits:
//! `MinMemory + BaseMinMemory` within the RAM, `MaxMemory + BaseMinMemory`
//! within RAM and swap, its threads within the cores, and — for a stage that
//! uses a GPU in lotus' table (C2; PC2 of 32/64 GiB) — a GPU, unless CPU
//! proving is allowed. Its slots are how many such jobs fit side by side
//! (lotus' own fit rules), capped by `MAX_CONCURRENT` and, for stages that
//! claim no threads (C1, finalize, release), by the cores.

pub(crate) mod budget;
pub(crate) mod hardware;
pub(crate) mod lotus_table;
pub(crate) mod overrides;

#[cfg(test)]
mod decoder_props;

use std::collections::BTreeMap;

use anyhow::Result;
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::{SectorSize, Stage};
use serde::Serialize;

use self::budget::Need;
use self::lotus_table::{Resources, GIB, KIB, MIB};
use self::overrides::resources_with_overrides;

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
    use super::overrides::{env_size, ConfigFile};
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
