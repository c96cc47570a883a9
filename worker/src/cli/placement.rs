//! The flags (and config file) that say which stages and sector sizes a
//! worker may take: shared by `run` and `resources`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use sealfarm_schemas::{SectorSize, Stage};

use crate::placement::overrides::ConfigFile;
use crate::placement::{self, hardware, StagePlan, Wanted};

/// What the worker takes: stages and sector sizes the operator allows,
/// narrowed at start to what this machine fits (see `sealfarm-worker resources`).
#[derive(Args, Debug, Clone)]
pub(super) struct PlacementArgs {
    /// Config file (TOML): `stages`, `sector_sizes`, `cpu_proving` and a
    /// `[resources]` table of lotus-style overrides (PC1_32G_MAX_CONCURRENT = 4).
    /// Flags and environment variables beat it.
    #[arg(long, env = "SEALFARM_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Stages this worker may take, comma-separated: ap, pc1, pc2, c1, c2,
    /// fin, ru. Default: all (or the config file's `stages`).
    #[arg(long, env = "SEALFARM_STAGES", value_delimiter = ',')]
    stages: Option<Vec<Stage>>,
    /// Sector sizes to take, comma-separated: 2KiB, 8MiB, 512MiB, 32GiB,
    /// 64GiB. Default: 32GiB,64GiB (or the config file's `sector_sizes`).
    #[arg(long, env = "SEALFARM_SECTOR_SIZES", value_delimiter = ',')]
    sector_sizes: Option<Vec<SectorSize>>,
    /// Take AddPiece (lotus-worker --addpiece); --ap=false drops it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ap: Option<bool>,
    /// Take PreCommit1 (lotus-worker --precommit1).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pc1: Option<bool>,
    /// Take PreCommit2 (lotus-worker --precommit2).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pc2: Option<bool>,
    /// Take Commit1.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    c1: Option<bool>,
    /// Take Commit2, the SNARK (lotus-worker --commit).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    c2: Option<bool>,
    /// Take FinalizeSector.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    fin: Option<bool>,
    /// Take ReleaseUnsealed.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ru: Option<bool>,
    /// Take the snap-deal stages that run where the files are: ReplicaUpdate,
    /// ProveReplicaUpdate1, FinalizeReplicaUpdate (lotus-worker --replica-update).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    replica_update: Option<bool>,
    /// Take ProveReplicaUpdate2, the snap-deal SNARK (lotus-worker --prove-replica-update2).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    prove_replica_update2: Option<bool>,
    /// Take GenerateSectorKeyFromData (lotus-worker --regen-sector-key).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    regen_sector_key: Option<bool>,
    /// Take UnsealPiece (lotus-worker --unseal).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    unseal: Option<bool>,
    /// Take DataCid.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    data_cid: Option<bool>,
    /// Take DownloadSectorData (lotus-worker --sector-download).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    sector_download: Option<bool>,
    /// Run stages that use a GPU in lotus' table (C2; PC2 of 32/64 GiB) on
    /// the CPU when this machine has no GPU. Off by default: a CPU C2 of a
    /// 32 GiB sector takes hours.
    #[arg(long, env = "SEALFARM_CPU_PROVING")]
    cpu_proving: bool,
}

impl PlacementArgs {
    /// Flags over config file over defaults.
    fn wanted(&self) -> Result<Wanted> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let mut stages = self.stages.clone().or(file.stages.clone()).unwrap_or_else(|| Stage::ALL.to_vec());
        let switches = [
            (Stage::Ap, self.ap),
            (Stage::Pc1, self.pc1),
            (Stage::Pc2, self.pc2),
            (Stage::C1, self.c1),
            (Stage::C2, self.c2),
            (Stage::Fin, self.fin),
            (Stage::Ru, self.ru),
            (Stage::Update, self.replica_update),
            (Stage::Pr1, self.replica_update),
            (Stage::Fru, self.replica_update),
            (Stage::Pr2, self.prove_replica_update2),
            (Stage::Gsk, self.regen_sector_key),
            (Stage::Unseal, self.unseal),
            (Stage::Dc, self.data_cid),
            (Stage::Dl, self.sector_download),
        ];
        for (stage, switch) in switches {
            match switch {
                Some(false) => stages.retain(|s| *s != stage),
                Some(true) if !stages.contains(&stage) => stages.push(stage),
                _ => {}
            }
        }
        let sector_sizes = self
            .sector_sizes
            .clone()
            .or(file.sector_sizes.clone())
            .unwrap_or_else(|| vec![SectorSize::GIB32, SectorSize::GIB64]);
        if stages.is_empty() || sector_sizes.is_empty() {
            bail!("no stage or no sector size left to take: check --stages, --sector-sizes and the stage switches");
        }
        Ok(Wanted {
            stages,
            sector_sizes,
            cpu_proving: self.cpu_proving || file.cpu_proving.unwrap_or(false),
            file_overrides: file.overrides(),
        })
    }

    /// The decisions for this machine.
    pub(super) fn plan(&self, hw: &hardware::Hardware) -> Result<Vec<StagePlan>> {
        placement::plan(hw, &self.wanted()?, &|name| std::env::var(name).ok())
    }
}
