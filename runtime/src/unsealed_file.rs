//! Unsealed files in lotus' partial-file form (docs/LOTUS.md §9.7): which
//! padded byte ranges of a sector's unsealed copy hold data.
//!
//! ```text
//! [sector-size bytes of fr32-padded data][RLE+ of the allocated ranges][u32 LE: length of the RLE+]
//! ```
//!
//! * A file of exactly the sector size is fully allocated (what AddPiece
//!   leaves once the sector is full; no trailer is needed).
//! * A file shorter than the sector size holds `[0, len)`: sealfarm's
//!   AddPiece writes the file piece by piece (lotus never makes one).
//! * A longer file carries the trailer. sealfarm writes it whenever it frees
//!   a range (`ReleaseUnsealed` with ranges to keep) or marks one allocated
//!   (`UnsealPiece`), exactly as lotus does, so that the miner reading the
//!   file (its `/allocated/` check, a copy it fetches) sees the truth: a
//!   freed range is a hole in the file *and* absent from the trailer.
//!
//! The RLE+ bitfield has one bit per padded byte (Filecoin spec, "RLE+
//! Bitset Encoding"): a 2-bit version `00`, the first run's bit, then runs
//! as `1` (length 1), `01`+4 bits (2–15) or `00`+varint (16 and more), bits
//! numbered LSB first. Only the runs are kept here, never the bits: a 32 GiB
//! sector's bitfield has 2^35 bits and its trailer a few bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Allocated padded byte ranges `[start, end)`, sorted, merged, non-empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    ranges: Vec<(u64, u64)>,
}

impl Allocation {
    /// The whole sector.
    pub fn full(sector_size: u64) -> Self {
        Allocation::from_ranges([(0, sector_size)])
    }

    /// From ranges in any order, overlapping or not.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut ranges: Vec<(u64, u64)> = ranges.into_iter().filter(|(s, e)| e > s).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Allocation { ranges: merged }
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Every byte of `[start, end)` is allocated (an empty range is).
    pub fn covers(&self, start: u64, end: u64) -> bool {
        end <= start || self.ranges.iter().any(|(s, e)| *s <= start && end <= *e)
    }

    /// Adds `[start, end)`.
    pub fn mark(&mut self, start: u64, end: u64) {
        let mut ranges = std::mem::take(&mut self.ranges);
        ranges.push((start, end));
        *self = Allocation::from_ranges(ranges);
    }

    /// Removes `[start, end)`.
    pub fn free(&mut self, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e <= start || end <= s {
                kept.push((s, e));
                continue;
            }
            if s < start {
                kept.push((s, start));
            }
            if end < e {
                kept.push((end, e));
            }
        }
        self.ranges = kept;
    }

    /// The RLE+ encoding of this allocation.
    pub fn to_rle(&self) -> Vec<u8> {
        let mut bits = BitWriter::default();
        if self.ranges.is_empty() {
            return Vec::new();
        }
        bits.put(0, 2); // version 00
        let first_set = self.ranges[0].0 == 0;
        bits.put(u64::from(first_set), 1);
        let mut cursor = 0;
        for &(start, end) in &self.ranges {
            if start > cursor {
                put_run(&mut bits, start - cursor);
            }
            put_run(&mut bits, end - start);
            cursor = end;
        }
        bits.finish()
    }

    /// Decodes an RLE+ bitfield.
    pub fn from_rle(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Allocation::default());
        }
        let mut bits = BitReader { bytes, at: 0 };
        let version = bits.take(2);
        if version != 0 {
            return Err(format!("RLE+ version {version}, only 0 exists"));
        }
        let mut set = bits.take(1) == 1;
        let mut cursor = 0u64;
        let mut ranges = Vec::new();
        // Bits past the end read as zeros (the encoder drops trailing zero
        // bytes), and a run of length 0 ends the bitfield.
        loop {
            let len = if bits.take(1) == 1 {
                1
            } else if bits.take(1) == 1 {
                bits.take(4)
            } else {
                let mut value = 0u64;
                let mut shift = 0;
                loop {
                    let byte = bits.take(8);
                    if shift > 63 {
                        return Err("RLE+ varint too long".into());
                    }
                    value |= (byte & 0x7f) << shift;
                    shift += 7;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
                value
            };
            if len == 0 {
                break;
            }
            if bits.past_end() {
                return Err("RLE+ runs cut off".into());
            }
            let end = cursor.checked_add(len).ok_or("RLE+ runs overflow")?;
            if set {
                ranges.push((cursor, end));
            }
            cursor = end;
            set = !set;
        }
        Ok(Allocation::from_ranges(ranges))
    }
}

