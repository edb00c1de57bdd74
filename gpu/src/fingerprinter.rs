//! The client agent's entry point: picks a backend from the configuration and
//! turns its fingerprint into the node's device groups.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use caravan_engine::model::NodeDeviceResource;

use crate::GpuError;
use crate::backend::{Fingerprint, GpuBackend, GpuStats, MigPlacement};
use crate::convert::to_node_devices;
use crate::nvml::NvmlBackend;
use crate::simulated::{SimulatedBackend, SimulatedGpus};
use crate::stats::{DeviceStatsGroup, group_stats};

/// How often the agent re-fingerprints GPUs: Nomad's NVIDIA plugin default.
pub const FINGERPRINT_PERIOD_DEFAULT: Duration = Duration::from_secs(60);

/// The agent's GPU settings (Nomad's `nvidia-gpu` plugin block, plus simulation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuConfig {
    /// `false`: no GPU is fingerprinted, NVML is not even loaded.
    pub enabled: bool,
    /// GPU or MIG UUIDs never offered to the scheduler.
    pub ignored_gpu_ids: Vec<String>,
    pub fingerprint_period: Duration,
    /// Use these simulated GPUs instead of NVML.
    pub simulated: Option<SimulatedGpus>,
}

impl Default for GpuConfig {
    fn default() -> GpuConfig {
        GpuConfig {
            enabled: true,
            ignored_gpu_ids: Vec::new(),
            fingerprint_period: FINGERPRINT_PERIOD_DEFAULT,
            simulated: None,
        }
    }
}

/// The MIG placements ([`Fingerprint::mig_placements`]) of the last
/// successful fingerprint, shared with what gives tasks their device nodes
/// (the `exec` driver). A cheap handle: clones share one map, replaced whole
/// on each fingerprint and read per task start; empty until the first.
#[derive(Debug, Clone, Default)]
pub struct MigIndex {
    placements: Arc<RwLock<Arc<BTreeMap<String, MigPlacement>>>>,
}

impl MigIndex {
    /// Replaces the placements with `fingerprint`'s.
    pub fn publish(&self, fingerprint: &Fingerprint) {
        let placements = Arc::new(fingerprint.mig_placements());
        *self.placements.write().unwrap_or_else(|e| e.into_inner()) = placements;
    }

    /// The placements as last published, by MIG instance UUID.
    pub fn placements(&self) -> Arc<BTreeMap<String, MigPlacement>> {
        Arc::clone(&self.placements.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A backend (or none: no GPUs) and the settings applied to what it reports.
#[derive(Debug)]
pub struct Fingerprinter {
    backend: Option<Box<dyn GpuBackend>>,
    config: GpuConfig,
    /// The last successful fingerprint, which [`Fingerprinter::device_stats`]
    /// groups by (taking a fingerprint per stats request would be slow on NVML).
    last: Mutex<Option<Fingerprint>>,
    /// The last successful fingerprint's MIG placements, for drivers.
    mig_index: MigIndex,
}

impl Fingerprinter {
    /// The simulated backend when configured, else NVML when it loads, else none.
    /// A machine without NVIDIA library or driver logs one line and reports no
    /// devices. Fails only for an invalid simulated configuration.
    pub fn detect(config: GpuConfig) -> Result<Fingerprinter, GpuError> {
        if !config.enabled {
            return Ok(Fingerprinter::new(None, config));
        }
        let backend: Option<Box<dyn GpuBackend>> = match &config.simulated {
            Some(simulated) => Some(Box::new(SimulatedBackend::new(simulated.clone())?)),
            None => match NvmlBackend::try_new() {
                Ok(nvml) => Some(Box::new(nvml)),
                Err(error @ GpuError::NvmlUnavailable { .. }) => {
                    tracing::info!(%error, "no NVIDIA GPUs");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "NVML failed to start; reporting no NVIDIA GPUs");
                    None
                }
            },
        };
        Ok(Fingerprinter::new(backend, config))
    }

    /// A fingerprinter over a given backend (tests, the perf simulator).
    pub fn with_backend(backend: Box<dyn GpuBackend>, config: GpuConfig) -> Fingerprinter {
        Fingerprinter::new(Some(backend), config)
    }

    fn new(backend: Option<Box<dyn GpuBackend>>, config: GpuConfig) -> Fingerprinter {
        Fingerprinter { backend, config, last: Mutex::new(None), mig_index: MigIndex::default() }
    }

    /// The handle every successful [`Fingerprinter::fingerprint`] publishes
    /// its MIG placements to.
    pub fn mig_index(&self) -> MigIndex {
        self.mig_index.clone()
    }

    pub fn backend(&self) -> Option<&dyn GpuBackend> {
        self.backend.as_deref()
    }

    pub fn config(&self) -> &GpuConfig {
        &self.config
    }

    /// The raw fingerprint, `None` with no backend.
    pub fn fingerprint(&self) -> Option<Result<Fingerprint, GpuError>> {
        let result = self.backend.as_ref().map(|b| b.fingerprint())?;
        if let Ok(fingerprint) = &result {
            self.mig_index.publish(fingerprint);
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint.clone());
        }
        Some(result)
    }

    /// The node's device groups; none when there is no backend or it fails (logged).
    pub fn devices(&self) -> Vec<NodeDeviceResource> {
        match self.fingerprint() {
            None => Vec::new(),
            Some(Ok(fingerprint)) => to_node_devices(&fingerprint, &self.config.ignored_gpu_ids),
            Some(Err(error)) => {
                tracing::warn!(%error, "GPU fingerprint failed; reporting no GPUs");
                Vec::new()
            }
        }
    }

    /// Live usage of the GPUs not ignored; empty with no backend or on failure (logged).
    pub fn stats(&self) -> Vec<GpuStats> {
        let Some(backend) = &self.backend else { return Vec::new() };
        match backend.stats() {
            Ok(mut stats) => {
                stats.retain(|s| !self.config.ignored_gpu_ids.contains(&s.uuid));
                stats
            }
            Err(error) => {
                tracing::warn!(%error, "GPU stats failed");
                Vec::new()
            }
        }
    }

    /// Live usage grouped as the node's device groups are ([`group_stats`]),
    /// ignored GPUs left out; grouped by the last fingerprint (one is taken
    /// if none was yet). Empty with no backend or on failure (logged).
    pub fn device_stats(&self) -> Vec<DeviceStatsGroup> {
        if self.backend.is_none() {
            return Vec::new();
        }
        let cached = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let fingerprint = match cached {
            Some(fingerprint) => fingerprint,
            None => match self.fingerprint() {
                Some(Ok(fingerprint)) => fingerprint,
                Some(Err(error)) => {
                    tracing::warn!(%error, "GPU fingerprint failed; no device stats");
                    return Vec::new();
                }
                None => return Vec::new(),
            },
        };
        group_stats(&fingerprint, &self.stats(), &self.config.ignored_gpu_ids)
    }
}
