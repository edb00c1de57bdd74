//! The client's side of `/v1/client/stats` and
//! `/v1/client/allocation/<id>/stats`: [`ClientStats`] is the
//! `caravan_net::http::LocalStats` the agent's HTTP API reads: host memory
//! and uptime from `/proc`, device usage from the GPU fingerprinter, and
//! each allocation's share of it (the instances assigned to its tasks).
//!
//! Device stats carry the names and units of Nomad's NVIDIA device plugin
//! (`GPU utilization` %, `Memory utilization` %, `Temperature` C, `Power
//! usage` W of the power limit, `Memory state` MiB used of total, which is
//! also the summary); a value the device did not report is the string
//! `N/A`, as in Nomad. The plugin's encoder, decoder, BAR1 and ECC stats
//! are not reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use caravan_engine::ids::{AllocId, NodeId};
use caravan_gpu::{DeviceStatsGroup, Fingerprinter, GpuStats};
use caravan_net::http::{
    AllocStats, DeviceGroupStats, DeviceStats, HostMemoryStats, HostStats, LocalLogsError, LocalStats, StatValue,
};

use super::agent::AllocDevices;

/// Nomad's NVIDIA plugin's stat names, units and descriptions.
pub const GPU_UTILIZATION: (&str, &str, &str) = (
    "GPU utilization",
    "%",
    "Percent of time over the past sample period during which one or more kernels were executing on the GPU.",
);
pub const MEMORY_UTILIZATION: (&str, &str, &str) =
    ("Memory utilization", "%", "Percentage of bandwidth used during the past sample period");
pub const TEMPERATURE: (&str, &str, &str) = ("Temperature", "C", "Temperature of the Unit");
pub const POWER_USAGE: (&str, &str, &str) = (
    "Power usage",
    "W",
    "Power usage for this GPU in watts and its associated circuitry (e.g. memory) / Maximum GPU Power",
);
pub const MEMORY_STATE: (&str, &str, &str) = ("Memory state", "MiB", "UsedMemory / TotalMemory");
/// What a value the device did not report reads as (Nomad's `notAvailable`).
pub const NOT_AVAILABLE: &str = "N/A";

const PROC_MEMINFO: &str = "/proc/meminfo";
const PROC_UPTIME: &str = "/proc/uptime";

/// What the stats are read from once the client runs.
#[derive(Debug, Clone)]
pub struct StatsSource {
    pub node_id: NodeId,
    pub gpus: Option<Arc<Fingerprinter>>,
    pub alloc_devices: AllocDevices,
}

/// The client's usage for the HTTP API of the same agent. The API starts
/// before the client (whose node registers the API's address), so the
/// source is set once the client runs; until then the host has no device
/// stats and no allocation is known.
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    source: Arc<OnceLock<StatsSource>>,
}

impl ClientStats {
    pub fn new() -> ClientStats {
        ClientStats::default()
    }

    /// Where the started client's source goes: set once, by the agent.
    pub fn source_slot(&self) -> Arc<OnceLock<StatsSource>> {
        Arc::clone(&self.source)
    }

    fn device_groups(&self) -> Vec<DeviceStatsGroup> {
        self.source.get().and_then(|s| s.gpus.as_ref()).map_or_else(Vec::new, |gpus| gpus.device_stats())
    }
}

impl LocalStats for ClientStats {
    fn node_id(&self) -> Option<NodeId> {
        self.source.get().map(|s| s.node_id)
    }

    fn host_stats(&self) -> HostStats {
        let timestamp_ns = now_ns();
        HostStats {
            memory: std::fs::read_to_string(PROC_MEMINFO).ok().and_then(|text| host_memory(&text)),
            uptime_s: std::fs::read_to_string(PROC_UPTIME).ok().and_then(|text| uptime_s(&text)).unwrap_or(0),
            devices: to_api_groups(&self.device_groups(), timestamp_ns, |_| true),
            timestamp_ns,
        }
    }

