//! A [`Fingerprint`] in the engine's device model: Nomad's NVIDIA device groups.
//!
//! Whole GPUs of one model and memory size form one `nvidia/gpu/<model>` group;
//! each MIG profile forms a group `<model> MIG <profile>` whose instances are the
//! slices, and a GPU in MIG mode is not offered whole. Attribute names and units
//! are those of Nomad's NVIDIA device plugin, plus `cuda_driver_version` and
//! `compute_capability`, which Nomad lacks and ML jobs constrain on.

use std::collections::BTreeMap;
use std::sync::Arc;

use caravan_engine::model::{DeviceAttribute, DeviceInstance, NodeDeviceResource};

use crate::backend::{Fingerprint, GpuInfo, MigInstance};

pub const VENDOR_NVIDIA: &str = "nvidia";
pub const KIND_GPU: &str = "gpu";
/// The group name of GPUs whose model NVML could not read, as Nomad names it.
pub const MODEL_NOT_AVAILABLE: &str = "notAvailable";

/// The node's NVIDIA device groups, sorted by name; instances in GPU index order.
/// GPUs and MIG instances whose UUID is in `ignored_gpu_ids` are left out; ignoring
/// a GPU in MIG mode also leaves out its slices.
pub fn to_node_devices(fp: &Fingerprint, ignored_gpu_ids: &[String]) -> Vec<NodeDeviceResource> {
    let ignored = |uuid: &str| ignored_gpu_ids.iter().any(|id| id == uuid);
    let islands = link_islands(fp);
    // Keyed by (name, memory) so same-named GPUs of different memory sizes stay apart.
    let mut groups: BTreeMap<(String, Option<u64>), NodeDeviceResource> = BTreeMap::new();
    for (gpu, island) in fp.gpus.iter().zip(&islands) {
        if ignored(&gpu.uuid) {
            continue;
        }
        let model = gpu.model.as_deref().unwrap_or(MODEL_NOT_AVAILABLE);
        if gpu.mig_enabled {
            for mig in gpu.mig_instances.iter().filter(|m| !ignored(&m.uuid)) {
                let name = format!("{model} MIG {}", mig.profile);
                groups
                    .entry((name.clone(), mig.memory_mib))
                    .or_insert_with(|| new_group(&name, mig_attributes(fp, gpu, mig)))
                    .instances
                    .push(instance(&mig.uuid, gpu, None));
            }
        } else {
            groups
                .entry((model.to_owned(), gpu.memory_mib))
                .or_insert_with(|| new_group(model, gpu_attributes(fp, gpu)))
                .instances
                .push(instance(&gpu.uuid, gpu, *island));
        }
    }
    groups.into_values().collect()
}

fn new_group(name: &str, attributes: BTreeMap<Arc<str>, DeviceAttribute>) -> NodeDeviceResource {
    NodeDeviceResource {
        vendor: VENDOR_NVIDIA.into(),
        kind: KIND_GPU.into(),
        name: name.into(),
        attributes,
        instances: Vec::new(),
    }
}

fn instance(id: &str, gpu: &GpuInfo, link_island: Option<u16>) -> DeviceInstance {
    DeviceInstance {
        id: id.into(),
        healthy: gpu.health.is_healthy(),
        health_description: gpu.health.description().into(),
        pci_bus_id: gpu.pci_bus_id.as_deref().map(Arc::from),
        numa_node: gpu.numa_node,
        link_island,
    }
}

/// A group's attributes come from its first GPU, as in Nomad: GPUs of one model
/// and memory size are assumed alike in power, clocks and link.
fn gpu_attributes(fp: &Fingerprint, gpu: &GpuInfo) -> BTreeMap<Arc<str>, DeviceAttribute> {
    let mut attributes = common_attributes(fp, gpu);
    insert_int(&mut attributes, "memory", gpu.memory_mib, "MiB");
    insert_int(&mut attributes, "power", gpu.power_limit_w.map(u64::from), "W");
    insert_int(&mut attributes, "bar1", gpu.bar1_mib, "MiB");
    insert_int(&mut attributes, "cores_clock", gpu.sm_clock_mhz_max.map(u64::from), "MHz");
    insert_int(&mut attributes, "memory_clock", gpu.memory_clock_mhz_max.map(u64::from), "MHz");
    insert_int(&mut attributes, "pci_bandwidth", gpu.pci_bandwidth_mb_per_s(), "MB/s");
    // Nomad always sets these two, as text.
    attributes.insert("display_state".into(), DeviceAttribute::String(enabled_text(gpu.display_mode).into()));
    attributes.insert("persistence_mode".into(), DeviceAttribute::String(enabled_text(gpu.persistence_mode).into()));
    attributes
}

/// A MIG slice shares its parent's driver and architecture but has its own memory.
fn mig_attributes(fp: &Fingerprint, gpu: &GpuInfo, mig: &MigInstance) -> BTreeMap<Arc<str>, DeviceAttribute> {
    let mut attributes = common_attributes(fp, gpu);
    insert_int(&mut attributes, "memory", mig.memory_mib, "MiB");
    attributes.insert("mig_profile".into(), DeviceAttribute::String(mig.profile.as_str().into()));
    attributes
}

fn common_attributes(fp: &Fingerprint, gpu: &GpuInfo) -> BTreeMap<Arc<str>, DeviceAttribute> {
    let mut attributes = BTreeMap::new();
    let strings = [
        ("driver_version", fp.driver_version.as_deref()),
        ("cuda_driver_version", fp.cuda_driver_version.as_deref()),
        ("compute_capability", gpu.compute_capability.as_deref()),
    ];
    for (key, value) in strings {
        if let Some(value) = value {
            attributes.insert(Arc::from(key), DeviceAttribute::String(value.into()));
        }
    }
    attributes
}

fn insert_int(attributes: &mut BTreeMap<Arc<str>, DeviceAttribute>, key: &str, value: Option<u64>, unit: &str) {
    if let Some(value) = value.and_then(|v| i64::try_from(v).ok()) {
        attributes.insert(key.into(), DeviceAttribute::Int { value, unit: Some(unit.into()) });
    }
}

fn enabled_text(mode: Option<bool>) -> &'static str {
    match mode {
        Some(true) => "Enabled",
        Some(false) => "Disabled",
        None => "Unknown",
    }
}

/// Each GPU's NVLink island: the connected components of the NVLink peer graph,
/// numbered in order of their lowest-index GPU. A GPU without NVLink peers has
/// none. Computed on the whole fingerprint, so ignoring a GPU renumbers nothing.
pub fn link_islands(fp: &Fingerprint) -> Vec<Option<u16>> {
    let count = fp.gpus.len();
    let position = |uuid: &str| fp.gpus.iter().position(|g| g.uuid == uuid);
    // Union-find over GPU positions; peers that are not GPUs of this fingerprint are skipped.
    let mut parent: Vec<usize> = (0..count).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut linked = vec![false; count];
    for (i, gpu) in fp.gpus.iter().enumerate() {
        for j in gpu.nvlink_peers.iter().filter_map(|peer| position(peer)).filter(|&j| j != i) {
            linked[i] = true;
            linked[j] = true;
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut island_of_root: BTreeMap<usize, u16> = BTreeMap::new();
    (0..count)
        .map(|i| {
            if !linked[i] {
                return None;
            }
            let r = root(&mut parent, i);
            let next = u16::try_from(island_of_root.len()).ok()?;
            Some(*island_of_root.entry(r).or_insert(next))
        })
        .collect()
}
