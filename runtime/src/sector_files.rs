//! Sector files over HTTP, as lotus serves them (docs/LOTUS.md §9.5): a
//! file whole or by `Range`, a cache directory as the flat tar lotus'
//! workers send, streamed in recycled chunks (`O_DIRECT` where the
//! filesystem allows it).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::byte_range::{self, Ranged};
use crate::direct_read;

/// A cache directory as the flat tar lotus sends it: its regular files
/// (symbolic links and folders are left out), names without the directory,
/// in name order, each a plain entry with its whole content — never a GNU
/// sparse entry (the tar crate's `Builder` writes one for a file with holes
/// unless told not to; lotus' Go writer never does), so a 32 GiB layer file
/// travels as 32 GiB.
///
/// The files are listed and measured by [`FlatTar::open`]; [`FlatTar::size`]
/// is then the exact length of what [`FlatTar::write_to`] writes (the tar
/// crate's own headers — a name over 100 bytes adds its GNU long-name entry,
/// a size of 8 GiB or more is written in base-256 in the same 512 bytes — and
/// the data padded to 512 bytes, then 1024 zero bytes). A file whose size
/// changed since `open` fails the writing instead of corrupting the tar.
pub struct FlatTar {
    entries: Vec<TarEntry>,
}

struct TarEntry {
    path: PathBuf,
    size: u64,
    /// The header block(s) before the data.
    header: Vec<u8>,
}

/// A tar block; entries are padded to it.
const BLOCK: usize = 512;

impl FlatTar {
    /// Lists `dir`'s regular files and their sizes now.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let mut found: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        found.sort_by_key(|e| e.file_name());
        let mut entries = Vec::new();
        for entry in found {
            if !entry.file_type()?.is_file() {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path)?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            // The tar crate writes the header block (and a long name's entry
            // before it) as its Builder does for this file; the data is ours.
            let mut builder = tar::Builder::new(Vec::new());
            builder.append_data(&mut header, entry.file_name(), io::empty())?;
            let header = std::mem::take(builder.get_mut());
            entries.push(TarEntry { path, size: meta.len(), header });
        }
        Ok(FlatTar { entries })
    }

    /// The tar's length in bytes, exactly.
    pub fn size(&self) -> u64 {
        let entries: u64 = self.entries.iter().map(|e| e.header.len() as u64 + e.size + padding(e.size) as u64).sum();
        entries + 2 * BLOCK as u64
    }

    /// Writes the tar to `out` as it is produced (nothing is held in memory).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_with(out, |out, file, size| match io::copy(&mut Read::take(file, size), out)? {
            copied if copied == size => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a file ended before its size")),
        })
    }

    /// Writes the tar, the files' data through `data(out, file, size)`.
    fn write_with<W: Write>(
        &self,
        out: &mut W,
        mut data: impl FnMut(&mut W, &mut File, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        for entry in &self.entries {
            let mut file = File::open(&entry.path)?;
            let now = file.metadata()?.len();
            if now != entry.size {
                return Err(io::Error::other(format!(
                    "{} changed size while being sent ({} → {now} bytes)",
                    entry.path.display(),
                    entry.size
                )));
            }
            out.write_all(&entry.header)?;
            data(out, &mut file, entry.size)?;
            out.write_all(&[0; BLOCK][..padding(entry.size)])?;
        }
        out.write_all(&[0; 2 * BLOCK])
    }
}

/// Zero bytes after `size` bytes of data up to the next block.
fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The chunks a sector file or a cache tar is sent in over HTTP: read from
/// the file straight into buffers of this size (4 KiB chunks made a download
/// run at 66 MiB/s; docs/BENCHMARKS.md, "Sector files at real size").
pub const CHUNK: usize = 1 << 20;

/// Chunks waiting between the reading thread and the connection; with the
/// one being filled and the one being written, one download holds ~6 MiB.
const QUEUED: usize = 4;

/// The body of an [`http_get`] answer: the chunks a blocking thread reads,
/// as they come. Dropping it (the client went away) stops that thread at its
/// next chunk.
pub struct ChunkStream(mpsc::Receiver<io::Result<Bytes>>);

