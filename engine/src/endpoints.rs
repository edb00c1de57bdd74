//! Command builders for the server's write endpoints: each reads the current
//! state and returns the one [`Command`] to commit, with the evaluations the
//! change triggers included, so the change and its evals land atomically.
//! Called by the leader under its write path (in-process: the log lock), so
//! the state read is the state the command applies to.

use std::collections::{BTreeMap, BTreeSet};

use crate::fsm::Command;
use crate::ids::{AllocId, DeploymentId, IdGen, JobKey, NodeId};
use crate::model::{
    AllocClientUpdate, ClientStatus, DESCRIPTION_RUNNING, Deployment, DeploymentStatus, DesiredTransition,
    DrainStrategy, Evaluation, Job, JobType, Node, NodeStatus, SchedulingEligibility, TimeNs, TriggeredBy,
};
use crate::state::State;
use crate::validate::{ValidationError, validate_job, validate_node};

/// Why a write was refused before reaching the log.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    #[error("job {0} not found")]
    JobNotFound(JobKey),
    #[error("allocation {0} not found")]
    AllocNotFound(AllocId),
    #[error("deployment {0} not found")]
    DeploymentNotFound(DeploymentId),
    #[error("job {0} at version {1} not found")]
    JobVersionNotFound(JobKey, u64),
    /// The request is well-formed but not allowed in the current state
    /// (for example reverting to the current version); the text says why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Apply(#[from] crate::fsm::ApplyError),
    /// The write could not be committed (no leader, no quorum, or the
    /// state machine refused it on apply); nothing changed.
    #[error("{0}")]
    Commit(String),
}

