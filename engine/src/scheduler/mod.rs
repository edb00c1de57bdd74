//! The scheduler: a pure function from (snapshot, eval, now) to a plan.
//!
//! Service and batch jobs go through [`reconcile`] (what should change) and
//! then the placement [`stack`] (where new allocations go: candidates →
//! feasibility → fit → score → limit → select). System and sysbatch jobs go
//! through [`system`], node by node. Nothing here mutates state or blocks:
//! the worker submits the plan and retries on partial commits.
//!
//! Determinism: the node order is shuffled from a seed derived from the eval
//! id and the snapshot index, and every id created comes from that seed, so
//! the same inputs always produce the same plan.

mod candidates;
mod context;
mod describe;
mod devices;
mod feasibility;
mod generic;
mod ports;
mod preempt;
pub mod probe;
mod rank;
pub mod reconcile;
mod stack;
mod system;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{EvalId, IdGen};
use crate::model::{AllocMetric, EvalStatus, Evaluation, JobType, Plan, TimeNs};
use crate::state::State;

pub use describe::describe_plan;
pub use reconcile::DesiredUpdates;

/// Everything one scheduler run produces.
#[derive(Debug, Clone, Default)]
pub struct ScheduleOutcome {
    pub plan: Plan,
    /// Placements that found no node, per task group.
    pub failed_tg_allocs: BTreeMap<Arc<str>, AllocMetric>,
    /// Allocations still to be placed, per task group.
    pub queued_allocations: BTreeMap<Arc<str>, u32>,
    /// What the reconciler decided, per task group (for `job plan`).
    pub desired_updates: BTreeMap<Arc<str>, DesiredUpdates>,
    /// A blocked eval to create when placements failed.
    pub blocked_eval: Option<Evaluation>,
    /// Evals to create that reschedule failed allocations later.
    pub followup_evals: Vec<Evaluation>,
}

/// Errors that stop a scheduler run; the worker nacks the eval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("eval {0} has a job type that does not match its job")]
    JobTypeMismatch(EvalId),
}

/// The seed of a run: the same eval on the same snapshot gets the same seed.
pub fn run_seed(eval_id: EvalId, snapshot_index: u64) -> u64 {
    let id = eval_id.0;
    (id as u64) ^ ((id >> 64) as u64) ^ snapshot_index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Schedule `eval` against `snapshot`. Pure: same inputs, same outcome.
pub fn schedule(snapshot: &State, eval: &Evaluation, now_ns: TimeNs) -> Result<ScheduleOutcome, ScheduleError> {
    let seed = run_seed(eval.id, snapshot.index());
    // A parameterized or periodic job is a template: only its children run.
    let job = snapshot.job(&eval.job_key()).filter(|j| !j.is_template()).cloned();
    if let Some(job) = &job
        && job.job_type != eval.job_type
    {
        return Err(ScheduleError::JobTypeMismatch(eval.id));
    }
    let mut ids = IdGen::with_seed(seed);
    let mut outcome = match eval.job_type {
        JobType::Service | JobType::Batch => generic::schedule(snapshot, eval, job, now_ns, seed, &mut ids),
        JobType::System | JobType::SysBatch => system::schedule(snapshot, eval, job, now_ns, seed, &mut ids),
    };
    outcome.plan.eval_id = eval.id;
    outcome.plan.priority = eval.priority;
    outcome.plan.snapshot_index = snapshot.index();
    Ok(outcome)
}

/// The eval as the worker writes it back when the run is done.
pub fn completed_eval(eval: &Evaluation, outcome: &ScheduleOutcome, snapshot_index: u64, now_ns: TimeNs) -> Evaluation {
    let mut done = eval.clone();
    done.status = EvalStatus::Complete;
    done.status_description = "".into();
    done.failed_tg_allocs = outcome.failed_tg_allocs.clone();
    done.queued_allocations = outcome.queued_allocations.clone();
    done.blocked_eval = outcome.blocked_eval.as_ref().map(|b| b.id);
    done.snapshot_index = snapshot_index;
    done.modify_time_ns = now_ns;
    done
}

/// The eval's job's allocations in id order: the table's own order is
/// deterministic but not sorted, and reconciliation reads better sorted.
pub(crate) fn job_allocs(state: &State, eval: &Evaluation) -> Vec<Arc<crate::model::Allocation>> {
    let mut allocs: Vec<_> = state.allocs_by_job(&eval.job_key()).cloned().collect();
    allocs.sort_unstable_by_key(|a| a.id);
    allocs
}

/// Where and what a new allocation is: the parts that differ between the
/// service/batch and the system schedulers.
pub(crate) struct NewAlloc<'a> {
    pub(crate) job: &'a Arc<crate::model::Job>,
    /// `job.key().tag()`, computed once per run.
    pub(crate) job_tag: u64,
    pub(crate) eval: &'a Evaluation,
    pub(crate) group_index: u16,
    pub(crate) name_index: u32,
    pub(crate) node_id: crate::ids::NodeId,
    pub(crate) resources: Arc<crate::model::AllocatedResources>,
    pub(crate) previous: Option<crate::ids::AllocId>,
    pub(crate) reschedule_tracker: Option<Arc<crate::model::RescheduleTracker>>,
}

/// A new allocation as the scheduler creates it: desired run, client
/// pending, `create_index` 0 (the applier's mark for "new").
pub(crate) fn new_allocation(spec: NewAlloc<'_>, ids: &mut IdGen, now_ns: TimeNs) -> Arc<crate::model::Allocation> {
    use crate::model::{Allocation, ClientStatus, DesiredStatus, DesiredTransition};
    Arc::new(Allocation {
        id: ids.alloc_tagged(spec.job_tag),
        eval_id: spec.eval.id,
        node_id: spec.node_id,
        job: spec.job.clone(),
        group_index: spec.group_index,
        name_index: spec.name_index,
        resources: spec.resources,
        desired_status: DesiredStatus::Run,
        desired_description: "".into(),
        desired_transition: DesiredTransition::default(),
        client_status: ClientStatus::Pending,
        client_description: "".into(),
        previous_alloc: spec.previous,
        next_alloc: None,
        reschedule_tracker: spec.reschedule_tracker,
        followup_eval_id: None,
        deployment_id: None,
        deployment_status: None,
        preempted_by: None,
        create_index: 0,
        modify_index: 0,
        alloc_modify_index: 0,
        create_time_ns: now_ns,
        modify_time_ns: now_ns,
        task_states: crate::model::no_task_states(),
    })
}
