//! Feasibility of one task group on one node: drivers, constraints (job,
//! group and task level), device requests, `distinct_hosts` and
//! `distinct_property`.
//!
//! Everything that depends only on a node's computed class is checked once
//! per class and cached; constraints on `unique.*` values "escape" the class
//! and are checked per node, and so are the distinct constraints, which
//! depend on where this job's other allocations are.

use std::collections::HashMap;
use std::sync::Arc;

use crate::feasible::{self, RegexCache};
use crate::ids::{IdBuildHasher, NodeId};
use crate::model::{Allocation, Constraint, ConstraintOp, DeviceRequest, Job, Node};

use super::context::PlanLocal;

/// Why a node was filtered out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Filtered {
    /// A class-level check failed (cached); the text names it.
    Class(Arc<str>),
    /// A per-node check failed; the text names it.
    Node(Arc<str>),
}

#[derive(Debug)]
struct DistinctProperty {
    constraint: Constraint,
    /// Limited to this group's allocations (group-level), or the whole job.
    group: Option<u16>,
    limit: u32,
    /// Allocations per property value: existing ones plus this run's.
    counts: HashMap<String, u32>,
}

/// The feasibility checks of one task group, with their per-class cache.
#[derive(Debug)]
pub(super) struct GroupChecker {
    class_constraints: Vec<Constraint>,
    escaped_constraints: Vec<Constraint>,
    drivers: Vec<Arc<str>>,
    devices: Vec<DeviceRequest>,
    /// `distinct_hosts` scope: `Some(None)` job-wide, `Some(Some(g))` per group.
    distinct_hosts: Option<Option<u16>>,
    distinct_properties: Vec<DistinctProperty>,
    class_cache: HashMap<u64, Result<(), Arc<str>>, IdBuildHasher>,
    regex: RegexCache,
}

/// Where this job's live allocations are, for the distinct checks.
#[derive(Debug, Default)]
pub(super) struct JobPlacements {
    /// Existing non-terminal allocations per node: their group indexes.
    pub(super) groups_by_node: HashMap<NodeId, Vec<u16>, IdBuildHasher>,
}

impl JobPlacements {
    pub(super) fn new(job: &Job, existing: &[Arc<Allocation>]) -> JobPlacements {
        let mut groups_by_node: HashMap<NodeId, Vec<u16>, IdBuildHasher> = HashMap::default();
        for alloc in existing.iter().filter(|a| !a.is_terminal()) {
            if let Some(gi) = job.group_index(alloc.group_name()) {
                groups_by_node.entry(alloc.node_id).or_default().push(gi as u16);
            }
        }
        JobPlacements { groups_by_node }
    }
}

impl GroupChecker {
    pub(super) fn new(
        job: &Job,
        group_index: u16,
        existing: &[Arc<Allocation>],
        nodes: &dyn Fn(NodeId) -> Option<Arc<Node>>,
    ) -> GroupChecker {
        let group = &job.task_groups[usize::from(group_index)];
        let mut checker = GroupChecker {
            class_constraints: Vec::new(),
            escaped_constraints: Vec::new(),
            drivers: Vec::new(),
            devices: Vec::new(),
            distinct_hosts: None,
            distinct_properties: Vec::new(),
            class_cache: HashMap::default(),
            regex: RegexCache::new(),
        };
        let levels = [(&job.constraints, None), (&group.constraints, Some(group_index))];
        let task_constraints = group.tasks.iter().flat_map(|t| t.constraints.iter()).map(|c| (c, Some(group_index)));
        let all = levels.iter().flat_map(|(cs, scope)| cs.iter().map(move |c| (c, *scope))).chain(task_constraints);
        for (c, scope) in all {
            match c.operand {
                ConstraintOp::DistinctHosts => {
                    if &*c.r_target != "false" {
                        checker.distinct_hosts = Some(scope);
                    }
                }
                ConstraintOp::DistinctProperty => {
                    let limit = c.r_target.trim().parse::<u32>().ok().filter(|n| *n > 0).unwrap_or(1);
                    let mut counts: HashMap<String, u32> = HashMap::new();
                    for alloc in existing.iter().filter(|a| !a.is_terminal()) {
                        let in_scope =
                            scope.is_none_or(|g| job.group_index(alloc.group_name()) == Some(usize::from(g)));
                        if !in_scope {
                            continue;
                        }
                        if let Some(node) = nodes(alloc.node_id)
                            && let Some(v) = feasible::resolve_target(&c.l_target, &node)
                        {
                            *counts.entry(v.into_owned()).or_default() += 1;
                        }
                    }
                    checker.distinct_properties.push(DistinctProperty {
                        constraint: c.clone(),
                        group: scope,
                        limit,
                        counts,
                    });
                }
                _ if feasible::constraint_escapes(c) => checker.escaped_constraints.push(c.clone()),
                _ => checker.class_constraints.push(c.clone()),
            }
        }
        for task in &group.tasks {
            if !checker.drivers.contains(&task.driver) {
                checker.drivers.push(task.driver.clone());
            }
            checker.devices.extend(task.resources.devices.iter().cloned());
        }
        checker
    }

