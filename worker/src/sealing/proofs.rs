//! What a worker computes: each stage as the `filecoin-proofs-api` call lotus
//! itself makes, with inputs and outputs translated from and to the lotus wire
//! types.
//!
//! Everything here blocks (PC1 of a 32 GiB sector runs for hours). It runs in
//! the worker's executor process (see `super::executor`): [`execute`]
//! catches a panic of the library (it panics on some corrupt inputs), turns it
//! into a failed job, and tells the executor to end, because the library's
//! thread pools are not usable after a panic (a PC2 after a panicked PC2
//! hangs).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use filecoin_proofs_api::seal::{self, SealCommitPhase1Output, SealPreCommitPhase1Output, SealPreCommitPhase2Output};
use filecoin_proofs_api::{PieceInfo as ApiPieceInfo, SectorId as ApiSectorId, UnpaddedBytesAmount};
use sealfarm_schemas::blob::Payload;
use sealfarm_schemas::commitment::Commitment;
use sealfarm_schemas::lotus::Range;
use sealfarm_schemas::messages::PieceData;
use sealfarm_schemas::{Bytes, CallError, ErrorCode, PieceInfo, SectorCids, SectorRef, StageOutput, Task, TaskMessage};

use super::layout::SealingPath;
use super::snap;
use sealfarm_runtime::unsealed_file;

/// Key lotus adds to a PC1 output: the ticket, base64 (docs/LOTUS.md §8.3).
const LOTUS_SEAL_RANDOMNESS_KEY: &str = "_lotus_SealRandomness";
/// Folder of the sealing path that records, per sector, the ticket its
/// cache layers belong to. Outside `cache/`: lotus rejects a cache directory
/// holding any file the proofs library did not write (docs/LOTUS.md §9.3).
const TICKET_MARKERS: &str = "sealfarm/tickets";
/// Folder of the sealing path that marks, per sector, that a PC2 started:
/// PC2 encodes the sealed file in place, so a second PC2 over the same file
/// (after a crash, or a re-dispatch) first rebuilds it from the unsealed data.
const PC2_MARKERS: &str = "sealfarm/pc2";

/// The library's proof type for a lotus proof number.
pub fn api_proof(proof: sealfarm_schemas::RegisteredSealProof) -> Option<filecoin_proofs_api::RegisteredSealProof> {
    use filecoin_proofs_api::RegisteredSealProof::*;
    const ALL: [filecoin_proofs_api::RegisteredSealProof; 20] = [
        StackedDrg2KiBV1,
        StackedDrg8MiBV1,
        StackedDrg512MiBV1,
        StackedDrg32GiBV1,
        StackedDrg64GiBV1,
        StackedDrg2KiBV1_1,
        StackedDrg8MiBV1_1,
        StackedDrg512MiBV1_1,
        StackedDrg32GiBV1_1,
        StackedDrg64GiBV1_1,
        StackedDrg2KiBV1_1_Feat_SyntheticPoRep,
        StackedDrg8MiBV1_1_Feat_SyntheticPoRep,
        StackedDrg512MiBV1_1_Feat_SyntheticPoRep,
        StackedDrg32GiBV1_1_Feat_SyntheticPoRep,
        StackedDrg64GiBV1_1_Feat_SyntheticPoRep,
        StackedDrg2KiBV1_2_Feat_NonInteractivePoRep,
        StackedDrg8MiBV1_2_Feat_NonInteractivePoRep,
        StackedDrg512MiBV1_2_Feat_NonInteractivePoRep,
        StackedDrg32GiBV1_2_Feat_NonInteractivePoRep,
        StackedDrg64GiBV1_2_Feat_NonInteractivePoRep,
    ];
    usize::try_from(proof.0).ok().and_then(|i| ALL.get(i).copied())
}

/// How one run of a task ended.
pub struct Execution {
    pub outcome: Result<StageOutput, CallError>,
    /// The proofs library panicked: its process state (thread pools, locks)
    /// can no longer be trusted, so the process that ran it must end.
    pub panicked: bool,
}