fn put_run(bits: &mut BitWriter, len: u64) {
    match len {
        1 => bits.put(1, 1),
        2..=15 => {
            bits.put(0b10, 2); // "01" written first bit first
            bits.put(len, 4);
        }
        _ => {
            bits.put(0, 2);
            let mut value = len;
            loop {
                let byte = value & 0x7f;
                value >>= 7;
                if value == 0 {
                    bits.put(byte, 8);
                    break;
                }
                bits.put(byte | 0x80, 8);
            }
        }
    }
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    bits: u32,
}

impl BitWriter {
    /// Appends the `count` low bits of `value`, lowest first.
    fn put(&mut self, value: u64, count: u32) {
        for i in 0..count {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if (value >> i) & 1 == 1 {
                *self.bytes.last_mut().expect("pushed") |= 1 << (self.bits % 8);
            }
            self.bits += 1;
        }
    }

    /// The bytes, without trailing zero bytes (the minimal encoding, the
    /// only one lotus' bitfield decoder accepts).
    fn finish(mut self) -> Vec<u8> {
        while self.bytes.last() == Some(&0) {
            self.bytes.pop();
        }
        self.bytes
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl BitReader<'_> {
    /// The next `count` bits, lowest first; zeros past the end.
    fn take(&mut self, count: u32) -> u64 {
        let mut value = 0;
        for i in 0..count {
            let byte = self.bytes.get(self.at / 8).copied().unwrap_or(0);
            value |= u64::from((byte >> (self.at % 8)) & 1) << i;
            self.at += 1;
        }
        value
    }

    /// Read past the last byte by more than a varint's worth: a run there
    /// came from zeros that are not in the encoding.
    fn past_end(&self) -> bool {
        self.at > self.bytes.len() * 8 + 8
    }
}

/// The largest trailer read (a bitfield of a fragmented 64 GiB sector is
/// still far smaller).
const MAX_TRAILER: u64 = 16 << 20;

/// What an unsealed file holds; None when there is no file.
pub fn read_allocation(path: &Path, sector_size: u64) -> io::Result<Option<Allocation>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= sector_size {
        return Ok(Some(Allocation::from_ranges([(0, len)])));
    }
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
    if len < sector_size + 4 {
        return Err(bad(format!("{len} bytes: longer than the sector ({sector_size}) but no room for a trailer")));
    }
    let mut word = [0u8; 4];
    file.seek(SeekFrom::Start(len - 4))?;
    file.read_exact(&mut word)?;
    let rle_len = u64::from(u32::from_le_bytes(word));
    if sector_size + rle_len + 4 != len || rle_len > MAX_TRAILER {
        return Err(bad(format!(
            "{len} bytes with a trailer of {rle_len} bytes: not a partial file of a {sector_size}-byte sector"
        )));
    }
    let mut rle = vec![0u8; rle_len as usize];
    file.seek(SeekFrom::Start(sector_size))?;
    file.read_exact(&mut rle)?;
    Allocation::from_rle(&rle).map(Some).map_err(bad)
}

/// Writes `allocation` as the file's trailer (the file becomes
/// `sector_size + trailer` bytes; data past the sector is dropped), fsynced.
pub fn write_allocation(file: &mut File, sector_size: u64, allocation: &Allocation) -> io::Result<()> {
    let rle = allocation.to_rle();
    file.set_len(sector_size)?;
    file.seek(SeekFrom::Start(sector_size))?;
    file.write_all(&rle)?;
    file.write_all(&(rle.len() as u32).to_le_bytes())?;
    file.sync_all()
}

/// Frees the padded ranges of an unsealed file: punches holes (the disk
/// space comes back) and writes the trailer without them. A missing file
/// has nothing to free.
pub fn free(path: &Path, sector_size: u64, ranges: &[(u64, u64)]) -> io::Result<()> {
    let Some(mut allocation) = read_allocation(path, sector_size)? else { return Ok(()) };
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    for &(start, end) in ranges {
        let (start, end) = (start.min(sector_size), end.min(sector_size));
        if end > start {
            punch_hole(&file, start, end - start)?;
            allocation.free(start, end);
        }
    }
    write_allocation(&mut file, sector_size, &allocation)
}

