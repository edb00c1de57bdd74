//! The reconciler for service and batch jobs: compares what exists with what
//! the job asks for and decides, per task group, what to place, stop, update
//! in place, replace destructively, migrate off draining nodes, replace on
//! lost nodes, and reschedule after failures (now, or later with a follow-up
//! eval). It reads state but chooses no nodes; the placement stack does that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ids::IdGen;
use crate::model::{
    Allocation, ClientStatus, DelayFunction, Deployment, DeploymentGroup, DeploymentStatus, EvalStatus, Evaluation,
    Job, NodeStatus, RescheduleEvent, ReschedulePolicy, RescheduleTracker, SECOND_NS, TaskGroup, TimeNs, TriggeredBy,
    UpdateStrategy,
};
use crate::state::State;

/// Failed allocations whose reschedule time is within this window of now are
/// replaced now rather than through a follow-up eval (Nomad's 1 s window).
pub const RESCHEDULE_NOW_WINDOW_NS: i64 = SECOND_NS;

/// Failed allocations due within this window of each other share one
/// follow-up eval, so a burst of failures does not create a burst of evals.
pub const FOLLOWUP_BATCH_WINDOW_NS: i64 = 5 * SECOND_NS;

/// Reschedule events kept for unlimited policies: enough to compute the next
/// backoff delay without letting the tracker grow forever.
pub const RESCHEDULE_EVENTS_KEPT_UNLIMITED: usize = 5;

/// Counts of what the reconciler decided for one task group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DesiredUpdates {
    pub place: u32,
    pub stop: u32,
    pub ignore: u32,
    pub in_place_update: u32,
    pub destructive_update: u32,
    pub migrate: u32,
    pub reschedule_now: u32,
    pub reschedule_later: u32,
    pub lost: u32,
    pub canary: u32,
}

/// Why a placement is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementReason {
    /// Count not met.
    New,
    /// Replacing a failed allocation under the reschedule policy.
    Reschedule,
    /// Replacing an allocation on a down node.
    Lost,
    /// Moving off a draining node, or asked to by the user.
    Migrate,
    /// New version needs a new allocation; the old one stops if this places.
    Destructive,
    /// A canary of a new version, placed beside the old allocations.
    Canary,
}

/// One allocation to place.
#[derive(Debug, Clone)]
pub struct Placement {
    pub group_index: u16,
    pub name_index: u32,
    pub reason: PlacementReason,
    /// The allocation this one replaces.
    pub previous: Option<Arc<Allocation>>,
}

/// One allocation to stop.
#[derive(Debug, Clone)]
pub struct StopRequest {
    pub alloc: Arc<Allocation>,
    pub description: &'static str,
    pub client_status: Option<ClientStatus>,
}

/// Everything the reconciler decided.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub place: Vec<Placement>,
    pub stop: Vec<StopRequest>,
    /// Allocations to move to the new job version where they are.
    pub in_place: Vec<Arc<Allocation>>,
    /// Failed allocations to mark with the follow-up eval that will replace them.
    pub annotate_followup: Vec<(Arc<Allocation>, crate::ids::EvalId)>,
    pub followup_evals: Vec<Evaluation>,
    pub desired: BTreeMap<Arc<str>, DesiredUpdates>,
    /// Per group with an update strategy: the canaries a new deployment
    /// of this version wants (0 when the group has nothing to replace).
    pub desired_canaries: BTreeMap<Arc<str>, u32>,
}

/// Where a group's rollout stands, from the deployment of the job's
/// current version (if one exists yet).
#[derive(Debug, Clone, Copy)]
struct Rollout<'a> {
    strategy: &'a UpdateStrategy,
    deployment: Option<&'a Deployment>,
}

