//! Warm-up: a worker whose GPU stages would start cold proves a small sector
//! of its own before it takes the first real task of those stages.
//!
//! On a GPU the first proof after the kernels' cache is empty is slow: the
//! library compiles its OpenCL kernels at first use and the driver caches
//! them on disk (NVIDIA: `~/.nv/ComputeCache`, or `CUDA_CACHE_PATH`).
//! Measured on an H100 with an empty cache: a 2 KiB C2 took 120 s against
//! 5 s warm, a 2 KiB PC2 with the GPU tree builder 39 s against 0.6 s; a
//! process started later on the same cache was warm at once. A worker that
//! took a C2 in that state would hold it minutes longer than a warm one. So,
//! before it consumes its GPU stage queues, the worker has its executor (the
//! long-lived process that runs every proof) seal a 2 KiB sector of its own:
//!
//! * for C2: AP → PC1 → PC2 → C1 → C2 (the SNARK prover's kernels do not
//!   depend on the sector size; needs the 2 KiB parameters), then it reads
//!   the parameter files of the C2 sizes it takes into the page cache, where
//!   they fit in half the memory;
//! * for PC2 alone (GPU tree builder on): AP → PC1 → PC2.
//!
//! Meanwhile it takes its other stages, and its heartbeat lists the stages
//! still warming (`sealfarm-bridge workers` shows it `warming`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use sealfarm_schemas::hardware::Hardware;
use sealfarm_schemas::messages::StageSlots;
use sealfarm_schemas::{SectorSize, Stage};
use serde::{Deserialize, Serialize};

use super::layout::SealingPath;
use crate::bench::{self, StageTiming};
use crate::params;

/// `--warm-up`: when a worker warms up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// When its C2 (or PC2, with the GPU tree builders on) would run on a GPU.
    Auto,
    /// Whenever it takes C2 or PC2, GPU or not.
    Always,
    Never,
}

/// What the executor seals before the worker takes its GPU stages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Warm C2: the sector goes from AddPiece to C2.
    pub c2: bool,
    /// Warm PC2: the sector goes from AddPiece to PC2 at least.
    pub pc2: bool,
    /// PR2 (the snap-deal SNARK) waits too: it runs on the GPU kernels the
    /// C2 warm-up builds (the same Groth16 multiexp and FFT).
    #[serde(default)]
    pub pr2: bool,
    /// Sizes whose seal parameters are read into the page cache after.
    pub preload: Vec<SectorSize>,
    /// A scratch sealing directory, emptied before and removed after.
    pub scratch: PathBuf,
}

impl Plan {
    /// The stages that wait for the warm-up.
    pub fn stages(&self) -> Vec<Stage> {
        [(Stage::Pc2, self.pc2), (Stage::C2, self.c2), (Stage::Pr2, self.pr2)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(s, _)| s)
            .collect()
    }

    /// One line for the start-up table.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("a 2 KiB sector AP→{}", if self.c2 { "C2" } else { "PC2" })];
        if !self.preload.is_empty() {
            let sizes: Vec<String> = self.preload.iter().map(|s| s.to_string()).collect();
            parts.push(format!("reads the {} parameters into the page cache", sizes.join(", ")));
        }
        let stages: Vec<&str> = self.stages().iter().map(|s| s.as_str()).collect();
        format!("{} before taking {}", parts.join(", then "), stages.join(", "))
    }
}

/// The warm-up this worker gets, or why none.
pub struct Decision {
    pub plan: Option<Plan>,
    /// Why (none), or what was left out (a warning).
    pub note: Option<String>,
}

