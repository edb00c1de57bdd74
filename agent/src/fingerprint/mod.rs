//! Node fingerprinting: what this machine is, in Nomad's attribute names, and
//! the [`Node`] the client registers.
//!
//! - [`HostFingerprint::read`] reads `/proc`, `/sys`, `/etc/os-release`,
//!   `uname` and `statvfs`; each file is parsed by a pure function in
//!   [`cpu`], [`memory`], [`disk`], [`host`] and [`network`], so tests feed
//!   them fixture text. Anything unreadable (containers hide much) falls back
//!   or is left out, never fails the agent.
//! - [`fingerprint_node`] combines the host, the agent config (name,
//!   datacenter, class, pool, meta, reserved, overrides), the drivers'
//!   fingerprints and the GPU devices into a [`Node`].
//! - [`node_changes`] says what a periodic re-fingerprint changed that the
//!   servers care about, so the client re-registers only on change.

// Wired in by the client agent, being written alongside; until then only the
// tests call most of this.
#![allow(dead_code)]

pub mod cpu;
pub mod disk;
pub mod host;
pub mod memory;
pub mod network;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caravan_engine::ids::NodeId;
use caravan_engine::intern::Sym;
use caravan_engine::model::{
    DriverInfo, Node, NodeDeviceResource, NodeResources, NodeStatus, ReservedResources, SchedulingEligibility,
};

use crate::config::AgentConfig;

pub type Attributes = BTreeMap<Arc<str>, Arc<str>>;

const MIB: u64 = 1024 * 1024;

/// Free disk may drift by this many parts per thousand of the total between
/// fingerprints without a re-register: tasks write to disk all the time, and
/// the servers only need the free space roughly.
pub const DISK_DRIFT_PER_MILLE_MAX: u64 = 10;

/// Attributes that change without anything the scheduler cares about
/// changing; [`node_changes`] ignores them (the disk resource carries the
/// same fact, with a tolerance).
pub const VOLATILE_ATTRIBUTES: &[&str] = &["unique.storage.bytesfree"];

/// Everything read from the machine itself.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFingerprint {
    pub cpu: cpu::CpuInfo,
    /// `None` when `/proc/meminfo` is unreadable.
    pub memory_bytes: Option<u64>,
    pub disk: Option<disk::DiskInfo>,
    pub host: host::HostInfo,
    pub network: Option<network::NetworkInfo>,
    /// `cpu.arch` in Go's spelling.
    pub arch: String,
}

impl HostFingerprint {
    /// Fingerprint this machine for `config` (its data dir and interface).
    pub fn read(config: &AgentConfig) -> HostFingerprint {
        HostFingerprint::read_at(Path::new("/"), config)
    }

    /// As [`HostFingerprint::read`] with `/proc`, `/sys` and `/etc` under
    /// `root` (`uname` and `statvfs` still ask the kernel).
    pub fn read_at(root: &Path, config: &AgentConfig) -> HostFingerprint {
        let data_dir = config.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        let interface = config.client.network_interface.as_deref().filter(|name| is_interface_name(name));
        HostFingerprint {
            cpu: cpu::read(root),
            memory_bytes: memory::read_total_bytes(root),
            disk: disk::read(root, &data_dir),
            host: host::read(root),
            network: network::read(root, interface),
            arch: cpu::go_arch(std::env::consts::ARCH).to_owned(),
        }
    }

