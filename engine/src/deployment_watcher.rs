//! The leader's deployment watcher (Nomad's `deploymentwatcher`), as pure
//! decisions over a snapshot and `now`: which deployments need a look,
//! and for one of them the command to commit, if any:
//!
//! - a running deployment whose group made no progress by its
//!   `RequireProgressBy` fails ("Failed due to progress deadline");
//! - a group with `auto_promote` whose canaries are all healthy is
//!   promoted;
//! - a failed deployment (the FSM fails one as soon as an allocation is
//!   unhealthy) whose group has `auto_revert` rolls the job back to its
//!   latest stable version ([`endpoints::rollback`]).
//!
//! Health reports themselves need no watcher here: the client status
//! endpoint adds the job's deployment-watcher eval to the same entry when
//! the report is unhealthy or the rollout has more to place
//! ([`rollout_continues`]), unless an eval of the job already waits to run
//! ([`eval_waiting_to_run`]). At a million allocations, one eval per node's
//! report batch made tens of thousands of evals, each reconciling a
//! thousand allocations. A report that lands while that eval is already
//! being scheduled is not lost: a running deployment gets an eval here when
//! an allocation turned healthy after the index its job's latest eval saw
//! (Nomad's `jobEvalStatus` rule), within a look.
//! Each decision is idempotent against the state it reads (a rollback
//! registers a new version, after which the failed deployment is no longer
//! the job's current one), so a decision committed twice lands once.

use crate::endpoints;
use crate::fsm::Command;
use crate::ids::{DeploymentId, IdGen, JobKey};
use crate::model::{Deployment, DeploymentStatus, EvalStatus, SECOND_NS, TimeNs, TriggeredBy};
use crate::state::State;

/// How often the leader looks: progress deadlines are minutes, so a
/// second's lateness is noise.
pub const DEPLOYMENT_WATCH_INTERVAL_NS: i64 = SECOND_NS;

/// Deployments looked at per look; the rest wait for the next one (a
/// second later), so one look never holds the leader loop for long.
pub const DEPLOYMENTS_WATCHED_PER_TICK_MAX: usize = 1024;

/// Deployments that may need a decision: running ones of their job's
/// current version, and failed ones not yet rolled back.
pub fn watched(state: &State) -> Vec<DeploymentId> {
    let mut ids: Vec<DeploymentId> = state
        .deployments()
        .filter(|d| {
            let current = state.job(&d.job).is_some_and(|j| j.version == d.job_version);
            current && (d.status == DeploymentStatus::Running || needs_rollback(d))
        })
        .map(|d| d.id)
        .collect();
    ids.sort_unstable();
    ids.truncate(DEPLOYMENTS_WATCHED_PER_TICK_MAX);
    ids
}

/// A failed deployment that auto-reverts and has not said what became of
/// its rollback yet.
fn needs_rollback(d: &Deployment) -> bool {
    d.status == DeploymentStatus::Failed && d.auto_reverts() && !d.status_description.contains("rolling back")
}

/// The command the deployment needs now, built from `state`.
pub fn watch(state: &State, id: DeploymentId, now_ns: TimeNs, ids: &mut IdGen) -> Option<Command> {
    let d = state.deployment(id)?;
    let job = state.job(&d.job)?;
    if job.version != d.job_version {
        return None;
    }
    if needs_rollback(d) {
        let (description, rollback) = endpoints::rollback(state, d, &d.status_description, now_ns, ids);
        if description == d.status_description {
            // Nothing stable to go back to: the failure stands as it is.
            return None;
        }
        let evals = rollback.as_ref().map(|_| deployment_eval(state, d, now_ns, ids)).into_iter().flatten().collect();
        return Some(Command::DeploymentStatusUpdate {
            id,
            status: DeploymentStatus::Failed,
            description,
            evals,
            job: rollback,
            now_ns,
        });
    }
    if d.status != DeploymentStatus::Running {
        return None;
    }
    if missed_progress_deadline(state, d, now_ns) {
        let (description, job) =
            endpoints::rollback(state, d, crate::model::DESCRIPTION_PROGRESS_DEADLINE, now_ns, ids);
        let evals = deployment_eval(state, d, now_ns, ids).into_iter().collect();
        return Some(Command::DeploymentStatusUpdate {
            id,
            status: DeploymentStatus::Failed,
            description,
            evals,
            job,
            now_ns,
        });
    }
    let promotable: Vec<std::sync::Arc<str>> = d
        .task_groups
        .iter()
        .filter(|g| g.auto_promote && g.awaits_promotion() && healthy_canaries(state, d, &g.name) >= g.desired_canaries)
        .map(|g| g.name.clone())
        .collect();
    // Every waiting group must be promotable: auto-promotion is all or
    // nothing, as in Nomad.
    if !promotable.is_empty() && d.task_groups.iter().filter(|g| g.awaits_promotion()).count() == promotable.len() {
        return endpoints::promote_deployment(state, id, promotable, now_ns, ids).ok();
    }
    if rollout_continues(state, d)
        && !eval_waiting_to_run(state, &d.job, now_ns)
        && health_index(state, d) > latest_eval_index(state, &d.job)
    {
        let eval = deployment_eval(state, d, now_ns, ids)?;
        return Some(Command::EvalUpsert { evals: vec![eval] });
    }
    None
}

