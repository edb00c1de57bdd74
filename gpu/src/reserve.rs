//! What a task driver needs to give a task exactly the GPUs the scheduler assigned
//! it: visible-device environment variables, a Docker device request, and the
//! device nodes to allow in an exec driver's device cgroup.

use std::path::PathBuf;

use caravan_engine::model::AssignedDevice;

use crate::GpuError;
use crate::backend::Fingerprint;
use crate::convert::VENDOR_NVIDIA;

/// The character device major of `/dev/nvidia*`, fixed by the NVIDIA driver.
pub const NVIDIA_DEVICE_MAJOR: u32 = 195;
/// The minor of `/dev/nvidiactl`, which every CUDA process opens.
pub const NVIDIACTL_MINOR: u32 = 255;
/// Where the kernel lists character device majors; `nvidia-uvm`'s is dynamic.
pub const PROC_DEVICES_PATH: &str = "/proc/devices";

/// The instance UUIDs of the task's NVIDIA devices, in assignment order, once each.
fn nvidia_instance_ids(assigned: &[AssignedDevice]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for device in assigned.iter().filter(|d| &*d.vendor == VENDOR_NVIDIA) {
        for id in &device.instance_ids {
            if !ids.iter().any(|seen| seen == &**id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// `NVIDIA_VISIBLE_DEVICES` (read by the NVIDIA container runtime) and
/// `CUDA_VISIBLE_DEVICES` (read by CUDA itself, which accepts UUIDs), both the
/// comma-joined UUIDs. Empty when the task has no NVIDIA device; what a task
/// without GPUs may see is the driver's policy.
pub fn visible_devices_env(assigned: &[AssignedDevice]) -> Vec<(String, String)> {
    let ids = nvidia_instance_ids(assigned);
    if ids.is_empty() {
        return Vec::new();
    }
    let joined = ids.join(",");
    vec![("NVIDIA_VISIBLE_DEVICES".to_owned(), joined.clone()), ("CUDA_VISIBLE_DEVICES".to_owned(), joined)]
}

/// Docker's `DeviceRequest` (the API's `HostConfig.DeviceRequests[]`), without
/// depending on a Docker client crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerDeviceRequest {
    pub driver: String,
    pub device_ids: Vec<String>,
    /// Alternatives of capability sets; `[["gpu"]]` asks for GPU support.
    pub capabilities: Vec<Vec<String>>,
}

/// The request that gives a container exactly the assigned GPUs; `None` when the
/// task has no NVIDIA device (an empty request would still invoke the NVIDIA
/// runtime hook, which fails on hosts without it).
pub fn docker_device_request(assigned: &[AssignedDevice]) -> Option<DockerDeviceRequest> {
    let device_ids = nvidia_instance_ids(assigned);
    if device_ids.is_empty() {
        return None;
    }
    Some(DockerDeviceRequest {
        driver: VENDOR_NVIDIA.to_owned(),
        device_ids,
        capabilities: vec![vec!["gpu".to_owned()]],
    })
}

/// A character device to allow in a device cgroup (`c major:minor rw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

/// The device nodes a task needs for its assigned GPUs: `/dev/nvidiaN` of each
/// GPU (a MIG instance maps to its parent GPU's node), `/dev/nvidiactl`, and
/// `/dev/nvidia-uvm` + `/dev/nvidia-uvm-tools` when `/proc/devices` names their
/// major. Empty when the task has no NVIDIA device. Fails when an assigned
/// instance is not in `fp`, or its GPU's minor number is unknown: running the
/// task without its GPU would be worse than not running it.
pub fn device_cgroup_rules(fp: &Fingerprint, assigned: &[AssignedDevice]) -> Result<Vec<DeviceNode>, GpuError> {
    let proc_devices = std::fs::read_to_string(PROC_DEVICES_PATH).ok();
    device_nodes(fp, assigned, proc_devices.as_deref())
}

/// [`device_cgroup_rules`] with `/proc/devices` given as text (`None`: not present).
pub fn device_nodes(
    fp: &Fingerprint,
    assigned: &[AssignedDevice],
    proc_devices: Option<&str>,
) -> Result<Vec<DeviceNode>, GpuError> {
    let ids = nvidia_instance_ids(assigned);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut nodes: Vec<DeviceNode> = Vec::new();
    for id in &ids {
        let gpu = fp.gpu_of_instance(id).ok_or_else(|| GpuError::UnknownInstance { instance_id: id.clone() })?;
        let minor = gpu.minor_number.ok_or_else(|| GpuError::NoMinorNumber { uuid: gpu.uuid.clone() })?;
        // Two MIG slices of one GPU share its node.
        if !nodes.iter().any(|n| n.minor == minor) {
            nodes.push(nvidia_node(format!("/dev/nvidia{minor}"), minor));
        }
    }
    nodes.push(nvidia_node("/dev/nvidiactl".to_owned(), NVIDIACTL_MINOR));
    if let Some(major) = proc_devices.and_then(|text| character_major(text, "nvidia-uvm")) {
        nodes.push(DeviceNode { path: "/dev/nvidia-uvm".into(), major, minor: 0 });
        nodes.push(DeviceNode { path: "/dev/nvidia-uvm-tools".into(), major, minor: 1 });
    }
    Ok(nodes)
}

fn nvidia_node(path: String, minor: u32) -> DeviceNode {
    DeviceNode { path: path.into(), major: NVIDIA_DEVICE_MAJOR, minor }
}

/// The major of character device `name` in `/proc/devices` text
/// (`Character devices:` then `major name` lines, then `Block devices:`).
pub fn character_major(proc_devices: &str, name: &str) -> Option<u32> {
    proc_devices
        .lines()
        .skip_while(|line| !line.starts_with("Character devices"))
        .take_while(|line| !line.starts_with("Block devices"))
        .map(str::trim)
        .filter_map(|line| line.split_once(char::is_whitespace).map(|(a, b)| (a.trim(), b.trim())))
        .find(|(_, device)| *device == name)
        .and_then(|(major, _)| major.parse().ok())
}
