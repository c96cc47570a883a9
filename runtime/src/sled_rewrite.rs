//! Giving a sled store's disk back: a rewrite into a fresh directory.
//!
//! sled 0.34 appends every change to its log and, with the access pattern
//! of the bridge's call store (a call written a few times, then removed by
//! pruning days later), hardly ever reclaims the space removed records held:
//! measured over 10,000 simulated sectors, a store pruned down to 11,000
//! calls kept growing to 227 MiB, as much as one that kept all 70,000. A
//! store whose live records are a fraction of its size on disk is therefore
//! copied, tree by tree, into `<path>.new`, and the copy takes its place:
//!
//! 1. `<path>.new` is written and flushed while `<path>` stays in use
//!    (the caller keeps writers out meanwhile);
//! 2. the caller closes `<path>` ([`swap`]);
//! 3. `<path>` is renamed `<path>.old`, `<path>.new` renamed `<path>`, and
//!    `<path>.old` removed.
//!
//! A crash at any point leaves either the old store or the complete copy
//! under `<path>`, or neither with a complete `<path>.new`: [`recover`],
//! called before opening, finishes or undoes what was under way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Live bytes (keys and values of every tree) and size on disk of a store.
pub fn usage(db: &sled::Db) -> Result<(u64, u64)> {
    let mut live = 0u64;
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        for entry in tree.iter() {
            let (key, value) = entry?;
            live += (key.len() + value.len()) as u64;
        }
    }
    Ok((live, db.size_on_disk()?))
}

/// Whether a store of `live` bytes taking `on_disk` bytes is worth
/// rewriting: more than 16 MiB on disk and over four times its live bytes
/// (a fresh copy takes about twice them, see docs/BENCHMARKS.md).
pub fn worth_rewriting(live: u64, on_disk: u64) -> bool {
    on_disk > 16 << 20 && on_disk > live.saturating_mul(4)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Step 1: copies every tree of `db` into a fresh store at `<path>.new`,
/// flushed and closed. Nothing may write to `db` meanwhile. A copy that
/// fails (a full disk) is removed.
pub fn copy(db: &sled::Db, path: &Path) -> Result<()> {
    let new_path = sibling(path, ".new");
    if new_path.exists() {
        std::fs::remove_dir_all(&new_path).with_context(|| format!("removing {}", new_path.display()))?;
    }
    let copied = copy_into(db, &new_path);
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(&new_path);
    }
    copied
}

fn copy_into(db: &sled::Db, new_path: &Path) -> Result<()> {
    // A small cache: the copy is written once and closed.
    let copy = sled::Config::new()
        .path(new_path)
        .cache_capacity(4 << 20)
        .open()
        .with_context(|| format!("creating {}", new_path.display()))?;
    for name in db.tree_names() {
        let from = db.open_tree(&name)?;
        let to = copy.open_tree(&name)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for entry in from.iter() {
            let (key, value) = entry?;
            pending += key.len() + value.len();
            batch.insert(key, value);
            if pending > 4 << 20 {
                to.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        to.apply_batch(batch)?;
    }
    copy.flush().with_context(|| format!("flushing {}", new_path.display()))?;
    Ok(())
}

/// Step 3, once the caller closed every handle of the store at `path`: the
/// copy takes its place.
pub fn swap(path: &Path) -> Result<()> {
    let (new_path, old_path) = (sibling(path, ".new"), sibling(path, ".old"));
    if old_path.exists() {
        std::fs::remove_dir_all(&old_path).with_context(|| format!("removing {}", old_path.display()))?;
    }
    std::fs::rename(path, &old_path).with_context(|| format!("renaming {}", path.display()))?;
    std::fs::rename(&new_path, path).with_context(|| format!("renaming {}", new_path.display()))?;
    sync_dir(path);
    std::fs::remove_dir_all(&old_path).with_context(|| format!("removing {}", old_path.display()))?;
    Ok(())
}

/// Before opening the store at `path`: a copy whose swap was interrupted
/// takes the store's place; an unfinished copy or an old store left behind
/// is removed.
pub fn recover(path: &Path) -> Result<()> {
    let (new_path, old_path) = (sibling(path, ".new"), sibling(path, ".old"));
    if !path.exists() && new_path.exists() {
        // Interrupted between the two renames: the copy is complete.
        std::fs::rename(&new_path, path).with_context(|| format!("renaming {}", new_path.display()))?;
        sync_dir(path);
    }
    for leftover in [new_path, old_path] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).with_context(|| format!("removing {}", leftover.display()))?;
        }
    }
    Ok(())
}

