//! Command builders for the server's write endpoints: each reads the current
//! state and returns the one [`Command`] to commit, with the evaluations the
//! change triggers included, so the change and its evals land atomically.
//! Called by the leader under its write path (in-process: the log lock), so
//! the state read is the state the command applies to.

use std::collections::BTreeSet;

use crate::fsm::Command;
use crate::ids::{AllocId, IdGen, JobKey, NodeId};
use crate::model::{
    AllocClientUpdate, ClientStatus, DesiredTransition, DrainStrategy, Evaluation, Job, JobType, Node, NodeStatus,
    SchedulingEligibility, TimeNs, TriggeredBy,
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

pub fn register_job(job: Job, now_ns: TimeNs, ids: &mut IdGen) -> Result<Command, EndpointError> {
    validate_job(&job)?;
    let eval = eval_for(&job, TriggeredBy::JobRegister, None, now_ns, ids);
    Ok(Command::JobRegister { job, eval: Some(eval), now_ns })
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
/// eval to reschedule it (Nomad's `Node.UpdateAlloc`).
pub fn update_allocs_from_client(
    state: &State,
    updates: Vec<AllocClientUpdate>,
    now_ns: TimeNs,
    ids: &mut IdGen,
) -> Command {
    let mut jobs: BTreeSet<JobKey> = BTreeSet::new();
    for u in &updates {
        if u.client_status == ClientStatus::Failed
            && let Some(alloc) = state.alloc(u.alloc_id)
            && !alloc.client_status.is_terminal()
            && alloc.job.job_type != JobType::System
        {
            jobs.insert(alloc.job_key());
        }
    }
    let evals = jobs
        .iter()
        .filter_map(|k| state.job(k))
        .map(|job| eval_for(job, TriggeredBy::RetryFailedAlloc, None, now_ns, ids))
        .collect();
    Command::AllocClientUpdate { updates, evals }
}
