use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{ComparableResources, TimeNs};
use crate::ids::NodeId;
use crate::intern::Sym;
use crate::model::rkyv_with::{ArcStr, SymText};
use rkyv::with::{Identity, Map, MapKV};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeStatus {
    Initializing,
    Ready,
    Down,
    Disconnected,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Initializing => "initializing",
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Disconnected => "disconnected",
        }
    }

    pub fn parse(s: &str) -> Option<NodeStatus> {
        [NodeStatus::Initializing, NodeStatus::Ready, NodeStatus::Down, NodeStatus::Disconnected]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum SchedulingEligibility {
    Eligible,
    Ineligible,
}

impl SchedulingEligibility {
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingEligibility::Eligible => "eligible",
            SchedulingEligibility::Ineligible => "ineligible",
        }
    }
}

/// `DrainSpec`: how long allocations may take to leave, and whether system jobs stay.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DrainStrategy {
    /// Negative: force now; zero: no deadline.
    pub deadline_ns: i64,
    pub ignore_system_jobs: bool,
    pub started_at_ns: TimeNs,
    /// When the deadline passes (0 when there is none).
    pub force_deadline_ns: TimeNs,
}

/// A task driver's fingerprint on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DriverInfo {
    pub detected: bool,
    pub healthy: bool,
    #[rkyv(with = ArcStr)]
    pub health_description: Arc<str>,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub attributes: BTreeMap<Arc<str>, Arc<str>>,
}

/// A device attribute value; numbers carry an optional unit (`MiB`, `MHz`, `W`).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DeviceAttribute {
    Int {
        value: i64,
        #[rkyv(with = Map<ArcStr>)]
        unit: Option<Arc<str>>,
    },
    Float {
        value: f64,
        #[rkyv(with = Map<ArcStr>)]
        unit: Option<Arc<str>>,
    },
    String(#[rkyv(with = ArcStr)] Arc<str>),
    Bool(bool),
}

/// One device instance (a GPU, or a MIG slice).
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeviceInstance {
    /// Stable instance id (the GPU UUID).
    #[rkyv(with = ArcStr)]
    pub id: Arc<str>,
    pub healthy: bool,
    #[rkyv(with = ArcStr)]
    pub health_description: Arc<str>,
    #[rkyv(with = Map<ArcStr>)]
    pub pci_bus_id: Option<Arc<str>>,
    pub numa_node: Option<u16>,
    /// Instances with the same island are linked (NVLink); `None` when unknown.
    pub link_island: Option<u16>,
}

/// A group of identical devices on a node, as Nomad's `NodeDeviceResource`.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeDeviceResource {
    #[rkyv(with = ArcStr)]
    pub vendor: Arc<str>,
    /// `gpu`, `fpga`, ...
    #[rkyv(with = ArcStr)]
    pub kind: Arc<str>,
    /// The model, e.g. `NVIDIA H200`.
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub attributes: BTreeMap<Arc<str>, DeviceAttribute>,
    pub instances: Vec<DeviceInstance>,
}

impl NodeDeviceResource {
    /// Whether a request name (`gpu`, `nvidia/gpu`, `nvidia/gpu/<model>`) names this group.
    pub fn matches_name(&self, request: &str) -> bool {
        let parts: Vec<&str> = request.split('/').collect();
        match parts.as_slice() {
            [kind] => *kind == &*self.kind,
            [vendor, kind] => *vendor == &*self.vendor && *kind == &*self.kind,
            [vendor, kind, model] => *vendor == &*self.vendor && *kind == &*self.kind && *model == &*self.name,
            _ => false,
        }
    }