fn eval_for(
    job: &Job,
    triggered_by: TriggeredBy,
    node_id: Option<NodeId>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Evaluation {
    let mut eval = Evaluation::new(ids.eval(), &job.key(), job.job_type, job.priority, triggered_by);
    eval.job_modify_index = job.job_modify_index;
    eval.node_id = node_id;
    eval.create_time_ns = now_ns;
    eval.modify_time_ns = now_ns;
    eval
}

/// One eval per job that has a live allocation on the node, plus one per
/// system job (which may now need to place or stop there), as Nomad's
/// `createNodeEvals`.
pub fn node_evals(
    state: &State,
    node_id: NodeId,
    triggered_by: TriggeredBy,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Vec<Evaluation> {
    let mut jobs: BTreeSet<JobKey> =
        state.allocs_by_node(node_id).filter(|a| !a.is_terminal()).map(|a| a.job_key()).collect();
    jobs.extend(state.jobs().filter(|j| j.job_type.is_system_like() && !j.stop).map(|j| j.key()));
    jobs.iter()
        .filter_map(|key| state.job(key))
        .map(|job| eval_for(job, triggered_by, Some(node_id), now_ns, ids))
        .collect()
}

/// A parameterized or periodic job is a template: registering it creates
/// no eval, as in Nomad (its dispatched or launched children are evaluated).
pub fn register_job(job: Job, now_ns: TimeNs, ids: &mut IdGen) -> Result<Command, EndpointError> {
    validate_job(&job)?;
    let eval = (!job.is_template()).then(|| eval_for(&job, TriggeredBy::JobRegister, None, now_ns, ids));
    Ok(Command::JobRegister { job, eval, now_ns })
}

/// Nomad's limit on a dispatch payload (`DispatchPayloadSizeLimit`): the
/// payload travels with the child job in every raft entry that carries it.
pub const DISPATCH_PAYLOAD_BYTES_MAX: usize = 16 * 1024;

/// `job dispatch`: a child of a parameterized job, registered with its
/// eval (Nomad's `Job.Dispatch`). The child's id is
/// `<parent>/dispatch-<unix seconds>-<8 hex>`; its meta is the parent's
/// with the dispatch meta on top. Returns the command and the child's id.
pub fn dispatch_job(
    state: &State,
    key: &JobKey,
    payload: Vec<u8>,
    meta: std::collections::BTreeMap<std::sync::Arc<str>, std::sync::Arc<str>>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<(Command, std::sync::Arc<str>), EndpointError> {
    use crate::model::PayloadMode;
    let parent = state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
    let Some(config) = parent.parameterized.as_ref().filter(|_| parent.is_parameterized_parent()) else {
        return Err(EndpointError::Refused(format!("specified job {:?} is not a parameterized job", key.id)));
    };
    if parent.stop {
        return Err(EndpointError::Refused(format!("job {:?} is stopped", key.id)));
    }
    if payload.len() > DISPATCH_PAYLOAD_BYTES_MAX {
        return Err(EndpointError::Refused(format!(
            "Payload exceeds maximum size; {} > {DISPATCH_PAYLOAD_BYTES_MAX}",
            payload.len()
        )));
    }
    match (config.payload, payload.is_empty()) {
        (PayloadMode::Required, true) => {
            return Err(EndpointError::Refused("Payload is not provided but required by parameterized job".into()));
        }
        (PayloadMode::Forbidden, false) => {
            return Err(EndpointError::Refused("Payload provided but forbidden by parameterized job".into()));
        }
        _ => {}
    }
    let missing: Vec<&str> = config.meta_required.iter().filter(|k| !meta.contains_key(*k)).map(|k| &**k).collect();
    if !missing.is_empty() {
        return Err(EndpointError::Refused(format!("Dispatch did not provide required meta keys: {missing:?}")));
    }
    let unpermitted: Vec<&str> = meta
        .keys()
        .filter(|k| !config.meta_required.contains(k) && !config.meta_optional.contains(k))
        .map(|k| &**k)
        .collect();
    if !unpermitted.is_empty() {
        return Err(EndpointError::Refused(format!(
            "Dispatch request included unpermitted metadata keys: {unpermitted:?}"
        )));
    }
    let suffix = (ids.eval().0 >> 96) as u32;
    let child_id: std::sync::Arc<str> =
        format!("{}/dispatch-{}-{suffix:08x}", parent.id, now_ns / crate::model::SECOND_NS).into();
    let mut child = (**parent).clone();
    child.id = child_id.clone();
    child.name = child_id.clone();
    child.parent_id = Some(parent.id.clone());
    child.payload = payload;
    child.meta.extend(meta);
    child.version = 0;
    child.stable = false;
    child.create_index = 0;
    child.modify_index = 0;
    child.job_modify_index = 0;
    let command = register_job(child, now_ns, ids)?;
    Ok((command, child_id))
}

/// Launch a periodic job's child at `launch_ns` (Nomad's `deriveJob` and
/// `DispatchJob`): the parent's spec without its `periodic` block, as
/// `<parent>/periodic-<unix seconds>`, with its eval, and the launch
/// recorded for the parent, all in one command. `forced` is
/// `job periodic force`: the FSM does not refuse it for a time already
/// recorded. Returns the command and the child's id.
pub fn periodic_launch(
    state: &State,
    key: &JobKey,
    launch_ns: TimeNs,
    forced: bool,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<(Command, std::sync::Arc<str>), EndpointError> {
    let parent = state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
    if !parent.is_periodic_parent() {
        return Err(EndpointError::Refused(format!("can't force launch non-periodic job {:?}", key.id)));
    }
    if !parent.is_periodic_active() {
        let why = if parent.stop { "stopped" } else { "disabled" };
        return Err(EndpointError::Refused(format!("periodic job {:?} is {why}", key.id)));
    }
    let child_id = crate::periodic::child_id(&parent.id, launch_ns);
    let mut child = (**parent).clone();
    child.id = child_id.clone();
    child.name = child_id.clone();
    child.parent_id = Some(parent.id.clone());
    child.periodic = None;
    child.version = 0;
    child.stable = false;
    child.create_index = 0;
    child.modify_index = 0;
    child.job_modify_index = 0;
    validate_job(&child)?;
    let eval = eval_for(&child, TriggeredBy::PeriodicJob, None, now_ns, ids);
    let command = Command::PeriodicLaunch { job: child, eval, launch_ns, forced, now_ns };
    Ok((command, child_id))
}

pub fn deregister_job(
    state: &State,
    key: &JobKey,
    purge: bool,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let job = state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
    let eval = eval_for(job, TriggeredBy::JobDeregister, None, now_ns, ids);
    Ok(Command::JobDeregister { key: key.clone(), purge, eval: Some(eval), now_ns })
}

pub fn register_node(state: &State, node: Node, now_ns: TimeNs, ids: &mut IdGen) -> Result<Command, EndpointError> {
    validate_node(&node)?;
    // A new node has no allocations yet, so this is its system jobs' evals.
    let evals = if node.ready_for_placement() {
        node_evals(state, node.id, TriggeredBy::NodeUpdate, now_ns, ids)
    } else {
        Vec::new()
    };
    Ok(Command::NodeRegister { node, evals })
}

pub fn update_node_status(
    state: &State,
    node_id: NodeId,
    status: NodeStatus,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let node = state.node(node_id).ok_or(EndpointError::NodeNotFound(node_id))?;
    let evals = if node.status != status {
        node_evals(state, node_id, TriggeredBy::NodeUpdate, now_ns, ids)
    } else {
        Vec::new()
    };
    Ok(Command::NodeStatusUpdate { node_id, status, evals, now_ns })
}

pub fn update_node_drain(
    state: &State,
    node_id: NodeId,
    drain: Option<DrainStrategy>,
    mark_eligible: bool,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    state.node(node_id).ok_or(EndpointError::NodeNotFound(node_id))?;
    let evals = node_evals(state, node_id, TriggeredBy::NodeDrain, now_ns, ids);
    Ok(Command::NodeDrainUpdate { node_id, drain, mark_eligible, evals, now_ns })
}

pub fn update_node_eligibility(
    state: &State,
    node_id: NodeId,
    eligibility: SchedulingEligibility,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let node = state.node(node_id).ok_or(EndpointError::NodeNotFound(node_id))?;
    let evals = if node.eligibility != eligibility {
        node_evals(state, node_id, TriggeredBy::NodeUpdate, now_ns, ids)
    } else {
        Vec::new()
    };
    Ok(Command::NodeEligibilityUpdate { node_id, eligibility, evals, now_ns })
}

/// `alloc stop`: mark the allocation to be migrated (stopped and replaced)
/// and evaluate its job, as Nomad's `Alloc.Stop`.
pub fn stop_alloc(state: &State, alloc_id: AllocId, now_ns: TimeNs, ids: &mut IdGen) -> Result<Command, EndpointError> {
    let alloc = state.alloc(alloc_id).ok_or(EndpointError::AllocNotFound(alloc_id))?;
    let job = state.job(&alloc.job_key()).ok_or_else(|| EndpointError::JobNotFound(alloc.job_key()))?;
    let eval = eval_for(job, TriggeredBy::AllocStop, None, now_ns, ids);
    let transition = DesiredTransition { migrate: true, ..DesiredTransition::default() };
    Ok(Command::AllocDesiredTransition { transitions: vec![(alloc_id, transition)], evals: vec![eval] })
}

/// Client status reports; a job with a newly failed allocation gets one
/// eval to reschedule it (Nomad's `Node.UpdateAlloc`), and a job whose
/// deployment hears a new health decision gets one from the deployment
/// watcher, so the next batch of its rollout goes out (or, unhealthy, the
/// failure is acted on); a healthy decision in a rollout with nothing left
/// to place needs none.
pub fn update_allocs_from_client(
    state: &State,
    updates: Vec<AllocClientUpdate>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Command {
    let mut jobs: BTreeSet<JobKey> = BTreeSet::new();
    let mut deployments: BTreeMap<JobKey, DeploymentId> = BTreeMap::new();
    for u in &updates {
        let Some(alloc) = state.alloc(u.alloc_id) else { continue };
        if u.client_status == ClientStatus::Failed
            && !alloc.client_status.is_terminal()
            && alloc.job.job_type != JobType::System
        {
            jobs.insert(alloc.job_key());
        }
        if let Some(report) = u.deployment_health
            && alloc.deployment_id == Some(report.deployment_id)
            && alloc.deployment_healthy().is_none()
            && state.deployment(report.deployment_id).is_some_and(|d| {
                d.status.is_active() && (!report.healthy || crate::deployment_watcher::rollout_continues(state, d))
            })
        {
            deployments.insert(alloc.job_key(), report.deployment_id);
        }
    }
    let mut evals: Vec<Evaluation> = jobs
        .iter()
        .filter_map(|k| state.job(k))
        .map(|job| eval_for(job, TriggeredBy::RetryFailedAlloc, None, now_ns, ids))
        .collect();
    for (key, deployment_id) in deployments {
        // One eval per job is enough: it sees every report of the batch,
        // as does one already waiting to run (see `deployment_watcher`).
        if jobs.contains(&key) || crate::deployment_watcher::eval_waiting_to_run(state, &key, now_ns) {
            continue;
        }
        if let Some(job) = state.job(&key) {
            let mut eval = eval_for(job, TriggeredBy::DeploymentWatcher, None, now_ns, ids);
            eval.deployment_id = Some(deployment_id);
            evals.push(eval);
        }
    }
    Command::AllocClientUpdate { updates, evals }
}

/// `job revert`: register a kept version's specification again, as a new
/// version, with its eval (Nomad's `Job.Revert`). `enforce_prior_version`
/// refuses the revert unless the current version is that one.
pub fn revert_job(
    state: &State,
    key: &JobKey,
    version: u64,
    enforce_prior_version: Option<u64>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let current = state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
    if current.version == version {
        return Err(EndpointError::Refused(format!("can't revert to current version {version}")));
    }
    if let Some(prior) = enforce_prior_version
        && prior != current.version
    {
        return Err(EndpointError::Refused(format!(
            "current job has version {}; enforcing version {prior}",
            current.version
        )));
    }
    let target =
        state.job_version(key, version).ok_or_else(|| EndpointError::JobVersionNotFound(key.clone(), version))?;
    let mut job = (*target).clone();
    // Bookkeeping is the register path's: it numbers the new version.
    job.version = current.version;
    job.create_index = current.create_index;
    register_job(job, now_ns, ids)
}

/// `job stable`: mark a kept version stable or not (Nomad's `Job.Stable`).
pub fn set_job_stability(state: &State, key: &JobKey, version: u64, stable: bool) -> Result<Command, EndpointError> {
    state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
    state.job_version(key, version).ok_or_else(|| EndpointError::JobVersionNotFound(key.clone(), version))?;
    Ok(Command::JobStability { key: key.clone(), version, stable })
}

/// A scaling request (Nomad's `JobScaleRequest`), checked for shape by
/// the caller (the HTTP edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleRequest {
    pub group: std::sync::Arc<str>,
    /// The group's new count; none records an event only.
    pub count: Option<u32>,
    pub message: std::sync::Arc<str>,
    /// The event reports an error (an autoscaler's); it may carry no count.
    pub error: bool,
    /// `Meta` as the JSON text of an object, or empty.
    pub meta_json: std::sync::Arc<str>,
}

/// `job scale` (Nomad's `Job.Scale`): with a count, a new job version with
/// the group's count changed and its eval (none for a periodic or
/// parameterized job); with or without one, a scaling event for the group
/// (the previous count, the message, the error flag, the meta and the
/// eval), all in one command. Refused while the job's deployment is
/// active, as Nomad refuses it.
pub fn scale_job(
    state: &State,
    key: &JobKey,
    request: &ScaleRequest,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    use crate::model::{SCALING_EVENT_TEXT_BYTES_MAX, ScalingEvent};
    if request.count.is_some() && request.error {
        return Err(EndpointError::Refused("scaling action should not contain count if error is true".into()));
    }
    for (field, text) in [("Message", &request.message), ("Meta", &request.meta_json)] {
        if text.len() > SCALING_EVENT_TEXT_BYTES_MAX {
            return Err(EndpointError::Refused(format!(
                "scaling event {field} is {} bytes, more than {SCALING_EVENT_TEXT_BYTES_MAX}",
                text.len()
            )));
        }
    }
    let current = state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
    let group = &request.group;
    let Some(group_index) = current.group_index(group) else {
        return Err(EndpointError::Refused(format!(
            "task group {group:?} specified for scaling does not exist in job"
        )));
    };
    let previous_count = current.task_groups[group_index].count;
    let mut event = ScalingEvent {
        time_ns: now_ns,
        count: request.count,
        previous_count,
        message: request.message.clone(),
        error: request.error,
        meta_json: request.meta_json.clone(),
        eval_id: None,
        create_index: 0,
    };
    let Some(count) = request.count else {
        return Ok(Command::JobScale { key: key.clone(), group: group.clone(), job: None, eval: None, event, now_ns });
    };
    if current.stop {
        return Err(EndpointError::Refused("job is stopped: run it again before scaling".into()));
    }
    if current.job_type.is_system_like() {
        return Err(EndpointError::Refused(format!("can't scale a {} job", current.job_type)));
    }
    if state.latest_deployment(key).is_some_and(|d| d.status.is_active() && d.create_index >= current.create_index) {
        return Err(EndpointError::Refused("job scaling blocked due to active deployment".into()));
    }
    let mut job = (**current).clone();
    job.task_groups[group_index].count = count;
    validate_job(&job)?;
    let eval = (!job.is_template()).then(|| eval_for(&job, TriggeredBy::JobScaling, None, now_ns, ids));
    event.eval_id = eval.as_ref().map(|e| e.id);
    Ok(Command::JobScale { key: key.clone(), group: group.clone(), job: Some(job), eval, event, now_ns })
}

/// Most allocations one health request may name: the command carries
/// every id through raft in one entry.
pub const ALLOC_HEALTH_IDS_MAX: usize = 10_000;

/// `deployment allocation-health` (Nomad's `Deployment.SetAllocHealth`,
/// for groups with `health_check = "manual"`): the operator's decision for
/// allocations of an active deployment, with a deployment-watcher eval so
/// the rollout moves on (or, unhealthy, the failure is acted on). Refused
/// for a terminal deployment, no ids, too many, an id named twice, and an
/// allocation unknown or not part of the deployment.
pub fn set_alloc_health(
    state: &State,
    id: DeploymentId,
    healthy: Vec<AllocId>,
    unhealthy: Vec<AllocId>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let d = state.deployment(id).ok_or(EndpointError::DeploymentNotFound(id))?;
    let total = healthy.len() + unhealthy.len();
    if total == 0 {
        return Err(EndpointError::Refused("must specify at least one healthy/unhealthy allocation ID".into()));
    }
    if total > ALLOC_HEALTH_IDS_MAX {
        return Err(EndpointError::Refused(format!(
            "{total} allocation IDs given, at most {ALLOC_HEALTH_IDS_MAX} per request"
        )));
    }
    if !d.status.is_active() {
        return Err(EndpointError::Refused(format!(
            "can't set health of allocations for a terminal deployment (status {})",
            d.status.as_str()
        )));
    }
    let mut seen = BTreeSet::new();
    for alloc_id in healthy.iter().chain(&unhealthy) {
        if !seen.insert(*alloc_id) {
            return Err(EndpointError::Refused(format!("allocation {alloc_id} is named more than once")));
        }
        let alloc =
            state.alloc(*alloc_id).ok_or_else(|| EndpointError::Refused(format!("unknown alloc {alloc_id}")))?;
        if alloc.deployment_id != Some(id) {
            return Err(EndpointError::Refused(format!("alloc {alloc_id} is not part of deployment {id}")));
        }
    }
    let job = state.job(&d.job).ok_or_else(|| EndpointError::JobNotFound(d.job.clone()))?;
    let mut eval = eval_for(job, TriggeredBy::DeploymentWatcher, None, now_ns, ids);
    eval.deployment_id = Some(id);
    Ok(Command::DeploymentAllocHealth { id, healthy, unhealthy, evals: vec![eval], now_ns })
}

/// What a user may do to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentAction {
    Fail,
    Pause,
    Resume,
}

/// `deployment fail|pause|resume` with the eval Nomad creates for the job
/// (fail and resume let the scheduler act; pause only records).
pub fn update_deployment(
    state: &State,
    id: DeploymentId,
    action: DeploymentAction,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let d = state.deployment(id).ok_or(EndpointError::DeploymentNotFound(id))?;
    if !d.status.is_active() {
        let verb = match action {
            DeploymentAction::Fail => "fail",
            DeploymentAction::Pause => "pause",
            DeploymentAction::Resume => "resume",
        };
        return Err(EndpointError::Refused(format!("can't {verb} terminal deployment (status {})", d.status.as_str())));
    }
    let (status, description) = match action {
        DeploymentAction::Fail => (DeploymentStatus::Failed, "Deployment marked as failed"),
        DeploymentAction::Pause => (DeploymentStatus::Paused, "Deployment is paused"),
        DeploymentAction::Resume => {
            let running =
                if d.awaits_promotion() { crate::model::DESCRIPTION_NEEDS_PROMOTION } else { DESCRIPTION_RUNNING };
            (DeploymentStatus::Running, running)
        }
    };
    let (description, job) = match action {
        DeploymentAction::Fail => rollback(state, d, description, now_ns, ids),
        _ => (description.into(), None),
    };
    let mut evals = Vec::new();
    if action != DeploymentAction::Pause
        && let Some(job) = state.job(&d.job)
    {
        let mut eval = eval_for(job, TriggeredBy::DeploymentWatcher, None, now_ns, ids);
        eval.deployment_id = Some(id);
        evals.push(eval);
    }
    Ok(Command::DeploymentStatusUpdate { id, status, description, evals, job, now_ns })
}

/// A failing deployment's rollback (Nomad's deployment watcher): when a
/// group auto-reverts and the job still runs the failed version, the latest
/// stable older version is registered again, as a new version, through
/// the `job revert` path. Returns the failure's description, saying what
/// happened, and the job to register.
pub fn rollback(
    state: &State,
    d: &Deployment,
    why: &str,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> (std::sync::Arc<str>, Option<Job>) {
    let plain = (why.into(), None);
    if !d.auto_reverts() {
        return plain;
    }
    let Some(current) = state.job(&d.job) else { return plain };
    if current.version != d.job_version {
        return plain;
    }
    let Some(stable) = state.job_versions(&d.job).into_iter().find(|j| j.stable && j.version < current.version) else {
        return plain;
    };
    if !stable.spec_changed(current) {
        let text = format!(
            "{why} - not rolling back to stable job version {} as current job has same specification",
            stable.version
        );
        return (text.into(), None);
    }
    match revert_job(state, &d.job, stable.version, None, now_ns, ids) {
        Ok(Command::JobRegister { job, .. }) => {
            (format!("{why} - rolling back to job version {}", stable.version).into(), Some(job))
        }
        _ => plain,
    }
}

/// `deployment promote` (Nomad's `Deployment.Promote`): the canaries of
/// `groups` (every group with canaries when empty) are promoted and the
/// rest of each group rolls out. Refused for a terminal deployment, one
/// without canaries, an unknown group, or canaries not all healthy yet.
pub fn promote_deployment(
    state: &State,
    id: DeploymentId,
    groups: Vec<std::sync::Arc<str>>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Result<Command, EndpointError> {
    let d = state.deployment(id).ok_or(EndpointError::DeploymentNotFound(id))?;
    if !d.status.is_active() {
        return Err(EndpointError::Refused(format!(
            "can't promote terminal deployment (status {})",
            d.status.as_str()
        )));
    }
    if d.status == DeploymentStatus::Paused {
        return Err(EndpointError::Refused("can't promote a paused deployment: resume it first".into()));
    }
    for name in &groups {
        if d.group(name).is_none() {
            return Err(EndpointError::Refused(format!("deployment has no task group {name:?}")));
        }
    }
    let named = |name: &str| groups.is_empty() || groups.iter().any(|g| &**g == name);
    let targets: Vec<&crate::model::DeploymentGroup> =
        d.task_groups.iter().filter(|g| named(&g.name) && g.desired_canaries > 0).collect();
    if targets.is_empty() {
        return Err(EndpointError::Refused("deployment has no canaries to promote".into()));
    }
    for g in &targets {
        let healthy = state
            .allocs_by_job(&d.job)
            .filter(|a| a.deployment_id == Some(id) && a.is_canary() && a.group().name == g.name)
            .filter(|a| a.deployment_healthy() == Some(true))
            .count();
        if !g.promoted && healthy < g.desired_canaries as usize {
            return Err(EndpointError::Refused(format!(
                "task group {:?} has {healthy}/{} healthy canaries",
                g.name, g.desired_canaries
            )));
        }
    }
    let job = state.job(&d.job).ok_or_else(|| EndpointError::JobNotFound(d.job.clone()))?;
    let mut eval = eval_for(job, TriggeredBy::DeploymentWatcher, None, now_ns, ids);
    eval.deployment_id = Some(id);
    Ok(Command::DeploymentPromote { id, groups, evals: vec![eval], now_ns })
}

/// `node purge`: remove the node with an eval for every job that had a
/// live allocation there (and every system job); the scheduler then marks
/// those allocations lost and replaces them (Nomad's `Node.Deregister`).
pub fn purge_node(state: &State, node_id: NodeId, now_ns: TimeNs, ids: &mut IdGen) -> Result<Command, EndpointError> {
    state.node(node_id).ok_or(EndpointError::NodeNotFound(node_id))?;
    let evals = node_evals(state, node_id, TriggeredBy::NodeUpdate, now_ns, ids);
    Ok(Command::NodeDeregister { node_id, evals })
}