/// Runs one task to completion, catching a panic of the proofs library.
pub fn execute(sealing: &SealingPath, task: &TaskMessage) -> Execution {
    match catch_unwind(AssertUnwindSafe(|| run_stage(sealing, task))) {
        Ok(Ok(output)) => Execution { outcome: Ok(output), panicked: false },
        Ok(Err(err)) => Execution { outcome: Err(call_error(&err)), panicked: false },
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let error = CallError::new(
                ErrorCode::UNKNOWN,
                format!("{} of {} failed: the proofs library panicked: {what}", task.stage(), task.sector.id),
            );
            Execution { outcome: Err(error), panicked: true }
        }
    }
}

/// A CallError for a failed stage: out of disk space is temporary (102, the
/// miner retries elsewhere); everything else is permanent (0).
fn call_error(err: &anyhow::Error) -> CallError {
    let out_of_space = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28))
    });
    let code = if out_of_space { ErrorCode::TEMP_ALLOCATE_SPACE } else { ErrorCode::UNKNOWN };
    CallError::new(code, format!("{err:#}"))
}

fn run_stage(sealing: &SealingPath, task: &TaskMessage) -> Result<StageOutput> {
    let sector = task.sector;
    let proof = api_proof(sector.proof_type).ok_or_else(|| anyhow!("unknown proof type {}", sector.proof_type.0))?;
    let stage = task.stage();
    let context = || format!("{stage} of {}", sector.id);
    match &task.task {
        Task::Ap { existing_piece_sizes, piece_size, data } => {
            add_piece(sealing, task, proof, existing_piece_sizes, *piece_size, data).with_context(context)
        }
        Task::Pc1 { ticket, pieces } => precommit1(sealing, sector, proof, ticket, pieces).with_context(context),
        Task::Pc2 { pc1_out } => precommit2(sealing, sector, proof, pc1_out).with_context(context),
        Task::C1 { ticket, seed, pieces, cids } => {
            commit1(sealing, sector, proof, ticket, seed, pieces, cids).with_context(context)
        }
        Task::C2 { c1_out } => commit2(sector, c1_out).with_context(context),
        Task::Fin {} => {
            seal::clear_cache(&sealing.cache(sector.id)).with_context(context)?;
            remove_if_present(&pc2_marker(sealing, sector)).with_context(context)?;
            Ok(StageOutput::Fin {})
        }
        Task::Ru { keep_unsealed } => {
            release_unsealed(&sealing.unsealed(sector.id), sector, keep_unsealed.as_deref().unwrap_or(&[]))
                .with_context(context)?;
            Ok(StageOutput::Ru {})
        }
        Task::Update { pieces } => snap::replica_update(sealing, sector, pieces).with_context(context),
        Task::Pr1 { sector_key, new_sealed, new_unsealed } => {
            snap::prove1(sealing, sector, [sector_key, new_sealed, new_unsealed]).with_context(context)
        }
        Task::Pr2 { sector_key, new_sealed, new_unsealed, vanilla_proofs } => {
            snap::prove2(sector, [sector_key, new_sealed, new_unsealed], inline(vanilla_proofs)?).with_context(context)
        }
        Task::Gsk { comm_d } => snap::regenerate_sector_key(sealing, sector, comm_d).with_context(context),
        Task::Fru {} => {
            seal::clear_cache(&sealing.cache(sector.id)).with_context(context)?;
            seal::clear_cache(&sealing.update_cache(sector.id)).with_context(context)?;
            Ok(StageOutput::Fru {})
        }
        Task::Unseal { offset, size, randomness, comm_d } => {
            snap::unseal(sealing, sector, proof, *offset, *size, randomness, comm_d).with_context(context)
        }
        Task::Dc { piece_size, data } => data_cid(sealing, task, proof, *piece_size, data).with_context(context),
        Task::Dl { sources, .. } => super::download::download(sealing, sector, sources).with_context(context),
    }
}

/// DataCid: the piece commitment of `piece_size` bytes, as AddPiece
/// computes it, without a sector.
fn data_cid(
    sealing: &SealingPath,
    task: &TaskMessage,
    proof: filecoin_proofs_api::RegisteredSealProof,
    piece_size: u64,
    data: &PieceData,
) -> Result<StageOutput> {
    let source = piece_source(sealing, task, data, piece_size)?;
    let info = seal::generate_piece_commitment(proof, source, UnpaddedBytesAmount(piece_size))?;
    Ok(StageOutput::Dc {
        piece: PieceInfo { size: padded(info.size.0), piece_cid: Commitment::Data.to_cid(&info.commitment) },
    })
}