    fn alloc_stats(&self, alloc_id: AllocId) -> Result<AllocStats, LocalLogsError> {
        let unknown = || LocalLogsError::UnknownAlloc(alloc_id.to_string());
        let source = self.source.get().ok_or_else(unknown)?;
        let tasks = source.alloc_devices.get(alloc_id).ok_or_else(unknown)?;
        let timestamp_ns = now_ns();
        let groups = self.device_groups();
        let all: BTreeSet<&str> = tasks.values().flatten().map(String::as_str).collect();
        Ok(AllocStats {
            devices: to_api_groups(&groups, timestamp_ns, |id| all.contains(id)),
            tasks: tasks
                .iter()
                .map(|(name, ids)| {
                    (name.clone(), to_api_groups(&groups, timestamp_ns, |id| ids.iter().any(|i| i == id)))
                })
                .collect(),
            timestamp_ns,
        })
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The API's device groups holding the instances `keep` accepts; groups
/// left with none are dropped.
pub fn to_api_groups(
    groups: &[DeviceStatsGroup],
    timestamp_ns: i64,
    keep: impl Fn(&str) -> bool,
) -> Vec<DeviceGroupStats> {
    groups
        .iter()
        .filter_map(|group| {
            let instances: BTreeMap<String, DeviceStats> = group
                .instances
                .iter()
                .filter(|stats| keep(&stats.uuid))
                .map(|stats| (stats.uuid.clone(), device_stats(stats, timestamp_ns)))
                .collect();
            (!instances.is_empty()).then(|| DeviceGroupStats {
                vendor: group.vendor.clone(),
                kind: group.kind.clone(),
                name: group.name.clone(),
                instances,
            })
        })
        .collect()
}

/// One instance's stats under Nomad's names.
pub fn device_stats(stats: &GpuStats, timestamp_ns: i64) -> DeviceStats {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let memory_state = match (stats.memory_used_mib, stats.memory_total_mib) {
        (Some(used), Some(total)) => value(MEMORY_STATE, Some(to_i64(used)), Some(to_i64(total))),
        _ => value(MEMORY_STATE, None, None),
    };
    let power = match (stats.power_w, stats.power_limit_w) {
        (Some(power), limit) => value(POWER_USAGE, Some(i64::from(power)), limit.map(i64::from)),
        (None, _) => value(POWER_USAGE, None, None),
    };
    let mut attributes = BTreeMap::new();
    attributes
        .insert(GPU_UTILIZATION.0.to_string(), value(GPU_UTILIZATION, stats.utilization_percent.map(i64::from), None));
    attributes.insert(
        MEMORY_UTILIZATION.0.to_string(),
        value(MEMORY_UTILIZATION, stats.memory_utilization_percent.map(i64::from), None),
    );
    attributes.insert(TEMPERATURE.0.to_string(), value(TEMPERATURE, stats.temperature_c.map(i64::from), None));
    attributes.insert(POWER_USAGE.0.to_string(), power);
    attributes.insert(MEMORY_STATE.0.to_string(), memory_state.clone());
    DeviceStats { summary: memory_state, attributes, timestamp_ns }
}

/// A stat: the number (over `denominator`), or `N/A` when there is none.
fn value(stat: (&str, &str, &str), numerator: Option<i64>, denominator: Option<i64>) -> StatValue {
    let (_, unit, desc) = stat;
    StatValue {
        int_numerator: numerator,
        int_denominator: numerator.and(denominator),
        string: numerator.is_none().then(|| NOT_AVAILABLE.to_string()),
        unit: unit.to_string(),
        desc: desc.to_string(),
    }
}

/// Host memory from `/proc/meminfo` text (kB values); used is total less
/// available. `None` without `MemTotal`.
pub fn host_memory(meminfo: &str) -> Option<HostMemoryStats> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok().map(|kb| kb.saturating_mul(1024))
        })
    };
    let total_bytes = field("MemTotal")?;
    let free_bytes = field("MemFree").unwrap_or(0);
    let available_bytes = field("MemAvailable").unwrap_or(free_bytes);
    Some(HostMemoryStats {
        total_bytes,
        available_bytes,
        used_bytes: total_bytes.saturating_sub(available_bytes),
        free_bytes,
    })
}

/// Whole seconds since boot from `/proc/uptime` text.
pub fn uptime_s(text: &str) -> Option<u64> {
    let seconds = text.split_whitespace().next()?;
    seconds.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_stats_take_nomads_names_and_missing_values_read_na() {
        let mut stats = GpuStats::unknown("MIG-1");
        stats.memory_used_mib = Some(10);
        stats.memory_total_mib = Some(100);
        stats.power_w = Some(70);
        stats.power_limit_w = Some(700);
        let device = device_stats(&stats, 5);
        assert_eq!(device.summary.int_numerator, Some(10));
        assert_eq!(device.summary.int_denominator, Some(100));
        assert_eq!(device.summary.unit, "MiB");
        let power = &device.attributes["Power usage"];
        assert_eq!((power.int_numerator, power.int_denominator, power.unit.as_str()), (Some(70), Some(700), "W"));
        let temperature = &device.attributes["Temperature"];
        assert_eq!((temperature.int_numerator, temperature.string.as_deref()), (None, Some("N/A")));
        assert_eq!(temperature.unit, "C");
        let names: Vec<&str> = device.attributes.keys().map(String::as_str).collect();
        assert_eq!(names, ["GPU utilization", "Memory state", "Memory utilization", "Power usage", "Temperature"]);
    }

    #[test]
    fn groups_keep_only_the_wanted_instances() {
        let group = DeviceStatsGroup {
            vendor: "nvidia".into(),
            kind: "gpu".into(),
            name: "NVIDIA H200".into(),
            instances: vec![GpuStats::unknown("GPU-a"), GpuStats::unknown("GPU-b")],
        };
        let kept = to_api_groups(std::slice::from_ref(&group), 1, |id| id == "GPU-b");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].instances.keys().collect::<Vec<_>>(), ["GPU-b"]);
        assert!(to_api_groups(&[group], 1, |_| false).is_empty());
    }

    #[test]
    fn proc_files_parse() {
        let meminfo = "MemTotal:       16000 kB\nMemFree:         4000 kB\nMemAvailable:   10000 kB\n";
        let memory = host_memory(meminfo).unwrap();
        assert_eq!(memory.total_bytes, 16000 * 1024);
        assert_eq!(memory.used_bytes, 6000 * 1024);
        assert_eq!(host_memory("garbage"), None);
        assert_eq!(uptime_s("12345.67 999.0\n"), Some(12345));
        assert_eq!(uptime_s(""), None);
    }
}
