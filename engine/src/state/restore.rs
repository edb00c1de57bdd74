//! Full-state snapshots, engine side: reading a [`State`] out in an order
//! that rebuilds it exactly, and [`StateBuilder`], which rebuilds it.
//!
//! The wire format is `net`'s. The engine promises that a builder fed in
//! this order gives back a state with the same tables, the same secondary
//! indexes in the same order and the same usage, because it goes through
//! the very `put_*` paths the FSM uses:
//!
//! 1. job histories ([`State::job_histories`]);
//! 2. node slots, in [`State::node_alloc_lists`] order (empty at first);
//! 3. nodes in [`State::nodes_in_pool_order`] (each pool's list order);
//! 4. allocations in [`State::allocs`] order (each job's table order), then
//!    each node's list order ([`StateBuilder::order_node_allocs`]);
//! 5. evaluations in [`State::evals`] order, then each job's list order
//!    ([`StateBuilder::order_job_evals`]);
//! 6. deployments in [`State::deployments`] order, the scheduler config;
//! 7. periodic launch records ([`State::periodic_launches`]);
//! 8. scaling events ([`State::all_scaling_events`]).
//!
//! Hash tables iterate in an order that depends on insertion history, and
//! the scheduler reads some of them in iteration order; inserting in the
//! original iteration order is what keeps a restored server scheduling
//! exactly as one that replayed the log.

use std::sync::Arc;

use super::tables::TABLE_COUNT;
use super::{SchedulerConfig, State};
use crate::ids::{AllocId, DeploymentId, EvalId, JobKey, NodeId};
use crate::model::{Allocation, Deployment, Evaluation, Job, JobScalingEvents, Node, PeriodicLaunch};

/// One job's records: its current version and the versions kept, oldest
/// first as stored.
#[derive(Debug)]
pub struct JobHistory<'a> {
    pub key: &'a JobKey,
    pub current: Option<&'a Arc<Job>>,
    pub versions: Vec<&'a Arc<Job>>,
}

/// Reads in restore order.
impl State {
    /// Every job key with its current record and kept versions: jobs in key
    /// order, then (never in a consistent state, but carried all the same)
    /// version lists whose current record is gone.
    pub fn job_histories(&self) -> impl Iterator<Item = JobHistory<'_>> + '_ {
        let current = self.job_entries().map(|(key, job)| JobHistory {
            key,
            current: Some(job),
            versions: self.job_version_list(key).map(|v| v.iter().collect()).unwrap_or_default(),
        });
        let orphans = self
            .job_version_lists()
            .filter(|(key, _)| self.job(key).is_none())
            .map(|(key, versions)| JobHistory { key, current: None, versions: versions.iter().collect() });
        current.chain(orphans)
    }

    /// Every node, each pool's nodes in registration order.
    pub fn nodes_in_pool_order(&self) -> impl Iterator<Item = &Arc<Node>> + '_ {
        self.pool_lists().flat_map(|ids| ids.iter()).filter_map(|id| self.node(*id))
    }
}

/// A snapshot that would not rebuild into a consistent state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("job {0} restored twice")]
    DuplicateJob(JobKey),
    #[error("job {key} lists a version belonging to {found}")]
    ForeignJobVersion { key: JobKey, found: JobKey },
    #[error("node {0} restored twice")]
    DuplicateNode(NodeId),
    #[error("allocation {0} restored twice")]
    DuplicateAlloc(AllocId),
    #[error("allocation {0} does not carry its job's tag")]
    UntaggedAlloc(AllocId),
    #[error("node {0}'s allocation list does not match its allocations")]
    NodeAllocsDiffer(NodeId),
    #[error("job {0}'s eval list does not match its evals")]
    JobEvalsDiffer(JobKey),
    #[error("evaluation {0} restored twice")]
    DuplicateEval(EvalId),
    #[error("deployment {0} restored twice")]
    DuplicateDeployment(DeploymentId),
    #[error("periodic launch of job {0} restored twice")]
    DuplicatePeriodicLaunch(JobKey),
    #[error("scaling events of job {0} restored twice")]
    DuplicateScalingEvents(JobKey),
}

/// Rebuilds a [`State`] from a full snapshot through the FSM's own write
/// paths, so every derived index and each node's usage come out as the FSM
/// would have left them. Feed it in the order the reads above yield.
#[derive(Debug, Default)]
pub struct StateBuilder {
    state: State,
}

/// Writes made while restoring carry index 0; [`StateBuilder::finish`] then
/// sets the state's index and every table's last-write index as recorded.
const RESTORE_INDEX: u64 = 0;

impl StateBuilder {
    pub fn new() -> StateBuilder {
        StateBuilder::default()
    }

