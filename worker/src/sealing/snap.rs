//! Snap deals (sector update) and unsealing: the `filecoin-proofs-api`
//! calls lotus' worker makes for ReplicaUpdate, ProveReplicaUpdate1/2,
//! GenerateSectorKeyFromData and UnsealPiece (docs/LOTUS.md §11), over the
//! lotus layout of the sealing path:
//!
//! * ReplicaUpdate reads `unsealed` (the deal data), `sealed` (the sector
//!   key) and `cache` (its `p_aux`/`t_aux`), writes `update` and
//!   `update-cache` (recreated empty first, as lotus does).
//! * ProveReplicaUpdate1 reads `sealed`, `cache`, `update`, `update-cache`.
//! * ProveReplicaUpdate2 reads no file: only the vanilla proofs.
//! * GenerateSectorKeyFromData writes `sealed` from `update` minus the
//!   `unsealed` data (and the sector key's tree into `cache`, whose p_aux
//!   it reads).
//! * UnsealPiece writes the range into `unsealed` (a partial file, created
//!   when missing) and marks it allocated: from `sealed` + `cache` for a
//!   sealed sector, or, when `update` exists, by decoding the whole snapped
//!   sector with the sector key, as lotus does.
//!
//! Like everything under `sealing`, these block and run in the executor.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};

use anyhow::{anyhow, ensure, Context, Result};
use filecoin_proofs_api::fr32::Fr32Reader;
use filecoin_proofs_api::seal;
use filecoin_proofs_api::update;
use filecoin_proofs_api::{
    PartitionProofBytes, RegisteredUpdateProof, SectorId as ApiSectorId, UnpaddedByteIndex, UnpaddedBytesAmount,
};
use sealfarm_runtime::unsealed_file;
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::lotus::ReplicaUpdateOut;
use sealfarm_schemas::{Bytes, Cid, PieceInfo, SectorRef, StageOutput};

use super::layout::SealingPath;
use super::proofs::{api_pieces, bytes32, sector_bytes};

/// The update proof of a sector's seal proof (one per sector size).
pub fn update_proof(sector: SectorRef) -> Result<RegisteredUpdateProof> {
    use RegisteredUpdateProof::*;
    const BY_SIZE: [RegisteredUpdateProof; 5] =
        [StackedDrg2KiBV1, StackedDrg8MiBV1, StackedDrg512MiBV1, StackedDrg32GiBV1, StackedDrg64GiBV1];
    let index =
        sector.proof_type.update_proof().ok_or_else(|| anyhow!("unknown proof type {}", sector.proof_type.0))?;
    Ok(BY_SIZE[index as usize])
}

/// `[sector key (old CommR), new CommR, new CommD]` as the library's commitments.
fn commitments(cids: [&Cid; 3]) -> Result<([u8; 32], [u8; 32], [u8; 32])> {
    let replica = |cid: &Cid, what: &str| Commitment::Replica.from_cid(cid).map_err(|e| anyhow!("{what}: {e}"));
    Ok((
        replica(cids[0], "sector key")?,
        replica(cids[1], "new sealed CID")?,
        Commitment::Data.from_cid(cids[2]).map_err(|e| anyhow!("new unsealed CID: {e}"))?,
    ))
}

/// Creates (or truncates) `path` at `len` bytes, sparse.
fn sized_file(path: &std::path::Path, len: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(len).with_context(|| format!("sizing {}", path.display()))?;
    Ok(())
}

