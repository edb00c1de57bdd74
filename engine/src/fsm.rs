//! The finite state machine: the only writer of the state store.
//!
//! Raft (or, in-process, the harness) hands each committed [`Command`] to
//! [`Fsm::apply`] with its log index. Commands are plain data carrying their
//! own timestamps, so replaying a log rebuilds exactly the same state. A
//! command that refers to something missing fails as a whole and changes
//! nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::ids::{AllocId, DeploymentId, EvalId, JobKey, NodeId};
use crate::model::{
    AllocClientUpdate, AllocHealthReport, AllocPreemption, AllocStop, Allocation, Deployment, DeploymentStatus,
    DesiredStatus, DesiredTransition, DrainStrategy, EvalStatus, Evaluation, Job, JobStatus, Node, NodeStatus,
    ScalingEvent, SchedulingEligibility, TaskStates, TimeNs, no_task_states,
};
use crate::state::{SchedulerConfig, State, StateStore};

/// The committed part of a plan, as one raft entry.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PlanApplied {
    pub eval_id: EvalId,
    /// New and updated allocations.
    pub allocs: Vec<Arc<Allocation>>,
    pub stops: Vec<AllocStop>,
    pub preemptions: Vec<AllocPreemption>,
    pub deployment: Option<Deployment>,
    /// Follow-up evals for the jobs whose allocations were preempted.
    pub preemption_evals: Vec<Evaluation>,
    pub now_ns: TimeNs,
}

/// Everything that can change the cluster state.
// Variants differ in size (a whole job vs. a node id); a command is built
// once per write and moved a handful of times, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// Store a job (a new version when its spec changed) and its eval, atomically.
    JobRegister {
        job: Job,
        eval: Option<Evaluation>,
        now_ns: TimeNs,
    },
    /// Stop a job (a new version with `stop = true`), or purge it.
    JobDeregister {
        key: JobKey,
        purge: bool,
        eval: Option<Evaluation>,
        now_ns: TimeNs,
    },
    NodeRegister {
        node: Node,
        evals: Vec<Evaluation>,
    },
    NodeDeregister {
        node_id: NodeId,
        evals: Vec<Evaluation>,
    },
    NodeStatusUpdate {
        node_id: NodeId,
        status: NodeStatus,
        evals: Vec<Evaluation>,
        now_ns: TimeNs,
    },
    NodeDrainUpdate {
        node_id: NodeId,
        drain: Option<DrainStrategy>,
        mark_eligible: bool,
        evals: Vec<Evaluation>,
        now_ns: TimeNs,
    },
    NodeEligibilityUpdate {
        node_id: NodeId,
        eligibility: SchedulingEligibility,
        evals: Vec<Evaluation>,
        now_ns: TimeNs,
    },
    EvalUpsert {
        evals: Vec<Evaluation>,
    },
    /// Garbage collection of terminal evals and allocations.
    EvalReap {
        evals: Vec<EvalId>,
        allocs: Vec<AllocId>,
    },
    AllocClientUpdate {
        updates: Vec<AllocClientUpdate>,
        evals: Vec<Evaluation>,
    },
    AllocDesiredTransition {
        transitions: Vec<(AllocId, DesiredTransition)>,
        evals: Vec<Evaluation>,
    },
    ApplyPlanResults(PlanApplied),
    SchedulerConfigUpdate {
        config: SchedulerConfig,
    },
    /// Mark one kept version of a job stable or not (Nomad's `Job.Stable`).
    JobStability {
        key: JobKey,
        version: u64,
        stable: bool,
    },
    /// A deployment's status set by a user (fail, pause, resume) or by the
    /// leader's deployment watcher (progress deadline, auto-revert), with
    /// the eval it triggers, as Nomad's `Deployment.Fail` /
    /// `Deployment.Pause`. `job` is a rollback: the stable version
    /// registered again as a new version, atomically with the status.
    DeploymentStatusUpdate {
        id: DeploymentId,
        status: DeploymentStatus,
        #[rkyv(with = crate::model::rkyv_with::ArcStr)]
        description: Arc<str>,
        evals: Vec<Evaluation>,
        job: Option<Job>,
        now_ns: TimeNs,
    },
    /// Promote the canaries of `groups` (every group waiting for a
    /// promotion when empty), with the eval that rolls the rest out, as
    /// Nomad's `Deployment.Promote`.
    DeploymentPromote {
        id: DeploymentId,
        #[rkyv(with = rkyv::with::Map<crate::model::rkyv_with::ArcStr>)]
        groups: Vec<Arc<str>>,
        evals: Vec<Evaluation>,
        now_ns: TimeNs,
    },
    /// A periodic job's child, launched: the child job and its eval, and
    /// the parent's launch record moved to `launch_ns`, atomically (Nomad
    /// records the launch in the child's `Job.Register`). A scheduled
    /// (not `forced`) launch at or before the recorded one is refused, so
    /// a launch committed twice, or by two leaders, lands once.
    PeriodicLaunch {
        job: Job,
        eval: Evaluation,
        launch_ns: TimeNs,
        forced: bool,
        now_ns: TimeNs,
    },
    /// A scaling request (Nomad's `Job.Scale`): with a count, the job with
    /// the group's new count and its eval; with or without, the scaling
    /// event recorded for the group; all atomically.
    JobScale {
        key: JobKey,
        #[rkyv(with = crate::model::rkyv_with::ArcStr)]
        group: Arc<str>,
        job: Option<Job>,
        eval: Option<Evaluation>,
        event: ScalingEvent,
        now_ns: TimeNs,
    },
    /// An operator's health decision for allocations of a deployment
    /// (Nomad's `Deployment.SetAllocHealth`, for `health_check =
    /// "manual"`): it replaces any earlier decision, and the deployment
    /// settles from it as from a client's report, with the eval that lets
    /// the rollout go on.
    DeploymentAllocHealth {
        id: DeploymentId,
        healthy: Vec<AllocId>,
        unhealthy: Vec<AllocId>,
        evals: Vec<Evaluation>,
        now_ns: TimeNs,
    },
}

