//! Where a sector's files live: the lotus layout of a sealing path.
//!
//! ```text
//! <sealing-path>/unsealed/s-t0<miner>-<number>   fr32-padded piece data (AP)
//! <sealing-path>/sealed/s-t0<miner>-<number>     the replica (PC1 creates it empty, PC2 writes it)
//! <sealing-path>/cache/s-t0<miner>-<number>/     SDR layers, trees, p_aux/t_aux
//! <sealing-path>/update/s-t0<miner>-<number>     the snapped replica (ReplicaUpdate)
//! <sealing-path>/update-cache/s-t0<miner>-<number>/  its trees, p_aux/t_aux
//! <sealing-path>/sealfarm/pieces/<id>             AddPiece's piece data (sealfarm's own)
//! ```

use std::io;
use std::path::{Path, PathBuf};

use sealfarm_schemas::SectorId;

/// A sealing directory laid out as lotus lays out its sealing paths.
#[derive(Clone, Debug)]
pub struct SealingPath {
    root: PathBuf,
}

impl SealingPath {
    /// Opens `root`, creating `unsealed/`, `sealed/`, `cache/`, `update/`
    /// and `update-cache/` if missing.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for sub in ["unsealed", "sealed", "cache", "update", "update-cache"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(SealingPath { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn unsealed(&self, sector: SectorId) -> PathBuf {
        self.root.join("unsealed").join(sector.file_name())
    }

    pub fn sealed(&self, sector: SectorId) -> PathBuf {
        self.root.join("sealed").join(sector.file_name())
    }

    pub fn cache(&self, sector: SectorId) -> PathBuf {
        self.root.join("cache").join(sector.file_name())
    }

    pub fn update(&self, sector: SectorId) -> PathBuf {
        self.root.join("update").join(sector.file_name())
    }

    pub fn update_cache(&self, sector: SectorId) -> PathBuf {
        self.root.join("update-cache").join(sector.file_name())
    }
}

/// Where piece data `id` of bridge `bridge` (the task's) is read from under
/// a sealing path: each bridge keeps its pieces in a folder of its own, so
/// bridges of several miners on one shared storage never clear each other's.
/// A task that names no bridge (a bridge from before) has it in `pieces/`.
pub fn piece_path(sealing_root: &Path, bridge: Option<&str>, id: uuid::Uuid) -> PathBuf {
    let folder = sealing_root.join("sealfarm").join("pieces");
    match bridge {
        Some(bridge) => folder.join(bridge).join(id.to_string()),
        None => folder.join(id.to_string()),
    }
}
