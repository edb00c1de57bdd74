//! The NVML backend: everything that talks to `libnvidia-ml.so`, loaded at run
//! time, so the crate builds and runs on machines without NVIDIA software.
//!
//! A query a device refuses (`NotSupported`, `NoPermission`, a symbol the
//! installed driver lacks) leaves its field `None`. Any other failure of a device
//! query marks that GPU unhealthy with the failures as the reason, and never
//! fails the whole fingerprint.
//!
//! A MIG instance's GPU and compute instance ids come from two NVML calls
//! nvml-wrapper does not wrap (`mig_instance_id`, the crate's one `unsafe`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Mutex;
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, EventSet, Nvml};

use crate::GpuError;
use crate::backend::{
    Fingerprint, GPUS_PER_NODE_MAX, GpuBackend, GpuInfo, GpuStats, Health, HealthEvent, MIG_INSTANCES_PER_GPU_MAX,
    MigInstance,
};

/// The runtime name of the NVML library. The bare `libnvidia-ml.so` that
/// nvml-wrapper looks for by default only exists where driver development files
/// are installed; the versioned name is what the driver itself installs.
const NVML_LIBRARY_VERSIONED: &str = "libnvidia-ml.so.1";

/// NVML's `NVML_NVLINK_MAX_LINKS` (18 on Hopper); asking past a device's last
/// link fails with `InvalidArg`, which ends the loop early.
const NVLINKS_PER_GPU_MAX: u32 = 18;

/// Most events read by one `poll_health`: a storm of XIDs must not keep the
/// caller in the loop; the rest are read on the next poll.
const HEALTH_EVENTS_PER_POLL_MAX: usize = 64;

/// XIDs that NVIDIA documents as caused by the application (illegal address,
/// page fault, preemption, engine exceptions), not by the GPU: they leave the GPU
/// healthy. The same list Kubernetes' NVIDIA device plugin skips.
const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// NVML's `NVML_DEVICE_MIG_ENABLE`.
const MIG_MODE_ENABLED: u32 = 1;

const BYTES_PER_MIB: u64 = 1 << 20;
const MILLIWATTS_PER_WATT: u32 = 1000;

/// The NVML backend. NVML stays loaded for the life of the process (the
/// agent creates one backend): the event set borrows the library handle, so the
/// handle is leaked to `'static` once per [`NvmlBackend::try_new`].
pub struct NvmlBackend {
    nvml: &'static Nvml,
    /// Created on the first `poll_health`; `None` when no GPU supports XID events.
    events: Mutex<Option<EventSet<'static>>>,
    /// GPUs a critical XID turned unhealthy: uuid → reason. Bounded by the GPU count.
    xid_unhealthy: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend").finish_non_exhaustive()
    }
}

impl NvmlBackend {
    /// Loads and initializes NVML. Fails with [`GpuError::NvmlUnavailable`] when
    /// the library or the kernel driver is missing, else [`GpuError::Nvml`].
    pub fn try_new() -> Result<NvmlBackend, GpuError> {
        let nvml = match Nvml::builder().lib_path(OsStr::new(NVML_LIBRARY_VERSIONED)).init() {
            Ok(nvml) => nvml,
            Err(NvmlError::LibloadingError(first)) => Nvml::init().map_err(|e| match e {
                NvmlError::LibloadingError(_) => GpuError::NvmlUnavailable {
                    reason: format!("cannot load {NVML_LIBRARY_VERSIONED} or libnvidia-ml.so: {first}"),
                },
                other => init_error(other),
            })?,
            Err(other) => return Err(init_error(other)),
        };
        Ok(NvmlBackend {
            nvml: Box::leak(Box::new(nvml)),
            events: Mutex::new(None),
            xid_unhealthy: Mutex::new(BTreeMap::new()),
        })
    }

    fn device_count(&self) -> Result<u32, GpuError> {
        let count = self.nvml.device_count().map_err(|source| GpuError::Nvml { call: "device_count", source })?;
        if count > GPUS_PER_NODE_MAX {
            tracing::warn!(count, limit = GPUS_PER_NODE_MAX, "NVML reports more GPUs than the limit; using the first");
        }
        Ok(count.min(GPUS_PER_NODE_MAX))
    }