/// A command referred to something that does not exist; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("job {0} not found")]
    JobNotFound(JobKey),
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    #[error("job {0} has no version {1}")]
    JobVersionNotFound(JobKey, u64),
    #[error("deployment {0} not found")]
    DeploymentNotFound(DeploymentId),
    #[error("job {0} is not an active periodic job")]
    NotPeriodic(JobKey),
    #[error("allocation {0} not found")]
    AllocNotFound(AllocId),
    #[error("allocation {alloc} is not part of deployment {deployment}")]
    AllocNotInDeployment { alloc: AllocId, deployment: DeploymentId },
    #[error("periodic job {key} already launched at {recorded_ns} ns, not after {launch_ns} ns")]
    PeriodicLaunchedAlready { key: JobKey, recorded_ns: TimeNs, launch_ns: TimeNs },
}

/// A node's capacity may have grown: blocked evals for its class may now fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityChange {
    pub node_id: NodeId,
    pub computed_class: u64,
}

/// What the leader-side services (broker, blocked evals) must hear about.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    pub index: u64,
    /// Every eval written, in order; the leader routes them by status.
    pub evals: Vec<Arc<Evaluation>>,
    pub capacity_changes: Vec<CapacityChange>,
    /// Jobs that were purged: their blocked evals are untracked.
    pub jobs_purged: Vec<JobKey>,
    pub allocs_written: usize,
    /// New allocations skipped because their id was already stored (see
    /// `apply_plan`); nonzero means a plan was committed twice.
    pub duplicate_placements: usize,
}

/// Applies commands to a [`StateStore`].
#[derive(Debug, Default)]
pub struct Fsm {
    store: Arc<StateStore>,
}