impl Rollout<'_> {
    fn group<'g>(&'g self, name: &str) -> Option<&'g DeploymentGroup> {
        self.deployment.and_then(|d| d.group(name))
    }

    fn failed(&self) -> bool {
        self.deployment.is_some_and(|d| d.status == DeploymentStatus::Failed)
    }

    fn promoted(&self, name: &str) -> bool {
        self.group(name).is_some_and(|g| g.promoted)
    }

    /// How many more old allocations may be replaced now (Nomad's
    /// `computeLimit`): `max_parallel` less the version's allocations of
    /// the deployment that are not healthy yet; none while the deployment
    /// is paused, failed, or has an unhealthy allocation. Canaries that
    /// wait for a promotion hold the rollout too (they are counted apart).
    fn limit(&self, current: &[&Arc<Allocation>]) -> u32 {
        let Some(d) = self.deployment else { return self.strategy.max_parallel };
        if d.status != DeploymentStatus::Running {
            return 0;
        }
        let mut in_flight = 0u32;
        for a in current.iter().filter(|a| a.deployment_id == Some(d.id)) {
            match a.deployment_healthy() {
                Some(false) => return 0,
                Some(true) => {}
                None => in_flight += 1,
            }
        }
        self.strategy.max_parallel.saturating_sub(in_flight)
    }
}

/// When a failed allocation should be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RescheduleWhen {
    Now,
    Later(TimeNs),
}

