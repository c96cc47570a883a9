//! Sending a sector file without the page cache (`O_DIRECT`).
//!
//! A 32 GiB sealed or unsealed file sent through `/remote` is read once and
//! never again by this process. Read through the page cache, every MiB is
//! first placed in the cache (evicting what the machine was using it for),
//! then copied into the chunk: on this project's VM a download ran at 0.45
//! of `cat`'s rate. Read with `O_DIRECT`, the file's blocks land in the chunk
//! itself, and the cache is left alone (docs/BENCHMARKS.md, "Sector files at
//! real size").
//!
//! `O_DIRECT` wants the buffer, the file offset and the length aligned to
//! the device's block: chunks are allocated at [`ALIGN`], reads start at the
//! aligned offset at or before the wanted one (the bytes before it are
//! skipped in the chunk) and are whole chunks (the last read of a file is
//! short, at its end). A filesystem without `O_DIRECT` (tmpfs, some FUSE
//! mounts) refuses at open or at the first read: [`open`] tries one read
//! and answers None, and the caller reads through the cache as before.

use std::alloc::{alloc, dealloc, Layout};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Alignment of buffers, offsets and lengths: 4 KiB, what every block
/// device and filesystem sealfarm runs on accepts.
pub const ALIGN: usize = 4096;

/// The file at `path` opened for direct reads, or None where the
/// filesystem does not do them.
pub fn open(path: &Path) -> Option<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).ok()?;
    let mut probe = AlignedBuf::new(ALIGN);
    file.read_at(probe.whole(), 0).ok()?;
    Some(file)
}

/// A buffer of `capacity` bytes at [`ALIGN`]; `start..end` is what it holds
/// for the reader.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    start: usize,
    end: usize,
}

// SAFETY: the buffer owns its allocation, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads it.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, ALIGN).expect("a chunk size fits a layout")
    }

    /// A zeroed-on-first-touch buffer of `capacity` bytes (a multiple of [`ALIGN`]).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0 && capacity.is_multiple_of(ALIGN));
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(Self::layout(capacity)) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(capacity)));
        AlignedBuf { ptr, capacity, start: 0, end: 0 }
    }

    /// All of it, to read into. Its bytes may be uninitialised before a
    /// read fills them: only `read_at` writes here, and only what it wrote
    /// (`start..end`) is ever read.
    fn whole(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `capacity` bytes; u8 has no invalid values.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: start..end lies within the allocation and was written by a read.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(self.start), self.end - self.start) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

/// A sent chunk, handed back to its reader for the next read once the
/// connection wrote it (fresh memory for every chunk costs page faults);
/// the buffer is freed instead when the reader is gone. Also the chunks of
/// [`crate::sector_files`]' page-cache reads (`B` = `Vec<u8>`).
pub(crate) struct Recycled<B> {
    buf: Option<B>,
    to: std::sync::mpsc::Sender<B>,
}

impl<B> Recycled<B> {
    pub(crate) fn new(buf: B, to: std::sync::mpsc::Sender<B>) -> Self {
        Recycled { buf: Some(buf), to }
    }
}

impl<B: AsRef<[u8]>> AsRef<[u8]> for Recycled<B> {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], B::as_ref)
    }
}

impl<B> Drop for Recycled<B> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let _ = self.to.send(buf);
        }
    }
}

/// Reads `buf` full from `offset` unless the file ends first; how much was read.
fn read_full(file: &File, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize> {
    let whole = buf.whole();
    let mut filled = 0;
    while filled < whole.len() {
        match file.read_at(&mut whole[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Sends `count` bytes of `file` (opened by [`open`]) from `start` through
/// `tx` in chunks of `chunk` bytes (a multiple of [`ALIGN`]), waiting while
/// the channel is full. A closed channel (the client went away) is a
/// `BrokenPipe` error; a file that ends before `start + count` an
/// `UnexpectedEof` one.
pub fn send(file: &File, start: u64, count: u64, chunk: usize, tx: &mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let (returns, spare) = std::sync::mpsc::channel();
    let end = start + count;
    let mut offset = start - start % ALIGN as u64;
    let mut skip = (start - offset) as usize;
    while offset < end {
        let mut buf = spare.try_recv().unwrap_or_else(|_| AlignedBuf::new(chunk));
        let read = read_full(file, &mut buf, offset)?;
        if (read as u64) <= skip as u64 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a file ended before its size"));
        }
        buf.start = skip;
        buf.end = read.min((end - offset) as usize);
        offset += read as u64;
        skip = 0;
        let chunk = Recycled::new(buf, returns.clone());
        if tx.blocking_send(Ok(Bytes::from_owner(chunk))).is_err() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"));
        }
        if offset < end && !read.is_multiple_of(ALIGN) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a file ended before its size"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every span of a file, aligned or not, arrives byte for byte, also
    /// across chunk borders and at the file's unaligned end.
    #[test]
    fn any_span_arrives_exactly() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("sealed");
        let content: Vec<u8> = (0..3 * 8192 + 1234).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let Some(file) = open(&path) else {
            eprintln!("no O_DIRECT on /var/tmp here: nothing to check");
            return;
        };
        let total = content.len() as u64;
        for (start, count) in [(0, total), (1, total - 1), (4095, 4098), (8192, 8192), (total - 1, 1), (100, 0)] {
            let (tx, mut rx) = mpsc::channel(64);
            send(&file, start, count, 2 * ALIGN, &tx).unwrap();
            drop(tx);
            let mut got = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                got.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(got, &content[start as usize..(start + count) as usize], "{start}+{count}");
        }
        let (tx, _rx) = mpsc::channel(64);
        let past = send(&file, 0, total + 1, 2 * ALIGN, &tx).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }
}