impl Fsm {
    pub fn new(store: Arc<StateStore>) -> Fsm {
        Fsm { store }
    }

    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// Apply one committed command at `index`. On error nothing changed,
    /// but the index still advances (the log entry is committed).
    pub fn apply(&self, index: u64, command: &Command) -> Result<ApplyOutcome, ApplyError> {
        self.store.write(index, |state| apply_to(state, index, command))
    }

    /// Apply the commands of one log entry at `index`, each all or nothing,
    /// and publish once: no reader sees the entry half applied (a worker
    /// told its plan landed at `index` finds it in any state at `index`).
    pub fn apply_all(&self, index: u64, commands: &[Command]) -> Vec<Result<ApplyOutcome, ApplyError>> {
        self.store.write(index, |state| commands.iter().map(|command| apply_to(state, index, command)).collect())
    }
}

/// Apply a command to a state: the FSM's own writes, and the plan applier's
/// optimistic copy. All or nothing: on error `state` is left as it was.
pub fn apply_to(state: &mut State, index: u64, command: &Command) -> Result<ApplyOutcome, ApplyError> {
    let touched_before = state.touched_count();
    let mut scratch = state.fork();
    let mut out = ApplyOutcome { index, ..Default::default() };
    if let Err(e) = apply_command(&mut scratch, index, command, &mut out) {
        state.abandon_fork(scratch, touched_before);
        return Err(e);
    }
    scratch.set_index(index);
    *state = scratch;
    Ok(out)
}