/// ReplicaUpdate: encodes the deal data into the sector's replica.
pub fn replica_update(sealing: &SealingPath, sector: SectorRef, pieces: &[PieceInfo]) -> Result<StageOutput> {
    let proof = update_proof(sector)?;
    let id = sector.id;
    let (update, update_cache) = (sealing.update(id), sealing.update_cache(id));
    let sealed_len = std::fs::metadata(sealing.sealed(id))
        .with_context(|| format!("the sector key {} is missing", sealing.sealed(id).display()))?
        .len();
    if update_cache.exists() {
        std::fs::remove_dir_all(&update_cache).with_context(|| format!("clearing {}", update_cache.display()))?;
    }
    std::fs::create_dir_all(&update_cache).with_context(|| format!("creating {}", update_cache.display()))?;
    sized_file(&update, sealed_len)?;
    let encoded = update::empty_sector_update_encode_into(
        proof,
        &update,
        &update_cache,
        sealing.sealed(id),
        sealing.cache(id),
        sealing.unsealed(id),
        &api_pieces(pieces)?,
    )?;
    Ok(StageOutput::Update {
        out: ReplicaUpdateOut {
            new_sealed: Commitment::Replica.to_cid(&encoded.comm_r_new),
            new_unsealed: Commitment::Data.to_cid(&encoded.comm_d_new),
        },
    })
}

/// ProveReplicaUpdate1: the vanilla partition proofs, as the JSON array
/// of base64 strings lotus' `ReturnProveReplicaUpdate1` carries.
pub fn prove1(sealing: &SealingPath, sector: SectorRef, cids: [&Cid; 3]) -> Result<StageOutput> {
    let proof = update_proof(sector)?;
    let (old, new, data) = commitments(cids)?;
    let id = sector.id;
    let proofs = update::generate_partition_proofs(
        proof,
        old,
        new,
        data,
        sealing.sealed(id),
        sealing.cache(id),
        sealing.update(id),
        sealing.update_cache(id),
    )?;
    let as_bytes: Vec<Bytes> = proofs.into_iter().map(|p| Bytes(p.0)).collect();
    let json = serde_json::to_vec(&as_bytes).context("encoding the vanilla proofs")?;
    Ok(StageOutput::Pr1 { vanilla_proofs: sealfarm_schemas::blob::Payload::Inline(Bytes(json)) })
}

/// Parses ProveReplicaUpdate1's output (a JSON array of base64 strings).
pub fn parse_vanilla_proofs(text: &Bytes) -> Result<Vec<PartitionProofBytes>> {
    let proofs: Vec<Bytes> =
        serde_json::from_slice(&text.0).context("the vanilla proofs are not a JSON array of base64 strings")?;
    ensure!(!proofs.is_empty(), "no vanilla proofs given");
    Ok(proofs.into_iter().map(|p| PartitionProofBytes(p.0)).collect())
}

/// ProveReplicaUpdate2: the update SNARK from the vanilla proofs.
pub fn prove2(sector: SectorRef, cids: [&Cid; 3], vanilla: &Bytes) -> Result<StageOutput> {
    let proof = update_proof(sector)?;
    let (old, new, data) = commitments(cids)?;
    let vanilla = parse_vanilla_proofs(vanilla)?;
    let snark = update::generate_empty_sector_update_proof_with_vanilla(proof, vanilla, old, new, data)?;
    Ok(StageOutput::Pr2 { proof: Bytes(snark.0) })
}

