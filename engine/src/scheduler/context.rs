//! Plan-local bookkeeping: what this scheduler run has already placed on and
//! removed from each node, so later placements of the same run see it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ids::{AllocId, IdBuildHasher, NodeId};
use crate::model::{AllocatedResources, Allocation, ComparableResources, Node};
use crate::state::{NodeUsage, State};

/// Changes this run made to one node.
#[derive(Debug, Default, Clone)]
pub(super) struct NodeDelta {
    pub(super) added: ComparableResources,
    pub(super) removed: ComparableResources,
    pub(super) ports_added: Vec<u16>,
    pub(super) ports_removed: Vec<u16>,
    pub(super) instances_added: Vec<Arc<str>>,
    pub(super) instances_removed: Vec<Arc<str>>,
    /// Allocations placed here by this run, per task group index.
    pub(super) placed_by_group: Vec<(u16, u32)>,
    /// Existing allocations this run stops or preempts here.
    pub(super) removed_allocs: Vec<AllocId>,
}

impl NodeDelta {
    pub(super) fn placed_in_group(&self, group_index: u16) -> u32 {
        self.placed_by_group.iter().find(|(g, _)| *g == group_index).map_or(0, |(_, n)| *n)
    }

    /// Record that `alloc` stops holding its resources in this run.
    pub(super) fn release(&mut self, alloc: &Allocation) {
        if alloc.is_terminal() || self.removed_allocs.contains(&alloc.id) {
            return;
        }
        self.removed_allocs.push(alloc.id);
        self.removed.add(&alloc.resources.comparable);
        self.ports_removed.extend(alloc.resources.ports.iter().map(|p| p.value));
        self.instances_removed.extend(alloc.resources.devices.iter().flat_map(|dev| dev.instance_ids.iter().cloned()));
    }

    pub(super) fn placed_total(&self) -> u32 {
        self.placed_by_group.iter().map(|(_, n)| n).sum()
    }
}

/// The per-run view of node usage: committed usage plus this run's changes.
#[derive(Debug, Default)]
pub(super) struct PlanLocal {
    deltas: HashMap<NodeId, NodeDelta, IdBuildHasher>,
}

/// One node's usage as this run sees it.
#[derive(Debug)]
pub(super) struct NodeView<'a> {
    pub(super) committed: Option<&'a NodeUsage>,
    pub(super) delta: Option<&'a NodeDelta>,
}

impl NodeView<'_> {
    pub(super) fn used(&self) -> ComparableResources {
        let mut used = self.committed.map(|u| u.used).unwrap_or_default();
        if let Some(d) = self.delta {
            used.add(&d.added);
            used.subtract(&d.removed);
        }
        used
    }

    pub(super) fn port_used(&self, port: u16) -> bool {
        let committed = self.committed.is_some_and(|u| u.port_used(port));
        match self.delta {
            Some(d) => d.ports_added.contains(&port) || (committed && !d.ports_removed.contains(&port)),
            None => committed,
        }
    }

    pub(super) fn instance_used(&self, id: &str) -> bool {
        let committed = self.committed.is_some_and(|u| u.instance_used(id));
        match self.delta {
            Some(d) => {
                d.instances_added.iter().any(|i| &**i == id)
                    || (committed && !d.instances_removed.iter().any(|i| &**i == id))
            }
            None => committed,
        }
    }

    pub(super) fn alloc_removed(&self, id: AllocId) -> bool {
        self.delta.is_some_and(|d| d.removed_allocs.contains(&id))
    }
}

impl PlanLocal {
    /// A plan-local view reusing `deltas`' allocation (emptied first).
    pub(super) fn with_buffer(mut deltas: HashMap<NodeId, NodeDelta, IdBuildHasher>) -> PlanLocal {
        deltas.clear();
        PlanLocal { deltas }
    }

    pub(super) fn into_buffer(self) -> HashMap<NodeId, NodeDelta, IdBuildHasher> {
        self.deltas
    }

    pub(super) fn view<'a>(&'a self, state: &'a State, node: &Node) -> NodeView<'a> {
        NodeView { committed: state.node_usage(node.id), delta: self.deltas.get(&node.id) }
    }

    pub(super) fn delta(&self, node_id: NodeId) -> Option<&NodeDelta> {
        self.deltas.get(&node_id)
    }

    pub(super) fn add(&mut self, node_id: NodeId, group_index: u16, resources: &AllocatedResources) {
        let d = self.deltas.entry(node_id).or_default();
        d.added.add(&resources.comparable);
        d.ports_added.extend(resources.ports.iter().map(|p| p.value));
        d.instances_added.extend(resources.devices.iter().flat_map(|dev| dev.instance_ids.iter().cloned()));
        match d.placed_by_group.iter_mut().find(|(g, _)| *g == group_index) {
            Some((_, n)) => *n += 1,
            None => d.placed_by_group.push((group_index, 1)),
        }
    }

    /// Record that `alloc` stops holding its resources in this run.
    pub(super) fn remove(&mut self, alloc: &Allocation) {
        if !alloc.is_terminal() {
            self.deltas.entry(alloc.node_id).or_default().release(alloc);
        }
    }
}
