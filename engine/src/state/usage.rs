use std::sync::Arc;

use crate::model::{Allocation, ComparableResources, Node};

/// What the non-terminal allocations on one node hold, kept up to date by the
/// FSM so fit checks are O(1) per node instead of a sum over its allocations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeUsage {
    pub used: ComparableResources,
    /// Host ports in use, sorted.
    pub ports: Vec<u16>,
    /// Device instance ids in use, sorted.
    pub device_instances: Vec<Arc<str>>,
    pub alloc_count: u32,
}

impl NodeUsage {
    pub fn add(&mut self, alloc: &Allocation) {
        self.used.add(&alloc.resources.comparable);
        for p in &alloc.resources.ports {
            if let Err(at) = self.ports.binary_search(&p.value) {
                self.ports.insert(at, p.value);
            }
        }
        for d in &alloc.resources.devices {
            for id in &d.instance_ids {
                if let Err(at) = self.device_instances.binary_search(id) {
                    self.device_instances.insert(at, id.clone());
                }
            }
        }
        self.alloc_count += 1;
    }

    pub fn remove(&mut self, alloc: &Allocation) {
        self.used.subtract(&alloc.resources.comparable);
        for p in &alloc.resources.ports {
            if let Ok(at) = self.ports.binary_search(&p.value) {
                self.ports.remove(at);
            }
        }
        for d in &alloc.resources.devices {
            for id in &d.instance_ids {
                if let Ok(at) = self.device_instances.binary_search(id) {
                    self.device_instances.remove(at);
                }
            }
        }
        self.alloc_count = self.alloc_count.saturating_sub(1);
    }

    pub fn port_used(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }

    pub fn instance_used(&self, id: &str) -> bool {
        self.device_instances.binary_search_by(|x| (**x).cmp(id)).is_ok()
    }
}

/// Why a set of allocations does not fit a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error("{0} exhausted")]
    Exhausted(&'static str),
    #[error("port {0} already in use")]
    PortCollision(u16),
    #[error("port {0} is reserved by the node")]
    PortReserved(u16),
    #[error("device instance {0} assigned twice")]
    DeviceCollision(Arc<str>),
    #[error("device instance {0} does not exist on the node or is unhealthy")]
    DeviceUnknown(Arc<str>),
}

/// Check that `usage` (what the allocations meant to be on the node hold)
/// fits the node. This is the single definition of "fits", used by the
/// scheduler's plan-local checks and again by the plan applier.
pub fn check_fit(node: &Node, used: &ComparableResources) -> Result<(), FitError> {
    match used.exceeded_dimension(&node.allocatable()) {
        Some(dim) => Err(FitError::Exhausted(dim)),
        None => Ok(()),
    }
}

/// What a device instance must be for an allocation to hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceRule {
    /// It exists on the node (allocations already placed keep theirs even
    /// when the instance turned unhealthy since).
    Exists,
    /// It exists and is healthy (new placements).
    Healthy,
}

impl NodeUsage {
    /// Add `alloc` after checking its ports and device instances against
    /// what is already counted: the one collision check, shared by the
    /// plan applier and the from-scratch recount.
    pub fn add_checked(&mut self, node: &Node, alloc: &Allocation, rule: InstanceRule) -> Result<(), FitError> {
        for p in &alloc.resources.ports {
            if node.reserved.ports.contains(&p.value) {
                return Err(FitError::PortReserved(p.value));
            }
            if self.port_used(p.value) {
                return Err(FitError::PortCollision(p.value));
            }
        }
        for d in &alloc.resources.devices {
            for id in &d.instance_ids {
                if self.instance_used(id) {
                    return Err(FitError::DeviceCollision(id.clone()));
                }
                let usable = node
                    .resources
                    .devices
                    .iter()
                    .flat_map(|g| g.instances.iter())
                    .any(|i| i.id == *id && (rule == InstanceRule::Exists || i.healthy));
                if !usable {
                    return Err(FitError::DeviceUnknown(id.clone()));
                }
            }
        }
        self.add(alloc);
        Ok(())
    }
}

/// Build a node's usage from scratch out of the allocations on it, checking
/// ports and device instances for collisions. Tests and the perf harness
/// check that the FSM's incremental usage agrees with it.
pub fn usage_from_allocs<'a>(
    node: &Node,
    allocs: impl IntoIterator<Item = &'a Allocation>,
) -> Result<NodeUsage, FitError> {
    let mut usage = NodeUsage::default();
    for alloc in allocs {
        debug_assert!(!alloc.is_terminal(), "terminal allocations hold nothing");
        usage.add_checked(node, alloc, InstanceRule::Exists)?;
    }
    check_fit(node, &usage.used)?;
    Ok(usage)
}