    /// The attributes in Nomad's names, before config overrides.
    pub fn attributes(&self) -> Attributes {
        let mut a = Attributes::new();
        let mut set = |key: &str, value: String| {
            a.insert(key.into(), value.into());
        };
        set("cpu.numcores", self.cpu.cores.to_string());
        set("cpu.modelname", self.cpu.model.clone());
        set("cpu.frequency", self.cpu.mhz.to_string());
        set("cpu.totalcompute", self.cpu.total_compute_mhz().to_string());
        set("cpu.arch", self.arch.clone());
        if let Some(bytes) = self.memory_bytes {
            set("memory.totalbytes", bytes.to_string());
        }
        if let Some(disk) = &self.disk {
            set("unique.storage.volume", disk.volume.clone());
            set("unique.storage.bytestotal", disk.bytes_total.to_string());
            set("unique.storage.bytesfree", disk.bytes_free.to_string());
        }
        set("kernel.name", self.host.kernel_name.clone());
        set("kernel.version", self.host.kernel_version.clone());
        set("kernel.arch", self.host.kernel_arch.clone());
        if let Some(name) = &self.host.os_name {
            set("os.name", name.clone());
        }
        if let Some(version) = &self.host.os_version {
            set("os.version", version.clone());
        }
        set("unique.hostname", self.host.hostname.clone());
        if let Some(network) = &self.network {
            set("unique.network.ip-address", network.ip.to_string());
        }
        set("caravan.version", env!("CARGO_PKG_VERSION").to_owned());
        a
    }
}

/// Interface names are short and never contain `/`; anything else would
/// make the sysfs path point elsewhere.
fn is_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 with the terminating NUL.
    !name.is_empty() && name.len() < 16 && !name.contains('/') && name != "." && name != ".."
}

/// A task driver's fingerprint, as the drivers will report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFingerprint {
    /// `raw_exec`, `exec`, `docker`.
    pub name: String,
    pub detected: bool,
    pub healthy: bool,
    pub health_description: String,
    /// Keys under `driver.<name>.`; a key given without that prefix gets it.
    pub attributes: BTreeMap<String, String>,
}

/// Build the node this client registers. Pure: everything read from the
/// machine is in `host`, so tests build nodes from fixtures.
pub fn fingerprint_node(
    node_id: NodeId,
    config: &AgentConfig,
    host: &HostFingerprint,
    drivers: &[DriverFingerprint],
    devices: Vec<NodeDeviceResource>,
) -> Node {
    let client = &config.client;
    let mut attributes = host.attributes();
    let cpu_mhz = client.cpu_total_compute_mhz.unwrap_or_else(|| host.cpu.total_compute_mhz());
    if client.cpu_total_compute_mhz.is_some() {
        attributes.insert("cpu.totalcompute".into(), cpu_mhz.to_string().into());
    }
    let memory_mb = client.memory_total_mb.unwrap_or_else(|| host.memory_bytes.unwrap_or(0) / MIB);
    let disk_mb = client.disk_free_mb.unwrap_or_else(|| host.disk.as_ref().map_or(0, |d| d.bytes_free / MIB));
    if let Some(total_mb) = client.disk_total_mb {
        attributes.insert("unique.storage.bytestotal".into(), total_mb.saturating_mul(MIB).to_string().into());
    }
    if let Some(free_mb) = client.disk_free_mb {
        attributes.insert("unique.storage.bytesfree".into(), free_mb.saturating_mul(MIB).to_string().into());
    }

    let mut driver_infos = BTreeMap::new();
    for driver in drivers {
        let prefix = format!("driver.{}", driver.name);
        if driver.detected {
            // Nomad sets `driver.<name> = 1` for constraints like
            // `${attr.driver.docker}`; an unhealthy driver is still detected.
            attributes.insert(prefix.clone().into(), "1".into());
        }
        let mut driver_attributes = BTreeMap::new();
        for (key, value) in &driver.attributes {
            let key: Arc<str> = if key.starts_with(&format!("{prefix}.")) {
                key.as_str().into()
            } else {
                format!("{prefix}.{key}").into()
            };
            let value: Arc<str> = value.as_str().into();
            if driver.detected {
                attributes.insert(key.clone(), value.clone());
            }
            driver_attributes.insert(key, value);
        }
        driver_infos.insert(
            Arc::from(driver.name.as_str()),
            DriverInfo {
                detected: driver.detected,
                healthy: driver.healthy,
                health_description: driver.health_description.as_str().into(),
                attributes: driver_attributes,
            },
        );
    }

    let hostname = &host.host.hostname;
    let http_ip = config.addresses.http.unwrap_or(config.bind_addr);
    let http_addr = match (&config.advertise.http, &host.network) {
        (Some(addr), _) if addr.contains(':') => addr.clone(),
        (Some(addr), _) => format!("{addr}:{}", config.ports.http),
        // Where the HTTP API listens (`addresses.http`, else `bind_addr`),
        // when that is one address rather than all of them.
        (None, _) if !http_ip.is_unspecified() => std::net::SocketAddr::new(http_ip, config.ports.http).to_string(),
        (None, Some(network)) => format!("{}:{}", network.ip, config.ports.http),
        (None, None) => format!("127.0.0.1:{}", config.ports.http),
    };
    let mut node = Node {
        id: node_id,
        name: config.node_name(hostname).into(),
        datacenter: Sym::new(&config.datacenter),
        node_pool: Sym::new(&client.node_pool),
        node_class: Sym::new(&client.node_class),
        http_addr: http_addr.into(),
        attributes,
        meta: client.meta.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str()))).collect(),
        resources: NodeResources {
            cpu_mhz,
            cores: host.cpu.cores,
            memory_mb,
            disk_mb,
            min_dynamic_port: client.min_dynamic_port,
            max_dynamic_port: client.max_dynamic_port,
            devices,
        },
        reserved: ReservedResources {
            cpu_mhz: client.reserved.cpu_mhz,
            memory_mb: client.reserved.memory_mb,
            disk_mb: client.reserved.disk_mb,
            ports: client.reserved.ports.clone(),
        },
        drivers: driver_infos,
        status: NodeStatus::Initializing,
        status_description: "".into(),
        eligibility: SchedulingEligibility::Eligible,
        drain: None,
        status_updated_at_ns: 0,
        computed_class: 0,
        create_index: 0,
        modify_index: 0,
    };
    node.compute_class();
    node
}

