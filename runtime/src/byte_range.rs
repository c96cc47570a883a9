//! HTTP byte ranges (RFC 9110 §14) on one sector file: which bytes a `Range`
//! header asks for, decided once for the bridge's `/remote` and the workers'
//! file servers (both answer through [`crate::sector_files::http_get`]).
//!
//! lotus reads unsealed pieces from a remote worker with one range per
//! request (`Range: bytes=START-END`). What this module decides:
//!
//! * no `Range`, or a range unit other than `bytes` → [`Ranged::Whole`]
//!   (200): RFC 9110 §14.2 says a server MUST ignore a unit it does not know;
//! * `bytes=` with a range set that does not parse (`bytes=5-2`, `bytes=x-`,
//!   `bytes=`) → [`Ranged::Unsatisfiable`] (416). RFC 9110 allows ignoring
//!   or rejecting it; Go's `http.ServeContent`, which lotus-worker answers
//!   with, rejects it, and a client that asked for a slice is better served
//!   by a clear refusal than by the whole 32 GiB file;
//! * `bytes=N-M`, `bytes=N-` and `bytes=-N` (the last N bytes) as RFC 9110
//!   §14.1.2 defines them: a last position past the end is cut to the end, a
//!   suffix longer than the file is the whole file;
//! * several ranges (`bytes=0-9,20-29`) → the first satisfiable one alone,
//!   as a single-part 206 whose `Content-Range` says which bytes came (no
//!   `multipart/byteranges`); 416 only when none is satisfiable. A client
//!   asking for several ranges must read `Content-Range` (RFC 9110 §15.3.7).
//! * nothing is satisfiable in an empty file: any range there is a 416.
//!
//! Numbers too large for a `u64` count as infinitely large (a suffix that
//! long is the whole file, a first position that far is past the end).

/// What to send for a request's `Range` on a file of `total` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file: 200 with `Content-Length: total`.
    Whole,
    /// These bytes: 206 with [`ByteSpan::content_range`].
    Part(ByteSpan),
    /// 416 with `Content-Range: bytes */total` ([`unsatisfied_range`]).
    Unsatisfiable,
}

/// Bytes `start..=end` of a file (both inclusive, as in `Content-Range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSpan {
    pub start: u64,
    pub end: u64,
}

impl ByteSpan {
    /// How many bytes the span holds (never 0).
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// A span is never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value of a 206: `bytes START-END/TOTAL`.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{total}", self.start, self.end)
    }
}

/// The `Content-Range` value of a 416: `bytes */TOTAL`.
pub fn unsatisfied_range(total: u64) -> String {
    format!("bytes */{total}")
}

/// Decides what a request with this `Range` value (None: no header) gets
/// from a file of `total` bytes (see the module doc for the rules).
pub fn select(range: Option<&[u8]>, total: u64) -> Ranged {
    let Some(value) = range else { return Ranged::Whole };
    let Some(equals) = value.iter().position(|b| *b == b'=') else { return Ranged::Whole };
    if !value[..equals].trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return Ranged::Whole;
    }
    let Ok(set) = std::str::from_utf8(&value[equals + 1..]) else { return Ranged::Unsatisfiable };
    let mut specs = Vec::new();
    // A list may hold empty elements (RFC 9110 §5.6.1.2); one range at least.
    for element in set.split(',').map(|e| e.trim_matches([' ', '\t'])).filter(|e| !e.is_empty()) {
        match parse_spec(element) {
            Some(spec) => specs.push(spec),
            None => return Ranged::Unsatisfiable,
        }
    }
    if specs.is_empty() {
        return Ranged::Unsatisfiable;
    }
    specs.into_iter().find_map(|spec| spec.within(total)).map_or(Ranged::Unsatisfiable, Ranged::Part)
}

/// One `range-spec` of a `bytes=` set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `first-last` (`last` None: `first-`).
    From { first: u64, last: Option<u64> },
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

impl Spec {
    /// The bytes it selects from a file of `total` bytes, if any.
    fn within(self, total: u64) -> Option<ByteSpan> {
        match self {
            Spec::From { first, last } if first < total => {
                Some(ByteSpan { start: first, end: last.unwrap_or(u64::MAX).min(total - 1) })
            }
            Spec::From { .. } => None,
            Spec::Suffix(length) if length > 0 && total > 0 => {
                Some(ByteSpan { start: total - length.min(total), end: total - 1 })
            }
            Spec::Suffix(_) => None,
        }
    }
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(Spec::Suffix(number(last)?)),
        (false, true) => Some(Spec::From { first: number(first)?, last: None }),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last).then_some(Spec::From { first, last: Some(last) })
        }
    }
}