/// Opens the store at `path` with `open`, first finishing an interrupted
/// rewrite, and rewrites it at once when it is worth it (for a store that
/// is rewritten only at start, as a worker's job store is).
pub fn open_compacted(path: &Path, open: impl Fn(&Path) -> Result<sled::Db>) -> Result<sled::Db> {
    recover(path)?;
    let db = open(path)?;
    let (live, on_disk) = usage(&db)?;
    if !worth_rewriting(live, on_disk) {
        return Ok(db);
    }
    copy(&db, path)?;
    drop(db);
    swap(path)?;
    let db = open(path)?;
    trim_heap();
    tracing::info!(
        store = %path.display(),
        before_mib = on_disk >> 20,
        after_mib = db.size_on_disk().unwrap_or(0) >> 20,
        "store rewritten to give disk space back"
    );
    Ok(db)
}

/// Hands the heap memory a rewrite freed back to the system (glibc keeps
/// freed memory for reuse, and a rewrite frees tens of MiB at once: without
/// this the bridge's RSS stayed at its peak after each one).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(db: &sled::Db, records: u32) {
        let calls = db.open_tree("calls").unwrap();
        for n in 0..records {
            calls.insert(n.to_be_bytes(), vec![b'x'; 3000]).unwrap();
        }
        db.open_tree("other").unwrap().insert(b"kept", b"value").unwrap();
        db.flush().unwrap();
    }

    /// A store whose records were mostly removed shrinks to a fraction when
    /// rewritten, and keeps every record it had.
    #[test]
    fn a_rewritten_store_is_smaller_and_holds_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.sled");
        let db = sled::open(&path).unwrap();
        fill(&db, 20_000);
        let calls = db.open_tree("calls").unwrap();
        for n in 0..19_000u32 {
            calls.remove(n.to_be_bytes()).unwrap();
        }
        db.flush().unwrap();
        let (live, before) = usage(&db).unwrap();
        assert!(worth_rewriting(live, before), "live {live}, on disk {before}");
        copy(&db, &path).unwrap();
        drop((calls, db));
        swap(&path).unwrap();
        let db = sled::open(&path).unwrap();
        let (live_after, after) = usage(&db).unwrap();
        eprintln!("live {live} bytes: {before} bytes on disk before the rewrite, {after} after");
        assert_eq!(live_after, live);
        assert!(after * 4 < before, "{before} bytes before, {after} after");
        assert!(!worth_rewriting(live_after, after), "live {live_after}, on disk {after}");
        let calls = db.open_tree("calls").unwrap();
        assert_eq!(calls.len(), 1000);
        assert_eq!(calls.get(19_999u32.to_be_bytes()).unwrap().unwrap().len(), 3000);
        assert_eq!(db.open_tree("other").unwrap().get(b"kept").unwrap().unwrap(), b"value"[..]);
    }

    /// A crash between the renames: the complete copy becomes the store.
    /// A crash while copying: the unfinished copy is dropped.
    #[test]
    fn recover_finishes_or_undoes_an_interrupted_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sled");
        {
            let db = sled::open(&path).unwrap();
            fill(&db, 10);
            copy(&db, &path).unwrap();
        }
        std::fs::rename(&path, sibling(&path, ".old")).unwrap();
        recover(&path).unwrap();
        assert!(!sibling(&path, ".new").exists() && !sibling(&path, ".old").exists());
        {
            let db = sled::open(&path).unwrap();
            assert_eq!(db.open_tree("calls").unwrap().len(), 10);
            copy(&db, &path).unwrap();
        }
        // The copy was under way (not swapped): the store stays as it was.
        recover(&path).unwrap();
        assert!(!sibling(&path, ".new").exists());
        assert_eq!(sled::open(&path).unwrap().open_tree("calls").unwrap().len(), 10);
    }
}