/// A healthy allocation can move the deployment on: some group has
/// allocations left to place, or canaries waiting for promotion. Once every
/// group has placed all it wants, health only settles the deployment,
/// which the FSM does as the reports apply; no scheduler pass is needed.
pub fn rollout_continues(state: &State, d: &Deployment) -> bool {
    d.task_groups.iter().any(|g| {
        g.awaits_promotion() || state.deployment_group_health(d.id, &g.name).placed < u64::from(g.desired_total)
    })
}

/// An eval of the job waits to run now (pending and not delayed): it will
/// read every health report committed before a worker takes it, so another
/// eval for the job's deployment would only add work.
pub fn eval_waiting_to_run(state: &State, job: &JobKey, now_ns: TimeNs) -> bool {
    state.evals_by_job(job).any(|e| e.status == EvalStatus::Pending && e.wait_ns == 0 && e.wait_until_ns <= now_ns)
}

/// The index of the deployment's newest healthy allocation: what the
/// scheduler needs to have seen to place the rollout's next batch.
fn health_index(state: &State, d: &Deployment) -> u64 {
    state
        .allocs_by_job(&d.job)
        .filter(|a| a.deployment_id == Some(d.id))
        .filter_map(|a| a.deployment_status.as_ref())
        .filter(|status| status.healthy == Some(true))
        .map(|status| status.modify_index)
        .max()
        .unwrap_or(0)
}

/// The newest state index the job's evals acted on: a scheduled eval's
/// snapshot index, else its create index. A canceled eval acted on nothing.
fn latest_eval_index(state: &State, job: &JobKey) -> u64 {
    state
        .evals_by_job(job)
        .filter(|e| e.status != EvalStatus::Canceled)
        .map(|e| if e.snapshot_index != 0 { e.snapshot_index } else { e.create_index })
        .max()
        .unwrap_or(0)
}

/// Some group's `RequireProgressBy` passed before it had all the healthy
/// allocations it wants. A group whose canaries are all healthy and wait
/// for a person to promote them is not late.
fn missed_progress_deadline(state: &State, d: &Deployment, now_ns: TimeNs) -> bool {
    d.task_groups.iter().any(|g| {
        if g.require_progress_by_ns <= 0 || now_ns <= g.require_progress_by_ns {
            return false;
        }
        if g.awaits_promotion() {
            return healthy_canaries(state, d, &g.name) < g.desired_canaries;
        }
        state.deployment_group_health(d.id, &g.name).healthy < u64::from(g.desired_total)
    })
}

fn healthy_canaries(state: &State, d: &Deployment, group: &str) -> u32 {
    let count = state
        .allocs_by_job(&d.job)
        .filter(|a| a.deployment_id == Some(d.id) && a.is_canary() && a.group_name() == group)
        .filter(|a| a.deployment_healthy() == Some(true))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The eval the scheduler acts on the deployment's change with.
fn deployment_eval(state: &State, d: &Deployment, now_ns: TimeNs, ids: &mut IdGen) -> Option<crate::model::Evaluation> {
    let job = state.job(&d.job)?;
    let mut eval = crate::model::Evaluation::new(
        ids.eval(),
        &job.key(),
        job.job_type,
        job.priority,
        TriggeredBy::DeploymentWatcher,
    );
    eval.job_modify_index = job.job_modify_index;
    eval.deployment_id = Some(d.id);
    eval.create_time_ns = now_ns;
    eval.modify_time_ns = now_ns;
    Some(eval)
}