fn apply_command(state: &mut State, index: u64, command: &Command, out: &mut ApplyOutcome) -> Result<(), ApplyError> {
    match command {
        Command::JobRegister { job, eval, now_ns } => {
            register_job(state, index, job, *now_ns);
            upsert_evals(state, index, eval.iter(), out);
        }
        Command::JobDeregister { key, purge, eval, now_ns } => {
            let job = state.job(key).cloned().ok_or_else(|| ApplyError::JobNotFound(key.clone()))?;
            if *purge {
                state.remove_job(index, key);
                state.remove_periodic_launch(index, key);
                out.jobs_purged.push(key.clone());
            } else if !job.stop {
                let mut stopped = (*job).clone();
                stopped.stop = true;
                register_job(state, index, &stopped, *now_ns);
            }
            upsert_evals(state, index, eval.iter(), out);
        }
        Command::NodeRegister { node, evals } => {
            let mut node = node.clone();
            let existing = state.node(node.id).cloned();
            node.create_index = existing.as_ref().map_or(index, |n| n.create_index);
            node.modify_index = index;
            node.compute_class();
            if node.ready_for_placement() {
                out.capacity_changes.push(CapacityChange { node_id: node.id, computed_class: node.computed_class });
            }
            state.put_node(index, Arc::new(node));
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::NodeDeregister { node_id, evals } => {
            state.remove_node(index, *node_id).ok_or(ApplyError::NodeNotFound(*node_id))?;
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::NodeStatusUpdate { node_id, status, evals, now_ns } => {
            update_node(state, index, *node_id, out, |n| {
                n.status = *status;
                n.status_updated_at_ns = *now_ns;
            })?;
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::NodeDrainUpdate { node_id, drain, mark_eligible, evals, now_ns } => {
            update_node(state, index, *node_id, out, |n| {
                n.drain = drain.clone();
                if drain.is_some() {
                    n.eligibility = SchedulingEligibility::Ineligible;
                } else if *mark_eligible {
                    n.eligibility = SchedulingEligibility::Eligible;
                }
                n.status_updated_at_ns = *now_ns;
            })?;
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::NodeEligibilityUpdate { node_id, eligibility, evals, now_ns } => {
            update_node(state, index, *node_id, out, |n| {
                n.eligibility = *eligibility;
                n.status_updated_at_ns = *now_ns;
            })?;
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::EvalUpsert { evals } => upsert_evals(state, index, evals.iter(), out),
        Command::EvalReap { evals, allocs } => {
            for id in evals {
                state.remove_eval(index, *id);
            }
            for id in allocs {
                state.remove_alloc(index, *id);
            }
        }
        Command::AllocClientUpdate { updates, evals } => {
            let mut jobs = BTreeSet::new();
            for update in updates {
                // An update for an allocation already garbage collected is
                // stale, not an error: the client learns on its next pull.
                let Some(existing) = state.alloc(update.alloc_id).cloned() else { continue };
                let mut alloc = (*existing).clone();
                alloc.client_status = update.client_status;
                alloc.client_description = update.client_description.clone();
                alloc.task_states = reported_task_states(&existing.task_states, &update.task_states);
                alloc.modify_index = index;
                alloc.modify_time_ns = update.at_ns;
                if let Some(report) = update.deployment_health
                    && record_health(&mut alloc, &report, index)
                    && report.healthy
                {
                    note_progress(state, index, report.deployment_id, alloc.group_name(), report.at_ns);
                }
                let freed = !existing.is_terminal() && alloc.is_terminal();
                jobs.insert(alloc.job_key());
                state.put_alloc(index, Arc::new(alloc));
                out.allocs_written += 1;
                if freed {
                    push_capacity_change(state, existing.node_id, out);
                }
            }
            for key in jobs {
                refresh_job_status(state, index, &key);
                refresh_deployment_status(state, index, &key);
            }
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::AllocDesiredTransition { transitions, evals } => {
            for (id, transition) in transitions {
                let Some(existing) = state.alloc(*id).cloned() else { continue };
                let mut alloc = (*existing).clone();
                alloc.desired_transition = *transition;
                alloc.modify_index = index;
                alloc.alloc_modify_index = index;
                state.put_alloc(index, Arc::new(alloc));
            }
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::ApplyPlanResults(applied) => apply_plan(state, index, applied, out),
        Command::PeriodicLaunch { job, eval, launch_ns, forced, now_ns } => {
            let parent_id = job.parent_id.clone().ok_or_else(|| ApplyError::NotPeriodic(job.key()))?;
            let parent_key = JobKey { namespace: job.namespace.clone(), id: parent_id };
            if !state.job(&parent_key).is_some_and(|p| p.is_periodic_active()) {
                return Err(ApplyError::NotPeriodic(parent_key));
            }
            let recorded_ns = state.periodic_launch(&parent_key).map_or(TimeNs::MIN, |l| l.launch_ns);
            if !*forced && *launch_ns <= recorded_ns {
                return Err(ApplyError::PeriodicLaunchedAlready {
                    key: parent_key,
                    recorded_ns,
                    launch_ns: *launch_ns,
                });
            }
            register_job(state, index, job, *now_ns);
            state.put_periodic_launch(index, &parent_key, *launch_ns);
            upsert_evals(state, index, std::iter::once(eval), out);
        }
        Command::SchedulerConfigUpdate { config } => state.set_scheduler_config(index, config.clone()),
        Command::JobStability { key, version, stable } => {
            if !state.set_job_version_stable(index, key, *version, *stable) {
                return Err(ApplyError::JobVersionNotFound(key.clone(), *version));
            }
        }
        Command::DeploymentStatusUpdate { id, status, description, evals, job, now_ns } => {
            let existing = state.deployment(*id).cloned().ok_or(ApplyError::DeploymentNotFound(*id))?;
            let mut d = (*existing).clone();
            d.status = *status;
            d.status_description = description.clone();
            d.modify_index = index;
            let key = d.job.clone();
            state.put_deployment(index, Arc::new(d));
            if let Some(job) = job {
                register_job(state, index, job, *now_ns);
            }
            // A resumed deployment whose allocations are all healthy is done.
            refresh_deployment_status(state, index, &key);
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::JobScale { key, group, job, eval, event, now_ns } => {
            if state.job(key).is_none() {
                return Err(ApplyError::JobNotFound(key.clone()));
            }
            if let Some(job) = job {
                register_job(state, index, job, *now_ns);
            }
            state.put_scaling_event(index, key, group, event.clone());
            upsert_evals(state, index, eval.iter(), out);
        }
        Command::DeploymentAllocHealth { id, healthy, unhealthy, evals, now_ns } => {
            let d = state.deployment(*id).cloned().ok_or(ApplyError::DeploymentNotFound(*id))?;
            let decisions = healthy.iter().map(|a| (*a, true)).chain(unhealthy.iter().map(|a| (*a, false)));
            for (alloc_id, is_healthy) in decisions {
                let existing = state.alloc(alloc_id).cloned().ok_or(ApplyError::AllocNotFound(alloc_id))?;
                if existing.deployment_id != Some(*id) {
                    return Err(ApplyError::AllocNotInDeployment { alloc: alloc_id, deployment: *id });
                }
                let mut alloc = (*existing).clone();
                let status = alloc.deployment_status.get_or_insert_with(Default::default);
                status.healthy = Some(is_healthy);
                status.timestamp_ns = *now_ns;
                status.modify_index = index;
                alloc.modify_index = index;
                let group = alloc.group().name.clone();
                state.put_alloc(index, Arc::new(alloc));
                out.allocs_written += 1;
                if is_healthy {
                    note_progress(state, index, *id, &group, *now_ns);
                }
            }
            refresh_deployment_status(state, index, &d.job);
            upsert_evals(state, index, evals.iter(), out);
        }
        Command::DeploymentPromote { id, groups, evals, now_ns } => {
            let existing = state.deployment(*id).cloned().ok_or(ApplyError::DeploymentNotFound(*id))?;
            let mut d = (*existing).clone();
            for g in d.task_groups.iter_mut() {
                let named = groups.is_empty() || groups.contains(&g.name);
                if named && g.awaits_promotion() {
                    g.promoted = true;
                    // The rest of the group rolls from now on.
                    if g.progress_deadline_ns > 0 {
                        g.require_progress_by_ns = now_ns.saturating_add(g.progress_deadline_ns);
                    }
                }
            }
            if d.status == DeploymentStatus::Running && !d.awaits_promotion() {
                d.status_description = crate::model::DESCRIPTION_RUNNING.into();
            }
            d.modify_index = index;
            let key = d.job.clone();
            state.put_deployment(index, Arc::new(d));
            refresh_deployment_status(state, index, &key);
            upsert_evals(state, index, evals.iter(), out);
        }
    }
    Ok(())
}

fn register_job(state: &mut State, index: u64, job: &Job, now_ns: TimeNs) {
    let mut job = job.clone();
    let existing = state.job(&job.key()).cloned();
    record_periodic_start(state, index, &job, existing.as_deref(), now_ns);
    match existing {
        Some(existing) => {
            let changed = job.spec_changed(&existing);
            job.create_index = existing.create_index;
            job.version = if changed { existing.version + 1 } else { existing.version };
            job.job_modify_index = if changed { index } else { existing.job_modify_index };
            job.submit_time_ns = if changed { now_ns } else { existing.submit_time_ns };
            job.stable = if changed { false } else { existing.stable };
        }
        None => {
            job.create_index = index;
            job.version = 0;
            job.job_modify_index = index;
            job.submit_time_ns = now_ns;
            job.stable = false;
        }
    }
    job.modify_index = index;
    job.status = if job.stop { JobStatus::Dead } else { JobStatus::Pending };
    let key = job.key();
    state.put_job(index, Arc::new(job));
    refresh_job_status(state, index, &key);
}

/// A periodic job that becomes active (registered, enabled, started again,
/// or given a new schedule) starts counting from `now_ns`: its launch
/// record moves there, so no launch before it is "missed" and caught up.
/// The record never moves back (see `State::put_periodic_launch`).
fn record_periodic_start(state: &mut State, index: u64, job: &Job, existing: Option<&Job>, now_ns: TimeNs) {
    if !job.is_periodic_active() {
        return;
    }
    let key = job.key();
    let unchanged = existing.is_some_and(|old| old.is_periodic_active() && old.periodic == job.periodic);
    if unchanged && state.periodic_launch(&key).is_some() {
        return;
    }
    state.put_periodic_launch(index, &key, now_ns);
}

/// Nomad's job status: running while any allocation is non-terminal, dead
/// when stopped (or a finished batch job), pending otherwise.
fn refresh_job_status(state: &mut State, index: u64, key: &JobKey) {
    let Some(job) = state.job(key).cloned() else { return };
    let mut any_alloc = false;
    let mut any_live = false;
    for alloc in state.allocs_by_job(key) {
        any_alloc = true;
        if !alloc.is_terminal() {
            any_live = true;
            break;
        }
    }
    let status = if any_live || (job.is_template() && !job.stop) {
        // Nomad shows a parameterized or periodic job as running: it can
        // be dispatched, or launches children.
        JobStatus::Running
    } else if job.stop || (any_alloc && job.job_type.is_batch_like()) {
        JobStatus::Dead
    } else {
        JobStatus::Pending
    };
    if status != job.status {
        let mut job = (*job).clone();
        job.status = status;
        job.modify_index = index;
        state.replace_job_record(index, Arc::new(job));
    }
}

/// A new deployment supersedes the job's active ones, as Nomad's
/// reconciler cancels them ("Cancelled due to newer version of job").
fn cancel_older_deployments(state: &mut State, index: u64, newer: &Deployment) {
    let older: Vec<Arc<Deployment>> =
        state.deployments_by_job(&newer.job).filter(|d| d.id != newer.id && d.status.is_active()).cloned().collect();
    for d in older {
        let mut d = (*d).clone();
        d.status = DeploymentStatus::Cancelled;
        d.status_description = "Cancelled due to newer version of job".into();
        d.modify_index = index;
        state.put_deployment(index, Arc::new(d));
    }
}

/// The task states a client report leaves on its allocation: the stored
/// map when the report repeats it (a client sends every task's state with
/// each report, and a health verdict usually follows a running report with
/// nothing new), the shared empty map when it reports none, otherwise a
/// copy. One allocation fewer per report, and a million allocations do
/// not each keep their own copy of the same map.
fn reported_task_states(stored: &Arc<TaskStates>, reported: &TaskStates) -> Arc<TaskStates> {
    if **stored == *reported {
        stored.clone()
    } else if reported.is_empty() {
        no_task_states()
    } else {
        Arc::new(reported.clone())
    }
}

/// Take a client's health decision for the allocation: once per
/// deployment (the first decision stands, as Nomad's client sets it once),
/// and only for the deployment the allocation is in. True if recorded.
fn record_health(alloc: &mut Allocation, report: &AllocHealthReport, index: u64) -> bool {
    if alloc.deployment_id != Some(report.deployment_id) || alloc.deployment_healthy().is_some() {
        return false;
    }
    let status = alloc.deployment_status.get_or_insert_with(Default::default);
    status.healthy = Some(report.healthy);
    status.timestamp_ns = report.at_ns;
    status.modify_index = index;
    true
}

/// An allocation of the group became healthy at `at_ns`: the group's
/// progress deadline moves to `at_ns` + its progress deadline (Nomad's
/// `RequireProgressBy`).
fn note_progress(state: &mut State, index: u64, id: DeploymentId, group: &str, at_ns: TimeNs) {
    let Some(existing) = state.deployment(id) else { return };
    let Some(g) = existing.group(group) else { return };
    if !existing.status.is_active() || g.progress_deadline_ns <= 0 {
        return;
    }
    let by = at_ns.saturating_add(g.progress_deadline_ns);
    if by <= g.require_progress_by_ns {
        return;
    }
    let mut d = (**existing).clone();
    if let Some(g) = d.task_groups.iter_mut().find(|g| &*g.name == group) {
        g.require_progress_by_ns = by;
    }
    d.modify_index = index;
    state.put_deployment(index, Arc::new(d));
}

/// Settle the job's running deployment from its allocations' health, as
/// their clients decided it: it fails as soon as one is unhealthy, and
/// succeeds (its job version becoming stable) once every group has as many
/// healthy allocations as it wants, its canaries promoted. A paused
/// deployment waits.
fn refresh_deployment_status(state: &mut State, index: u64, key: &JobKey) {
    let Some(d) = state.latest_deployment(key).cloned() else { return };
    if d.status != DeploymentStatus::Running {
        return;
    }
    let Some(job) = state.job(key).cloned() else { return };
    if job.version != d.job_version {
        return;
    }
    let health = state.deployment_health(d.id);
    let done = d.task_groups.iter().all(|g| {
        !g.awaits_promotion() && state.deployment_group_health(d.id, &g.name).healthy >= u64::from(g.desired_total)
    });
    let (status, description) = if health.unhealthy > 0 {
        (DeploymentStatus::Failed, crate::model::DESCRIPTION_UNHEALTHY)
    } else if done {
        (DeploymentStatus::Successful, crate::model::DESCRIPTION_SUCCESSFUL)
    } else {
        return;
    };
    let mut d = (*d).clone();
    d.status = status;
    d.status_description = description.into();
    d.modify_index = index;
    state.put_deployment(index, Arc::new(d));
    if status == DeploymentStatus::Successful {
        state.set_job_version_stable(index, key, job.version, true);
    }
}

fn update_node(
    state: &mut State,
    index: u64,
    node_id: NodeId,
    out: &mut ApplyOutcome,
    f: impl FnOnce(&mut Node),
) -> Result<(), ApplyError> {
    let existing = state.node(node_id).cloned().ok_or(ApplyError::NodeNotFound(node_id))?;
    let mut node = (*existing).clone();
    f(&mut node);
    node.modify_index = index;
    if node.ready_for_placement() && !existing.ready_for_placement() {
        out.capacity_changes.push(CapacityChange { node_id, computed_class: node.computed_class });
    }
    state.put_node(index, Arc::new(node));
    Ok(())
}

fn push_capacity_change(state: &State, node_id: NodeId, out: &mut ApplyOutcome) {
    if let Some(node) = state.node(node_id) {
        out.capacity_changes.push(CapacityChange { node_id, computed_class: node.computed_class });
    }
}

fn upsert_evals<'a>(
    state: &mut State,
    index: u64,
    evals: impl Iterator<Item = &'a Evaluation>,
    out: &mut ApplyOutcome,
) {
    for eval in evals {
        let mut eval = eval.clone();
        eval.create_index = state.eval(eval.id).map_or(index, |e| e.create_index);
        eval.modify_index = index;
        let eval = Arc::new(eval);
        state.put_eval(index, eval.clone());
        out.evals.push(eval);
    }
}

fn apply_plan(state: &mut State, index: u64, applied: &PlanApplied, out: &mut ApplyOutcome) {
    let mut jobs = BTreeSet::new();
    for stop in &applied.stops {
        let Some(existing) = state.alloc(stop.alloc_id).cloned() else { continue };
        let mut alloc = (*existing).clone();
        alloc.desired_status = DesiredStatus::Stop;
        alloc.desired_description = stop.description.clone();
        if let Some(status) = stop.client_status {
            alloc.client_status = status;
        }
        if stop.followup_eval_id.is_some() {
            alloc.followup_eval_id = stop.followup_eval_id;
        }
        alloc.modify_index = index;
        alloc.alloc_modify_index = index;
        alloc.modify_time_ns = applied.now_ns;
        let freed = !existing.is_terminal();
        jobs.insert(alloc.job_key());
        state.put_alloc(index, Arc::new(alloc));
        if freed {
            push_capacity_change(state, existing.node_id, out);
        }
    }
    for preemption in &applied.preemptions {
        let Some(existing) = state.alloc(preemption.alloc_id).cloned() else { continue };
        let mut alloc = (*existing).clone();
        alloc.desired_status = DesiredStatus::Evict;
        alloc.desired_description = format!("Preempted by alloc ID {}", preemption.preempted_by).into();
        alloc.preempted_by = Some(preemption.preempted_by);
        alloc.modify_index = index;
        alloc.alloc_modify_index = index;
        alloc.modify_time_ns = applied.now_ns;
        jobs.insert(alloc.job_key());
        state.put_alloc(index, Arc::new(alloc));
    }
    let mut fresh: Vec<Arc<Allocation>> = Vec::with_capacity(applied.allocs.len());
    for alloc in &applied.allocs {
        if alloc.create_index == 0 && state.alloc(alloc.id).is_some() {
            // The same placement committed twice: a plan whose commit timed
            // out but landed, planned again by its worker from the same
            // snapshot (same seed, same ids). The first copy stands; every
            // server skips the second alike, so the state stays the same
            // everywhere.
            out.duplicate_placements += 1;
            continue;
        }
        let mut alloc = (**alloc).clone();
        alloc.modify_index = index;
        alloc.alloc_modify_index = index;
        alloc.modify_time_ns = applied.now_ns;
        if fresh.last().is_none_or(|last| !Arc::ptr_eq(&last.job, &alloc.job)) {
            jobs.insert(alloc.job_key());
        }
        // Allocations the scheduler creates have create_index 0; only
        // updates need the stored record.
        let existing = if alloc.create_index == 0 { None } else { state.alloc(alloc.id).cloned() };
        match existing {
            Some(existing) => {
                // A server-side update: the client's view stays the client's.
                alloc.create_index = existing.create_index;
                alloc.create_time_ns = existing.create_time_ns;
                alloc.client_status = existing.client_status;
                alloc.client_description = existing.client_description.clone();
                alloc.task_states = existing.task_states.clone();
                // Health is the client's too, within one deployment: the
                // plan's copy may predate the latest report. An allocation
                // moved to a new deployment starts over.
                if alloc.deployment_id == existing.deployment_id {
                    alloc.deployment_status = existing.deployment_status;
                }
                state.put_alloc(index, Arc::new(alloc));
            }
            None => {
                alloc.create_index = index;
                alloc.create_time_ns = applied.now_ns;
                if let Some(prev_id) = alloc.previous_alloc
                    && let Some(prev) = state.alloc(prev_id).cloned()
                {
                    let mut prev = (*prev).clone();
                    prev.next_alloc = Some(alloc.id);
                    prev.modify_index = index;
                    state.put_alloc(index, Arc::new(prev));
                }
                fresh.push(Arc::new(alloc));
            }
        }
        out.allocs_written += 1;
    }
    state.put_new_allocs(index, &fresh);
    if let Some(deployment) = &applied.deployment {
        let mut d = deployment.clone();
        let is_new = state.deployment(d.id).is_none();
        d.create_index = state.deployment(d.id).map_or(index, |e| e.create_index);
        d.modify_index = index;
        if is_new {
            cancel_older_deployments(state, index, &d);
        }
        state.put_deployment(index, Arc::new(d));
    }
    for key in jobs {
        refresh_job_status(state, index, &key);
        // A plan that only stops allocations may leave a deployment done.
        refresh_deployment_status(state, index, &key);
    }
    upsert_evals(state, index, applied.preemption_evals.iter(), out);
}

/// Whether an evaluation's status means the leader should hand it to the broker.
pub fn should_enqueue(eval: &Evaluation) -> bool {
    eval.status == EvalStatus::Pending
}

/// Whether an evaluation's status means it waits in the blocked tracker.
pub fn should_block(eval: &Evaluation) -> bool {
    eval.status == EvalStatus::Blocked
}