/// A library setting that is on ("1", "true", "yes", "on").
fn is_on(value: Option<String>) -> bool {
    value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Decides the warm-up of a worker that takes `capacity` on `hardware`;
/// `env` reads the library's settings (BELLMAN_NO_GPU,
/// FIL_PROOFS_USE_GPU_TREE_BUILDER, FIL_PROOFS_USE_GPU_COLUMN_BUILDER).
/// `--warm-up always` without the 2 KiB parameters is an error.
pub fn decide(
    mode: Mode,
    capacity: &[StageSlots],
    hardware: &Hardware,
    scratch: PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Decision> {
    let takes = |stage| capacity.iter().any(|c| c.stage == stage && c.slots > 0);
    if mode == Mode::Never {
        return Ok(Decision { plan: None, note: Some("off (--warm-up never)".into()) });
    }
    // A SNARK stage: C2, or PR2 (whose kernels the C2 warm-up builds).
    let snark = takes(Stage::C2) || takes(Stage::Pr2);
    if !snark && !takes(Stage::Pc2) {
        return Ok(Decision { plan: None, note: Some("none: this worker takes neither C2, PR2 nor PC2".into()) });
    }
    let gpu = bench::GPU_BUILD && hardware.gpus().next().is_some();
    // bellperson turns its GPU code off when BELLMAN_NO_GPU is set at all.
    let c2_on_gpu = gpu && env("BELLMAN_NO_GPU").is_none();
    let pc2_on_gpu =
        gpu && (is_on(env("FIL_PROOFS_USE_GPU_TREE_BUILDER")) || is_on(env("FIL_PROOFS_USE_GPU_COLUMN_BUILDER")));
    let always = mode == Mode::Always;
    let mut c2 = snark && (always || c2_on_gpu);
    let pc2 = takes(Stage::Pc2) && (always || pc2_on_gpu);
    let mut note = None;
    if c2 {
        if let Err(err) = params::require_seal_params(&[SectorSize::KIB2]) {
            if always {
                return Err(err.context(
                    "--warm-up always: the C2 warm-up proves a 2 KiB sector; generate its parameters with \
                     `sealfarm-worker params generate --sector-size 2KiB` (about 2 minutes on 16 cores)",
                ));
            }
            c2 = false;
            note = Some(
                "C2 starts cold: its warm-up proves a 2 KiB sector and the 2 KiB parameters are missing \
                 (`sealfarm-worker params generate --sector-size 2KiB`, about 2 minutes on 16 cores)"
                    .to_string(),
            );
        }
    }
    if !c2 && !pc2 {
        let why = note.unwrap_or_else(|| {
            if gpu {
                "none: C2 runs without the GPU (BELLMAN_NO_GPU is set) and PC2 builds its trees on the CPU \
                 (FIL_PROOFS_USE_GPU_TREE_BUILDER is off)"
                    .into()
            } else if bench::GPU_BUILD {
                "none: no GPU found (C2 and PC2 run on the CPU)".into()
            } else {
                "none: built without GPU code (C2 and PC2 run on the CPU)".into()
            }
        });
        return Ok(Decision { plan: None, note: Some(why) });
    }
    let mut preload = Vec::new();
    if c2 {
        for size in capacity.iter().filter(|c| c.stage == Stage::C2 && c.slots > 0).map(|c| c.sector_size) {
            let fits = params::seal_param_paths(size)
                .ok()
                .and_then(|(path, _)| std::fs::metadata(path).ok())
                .is_some_and(|m| m.len() <= hardware.memory_bytes / 2);
            // The 2 KiB ones are read by the warm-up's own proof.
            if size != SectorSize::KIB2 && fits && !preload.contains(&size) {
                preload.push(size);
            }
        }
    }
    let pr2 = c2 && takes(Stage::Pr2);
    Ok(Decision { plan: Some(Plan { c2, pc2, pr2, preload, scratch }), note })
}

/// One parameter file read into the page cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preloaded {
    pub sector_size: SectorSize,
    pub bytes: u64,
    pub millis: f64,
}

/// What the warm-up did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub stages: Vec<StageTiming>,
    pub preloaded: Vec<Preloaded>,
    pub millis: f64,
}

