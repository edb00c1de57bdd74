//! The crate's one error type, at the boundary between GPU discovery and the agent.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    /// No NVML library or no loaded NVIDIA kernel driver: the machine simply has
    /// no usable NVIDIA GPUs. Callers report no devices and do not retry hard.
    #[error("NVML is unavailable ({reason}); this machine reports no NVIDIA GPUs")]
    NvmlUnavailable { reason: String },

    /// NVML loaded but a call that the whole fingerprint depends on failed.
    #[error("NVML {call} failed: {source}")]
    Nvml {
        call: &'static str,
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },

    /// A simulated GPU configuration with one or more problems, all listed.
    #[error("invalid simulated GPU config: {}", problems.join("; "))]
    InvalidSimulatedConfig { problems: Vec<String> },

    /// A task was assigned a device instance this node's fingerprint does not
    /// know (the GPU disappeared, or the assignment is for another node).
    #[error("assigned device instance {instance_id} is not in this node's GPU fingerprint")]
    UnknownInstance { instance_id: String },

    /// A GPU whose device node minor number is unknown cannot be put in a device cgroup.
    #[error("GPU {uuid} has no known /dev/nvidia minor number")]
    NoMinorNumber { uuid: String },
}