/// Records `[start, end)` (padded) as allocated, after data was written there.
pub fn mark_allocated(path: &Path, sector_size: u64, start: u64, end: u64) -> io::Result<()> {
    let mut allocation = read_allocation(path, sector_size)?.unwrap_or_default();
    allocation.mark(start, end.min(sector_size));
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    write_allocation(&mut file, sector_size, &allocation)
}

/// An UnsealPiece range must be whole fr32 chunks (127 unpadded bytes, as
/// piece offsets and sizes are) inside the sector; its padded `[start, end)`.
pub fn unseal_range(offset: u64, size: u64, sector_size: u64) -> Result<(u64, u64), String> {
    if size == 0 || !offset.is_multiple_of(127) || !size.is_multiple_of(127) {
        return Err(format!("range {offset}+{size} (unpadded) is not whole 127-byte chunks, as piece ranges are"));
    }
    match padded_range(offset, size) {
        Some((start, end)) if end <= sector_size => Ok((start, end)),
        _ => Err(format!("range {offset}+{size} (unpadded) is not inside a {sector_size}-byte sector")),
    }
}

/// The answer to lotus' `…/allocated/<offset>/<size>` for the unsealed
/// file at `path` of a sector sealed with proof `spt` (both as text from
/// the URL): 200 when every byte of the unpadded range is allocated, 416
/// when not, 500 with the reason for a missing file or bad input, as
/// lotus answers. Blocks (reads the file's trailer).
pub fn allocated_answer(path: &Path, spt: &str, offset: &str, size: &str) -> (u16, String) {
    let proof = spt.parse::<i64>().ok().map(sealfarm_schemas::RegisteredSealProof);
    let Some(sector_size) = proof.and_then(|p| p.info()).map(|i| i.sector_size.0) else {
        return (500, format!("{spt:?} is not a seal proof type"));
    };
    let (Ok(offset), Ok(size)) = (offset.parse::<u64>(), size.parse::<u64>()) else {
        return (500, format!("offset {offset:?} and size {size:?} must be numbers (unpadded bytes)"));
    };
    let Some((start, end)) = padded_range(offset, size) else {
        return (500, format!("offset {offset} + size {size} overflows"));
    };
    match read_allocation(path, sector_size) {
        Ok(Some(allocation)) if end <= sector_size && allocation.covers(start, end) => (200, String::new()),
        Ok(Some(_)) => (416, format!("bytes {offset}+{size} (unpadded) are not all in the unsealed file")),
        Ok(None) => (500, format!("no unsealed file {}", path.display())),
        Err(e) => (500, e.to_string()),
    }
}

/// Deallocates `len` bytes at `offset`, keeping the file's size.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on an open file descriptor with plain integer arguments.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unpadded → padded size or offset (fr32: every 127 bytes take 128), as
/// lotus' `Padded()`.
pub fn padded(unpadded: u64) -> u64 {
    unpadded + unpadded / 127
}

