//! The system and sysbatch scheduler: one allocation per task group on every
//! eligible node, reconciled node by node. Preemption is on by default for
//! system jobs (scheduler configuration).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::ids::{IdGen, NodeId};
use crate::model::{
    AllocMetric, AllocPreemption, AllocStop, Allocation, ClientStatus, Evaluation, Job, JobType, NodeStatus, TimeNs,
};
use crate::state::State;

use super::ScheduleOutcome;
use super::candidates::PlacementScope;
use super::reconcile::{DesiredUpdates, tasks_updated};
use super::stack::{Stack, StackConfig};

pub(super) fn schedule(
    state: &State,
    eval: &Evaluation,
    job: Option<Arc<Job>>,
    now_ns: TimeNs,
    seed: u64,
    ids: &mut IdGen,
) -> ScheduleOutcome {
    let allocs = super::job_allocs(state, eval);
    let mut out = ScheduleOutcome::default();
    out.plan.job = job.clone();
    let stop = |out: &mut ScheduleOutcome,
                alloc: &Allocation,
                description: &str,
                client_status: Option<ClientStatus>| {
        out.desired_updates.entry(alloc.group().name.clone()).or_default().stop += 1;
        out.plan.append_stop(
            alloc.node_id,
            AllocStop { alloc_id: alloc.id, description: description.into(), client_status, followup_eval_id: None },
        );
    };
    let Some(job) = job.filter(|j| !j.stop) else {
        for alloc in allocs.iter().filter(|a| !a.is_terminal()) {
            stop(&mut out, alloc, "alloc not needed due to job update", None);
        }
        return out;
    };

    let config = state.scheduler_config();
    let stack_config = StackConfig { algorithm: config.algorithm, preemption: config.preemption_enabled(job.job_type) };
    let mut stack = Stack::new(state, &job, &allocs, seed, stack_config);
    let mut scope = PlacementScope::new(&job);

    // Allocations per (node, group).
    let mut by_node: HashMap<(NodeId, u16), Vec<&Arc<Allocation>>> = HashMap::new();
    for alloc in &allocs {
        match job.group_index(alloc.group_name()) {
            Some(gi) => by_node.entry((alloc.node_id, gi as u16)).or_default().push(alloc),
            None if !alloc.is_terminal() => stop(&mut out, alloc, "alloc not needed as task group was removed", None),
            None => {}
        }
    }
    // Allocations on nodes that are gone, or left the job's scope.
    for alloc in allocs.iter().filter(|a| !a.is_terminal()) {
        match state.node(alloc.node_id) {
            None => stop(&mut out, alloc, "alloc is lost since its node is down", Some(ClientStatus::Lost)),
            Some(node) if !scope.contains(node) => {
                stop(&mut out, alloc, "alloc not needed as node is no longer in the job's datacenters", None)
            }
            _ => {}
        }
    }

    let mut failed: BTreeMap<Arc<str>, AllocMetric> = BTreeMap::new();
    for node in state.nodes() {
        if !scope.contains(node) {
            continue;
        }
        for (gi, group) in job.task_groups.iter().enumerate() {
            let gi = gi as u16;
            let existing = by_node.get(&(node.id, gi)).map(Vec::as_slice).unwrap_or(&[]);
            let live: Vec<&&Arc<Allocation>> = existing.iter().filter(|a| !a.is_terminal()).collect();
            let mut desired = DesiredUpdates::default();
            match node.status {
                NodeStatus::Down | NodeStatus::Disconnected => {
                    for a in &live {
                        desired.lost += 1;
                        stop(&mut out, a, "alloc is lost since its node is down", Some(ClientStatus::Lost));
                    }
                    merge(&mut out, &group.name, desired);
                    continue;
                }
                _ => {}
            }
            let drain_stops_us = node.drain.as_ref().is_some_and(|d| !d.ignore_system_jobs);
            if drain_stops_us {
                for a in &live {
                    desired.migrate += 1;
                    stop(&mut out, a, "alloc is being migrated", None);
                }
                merge(&mut out, &group.name, desired);
                continue;
            }
            if !node.ready_for_placement() {
                // Ineligible or initializing: keep what runs, place nothing new.
                desired.ignore += live.len() as u32;
                merge(&mut out, &group.name, desired);
                continue;
            }
            let mut live_iter = live.into_iter();
            if let Some(current) = live_iter.next() {
                for extra in live_iter {
                    stop(&mut out, extra, "alloc not needed due to job update", None);
                }
                if current.job.job_modify_index == job.job_modify_index && current.job.version == job.version {
                    desired.ignore += 1;
                } else if tasks_updated(current.group(), group) {
                    desired.destructive_update += 1;
                    stop(&mut out, current, "alloc is being updated due to job update", None);
                    stack.release(current);
                    place_on(&mut stack, &job, eval, gi, node, Some(current), now_ns, ids, &mut out, &mut failed);
                } else {
                    desired.in_place_update += 1;
                    let mut updated = (***current).clone();
                    updated.job = job.clone();
                    updated.eval_id = eval.id;
                    out.plan.append_alloc(Arc::new(updated));
                }
                merge(&mut out, &group.name, desired);
                continue;
            }
            let finished = existing.iter().any(|a| a.ran_successfully() && a.job.version == job.version);
            if job.job_type == JobType::SysBatch && finished {
                desired.ignore += 1;
                merge(&mut out, &group.name, desired);
                continue;
            }
            desired.place += 1;
            merge(&mut out, &group.name, desired);
            place_on(&mut stack, &job, eval, gi, node, None, now_ns, ids, &mut out, &mut failed);
        }
    }
    for group in &job.task_groups {
        let queued = failed.get(&group.name).map_or(0, |m| m.coalesced_failures + 1);
        out.queued_allocations.insert(group.name.clone(), queued);
    }
    out.failed_tg_allocs = failed;
    out
}

