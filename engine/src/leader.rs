//! Leader duties that read the whole state: restoring the leader-only
//! services after an election, and garbage collection of old evaluations,
//! allocations, jobs and nodes. Pure functions over a snapshot; the leader
//! loop applies what they return.

use std::sync::Arc;

use crate::blocked::BlockedEvals;
use crate::broker::{BrokerError, SharedBroker};
use crate::fsm::Command;
use crate::ids::{AllocId, EvalId, JobKey, NodeId};
use crate::model::{EvalStatus, Evaluation, JobStatus, JobType, NodeStatus, SECOND_NS, TimeNs};
use crate::state::State;

/// What a new leader put back into its broker and blocked tracker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub enqueued: usize,
    pub blocked: usize,
}

/// On gaining leadership, once the state has caught up with the commit
/// index: every pending eval goes back to the broker (oldest first, so the
/// broker's per-job ordering matches the log) and every blocked eval back to
/// the blocked tracker. Nack timers start fresh with the new deliveries.
pub fn restore(state: &State, broker: &SharedBroker, blocked: &mut BlockedEvals) -> Result<Restored, BrokerError> {
    let mut evals: Vec<&Arc<Evaluation>> = state.evals().filter(|e| !e.is_terminal()).collect();
    evals.sort_by_key(|e| (e.create_index, e.id));
    let mut restored = Restored::default();
    for eval in evals {
        match eval.status {
            EvalStatus::Pending => {
                broker.enqueue(eval.clone())?;
                restored.enqueued += 1;
            }
            EvalStatus::Blocked => {
                let outcome = blocked.block(eval.clone());
                if let Some(ready) = outcome.enqueue {
                    broker.enqueue(ready)?;
                    restored.enqueued += 1;
                } else {
                    restored.blocked += 1;
                }
            }
            _ => {}
        }
    }
    Ok(restored)
}

/// Ages after which terminal objects are collected (Nomad's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcThresholds {
    pub eval_ns: i64,
    /// Batch evals are kept longer: their allocations are the job's record.
    pub batch_eval_ns: i64,
    pub job_ns: i64,
    pub node_ns: i64,
}

impl Default for GcThresholds {
    fn default() -> Self {
        GcThresholds {
            eval_ns: 3600 * SECOND_NS,
            batch_eval_ns: 24 * 3600 * SECOND_NS,
            job_ns: 4 * 3600 * SECOND_NS,
            node_ns: 24 * 3600 * SECOND_NS,
        }
    }
}

/// Ids reaped per command (Nomad's `maxIdsPerReap`): keeps one raft entry
/// well under the log's entry size limit.
pub const IDS_PER_REAP_MAX: usize = 7281;

/// The commands that garbage-collect what is old enough at `now_ns`:
/// terminal evals whose allocations are all terminal (with those
/// allocations), stopped or finished jobs with nothing live left (purged),
/// and down nodes with no allocations.
pub fn collect_garbage(state: &State, now_ns: TimeNs, thresholds: GcThresholds) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut evals: Vec<EvalId> = Vec::new();
    let mut allocs: Vec<AllocId> = Vec::new();
    for eval in state.evals().filter(|e| e.is_terminal()) {
        let threshold = if eval.job_type == JobType::Batch { thresholds.batch_eval_ns } else { thresholds.eval_ns };
        if now_ns - eval.modify_time_ns < threshold {
            continue;
        }
        let eval_allocs: Vec<AllocId> =
            state.allocs_by_job(&eval.job_key()).filter(|a| a.eval_id == eval.id).map(|a| a.id).collect();
        let all_terminal = eval_allocs.iter().all(|id| state.alloc(*id).is_some_and(|a| a.is_terminal()));
        let job_gone = state.job(&eval.job_key()).is_none_or(|j| j.stop || j.status == JobStatus::Dead);
        // A batch job's terminal allocations are its results: keep them
        // while the job is still there to be read.
        if !all_terminal || (eval.job_type == JobType::Batch && !job_gone) {
            continue;
        }
        evals.push(eval.id);
        allocs.extend(eval_allocs);
    }
    evals.sort_unstable();
    allocs.sort_unstable();
    for (eval_chunk, alloc_chunk) in chunk_pairs(&evals, &allocs) {
        commands.push(Command::EvalReap { evals: eval_chunk, allocs: alloc_chunk });
    }
    let mut dead_jobs: Vec<JobKey> = state
        .jobs()
        .filter(|j| j.status == JobStatus::Dead && now_ns - j.submit_time_ns >= thresholds.job_ns)
        .filter(|j| state.allocs_by_job(&j.key()).all(|a| a.is_terminal()))
        .filter(|j| state.evals_by_job(&j.key()).all(|e| e.is_terminal()))
        .map(|j| j.key())
        .collect();
    dead_jobs.sort();
    for key in dead_jobs {
        commands.push(Command::JobDeregister { key, purge: true, eval: None, now_ns });
    }
    let mut gone_nodes: Vec<NodeId> = state
        .nodes()
        .filter(|n| n.status == NodeStatus::Down && now_ns - n.status_updated_at_ns >= thresholds.node_ns)
        .filter(|n| state.allocs_by_node(n.id).all(|a| a.is_terminal()))
        .map(|n| n.id)
        .collect();
    gone_nodes.sort_unstable();
    for node_id in gone_nodes {
        commands.push(Command::NodeDeregister { node_id, evals: Vec::new() });
    }
    commands
}

/// Split ids into reap commands of at most [`IDS_PER_REAP_MAX`] ids each.
fn chunk_pairs(evals: &[EvalId], allocs: &[AllocId]) -> Vec<(Vec<EvalId>, Vec<AllocId>)> {
    let mut out = Vec::new();
    let mut evals = evals.chunks(IDS_PER_REAP_MAX).map(<[EvalId]>::to_vec);
    let mut allocs = allocs.chunks(IDS_PER_REAP_MAX).map(<[AllocId]>::to_vec);
    loop {
        match (evals.next(), allocs.next()) {
            (None, None) => return out,
            (e, a) => out.push((e.unwrap_or_default(), a.unwrap_or_default())),
        }
    }
}
