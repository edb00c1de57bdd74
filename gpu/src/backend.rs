//! What a GPU backend reports: the [`Fingerprint`] of the machine's GPUs and their
//! [`GpuStats`]. Shared by the NVML backend and the simulated one, so everything
//! above the [`GpuBackend`] trait (conversion, reservation) is tested without a GPU.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::GpuError;

/// Most GPUs one node may report. The largest single hosts today carry 16 GPUs;
/// 64 leaves room and bounds every per-GPU loop (including NVLink peer mapping,
/// which is quadratic in this).
pub const GPUS_PER_NODE_MAX: u32 = 64;

/// Most MIG instances per GPU. NVIDIA's MIG allows at most 7 compute slices per
/// GPU today; 16 bounds the loop if a future GPU allows more.
pub const MIG_INSTANCES_PER_GPU_MAX: u32 = 16;

/// Everything a backend knows about the machine's GPUs, gathered in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Kernel driver version, e.g. `550.54.15`.
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, e.g. `12.4`.
    pub cuda_driver_version: Option<String>,
    /// In device index order.
    pub gpus: Vec<GpuInfo>,
}

impl Fingerprint {
    /// The GPU with this uuid.
    pub fn gpu(&self, uuid: &str) -> Option<&GpuInfo> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }

    /// The GPU owning this instance id: the GPU itself, or the parent of a MIG instance.
    pub fn gpu_of_instance(&self, instance_id: &str) -> Option<&GpuInfo> {
        self.gpus.iter().find(|g| g.uuid == instance_id || g.mig_instances.iter().any(|m| m.uuid == instance_id))
    }

    /// Where each MIG instance sits, by its UUID: what a driver needs to find
    /// the instance's capability device nodes. An instance whose parent's
    /// minor number or whose GPU or compute instance id is unknown is left
    /// out, so a task assigned it is denied it rather than given a guess.
    pub fn mig_placements(&self) -> BTreeMap<String, MigPlacement> {
        let mut placements = BTreeMap::new();
        for gpu in &self.gpus {
            let Some(parent_minor) = gpu.minor_number else { continue };
            for mig in &gpu.mig_instances {
                let (Some(gpu_instance_id), Some(compute_instance_id)) = (mig.gpu_instance_id, mig.compute_instance_id)
                else {
                    continue;
                };
                placements
                    .insert(mig.uuid.clone(), MigPlacement { parent_minor, gpu_instance_id, compute_instance_id });
            }
        }
        placements
    }
}

/// One physical GPU. A field the device does not offer is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML's device index (the order `nvidia-smi` lists).
    pub index: u32,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H200`.
    pub model: Option<String>,
    pub memory_mib: Option<u64>,
    pub power_limit_w: Option<u32>,
    pub bar1_mib: Option<u64>,
    /// CUDA compute capability `major.minor`, e.g. `9.0`.
    pub compute_capability: Option<String>,
    pub sm_clock_mhz_max: Option<u32>,
    pub memory_clock_mhz_max: Option<u32>,
    /// `00000000:18:00.0`, as NVML spells it.
    pub pci_bus_id: Option<String>,
    pub pcie_generation_max: Option<u32>,
    pub pcie_link_width_max: Option<u32>,
    pub numa_node: Option<u16>,
    /// The `N` of `/dev/nvidiaN`.
    pub minor_number: Option<u32>,
    pub persistence_mode: Option<bool>,
    /// Whether a physical display is connected (NVML's display mode).
    pub display_mode: Option<bool>,
    pub mig_enabled: bool,
    /// The MIG instances, when `mig_enabled`.
    pub mig_instances: Vec<MigInstance>,
    /// UUIDs of the GPUs this one reaches over NVLink (directly or through an NVSwitch).
    pub nvlink_peers: Vec<String>,
    pub health: Health,
}

impl GpuInfo {
    /// A GPU with only its identity known; every other field absent, healthy.
    pub fn new(index: u32, uuid: impl Into<String>) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.into(),
            model: None,
            memory_mib: None,
            power_limit_w: None,
            bar1_mib: None,
            compute_capability: None,
            sm_clock_mhz_max: None,
            memory_clock_mhz_max: None,
            pci_bus_id: None,
            pcie_generation_max: None,
            pcie_link_width_max: None,
            numa_node: None,
            minor_number: None,
            persistence_mode: None,
            display_mode: None,
            mig_enabled: false,
            mig_instances: Vec::new(),
            nvlink_peers: Vec::new(),
            health: Health::Healthy,
        }
    }

    /// PCIe bandwidth of the widest, fastest link the GPU supports, in MB/s.
    pub fn pci_bandwidth_mb_per_s(&self) -> Option<u64> {
        pci_bandwidth_mb_per_s(self.pcie_generation_max?, self.pcie_link_width_max?)
    }
}

/// One MIG instance (a slice of a GPU that is scheduled on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigInstance {
    /// `MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// The GPU instance profile, e.g. `1g.18gb`.
    pub profile: String,
    pub memory_mib: Option<u64>,
    /// The GPU instance (NVML's `GetGpuInstanceId`): the `gi<G>` of the
    /// driver's `/proc/driver/nvidia-caps/mig-minors`.
    pub gpu_instance_id: Option<u32>,
    /// The compute instance within the GPU instance (NVML's
    /// `GetComputeInstanceId`): the `ci<C>` of `mig-minors`.
    pub compute_instance_id: Option<u32>,
}

