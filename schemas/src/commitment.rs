//! Conversions between the proofs library's 32-byte commitments and the CIDs
//! lotus puts on the wire (go-fil-commcid): CommD/CommP as
//! fil-commitment-unsealed + sha2-256-trunc254-padded, CommR as
//! fil-commitment-sealed + poseidon-bls12_381-a2-fc1.

use crate::lotus::Cid;

/// Multicodec fil-commitment-unsealed (CommD, CommP).
pub const FIL_COMMITMENT_UNSEALED: u64 = 0xf101;
/// Multicodec fil-commitment-sealed (CommR).
pub const FIL_COMMITMENT_SEALED: u64 = 0xf102;
/// Multihash sha2-256-trunc254-padded.
pub const SHA2_256_TRUNC254_PADDED: u64 = 0x1012;
/// Multihash poseidon-bls12_381-a2-fc1.
pub const POSEIDON_BLS12_381_A1_FC1: u64 = 0xb401;

/// Which commitment a CID carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commitment {
    /// CommD of a sector or CommP of a piece.
    Data,
    /// CommR of a sealed replica.
    Replica,
}

impl Commitment {
    fn codes(self) -> (u64, u64) {
        match self {
            Commitment::Data => (FIL_COMMITMENT_UNSEALED, SHA2_256_TRUNC254_PADDED),
            Commitment::Replica => (FIL_COMMITMENT_SEALED, POSEIDON_BLS12_381_A1_FC1),
        }
    }

    /// The CID lotus uses for a commitment of this kind.
    pub fn to_cid(self, commitment: &[u8; 32]) -> Cid {
        let (codec, hash) = self.codes();
        let multihash =
            cid::multihash::Multihash::<64>::wrap(hash, commitment).expect("32 bytes always fit a 64-byte multihash");
        Cid::new(cid::Cid::new_v1(codec, multihash))
    }

    /// The 32-byte commitment inside a CID, checking codec and hash function.
    pub fn from_cid(self, cid: &Cid) -> Result<[u8; 32], String> {
        let (codec, hash) = self.codes();
        let inner = cid.inner();
        if inner.codec() != codec || inner.hash().code() != hash {
            return Err(format!(
                "CID {cid} is not a {:?} commitment (codec {:#x}, hash {:#x}; expected {codec:#x}, {hash:#x})",
                self,
                inner.codec(),
                inner.hash().code()
            ));
        }
        inner.hash().digest().try_into().map_err(|_| format!("CID {cid} does not hold a 32-byte commitment"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CommD of an all-zero 2 KiB sector (docs/LOTUS.md §8.4).
    const ZERO_2KIB: &str = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";

    #[test]
    fn round_trips_the_zero_commitment_of_2kib() {
        let cid: Cid = ZERO_2KIB.parse().unwrap();
        let bytes = Commitment::Data.from_cid(&cid).unwrap();
        assert_eq!(Commitment::Data.to_cid(&bytes).to_string(), ZERO_2KIB);
        let err = Commitment::Replica.from_cid(&cid).unwrap_err();
        assert!(err.contains("not a Replica commitment"), "{err}");
    }

    #[test]
    fn replica_cids_use_the_sealed_codec() {
        let cid = Commitment::Replica.to_cid(&[1u8; 32]);
        assert!(cid.to_string().starts_with("bagboea4b5abc"), "{cid}");
        assert_eq!(Commitment::Replica.from_cid(&cid).unwrap(), [1u8; 32]);
    }
}
