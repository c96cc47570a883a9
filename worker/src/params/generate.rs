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

use std::path::PathBuf;

use anyhow::{Context, Result};
use filecoin_proofs::constants::DefaultPieceHasher;
use filecoin_proofs::parameters::public_params;
use filecoin_proofs::types::{MerkleTreeTrait, TreeRHasher};
use filecoin_proofs::with_shape;
use filecoin_proofs_api::RegisteredSealProof;
use rand::rngs::OsRng;
use sealfarm_schemas::SectorSize;
use storage_proofs_core::compound_proof::CompoundProof;
use storage_proofs_core::parameter_cache::{
    parameter_cache_params_path, parameter_cache_verifying_key_path, CacheableParameters,
};
use storage_proofs_porep::stacked::StackedCompound;
use storage_proofs_update::{EmptySectorUpdateCompound, PublicParams as UpdatePublicParams};

/// The calls `paramcache` makes for one circuit (a `CompoundProof` type and
/// its public parameters): the metadata, then the Groth parameters and the
/// verifying key with a random source, generated and stored when missing. A
/// blank circuit for each call (the update circuit is not `Clone`).
macro_rules! generate_circuit {
    ($compound:ty, $pub_params:expr) => {{
        let pub_params = $pub_params;
        let blank = || <$compound as CompoundProof<_, _>>::blank_circuit(pub_params);
        <$compound>::get_param_metadata(blank(), pub_params).context("writing parameter metadata")?;
        <$compound>::get_groth_params(Some(&mut OsRng), blank(), pub_params).context("generating Groth parameters")?;
        <$compound>::get_verifying_key(Some(&mut OsRng), blank(), pub_params)
            .context("generating the verifying key")?;
        Ok(())
    }};
}

/// Generates (or finds already cached) the PoRep parameters of `proof`.
/// Blocks for a long time (≈17 min for 2 KiB on 2 cores).
pub fn generate_porep_params(proof: RegisteredSealProof) -> Result<()> {
    let config = proof.as_v1_config();
    let size = u64::from(config.sector_size);
    with_shape!(size, generate_for_shape, &config)
}

fn generate_for_shape<Tree: 'static + MerkleTreeTrait>(config: &filecoin_proofs::types::PoRepConfig) -> Result<()> {
    let pub_params = public_params::<Tree>(config).context("building public parameters")?;
    generate_circuit!(StackedCompound<Tree, DefaultPieceHasher>, &pub_params)
}

/// Generates (or finds already cached) the empty-sector-update (snap deal)
/// parameters of `size`: the circuit ProveReplicaUpdate2 proves with. Same
/// calls as the PoRep ones, on the update circuit's public parameters.
pub fn generate_update_params(size: SectorSize) -> Result<()> {
    with_shape!(size.0, generate_update_for_shape, size.0)
}

fn generate_update_for_shape<Tree: 'static + MerkleTreeTrait<Hasher = TreeRHasher>>(sector_bytes: u64) -> Result<()> {
    generate_circuit!(EmptySectorUpdateCompound<Tree>, &UpdatePublicParams::from_sector_size(sector_bytes))
}

/// Where the empty-sector-update parameters and verifying key of `size` are
/// (the file names hash the circuit's public parameters). Computed here:
/// `RegisteredUpdateProof::cache_params_path` of filecoin-proofs-api 19.1.0
/// answers the PoRep circuit's files instead.
pub fn update_param_paths(size: SectorSize) -> Result<(PathBuf, PathBuf)> {
    with_shape!(size.0, update_paths_for_shape, size.0)
}

fn update_paths_for_shape<Tree: 'static + MerkleTreeTrait<Hasher = TreeRHasher>>(
    sector_bytes: u64,
) -> Result<(PathBuf, PathBuf)> {
    let pub_params = UpdatePublicParams::from_sector_size(sector_bytes);
    let identifier = <EmptySectorUpdateCompound<Tree> as CacheableParameters<_, _>>::cache_identifier(&pub_params);
    Ok((parameter_cache_params_path(&identifier), parameter_cache_verifying_key_path(&identifier)))
}