/// Where a stage reads piece bytes from: `piece_size` bytes of them.
fn piece_source(sealing: &SealingPath, task: &TaskMessage, data: &PieceData, piece_size: u64) -> Result<Box<dyn Read>> {
    Ok(match data {
        PieceData::Null => Box::new(io::repeat(0).take(piece_size)),
        PieceData::Piece { id } => {
            let path = super::layout::piece_path(sealing.root(), task.bridge.as_deref(), *id);
            Box::new(
                File::open(&path).with_context(|| format!("opening piece data {}", path.display()))?.take(piece_size),
            )
        }
        PieceData::File { path } => {
            bail!("piece data named by file path ({path:?}) is refused; pieces are named by id")
        }
    })
}

fn add_piece(
    sealing: &SealingPath,
    task: &TaskMessage,
    proof: filecoin_proofs_api::RegisteredSealProof,
    existing: &[u64],
    piece_size: u64,
    data: &PieceData,
) -> Result<StageOutput> {
    let sector = task.sector;
    let path = sealing.unsealed(sector.id);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening unsealed file {}", path.display()))?;
    // The new piece goes after the existing ones; anything beyond them is a
    // leftover of an earlier attempt at this same call.
    let offset: u64 = existing.iter().map(|s| padded(*s)).sum();
    file.set_len(offset).with_context(|| format!("truncating {}", path.display()))?;
    file.seek(SeekFrom::Start(offset))?;
    let existing: Vec<UnpaddedBytesAmount> = existing.iter().map(|s| UnpaddedBytesAmount(*s)).collect();
    let source = piece_source(sealing, task, data, piece_size)?;
    let (info, _) = seal::add_piece(proof, source, &mut file, UnpaddedBytesAmount(piece_size), &existing)?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(StageOutput::Ap {
        piece: PieceInfo { size: padded(info.size.0), piece_cid: Commitment::Data.to_cid(&info.commitment) },
    })
}

fn precommit1(
    sealing: &SealingPath,
    sector: SectorRef,
    proof: filecoin_proofs_api::RegisteredSealProof,
    ticket: &Bytes,
    pieces: &[PieceInfo],
) -> Result<StageOutput> {
    let ticket32 = bytes32(ticket, "ticket")?;
    let pieces = api_pieces(pieces)?;
    let cache = sealing.cache(sector.id);
    let marker = sealing.root().join(TICKET_MARKERS).join(sector.id.file_name());
    prepare_cache_for_ticket(&cache, &marker, &ticket32)?;
    let sealed = sealing.sealed(sector.id);
    File::create(&sealed).with_context(|| format!("creating sealed file {}", sealed.display()))?;
    // PC1 copies the unsealed data into the sealed file afresh: a PC2 after it starts clean.
    remove_if_present(&pc2_marker(sealing, sector))?;
    // The library reuses any tree-d file it finds without checking it, and a
    // run killed while building it leaves a partial one (then PC1 fails with
    // "pieces and comm_d do not match"). It is cheap next to the layers: rebuild it.
    remove_if_present(&cache.join("sc-02-data-tree-d.dat"))?;
    let output = seal::seal_pre_commit_phase1(
        proof,
        &cache,
        sealing.unsealed(sector.id),
        &sealed,
        sector.id.prover_id(),
        ApiSectorId::from(sector.id.number),
        ticket32,
        &pieces,
    )?;
    let mut json = serde_json::to_value(&output).context("encoding the PC1 output")?;
    json[LOTUS_SEAL_RANDOMNESS_KEY] = serde_json::to_value(ticket)?;
    Ok(StageOutput::Pc1 { pc1_out: Bytes(serde_json::to_vec(&json)?) })
}