    /// An event set with critical XIDs registered on every GPU that supports them.
    fn new_event_set(&self) -> Result<Option<EventSet<'static>>, GpuError> {
        let mut set =
            Some(self.nvml.create_event_set().map_err(|source| GpuError::Nvml { call: "create_event_set", source })?);
        let mut registered = 0;
        for index in 0..self.device_count()? {
            let Ok(device) = self.nvml.device_by_index(index) else { continue };
            let supported = device.supported_event_types().is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            let Some(current) = set.take() else { break };
            if !supported {
                set = Some(current);
                continue;
            }
            // A failed registration releases the set, so start a new one and go on.
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, current) {
                Ok(current) => {
                    registered += 1;
                    set = Some(current);
                }
                Err(e) => {
                    tracing::warn!(index, error = %e.error, "cannot watch GPU for XID errors");
                    set = self.nvml.create_event_set().ok();
                }
            }
        }
        Ok(if registered > 0 { set } else { None })
    }
}

fn init_error(error: NvmlError) -> GpuError {
    match error {
        NvmlError::DriverNotLoaded | NvmlError::LibraryNotFound => {
            GpuError::NvmlUnavailable { reason: error.to_string() }
        }
        source => GpuError::Nvml { call: "init", source },
    }
}

/// `Some` on success, `None` when the device does not offer the value; any
/// other failure is recorded in `failures` (which make the GPU unhealthy).
fn optional<T>(result: Result<T, NvmlError>, call: &str, failures: &mut Vec<String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(
            NvmlError::NotSupported
            | NvmlError::NoPermission
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_),
        ) => None,
        Err(e) => {
            failures.push(format!("{call}: {e}"));
            None
        }
    }
}

/// The comparable part of a PCI bus id: NVML spells the domain with 8 hex digits
/// (`00000000:18:00.0`) where sysfs uses 4 (`0000:18:00.0`), in either case.
fn bus_key(bus_id: &str) -> String {
    let lower = bus_id.trim_end_matches('\0').to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) => format!("{:0>4}:{rest}", domain.trim_start_matches('0')),
        None => lower,
    }
}

/// The GPU's NUMA node from sysfs, for drivers older than NVML's NUMA query.
fn sysfs_numa_node(bus_id: &str) -> Option<u16> {
    let text = std::fs::read_to_string(format!("/sys/bus/pci/devices/{}/numa_node", bus_key(bus_id))).ok()?;
    text.trim().parse::<u16>().ok() // -1 (no NUMA) does not parse: None.
}

/// The part of a MIG device name after ` MIG ` (`NVIDIA H200 MIG 1g.18gb` → `1g.18gb`).
fn mig_profile(name: &str) -> String {
    name.rsplit_once(" MIG ").map_or(name, |(_, profile)| profile).to_owned()
}

/// One GPU's facts and the remote PCI bus ids of its active NVLinks.
fn gpu_info(index: u32, device: &Device<'_>) -> (GpuInfo, Vec<String>) {
    let mut failures = Vec::new();
    let f = &mut failures;
    let uuid = optional(device.uuid(), "uuid", f).unwrap_or_else(|| format!("unknown-gpu-{index}"));
    let mut gpu = GpuInfo::new(index, uuid);
    gpu.model = optional(device.name(), "name", f);
    gpu.memory_mib = optional(device.memory_info(), "memory_info", f).map(|m| m.total / BYTES_PER_MIB);
    gpu.power_limit_w = optional(device.power_management_limit(), "power_limit", f).map(|mw| mw / MILLIWATTS_PER_WATT);
    gpu.bar1_mib = optional(device.bar1_memory_info(), "bar1_memory_info", f).map(|b| b.total / BYTES_PER_MIB);
    gpu.compute_capability = optional(device.cuda_compute_capability(), "cuda_compute_capability", f)
        .map(|c| format!("{}.{}", c.major, c.minor));
    gpu.sm_clock_mhz_max = optional(device.max_clock_info(Clock::SM), "max_clock_info(SM)", f);
    gpu.memory_clock_mhz_max = optional(device.max_clock_info(Clock::Memory), "max_clock_info(Memory)", f);
    gpu.pci_bus_id = optional(device.pci_info(), "pci_info", f).map(|p| p.bus_id.trim_end_matches('\0').to_owned());
    gpu.pcie_generation_max = optional(device.max_pcie_link_gen(), "max_pcie_link_gen", f);
    gpu.pcie_link_width_max = optional(device.max_pcie_link_width(), "max_pcie_link_width", f);
    gpu.numa_node = optional(device.numa_node_id(), "numa_node_id", f)
        .and_then(|n| u16::try_from(n).ok())
        .or_else(|| gpu.pci_bus_id.as_deref().and_then(sysfs_numa_node));
    gpu.minor_number = optional(device.minor_number(), "minor_number", f);
    gpu.persistence_mode = optional(device.is_in_persistent_mode(), "persistence_mode", f);
    gpu.display_mode = optional(device.is_display_connected(), "display_mode", f);
    gpu.mig_enabled = optional(device.mig_mode(), "mig_mode", f).is_some_and(|m| m.current == MIG_MODE_ENABLED);
    if gpu.mig_enabled {
        gpu.mig_instances = mig_instances(device, f);
    }
    let remote_bus_ids = nvlink_remotes(device, f);
    if !failures.is_empty() {
        gpu.health = Health::Unhealthy { reason: failures.join("; ") };
    }
    (gpu, remote_bus_ids)
}