    pub fn healthy_count(&self) -> usize {
        self.instances.iter().filter(|i| i.healthy).count()
    }
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeResources {
    pub cpu_mhz: u64,
    /// Total cores; with `cpu_mhz` this gives MHz per core for `cores` requests.
    pub cores: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub min_dynamic_port: u16,
    pub max_dynamic_port: u16,
    pub devices: Vec<NodeDeviceResource>,
}

impl Default for NodeResources {
    fn default() -> Self {
        NodeResources {
            cpu_mhz: 0,
            cores: 0,
            memory_mb: 0,
            disk_mb: 0,
            min_dynamic_port: 20000,
            max_dynamic_port: 32000,
            devices: Vec::new(),
        }
    }
}

/// What the node keeps for itself and the OS.
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReservedResources {
    pub cpu_mhz: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub ports: Vec<u16>,
}

/// A client machine as the servers see it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Node {
    pub id: NodeId,
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    #[rkyv(with = SymText)]
    pub datacenter: Sym,
    #[rkyv(with = SymText)]
    pub node_pool: Sym,
    /// User-given class; empty when unset.
    #[rkyv(with = SymText)]
    pub node_class: Sym,
    #[rkyv(with = ArcStr)]
    pub http_addr: Arc<str>,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub attributes: BTreeMap<Arc<str>, Arc<str>>,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub meta: BTreeMap<Arc<str>, Arc<str>>,
    pub resources: NodeResources,
    pub reserved: ReservedResources,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub drivers: BTreeMap<Arc<str>, DriverInfo>,
    pub status: NodeStatus,
    #[rkyv(with = ArcStr)]
    pub status_description: Arc<str>,
    pub eligibility: SchedulingEligibility,
    pub drain: Option<DrainStrategy>,
    pub status_updated_at_ns: TimeNs,
    /// Hash of everything feasibility reads except unique values (see
    /// [`Node::compute_class`]); nodes with equal classes are interchangeable
    /// to constraint checks, so results are cached per class.
    pub computed_class: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Node {
    /// A ready, eligible node with the given capacity, for tests and simulation.
    pub fn new(id: NodeId, name: &str, datacenter: &str, resources: NodeResources) -> Node {
        let mut node = Node {
            id,
            name: name.into(),
            datacenter: Sym::new(datacenter),
            node_pool: Sym::new("default"),
            node_class: Sym::new(""),
            http_addr: "".into(),
            attributes: BTreeMap::new(),
            meta: BTreeMap::new(),
            resources,
            reserved: ReservedResources::default(),
            drivers: BTreeMap::new(),
            status: NodeStatus::Ready,
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

    /// Whether new work may be placed here.
    pub fn ready_for_placement(&self) -> bool {
        self.status == NodeStatus::Ready && self.eligibility == SchedulingEligibility::Eligible && self.drain.is_none()
    }

    /// Capacity left for allocations: total minus reserved.
    pub fn allocatable(&self) -> ComparableResources {
        ComparableResources {
            cpu_mhz: self.resources.cpu_mhz.saturating_sub(self.reserved.cpu_mhz),
            memory_mb: self.resources.memory_mb.saturating_sub(self.reserved.memory_mb),
            disk_mb: self.resources.disk_mb.saturating_sub(self.reserved.disk_mb),
            cores: self.resources.cores,
        }
    }

    /// MHz one reserved core is worth on this node.
    pub fn mhz_per_core(&self) -> u64 {
        if self.resources.cores == 0 { 0 } else { self.resources.cpu_mhz / u64::from(self.resources.cores) }
    }

    /// Recompute `computed_class`: a hash of datacenter, pool, class, drivers,
    /// devices, and the attributes and meta whose keys are not `unique.`-prefixed.
    pub fn compute_class(&mut self) {
        // Interned symbols hash by their text, not their process-local
        // number: every server must compute the same class for a node
        // (blocked evals are keyed by it across leader changes).
        let mut h = std::hash::DefaultHasher::new();
        self.datacenter.text().hash(&mut h);
        self.node_pool.text().hash(&mut h);
        self.node_class.text().hash(&mut h);
        for (k, v) in self.attributes.iter().filter(|(k, _)| !is_unique_key(k)) {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        0xFFu8.hash(&mut h);
        for (k, v) in self.meta.iter().filter(|(k, _)| !is_unique_key(k)) {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        0xFEu8.hash(&mut h);
        for (name, d) in &self.drivers {
            name.hash(&mut h);
            d.detected.hash(&mut h);
            d.healthy.hash(&mut h);
        }
        for d in &self.resources.devices {
            d.vendor.hash(&mut h);
            d.kind.hash(&mut h);
            d.name.hash(&mut h);
            for (k, v) in &d.attributes {
                k.hash(&mut h);
                format!("{v:?}").hash(&mut h);
            }
        }
        self.computed_class = h.finish();
    }
}

/// Attribute and meta keys under `unique.` differ per node and are left out of
/// the computed class; constraints on them are "escaped" and checked per node.
pub fn is_unique_key(key: &str) -> bool {
    key.starts_with("unique.")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The class is the same in every process: it must not depend on the
    /// order strings were interned in (servers intern in different orders).
    #[test]
    fn computed_class_does_not_depend_on_interning_order() {
        for i in 0..100 {
            // Shift the interner: later symbols get different numbers.
            let _ = Sym::new(&format!("class-test-noise-{i}"));
        }
        let mut node = Node::new(
            crate::ids::IdGen::with_seed(1).node(),
            "n1",
            "class-test-dc",
            NodeResources { cpu_mhz: 1000, memory_mb: 1024, ..Default::default() },
        );
        node.node_class = Sym::new("class-test-gpu");
        node.compute_class();
        expect_test::expect!["2597235462040017882"].assert_eq(&node.computed_class.to_string());
    }
}
