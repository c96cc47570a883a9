//! lotus wire types shared by the bridge and the workers.
//!
//! Shapes follow lotus' Go JSON encoding (docs/LOTUS.md §8): field
//! names are the Go field names verbatim, byte slices are standard base64 with
//! padding, CIDs are `{"/": "<cid>"}` and a nil CID is `null`, integers are
//! plain JSON numbers.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// `abi.SectorID`: a miner actor id and a sector number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SectorId {
    pub miner: u64,
    pub number: u64,
}

impl SectorId {
    /// The file name lotus gives every file of this sector: `s-t0<miner>-<number>`.
    pub fn file_name(&self) -> String {
        format!("s-t0{}-{}", self.miner, self.number)
    }

    /// The prover id the proofs library expects: the miner's ID-address
    /// payload (unsigned LEB128 of the actor id), zero-padded to 32 bytes.
    pub fn prover_id(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut value = self.miner;
        let mut i = 0;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out[i] = byte;
                break;
            }
            out[i] = byte | 0x80;
            i += 1;
        }
        out
    }
}

impl fmt::Display for SectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file_name())
    }
}

/// `storiface.SectorRef`: a sector and the seal proof it is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct SectorRef {
    #[serde(rename = "ID")]
    pub id: SectorId,
    #[serde(rename = "ProofType")]
    pub proof_type: RegisteredSealProof,
}

/// `storiface.CallID`: the handle an async worker call answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct CallId {
    #[serde(rename = "Sector")]
    pub sector: SectorId,
    #[serde(rename = "ID")]
    pub id: Uuid,
}

impl CallId {
    pub fn new(sector: SectorId) -> Self {
        CallId { sector, id: Uuid::new_v4() }
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// A CID in lotus' JSON form `{"/": "<cid>"}`. The text is validated as a CID
/// when parsed; `Option<Cid>` is `null` for lotus' undefined CID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cid(cid::Cid);

impl Cid {
    pub fn new(inner: cid::Cid) -> Self {
        Cid(inner)
    }
    pub fn inner(&self) -> &cid::Cid {
        &self.0
    }
}

impl FromStr for Cid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        cid::Cid::try_from(s).map(Cid).map_err(|e| format!("invalid CID {s:?}: {e}"))
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Serialize, Deserialize)]
struct CidJson {
    #[serde(rename = "/")]
    text: String,
}

impl Serialize for Cid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CidJson { text: self.0.to_string() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = CidJson::deserialize(d)?;
        json.text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cid {
    fn schema_name() -> Cow<'static, str> {
        "Cid".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A CID as lotus encodes it: {\"/\": \"<base32 CIDv1>\"}",
            "type": "object",
            "properties": { "/": { "type": "string" } },
            "required": ["/"]
        })
    }
}

/// A Go `[]byte`: standard base64 with padding on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl Bytes {
    /// Decodes base64 text (standard alphabet, padded).
    pub fn decode(text: &str) -> Result<Self, String> {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(|e| format!("invalid base64: {e}"))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Written through without a base64 copy of the bytes (tens of MiB for a C1 output).
        s.collect_str(&base64::display::Base64Display::new(&self.0, &base64::engine::general_purpose::STANDARD))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("base64 text")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bytes, E> {
                Bytes::decode(text).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Bytes".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes as standard base64 with padding (Go []byte)",
            "type": "string",
            "contentEncoding": "base64"
        })
    }
}

/// `abi.PieceInfo`: a piece's padded size and its commitment (CommP) as a CID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PieceInfo {
    /// Padded size in bytes.
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "PieceCID")]
    pub piece_cid: Cid,
}

/// `storiface.SectorCids`: CommD as `Unsealed`, CommR as `Sealed`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct SectorCids {
    #[serde(rename = "Unsealed")]
    pub unsealed: Option<Cid>,
    #[serde(rename = "Sealed")]
    pub sealed: Option<Cid>,
}

/// `storiface.ReplicaUpdateOut`: the CIDs of a snapped sector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplicaUpdateOut {
    /// The new CommR (of the `update` file).
    #[serde(rename = "NewSealed")]
    pub new_sealed: Cid,
    /// The new CommD (of the deal data).
    #[serde(rename = "NewUnsealed")]
    pub new_unsealed: Cid,
}