fn merge(out: &mut ScheduleOutcome, group: &Arc<str>, d: DesiredUpdates) {
    let e = out.desired_updates.entry(group.clone()).or_default();
    e.place += d.place;
    e.stop += d.stop;
    e.ignore += d.ignore;
    e.in_place_update += d.in_place_update;
    e.destructive_update += d.destructive_update;
    e.migrate += d.migrate;
    e.lost += d.lost;
}

#[allow(clippy::too_many_arguments)]
fn place_on<'a>(
    stack: &mut Stack<'a>,
    job: &Arc<Job>,
    eval: &Evaluation,
    gi: u16,
    node: &'a Arc<crate::model::Node>,
    previous: Option<&Arc<Allocation>>,
    now_ns: TimeNs,
    ids: &mut IdGen,
    out: &mut ScheduleOutcome,
    failed: &mut BTreeMap<Arc<str>, AllocMetric>,
) {
    let group = &job.task_groups[usize::from(gi)];
    match stack.select_on_node(gi, node) {
        Ok(selection) => {
            stack.commit(gi, &selection);
            let spec = super::NewAlloc {
                job,
                job_tag: job.key().tag(),
                eval,
                group_index: gi,
                name_index: 0,
                node_id: node.id,
                resources: Arc::new(selection.resources),
                previous: previous.map(|a| a.id),
                reschedule_tracker: None,
            };
            let alloc = super::new_allocation(spec, ids, now_ns);
            for victim in &selection.preempted {
                out.plan
                    .node_preemptions
                    .entry(victim.node_id)
                    .or_default()
                    .push(AllocPreemption { alloc_id: victim.id, preempted_by: alloc.id });
            }
            out.plan.append_alloc(alloc);
        }
        Err(mut metric) => {
            // A node filtered by constraints simply is not one of this job's
            // nodes; only exhausted nodes count as failed placements.
            if metric.nodes_exhausted == 0 {
                return;
            }
            match failed.get_mut(&group.name) {
                Some(m) => {
                    m.coalesced_failures += 1;
                    m.nodes_evaluated += 1;
                    m.nodes_exhausted += metric.nodes_exhausted;
                    for (k, v) in std::mem::take(&mut metric.dimension_exhausted) {
                        *m.dimension_exhausted.entry(k).or_default() += v;
                    }
                }
                None => {
                    failed.insert(group.name.clone(), *metric);
                }
            }
        }
    }
}