/// GenerateSectorKeyFromData: rebuilds `sealed` from `update` and the data.
pub fn regenerate_sector_key(sealing: &SealingPath, sector: SectorRef, comm_d: &Cid) -> Result<StageOutput> {
    let proof = update_proof(sector)?;
    let comm_d = Commitment::Data.from_cid(comm_d).map_err(|e| anyhow!("CommD: {e}"))?;
    let id = sector.id;
    let update = sealing.update(id);
    let len = std::fs::metadata(&update).with_context(|| format!("the update {} is missing", update.display()))?.len();
    // Built aside and renamed into place whole: a key still there is not
    // lost to a failed run.
    let sealed = sealing.sealed(id);
    let building = sealing.root().join("sealfarm").join("regenerating").join(id.file_name());
    if let Some(folder) = building.parent() {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    sized_file(&building, len)?;
    // The "replica cache" the library reads p_aux from must be the sector
    // key's own cache: the update cache's p_aux names the new tree, and
    // the encoding's randomness comes from the old CommR (so the library's
    // own test calls it; docs/LOTUS.md §11.3). The key's tree is rewritten
    // into that same cache, identical.
    update::empty_sector_update_remove_encoded_data(
        proof,
        &building,
        sealing.cache(id),
        &update,
        sealing.cache(id),
        sealing.unsealed(id),
        comm_d,
    )?;
    File::open(&building).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", building.display()))?;
    std::fs::rename(&building, &sealed)
        .with_context(|| format!("moving {} to {}", building.display(), sealed.display()))?;
    Ok(StageOutput::Gsk {})
}

/// UnsealPiece: recreates `[offset, offset+size)` (unpadded) of the
/// unsealed file, unless it is allocated already.
pub fn unseal(
    sealing: &SealingPath,
    sector: SectorRef,
    seal_proof: filecoin_proofs_api::RegisteredSealProof,
    offset: u64,
    size: u64,
    randomness: &Bytes,
    comm_d: &Cid,
) -> Result<StageOutput> {
    let sector_size = sector_bytes(sector)?;
    let (start, end) = unsealed_file::unseal_range(offset, size, sector_size).map_err(|e| anyhow!(e))?;
    let id = sector.id;
    let unsealed = sealing.unsealed(id);
    let allocation = unsealed_file::read_allocation(&unsealed, sector_size)?;
    if allocation.as_ref().is_some_and(|a| a.covers(start, end)) {
        tracing::info!(sector = %id, offset, size, "the range is unsealed already");
        return Ok(StageOutput::Unseal {});
    }
    let comm_d_bytes = Commitment::Data.from_cid(comm_d).map_err(|e| anyhow!("CommD: {e}"))?;
    // The partial file must span the sector before anything is written into it.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&unsealed)
        .with_context(|| format!("opening {}", unsealed.display()))?;
    if file.metadata()?.len() < sector_size {
        // What was there stays allocated: record it before the file grows.
        unsealed_file::write_allocation(&mut file, sector_size, &allocation.unwrap_or_default())?;
    }
    let update = sealing.update(id);
    if update.exists() {
        // A snapped sector: the data is in `update`, decoded with the sector key.
        let key = sealing.sealed(id);
        ensure!(
            key.exists(),
            "sector {id} was snapped and its sector key ({}) is gone: it cannot be decoded here",
            key.display()
        );
        drop(file);
        update::empty_sector_update_decode_from(
            update_proof(sector)?,
            &unsealed,
            &update,
            &key,
            sealing.cache(id),
            comm_d_bytes,
        )?;
        unsealed_file::mark_allocated(&unsealed, sector_size, 0, sector_size)?;
        return Ok(StageOutput::Unseal {});
    }
    // A sealed sector: the range is unsealed unpadded from the replica and
    // padded again on its way into the file, through a pipe (bounded memory
    // whatever the size).
    let sealed = File::open(sealing.sealed(id)).with_context(|| format!("opening {}", sealing.sealed(id).display()))?;
    let ticket = bytes32(randomness, "ticket (randomness)")?;
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let cache = sealing.cache(id);
    let producer = std::thread::spawn(move || {
        seal::unseal_range(
            seal_proof,
            cache,
            sealed,
            writer,
            id.prover_id(),
            ApiSectorId::from(id.number),
            comm_d_bytes,
            ticket,
            UnpaddedByteIndex(offset),
            UnpaddedBytesAmount(size),
        )
    });
    file.seek(SeekFrom::Start(start))?;
    let mut padded_data = std::io::Read::take(Fr32Reader::new(reader), end - start);
    let copied = std::io::copy(&mut padded_data, &mut file);
    // The producer must see the pipe close if the copy stopped early.
    drop(padded_data);
    let unsealed_result = producer.join().map_err(|_| anyhow!("unsealing panicked"))?;
    unsealed_result?;
    let copied = copied.with_context(|| format!("writing {}", unsealed.display()))?;
    ensure!(copied == end - start, "unsealed {copied} padded bytes, expected {}", end - start);
    file.flush()?;
    file.sync_all()?;
    drop(file);
    unsealed_file::mark_allocated(&unsealed, sector_size, start, end)?;
    Ok(StageOutput::Unseal {})
}
