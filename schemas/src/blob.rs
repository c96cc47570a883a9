//! Payloads too large for a broker message, and how a message names them.
//!
//! A 32 GiB sector's C1 output is tens of MiB. Such bytes never ride the
//! broker: RabbitMQ 4 refuses messages over 16 MiB by default, and a quorum
//! queue writes every message into the Raft log of each replica. The bridge
//! keeps them as content-addressed blobs (`docs/ARCHITECTURE.md`, "Blobs") and
//! a message carries a [`BlobRef`]: the SHA-256 of the bytes and their size.
//! Whoever fetches a blob checks both before using it.
//!
//! A [`Payload`] is what a message field holding such data is: a blob
//! reference, or the bytes themselves. Inline bytes remain readable so that
//! tasks published before blobs existed still run, and so that a worker with
//! no bridge to talk to (a test driving workers directly) can carry a test
//! size's C1 output; nothing sealfarm publishes holds more than
//! [`INLINE_LIMIT`] bytes inline.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::lotus::Bytes;

/// The most bytes a message carries inline; larger payloads go as blobs.
/// With base64 and the message's other fields this keeps every message sealfarm
/// publishes under 1 MiB.
pub const INLINE_LIMIT: usize = 512 * 1024;

/// A blob the bridge keeps: the SHA-256 of its bytes (lower-case hex) and their count.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct BlobRef {
    /// SHA-256 of the bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// Length of the bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobRef { sha256: hex::encode(Sha256::digest(bytes)), size: bytes.len() as u64 }
    }

    /// Checks that the digest is a SHA-256 in lower-case hex (so it can name
    /// a file and a URL path segment safely).
    pub fn validate(&self) -> Result<(), String> {
        if is_digest(&self.sha256) {
            Ok(())
        } else {
            Err(format!("blob digest {:?} is not 64 lower-case hex digits (SHA-256)", self.sha256))
        }
    }

    /// Checks fetched bytes against the reference.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 != self.size {
            return Err(self.wrong_size(bytes.len() as u64));
        }
        self.check_digest(Sha256::digest(bytes).into())
    }

    /// [`verify`](Self::verify) for bytes read from `reader` in 1 MiB
    /// pieces (a blob file: memory stays small whatever its size).
    pub fn verify_reader(&self, mut reader: impl std::io::Read) -> Result<(), String> {
        let (mut hasher, mut size, mut piece) = (Sha256::new(), 0u64, vec![0; 1 << 20]);
        loop {
            match reader.read(&mut piece) {
                Ok(0) => break,
                Ok(read) => {
                    hasher.update(&piece[..read]);
                    size += read as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read blob {}: {e}", self.short())),
            }
        }
        if size != self.size {
            return Err(self.wrong_size(size));
        }
        self.check_digest(hasher.finalize().into())
    }

    fn wrong_size(&self, got: u64) -> String {
        format!("blob {} should hold {} bytes, got {got}", self.short(), self.size)
    }

    fn check_digest(&self, digest: [u8; 32]) -> Result<(), String> {
        let got = hex::encode(digest);
        if got != self.sha256 {
            return Err(format!("blob {} arrived with SHA-256 {got}: the bytes are not the ones named", self.short()));
        }
        Ok(())
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.short(), self.size)
    }
}

/// True for 64 lower-case hex digits.
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Stage data that may be large: a blob the bridge keeps, or the bytes
/// themselves (base64 text on the wire, as before blobs existed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Blob(BlobRef),
    Inline(Bytes),
}

impl Payload {
    /// The bytes, when they travel inline.
    pub fn inline(&self) -> Option<&Bytes> {
        match self {
            Payload::Inline(bytes) => Some(bytes),
            Payload::Blob(_) => None,
        }
    }

    /// The blob named, when the bytes do not travel inline.
    pub fn blob(&self) -> Option<&BlobRef> {
        match self {
            Payload::Blob(blob) => Some(blob),
            Payload::Inline(_) => None,
        }
    }

    /// How many bytes the payload stands for.
    pub fn size(&self) -> u64 {
        match self {
            Payload::Blob(blob) => blob.size,
            Payload::Inline(bytes) => bytes.0.len() as u64,
        }
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload::Inline(bytes)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobJson {
    blob: BlobRef,
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Blob(blob) => BlobJson { blob: blob.clone() }.serialize(s),
            Payload::Inline(bytes) => bytes.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("base64 text, or {\"blob\": {\"sha256\": …, \"size\": …}}")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Payload, E> {
                Bytes::decode(text).map(Payload::Inline).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Payload, A::Error> {
                let json = BlobJson::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                json.blob.validate().map_err(serde::de::Error::custom)?;
                Ok(Payload::Blob(json.blob))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Payload {
    fn schema_name() -> Cow<'static, str> {
        "Payload".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let blob = generator.subschema_for::<BlobRef>();
        json_schema!({
            "description": "Stage data: a blob the bridge keeps (fetched over its HTTP blob path, checked against \
                            the digest), or the bytes as base64 (at most 512 KiB)",
            "oneOf": [
                { "type": "object", "properties": { "blob": blob }, "required": ["blob"],
                  "additionalProperties": false },
                { "type": "string", "contentEncoding": "base64" }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_blob_references_and_older_inline_bytes() {
        let blob = BlobRef::of(b"c1 output");
        let text = serde_json::to_string(&Payload::Blob(blob.clone())).unwrap();
        assert_eq!(text, format!("{{\"blob\":{{\"sha256\":\"{}\",\"size\":9}}}}", blob.sha256));
        assert_eq!(serde_json::from_str::<Payload>(&text).unwrap(), Payload::Blob(blob.clone()));
        // What tasks carried before blobs existed.
        let inline: Payload = serde_json::from_str("\"aGVsbG8=\"").unwrap();
        assert_eq!(inline, Payload::Inline(Bytes(b"hello".to_vec())));
        assert_eq!(serde_json::to_string(&inline).unwrap(), "\"aGVsbG8=\"");
        // A digest that could name another file is refused when read.
        let bad = "{\"blob\":{\"sha256\":\"../../etc/passwd\",\"size\":1}}";
        let err = serde_json::from_str::<Payload>(bad).unwrap_err().to_string();
        assert!(err.contains("not 64 lower-case hex digits"), "{err}");
        assert!(serde_json::from_str::<Payload>("7").unwrap_err().to_string().contains("base64 text"));
        assert!(blob.verify(b"c1 output").is_ok());
        assert!(blob.verify(b"c1 outpuT").unwrap_err().contains("not the ones named"));
        assert!(blob.verify(b"c1").unwrap_err().contains("should hold 9 bytes"));
        assert!(blob.verify_reader(&b"c1 output"[..]).is_ok());
        assert!(blob.verify_reader(&b"c1 outpuT"[..]).unwrap_err().contains("not the ones named"));
        assert!(blob.verify_reader(&b"c1"[..]).unwrap_err().contains("should hold 9 bytes"));
    }
}