/// `storiface.SectorLocation`: where DownloadSectorData fetches one file type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SectorLocation {
    /// Declared by lotus as "the file is already local"; lotus' worker
    /// refuses such an entry, and so does sealfarm.
    #[serde(rename = "Local", default)]
    pub local: bool,
    #[serde(rename = "URL")]
    pub url: String,
    #[serde(rename = "Headers", default)]
    pub headers: Option<Vec<HttpHeader>>,
}

/// `storiface.SecDataHttpHeader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HttpHeader {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value")]
    pub value: String,
}

/// `storiface.Range`: an unpadded byte range of a sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Range {
    pub offset: u64,
    pub size: u64,
}

/// `storiface.ErrorCode`. Unknown codes are kept as they came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ErrorCode(pub u64);

impl ErrorCode {
    /// Generic failure; the miner sends the sector to a failure state.
    pub const UNKNOWN: ErrorCode = ErrorCode(0);
    /// Declared by lotus, not produced by it; not retried by the miner's FSM.
    pub const TEMP_UNKNOWN: ErrorCode = ErrorCode(100);
    /// The worker restarted; the miner re-issues PC1/PC2 calls.
    pub const TEMP_WORKER_RESTART: ErrorCode = ErrorCode(101);
    /// No space for the sector; the miner re-issues PC1/PC2 calls.
    pub const TEMP_ALLOCATE_SPACE: ErrorCode = ErrorCode(102);

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "ErrUnknown",
            100 => "ErrTempUnknown",
            101 => "ErrTempWorkerRestart",
            102 => "ErrTempAllocateSpace",
            _ => "unrecognised",
        }
    }
}

/// `storiface.CallError`: how a failed call is reported to the miner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CallError {
    #[serde(rename = "Code")]
    pub code: ErrorCode,
    #[serde(rename = "Message")]
    pub message: String,
}

impl CallError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CallError { code, message: message.into() }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code.0, self.code.name(), self.message)
    }
}

/// A sector size in bytes, written the way lotus operators write it (`2KiB`, `32GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectorSize(pub u64);

impl SectorSize {
    pub const KIB2: SectorSize = SectorSize(2 << 10);
    pub const MIB8: SectorSize = SectorSize(8 << 20);
    pub const MIB512: SectorSize = SectorSize(512 << 20);
    pub const GIB32: SectorSize = SectorSize(32 << 30);
    pub const GIB64: SectorSize = SectorSize(64 << 30);
    /// Every sector size a seal proof exists for.
    pub const ALL: [SectorSize; 5] = [Self::KIB2, Self::MIB8, Self::MIB512, Self::GIB32, Self::GIB64];

    /// Sizes whose Groth parameters may be generated locally (never valid on chain).
    pub fn is_test_size(self) -> bool {
        self == Self::KIB2 || self == Self::MIB8 || self == Self::MIB512
    }

    /// The unpadded size: the most piece data a sector of this size holds.
    pub fn unpadded(self) -> u64 {
        self.0 / 128 * 127
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, scale) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{}", self.0 / scale, unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for SectorSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 =
            digits.parse().map_err(|_| format!("invalid sector size {s:?}: expected e.g. 2KiB, 8MiB, 32GiB"))?;
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "tib" | "t" => 1 << 40,
            _ => return Err(format!("invalid sector size {s:?}: unknown unit {unit:?} (use KiB, MiB or GiB)")),
        };
        // Checked: a number of that unit past 2^64 bytes is no size at all.
        let size = number.checked_mul(scale).map(SectorSize);
        if let Some(size) = size.filter(|size| SectorSize::ALL.contains(size)) {
            Ok(size)
        } else {
            Err(format!(
                "{s:?} is not a Filecoin sector size; one of {}",
                SectorSize::ALL.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
            ))
        }
    }
}

impl Serialize for SectorSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SectorSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SectorSize {
    fn schema_name() -> Cow<'static, str> {
        "SectorSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": ["2KiB", "8MiB", "512MiB", "32GiB", "64GiB"] })
    }
}

/// `abi.RegisteredSealProof`, a plain number on the wire. Kept as the number
/// lotus sent so that an unknown type can be reported by value instead of
/// failing the whole message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct RegisteredSealProof(pub i64);

/// What a registered seal proof number stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealProofInfo {
    pub name: &'static str,
    pub sector_size: SectorSize,
}

