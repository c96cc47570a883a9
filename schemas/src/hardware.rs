//! What a worker's machine has, as its heartbeats report it: cores, memory,
//! swap, OpenCL devices (GPUs) and the free space of its paths. The worker
//! probes it (`sealfarm-worker probe`); the bridge shows it and counts the
//! farm's capacity with it.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One probe of a machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Hardware {
    /// Logical CPUs the worker may use.
    pub cores: usize,
    /// Physical cores, when the OS tells.
    pub physical_cores: Option<usize>,
    pub memory_bytes: u64,
    pub memory_used_bytes: u64,
    pub swap_bytes: u64,
    pub swap_used_bytes: u64,
    /// Every OpenCL device of every platform.
    pub opencl_devices: Vec<OpenClDevice>,
    /// Why there are no OpenCL devices, when the probe could not list any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencl_note: Option<String>,
    pub storage: Vec<StorageSpace>,
}

/// An OpenCL device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpenClDevice {
    pub platform: String,
    pub name: String,
    pub vendor: String,
    /// `gpu`, `cpu`, `accelerator` or `other`.
    pub kind: String,
    pub memory_bytes: u64,
}

/// Size and free space of a path's file system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StorageSpace {
    pub path: PathBuf,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl Hardware {
    /// The OpenCL devices that are GPUs.
    pub fn gpus(&self) -> impl Iterator<Item = &OpenClDevice> {
        self.opencl_devices.iter().filter(|d| d.kind == "gpu")
    }
}