impl futures_core::Stream for ChunkStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The HTTP answer to a `GET` of the sector file or cache directory at
/// `path`, as lotus-worker gives it (the bridge's `/remote` and the workers'
/// file servers both answer with it; each keeps only its routing and
/// authorization):
///
/// * a file: `application/octet-stream`, `Accept-Ranges: bytes`, and by the
///   request's `Range` ([`byte_range::select`]) 200 with the whole file,
///   206 with `Content-Range` and the span, or 416 with `Content-Range:
///   bytes */TOTAL` and no body;
/// * a directory: 200, `application/x-tar`, its [`FlatTar`] (a `Range` is
///   ignored);
///
/// always with the exact `Content-Length`. A blocking thread opens the path,
/// answers the head, then reads [`CHUNK`]s into a channel of [`QUEUED`]
/// (backpressure: memory stays bounded whatever the size). A read error
/// after the head ends the body with that error (the client sees the
/// download cut short, never a short file that looks whole).
///
/// Err: the path cannot be opened (`NotFound` when nothing is there).
pub async fn http_get(path: PathBuf, request: &http::HeaderMap) -> io::Result<http::Response<ChunkStream>> {
    let range = request.get(http::header::RANGE).map(|v| v.as_bytes().to_vec());
    let (head_tx, head_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(QUEUED);
    tokio::task::spawn_blocking(move || {
        let source = match Source::open(&path, range.as_deref()) {
            Ok(source) => source,
            Err(e) => {
                let _ = head_tx.send(Err(e));
                return;
            }
        };
        if head_tx.send(Ok(source.head())).is_err() {
            return;
        }
        let mut out = ChunkWriter::new(tx);
        match source.send(&mut out).and_then(|()| out.push()) {
            Ok(()) => {}
            Err(_) if out.gone => tracing::debug!(path = %path.display(), "the client went away; sending stopped"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading failed; the download is cut short");
                let _ = out.tx.blocking_send(Err(e));
            }
        }
    });
    let head = head_rx.await.map_err(|_| io::Error::other("the thread reading the file ended"))??;
    Ok(head.map(|()| ChunkStream(rx)))
}

const OCTETS: &str = "application/octet-stream";

/// What an [`http_get`] sends.
enum Source {
    /// `direct`: `file` was opened for reads past the page cache ([`direct_read`]).
    File {
        file: File,
        direct: bool,
        total: u64,
        range: Ranged,
    },
    Tar(FlatTar),
}

impl Source {
    fn open(path: &Path, range: Option<&[u8]>) -> io::Result<Self> {
        if std::fs::metadata(path)?.is_dir() {
            return Ok(Source::Tar(FlatTar::open(path)?));
        }
        let (file, direct) = match direct_read::open(path) {
            Some(file) => (file, true),
            None => (File::open(path)?, false),
        };
        let total = file.metadata()?.len();
        Ok(Source::File { file, direct, total, range: byte_range::select(range, total) })
    }

    /// Status and headers.
    fn head(&self) -> http::Response<()> {
        use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
        let head = http::Response::builder();
        let head = match self {
            Source::Tar(tar) => head.header(CONTENT_TYPE, "application/x-tar").header(CONTENT_LENGTH, tar.size()),
            Source::File { total, range, .. } => match range {
                Ranged::Whole => head.header(CONTENT_TYPE, OCTETS).header(CONTENT_LENGTH, *total),
                Ranged::Part(span) => head
                    .status(http::StatusCode::PARTIAL_CONTENT)
                    .header(CONTENT_TYPE, OCTETS)
                    .header(CONTENT_RANGE, span.content_range(*total))
                    .header(CONTENT_LENGTH, span.len()),
                Ranged::Unsatisfiable => head
                    .status(http::StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(CONTENT_RANGE, byte_range::unsatisfied_range(*total))
                    .header(CONTENT_LENGTH, 0),
            }
            .header(ACCEPT_RANGES, "bytes"),
        };
        head.body(()).expect("header values are ASCII")
    }

    /// Writes the body (what `head` announced) to `out`.
    fn send(self, out: &mut ChunkWriter) -> io::Result<()> {
        match self {
            Source::Tar(tar) => tar.write_with(out, ChunkWriter::read_from),
            Source::File { mut file, direct, total, range } => {
                let (start, count) = match range {
                    Ranged::Whole => (0, total),
                    Ranged::Part(span) => (span.start, span.len()),
                    Ranged::Unsatisfiable => return Ok(()),
                };
                if direct {
                    let sent = direct_read::send(&file, start, count, CHUNK, &out.tx);
                    out.gone = matches!(&sent, Err(e) if e.kind() == io::ErrorKind::BrokenPipe);
                    return sent;
                }
                file.seek(SeekFrom::Start(start))?;
                out.read_from(&mut file, count)
            }
        }
    }
}

/// Collects bytes into [`CHUNK`]s and sends each full one through the
/// channel, waiting while it is full; a send that fails (the body was
/// dropped) is a `BrokenPipe` error and sets `gone`.
///
/// A chunk's buffer comes back (through `spare`) once the connection has
/// written it, and is filled again: fresh memory for every MiB made the
/// kernel fault in and zero 256 pages per chunk, which cost more than the
/// read itself.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    gone: bool,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    returns: std::sync::mpsc::Sender<Vec<u8>>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        let (returns, spare) = std::sync::mpsc::channel();
        ChunkWriter { tx, buf: Vec::with_capacity(CHUNK), gone: false, spare, returns }
    }

    /// Sends what is collected.
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.spare.try_recv() {
            Ok(mut spare) => {
                spare.clear();
                spare
            }
            Err(_) => Vec::with_capacity(CHUNK),
        };
        let chunk = direct_read::Recycled::new(std::mem::replace(&mut self.buf, next), self.returns.clone());
        if self.tx.blocking_send(Ok(Bytes::from_owner(chunk))).is_err() {
            self.gone = true;
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"));
        }
        Ok(())
    }

    /// Reads `count` bytes of `file` straight into the chunks (the standard
    /// library's `read_to_end` fills the spare capacity without zeroing it
    /// first); an end of file before `count` bytes is an error.
    fn read_from(&mut self, file: &mut File, mut count: u64) -> io::Result<()> {
        while count > 0 {
            if self.buf.len() == CHUNK {
                self.push()?;
            }
            let room = ((CHUNK - self.buf.len()) as u64).min(count);
            match Read::take(&mut *file, room).read_to_end(&mut self.buf)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a file ended before its size")),
                read => count -= read as u64,
            }
        }
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            self.push()?;
        }
        let taken = bytes.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// A folder as a cache could hold it, with what a flat tar leaves out.
    fn cache_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("p_aux", &[7; 64]);
        write("t_aux", b"t_aux of some length");
        write("sc-02-data-tree-r-last-0.dat", &(0..5000u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>());
        write("empty", b"");
        write("exactly-one-block", &[1; BLOCK]);
        // Over 100 bytes: the tar crate puts a GNU long-name entry before it.
        write(&"long-".repeat(30), b"a long name");
        std::fs::create_dir(dir.path().join("a-folder")).unwrap();
        std::os::unix::fs::symlink("p_aux", dir.path().join("a-link")).unwrap();
        dir
    }

    /// What `flat_tar` wrote before it streamed: the tar crate's Builder
    /// (plain entries: sparse detection off) over the regular files by name.
    fn tar_crate_flat_tar(dir: &Path) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.sparse(false);
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(Result::unwrap).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().filter(|e| e.file_type().unwrap().is_file()) {
            builder.append_path_with_name(entry.path(), entry.file_name()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn flat_tar_is_the_tar_crates_tar_of_the_regular_files_and_its_size_is_exact() {
        let dir = cache_dir();
        let tar = FlatTar::open(dir.path()).unwrap();
        let mut written = Vec::new();
        tar.write_to(&mut written).unwrap();
        assert_eq!(written, tar_crate_flat_tar(dir.path()), "byte for byte what the tar crate writes");
        assert_eq!(tar.size(), written.len() as u64);
        let mut archive = tar::Archive::new(written.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, std::fs::read(dir.path().join(&name)).unwrap(), "{name}");
            names.push(name);
        }
        let long = "long-".repeat(30);
        let expected = ["empty", "exactly-one-block", &long, "p_aux", "sc-02-data-tree-r-last-0.dat", "t_aux"];
        assert_eq!(names, expected, "regular files only, names without the folder, in name order");

        // A file that changed since it was listed fails the tar, never corrupts it.
        std::fs::write(dir.path().join("p_aux"), [7; 65]).unwrap();
        let failed = tar.write_to(&mut Vec::new()).unwrap_err();
        assert!(failed.to_string().contains("changed size"), "{failed}");
    }

    /// Polls a body to its end: its length, and its first bytes.
    async fn drain(mut body: ChunkStream, keep: usize) -> (u64, Vec<u8>) {
        let (mut length, mut kept) = (0u64, Vec::new());
        while let Some(chunk) =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut body), cx)).await
        {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            length += chunk.len() as u64;
            let room = keep.saturating_sub(kept.len()).min(chunk.len());
            kept.extend_from_slice(&chunk[..room]);
        }
        (length, kept)
    }

    fn with_range(range: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RANGE, range.parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn a_cache_over_8_gib_streams_as_plain_entries_of_its_exact_content_length() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t_aux"), [7; 64]).unwrap();
        // A sparse file over 8 GiB: the size needs base-256, and the tar
        // crate's Builder would make it a GNU sparse entry of a few bytes.
        let layer = File::create(dir.path().join("sc-02-data-layer-1.dat")).unwrap();
        let size = (8 << 30) + 4096 + 3;
        layer.set_len(size).unwrap();
        layer.write_all_at(b"start", 0).unwrap();
        layer.write_all_at(b"end", size - 3).unwrap();
        drop(layer);

        let answer = http_get(dir.path().to_path_buf(), &with_range("bytes=0-0")).await.unwrap();
        assert_eq!(answer.status(), 200, "a Range on a tar is ignored");
        assert_eq!(answer.headers()["content-type"], "application/x-tar");
        let announced: u64 = answer.headers()["content-length"].to_str().unwrap().parse().unwrap();
        let (length, head) = drain(answer.into_body(), 2 * BLOCK).await;
        assert_eq!(length, announced, "Content-Length is what was sent");
        assert_eq!(announced, 3 * BLOCK as u64 + size.next_multiple_of(BLOCK as u64) + 2 * BLOCK as u64);
        let header = tar::Header::from_byte_slice(&head[..BLOCK]);
        assert_eq!(header.path().unwrap(), Path::new("sc-02-data-layer-1.dat"));
        assert_eq!(header.entry_type(), tar::EntryType::Regular, "a plain entry, not a GNU sparse one");
        assert_eq!(header.size().unwrap(), size);
        assert_eq!(&head[BLOCK..BLOCK + 5], b"start");
    }

    #[tokio::test]
    async fn a_file_answers_ranges_with_206_and_416() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-t01000-1");
        let content: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let total = content.len() as u64;
        let get = |range: Option<&str>| {
            let headers = range.map(with_range).unwrap_or_default();
            let path = path.clone();
            async move { http_get(path, &headers).await.unwrap() }
        };

        let whole = get(None).await;
        assert_eq!(whole.status(), 200);
        let head = whole.headers().clone();
        assert_eq!(head["content-length"], total.to_string());
        assert_eq!(head["accept-ranges"], "bytes");
        assert_eq!(head["content-type"], OCTETS);
        assert!(!head.contains_key("content-range"));
        let (length, bytes) = drain(whole.into_body(), usize::MAX).await;
        assert_eq!((length, bytes == content), (total, true));

        for (range, start, end) in [
            ("bytes=0-0", 0, 0),
            ("bytes=-1", total - 1, total - 1),
            ("bytes=1048570-2097160", 1048570, 2097160),
            (&format!("bytes={}-", total - 20), total - 20, total - 1),
        ] {
            let part = get(Some(range)).await;
            assert_eq!(part.status(), 206, "{range}");
            let head = part.headers().clone();
            assert_eq!(head["content-range"], format!("bytes {start}-{end}/{total}"), "{range}");
            assert_eq!(head["content-length"], (end - start + 1).to_string(), "{range}");
            let (length, bytes) = drain(part.into_body(), usize::MAX).await;
            assert_eq!(length, end - start + 1, "{range}");
            assert_eq!(bytes, content[start as usize..=end as usize], "{range}");
        }
        for range in [format!("bytes={total}-"), "bytes=5-2".to_string()] {
            let refused = get(Some(&range)).await;
            assert_eq!(refused.status(), 416, "{range}");
            assert_eq!(refused.headers()["content-range"], format!("bytes */{total}"));
            assert_eq!(refused.headers()["content-length"], "0");
            assert_eq!(drain(refused.into_body(), 0).await.0, 0);
        }
        let missing = http_get(dir.path().join("s-t01000-2"), &http::HeaderMap::new()).await.err().unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_reading_thread_stops_when_the_body_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        File::create(dir.path().join("sc-02-data-layer-1.dat")).unwrap().set_len(32 << 30).unwrap();
        let source = Source::open(dir.path(), None).unwrap();
        let (tx, mut rx) = mpsc::channel(QUEUED);
        let sender = std::thread::spawn(move || {
            let mut out = ChunkWriter::new(tx);
            let sent = source.send(&mut out);
            (sent, out.gone)
        });
        assert!(rx.blocking_recv().unwrap().is_ok(), "a first chunk");
        drop(rx);
        let (sent, gone) = sender.join().unwrap();
        assert_eq!(sent.unwrap_err().kind(), io::ErrorKind::BrokenPipe, "the send failed and ended the tar");
        assert!(gone);
    }
}
