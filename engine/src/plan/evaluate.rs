//! Plan evaluation: the second, authoritative fit check. Whatever the
//! scheduler believed, a node's part of a plan is committed only if, against
//! the latest state, its live allocations minus the plan's stops and
//! preemptions plus the plan's new and updated allocations fit the node:
//! cpu, memory, disk, cores, ports and device instances.

use crate::fsm::PlanApplied;
use crate::ids::NodeId;
use crate::model::{Allocation, Plan, PlanResult, TimeNs};
use crate::state::{FitError, InstanceRule, NodeUsage, State, check_fit};

/// Why one node's part of a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRejection {
    #[error("node {0} does not exist")]
    NodeMissing(NodeId),
    #[error("node {0} is not ready for new allocations")]
    NodeNotReady(NodeId),
    #[error("node {node}: {fit}")]
    DoesNotFit { node: NodeId, fit: FitError },
    #[error("allocation {0} does not carry its job's tag")]
    UntaggedAlloc(crate::ids::AllocId),
}

/// Check one node's part of `plan` against `state`.
pub fn evaluate_node(state: &State, plan: &Plan, node_id: NodeId) -> Result<(), NodeRejection> {
    let new_allocs = plan.node_allocation.get(&node_id).map(Vec::as_slice).unwrap_or(&[]);
    let Some(node) = state.node(node_id) else {
        // Stops on a vanished node are fine; placements are not.
        return if new_allocs.is_empty() { Ok(()) } else { Err(NodeRejection::NodeMissing(node_id)) };
    };
    // The scheduler leaves `create_index` at 0 on allocations it creates;
    // updates carry the index of the allocation they update.
    if let Some(bad) = new_allocs.iter().find(|a| a.id.job_tag() != a.job.key().tag()) {
        return Err(NodeRejection::UntaggedAlloc(bad.id));
    }
    let places_new = new_allocs.iter().any(|a| a.create_index == 0);
    if places_new && !node.ready_for_placement() {
        return Err(NodeRejection::NodeNotReady(node_id));
    }
    let stops = plan.node_update.get(&node_id).map(Vec::as_slice).unwrap_or(&[]);
    let preemptions = plan.node_preemptions.get(&node_id).map(Vec::as_slice).unwrap_or(&[]);
    let removed_ids = stops
        .iter()
        .map(|s| s.alloc_id)
        .chain(preemptions.iter().map(|p| p.alloc_id))
        .chain(new_allocs.iter().filter(|a| a.create_index != 0).map(|a| a.id));

    let committed = state.node_usage(node_id);
    let mut removed: Vec<&Allocation> = Vec::new();
    for id in removed_ids {
        if let Some(existing) = state.alloc(id)
            && !existing.is_terminal()
            && existing.node_id == node_id
            && !removed.iter().any(|r| r.id == id)
        {
            removed.push(existing);
        }
    }
    let has_detail = |a: &Allocation| !a.resources.ports.is_empty() || !a.resources.devices.is_empty();
    let detailed = removed.iter().any(|a| has_detail(a)) || new_allocs.iter().any(|a| has_detail(a));
    if !detailed {
        // The common case: only cpu, memory and disk move. Pure arithmetic.
        let mut used = committed.map(|u| u.used).unwrap_or_default();
        for r in &removed {
            used.subtract(&r.resources.comparable);
        }
        for a in new_allocs.iter().filter(|a| !a.is_terminal()) {
            used.add(&a.resources.comparable);
        }
        return check_fit(node, &used).map_err(|fit| NodeRejection::DoesNotFit { node: node_id, fit });
    }
    let mut usage: NodeUsage = committed.cloned().unwrap_or_default();
    for r in &removed {
        usage.remove(r);
    }
    for alloc in new_allocs.iter().filter(|a| !a.is_terminal()) {
        // New placements need healthy instances; updates keep theirs.
        let rule = if alloc.create_index == 0 { InstanceRule::Healthy } else { InstanceRule::Exists };
        usage.add_checked(node, alloc, rule).map_err(|fit| NodeRejection::DoesNotFit { node: node_id, fit })?;
    }
    check_fit(node, &usage.used).map_err(|fit| NodeRejection::DoesNotFit { node: node_id, fit })
}

/// Evaluate a whole plan: the parts that fit, the nodes that did not, and
/// for `all_at_once` plans nothing unless everything fits.
pub fn evaluate_plan(state: &State, plan: &Plan) -> (PlanResult, Vec<NodeRejection>) {
    let mut result = PlanResult::default();
    let mut rejections = Vec::new();
    // Every node the plan touches, without building a sorted list: the
    // allocation map first, then nodes only stopped or preempted on.
    let touched = plan
        .node_allocation
        .keys()
        .chain(plan.node_update.keys().filter(|n| !plan.node_allocation.contains_key(n)))
        .chain(
            plan.node_preemptions
                .keys()
                .filter(|n| !plan.node_allocation.contains_key(n) && !plan.node_update.contains_key(n)),
        );
    for &node_id in touched {
        match evaluate_node(state, plan, node_id) {
            Ok(()) => {
                if let Some(v) = plan.node_update.get(&node_id) {
                    result.node_update.insert(node_id, v.clone());
                }
                if let Some(v) = plan.node_allocation.get(&node_id) {
                    result.node_allocation.insert(node_id, v.clone());
                }
                if let Some(v) = plan.node_preemptions.get(&node_id) {
                    result.node_preemptions.insert(node_id, v.clone());
                }
            }
            Err(why) => {
                result.rejected_nodes.push(node_id);
                rejections.push(why);
            }
        }
    }
    if plan.all_at_once && !result.rejected_nodes.is_empty() {
        let rejected = std::mem::take(&mut result.rejected_nodes);
        result = PlanResult { rejected_nodes: plan.nodes(), ..Default::default() };
        debug_assert!(!rejected.is_empty());
    }
    if result.rejected_nodes.is_empty() || !result.is_no_op() {
        result.deployment = plan.deployment.clone();
    }
    (result, rejections)
}

/// The raft command that commits a plan result.
pub fn plan_applied(
    plan: &Plan,
    result: &PlanResult,
    preemption_evals: Vec<crate::model::Evaluation>,
    now_ns: TimeNs,
) -> PlanApplied {
    PlanApplied {
        eval_id: plan.eval_id,
        allocs: result.node_allocation.values().flatten().cloned().collect(),
        stops: result.node_update.values().flatten().cloned().collect(),
        preemptions: result.node_preemptions.values().flatten().cloned().collect(),
        deployment: result.deployment.clone(),
        preemption_evals,
        now_ns,
    }
}
