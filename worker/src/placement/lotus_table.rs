//! lotus' default resource table (`storiface.ResourceTable`): what one job
//! of each stage and sector size takes (memory, threads, GPU), before the
//! operator's overrides ([`super::overrides`]).

use sealfarm_schemas::{SectorSize, Stage};
use serde::{Deserialize, Serialize};

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

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
/// lotus copies some rows: ProveReplicaUpdate1 is Commit1's, ProveReplicaUpdate2
/// Commit2's, RegenSectorKey ReplicaUpdate's, Unseal PreCommit1's, and DataCid
/// takes AddPiece's 32 GiB row at every size. Finalize, release-unsealed,
/// FinalizeReplicaUpdate and DownloadSector have no row: all zero.
pub fn default_resources(stage: Stage, size: SectorSize) -> Resources {
    let r = Resources::row;
    let small = |bytes: u64, gpu: f64, par: i64| r(bytes, bytes, gpu, par, 0, bytes);
    let i = SectorSize::ALL.iter().position(|s| *s == size).unwrap_or(3);
    let stage = match stage {
        Stage::Pr1 => Stage::C1,
        Stage::Pr2 => Stage::C2,
        Stage::Gsk => Stage::Update,
        Stage::Unseal => Stage::Pc1,
        other => other,
    };
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
        (Stage::Update, 0) => small(2 * KIB, 1.0, 1),
        (Stage::Update, 1) => small(8 * MIB, 1.0, 1),
        (Stage::Update, 2) => r(GIB, GIB, 1.0, 1, 0, GIB),
        (Stage::Update, 3) => r(4 * GIB, 4 * GIB, 1.0, 1, 6, GIB),
        (Stage::Update, _) => r(8 * GIB, 8 * GIB, 1.0, 1, 6, GIB),
        (Stage::Dc, _) => r(4 * GIB, 4 * GIB, 0.0, 1, 0, GIB),
        (Stage::Fin | Stage::Ru | Stage::Fru | Stage::Dl, _) => r(0, 0, 0.0, 0, 0, 0),
        (Stage::Pr1 | Stage::Pr2 | Stage::Gsk | Stage::Unseal, _) => unreachable!("copied rows, mapped above"),
    }
}