    /// Whether a constraint escaped class caching (for blocked evals).
    pub(super) fn has_escaped(&self) -> bool {
        !self.escaped_constraints.is_empty()
    }

    /// Class-level verdicts so far: class → feasible.
    pub(super) fn class_verdicts(&self) -> impl Iterator<Item = (u64, bool)> + '_ {
        self.class_cache.iter().map(|(c, r)| (*c, r.is_ok()))
    }

    pub(super) fn check(&mut self, node: &Node, placements: &JobPlacements, local: &PlanLocal) -> Result<(), Filtered> {
        let class = node.computed_class;
        let verdict = match self.class_cache.get(&class) {
            Some(v) => v.clone(),
            None => {
                let v = self.check_class(node);
                self.class_cache.insert(class, v.clone());
                v
            }
        };
        verdict.map_err(Filtered::Class)?;
        for c in &self.escaped_constraints {
            if !feasible::check_constraint(c, node, &mut self.regex) {
                return Err(Filtered::Node(c.to_string().into()));
            }
        }
        if let Some(scope) = self.distinct_hosts {
            let existing = placements.groups_by_node.get(&node.id).map(Vec::as_slice).unwrap_or(&[]);
            let delta = local.delta(node.id);
            let taken = match scope {
                None => !existing.is_empty() || delta.is_some_and(|d| d.placed_total() > 0),
                Some(g) => existing.contains(&g) || delta.is_some_and(|d| d.placed_in_group(g) > 0),
            };
            if taken {
                return Err(Filtered::Node("distinct_hosts".into()));
            }
        }
        for dp in &self.distinct_properties {
            let Some(value) = feasible::resolve_target(&dp.constraint.l_target, node) else {
                return Err(Filtered::Node(format!("missing property {}", dp.constraint.l_target).into()));
            };
            if dp.counts.get(&*value).copied().unwrap_or(0) >= dp.limit {
                return Err(Filtered::Node(format!("distinct_property: {}", dp.constraint.l_target).into()));
            }
        }
        Ok(())
    }

    fn check_class(&mut self, node: &Node) -> Result<(), Arc<str>> {
        for driver in &self.drivers {
            let ok = node.drivers.get(driver).is_some_and(|d| d.detected && d.healthy);
            if !ok {
                return Err(format!("missing drivers: {driver}").into());
            }
        }
        for c in &self.class_constraints {
            if !feasible::check_constraint(c, node, &mut self.regex) {
                return Err(c.to_string().into());
            }
        }
        for d in &self.devices {
            if !feasible::device_feasible(node, d) {
                return Err(format!("missing devices: {}", d.name).into());
            }
        }
        Ok(())
    }

    /// Count a placement of group `placed_group` on `node` toward the
    /// distinct_property limits (job-wide limits count every group).
    pub(super) fn record_placement(&mut self, node: &Node, placed_group: u16) {
        for dp in &mut self.distinct_properties {
            if dp.group.is_some_and(|g| g != placed_group) {
                continue;
            }
            if let Some(v) = feasible::resolve_target(&dp.constraint.l_target, node) {
                *dp.counts.entry(v.into_owned()).or_default() += 1;
            }
        }
    }
}
