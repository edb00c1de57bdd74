//! The service and batch scheduler: reconcile, then place what is missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{IdGen, NodeId};
use crate::model::{
    AllocDeploymentStatus, AllocMetric, AllocPreemption, AllocStop, AllocatedResources, Allocation,
    DESCRIPTION_NEEDS_PROMOTION, DESCRIPTION_PENDING_AUTO_PROMOTION, DESCRIPTION_RUNNING, Deployment, DeploymentGroup,
    DeploymentStatus, EvalStatus, Evaluation, Job, JobType, TimeNs, TriggeredBy,
};
use crate::state::State;

use super::ScheduleOutcome;
use super::reconcile::{self, Placement, PlacementReason};
use super::stack::{Selection, Stack, StackConfig};

pub(super) fn schedule(
    state: &State,
    eval: &Evaluation,
    job: Option<Arc<Job>>,
    now_ns: TimeNs,
    seed: u64,
    ids: &mut IdGen,
) -> ScheduleOutcome {
    let (mut out, desired_canaries) = reconcile_and_place(state, eval, job.clone(), now_ns, seed, ids);
    if let Some(job) = job.filter(|j| !j.stop) {
        attach_deployment(state, &job, &desired_canaries, now_ns, &mut out, ids);
    }
    out
}

/// Service jobs with an update strategy roll out each version under a
/// deployment (Nomad's reconciler): the plan's new allocations join the
/// version's active deployment, or a new one the plan creates, which
/// records each group's strategy (canaries wanted, progress deadline). The
/// reconciler paced the rollout; the FSM settles it from client health.
fn attach_deployment(
    state: &State,
    job: &Arc<Job>,
    desired_canaries: &BTreeMap<Arc<str>, u32>,
    now_ns: TimeNs,
    out: &mut ScheduleOutcome,
    ids: &mut IdGen,
) {
    if !job.task_groups.iter().any(|g| job.rollout_strategy(g).is_some()) {
        return;
    }
    // New allocations, and in-place updates to this version (Nomad's
    // reconciler deploys both); not annotations of unchanged allocations.
    let rolls_out = |a: &Allocation| {
        a.create_index == 0
            || (a.job.version == job.version
                && state.alloc(a.id).is_some_and(|stored| stored.job.version != job.version))
    };
    if !out.plan.node_allocation.values().flatten().any(|a| rolls_out(a)) {
        return;
    }
    let key = job.key();
    let current = state
        .latest_deployment(&key)
        .filter(|d| d.job_version == job.version && d.job_modify_index == job.job_modify_index);
    let deployment_id = match current {
        Some(d) if d.status.is_active() => d.id,
        // The version's deployment has ended: its replacements are not part of it.
        Some(_) => return,
        None => {
            let d = new_deployment(job, desired_canaries, now_ns, ids);
            let id = d.id;
            out.plan.deployment = Some(d);
            id
        }
    };
    for alloc in out.plan.node_allocation.values_mut().flatten() {
        if rolls_out(alloc) && alloc.deployment_id != Some(deployment_id) {
            // The plan's allocations are its own (fresh or just copied):
            // no further copy is made. One moved in place into this
            // deployment has its health decided again.
            let alloc = Arc::make_mut(alloc);
            alloc.deployment_id = Some(deployment_id);
            if alloc.create_index != 0 {
                alloc.deployment_status = None;
            }
        }
    }
}

