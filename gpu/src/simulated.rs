//! A simulated GPU machine: deterministic fingerprints for tests and for the perf
//! fleet simulator, which builds 10,000+ nodes whose GPU UUIDs must all differ
//! and must be the same on every run (they derive from a seed and the host name).

use std::time::Duration;

use crate::GpuError;
use crate::backend::{
    Fingerprint, GPUS_PER_NODE_MAX, GpuBackend, GpuInfo, GpuStats, Health, HealthEvent, MIG_INSTANCES_PER_GPU_MAX,
    MigInstance,
};

/// The reason an unhealthy simulated GPU gives (XID 79 is NVIDIA's "GPU has fallen
/// off the bus", the failure most often seen in large fleets).
pub const SIMULATED_UNHEALTHY_REASON: &str = "simulated XID 79: GPU has fallen off the bus";

/// Most NUMA nodes a simulated host may have; real two- and four-socket hosts have
/// up to 8 (sub-NUMA clustering), and `numa_node` is a `u16` in the engine.
pub const SIMULATED_NUMA_NODES_MAX: u32 = 8;

/// How the GPUs of a simulated machine are sliced when MIG mode is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigLayout {
    /// e.g. `1g.18gb`.
    pub profile: String,
    pub slices_per_gpu: u32,
    pub memory_mib_per_slice: u64,
}

/// A simulated machine's GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedGpus {
    pub model: String,
    pub count: u32,
    pub memory_mib: u64,
    pub power_w: u32,
    pub bar1_mib: u64,
    pub compute_capability: String,
    pub sm_clock_mhz_max: u32,
    pub memory_clock_mhz_max: u32,
    pub pcie_generation: u32,
    pub pcie_link_width: u32,
    /// GPUs `[k*size, (k+1)*size)` are linked by NVLink; 0 means no NVLink.
    pub nvlink_island_size: u32,
    /// The GPUs split evenly, in index order, across this many NUMA nodes.
    pub numa_nodes: u32,
    pub mig: Option<MigLayout>,
    /// Indexes of the GPUs reported unhealthy.
    pub unhealthy: Vec<u32>,
    /// How busy every simulated GPU is, 0 to 100: the source of [`GpuBackend::stats`]
    /// (see [`SimulatedGpus::stats`]). 0, idle, by default.
    pub load_percent: u32,
    pub driver_version: String,
    pub cuda_driver_version: String,
    /// With `host`, the source of the UUIDs.
    pub seed: u64,
    pub host: String,
}

impl SimulatedGpus {
    /// An 8 × NVIDIA H200 (141 GB HBM3e) HGX board: two NVLink islands of 4, GPUs
    /// 0-3 on NUMA node 0 and 4-7 on node 1.
    pub fn h200_8x() -> SimulatedGpus {
        SimulatedGpus {
            model: "NVIDIA H200".to_owned(),
            count: 8,
            memory_mib: 143_771,
            power_w: 700,
            bar1_mib: 262_144,
            compute_capability: "9.0".to_owned(),
            sm_clock_mhz_max: 1980,
            memory_clock_mhz_max: 3201,
            pcie_generation: 5,
            pcie_link_width: 16,
            nvlink_island_size: 4,
            numa_nodes: 2,
            mig: None,
            unhealthy: Vec::new(),
            load_percent: 0,
            driver_version: "550.90.07".to_owned(),
            cuda_driver_version: "12.4".to_owned(),
            seed: 0,
            host: "sim-node-0".to_owned(),
        }
    }

