//! The sealing storage the bridge declares to the miner (shared-storage
//! mode: every worker mounts the same path).
//!
//! Each path carries lotus' `sectorstore.json` (created on first use with a
//! fresh id, as `lotus-worker` does) and is attached to the miner's sector
//! index with the bridge's `/remote` URL; its free space is reported as the
//! path's health every 10 s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sealfarm_schemas::SectorId;
use serde_json::{json, Value};

pub use sealfarm_schemas::sector_store::{parse_sector_name, StorageMeta, FILE_TYPES};

/// A storage path and its meta.
#[derive(Clone, Debug)]
pub struct StoragePath {
    pub path: PathBuf,
    pub meta: StorageMeta,
}

impl StoragePath {
    /// Opens a path, creating its folders and `sectorstore.json` if needed.
    pub fn open(path: &Path) -> Result<Self> {
        for (_, folder) in FILE_TYPES {
            std::fs::create_dir_all(path.join(folder))
                .with_context(|| format!("cannot create {}", path.join(folder).display()))?;
        }
        let meta = sealfarm_schemas::sector_store::open_meta(path)?;
        Ok(StoragePath { path: path.to_path_buf(), meta })
    }

    /// `storiface.StorageInfo` for `StorageAttach`.
    pub fn storage_info(&self, remote_url: &str) -> Value {
        json!({
            "ID": self.meta.id, "URLs": [remote_url], "Weight": self.meta.weight, "MaxStorage": self.meta.max_storage,
            "CanSeal": self.meta.can_seal, "CanStore": self.meta.can_store, "Groups": null, "AllowTo": null,
            "AllowTypes": null, "DenyTypes": null, "AllowMiners": null, "DenyMiners": null
        })
    }

    /// `fsutil.FsStat` of the path's file system.
    pub fn fs_stat(&self) -> Value {
        let (capacity, available) = statvfs(&self.path).unwrap_or((0, 0));
        json!({"Capacity": capacity, "Available": available, "FSAvailable": available, "Reserved": 0, "Max": 0, "Used": 0})
    }

    /// `storiface.StoragePath` for the worker API's `Paths`.
    pub fn worker_path(&self) -> Value {
        json!({"ID": self.meta.id, "Weight": self.meta.weight, "LocalPath": self.path.display().to_string(),
               "CanSeal": self.meta.can_seal, "CanStore": self.meta.can_store})
    }

    /// Sector files present now: (sector, file type).
    pub fn sector_files(&self) -> Vec<(SectorId, u64)> {
        let mut out = Vec::new();
        for (file_type, folder) in FILE_TYPES {
            let Ok(entries) = std::fs::read_dir(self.path.join(folder)) else { continue };
            for entry in entries.flatten() {
                if let Some(sector) = parse_sector_name(&entry.file_name().to_string_lossy()) {
                    out.push((sector, file_type));
                }
            }
        }
        out
    }
}

fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid C string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectorstore_json_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoragePath::open(dir.path()).unwrap();
        let again = StoragePath::open(dir.path()).unwrap();
        assert_eq!(first.meta.id, again.meta.id);
        assert!(first.meta.can_seal && !first.meta.can_store);
        std::fs::write(dir.path().join("sealed/s-t01000-7"), b"").unwrap();
        assert_eq!(first.sector_files(), vec![(SectorId { miner: 1000, number: 7 }, 2)]);
    }
}
