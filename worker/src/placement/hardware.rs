//! What this machine has: cores, memory, swap, OpenCL devices (GPUs) and
//! the free space of the worker's paths. Probed at start (and later in each
//! heartbeat, for placement).
//!
//! OpenCL is loaded at run time (`libOpenCL.so.1`, Debian
//! `ocl-icd-libopencl1`): a machine without a loader or without any ICD has
//! no OpenCL devices, which is reported, never fatal. The worker process
//! itself never loads OpenCL: it runs `sealfarm-worker probe --json` as a
//! child ([`probe_in_child`]), because an ICD changes the process it is
//! loaded into (PoCL's did: SIGTERM then killed the worker instead of
//! draining it) and a broken driver could crash it.

use std::path::Path;

use opencl3::device::{Device, CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_GPU};
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

pub use sealfarm_schemas::hardware::{Hardware, OpenClDevice, StorageSpace};

/// Probes the machine in a child process (`sealfarm-worker probe --json`);
/// if that fails, probes without OpenCL and says why.
pub fn probe_in_child(paths: &[&Path]) -> Hardware {
    let run = || -> Result<Hardware, String> {
        let program = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = std::process::Command::new(program);
        command.args(["probe", "--json"]);
        for path in paths {
            command.arg("--path").arg(path);
        }
        let out = command.stderr(std::process::Stdio::null()).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("the probe process ended with {}", out.status));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    };
    run().unwrap_or_else(|why| {
        let mut hw = probe_without_opencl(paths);
        hw.opencl_note = Some(format!("OpenCL probe failed: {why}"));
        hw
    })
}

fn probe_without_opencl(paths: &[&Path]) -> Hardware {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (memory_bytes, memory_used_bytes, swap_bytes, swap_used_bytes) =
        match System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::everything())) {
            Ok(system) => (system.total_memory(), system.used_memory(), system.total_swap(), system.used_swap()),
            Err(_) => (0, 0, 0, 0),
        };
    Hardware {
        cores,
        physical_cores: System::physical_core_count().ok(),
        memory_bytes,
        memory_used_bytes,
        swap_bytes,
        swap_used_bytes,
        opencl_devices: Vec::new(),
        opencl_note: None,
        storage: paths.iter().filter_map(|p| space(p)).collect(),
    }
}

/// `hw` with memory, swap and free space probed again (cheap: no OpenCL),
/// for `paths`.
pub fn refresh(hw: &Hardware, paths: &[&Path]) -> Hardware {
    let now = probe_without_opencl(paths);
    Hardware { opencl_devices: hw.opencl_devices.clone(), opencl_note: hw.opencl_note.clone(), ..now }
}

/// Probes the machine, OpenCL included, in this process (the `probe`
/// command); `paths` are the storage paths to report.
pub fn probe(paths: &[&Path]) -> Hardware {
    let (opencl_devices, opencl_note) = match opencl_devices() {
        Ok(devices) if devices.is_empty() => (devices, Some("no OpenCL device found".to_string())),
        Ok(devices) => (devices, None),
        Err(note) => (Vec::new(), Some(note)),
    };
    Hardware { opencl_devices, opencl_note, ..probe_without_opencl(paths) }
}

fn opencl_devices() -> Result<Vec<OpenClDevice>, String> {
    // A missing loader (libOpenCL.so.1) or no ICD at all is an error here, not a crash.
    let platforms = opencl3::platform::get_platforms().map_err(|e| {
        format!("no OpenCL platform ({e}); install an OpenCL ICD (GPU driver, or pocl-opencl-icd) to use GPUs")
    })?;
    let mut out = Vec::new();
    for platform in platforms {
        let platform_name = platform.name().unwrap_or_default();
        let Ok(ids) = platform.get_devices(CL_DEVICE_TYPE_ALL) else { continue };
        for id in ids {
            let device = Device::new(id);
            let kind = match device.dev_type().unwrap_or(0) {
                t if t & CL_DEVICE_TYPE_GPU != 0 => "gpu",
                t if t & CL_DEVICE_TYPE_CPU != 0 => "cpu",
                t if t & CL_DEVICE_TYPE_ACCELERATOR != 0 => "accelerator",
                _ => "other",
            };
            out.push(OpenClDevice {
                platform: platform_name.clone(),
                name: device.name().unwrap_or_default().trim().to_string(),
                vendor: device.vendor().unwrap_or_default().trim().to_string(),
                kind: kind.to_string(),
                memory_bytes: device.global_mem_size().unwrap_or(0),
            });
        }
    }
    Ok(out)
}

fn space(path: &Path) -> Option<StorageSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed statvfs to fill.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some(StorageSpace {
        path: path.to_path_buf(),
        total_bytes: stat.f_blocks as u64 * block,
        available_bytes: stat.f_bavail as u64 * block,
    })
}

/// The probe as a few lines for people.
pub fn describe(hw: &Hardware) -> Vec<String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut lines = vec![
        format!(
            "cores         {} logical{}",
            hw.cores,
            hw.physical_cores.map(|p| format!(", {p} physical")).unwrap_or_default()
        ),
        format!("memory        {:.1} GiB ({:.1} GiB used)", gib(hw.memory_bytes), gib(hw.memory_used_bytes)),
        format!("swap          {:.1} GiB ({:.1} GiB used)", gib(hw.swap_bytes), gib(hw.swap_used_bytes)),
    ];
    if hw.opencl_devices.is_empty() {
        lines.push(format!("opencl        none: {}", hw.opencl_note.as_deref().unwrap_or("")));
    }
    for d in &hw.opencl_devices {
        lines.push(format!(
            "opencl        {} {} ({}, {:.1} GiB, {})",
            d.kind,
            d.name,
            d.vendor,
            gib(d.memory_bytes),
            d.platform
        ));
    }
    for s in &hw.storage {
        lines.push(format!(
            "storage       {} {:.1} GiB free of {:.1} GiB",
            s.path.display(),
            gib(s.available_bytes),
            gib(s.total_bytes)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reports_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let hw = probe(&[dir.path()]);
        assert!(hw.cores >= 1);
        assert!(hw.memory_bytes > hw.memory_used_bytes && hw.memory_used_bytes > 0, "{hw:?}");
        assert_eq!(hw.storage.len(), 1);
        assert!(hw.storage[0].total_bytes >= hw.storage[0].available_bytes && hw.storage[0].available_bytes > 0);
        assert!(!hw.opencl_devices.is_empty() || hw.opencl_note.is_some(), "no devices without a reason");
    }
}
