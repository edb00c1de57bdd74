use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Allocation, ClientStatus, Deployment, Job};
use crate::ids::{AllocId, EvalId, NodeId};
use crate::model::rkyv_with::ArcStr;

/// Stop (or evict) one existing allocation.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocStop {
    pub alloc_id: AllocId,
    #[rkyv(with = ArcStr)]
    pub description: Arc<str>,
    /// Set when the client side is known too, e.g. `lost` on a down node.
    pub client_status: Option<ClientStatus>,
    /// Set on a failed allocation whose replacement waits for a later eval.
    pub followup_eval_id: Option<EvalId>,
}

/// Evict an allocation to make room for a higher-priority one.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocPreemption {
    pub alloc_id: AllocId,
    pub preempted_by: AllocId,
}

/// What one scheduler run wants to change. Submitted to the plan applier,
/// which commits each node's part only if it still fits the latest state.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Plan {
    pub eval_id: EvalId,
    /// Broker delivery token of the eval; a plan from a stale delivery is refused.
    pub eval_token: u64,
    pub priority: u8,
    /// Commit everything or nothing.
    pub all_at_once: bool,
    pub job: Option<Arc<Job>>,
    /// Raft index of the snapshot the scheduler planned against.
    pub snapshot_index: u64,
    pub node_update: BTreeMap<NodeId, Vec<AllocStop>>,
    /// New allocations, and updated ones (in-place updates, annotations).
    pub node_allocation: BTreeMap<NodeId, Vec<Arc<Allocation>>>,
    pub node_preemptions: BTreeMap<NodeId, Vec<AllocPreemption>>,
    pub deployment: Option<Deployment>,
}

impl Plan {
    pub fn is_no_op(&self) -> bool {
        self.node_update.is_empty()
            && self.node_allocation.is_empty()
            && self.node_preemptions.is_empty()
            && self.deployment.is_none()
    }

    pub fn append_alloc(&mut self, alloc: Arc<Allocation>) {
        self.node_allocation.entry(alloc.node_id).or_default().push(alloc);
    }

    pub fn append_stop(&mut self, node_id: NodeId, stop: AllocStop) {
        self.node_update.entry(node_id).or_default().push(stop);
    }

    /// Placements plus updates in the plan.
    pub fn alloc_count(&self) -> usize {
        self.node_allocation.values().map(Vec::len).sum()
    }

    pub fn stop_count(&self) -> usize {
        self.node_update.values().map(Vec::len).sum()
    }

    /// Every node the plan touches, sorted.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .node_update
            .keys()
            .chain(self.node_allocation.keys())
            .chain(self.node_preemptions.keys())
            .copied()
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}

/// What the applier committed of a plan.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PlanResult {
    pub node_update: BTreeMap<NodeId, Vec<AllocStop>>,
    pub node_allocation: BTreeMap<NodeId, Vec<Arc<Allocation>>>,
    pub node_preemptions: BTreeMap<NodeId, Vec<AllocPreemption>>,
    pub deployment: Option<Deployment>,
    /// Nodes whose part did not fit the latest state.
    pub rejected_nodes: Vec<NodeId>,
    /// When non-zero, the scheduler must refresh its state to at least this
    /// index before retrying what was rejected.
    pub refresh_index: u64,
    /// Raft index at which the committed part was applied.
    pub alloc_index: u64,
}

impl PlanResult {
    pub fn is_no_op(&self) -> bool {
        self.node_update.is_empty() && self.node_allocation.is_empty() && self.node_preemptions.is_empty()
    }

    /// Allocations (new and updated) in the committed part.
    pub fn alloc_count_committed(&self) -> usize {
        self.node_allocation.values().map(Vec::len).sum()
    }

    /// Whether everything in `plan` was committed.
    pub fn full_commit(&self, plan: &Plan) -> bool {
        self.rejected_nodes.is_empty()
            && self.node_allocation.len() == plan.node_allocation.len()
            && self.node_update.len() == plan.node_update.len()
    }
}
