//! The commands that show what a worker has or would do, starting nothing:
//! `probe` (the hardware), `resources` (what `run` would take) and `jobs`
//! (the job store of a stopped worker).

use std::path::PathBuf;

use anyhow::Result;

use super::home_path;
use super::placement::PlacementArgs;
use crate::placement::{self, hardware};
use crate::service::job_store;

/// `sealfarm-worker probe`.
pub(super) fn probe(path: &[PathBuf], json: bool) -> Result<()> {
    let paths: Vec<&std::path::Path> = path.iter().map(|p| p.as_path()).collect();
    let hw = hardware::probe(&paths);
    if json {
        println!("{}", serde_json::to_string_pretty(&hw)?);
    } else {
        for line in hardware::describe(&hw) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `sealfarm-worker resources`.
pub(super) fn resources(args: &PlacementArgs, json: bool) -> Result<()> {
    let hw = hardware::probe_in_child(&[]);
    let plan = args.plan(&hw)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        for line in placement::describe(&plan) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `sealfarm-worker jobs`.
pub(super) fn jobs(state_dir: Option<PathBuf>, json: bool) -> Result<()> {
    let store = job_store::JobStore::open(&state_dir.unwrap_or_else(|| home_path("worker")))?;
    for record in store.all()? {
        if json {
            println!("{}", serde_json::to_string(&record)?);
            continue;
        }
        let state = serde_json::to_value(&record.state)?;
        println!(
            "{}  {:<4} {:<16} attempt {}  {}",
            record.task.call_id,
            record.task.stage().as_str(),
            record.task.sector.id.to_string(),
            record.task.attempt,
            state["state"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
