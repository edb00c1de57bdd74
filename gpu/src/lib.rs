//! GPU support for client agents.
//!
//! - [`GpuBackend`] reports a [`Fingerprint`] (every GPU's model, memory, clocks,
//!   PCIe link, NUMA node, MIG instances, NVLink peers, health) and [`GpuStats`].
//!   [`NvmlBackend`] asks NVML, loaded at run time, so machines without NVIDIA
//!   drivers build, run and report no GPUs; [`SimulatedBackend`] answers from a
//!   [`SimulatedGpus`] configuration (tests, the perf fleet simulator).
//! - [`to_node_devices`] converts a fingerprint into the engine's
//!   `NodeDeviceResource` groups, in the shape of Nomad's NVIDIA device plugin.
//! - [`group_stats`] groups live [`GpuStats`] as the node's device groups are
//!   ([`Fingerprinter::device_stats`]), for the API's `DeviceStats`.
//! - [`Fingerprinter`] picks the backend from a [`GpuConfig`] for the agent, and
//!   publishes each fingerprint's MIG placements (parent minor, GPU and compute
//!   instance ids) to a [`MigIndex`] the `exec` driver reads.
//! - [`reserve`] gives a task its assigned GPUs: visible-device environment
//!   variables, a Docker device request, device cgroup nodes.
//!
//! ```
//! use caravan_gpu::{GpuBackend, SimulatedBackend, SimulatedGpus, to_node_devices};
//!
//! let backend = SimulatedBackend::new(SimulatedGpus::h200_8x()).unwrap();
//! let fingerprint = backend.fingerprint().unwrap();
//! let groups = to_node_devices(&fingerprint, &[]);
//! assert_eq!(groups.len(), 1);
//! assert_eq!(&*groups[0].name, "NVIDIA H200");
//! assert_eq!(groups[0].healthy_count(), 8);
//! ```

mod backend;
mod convert;
mod error;
mod fingerprinter;
mod nvml;
pub mod reserve;
mod simulated;
mod stats;

pub use backend::{
    Fingerprint, GPUS_PER_NODE_MAX, GpuBackend, GpuInfo, GpuStats, Health, HealthEvent, MIG_INSTANCES_PER_GPU_MAX,
    MigInstance, MigPlacement, pci_bandwidth_mb_per_s,
};
pub use convert::{KIND_GPU, MODEL_NOT_AVAILABLE, VENDOR_NVIDIA, link_islands, to_node_devices};
pub use error::GpuError;
pub use fingerprinter::{FINGERPRINT_PERIOD_DEFAULT, Fingerprinter, GpuConfig, MigIndex};
pub use nvml::NvmlBackend;
pub use reserve::{DeviceNode, DockerDeviceRequest, device_cgroup_rules, docker_device_request, visible_devices_env};
pub use simulated::{MigLayout, SIMULATED_NUMA_NODES_MAX, SIMULATED_UNHEALTHY_REASON, SimulatedBackend, SimulatedGpus};
pub use stats::{DeviceStatsGroup, group_stats};
