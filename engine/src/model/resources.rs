use std::sync::Arc;

use super::{Affinity, Constraint};
use crate::model::rkyv_with::ArcStr;
use rkyv::with::Map;

/// What one task asks for.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TaskResources {
    /// CPU shares in MHz. Ignored for fit when `cores > 0`.
    pub cpu_mhz: u32,
    /// Whole reserved cores; each counts as the node's per-core MHz.
    pub cores: u32,
    pub memory_mb: u32,
    /// Memory the task may burst to (oversubscription); 0 means no burst.
    pub memory_max_mb: u32,
    pub devices: Vec<DeviceRequest>,
}

/// `device "nvidia/gpu" { count = 2 ... }` inside a task's resources.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeviceRequest {
    /// `gpu`, `nvidia/gpu` or `nvidia/gpu/<model>`.
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    pub count: u32,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
}

impl DeviceRequest {
    /// Split the request name into (vendor, type, model); missing parts are `None`.
    pub fn id_parts(&self) -> (Option<&str>, &str, Option<&str>) {
        let parts: Vec<&str> = self.name.split('/').collect();
        match parts.as_slice() {
            [kind] => (None, kind, None),
            [vendor, kind] => (Some(vendor), kind, None),
            [vendor, kind, model, ..] => (Some(vendor), kind, Some(model)),
            [] => (None, "", None),
        }
    }
}

/// A port asked for in a group's `network { port "label" { ... } }`.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PortRequest {
    #[rkyv(with = ArcStr)]
    pub label: Arc<str>,
    /// A fixed host port; `None` for a dynamic one.
    pub static_port: Option<u16>,
    /// Port inside the task (docker mapping); 0 means the same as the host port.
    pub to: u16,
}

/// The totals one allocation holds on its node: what fit checks compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ComparableResources {
    pub cpu_mhz: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub cores: u32,
}

impl ComparableResources {
    pub fn add(&mut self, other: &ComparableResources) {
        self.cpu_mhz += other.cpu_mhz;
        self.memory_mb += other.memory_mb;
        self.disk_mb += other.disk_mb;
        self.cores += other.cores;
    }

    pub fn subtract(&mut self, other: &ComparableResources) {
        self.cpu_mhz = self.cpu_mhz.saturating_sub(other.cpu_mhz);
        self.memory_mb = self.memory_mb.saturating_sub(other.memory_mb);
        self.disk_mb = self.disk_mb.saturating_sub(other.disk_mb);
        self.cores = self.cores.saturating_sub(other.cores);
    }

    /// The first dimension in which `self` exceeds `capacity`, if any.
    pub fn exceeded_dimension(&self, capacity: &ComparableResources) -> Option<&'static str> {
        if self.cpu_mhz > capacity.cpu_mhz {
            return Some("cpu");
        }
        if self.memory_mb > capacity.memory_mb {
            return Some("memory");
        }
        if self.disk_mb > capacity.disk_mb {
            return Some("disk");
        }
        if self.cores > capacity.cores {
            return Some("cores");
        }
        None
    }
}

/// One host port an allocation holds.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AssignedPort {
    #[rkyv(with = ArcStr)]
    pub label: Arc<str>,
    pub value: u16,
    pub to: u16,
}

/// Device instances given to one task of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AssignedDevice {
    /// Index of the task in its task group.
    pub task_index: u16,
    #[rkyv(with = ArcStr)]
    pub vendor: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub kind: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    /// Instance ids (GPU UUIDs), as fingerprinted.
    #[rkyv(with = Map<ArcStr>)]
    pub instance_ids: Vec<Arc<str>>,
}

/// What an allocation was given on its node.
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocatedResources {
    pub comparable: ComparableResources,
    pub ports: Vec<AssignedPort>,
    pub devices: Vec<AssignedDevice>,
}
