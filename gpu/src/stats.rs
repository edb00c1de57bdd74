//! Live device usage grouped as the node's devices are: one group per
//! `nvidia/gpu/<model>` (or `<model> MIG <profile>`) device group of
//! [`to_node_devices`](crate::to_node_devices), each instance's [`GpuStats`]
//! under its instance id. What the HTTP API's `DeviceStats` are built from.

use std::collections::BTreeMap;

use crate::backend::{Fingerprint, GpuStats};
use crate::convert::{KIND_GPU, MODEL_NOT_AVAILABLE, VENDOR_NVIDIA};

/// The usage of one device group's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatsGroup {
    pub vendor: String,
    pub kind: String,
    /// The group's name, as in the node's device groups.
    pub name: String,
    /// In fingerprint order; only instances the backend reported stats for.
    pub instances: Vec<GpuStats>,
}

/// Groups `stats` by the device group each instance belongs to in `fp`, as
/// [`to_node_devices`](crate::to_node_devices) forms them: whole GPUs by
/// model and memory; a GPU in MIG mode is not a device itself (its stats are
/// left out), its MIG instances are, grouped by profile. Instances in
/// `ignored_gpu_ids` (or whose GPU is) and stats of instances `fp` does not
/// know are left out. Groups sorted by name, then memory.
pub fn group_stats(fp: &Fingerprint, stats: &[GpuStats], ignored_gpu_ids: &[String]) -> Vec<DeviceStatsGroup> {
    let ignored = |uuid: &str| ignored_gpu_ids.iter().any(|id| id == uuid);
    let stats_of = |uuid: &str| stats.iter().find(|s| s.uuid == uuid);
    let mut groups: BTreeMap<(String, Option<u64>), DeviceStatsGroup> = BTreeMap::new();
    let mut add = |name: String, memory_mib: Option<u64>, one: &GpuStats| {
        groups
            .entry((name.clone(), memory_mib))
            .or_insert_with(|| DeviceStatsGroup {
                vendor: VENDOR_NVIDIA.to_owned(),
                kind: KIND_GPU.to_owned(),
                name,
                instances: Vec::new(),
            })
            .instances
            .push(one.clone());
    };
    for gpu in fp.gpus.iter().filter(|g| !ignored(&g.uuid)) {
        let model = gpu.model.as_deref().unwrap_or(MODEL_NOT_AVAILABLE);
        if gpu.mig_enabled {
            for mig in gpu.mig_instances.iter().filter(|m| !ignored(&m.uuid)) {
                if let Some(one) = stats_of(&mig.uuid) {
                    add(format!("{model} MIG {}", mig.profile), mig.memory_mib, one);
                }
            }
        } else if let Some(one) = stats_of(&gpu.uuid) {
            add(model.to_owned(), gpu.memory_mib, one);
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulated::{MigLayout, SimulatedGpus};

    #[test]
    fn whole_gpus_form_one_group_per_model_and_ignored_ones_are_left_out() {
        let config = SimulatedGpus { count: 4, numa_nodes: 1, load_percent: 40, ..SimulatedGpus::h200_8x() };
        let fp = config.fingerprint();
        let stats = config.stats();
        let groups = group_stats(&fp, &stats, &[fp.gpus[1].uuid.clone()]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].name, "NVIDIA H200");
        assert_eq!((groups[0].vendor.as_str(), groups[0].kind.as_str()), ("nvidia", "gpu"));
        let ids: Vec<&str> = groups[0].instances.iter().map(|s| s.uuid.as_str()).collect();
        assert_eq!(ids, [&fp.gpus[0].uuid, &fp.gpus[2].uuid, &fp.gpus[3].uuid]);
        assert_eq!(groups[0].instances[0].utilization_percent, Some(40));
        // Stats of an instance the fingerprint does not know are dropped.
        let stranger = GpuStats::unknown("GPU-stranger");
        assert_eq!(group_stats(&fp, &[stranger], &[]), []);
    }

    #[test]
    fn mig_instances_are_grouped_by_profile_and_their_gpu_is_not_a_device() {
        let config = SimulatedGpus {
            count: 2,
            numa_nodes: 1,
            nvlink_island_size: 0,
            mig: Some(MigLayout { profile: "3g.71gb".into(), slices_per_gpu: 2, memory_mib_per_slice: 71_000 }),
            load_percent: 50,
            ..SimulatedGpus::h200_8x()
        };
        let fp = config.fingerprint();
        let groups = group_stats(&fp, &config.stats(), &[]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].name, "NVIDIA H200 MIG 3g.71gb");
        assert_eq!(groups[0].instances.len(), 4);
        assert!(groups[0].instances.iter().all(|s| s.uuid.starts_with("MIG-")));
        assert_eq!(groups[0].instances[0].memory_used_mib, Some(35_500));
        assert_eq!(groups[0].instances[0].memory_total_mib, Some(71_000));
        assert_eq!(groups[0].instances[0].utilization_percent, None);
    }
}
