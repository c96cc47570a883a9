//! Offline generation of insecure Groth parameters for test sector sizes.
//!
//! Real farms download the published parameters (see [`super`]); for the
//! test sizes (2 KiB, 8 MiB) the library can generate its own set with a
//! random toxic waste. Those parameters prove and verify locally but are
//! worthless on chain, which is why real sizes are refused. The calls are the
//! same ones the library's own `paramcache` tool makes: build the public
//! parameters for the proof's shape, then ask the parameter cache for the
//! Groth parameters and verifying key *with* a random source, which makes it
//! generate and store what is missing.

use anyhow::{Context, Result};
use filecoin_proofs::constants::DefaultPieceHasher;
use filecoin_proofs::parameters::public_params;
use filecoin_proofs::types::MerkleTreeTrait;
use filecoin_proofs::with_shape;
use filecoin_proofs_api::RegisteredSealProof;
use rand::rngs::OsRng;
use storage_proofs_core::compound_proof::CompoundProof;
use storage_proofs_core::parameter_cache::CacheableParameters;
use storage_proofs_porep::stacked::StackedCompound;

/// Generates (or finds already cached) the PoRep parameters of `proof`.
/// Blocks for a long time (≈17 min for 2 KiB on 2 cores).
pub fn generate_porep_params(proof: RegisteredSealProof) -> Result<()> {
    let config = proof.as_v1_config();
    let size = u64::from(config.sector_size);
    with_shape!(size, generate_for_shape, &config)
}

fn generate_for_shape<Tree: 'static + MerkleTreeTrait>(config: &filecoin_proofs::types::PoRepConfig) -> Result<()> {
    let pub_params = public_params::<Tree>(config).context("building public parameters")?;
    type Compound<T> = StackedCompound<T, DefaultPieceHasher>;
    let circuit = <Compound<Tree> as CompoundProof<_, _>>::blank_circuit(&pub_params);
    Compound::<Tree>::get_param_metadata(circuit.clone(), &pub_params).context("writing parameter metadata")?;
    Compound::<Tree>::get_groth_params(Some(&mut OsRng), circuit.clone(), &pub_params)
        .context("generating Groth parameters")?;
    Compound::<Tree>::get_verifying_key(Some(&mut OsRng), circuit, &pub_params)
        .context("generating the verifying key")?;
    Ok(())
}