/// A deployment of `job`'s version: one group state per group with an
/// update strategy.
fn new_deployment(
    job: &Job,
    desired_canaries: &BTreeMap<Arc<str>, u32>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Deployment {
    let task_groups: Vec<DeploymentGroup> = job
        .task_groups
        .iter()
        .filter_map(|g| {
            let strategy = job.rollout_strategy(g)?;
            Some(DeploymentGroup {
                name: g.name.clone(),
                auto_revert: strategy.auto_revert,
                auto_promote: strategy.auto_promote,
                promoted: false,
                desired_canaries: desired_canaries.get(&g.name).copied().unwrap_or(0),
                desired_total: g.count,
                progress_deadline_ns: strategy.progress_deadline_ns,
                require_progress_by_ns: if strategy.progress_deadline_ns > 0 {
                    now_ns.saturating_add(strategy.progress_deadline_ns)
                } else {
                    0
                },
            })
        })
        .collect();
    let waiting: Vec<&DeploymentGroup> = task_groups.iter().filter(|g| g.awaits_promotion()).collect();
    let description = if waiting.is_empty() {
        DESCRIPTION_RUNNING
    } else if waiting.iter().all(|g| g.auto_promote) {
        DESCRIPTION_PENDING_AUTO_PROMOTION
    } else {
        DESCRIPTION_NEEDS_PROMOTION
    };
    Deployment {
        id: ids.deployment(),
        job: job.key(),
        job_version: job.version,
        job_modify_index: job.job_modify_index,
        status: DeploymentStatus::Running,
        status_description: description.into(),
        task_groups,
        create_index: 0,
        modify_index: 0,
    }
}

fn reconcile_and_place(
    state: &State,
    eval: &Evaluation,
    job: Option<Arc<Job>>,
    now_ns: TimeNs,
    seed: u64,
    ids: &mut IdGen,
) -> (ScheduleOutcome, BTreeMap<Arc<str>, u32>) {
    let allocs = super::job_allocs(state, eval);
    let rec = reconcile::reconcile(state, eval, job.as_ref(), &allocs, now_ns, ids);
    let desired_canaries = rec.desired_canaries.clone();
    let out = place_reconciled(state, eval, job, rec, &allocs, now_ns, seed, ids);
    (out, desired_canaries)
}

#[allow(clippy::too_many_arguments)]
fn place_reconciled(
    state: &State,
    eval: &Evaluation,
    job: Option<Arc<Job>>,
    rec: reconcile::Reconciled,
    allocs: &[Arc<Allocation>],
    now_ns: TimeNs,
    seed: u64,
    ids: &mut IdGen,
) -> ScheduleOutcome {
    let mut out =
        ScheduleOutcome { desired_updates: rec.desired, followup_evals: rec.followup_evals, ..Default::default() };
    out.plan.job = job.clone();
    out.plan.all_at_once = job.as_ref().is_some_and(|j| j.all_at_once);

    for stop in &rec.stop {
        out.plan.append_stop(
            stop.alloc.node_id,
            AllocStop {
                alloc_id: stop.alloc.id,
                description: stop.description.into(),
                client_status: stop.client_status,
                followup_eval_id: None,
            },
        );
    }
    for (alloc, followup) in &rec.annotate_followup {
        let mut annotated = (**alloc).clone();
        annotated.followup_eval_id = Some(*followup);
        out.plan.append_alloc(Arc::new(annotated));
    }
    let Some(job) = job.filter(|j| !j.stop) else { return out };
    for alloc in &rec.in_place {
        let mut updated = (**alloc).clone();
        updated.job = job.clone();
        updated.eval_id = eval.id;
        out.plan.append_alloc(Arc::new(updated));
    }
    if rec.place.is_empty() {
        return out;
    }

    let config = state.scheduler_config();
    let stack_config = StackConfig { algorithm: config.algorithm, preemption: config.preemption_enabled(job.job_type) };
    let mut stack = Stack::new(state, &job, allocs, seed, stack_config);
    for stop in &rec.stop {
        stack.release(&stop.alloc);
    }
    place_all(&mut stack, &job, eval, &rec.place, now_ns, ids, &mut out);

    if !out.failed_tg_allocs.is_empty() {
        let (classes, escaped) = stack.class_eligibility();
        out.blocked_eval = Some(blocked_eval(eval, &job, classes, escaped, state.index(), now_ns, ids));
    }
    out
}

/// A placement made in this run: the new allocation, the allocations it
/// preempts, and the request it answers.
type Placed<'p> = (Arc<Allocation>, Vec<Arc<Allocation>>, Option<&'p Placement>);