/// A sector's cache directory must hold layers of one ticket only: the
/// library reuses any layer file of the right length. Layers of another
/// ticket (a sector re-sealed after a failure) are removed.
fn prepare_cache_for_ticket(cache: &Path, marker: &Path, ticket: &[u8; 32]) -> Result<()> {
    let wanted = hex::encode(ticket);
    match std::fs::read_to_string(marker) {
        Ok(found) if found.trim() == wanted => {
            std::fs::create_dir_all(cache).with_context(|| format!("creating cache directory {}", cache.display()))?;
            return Ok(());
        }
        Ok(_) => {
            tracing::warn!(cache = %cache.display(), "cache holds layers of another ticket; removing them");
            std::fs::remove_dir_all(cache).with_context(|| format!("clearing {}", cache.display()))?;
        }
        Err(_) if cache.exists() => {
            std::fs::remove_dir_all(cache).with_context(|| format!("clearing {}", cache.display()))?;
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating cache directory {}", cache.display()))?;
    if let Some(folder) = marker.parent() {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    std::fs::write(marker, wanted).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// Parses the PC1 output lotus holds (rust-fil-proofs JSON plus lotus' own key).
pub fn parse_pc1_out(pc1_out: &Bytes) -> Result<SealPreCommitPhase1Output> {
    serde_json::from_slice(&pc1_out.0).context("the PC1 output is not a rust-fil-proofs PC1 output")
}

/// Parses a C1 output.
/// The bytes of a payload the worker put in place before the run.
fn inline(payload: &Payload) -> Result<&Bytes> {
    match payload {
        Payload::Inline(bytes) => Ok(bytes),
        Payload::Blob(blob) => bail!("blob {blob} was not fetched before the run"),
    }
}

pub fn parse_c1_out(c1_out: &Bytes) -> Result<SealCommitPhase1Output> {
    serde_json::from_slice(&c1_out.0).context("the C1 output is not a rust-fil-proofs C1 output")
}

fn precommit2(
    sealing: &SealingPath,
    sector: SectorRef,
    proof: filecoin_proofs_api::RegisteredSealProof,
    pc1_out: &Bytes,
) -> Result<StageOutput> {
    let pc1 = parse_pc1_out(pc1_out)?;
    ensure!(
        pc1.registered_proof == proof,
        "the PC1 output is for {:?}, the sector is sealed with {:?}",
        pc1.registered_proof,
        proof
    );
    let marker = pc2_marker(sealing, sector);
    if marker.exists() {
        tracing::warn!(sector = %sector.id, "an earlier PC2 of this sector started: rebuilding the sealed file before running it again");
        restore_replica(sealing, sector)?;
    } else {
        if let Some(folder) = marker.parent() {
            std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        }
        File::create(&marker).and_then(|f| f.sync_all()).with_context(|| format!("writing {}", marker.display()))?;
    }
    let out = seal::seal_pre_commit_phase2(pc1, sealing.cache(sector.id), sealing.sealed(sector.id))?;
    Ok(StageOutput::Pc2 {
        cids: SectorCids {
            unsealed: Some(Commitment::Data.to_cid(&out.comm_d)),
            sealed: Some(Commitment::Replica.to_cid(&out.comm_r)),
        },
    })
}

fn pc2_marker(sealing: &SealingPath, sector: SectorRef) -> std::path::PathBuf {
    sealing.root().join(PC2_MARKERS).join(sector.id.file_name())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

/// Puts the sealed file back to what PC1 left (the unsealed data, padded to
/// the sector size) and removes the trees and aux files of the earlier PC2,
/// so PC2 can run again over a file it had partly encoded.
fn restore_replica(sealing: &SealingPath, sector: SectorRef) -> Result<()> {
    let size = sector_bytes(sector)?;
    let (unsealed, sealed) = (sealing.unsealed(sector.id), sealing.sealed(sector.id));
    std::fs::copy(&unsealed, &sealed)
        .with_context(|| format!("copying {} to {}", unsealed.display(), sealed.display()))?;
    let file = OpenOptions::new().write(true).open(&sealed)?;
    file.set_len(size)?;
    file.sync_all()?;
    let cache = sealing.cache(sector.id);
    for entry in std::fs::read_dir(&cache).with_context(|| format!("reading {}", cache.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("sc-02-data-tree-c")
            || name.starts_with("sc-02-data-tree-r-last")
            || name == "p_aux"
            || name == "t_aux"
        {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn commit1(
    sealing: &SealingPath,
    sector: SectorRef,
    proof: filecoin_proofs_api::RegisteredSealProof,
    ticket: &Bytes,
    seed: &Bytes,
    pieces: &[PieceInfo],
    cids: &SectorCids,
) -> Result<StageOutput> {
    let comm_d = cids.unsealed.as_ref().ok_or_else(|| anyhow!("no unsealed CID (CommD) given"))?;
    let comm_r = cids.sealed.as_ref().ok_or_else(|| anyhow!("no sealed CID (CommR) given"))?;
    let pre_commit = SealPreCommitPhase2Output {
        registered_proof: proof,
        comm_r: Commitment::Replica.from_cid(comm_r).map_err(|e| anyhow!(e))?,
        comm_d: Commitment::Data.from_cid(comm_d).map_err(|e| anyhow!(e))?,
    };
    let out = seal::seal_commit_phase1(
        sealing.cache(sector.id),
        sealing.sealed(sector.id),
        sector.id.prover_id(),
        ApiSectorId::from(sector.id.number),
        bytes32(ticket, "ticket")?,
        bytes32(seed, "seed")?,
        pre_commit,
        &api_pieces(pieces)?,
    )?;
    let c1_out = Bytes(serde_json::to_vec(&out).context("encoding the C1 output")?);
    Ok(StageOutput::C1 { c1_out: Payload::Inline(c1_out) })
}

fn commit2(sector: SectorRef, c1_out: &Payload) -> Result<StageOutput> {
    let c1 = parse_c1_out(inline(c1_out)?)?;
    let out = seal::seal_commit_phase2(c1, sector.id.prover_id(), ApiSectorId::from(sector.id.number))?;
    Ok(StageOutput::C2 { proof: Bytes(out.proof) })
}

/// Removes the unsealed file, or with ranges to keep, frees everything else
/// as lotus does: holes punched, and the file's partial-file trailer
/// rewritten without the freed ranges (docs/LOTUS.md §9.7).
fn release_unsealed(path: &Path, sector: SectorRef, keep: &[Range]) -> Result<()> {
    if keep.is_empty() {
        return remove_if_present(path);
    }
    let size = sector_bytes(sector)?;
    let mut keep: Vec<(u64, u64)> = keep
        .iter()
        .map(|r| unsealed_file::padded_range(r.offset, r.size))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("a range to keep overflows: {keep:?}"))?;
    keep.sort_unstable();
    let mut free = Vec::new();
    let mut cursor = 0;
    for (start, end) in keep.into_iter().chain(std::iter::once((size, size))) {
        if start > cursor {
            free.push((cursor, start.min(size)));
        }
        cursor = cursor.max(end);
    }
    unsealed_file::free(path, size, &free).with_context(|| format!("releasing ranges {free:?} of {}", path.display()))
}

/// The sector size of a sector's proof type, in bytes.
pub(crate) fn sector_bytes(sector: SectorRef) -> Result<u64> {
    sector
        .proof_type
        .info()
        .map(|i| i.sector_size.0)
        .ok_or_else(|| anyhow!("unknown proof type {}", sector.proof_type.0))
}

/// Unpadded → padded (fr32: every 127 bytes take 128).
pub use sealfarm_runtime::unsealed_file::padded;

pub(crate) fn bytes32(bytes: &Bytes, what: &str) -> Result<[u8; 32]> {
    match <[u8; 32]>::try_from(bytes.0.as_slice()) {
        Ok(array) => Ok(array),
        Err(_) => bail!("the {what} must be 32 bytes, got {}", bytes.0.len()),
    }
}

pub(crate) fn api_pieces(pieces: &[PieceInfo]) -> Result<Vec<ApiPieceInfo>> {
    ensure!(!pieces.is_empty(), "no pieces given");
    pieces
        .iter()
        .map(|piece| {
            let commitment = Commitment::Data.from_cid(&piece.piece_cid).map_err(|e| anyhow!(e))?;
            ensure!(
                piece.size.is_power_of_two() && piece.size >= 128,
                "piece size {} is not a padded piece size",
                piece.size
            );
            Ok(ApiPieceInfo { commitment, size: UnpaddedBytesAmount(piece.size / 128 * 127) })
        })
        .collect()
}

/// Checks a task's inputs before a worker claims it, so that a task that
/// can never run is dead-lettered instead of failing later. Returns a
/// readable reason.
pub fn check_inputs(sealing: &SealingPath, task: &TaskMessage) -> Result<(), String> {
    let sector = task.sector;
    let size = sector.proof_type.info().map(|i| i.sector_size).ok_or("unknown proof type")?;
    let file = |path: std::path::PathBuf, what: &str| {
        if path.exists() {
            Ok(())
        } else {
            Err(format!("{what} {} does not exist", path.display()))
        }
    };
    let pieces_fill_sector = |pieces: &[PieceInfo]| {
        api_pieces(pieces).map_err(|e| format!("{e:#}"))?;
        // Checked: the sizes come from a broker message, and a sum that
        // wraps must not pass for a full sector (nor panic).
        match pieces.iter().try_fold(0u64, |sum, p| sum.checked_add(p.size)) {
            Some(total) if total == size.0 => Ok(()),
            Some(total) => Err(format!("pieces add up to {total} padded bytes, the sector holds {}", size.0)),
            None => Err("the piece sizes add up to more than 2^64 bytes".to_string()),
        }
    };
    let len32 = |bytes: &Bytes, what: &str| bytes32(bytes, what).map(|_| ()).map_err(|e| e.to_string());
    match &task.task {
        Task::Ap { existing_piece_sizes, piece_size, .. } => {
            let before = existing_piece_sizes.iter().fold(0u64, |sum, s| sum.saturating_add(*s));
            if *piece_size == 0 || before.saturating_add(*piece_size) > size.unpadded() {
                return Err(format!(
                    "piece of {piece_size} bytes after {before} bytes does not fit a {size} sector ({} unpadded bytes)",
                    size.unpadded()
                ));
            }
            if !existing_piece_sizes.is_empty() {
                file(sealing.unsealed(sector.id), "unsealed file")?;
            }
            Ok(())
        }
        Task::Pc1 { ticket, pieces } => {
            len32(ticket, "ticket")?;
            pieces_fill_sector(pieces)?;
            file(sealing.unsealed(sector.id), "unsealed file")
        }
        Task::Pc2 { pc1_out } => {
            parse_pc1_out(pc1_out).map_err(|e| format!("{e:#}"))?;
            file(sealing.cache(sector.id), "cache directory")?;
            file(sealing.sealed(sector.id), "sealed file")
        }
        Task::C1 { ticket, seed, pieces, cids } => {
            len32(ticket, "ticket")?;
            len32(seed, "seed")?;
            pieces_fill_sector(pieces)?;
            if cids.sealed.is_none() || cids.unsealed.is_none() {
                return Err("C1 needs both sector CIDs (Sealed and Unsealed)".into());
            }
            file(sealing.cache(sector.id), "cache directory")?;
            file(sealing.sealed(sector.id), "sealed file")
        }
        Task::C2 { c1_out: Payload::Inline(c1_out) } => parse_c1_out(c1_out).map(|_| ()).map_err(|e| format!("{e:#}")),
        // Fetched and checked when the job runs (a large C1 output is not read at intake).
        Task::C2 { c1_out: Payload::Blob(blob) } => blob.validate(),
        Task::Fin {} => file(sealing.cache(sector.id), "cache directory"),
        Task::Ru { .. } => Ok(()),
        Task::Update { pieces } => {
            pieces_fill_sector(pieces)?;
            file(sealing.unsealed(sector.id), "unsealed file (the deal data)")?;
            file(sealing.sealed(sector.id), "sealed file (the sector key)")?;
            file(sealing.cache(sector.id), "cache directory")
        }
        Task::Pr1 { .. } => {
            file(sealing.update(sector.id), "update file")?;
            file(sealing.update_cache(sector.id), "update-cache directory")?;
            file(sealing.sealed(sector.id), "sealed file (the sector key)")?;
            file(sealing.cache(sector.id), "cache directory")
        }
        Task::Pr2 { vanilla_proofs: Payload::Inline(text), .. } => {
            super::snap::parse_vanilla_proofs(text).map(|_| ()).map_err(|e| format!("{e:#}"))
        }
        Task::Pr2 { vanilla_proofs: Payload::Blob(blob), .. } => blob.validate(),
        Task::Gsk { .. } => {
            file(sealing.update(sector.id), "update file")?;
            file(sealing.cache(sector.id), "cache directory (the sector key's p_aux)")?;
            file(sealing.unsealed(sector.id), "unsealed file (the deal data)")
        }
        Task::Fru {} => file(sealing.update_cache(sector.id), "update-cache directory"),
        Task::Unseal { offset, size: len, randomness, .. } => {
            len32(randomness, "randomness (ticket)")?;
            unsealed_file::unseal_range(*offset, *len, size.0).map(|_| ())
        }
        Task::Dc { piece_size, .. } => {
            if *piece_size == 0 || *piece_size > size.unpadded() {
                return Err(format!("a piece of {piece_size} bytes does not fit a {size} sector"));
            }
            Ok(())
        }
        Task::Dl { sources, .. } => {
            if sources.is_empty() {
                return Err("DownloadSectorData names no file to download".into());
            }
            match sources.iter().find(|s| sealfarm_schemas::sector_store::file_type_bit(&s.file_type).is_none()) {
                Some(bad) => Err(format!("{:?} is not a sector file type", bad.file_type)),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealfarm_schemas::{RegisteredSealProof, SectorId};

    /// CommP of 2 KiB of zeros.
    const ZERO_2KIB: &str = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";

    fn sector() -> SectorRef {
        SectorRef { id: SectorId { miner: 1000, number: 1 }, proof_type: RegisteredSealProof::STACKED_DRG_2KIB_V1_1 }
    }

    /// Sizes from a broker message whose sum wraps are refused with a
    /// reason, never taken for a full sector and never a panic.
    #[test]
    fn sizes_that_overflow_are_refused_not_summed() {
        let dir = tempfile::tempdir().unwrap();
        let sealing = SealingPath::open(dir.path()).unwrap();
        let piece = |size| PieceInfo { size, piece_cid: ZERO_2KIB.parse().unwrap() };
        // 2^63 + 2^63 + 2048 wraps to exactly a 2 KiB sector's size.
        let pc1 = TaskMessage::new(
            sector(),
            Task::Pc1 { ticket: Bytes(vec![1; 32]), pieces: vec![piece(1 << 63), piece(1 << 63), piece(2048)] },
        );
        let err = check_inputs(&sealing, &pc1).unwrap_err();
        assert!(err.contains("more than 2^64"), "{err}");

        let ap = TaskMessage::new(
            sector(),
            Task::Ap { existing_piece_sizes: vec![u64::MAX, u64::MAX], piece_size: 1, data: PieceData::Null },
        );
        let err = check_inputs(&sealing, &ap).unwrap_err();
        assert!(err.contains("does not fit a 2KiB sector"), "{err}");
    }

    /// ReleaseUnsealed ranges from the miner that overflow when padded, or
    /// lie past the sector, are refused or clipped: never a panic of the
    /// process that runs the proofs (an offset near 2^64 panicked it).
    #[test]
    fn release_unsealed_refuses_ranges_that_overflow_and_clips_those_past_the_sector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-t01000-1");
        std::fs::write(&path, vec![1u8; 2048]).unwrap();
        unsealed_file::mark_allocated(&path, 2048, 0, 2048).unwrap();
        for (offset, size) in [(18_302_628_885_633_695_744, 1), (u64::MAX - 10, 100), (0, u64::MAX)] {
            let err = release_unsealed(&path, sector(), &[Range { offset, size }]).unwrap_err();
            assert!(err.to_string().contains("overflows"), "{err}");
        }
        // Past the sector: nothing there to keep, everything is released.
        release_unsealed(&path, sector(), &[Range { offset: 4000, size: 127 }]).unwrap();
        let allocation = unsealed_file::read_allocation(&path, 2048).unwrap().unwrap_or_default();
        assert_eq!(allocation.to_rle(), Vec::<u8>::new(), "no range left allocated");
    }
}