/// What differs between two fingerprints of the same node that the servers
/// schedule on; empty when the client need not re-register. Free disk moves
/// as tasks write, so it counts only past [`DISK_DRIFT_PER_MILLE_MAX`].
pub fn node_changes(old: &Node, new: &Node) -> Vec<&'static str> {
    let mut changes = Vec::new();
    let stable = |node: &Node| -> Attributes {
        node.attributes
            .iter()
            .filter(|(k, _)| !VOLATILE_ATTRIBUTES.contains(&&***k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if old.name != new.name || old.http_addr != new.http_addr {
        changes.push("name or address");
    }
    if old.datacenter != new.datacenter || old.node_pool != new.node_pool || old.node_class != new.node_class {
        changes.push("datacenter, pool or class");
    }
    if stable(old) != stable(new) {
        changes.push("attributes");
    }
    if old.meta != new.meta {
        changes.push("meta");
    }
    if old.drivers != new.drivers {
        changes.push("drivers");
    }
    let (a, b) = (&old.resources, &new.resources);
    if a.cpu_mhz != b.cpu_mhz
        || a.cores != b.cores
        || a.memory_mb != b.memory_mb
        || a.min_dynamic_port != b.min_dynamic_port
        || a.max_dynamic_port != b.max_dynamic_port
    {
        changes.push("resources");
    }
    let disk_drift_mb_max = disk_total_mb(new).saturating_mul(DISK_DRIFT_PER_MILLE_MAX) / 1000;
    if a.disk_mb.abs_diff(b.disk_mb) > disk_drift_mb_max {
        changes.push("disk");
    }
    if a.devices != b.devices {
        changes.push("devices");
    }
    if old.reserved != new.reserved {
        changes.push("reserved");
    }
    changes
}

/// The disk's size in MiB from the attributes, or the free space when unknown.
fn disk_total_mb(node: &Node) -> u64 {
    node.attributes
        .get("unique.storage.bytestotal")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(node.resources.disk_mb, |bytes| bytes / MIB)
}

#[cfg(test)]
mod tests;
