//! Device instance assignment for one placement.
//!
//! For a request of `count` instances the allocator prefers, in order: one
//! NVLink island, then one NUMA node, and among those the tightest fit (the
//! island or NUMA node with the fewest free instances that still holds the
//! request), so whole islands stay free for later large requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::feasible;
use crate::model::{AssignedDevice, DeviceInstance, Node, Task};

use super::context::NodeView;

/// Assign instances for every device request of every task of a group.
/// Returns the assignments and the mean device affinity score, or the name
/// of the request that could not be met.
pub(super) fn assign_devices(
    node: &Node,
    view: &NodeView<'_>,
    tasks: &[Task],
) -> Result<(Vec<AssignedDevice>, Option<f64>), String> {
    let mut out: Vec<AssignedDevice> = Vec::new();
    let mut affinity_scores = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        for req in &task.resources.devices {
            let mut best: Option<(f64, AssignedDevice)> = None;
            for (_, group) in feasible::device_groups_for(node, req) {
                let free: Vec<&DeviceInstance> = group
                    .instances
                    .iter()
                    .filter(|i| {
                        i.healthy && !view.instance_used(&i.id) && !out.iter().any(|a| a.instance_ids.contains(&i.id))
                    })
                    .collect();
                let Some(chosen) = choose_instances(&free, req.count as usize) else { continue };
                let score = feasible::device_affinity_score(group, req);
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((
                        score,
                        AssignedDevice {
                            task_index: u16::try_from(ti).unwrap_or(u16::MAX),
                            vendor: group.vendor.clone(),
                            kind: group.kind.clone(),
                            name: group.name.clone(),
                            instance_ids: chosen,
                        },
                    ));
                }
            }
            let Some((score, assigned)) = best else {
                return Err(format!("devices exhausted: {}", req.name));
            };
            if !req.affinities.is_empty() {
                affinity_scores.push(score);
            }
            out.push(assigned);
        }
    }
    let affinity =
        (!affinity_scores.is_empty()).then(|| affinity_scores.iter().sum::<f64>() / affinity_scores.len() as f64);
    Ok((out, affinity))
}

/// Pick `count` of the free instances by locality, or `None` if too few.
fn choose_instances(free: &[&DeviceInstance], count: usize) -> Option<Vec<Arc<str>>> {
    if free.len() < count || count == 0 {
        return None;
    }
    if count == 1 {
        // Tightest island for a single instance too: take from the most
        // used island so the emptier ones stay whole.
        return tightest(free, 1, |i| i.link_island).or_else(|| Some(vec![free[0].id.clone()]));
    }
    tightest(free, count, |i| i.link_island)
        .or_else(|| tightest(free, count, |i| i.numa_node))
        .or_else(|| Some(free.iter().take(count).map(|i| i.id.clone()).collect()))
}

/// The smallest locality group (by free instances) that holds `count`.
fn tightest(
    free: &[&DeviceInstance],
    count: usize,
    key: impl Fn(&DeviceInstance) -> Option<u16>,
) -> Option<Vec<Arc<str>>> {
    let mut groups: BTreeMap<u16, Vec<&DeviceInstance>> = BTreeMap::new();
    for i in free {
        if let Some(k) = key(i) {
            groups.entry(k).or_default().push(i);
        }
    }
    groups
        .into_values()
        .filter(|g| g.len() >= count)
        .min_by_key(|g| g.len())
        .map(|g| g.iter().take(count).map(|i| i.id.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, island: u16) -> DeviceInstance {
        DeviceInstance {
            id: id.into(),
            healthy: true,
            health_description: "".into(),
            pci_bus_id: None,
            numa_node: Some(island),
            link_island: Some(island),
        }
    }

    #[test]
    fn prefers_one_island_and_tightest_fit() {
        let all = [inst("a0", 0), inst("a1", 0), inst("a2", 0), inst("b0", 1), inst("b1", 1)];
        let free: Vec<&DeviceInstance> = all.iter().collect();
        let two = choose_instances(&free, 2).unwrap();
        assert_eq!(two.iter().map(|s| &**s).collect::<Vec<_>>(), ["b0", "b1"], "island 1 is the tightest fit");
        let three = choose_instances(&free, 3).unwrap();
        assert_eq!(three.iter().map(|s| &**s).collect::<Vec<_>>(), ["a0", "a1", "a2"]);
        let four = choose_instances(&free, 4).unwrap();
        assert_eq!(four.len(), 4, "falls back across islands");
        assert!(choose_instances(&free, 6).is_none());
    }
}
