//! PC1 checkpoints: the SDR layer files of a sector's cache directory.
//!
//! The proofs library writes each finished layer as
//! `cache/<sector>/sc-02-data-layer-<n>.dat` (through a temporary file and a
//! rename) and, when PC1 runs again over the same cache directory, skips
//! every layer whose file has the right length ("skipping layer n, already
//! generated"). Length is all it checks, so the worker records a blake3
//! checksum of each layer as it appears and, before a run resumes, keeps only
//! the layers that still match — and nothing after the first one that does
//! not, because layer n+1 is computed from layer n.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::SectorSize;
use serde::{Deserialize, Serialize};

/// One finished layer as the worker recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// 1-based layer number.
    pub layer: u32,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    pub bytes: u64,
    /// The run of the job (1 = first start) in which the layer was computed.
    pub computed_in_run: u32,
    pub recorded_at_ms: u64,
}

/// SDR layers of a sector size: 2 for the test sizes, 11 for 32 and 64 GiB.
pub fn layer_count(size: SectorSize) -> u32 {
    if size.0 >= SectorSize::GIB32.0 {
        11
    } else {
        2
    }
}

/// The file the library writes for `layer`.
pub fn layer_path(cache: &Path, layer: u32) -> PathBuf {
    cache.join(format!("sc-02-data-layer-{layer}.dat"))
}

/// blake3 and length of a file, read in 1 MiB blocks.
pub fn checksum(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// What checking the layers before a run found.
#[derive(Debug, Default)]
pub struct ResumeCheck {
    /// Layers that match their record: the library skips them.
    pub kept: Vec<LayerRecord>,
    /// Layer files removed, with why.
    pub removed: Vec<(u32, String)>,
}

/// Before a PC1 run: keeps each recorded layer whose file still matches its
/// checksum, from layer 1 on, and removes every layer file from the first
/// missing, damaged or unrecorded one on (the library would otherwise reuse
/// a stale layer of the right length).
pub fn check_for_resume(cache: &Path, records: &[LayerRecord], total: u32) -> Result<ResumeCheck> {
    let mut check = ResumeCheck::default();
    let mut intact = true;
    for layer in 1..=total {
        let path = layer_path(cache, layer);
        let exists = path.exists();
        if intact {
            let record = records.iter().find(|r| r.layer == layer);
            match (record, exists) {
                (Some(record), true) => {
                    let (sum, bytes) = checksum(&path)?;
                    if sum == record.blake3 && bytes == record.bytes {
                        check.kept.push(record.clone());
                        continue;
                    }
                    intact = false;
                    check.removed.push((
                        layer,
                        format!(
                            "checksum mismatch ({bytes} bytes, blake3 {sum:.16}…, recorded {:.16}…)",
                            record.blake3
                        ),
                    ));
                }
                (Some(_), false) => {
                    intact = false;
                    continue;
                }
                (None, true) => {
                    intact = false;
                    check.removed.push((layer, "no checksum recorded for it".into()));
                }
                (None, false) => {
                    intact = false;
                    continue;
                }
            }
        } else if exists {
            check.removed.push((layer, "follows a layer that must be recomputed".into()));
        } else {
            continue;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(check)
}

/// Layers present in `cache` that `records` does not hold yet, checksummed:
/// called while PC1 runs, as layer files appear.
pub fn record_new(cache: &Path, records: &[LayerRecord], total: u32, run: u32) -> Result<Vec<LayerRecord>> {
    let mut new = Vec::new();
    for layer in 1..=total {
        if records.iter().any(|r| r.layer == layer) {
            continue;
        }
        let path = layer_path(cache, layer);
        if !path.exists() {
            continue;
        }
        let (blake3, bytes) = checksum(&path)?;
        new.push(LayerRecord { layer, blake3, bytes, computed_in_run: run, recorded_at_ms: now_ms() });
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_layers(cache: &Path, count: u32) -> Vec<LayerRecord> {
        for layer in 1..=count {
            std::fs::write(layer_path(cache, layer), vec![layer as u8; 4096]).unwrap();
        }
        record_new(cache, &[], 3, 1).unwrap()
    }

    #[test]
    fn matching_layers_are_kept_and_a_damaged_one_is_removed_with_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let records = write_layers(dir.path(), 3);
        assert_eq!(records.len(), 3);

        let check = check_for_resume(dir.path(), &records, 3).unwrap();
        assert_eq!(check.kept.len(), 3);
        assert!(check.removed.is_empty());

        // Same length, other bytes: the library would reuse it; the checksum does not.
        std::fs::write(layer_path(dir.path(), 2), vec![9u8; 4096]).unwrap();
        let check = check_for_resume(dir.path(), &records, 3).unwrap();
        assert_eq!(check.kept.iter().map(|r| r.layer).collect::<Vec<_>>(), vec![1]);
        assert_eq!(check.removed.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3]);
        assert!(check.removed[0].1.contains("checksum mismatch"), "{:?}", check.removed);
        assert!(layer_path(dir.path(), 1).exists());
        assert!(!layer_path(dir.path(), 2).exists() && !layer_path(dir.path(), 3).exists());
    }

    #[test]
    fn an_unrecorded_layer_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let records = write_layers(dir.path(), 1);
        std::fs::write(layer_path(dir.path(), 2), vec![2u8; 4096]).unwrap();
        let check = check_for_resume(dir.path(), &records, 3).unwrap();
        assert_eq!(check.kept.len(), 1);
        assert_eq!(check.removed, vec![(2, "no checksum recorded for it".to_string())]);
    }
}