/// Place every requested allocation, group by group; a gang group commits
/// all of its placements or none.
fn place_all<'a>(
    stack: &mut Stack<'a>,
    job: &Arc<Job>,
    eval: &Evaluation,
    placements: &[Placement],
    now_ns: TimeNs,
    ids: &mut IdGen,
    out: &mut ScheduleOutcome,
) {
    let mut by_group: BTreeMap<u16, Vec<&Placement>> = BTreeMap::new();
    for p in placements {
        by_group.entry(p.group_index).or_default().push(p);
    }
    // One shared resources record per group when nothing node-specific
    // (ports, devices) is assigned: a million allocations share a handful.
    let mut shared: BTreeMap<u16, Arc<AllocatedResources>> = BTreeMap::new();
    let job_tag = job.key().tag();
    let mut outcomes: Vec<(u16, Vec<Placed<'_>>, bool)> = Vec::new();
    for (gi, group_placements) in by_group {
        let group = &job.task_groups[usize::from(gi)];
        let mut placed: Vec<Placed<'_>> = Vec::with_capacity(group_placements.len());
        let mut failure: Option<Box<AllocMetric>> = None;
        for p in group_placements {
            if let Some(metric) = failure.as_mut() {
                metric.coalesced_failures += 1;
                continue;
            }
            let penalty: Vec<NodeId> = match (&p.reason, &p.previous) {
                (PlacementReason::Reschedule, Some(prev)) => {
                    let mut nodes = vec![prev.node_id];
                    if let Some(t) = &prev.reschedule_tracker {
                        nodes.extend(t.events.iter().map(|e| e.prev_node_id));
                    }
                    nodes
                }
                _ => Vec::new(),
            };
            match stack.select(gi, &penalty) {
                Ok(selection) => {
                    let mut alloc = build_alloc(
                        job,
                        job_tag,
                        eval,
                        p,
                        &selection,
                        now_ns,
                        ids,
                        shared.entry(gi).or_insert_with(|| Arc::new(AllocatedResources::default())),
                    );
                    if p.reason == PlacementReason::Canary {
                        Arc::make_mut(&mut alloc).deployment_status =
                            Some(AllocDeploymentStatus { canary: true, ..AllocDeploymentStatus::default() });
                    }
                    stack.commit(gi, &selection);
                    placed.push((alloc, selection.preempted, Some(p)));
                }
                Err(metric) => failure = Some(metric),
            }
        }
        let failed = failure.is_some();
        if let Some(metric) = failure {
            let metric = *metric;
            let unplaced = metric.coalesced_failures + 1;
            let queued = if group.gang || job.gang { group.count } else { unplaced };
            out.queued_allocations.insert(group.name.clone(), queued);
            out.failed_tg_allocs.insert(group.name.clone(), metric);
        } else {
            out.queued_allocations.insert(group.name.clone(), 0);
        }
        outcomes.push((gi, placed, failed));
    }
    // A gang job places every group or none; a gang group, all of itself.
    // Dropped placements keep their reservations in the stack, which only
    // makes later choices in this run more conservative.
    let job_failed = job.gang && outcomes.iter().any(|(_, _, failed)| *failed);
    for (gi, placed, failed) in outcomes {
        let group = &job.task_groups[usize::from(gi)];
        let gang = group.gang || job.gang;
        if (failed && group.gang) || job_failed {
            out.queued_allocations.insert(group.name.clone(), group.count);
            continue;
        }
        if gang && !placed.is_empty() {
            // Committed atomically: the applier takes the whole plan or none.
            out.plan.all_at_once = true;
        }
        for (alloc, preempted, placement) in placed {
            if let Some(p) = placement
                && p.reason == PlacementReason::Destructive
                && let Some(prev) = &p.previous
            {
                out.plan.append_stop(
                    prev.node_id,
                    AllocStop {
                        alloc_id: prev.id,
                        description: "alloc is being updated due to job update".into(),
                        client_status: None,
                        followup_eval_id: None,
                    },
                );
            }
            for victim in preempted {
                out.plan
                    .node_preemptions
                    .entry(victim.node_id)
                    .or_default()
                    .push(AllocPreemption { alloc_id: victim.id, preempted_by: alloc.id });
            }
            out.plan.append_alloc(alloc);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_alloc(
    job: &Arc<Job>,
    job_tag: u64,
    eval: &Evaluation,
    p: &Placement,
    selection: &Selection<'_>,
    now_ns: TimeNs,
    ids: &mut IdGen,
    shared: &mut Arc<AllocatedResources>,
) -> Arc<Allocation> {
    let resources = if **shared == selection.resources {
        shared.clone()
    } else {
        let r = Arc::new(selection.resources.clone());
        if r.ports.is_empty() && r.devices.is_empty() {
            *shared = r.clone();
        }
        r
    };
    let group = &job.task_groups[usize::from(p.group_index)];
    let reschedule_tracker = match (&p.reason, &p.previous) {
        (PlacementReason::Reschedule, Some(prev)) => {
            Some(reconcile::next_tracker(prev, group.reschedule_policy.as_ref(), now_ns))
        }
        (_, Some(prev)) => prev.reschedule_tracker.clone(),
        _ => None,
    };
    let spec = super::NewAlloc {
        job,
        job_tag,
        eval,
        group_index: p.group_index,
        name_index: p.name_index,
        node_id: selection.node.id,
        resources,
        previous: p.previous.as_ref().map(|a| a.id),
        reschedule_tracker,
    };
    super::new_allocation(spec, ids, now_ns)
}

/// The eval that waits for capacity. A blocked eval that failed again is
/// re-blocked under its own id instead of spawning a new one.
pub(super) fn blocked_eval(
    eval: &Evaluation,
    job: &Job,
    classes: Vec<(u64, bool)>,
    escaped: bool,
    snapshot_index: u64,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Evaluation {
    let reblock = eval.triggered_by == TriggeredBy::QueuedAllocs;
    let mut blocked = if reblock {
        eval.clone()
    } else {
        let mut b = Evaluation::new(ids.eval(), &job.key(), job.job_type, job.priority, TriggeredBy::QueuedAllocs);
        b.previous_eval = Some(eval.id);
        b.create_time_ns = now_ns;
        b
    };
    blocked.status = EvalStatus::Blocked;
    blocked.status_description = "created to place remaining allocations".into();
    blocked.job_modify_index = job.job_modify_index;
    blocked.class_eligibility = classes.into_iter().collect();
    blocked.escaped_computed_class = escaped;
    blocked.snapshot_index = snapshot_index;
    blocked.modify_time_ns = now_ns;
    debug_assert!(job.job_type != JobType::System, "system jobs do not block");
    blocked
}