/// The padded `[start, end)` of an unpadded range, as lotus computes it
/// (`offset.Padded()`, plus `size.Padded()`); None when it overflows.
pub fn padded_range(offset: u64, size: u64) -> Option<(u64, u64)> {
    offset.checked_add(size)?;
    // Checked too: an offset within 1/128 of u64::MAX pads past it.
    let padded = |unpadded: u64| unpadded.checked_add(unpadded / 127);
    let start = padded(offset)?;
    Some((start, start.checked_add(padded(size)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_round_trips_and_is_minimal() {
        for ranges in [
            vec![(0, 1)],
            vec![(0, 2048)],
            vec![(3, 4)],
            vec![(0, 1024), (1536, 2048)],
            vec![(5, 20), (21, 22), (40, 41), (1 << 20, 1 << 35)],
        ] {
            let allocation = Allocation::from_ranges(ranges.clone());
            let rle = allocation.to_rle();
            assert_eq!(Allocation::from_rle(&rle).unwrap().ranges(), ranges.as_slice(), "{rle:02x?}");
        }
        // Bits {0}: version 00, first bit 1, one one ("1"); LSB first: 0,0,1,1.
        assert_eq!(Allocation::from_ranges([(0, 1)]).to_rle(), vec![0b0000_1100]);
        // Bits {1,2}: 00, first bit 0, one zero ("1"), two ones ("01", then 2 in 4 bits LSB first).
        assert_eq!(Allocation::from_ranges([(1, 3)]).to_rle(), vec![0b1010_1000]);
        assert!(Allocation::default().to_rle().is_empty());
        assert_eq!(Allocation::from_rle(&[]).unwrap(), Allocation::default());
        assert!(Allocation::from_rle(&[0b11]).unwrap_err().contains("version"));
        // A varint whose last byte is zero: that byte is dropped from the
        // encoding and read back as zeros.
        let split = Allocation::from_ranges([(0, 1024), (1536, 2048)]);
        assert_eq!(Allocation::from_rle(&split.to_rle()).unwrap(), split);
    }

    #[test]
    fn freeing_and_marking_keep_the_ranges_true() {
        let mut a = Allocation::full(2048);
        a.free(1024, 2048);
        assert!(a.covers(0, 1024) && !a.covers(1000, 1100));
        a.mark(1024, 1536);
        assert_eq!(a.ranges(), &[(0, 1536)]);
        a.free(100, 200);
        assert_eq!(a.ranges(), &[(0, 100), (200, 1536)]);
    }

    #[test]
    fn files_report_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-t01000-1");
        assert_eq!(read_allocation(&path, 2048).unwrap(), None);
        std::fs::write(&path, vec![7u8; 1024]).unwrap();
        assert_eq!(read_allocation(&path, 2048).unwrap().unwrap().ranges(), &[(0, 1024)]);
        std::fs::write(&path, vec![7u8; 2048]).unwrap();
        assert!(read_allocation(&path, 2048).unwrap().unwrap().covers(0, 2048));
        free(&path, 2048, &[(1024, 2048)]).unwrap();
        let allocation = read_allocation(&path, 2048).unwrap().unwrap();
        assert_eq!(allocation.ranges(), &[(0, 1024)]);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[1024..2048].iter().all(|b| *b == 0), "the freed range reads as zeros");
        assert_eq!(&bytes[..1024], &[7u8; 1024][..]);
        mark_allocated(&path, 2048, 1024, 2048).unwrap();
        assert!(read_allocation(&path, 2048).unwrap().unwrap().covers(0, 2048));
        std::fs::write(&path, vec![7u8; 2049]).unwrap();
        let err = read_allocation(&path, 2048).unwrap_err().to_string();
        assert!(err.contains("no room for a trailer"), "{err}");
    }

    /// A 32 GiB sector (a sparse file): half freed, the trailer says so,
    /// the disk space of the freed half is given back, the rest stays.
    #[test]
    fn a_32_gib_unsealed_file_frees_and_reports_by_ranges() {
        const GIB32: u64 = 32 << 30;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-t01000-9");
        let file = File::create(&path).unwrap();
        file.set_len(GIB32).unwrap();
        // A few real blocks in the half that is freed.
        std::os::unix::fs::FileExt::write_all_at(&file, &[9u8; 1 << 20], 24 << 30).unwrap();
        let blocks = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap());
        let before = blocks(&path);
        assert!(read_allocation(&path, GIB32).unwrap().unwrap().covers(0, GIB32), "a whole sector is allocated");
        free(&path, GIB32, &[(GIB32 / 2, GIB32)]).unwrap();
        let allocation = read_allocation(&path, GIB32).unwrap().unwrap();
        assert_eq!(allocation.ranges(), &[(0, GIB32 / 2)]);
        let (start, end) = unseal_range(0, 127 << 20, GIB32).unwrap();
        assert!(allocation.covers(start, end));
        let (start, end) = unseal_range(GIB32 / 128 * 127 / 2 + 127, 127, GIB32).unwrap();
        assert!(!allocation.covers(start, end));
        assert!(blocks(&path) < before, "the freed MiB went back to the disk");
        assert!(std::fs::metadata(&path).unwrap().len() < GIB32 + 64, "data plus a trailer of a few bytes");
    }
}