    /// Every problem with this configuration; empty when it is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.model.trim().is_empty() {
            problems.push("model is empty".to_owned());
        }
        if self.count == 0 {
            problems.push("count is 0; a machine without GPUs needs no simulated backend".to_owned());
        }
        if self.count > GPUS_PER_NODE_MAX {
            problems.push(format!("count {} is above the limit of {GPUS_PER_NODE_MAX} GPUs per node", self.count));
        }
        if self.memory_mib == 0 {
            problems.push("memory_mib is 0".to_owned());
        }
        if self.nvlink_island_size > 0 && self.count > 0 && !self.count.is_multiple_of(self.nvlink_island_size) {
            problems
                .push(format!("nvlink_island_size {} does not divide count {}", self.nvlink_island_size, self.count));
        }
        if self.numa_nodes == 0 {
            problems.push("numa_nodes is 0; every machine has at least one".to_owned());
        } else if self.numa_nodes > SIMULATED_NUMA_NODES_MAX {
            problems.push(format!("numa_nodes {} is above the limit of {SIMULATED_NUMA_NODES_MAX}", self.numa_nodes));
        } else if self.count > 0 && !self.count.is_multiple_of(self.numa_nodes) {
            problems.push(format!("numa_nodes {} does not divide count {}", self.numa_nodes, self.count));
        }
        if crate::backend::pci_bandwidth_mb_per_s(self.pcie_generation, self.pcie_link_width).is_none() {
            problems.push(format!("pcie_generation {} is not a PCIe generation (1 to 7)", self.pcie_generation));
        }
        if let Some(mig) = &self.mig {
            if mig.profile.trim().is_empty() {
                problems.push("mig profile is empty".to_owned());
            }
            if mig.slices_per_gpu == 0 || mig.slices_per_gpu > MIG_INSTANCES_PER_GPU_MAX {
                problems.push(format!(
                    "mig slices_per_gpu {} is not between 1 and {MIG_INSTANCES_PER_GPU_MAX}",
                    mig.slices_per_gpu
                ));
            }
            if mig.memory_mib_per_slice == 0 {
                problems.push("mig memory_mib_per_slice is 0".to_owned());
            }
            let sliced_mib = mig.memory_mib_per_slice.saturating_mul(u64::from(mig.slices_per_gpu));
            if sliced_mib > self.memory_mib {
                problems.push(format!("mig slices take {sliced_mib} MiB, more than the GPU's {} MiB", self.memory_mib));
            }
        }
        if self.load_percent > 100 {
            problems.push(format!("load_percent {} is above 100", self.load_percent));
        }
        for &index in &self.unhealthy {
            if index >= self.count {
                problems.push(format!("unhealthy GPU index {index} is not below count {}", self.count));
            }
        }
        problems
    }

    /// A configuration from `key = value` pairs (the agent maps its HCL block onto
    /// these), starting from [`SimulatedGpus::h200_8x`]. Every bad pair is listed.
    ///
    /// Keys: `model`, `count`, `memory_mib`, `power_w`, `bar1_mib`,
    /// `compute_capability`, `sm_clock_mhz_max`, `memory_clock_mhz_max`,
    /// `pcie_generation`, `pcie_link_width`, `nvlink_island_size`, `numa_nodes`,
    /// `mig_profile`, `mig_slices_per_gpu`, `mig_memory_mib_per_slice` (all three
    /// or none), `unhealthy` (comma-separated indexes), `driver_version`,
    /// `cuda_driver_version`, `seed`, `host`, `load_percent`.
    pub fn from_key_values<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<SimulatedGpus, GpuError> {
        let mut config = SimulatedGpus::h200_8x();
        let mut problems = Vec::new();
        let (mut mig_profile, mut mig_slices, mut mig_memory) = (None, None, None);
        for (key, value) in pairs {
            let (key, value) = (key.trim(), value.trim());
            match key {
                "model" => config.model = value.to_owned(),
                "compute_capability" => config.compute_capability = value.to_owned(),
                "driver_version" => config.driver_version = value.to_owned(),
                "cuda_driver_version" => config.cuda_driver_version = value.to_owned(),
                "host" => config.host = value.to_owned(),
                "mig_profile" => mig_profile = Some(value.to_owned()),
                "unhealthy" => {
                    config.unhealthy.clear();
                    for index in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        match index.parse::<u32>() {
                            Ok(i) => config.unhealthy.push(i),
                            Err(_) => problems.push(format!("unhealthy index {index:?} is not an integer")),
                        }
                    }
                }
                _ => {
                    let Some(slot) = config.number_slot(key, &mut mig_slices, &mut mig_memory) else {
                        problems.push(format!("unknown key {key:?}"));
                        continue;
                    };
                    if let Err(problem) = slot.set(value) {
                        problems.push(format!("{key} = {value:?}: {problem}"));
                    }
                }
            }
        }
        match (mig_profile, mig_slices, mig_memory) {
            (None, None, None) => {}
            (Some(profile), Some(slices_per_gpu), Some(memory_mib_per_slice)) => {
                config.mig = Some(MigLayout { profile, slices_per_gpu, memory_mib_per_slice })
            }
            _ => problems
                .push("mig_profile, mig_slices_per_gpu and mig_memory_mib_per_slice must be given together".to_owned()),
        }
        problems.extend(config.validate());
        if problems.is_empty() { Ok(config) } else { Err(GpuError::InvalidSimulatedConfig { problems }) }
    }

    /// Where the numeric key `key` is stored, if it is one.
    fn number_slot<'s>(
        &'s mut self,
        key: &str,
        mig_slices: &'s mut Option<u32>,
        mig_memory: &'s mut Option<u64>,
    ) -> Option<NumberSlot<'s>> {
        Some(match key {
            "count" => NumberSlot::U32(&mut self.count),
            "power_w" => NumberSlot::U32(&mut self.power_w),
            "sm_clock_mhz_max" => NumberSlot::U32(&mut self.sm_clock_mhz_max),
            "memory_clock_mhz_max" => NumberSlot::U32(&mut self.memory_clock_mhz_max),
            "pcie_generation" => NumberSlot::U32(&mut self.pcie_generation),
            "pcie_link_width" => NumberSlot::U32(&mut self.pcie_link_width),
            "nvlink_island_size" => NumberSlot::U32(&mut self.nvlink_island_size),
            "numa_nodes" => NumberSlot::U32(&mut self.numa_nodes),
            "load_percent" => NumberSlot::U32(&mut self.load_percent),
            "memory_mib" => NumberSlot::U64(&mut self.memory_mib),
            "bar1_mib" => NumberSlot::U64(&mut self.bar1_mib),
            "seed" => NumberSlot::U64(&mut self.seed),
            "mig_slices_per_gpu" => NumberSlot::OptionU32(mig_slices),
            "mig_memory_mib_per_slice" => NumberSlot::OptionU64(mig_memory),
            _ => return None,
        })
    }

    /// The fingerprint this configuration describes. Assumes `validate()` is empty.
    pub fn fingerprint(&self) -> Fingerprint {
        let gpus_per_numa_node = (self.count / self.numa_nodes.max(1)).max(1);
        let gpus = (0..self.count)
            .map(|index| {
                let mut gpu = GpuInfo::new(index, self.uuid("GPU", index, 0));
                gpu.model = Some(self.model.clone());
                gpu.memory_mib = Some(self.memory_mib);
                gpu.power_limit_w = Some(self.power_w);
                gpu.bar1_mib = Some(self.bar1_mib);
                gpu.compute_capability = Some(self.compute_capability.clone());
                gpu.sm_clock_mhz_max = Some(self.sm_clock_mhz_max);
                gpu.memory_clock_mhz_max = Some(self.memory_clock_mhz_max);
                // One bus per GPU, as on HGX boards where each GPU sits behind its own switch port.
                gpu.pci_bus_id = Some(format!("00000000:{:02X}:00.0", 0x10 + index * 0x10));
                gpu.pcie_generation_max = Some(self.pcie_generation);
                gpu.pcie_link_width_max = Some(self.pcie_link_width);
                gpu.numa_node = u16::try_from(index / gpus_per_numa_node).ok();
                gpu.minor_number = Some(index);
                gpu.persistence_mode = Some(true);
                gpu.display_mode = Some(false);
                if let Some(mig) = &self.mig {
                    gpu.mig_enabled = true;
                    // GPU instances 1, 2, … in slice order, each holding one
                    // compute instance 0 (what `nvidia-smi mig -cgi … -C` makes).
                    gpu.mig_instances = (0..mig.slices_per_gpu)
                        .map(|slice| MigInstance {
                            uuid: self.uuid("MIG", index, slice + 1),
                            profile: mig.profile.clone(),
                            memory_mib: Some(mig.memory_mib_per_slice),
                            gpu_instance_id: Some(slice + 1),
                            compute_instance_id: Some(0),
                        })
                        .collect();
                }
                if self.nvlink_island_size > 0 {
                    let first = index - index % self.nvlink_island_size;
                    gpu.nvlink_peers = (first..first + self.nvlink_island_size)
                        .filter(|&peer| peer != index)
                        .map(|peer| self.uuid("GPU", peer, 0))
                        .collect();
                }
                if self.unhealthy.contains(&index) {
                    gpu.health = Health::Unhealthy { reason: SIMULATED_UNHEALTHY_REASON.to_owned() };
                }
                gpu
            })
            .collect();
        Fingerprint {
            driver_version: Some(self.driver_version.clone()),
            cuda_driver_version: Some(self.cuda_driver_version.clone()),
            gpus,
        }
    }

    /// The live usage this configuration describes, derived from `load_percent`
    /// (`L`) alone so that it is the same on every call:
    ///
    /// - a whole GPU: utilization `L`%, memory utilization `L/2`%, memory used
    ///   `memory_mib × L / 100` of `memory_mib`, temperature `30 + L × 55 / 100` °C
    ///   (30 idle, 85 flat out), power `power_w / 10 + (power_w − power_w / 10) × L / 100`
    ///   W of `power_w` (a tenth of the limit idle, the limit flat out);
    /// - a MIG instance: memory used `memory_mib_per_slice × L / 100` of
    ///   `memory_mib_per_slice`, nothing else (NVML reports only memory for MIG).
    ///
    /// Every GPU of the machine reports the same values; assumes `validate()` is empty.
    pub fn stats(&self) -> Vec<GpuStats> {
        let load = u64::from(self.load_percent.min(100));
        let idle_power_w = self.power_w / 10;
        let mut stats = Vec::new();
        for gpu in self.fingerprint().gpus {
            let mig_instances = gpu.mig_instances.clone();
            stats.push(GpuStats {
                uuid: gpu.uuid,
                utilization_percent: Some(self.load_percent.min(100)),
                memory_utilization_percent: Some(self.load_percent.min(100) / 2),
                memory_used_mib: Some(self.memory_mib.saturating_mul(load) / 100),
                memory_total_mib: Some(self.memory_mib),
                temperature_c: Some(30 + self.load_percent.min(100) * 55 / 100),
                power_w: Some(idle_power_w + (self.power_w - idle_power_w) * self.load_percent.min(100) / 100),
                power_limit_w: Some(self.power_w),
            });
            for mig in mig_instances {
                let mut one = GpuStats::unknown(mig.uuid);
                one.memory_total_mib = mig.memory_mib;
                one.memory_used_mib = mig.memory_mib.map(|m| m.saturating_mul(load) / 100);
                stats.push(one);
            }
        }
        stats
    }

    /// `PREFIX-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` from (seed, host, GPU index, slice).
    fn uuid(&self, prefix: &str, index: u32, slice: u32) -> String {
        let mut hash = FNV_OFFSET_BASIS;
        for byte in self.seed.to_le_bytes().iter().chain(self.host.as_bytes()).chain(&index.to_le_bytes()) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
        hash ^= u64::from(slice);
        let high = splitmix64(hash);
        let low = splitmix64(high);
        format!(
            "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        )
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Mixes the FNV hash so nearby inputs give unrelated UUIDs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A numeric field of [`SimulatedGpus`] being parsed.
enum NumberSlot<'s> {
    U32(&'s mut u32),
    U64(&'s mut u64),
    OptionU32(&'s mut Option<u32>),
    OptionU64(&'s mut Option<u64>),
}

impl NumberSlot<'_> {
    fn set(self, value: &str) -> Result<(), String> {
        let parse_error = |e: std::num::ParseIntError| format!("not a non-negative integer ({e})");
        match self {
            NumberSlot::U32(slot) => *slot = value.parse().map_err(parse_error)?,
            NumberSlot::U64(slot) => *slot = value.parse().map_err(parse_error)?,
            NumberSlot::OptionU32(slot) => *slot = Some(value.parse().map_err(parse_error)?),
            NumberSlot::OptionU64(slot) => *slot = Some(value.parse().map_err(parse_error)?),
        }
        Ok(())
    }
}

/// A [`GpuBackend`] answering from a [`SimulatedGpus`] configuration.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    config: SimulatedGpus,
}

impl SimulatedBackend {
    /// Fails with every problem of an invalid configuration.
    pub fn new(config: SimulatedGpus) -> Result<SimulatedBackend, GpuError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(GpuError::InvalidSimulatedConfig { problems });
        }
        Ok(SimulatedBackend { config })
    }

    pub fn config(&self) -> &SimulatedGpus {
        &self.config
    }
}

impl GpuBackend for SimulatedBackend {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn fingerprint(&self) -> Result<Fingerprint, GpuError> {
        Ok(self.config.fingerprint())
    }

    /// [`SimulatedGpus::stats`]: values derived from `load_percent`.
    fn stats(&self) -> Result<Vec<GpuStats>, GpuError> {
        Ok(self.config.stats())
    }

    /// Simulated health never changes: the configured unhealthy GPUs are
    /// unhealthy from the first fingerprint on.
    fn poll_health(&self, _timeout: Duration) -> Result<Vec<HealthEvent>, GpuError> {
        Ok(Vec::new())
    }
}