const SEAL_PROOF_NAMES: [&str; 20] = [
    "StackedDrg2KiBV1",
    "StackedDrg8MiBV1",
    "StackedDrg512MiBV1",
    "StackedDrg32GiBV1",
    "StackedDrg64GiBV1",
    "StackedDrg2KiBV1_1",
    "StackedDrg8MiBV1_1",
    "StackedDrg512MiBV1_1",
    "StackedDrg32GiBV1_1",
    "StackedDrg64GiBV1_1",
    "StackedDrg2KiBV1_1_Feat_SyntheticPoRep",
    "StackedDrg8MiBV1_1_Feat_SyntheticPoRep",
    "StackedDrg512MiBV1_1_Feat_SyntheticPoRep",
    "StackedDrg32GiBV1_1_Feat_SyntheticPoRep",
    "StackedDrg64GiBV1_1_Feat_SyntheticPoRep",
    "StackedDrg2KiBV1_2_Feat_NonInteractivePoRep",
    "StackedDrg8MiBV1_2_Feat_NonInteractivePoRep",
    "StackedDrg512MiBV1_2_Feat_NonInteractivePoRep",
    "StackedDrg32GiBV1_2_Feat_NonInteractivePoRep",
    "StackedDrg64GiBV1_2_Feat_NonInteractivePoRep",
];

impl RegisteredSealProof {
    pub const STACKED_DRG_2KIB_V1_1: RegisteredSealProof = RegisteredSealProof(5);
    pub const STACKED_DRG_8MIB_V1_1: RegisteredSealProof = RegisteredSealProof(6);
    pub const STACKED_DRG_512MIB_V1_1: RegisteredSealProof = RegisteredSealProof(7);
    pub const STACKED_DRG_32GIB_V1_1: RegisteredSealProof = RegisteredSealProof(8);
    pub const STACKED_DRG_64GIB_V1_1: RegisteredSealProof = RegisteredSealProof(9);

    /// Name and sector size, or `None` for a number lotus does not define.
    pub fn info(self) -> Option<SealProofInfo> {
        let index = usize::try_from(self.0).ok()?;
        let name = *SEAL_PROOF_NAMES.get(index)?;
        Some(SealProofInfo { name, sector_size: SectorSize::ALL[index % 5] })
    }

    /// The `RegisteredUpdateProof` number of this proof's snap deals (0-4
    /// by sector size, whatever the seal proof's version).
    pub fn update_proof(self) -> Option<i64> {
        let info = self.info()?;
        SectorSize::ALL.iter().position(|s| *s == info.sector_size).map(|i| i as i64)
    }

    /// The V1_1 proof lotus uses for new sectors of this size.
    pub fn v1_1_for(size: SectorSize) -> RegisteredSealProof {
        let index = SectorSize::ALL.iter().position(|s| *s == size).unwrap_or(0);
        RegisteredSealProof(5 + index as i64)
    }

    /// Looks a proof up by its lotus name (`StackedDrg2KiBV1_1`).
    pub fn from_name(name: &str) -> Option<RegisteredSealProof> {
        SEAL_PROOF_NAMES.iter().position(|n| *n == name).map(|i| RegisteredSealProof(i as i64))
    }
}

impl fmt::Display for RegisteredSealProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.info() {
            Some(info) => write!(f, "{} ({})", info.name, self.0),
            None => write!(f, "unknown proof type {}", self.0),
        }
    }
}

/// `sealtasks.TaskType`: the task names the miner schedules by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaskType {
    #[serde(rename = "seal/v0/datacid")]
    DataCid,
    #[serde(rename = "seal/v0/addpiece")]
    AddPiece,
    #[serde(rename = "seal/v0/precommit/1")]
    PreCommit1,
    #[serde(rename = "seal/v0/precommit/2")]
    PreCommit2,
    #[serde(rename = "seal/v0/commit/1")]
    Commit1,
    #[serde(rename = "seal/v0/commit/2")]
    Commit2,
    #[serde(rename = "seal/v0/finalize")]
    Finalize,
    #[serde(rename = "seal/v0/finalizeunsealed")]
    FinalizeUnsealed,
    #[serde(rename = "seal/v0/fetch")]
    Fetch,
    #[serde(rename = "seal/v0/unseal")]
    Unseal,
    #[serde(rename = "seal/v0/replicaupdate")]
    ReplicaUpdate,
    #[serde(rename = "seal/v0/provereplicaupdate/1")]
    ProveReplicaUpdate1,
    #[serde(rename = "seal/v0/provereplicaupdate/2")]
    ProveReplicaUpdate2,
    #[serde(rename = "seal/v0/regensectorkey")]
    RegenSectorKey,
    #[serde(rename = "seal/v0/finalize/replicaupdate")]
    FinalizeReplicaUpdate,
    #[serde(rename = "seal/v0/download/sector")]
    DownloadSector,
    #[serde(rename = "post/v0/windowproof")]
    GenerateWindowPoSt,
    #[serde(rename = "post/v0/winningproof")]
    GenerateWinningPoSt,
}

