//! Property tests of what the file servers decode from a request
//! (docs/FUZZING.md): the `Range` header (`byte_range`), the unsealed
//! file's RLE+ trailer and lotus' `…/allocated/<offset>/<size>` check
//! (`unsealed_file`). Whatever arrives, an answer and no panic; what a client
//! may rightly ask for is served as asked.

use proptest::prelude::*;
use sealfarm_runtime::byte_range::{select, ByteSpan, Ranged};
use sealfarm_runtime::unsealed_file::{allocated_answer, padded_range, read_allocation, unseal_range, Allocation};

#[path = "../../fuzz/support.rs"]
mod support;
use support::{config, corpus};

/// File sizes: empty, tiny, a 2 KiB and a 32 GiB sector, the largest.
fn total() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..4096, Just(2048), Just(32 << 30), any::<u64>(), Just(u64::MAX)]
}

/// A number as a client may write it: small, near the file's end, beyond u64.
fn position() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..5000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{20,30}",
        "[0-9 +x-]{0,6}",
    ]
}

/// `Range` values: well-formed sets, near misses, anything.
fn range_header() -> impl Strategy<Value = Vec<u8>> {
    let spec = prop_oneof![
        (position(), position()).prop_map(|(a, b)| format!("{a}-{b}")),
        position().prop_map(|a| format!("{a}-")),
        position().prop_map(|b| format!("-{b}")),
        ".{0,8}",
    ];
    prop_oneof![
        (
            prop_oneof![Just("bytes".to_string()), Just("Bytes ".to_string()), ".{0,6}"],
            prop::collection::vec(spec, 0..4)
        )
            .prop_map(|(unit, specs)| format!("{unit}={}", specs.join(",")).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A span is inside the file (and so non-empty: both ends are inclusive).
fn inside(span: &ByteSpan, total: u64) -> bool {
    span.start <= span.end && span.end < total
}

proptest! {
    #![proptest_config(config(512))]

    /// Any `Range` value on any file size: whole, a span inside the file,
    /// or unsatisfiable; never a panic, never a span past the end.
    #[test]
    fn any_range_gives_an_answer_inside_the_file(header in range_header(), total in total()) {
        if let Ranged::Part(span) = select(Some(&header), total) {
            prop_assert!(inside(&span, total), "{:?} on {} bytes: {:?}", String::from_utf8_lossy(&header), total, span);
            prop_assert_eq!(span.content_range(total), format!("bytes {}-{}/{total}", span.start, span.end));
        }
    }

    /// What lotus sends (`bytes=START-END`, START ≤ END < total) gets
    /// exactly those bytes; `bytes=-N` the last N.
    #[test]
    fn well_formed_ranges_get_their_bytes(total in 1u64..u64::MAX, a in any::<u64>(), b in any::<u64>(), n in 1u64..u64::MAX) {
        let (start, end) = (a % total, b % total);
        let (start, end) = (start.min(end), start.max(end));
        let asked = format!("bytes={start}-{end}");
        prop_assert_eq!(select(Some(asked.as_bytes()), total), Ranged::Part(ByteSpan { start, end }));
        let suffix = format!("bytes=-{n}");
        let expected = ByteSpan { start: total - n.min(total), end: total - 1 };
        prop_assert_eq!(select(Some(suffix.as_bytes()), total), Ranged::Part(expected));
    }

    /// Units other than `bytes` are ignored: the whole file.
    #[test]
    fn other_units_are_ignored(unit in "[a-zA-Z]{1,8}", rest in ".{0,20}", total in total()) {
        prop_assume!(!unit.eq_ignore_ascii_case("bytes"));
        let header = format!("{unit}={rest}");
        prop_assert_eq!(select(Some(header.as_bytes()), total), Ranged::Whole);
    }

    /// An unsealed file's trailer, any bytes: ranges or a reason, and what
    /// decodes is sorted, merged and non-empty.
    #[test]
    fn any_trailer_decodes_or_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        match Allocation::from_rle(&bytes) {
            Ok(allocation) => {
                let ranges = allocation.ranges();
                prop_assert!(ranges.iter().all(|(s, e)| s < e), "{:?}", ranges);
                prop_assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{:?}", ranges);
            }
            Err(why) => prop_assert!(why.starts_with("RLE+"), "{}", why),
        }
    }

    /// What sealfarm writes, it reads back.
    #[test]
    fn trailers_round_trip(ranges in prop::collection::vec((any::<u64>(), any::<u64>()), 0..8)) {
        let allocation = Allocation::from_ranges(ranges);
        prop_assert_eq!(Allocation::from_rle(&allocation.to_rle()), Ok(allocation));
    }

    /// UnsealPiece's offset and size (from the miner, any u64): a padded
    /// range inside the sector, or a refusal naming the range.
    #[test]
    fn unseal_ranges_are_inside_the_sector_or_refused(
        offset in prop_oneof![any::<u64>(), (0u64..u64::MAX / 127).prop_map(|n| n * 127)],
        size in prop_oneof![any::<u64>(), (0u64..u64::MAX / 127).prop_map(|n| n * 127), Just(127u64)],
        sector_size in prop_oneof![Just(2048u64), Just(32u64 << 30), any::<u64>()],
    ) {
        match unseal_range(offset, size, sector_size) {
            Ok((start, end)) => prop_assert!(start < end && end <= sector_size, "{start}..{end}"),
            Err(why) => prop_assert!(why.contains(&format!("range {offset}+{size}")), "{}", why),
        }
        if let Some((start, end)) = padded_range(offset, size) {
            prop_assert!(start <= end);
        }
    }

    /// lotus' `…/<proof type>/allocated/<offset>/<size>` with any path
    /// segments: 200, 416 or 500 with the reason, never a panic.
    #[test]
    fn allocated_checks_answer_any_segments(
        spt in prop_oneof![(0i64..25).prop_map(|n| n.to_string()), ".{0,8}"],
        offset in position(),
        size in position(),
        file in prop_oneof![Just(None), (0usize..3000).prop_map(Some)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-t01000-1");
        if let Some(len) = file {
            std::fs::write(&path, vec![1u8; len]).unwrap();
        }
        let (code, text) = allocated_answer(&path, &spt, &offset, &size);
        prop_assert!([200, 416, 500].contains(&code), "{}", code);
        prop_assert!(code == 200 || !text.is_empty(), "{} without a reason", code);
    }

    /// Any file where an unsealed file should be: an allocation, or an
    /// error naming the file.
    #[test]
    fn any_unsealed_file_reads_or_is_refused(
        data in prop::collection::vec(any::<u8>(), 0..64),
        trailer in prop::option::of(any::<u32>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-t01000-1");
        let mut bytes = vec![0u8; 2048];
        bytes.extend_from_slice(&data);
        if let Some(len) = trailer {
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = read_allocation(&path, 2048) {
            prop_assert!(e.to_string().contains(&path.display().to_string()), "{}", e);
        }
    }
}

/// Each `Range` value of the corpus (one per file, as sent) on files of
/// every size: an answer inside the file; one named `ok-…` gets a part of
/// a 32 GiB file.
#[test]
fn the_range_corpus_gets_answers_inside_the_file() {
    for (path, header) in corpus("range") {
        for total in [0, 1, 2048, 32 << 30, u64::MAX] {
            if let Ranged::Part(span) = select(Some(&header), total) {
                assert!(inside(&span, total), "{} on {total} bytes: {span:?}", path.display());
            }
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ok-") {
            assert!(matches!(select(Some(&header), 32 << 30), Ranged::Part(_)), "{name}");
        }
    }
}

/// Each trailer of the corpus (the RLE+ bytes) decodes or is refused; one
/// named `ok-…` decodes.
#[test]
fn the_rle_corpus_decodes_or_is_refused() {
    for (path, bytes) in corpus("rle") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match Allocation::from_rle(&bytes) {
            Ok(_) => {}
            Err(why) if name.starts_with("ok-") => panic!("{name}: {why}"),
            Err(why) => assert!(why.starts_with("RLE+"), "{name}: {why}"),
        }
    }
}