/// Reconcile a service or batch job's allocations against the job.
pub fn reconcile(
    state: &State,
    eval: &Evaluation,
    job: Option<&Arc<Job>>,
    allocs: &[Arc<Allocation>],
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Reconciled {
    let mut out = Reconciled::default();
    let live_job = job.filter(|j| !j.stop);
    let Some(job) = live_job else {
        for alloc in allocs.iter().filter(|a| !a.is_terminal()) {
            out.desired.entry(alloc.group().name.clone()).or_default().stop += 1;
            out.stop.push(StopRequest {
                alloc: alloc.clone(),
                description: "alloc not needed due to job update",
                client_status: None,
            });
        }
        return out;
    };

    let mut by_group: BTreeMap<&str, Vec<&Arc<Allocation>>> = BTreeMap::new();
    for alloc in allocs {
        by_group.entry(alloc.group_name()).or_default().push(alloc);
    }
    // Groups removed from the job: stop what is left of them.
    for (name, group_allocs) in &by_group {
        if job.group(name).is_none() {
            for alloc in group_allocs.iter().filter(|a| !a.is_terminal()) {
                out.desired.entry(alloc.group().name.clone()).or_default().stop += 1;
                out.stop.push(StopRequest {
                    alloc: (*alloc).clone(),
                    description: "alloc not needed as task group was removed",
                    client_status: None,
                });
            }
        }
    }
    let mut later: Vec<(TimeNs, Arc<Allocation>)> = Vec::new();
    // The deployment of this very version (a newer registration of the same
    // version number has another job modify index).
    let deployment = state
        .latest_deployment(&job.key())
        .filter(|d| d.job_version == job.version && d.job_modify_index == job.job_modify_index);
    for (gi, group) in job.task_groups.iter().enumerate() {
        let group_allocs = by_group.get(&*group.name).map(Vec::as_slice).unwrap_or(&[]);
        let gi = u16::try_from(gi).expect("validated: fewer than 65536 groups");
        let rollout =
            job.rollout_strategy(group).map(|strategy| Rollout { strategy, deployment: deployment.map(|d| &**d) });
        reconcile_group(state, job, gi, group, group_allocs, rollout, now_ns, &mut out, &mut later);
    }
    batch_followups(eval, job, later, ids, &mut out);
    out
}

#[allow(clippy::too_many_arguments)]
fn reconcile_group(
    state: &State,
    job: &Arc<Job>,
    gi: u16,
    group: &TaskGroup,
    allocs: &[&Arc<Allocation>],
    rollout: Option<Rollout<'_>>,
    now_ns: TimeNs,
    out: &mut Reconciled,
    later: &mut Vec<(TimeNs, Arc<Allocation>)>,
) {
    let mut desired = DesiredUpdates::default();
    let count = group.count;
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let mut untainted: Vec<&Arc<Allocation>> = Vec::new();
    let replace =
        |alloc: &Arc<Allocation>, reason: PlacementReason, out: &mut Reconciled, taken: &mut BTreeSet<u32>| {
            if alloc.name_index < count && taken.insert(alloc.name_index) {
                out.place.push(Placement {
                    group_index: gi,
                    name_index: alloc.name_index,
                    reason,
                    previous: Some(alloc.clone()),
                });
                true
            } else {
                false
            }
        };

    for &alloc in allocs {
        if alloc.server_terminal() {
            continue;
        }
        if alloc.client_status.is_terminal() {
            if alloc.next_alloc.is_some() {
                continue;
            }
            match alloc.client_status {
                ClientStatus::Complete if job.job_type.is_batch_like() => {
                    taken.insert(alloc.name_index);
                    desired.ignore += 1;
                }
                ClientStatus::Failed | ClientStatus::Lost => {
                    match reschedule_when(alloc, group.reschedule_policy.as_ref(), now_ns) {
                        Some(RescheduleWhen::Now) => {
                            if replace(alloc, PlacementReason::Reschedule, out, &mut taken) {
                                desired.reschedule_now += 1;
                                desired.place += 1;
                            }
                        }
                        Some(RescheduleWhen::Later(at)) => {
                            taken.insert(alloc.name_index);
                            desired.reschedule_later += 1;
                            if alloc.followup_eval_id.is_none() {
                                later.push((at, alloc.clone()));
                            }
                        }
                        None => {
                            // Out of attempts (or no policy): the failure stands.
                            taken.insert(alloc.name_index);
                            desired.ignore += 1;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let node = state.node(alloc.node_id);
        let node_lost = match node {
            None => true,
            Some(n) => match n.status {
                NodeStatus::Down => true,
                NodeStatus::Disconnected => group.max_client_disconnect_ns.is_none(),
                _ => false,
            },
        };
        if node_lost {
            desired.lost += 1;
            desired.stop += 1;
            out.stop.push(StopRequest {
                alloc: alloc.clone(),
                description: "alloc is lost since its node is down",
                client_status: Some(ClientStatus::Lost),
            });
            if replace(alloc, PlacementReason::Lost, out, &mut taken) {
                desired.place += 1;
            }
            continue;
        }
        let draining = node.is_some_and(|n| n.drain.is_some());
        let transition = alloc.desired_transition;
        if draining || transition.migrate || transition.reschedule || transition.force_reschedule {
            desired.migrate += 1;
            desired.stop += 1;
            out.stop.push(StopRequest {
                alloc: alloc.clone(),
                description: "alloc is being migrated",
                client_status: None,
            });
            if replace(alloc, PlacementReason::Migrate, out, &mut taken) {
                desired.place += 1;
            }
            continue;
        }
        untainted.push(alloc);
    }

    let is_current = |a: &Allocation| a.job.job_modify_index == job.job_modify_index && a.job.version == job.version;
    if let Some(rollout) = &rollout {
        untainted = roll(job, gi, group, untainted, rollout, &mut taken, &mut desired, out);
    }
    // For each name the current version's allocation (a promoted canary)
    // wins over an old one, then the oldest.
    untainted.sort_by_key(|a| (a.name_index, !is_current(a), a.create_index));
    for alloc in untainted {
        if alloc.name_index >= count || !taken.insert(alloc.name_index) {
            desired.stop += 1;
            out.stop.push(StopRequest {
                alloc: alloc.clone(),
                description: "alloc not needed due to job update",
                client_status: None,
            });
            continue;
        }
        if is_current(alloc) {
            desired.ignore += 1;
        } else if tasks_updated(alloc.group(), group) {
            desired.destructive_update += 1;
            out.place.push(Placement {
                group_index: gi,
                name_index: alloc.name_index,
                reason: PlacementReason::Destructive,
                previous: Some(alloc.clone()),
            });
        } else {
            desired.in_place_update += 1;
            out.in_place.push(alloc.clone());
        }
    }
    for name_index in 0..count {
        if !taken.contains(&name_index) {
            desired.place += 1;
            out.place.push(Placement { group_index: gi, name_index, reason: PlacementReason::New, previous: None });
        }
    }
    out.desired.insert(group.name.clone(), desired);
}

/// A group rolling out under a deployment: canaries first when the
/// strategy asks for them, then old allocations replaced at most
/// `max_parallel` at a time as the new ones become healthy. Takes the
/// group's untainted allocations and returns those the plain pass still
/// decides (in-place updates, replacements within the limit, excess);
/// what it holds back keeps its name in `taken`.
#[allow(clippy::too_many_arguments)]
fn roll<'a>(
    job: &Arc<Job>,
    gi: u16,
    group: &TaskGroup,
    untainted: Vec<&'a Arc<Allocation>>,
    rollout: &Rollout<'_>,
    taken: &mut BTreeSet<u32>,
    desired: &mut DesiredUpdates,
    out: &mut Reconciled,
) -> Vec<&'a Arc<Allocation>> {
    let is_current = |a: &Allocation| a.job.job_modify_index == job.job_modify_index && a.job.version == job.version;
    let deployment_id = rollout.deployment.map(|d| d.id);
    let promoted = rollout.promoted(&group.name);
    let (current, old): (Vec<&Arc<Allocation>>, Vec<&Arc<Allocation>>) =
        untainted.into_iter().partition(|a| is_current(a));
    let (canaries, current): (Vec<&Arc<Allocation>>, Vec<&Arc<Allocation>>) = current
        .into_iter()
        .partition(|a| a.is_canary() && a.deployment_id.is_some() && a.deployment_id == deployment_id);
    // Old allocations the new version replaces rather than updates in place.
    let (replace, keep): (Vec<&Arc<Allocation>>, Vec<&Arc<Allocation>>) =
        old.into_iter().partition(|a| a.name_index < group.count && tasks_updated(a.group(), group));
    let wants_canaries = rollout.strategy.canary > 0 && !replace.is_empty();
    if wants_canaries && !promoted {
        out.desired_canaries.insert(group.name.clone(), rollout.strategy.canary);
    }
    let mut rest: Vec<&Arc<Allocation>> = current;
    rest.extend(keep);
    if !promoted && (wants_canaries || !canaries.is_empty()) {
        // Canary phase: the old allocations all stay until a promotion.
        if rollout.failed() {
            for canary in canaries {
                desired.stop += 1;
                out.stop.push(StopRequest {
                    alloc: canary.clone(),
                    description: "alloc not needed as deployment failed",
                    client_status: None,
                });
            }
        } else if rollout.deployment.is_none_or(|d| d.status == DeploymentStatus::Running) {
            let used: BTreeSet<u32> = canaries.iter().map(|a| a.name_index).collect();
            desired.ignore += u32::try_from(canaries.len()).unwrap_or(u32::MAX);
            let missing = usize::try_from(rollout.strategy.canary).unwrap_or(usize::MAX).saturating_sub(canaries.len());
            let names = replace.iter().map(|a| a.name_index).filter(|n| !used.contains(n)).take(missing);
            for name_index in names {
                desired.canary += 1;
                out.place.push(Placement {
                    group_index: gi,
                    name_index,
                    reason: PlacementReason::Canary,
                    previous: None,
                });
            }
        } else {
            desired.ignore += u32::try_from(canaries.len()).unwrap_or(u32::MAX);
        }
        for alloc in &replace {
            taken.insert(alloc.name_index);
            desired.ignore += 1;
        }
        return rest;
    }
    // Rolling: promoted canaries are the new version like the rest.
    let in_deployment: Vec<&Arc<Allocation>> = rest.iter().chain(canaries.iter()).copied().collect();
    let limit = usize::try_from(rollout.limit(&in_deployment)).unwrap_or(usize::MAX);
    let replaced_by_canary: BTreeSet<u32> = canaries.iter().map(|a| a.name_index).collect();
    rest.extend(canaries);
    let mut budget = limit;
    for alloc in replace {
        // A promoted canary holds this name: the old one is excess and the
        // plain pass stops it.
        if replaced_by_canary.contains(&alloc.name_index) || budget > 0 {
            if !replaced_by_canary.contains(&alloc.name_index) {
                budget -= 1;
            }
            rest.push(alloc);
        } else {
            taken.insert(alloc.name_index);
            desired.ignore += 1;
        }
    }
    rest
}

/// Whether moving from `old` to `new` needs new allocations (Nomad's
/// `tasksUpdated`): anything the running tasks depend on changed.
pub fn tasks_updated(old: &TaskGroup, new: &TaskGroup) -> bool {
    old.tasks != new.tasks
        || old.ports != new.ports
        || old.ephemeral_disk_mb != new.ephemeral_disk_mb
        || old.meta != new.meta
}

fn reschedule_when(alloc: &Allocation, policy: Option<&ReschedulePolicy>, now_ns: TimeNs) -> Option<RescheduleWhen> {
    if alloc.desired_transition.force_reschedule {
        return Some(RescheduleWhen::Now);
    }
    let policy = policy?;
    let events = alloc.reschedule_tracker.as_ref().map(|t| t.events.as_slice()).unwrap_or(&[]);
    if !policy.unlimited {
        let window_start = now_ns - policy.interval_ns;
        let recent = events.iter().filter(|e| e.at_ns > window_start).count();
        if recent >= policy.attempts as usize {
            return None;
        }
    }
    let at = alloc.modify_time_ns + next_delay_ns(policy, events);
    if at <= now_ns + RESCHEDULE_NOW_WINDOW_NS { Some(RescheduleWhen::Now) } else { Some(RescheduleWhen::Later(at)) }
}

/// The delay before the next reschedule, from the policy's delay function and
/// the delays already used.
pub fn next_delay_ns(policy: &ReschedulePolicy, events: &[RescheduleEvent]) -> i64 {
    let base = policy.delay_ns;
    let delay = match (policy.delay_function, events) {
        (DelayFunction::Constant, _) | (_, []) => base,
        (DelayFunction::Exponential, [.., last]) => last.delay_ns.saturating_mul(2),
        (DelayFunction::Fibonacci, [only]) => only.delay_ns,
        (DelayFunction::Fibonacci, [.., second, last]) => last.delay_ns.saturating_add(second.delay_ns),
    };
    if policy.max_delay_ns > 0 && policy.delay_function != DelayFunction::Constant {
        delay.min(policy.max_delay_ns)
    } else {
        delay
    }
}

/// The tracker a replacement carries: the old one plus this reschedule.
pub fn next_tracker(
    previous: &Allocation,
    policy: Option<&ReschedulePolicy>,
    now_ns: TimeNs,
) -> Arc<RescheduleTracker> {
    let mut events = previous.reschedule_tracker.as_ref().map(|t| t.events.clone()).unwrap_or_default();
    let delay_ns = policy.map_or(0, |p| next_delay_ns(p, &events));
    events.push(RescheduleEvent {
        at_ns: now_ns,
        prev_alloc_id: previous.id,
        prev_node_id: previous.node_id,
        delay_ns,
    });
    match policy {
        Some(p) if !p.unlimited => events.retain(|e| e.at_ns > now_ns - p.interval_ns),
        _ => {
            let excess = events.len().saturating_sub(RESCHEDULE_EVENTS_KEPT_UNLIMITED);
            events.drain(..excess);
        }
    }
    Arc::new(RescheduleTracker { events })
}

/// One follow-up eval per window of reschedule times.
fn batch_followups(
    eval: &Evaluation,
    job: &Job,
    mut later: Vec<(TimeNs, Arc<Allocation>)>,
    ids: &mut IdGen,
    out: &mut Reconciled,
) {
    later.sort_by_key(|(at, a)| (*at, a.id));
    let mut current: Option<(TimeNs, crate::ids::EvalId)> = None;
    for (at, alloc) in later {
        let eval_id = match current {
            Some((start, id)) if at - start <= FOLLOWUP_BATCH_WINDOW_NS => id,
            _ => {
                let mut followup =
                    Evaluation::new(ids.eval(), &job.key(), job.job_type, job.priority, TriggeredBy::RetryFailedAlloc);
                followup.status = EvalStatus::Pending;
                followup.wait_until_ns = at;
                followup.previous_eval = Some(eval.id);
                followup.job_modify_index = job.job_modify_index;
                let id = followup.id;
                current = Some((at, id));
                out.followup_evals.push(followup);
                id
            }
        };
        out.annotate_followup.push((alloc, eval_id));
    }
}
