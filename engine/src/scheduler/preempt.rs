//! Preemption: which lower-priority allocations to evict from a node so a
//! placement fits. Nomad's greedy choice: lowest priority first, and among
//! equal priorities the allocation whose resources are closest to what is
//! still missing; then drop any victim that turned out to be unnecessary.

use std::sync::Arc;

use crate::model::{Allocation, ComparableResources, Node};
use crate::state::State;

use super::context::NodeView;

/// A job may only preempt allocations of jobs at least this much lower in
/// priority (Nomad's rule), so near-equal jobs never evict each other.
pub(super) const PREEMPTION_PRIORITY_DELTA: u8 = 10;

/// Whether a job of `priority` may evict an allocation of `victim`.
pub(super) fn may_preempt(priority: u8, victim: &Allocation) -> bool {
    u16::from(victim.job.priority) + u16::from(PREEMPTION_PRIORITY_DELTA) <= u16::from(priority)
}

/// Normalised distance between what is missing and what an allocation frees.
fn distance(missing: &ComparableResources, frees: &ComparableResources) -> f64 {
    let dim = |need: u64, have: u64| if need == 0 { 0.0 } else { (need as f64 - have as f64) / need as f64 };
    (dim(missing.cpu_mhz, frees.cpu_mhz).powi(2)
        + dim(missing.memory_mb, frees.memory_mb).powi(2)
        + dim(missing.disk_mb, frees.disk_mb).powi(2))
    .sqrt()
}

fn missing(used_with_ask: &ComparableResources, capacity: &ComparableResources) -> ComparableResources {
    ComparableResources {
        cpu_mhz: used_with_ask.cpu_mhz.saturating_sub(capacity.cpu_mhz),
        memory_mb: used_with_ask.memory_mb.saturating_sub(capacity.memory_mb),
        disk_mb: used_with_ask.disk_mb.saturating_sub(capacity.disk_mb),
        cores: used_with_ask.cores.saturating_sub(capacity.cores),
    }
}

/// Victims that make `used_with_ask` fit the node, or `None` if evicting
/// every eligible allocation would still not be enough.
pub(super) fn find_victims(
    state: &State,
    node: &Node,
    view: &NodeView<'_>,
    used_with_ask: ComparableResources,
    priority: u8,
) -> Option<Vec<Arc<Allocation>>> {
    let capacity = node.allocatable();
    let mut eligible: Vec<&Arc<Allocation>> = state
        .allocs_by_node(node.id)
        .filter(|a| !a.is_terminal() && !view.alloc_removed(a.id))
        .filter(|a| may_preempt(priority, a))
        .collect();
    eligible.sort_by_key(|a| (a.job.priority, a.id));
    let mut used = used_with_ask;
    let mut victims: Vec<Arc<Allocation>> = Vec::new();
    while used.exceeded_dimension(&capacity).is_some() {
        let need = missing(&used, &capacity);
        let lowest = eligible.first()?.job.priority;
        let (at, _) =
            eligible.iter().enumerate().filter(|(_, a)| a.job.priority == lowest).min_by(|(_, a), (_, b)| {
                distance(&need, &a.resources.comparable).total_cmp(&distance(&need, &b.resources.comparable))
            })?;
        let victim = eligible.remove(at);
        used.subtract(&victim.resources.comparable);
        victims.push(victim.clone());
    }
    // Drop victims that are not needed after all, highest priority first.
    victims.sort_by_key(|a| std::cmp::Reverse(a.job.priority));
    let mut i = 0;
    while i < victims.len() {
        let mut without = used;
        without.add(&victims[i].resources.comparable);
        if without.exceeded_dimension(&capacity).is_none() {
            used = without;
            victims.remove(i);
        } else {
            i += 1;
        }
    }
    Some(victims)
}