/// Runs the warm-up (in the executor, the process that runs the real
/// proofs afterwards). The scratch directory is removed whatever happens.
pub fn run(plan: &Plan) -> Result<Report> {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&plan.scratch);
    let outcome = seal_and_preload(plan);
    let _ = std::fs::remove_dir_all(&plan.scratch);
    let (mut stages, preloaded) = outcome?;
    for t in &mut stages {
        t.warm_up = true;
    }
    Ok(Report { stages, preloaded, millis: started.elapsed().as_secs_f64() * 1e3 })
}

fn seal_and_preload(plan: &Plan) -> Result<(Vec<StageTiming>, Vec<Preloaded>)> {
    let sealing = SealingPath::open(&plan.scratch)
        .with_context(|| format!("cannot use warm-up scratch directory {}", plan.scratch.display()))?;
    let through: &[Stage] = if plan.c2 {
        &[Stage::Ap, Stage::Pc1, Stage::Pc2, Stage::C1, Stage::C2]
    } else {
        &[Stage::Ap, Stage::Pc1, Stage::Pc2]
    };
    let stages = bench::run(&sealing, SectorSize::KIB2, through, 1).context("the warm-up sector")?;
    let mut preloaded = Vec::new();
    for &size in &plan.preload {
        let (path, _) = params::seal_param_paths(size)?;
        let started = Instant::now();
        let bytes = std::fs::File::open(&path)
            .and_then(|mut file| std::io::copy(&mut file, &mut std::io::sink()))
            .with_context(|| format!("reading {}", path.display()))?;
        preloaded.push(Preloaded { sector_size: size, bytes, millis: started.elapsed().as_secs_f64() * 1e3 });
    }
    Ok((stages, preloaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(stages: &[Stage]) -> Vec<StageSlots> {
        stages.iter().map(|&stage| StageSlots { stage, sector_size: SectorSize::GIB32, slots: 1 }).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// On a machine without a GPU (this one, and CI), `auto` warms nothing
    /// and says why; `never` is off; a worker without C2 or PC2 has nothing
    /// to warm; `always` warms PC2 on the CPU too.
    #[test]
    fn auto_warms_only_what_would_run_on_a_gpu() {
        let hw = Hardware::default();
        let scratch = PathBuf::from("/nonexistent/warm-up");
        let decide = |mode, stages: &[Stage]| decide(mode, &capacity(stages), &hw, scratch.clone(), &no_env).unwrap();

        let auto = decide(Mode::Auto, &[Stage::Pc2, Stage::C2]);
        assert!(auto.plan.is_none());
        let note = auto.note.unwrap();
        assert!(note.starts_with("none:") && note.contains("CPU"), "{note}");

        let never = decide(Mode::Never, &[Stage::C2]);
        assert!(never.plan.is_none() && never.note.unwrap().contains("--warm-up never"));

        let sealing = decide(Mode::Always, &[Stage::Ap, Stage::Pc1]);
        assert!(sealing.plan.is_none() && sealing.note.unwrap().contains("neither C2, PR2 nor PC2"));

        let pc2 = decide(Mode::Always, &[Stage::Pc2]).plan.unwrap();
        assert_eq!(pc2.stages(), vec![Stage::Pc2]);
        assert!(!pc2.c2 && pc2.preload.is_empty());
        assert_eq!(pc2.describe(), "a 2 KiB sector AP→PC2 before taking pc2");

        // PR2 proves on the kernels the C2 warm-up builds: it waits for it.
        // (`always` needs the 2 KiB parameters; without them it is an error.)
        if params::require_seal_params(&[SectorSize::KIB2]).is_ok() {
            let snap = decide(Mode::Always, &[Stage::Pr2]).plan.unwrap();
            assert!(snap.c2 && snap.pr2, "{snap:?}");
            assert!(snap.stages().contains(&Stage::Pr2));
        }
    }

    #[test]
    fn library_switches_read_as_the_library_does() {
        assert!(is_on(Some("1".into())) && is_on(Some("TRUE".into())) && is_on(Some(" yes".into())));
        assert!(!is_on(Some("0".into())) && !is_on(Some("false".into())) && !is_on(None));
    }
}