impl TaskType {
    /// The short name `lotus-miner sealing jobs` prints (AP, PC1, …).
    pub fn short(self) -> &'static str {
        use TaskType::*;
        match self {
            DataCid => "DC",
            AddPiece => "AP",
            PreCommit1 => "PC1",
            PreCommit2 => "PC2",
            Commit1 => "C1",
            Commit2 => "C2",
            Finalize => "FIN",
            FinalizeUnsealed => "FUS",
            Fetch => "GET",
            Unseal => "UNS",
            ReplicaUpdate => "RU",
            ProveReplicaUpdate1 => "PR1",
            ProveReplicaUpdate2 => "PR2",
            RegenSectorKey => "GSK",
            FinalizeReplicaUpdate => "FRU",
            DownloadSector => "DL",
            GenerateWindowPoSt => "WDP",
            GenerateWinningPoSt => "WNP",
        }
    }
}

/// `rpcenc.ReaderStream`: how piece bytes reach a worker call (docs/LOTUS.md §7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReaderStream {
    /// `null` (Info = byte count of zeros), `push` (Info = stream UUID) or `http` (Info = URL).
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Info")]
    pub info: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prover_id_is_the_leb128_actor_id() {
        let id = SectorId { miner: 1000, number: 1 }.prover_id();
        assert_eq!(&id[..3], &[0xe8, 0x07, 0x00]);
        assert!(id[2..].iter().all(|b| *b == 0));
        assert_eq!(SectorId { miner: 5, number: 1 }.prover_id()[0], 5);
    }

    #[test]
    fn sector_sizes_parse_and_print_like_lotus() {
        for text in ["2KiB", "8MiB", "512MiB", "32GiB", "64GiB"] {
            assert_eq!(text.parse::<SectorSize>().unwrap().to_string(), text);
        }
        assert_eq!("2048".parse::<SectorSize>().unwrap(), SectorSize::KIB2);
        let err = "3KiB".parse::<SectorSize>().unwrap_err();
        assert!(err.contains("not a Filecoin sector size"), "{err}");
        assert_eq!(SectorSize::KIB2.unpadded(), 2032);
        assert_eq!(SectorSize::GIB32.unpadded(), 34091302912);
    }

    #[test]
    fn proof_numbers_match_go_state_types() {
        assert_eq!(RegisteredSealProof(5).info().unwrap().name, "StackedDrg2KiBV1_1");
        assert_eq!(RegisteredSealProof(8).info().unwrap().sector_size, SectorSize::GIB32);
        assert_eq!(RegisteredSealProof(3).info().unwrap().name, "StackedDrg32GiBV1");
        assert_eq!(RegisteredSealProof(13).info().unwrap().sector_size, SectorSize::GIB32);
        assert_eq!(RegisteredSealProof(16).info().unwrap().sector_size, SectorSize::MIB8);
        assert!(RegisteredSealProof(20).info().is_none());
        assert!(RegisteredSealProof(-1).info().is_none());
        assert_eq!(RegisteredSealProof::v1_1_for(SectorSize::MIB8), RegisteredSealProof(6));
        assert_eq!(RegisteredSealProof::from_name("StackedDrg64GiBV1_1"), Some(RegisteredSealProof(9)));
    }

    #[test]
    fn bytes_are_padded_base64() {
        let json = serde_json::to_string(&Bytes(vec![7])).unwrap();
        assert_eq!(json, "\"Bw==\"");
        let back: Bytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, vec![7]);
        assert!(serde_json::from_str::<Bytes>("\"***\"").is_err());
    }

    #[test]
    fn cids_reject_garbage() {
        let err = serde_json::from_str::<Cid>(r#"{"/":"not-a-cid"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid CID"), "{err}");
        let cids: SectorCids = serde_json::from_str(r#"{"Unsealed":null,"Sealed":null}"#).unwrap();
        assert_eq!(cids, SectorCids::default());
    }
}
