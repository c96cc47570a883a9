//! lotus' on-disk and on-the-wire forms of sector storage, shared by the
//! bridge (which declares storage to the miner and serves `/remote`) and the
//! workers (which hold the files): `sectorstore.json`, sector file names and
//! types (docs/LOTUS.md §9). Serving the files over HTTP is the runtime's
//! (`sealfarm_runtime::sector_files`).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lotus::SectorId;

/// `storiface.LocalStorageMeta`, the content of `sectorstore.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StorageMeta {
    #[serde(rename = "ID")]
    pub id: String,
    pub weight: u64,
    pub can_seal: bool,
    pub can_store: bool,
    #[serde(default)]
    pub max_storage: u64,
}

/// lotus' sector file types (bit mask) and their folder names.
pub const FILE_TYPES: [(u64, &str); 5] =
    [(1, "unsealed"), (2, "sealed"), (4, "cache"), (8, "update"), (16, "update-cache")];

/// Reads `<path>/sectorstore.json`, creating it (a sealing path with a fresh
/// id, as `lotus-worker` does) when missing. Safe when several processes
/// open one shared path at once: the first file written wins.
pub fn open_meta(path: &Path) -> Result<StorageMeta> {
    let meta_path = path.join("sectorstore.json");
    if !meta_path.exists() {
        let meta = StorageMeta {
            id: uuid::Uuid::new_v4().to_string(),
            weight: 10,
            can_seal: true,
            can_store: false,
            max_storage: 0,
        };
        let tmp = path.join(format!(".sectorstore.json.{}", meta.id));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        // A hard link never replaces an existing file: whoever links first wins.
        let _ = std::fs::hard_link(&tmp, &meta_path);
        let _ = std::fs::remove_file(&tmp);
    }
    let bytes = std::fs::read(&meta_path).with_context(|| format!("cannot read {}", meta_path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a lotus sectorstore.json", meta_path.display()))
}

/// `s-t0<miner>-<number>` → the sector.
pub fn parse_sector_name(name: &str) -> Option<SectorId> {
    let rest = name.strip_prefix("s-t0")?;
    let (miner, number) = rest.split_once('-')?;
    Some(SectorId { miner: miner.parse().ok()?, number: number.parse().ok()? })
}

/// The bit of a file type's folder name (`sealed` → 2); None for other names.
pub fn file_type_bit(folder: &str) -> Option<u64> {
    FILE_TYPES.iter().find(|(_, f)| *f == folder).map(|(bit, _)| *bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectorstore_json_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_meta(dir.path()).unwrap();
        let again = open_meta(dir.path()).unwrap();
        assert_eq!(first, again);
        assert!(first.can_seal && !first.can_store);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
        assert_eq!(parse_sector_name("s-t01000-7"), Some(SectorId { miner: 1000, number: 7 }));
        assert_eq!(parse_sector_name("s-t01000-x"), None);
        assert_eq!(file_type_bit("cache"), Some(4));
        assert_eq!(file_type_bit("update-cache"), Some(16));
        assert_eq!(file_type_bit("piece"), None);
    }
}
