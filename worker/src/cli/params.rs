//! `sealfarm-worker params`: generate (test sizes), fetch (published) and
//! list Groth parameters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use sealfarm_schemas::{RegisteredSealProof, SectorSize};

use crate::params;
use crate::sealing::proofs;

#[derive(Subcommand, Debug)]
pub(super) enum ParamsCommand {
    /// Generate insecure local parameters for a test sector size, offline:
    /// the seal (C2) circuit's and the empty-sector-update (snap deal, PR2) one's.
    ///
    /// Proofs made with them verify locally and are worthless on chain, so only
    /// 2KiB, 8MiB and 512MiB are accepted. 2KiB takes about 17 minutes on 2 cores
    /// and writes about 1.1 GB; do it once per machine. Files already present
    /// are kept.
    Generate {
        #[arg(long)]
        sector_size: SectorSize,
        /// Which circuits: `seal` (C2), `update` (snap deals' PR2) or `all`.
        #[arg(long, value_enum, default_value_t = Circuit::All)]
        circuit: Circuit,
    },
    /// Download the published parameters of a sector size and check every digest.
    Fetch {
        #[arg(long)]
        sector_size: SectorSize,
        /// IPFS gateway to download from.
        #[arg(long, env = "IPFS_GATEWAY", default_value = params::DEFAULT_GATEWAY)]
        gateway: String,
        /// A parameters.json to use instead of the one built into the proofs library.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// List the seal parameters the cache holds.
    Status {
        /// Hash each file and say whether it is the published one (slow for big files).
        #[arg(long)]
        verify: bool,
    },
}

/// The circuits `params generate` makes parameters for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Circuit {
    /// The PoRep circuit (C2).
    Seal,
    /// The empty-sector-update circuit (snap deals, ProveReplicaUpdate2).
    Update,
    All,
}

pub(super) fn run_params(command: ParamsCommand) -> Result<()> {
    match command {
        ParamsCommand::Generate { sector_size, circuit } => {
            if !sector_size.is_test_size() {
                bail!(
                    "refusing to generate {sector_size} parameters: locally generated parameters make proofs the chain rejects; \
                     real sector sizes use the published ones (`sealfarm-worker params fetch --sector-size {sector_size}`)"
                );
            }
            let (params_path, vk_path) = params::seal_param_paths(sector_size)?;
            let (update_path, update_vk_path) = params::update_param_paths(sector_size)?;
            let seal_missing = circuit != Circuit::Update && !(params_path.exists() && vk_path.exists());
            let update_missing = circuit != Circuit::Seal && !(update_path.exists() && update_vk_path.exists());
            if !seal_missing && !update_missing {
                eprintln!(
                    "{sector_size} parameters ({circuit:?}) already present in {}",
                    params::cache_dir().display()
                );
                return Ok(());
            }
            std::fs::create_dir_all(params::cache_dir())
                .with_context(|| format!("cannot create parameter cache {}", params::cache_dir().display()))?;
            // Measured: 2 cores 13-20 min and 5-7 GB for either test size; 16 cores about 2 min.
            if seal_missing {
                eprintln!(
                    "generating {sector_size} seal parameters into {} (test sizes: 13-20 min on 2 cores, 5-7 GB RAM; \
                     about 2 min on 16 cores)",
                    params::cache_dir().display()
                );
            }
            let started = Instant::now();
            // A spinner with the time spent on a terminal; a line every 30 s in a log.
            let spinner = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
                let spinner = indicatif::ProgressBar::new_spinner();
                let style = indicatif::ProgressStyle::with_template("{spinner} generating {msg}: {elapsed} so far")
                    .expect("a valid template");
                spinner.set_style(style);
                spinner.set_message(sector_size.to_string());
                spinner.enable_steady_tick(Duration::from_millis(250));
                spinner
            });
            if spinner.is_none() {
                std::thread::spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(30));
                    eprintln!("  still generating: {:.0} s elapsed", started.elapsed().as_secs_f64());
                });
            }
            let proof = proofs::api_proof(RegisteredSealProof::v1_1_for(sector_size)).expect("known proof");
            let mut generated = Ok(());
            if seal_missing {
                generated = params::generate::generate_porep_params(proof);
                if generated.is_ok() {
                    eprintln!(
                        "seal parameters done in {:.0} s: {}",
                        started.elapsed().as_secs_f64(),
                        params_path.display()
                    );
                }
            }
            if generated.is_ok() && update_missing {
                eprintln!("generating {sector_size} empty-sector-update (snap deal) parameters");
                let update_started = Instant::now();
                generated = params::generate::generate_update_params(sector_size);
                if generated.is_ok() {
                    eprintln!(
                        "update parameters done in {:.0} s: {}",
                        update_started.elapsed().as_secs_f64(),
                        update_path.display()
                    );
                }
            }
            if let Some(spinner) = spinner {
                spinner.finish_and_clear();
            }
            generated
        }
        ParamsCommand::Fetch { sector_size, gateway, manifest } => {
            let manifest = params::manifest(manifest.as_deref())?;
            let outcomes = params::fetch(sector_size, &gateway, &manifest)?;
            eprintln!("{} files for {sector_size} in {}", outcomes.len(), params::cache_dir().display());
            Ok(())
        }
        ParamsCommand::Status { verify } => {
            let manifest = params::manifest(None)?;
            println!("parameter cache: {}", params::cache_dir().display());
            println!("{:<7} {:<8} {:>14}  {:<10} file", "size", "kind", "bytes", "origin");
            for line in params::status(verify, &manifest)? {
                let origin = match (line.bytes, line.published) {
                    (None, _) => "missing",
                    (Some(_), None) => "present",
                    (Some(_), Some(true)) => "published",
                    (Some(_), Some(false)) => "local",
                };
                let bytes = line.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
                let name = line.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                println!("{:<7} {:<8} {:>14}  {:<10} {name}", line.size.to_string(), line.kind, bytes, origin);
            }
            Ok(())
        }
    }
}
