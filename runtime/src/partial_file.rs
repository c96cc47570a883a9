//! Writing a file so that it is whole or absent under its name: bytes go to
//! a partial file, which is fsynced and only then renamed into place. An
//! error, or dropping the writer before [`PartialFile::commit`], removes the
//! partial file; a crash leaves it under its partial name, for the owner's
//! sweep at start. Used for blobs, pushed and downloaded pieces, and the C1
//! outputs a worker keeps.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt as _;

/// A file being written under a partial name.
pub struct PartialFile {
    file: tokio::fs::File,
    path: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Creates (or truncates) the partial file at `path`.
    pub async fn create(path: PathBuf) -> std::io::Result<PartialFile> {
        let file = tokio::fs::File::create(&path).await?;
        Ok(PartialFile { file, path, committed: false })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await
    }

    /// fsyncs the bytes and renames the file to `target`.
    pub async fn commit(mut self, target: &Path) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        tokio::fs::rename(&self.path, target).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `partial`, fsyncs them and renames the file to
/// `target`; on an error the partial file is removed.
pub fn write_whole(partial: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let written = std::fs::File::create(partial)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(partial, target));
    if written.is_err() {
        let _ = std::fs::remove_file(partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_is_whole_under_its_name_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, target) = (dir.path().join("x.partial"), dir.path().join("x"));
        let mut file = PartialFile::create(partial.clone()).await.unwrap();
        file.write_all(b"half").await.unwrap();
        assert!(!target.exists(), "nothing under the name before the commit");
        drop(file);
        assert!(!partial.exists(), "a writer dropped before its commit leaves nothing");
        let mut file = PartialFile::create(partial.clone()).await.unwrap();
        file.write_all(b"whole").await.unwrap();
        file.commit(&target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert!(!partial.exists());
        write_whole(&partial, &dir.path().join("y"), b"sync").unwrap();
        assert_eq!(std::fs::read(dir.path().join("y")).unwrap(), b"sync");
        let missing = dir.path().join("no-such-dir/z");
        assert!(write_whole(&dir.path().join("z.partial"), &missing, b"z").is_err());
        assert!(!dir.path().join("z.partial").exists(), "an error leaves no partial file");
    }
}