fn mig_instances(device: &Device<'_>, failures: &mut Vec<String>) -> Vec<MigInstance> {
    let slots = optional(device.mig_device_count(), "mig_device_count", failures).unwrap_or(0);
    let mut instances = Vec::new();
    for slot in 0..slots.min(MIG_INSTANCES_PER_GPU_MAX) {
        // Empty slots answer NotFound or InvalidArg.
        let Ok(mig) = device.mig_device_by_index(slot) else { continue };
        let Some(uuid) = optional(mig.uuid(), "mig uuid", failures) else { continue };
        instances.push(MigInstance {
            uuid,
            profile: optional(mig.name(), "mig name", failures)
                .map_or_else(|| "unknown".to_owned(), |n| mig_profile(&n)),
            memory_mib: optional(mig.memory_info(), "mig memory_info", failures).map(|m| m.total / BYTES_PER_MIB),
            gpu_instance_id: optional(mig_instance_id(&mig, MigLevel::GpuInstance), "mig gpu_instance_id", failures),
            compute_instance_id: optional(
                mig_instance_id(&mig, MigLevel::ComputeInstance),
                "mig compute_instance_id",
                failures,
            ),
        });
    }
    instances
}

/// Which id of a MIG device [`mig_instance_id`] asks for.
#[derive(Debug, Clone, Copy)]
enum MigLevel {
    GpuInstance,
    ComputeInstance,
}

/// NVML's `nvmlDeviceGetGpuInstanceId` or `nvmlDeviceGetComputeInstanceId`
/// on a MIG device handle. nvml-wrapper 0.13 leaves both unwrapped (its
/// `unwrapped_functions.txt`), so this calls the loaded symbol as its own
/// wrappers do: a driver without it answers `FailedToLoadSymbol` (the id
/// stays `None`). The crate's one use of `unsafe`.
#[allow(unsafe_code)]
fn mig_instance_id(mig: &Device<'_>, level: MigLevel) -> Result<u32, NvmlError> {
    let lib = mig.nvml().lib();
    let symbol = match level {
        MigLevel::GpuInstance => nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref())?,
        MigLevel::ComputeInstance => nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref())?,
    };
    let mut id: std::os::raw::c_uint = 0;
    // SAFETY: `mig` is a device handle of the NVML that `lib` belongs to and
    // that outlives it (the `'nvml` lifetime); the call writes one `c_uint`
    // through a pointer to a live local and keeps no reference to it.
    nvml_try(unsafe { symbol(mig.handle(), &mut id) })?;
    Ok(id)
}