/// Where a MIG instance sits: its parent GPU's `/dev/nvidiaN` minor and its
/// GPU and compute instance ids, which name its capabilities in the driver's
/// `mig-minors` (`gpu<parent_minor>/gi<G>/access`, `gpu<parent_minor>/gi<G>/ci<C>/access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigPlacement {
    pub parent_minor: u32,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy {
        reason: String,
    },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Empty when healthy, else the reason.
    pub fn description(&self) -> &str {
        match self {
            Health::Healthy => "",
            Health::Unhealthy { reason } => reason,
        }
    }
}

/// A GPU that turned unhealthy since the last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub uuid: String,
    pub reason: String,
}

/// Live usage of one device instance (a whole GPU or a MIG instance); a value
/// the device does not report, or whose query failed, is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuStats {
    /// The instance id: a GPU's `GPU-…` or a MIG instance's `MIG-…` UUID.
    pub uuid: String,
    /// Percent of the last sample period in which a kernel ran.
    pub utilization_percent: Option<u32>,
    /// Percent of the last sample period in which device memory was read or written.
    pub memory_utilization_percent: Option<u32>,
    pub memory_used_mib: Option<u64>,
    pub memory_total_mib: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<u32>,
    /// The power management limit, the denominator of `power_w`.
    pub power_limit_w: Option<u32>,
}

impl GpuStats {
    /// Stats with every value unknown.
    pub fn unknown(uuid: impl Into<String>) -> GpuStats {
        GpuStats {
            uuid: uuid.into(),
            utilization_percent: None,
            memory_utilization_percent: None,
            memory_used_mib: None,
            memory_total_mib: None,
            temperature_c: None,
            power_w: None,
            power_limit_w: None,
        }
    }
}

/// A source of GPU facts: NVML on a real machine, or a simulation.
pub trait GpuBackend: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`nvml`, `simulated`).
    fn name(&self) -> &'static str;

    /// Every GPU with its static facts and current health.
    fn fingerprint(&self) -> Result<Fingerprint, GpuError>;

    /// Live usage of every device instance: each whole GPU, then (for a GPU in
    /// MIG mode) each of its MIG instances, which NVML reports only memory for.
    /// A value a device does not report is `None`; the call fails only when the
    /// device list itself cannot be read.
    fn stats(&self) -> Result<Vec<GpuStats>, GpuError>;

    /// Waits up to `timeout` for health events (NVML: critical XID errors) and
    /// returns the GPUs that turned unhealthy; later fingerprints report them so.
    fn poll_health(&self, timeout: Duration) -> Result<Vec<HealthEvent>, GpuError>;
}

/// Bandwidth of a PCIe link in MB/s: `lanes × per-lane rate`.
///
/// Per-lane rates follow Nomad's NVIDIA plugin for generations 3 (1024 MB/s) and 4
/// (2048 MB/s), so constraints written for Nomad keep their meaning; from there each
/// generation doubles, as the PCIe specification does (Nomad's 3072 MB/s for
/// generation 5 is below the spec). Generations 1 and 2 are 250 and 500 MB/s.
pub fn pci_bandwidth_mb_per_s(generation: u32, link_width: u32) -> Option<u64> {
    let per_lane_mb_per_s: u64 = match generation {
        1 => 250,
        2 => 500,
        3..=7 => 1024 << (generation - 3),
        _ => return None,
    };
    Some(per_lane_mb_per_s * u64::from(link_width))
}