/// Decimal digits only (no sign, no spaces); too large for a u64 → u64::MAX.
fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOTAL: u64 = 32 << 30;

    fn pick(range: &str) -> Ranged {
        select(Some(range.as_bytes()), TOTAL)
    }

    fn part(start: u64, end: u64) -> Ranged {
        Ranged::Part(ByteSpan { start, end })
    }

    #[test]
    fn single_ranges_select_their_bytes() {
        assert_eq!(select(None, TOTAL), Ranged::Whole, "no Range: the whole file");
        assert_eq!(pick("bytes=0-0"), part(0, 0), "the first byte");
        assert_eq!(pick(&format!("bytes={0}-{0}", TOTAL - 1)), part(TOTAL - 1, TOTAL - 1), "the last byte");
        assert_eq!(pick("bytes=1048576-2097151"), part(1 << 20, (2 << 20) - 1), "a middle slice");
        assert_eq!(pick(&format!("bytes={}-", TOTAL - 10)), part(TOTAL - 10, TOTAL - 1), "N- to the end");
        assert_eq!(pick("bytes=-10"), part(TOTAL - 10, TOTAL - 1), "the last 10 bytes");
        assert_eq!(pick("bytes=-1"), part(TOTAL - 1, TOTAL - 1));
        assert_eq!(pick(&format!("bytes=-{}", TOTAL + 5)), part(0, TOTAL - 1), "a suffix longer than the file");
        assert_eq!(pick(&format!("bytes=10-{}", TOTAL + 5)), part(10, TOTAL - 1), "a last position past the end");
        assert_eq!(pick("bytes=0-99999999999999999999999"), part(0, TOTAL - 1), "a last position beyond u64");
        assert_eq!(pick("Bytes = 5-6"), part(5, 6), "the unit is case-insensitive, spaces around it are fine");
        assert_eq!(part(5, 6), Ranged::Part(ByteSpan { start: 5, end: 6 }));
        let Ranged::Part(span) = pick("bytes=100-199") else { panic!() };
        assert_eq!((span.len(), span.content_range(TOTAL)), (100, format!("bytes 100-199/{TOTAL}")));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(pick(&format!("bytes={TOTAL}-")), Ranged::Unsatisfiable);
        assert_eq!(pick(&format!("bytes={}-{}", TOTAL, TOTAL + 9)), Ranged::Unsatisfiable);
        assert_eq!(pick("bytes=99999999999999999999999-"), Ranged::Unsatisfiable, "a first position beyond u64");
        assert_eq!(pick("bytes=-0"), Ranged::Unsatisfiable, "an empty suffix");
        assert_eq!(select(Some(b"bytes=0-0"), 0), Ranged::Unsatisfiable, "nothing in an empty file");
        assert_eq!(select(Some(b"bytes=-5"), 0), Ranged::Unsatisfiable);
        assert_eq!(select(None, 0), Ranged::Whole);
        assert_eq!(unsatisfied_range(TOTAL), format!("bytes */{TOTAL}"));
    }

    #[test]
    fn several_ranges_give_the_first_satisfiable_one() {
        assert_eq!(pick("bytes=0-9,20-29"), part(0, 9));
        assert_eq!(pick("bytes= 20-29 , 0-9"), part(20, 29));
        assert_eq!(pick(&format!("bytes={TOTAL}-,-5")), part(TOTAL - 5, TOTAL - 1), "the first that fits");
        assert_eq!(pick(&format!("bytes={TOTAL}-,{}-", TOTAL + 1)), Ranged::Unsatisfiable, "none fits");
        assert_eq!(pick("bytes=,0-1,"), part(0, 1), "empty list elements are skipped");
    }

    #[test]
    fn malformed_byte_ranges_are_refused_and_other_units_ignored() {
        for malformed in [
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=5-2",
            "bytes=x-5",
            "bytes=1-y",
            "bytes=+1-2",
            "bytes=1 -2",
            "bytes=0-1,oops",
            "bytes=0x10-",
            "bytes=--5",
        ] {
            assert_eq!(pick(malformed), Ranged::Unsatisfiable, "{malformed}");
        }
        assert_eq!(select(Some(b"bytes=\xff-1"), TOTAL), Ranged::Unsatisfiable, "not UTF-8");
        for ignored in ["items=0-5", "0-5", "bytes 0-5", "none"] {
            assert_eq!(pick(ignored), Ranged::Whole, "{ignored}");
        }
    }
}