/// Remote PCI bus ids of the device's active NVLinks: another GPU, or an NVSwitch.
fn nvlink_remotes(device: &Device<'_>, failures: &mut Vec<String>) -> Vec<String> {
    let mut remotes = Vec::new();
    for link in 0..NVLINKS_PER_GPU_MAX {
        let nvlink = device.link_wrapper_for(link);
        match nvlink.is_active() {
            Ok(true) => {}
            Ok(false) => continue,
            // Past the device's last link, or no NVLink at all.
            Err(_) => break,
        }
        if let Some(remote) = optional(nvlink.remote_pci_info(), "nvlink remote_pci_info", failures) {
            let key = bus_key(&remote.bus_id);
            if !remotes.contains(&key) {
                remotes.push(key);
            }
        }
    }
    remotes
}

/// Fills `nvlink_peers`: a remote that is a GPU of this node is a direct peer; a
/// remote that is not (an NVSwitch) connects every GPU that links to it.
fn link_peers(gpus: &mut [GpuInfo], remotes: &[Vec<String>]) {
    let bus_to_uuid: BTreeMap<String, String> =
        gpus.iter().filter_map(|g| Some((bus_key(g.pci_bus_id.as_deref()?), g.uuid.clone()))).collect();
    let mut peers: Vec<Vec<String>> = vec![Vec::new(); gpus.len()];
    for (i, mine) in remotes.iter().enumerate() {
        for remote in mine {
            let reached: Vec<String> = match bus_to_uuid.get(remote) {
                Some(uuid) => vec![uuid.clone()],
                None => (0..gpus.len())
                    .filter(|&j| j != i && remotes[j].contains(remote))
                    .map(|j| gpus[j].uuid.clone())
                    .collect(),
            };
            for uuid in reached {
                if uuid != gpus[i].uuid && !peers[i].contains(&uuid) {
                    peers[i].push(uuid);
                }
            }
        }
    }
    for (gpu, peers) in gpus.iter_mut().zip(peers) {
        gpu.nvlink_peers = peers;
    }
}

/// One GPU's live usage. Each value is queried on its own: a failed query
/// leaves that value out (health comes from the fingerprint, not from here).
fn gpu_stats(uuid: String, device: &Device<'_>) -> GpuStats {
    let utilization = device.utilization_rates().ok();
    let memory = device.memory_info().ok();
    GpuStats {
        uuid,
        utilization_percent: utilization.as_ref().map(|u| u.gpu),
        memory_utilization_percent: utilization.as_ref().map(|u| u.memory),
        memory_used_mib: memory.as_ref().map(|m| m.used / BYTES_PER_MIB),
        memory_total_mib: memory.as_ref().map(|m| m.total / BYTES_PER_MIB),
        temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
        power_w: device.power_usage().ok().map(|mw| mw / MILLIWATTS_PER_WATT),
        power_limit_w: device.power_management_limit().ok().map(|mw| mw / MILLIWATTS_PER_WATT),
    }
}

/// The MIG instances' usage: NVML answers memory for a MIG device handle and
/// `NotSupported` for utilization, temperature and power, which stay `None`.
fn mig_stats(device: &Device<'_>) -> Vec<GpuStats> {
    let slots = device.mig_device_count().unwrap_or(0);
    let mut stats = Vec::new();
    for slot in 0..slots.min(MIG_INSTANCES_PER_GPU_MAX) {
        let Ok(mig) = device.mig_device_by_index(slot) else { continue };
        let Ok(uuid) = mig.uuid() else { continue };
        let mut one = GpuStats::unknown(uuid);
        if let Ok(memory) = mig.memory_info() {
            one.memory_used_mib = Some(memory.used / BYTES_PER_MIB);
            one.memory_total_mib = Some(memory.total / BYTES_PER_MIB);
        }
        stats.push(one);
    }
    stats
}