    /// A job's kept versions (oldest first) and its current record.
    pub fn put_job_history(
        &mut self,
        key: &JobKey,
        current: Option<Arc<Job>>,
        versions: Vec<Arc<Job>>,
    ) -> Result<(), RestoreError> {
        if self.state.job(key).is_some() || self.state.job_version_list(key).is_some() {
            return Err(RestoreError::DuplicateJob(key.clone()));
        }
        for job in current.iter().chain(versions.iter()) {
            let found = job.key();
            if found != *key {
                return Err(RestoreError::ForeignJobVersion { key: key.clone(), found });
            }
        }
        for version in versions {
            self.state.put_job(RESTORE_INDEX, version);
        }
        self.state.restore_current_job(key, current);
        Ok(())
    }

    pub fn put_node(&mut self, node: Arc<Node>) -> Result<(), RestoreError> {
        if self.state.node(node.id).is_some() {
            return Err(RestoreError::DuplicateNode(node.id));
        }
        self.state.put_node(RESTORE_INDEX, node);
        Ok(())
    }

    /// A node slot, possibly of a node no longer registered. Call before
    /// the nodes, in slot order, so the slot table iterates as it did.
    pub fn put_node_slot(&mut self, node_id: NodeId) {
        self.state.ensure_node_slot(node_id);
    }

    /// Restores a node's allocation list order once its allocations are in.
    pub fn order_node_allocs(&mut self, node_id: NodeId, ids: &[AllocId]) -> Result<(), RestoreError> {
        match self.state.reorder_node_allocs(node_id, ids) {
            true => Ok(()),
            false => Err(RestoreError::NodeAllocsDiffer(node_id)),
        }
    }

    /// Restores a job's eval list order once its evals are in.
    pub fn order_job_evals(&mut self, key: &JobKey, ids: &[EvalId]) -> Result<(), RestoreError> {
        match self.state.reorder_job_evals(key, ids) {
            true => Ok(()),
            false => Err(RestoreError::JobEvalsDiffer(key.clone())),
        }
    }

    /// Allocations in [`State::allocs`] order.
    pub fn put_alloc(&mut self, alloc: Arc<Allocation>) -> Result<(), RestoreError> {
        if self.state.alloc(alloc.id).is_some() {
            return Err(RestoreError::DuplicateAlloc(alloc.id));
        }
        if alloc.id.job_tag() != alloc.job.key().tag() {
            // The by-id lookup would never find it.
            return Err(RestoreError::UntaggedAlloc(alloc.id));
        }
        self.state.put_alloc(RESTORE_INDEX, alloc);
        Ok(())
    }

    pub fn put_eval(&mut self, eval: Arc<Evaluation>) -> Result<(), RestoreError> {
        if self.state.eval(eval.id).is_some() {
            return Err(RestoreError::DuplicateEval(eval.id));
        }
        self.state.put_eval(RESTORE_INDEX, eval);
        Ok(())
    }

    pub fn put_deployment(&mut self, deployment: Arc<Deployment>) -> Result<(), RestoreError> {
        if self.state.deployment(deployment.id).is_some() {
            return Err(RestoreError::DuplicateDeployment(deployment.id));
        }
        self.state.put_deployment(RESTORE_INDEX, deployment);
        Ok(())
    }

    /// A periodic job's launch record as stored, indexes included.
    pub fn put_periodic_launch(&mut self, key: JobKey, launch: PeriodicLaunch) -> Result<(), RestoreError> {
        if self.state.restore_periodic_launch(key.clone(), launch) {
            Ok(())
        } else {
            Err(RestoreError::DuplicatePeriodicLaunch(key))
        }
    }

    /// A job's scaling events as stored, indexes included.
    pub fn put_scaling_events(&mut self, key: JobKey, events: Arc<JobScalingEvents>) -> Result<(), RestoreError> {
        if self.state.restore_scaling_events(key.clone(), events) {
            Ok(())
        } else {
            Err(RestoreError::DuplicateScalingEvents(key))
        }
    }

    /// The scheduler configuration as stored, `modify_index` included.
    pub fn set_scheduler_config(&mut self, config: SchedulerConfig) {
        self.state.restore_scheduler_config(config);
    }

    /// The current job a restored allocation may share its `Arc` with: the
    /// kept version equal to `job`, if any (restores the sharing a
    /// snapshot's chunking loses).
    pub fn kept_job_version(&self, job: &Job) -> Option<Arc<Job>> {
        let versions = self.state.job_version_list(&job.key())?;
        versions.iter().find(|v| v.version == job.version && ***v == *job).cloned()
    }

    /// The restored state at `index`, with each table's last-write index.
    pub fn finish(mut self, index: u64, table_indexes: [u64; TABLE_COUNT]) -> State {
        self.state.set_index(index);
        self.state.set_table_indexes(table_indexes);
        self.state.mark_removals_unknown_before(index);
        self.state
    }
}