/// `12040` → `12.4`, as NVML encodes CUDA versions (`1000 × major + 10 × minor`).
fn cuda_version_text(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn fingerprint(&self) -> Result<Fingerprint, GpuError> {
        let mut ignored = Vec::new();
        let driver_version = optional(self.nvml.sys_driver_version(), "sys_driver_version", &mut ignored);
        let cuda_driver_version =
            optional(self.nvml.sys_cuda_driver_version(), "sys_cuda_driver_version", &mut ignored)
                .map(cuda_version_text);
        for problem in ignored {
            tracing::warn!(%problem, "NVML system query failed");
        }
        let mut gpus = Vec::new();
        let mut remotes = Vec::new();
        for index in 0..self.device_count()? {
            match self.nvml.device_by_index(index) {
                Ok(device) => {
                    let (gpu, mine) = gpu_info(index, &device);
                    gpus.push(gpu);
                    remotes.push(mine);
                }
                Err(e) => {
                    let mut gpu = GpuInfo::new(index, format!("unknown-gpu-{index}"));
                    gpu.health = Health::Unhealthy { reason: format!("device_by_index: {e}") };
                    gpus.push(gpu);
                    remotes.push(Vec::new());
                }
            }
        }
        link_peers(&mut gpus, &remotes);
        let xid_unhealthy = self.xid_unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        for gpu in &mut gpus {
            if let Some(reason) = xid_unhealthy.get(&gpu.uuid) {
                gpu.health = Health::Unhealthy { reason: reason.clone() };
            }
        }
        Ok(Fingerprint { driver_version, cuda_driver_version, gpus })
    }

    fn stats(&self) -> Result<Vec<GpuStats>, GpuError> {
        let mut stats = Vec::new();
        for index in 0..self.device_count()? {
            let Ok(device) = self.nvml.device_by_index(index) else { continue };
            let Ok(uuid) = device.uuid() else { continue };
            stats.push(gpu_stats(uuid, &device));
            if device.mig_mode().is_ok_and(|m| m.current == MIG_MODE_ENABLED) {
                stats.extend(mig_stats(&device));
            }
        }
        Ok(stats)
    }

    fn poll_health(&self, timeout: Duration) -> Result<Vec<HealthEvent>, GpuError> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.is_none() {
            *events = self.new_event_set()?;
        }
        let Some(set) = events.as_ref() else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        let mut wait_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        for _ in 0..HEALTH_EVENTS_PER_POLL_MAX {
            let event = match set.wait(wait_ms) {
                Ok(event) => event,
                Err(NvmlError::Timeout) => break,
                Err(source) => return Err(GpuError::Nvml { call: "event_set_wait", source }),
            };
            // Only the first wait blocks; then drain what is already queued.
            wait_ms = 0;
            let xid = match event.event_data {
                Some(XidError::Value(xid)) => Some(xid),
                _ => None,
            };
            if xid.is_some_and(|x| APPLICATION_XIDS.contains(&x)) {
                continue;
            }
            let Ok(uuid) = event.device.uuid() else { continue };
            let reason = match xid {
                Some(xid) => format!("critical XID {xid} error"),
                None => "critical XID error (unknown code)".to_owned(),
            };
            tracing::warn!(%uuid, %reason, "GPU marked unhealthy");
            self.xid_unhealthy.lock().unwrap_or_else(|e| e.into_inner()).insert(uuid.clone(), reason.clone());
            found.push(HealthEvent { uuid, reason });
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_helpers() {
        assert_eq!(bus_key("00000000:18:00.0"), "0000:18:00.0");
        assert_eq!(bus_key("0000:AB:00.0"), "0000:ab:00.0");
        assert_eq!(mig_profile("NVIDIA H200 MIG 1g.18gb"), "1g.18gb");
        assert_eq!(cuda_version_text(12040), "12.4");
    }

    #[test]
    fn nvswitch_links_connect_every_attached_gpu() {
        let mut gpus: Vec<GpuInfo> = (0..3)
            .map(|i| {
                let mut g = GpuInfo::new(i, format!("GPU-{i}"));
                g.pci_bus_id = Some(format!("00000000:{:02X}:00.0", 0x10 * (i + 1)));
                g
            })
            .collect();
        // GPUs 0 and 1 share switch 0000:f0:00.0; GPU 2 links directly to GPU 1.
        let remotes =
            vec![vec!["0000:f0:00.0".to_owned()], vec!["0000:f0:00.0".to_owned()], vec!["0000:20:00.0".to_owned()]];
        link_peers(&mut gpus, &remotes);
        assert_eq!(gpus[0].nvlink_peers, ["GPU-1"]);
        assert_eq!(gpus[1].nvlink_peers, ["GPU-0"]);
        assert_eq!(gpus[2].nvlink_peers, ["GPU-1"]);
    }
}
