use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{JobType, TimeNs};
use crate::ids::{DeploymentId, EvalId, JobKey, NodeId};
use crate::model::rkyv_with::ArcStr;
use rkyv::with::{Identity, MapKV};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum EvalStatus {
    Blocked,
    Pending,
    Complete,
    Failed,
    Canceled,
}

impl EvalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EvalStatus::Blocked => "blocked",
            EvalStatus::Pending => "pending",
            EvalStatus::Complete => "complete",
            EvalStatus::Failed => "failed",
            EvalStatus::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, EvalStatus::Complete | EvalStatus::Failed | EvalStatus::Canceled)
    }
}

/// Why an evaluation was created (Nomad's `TriggeredBy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum TriggeredBy {
    JobRegister,
    JobDeregister,
    PeriodicJob,
    NodeDrain,
    NodeUpdate,
    AllocStop,
    Scheduled,
    RollingUpdate,
    DeploymentWatcher,
    FailedFollowUp,
    MaxPlans,
    RetryFailedAlloc,
    QueuedAllocs,
    Preemption,
    JobScaling,
    MaxDisconnectTimeout,
    Reconnect,
}

impl TriggeredBy {
    pub fn as_str(self) -> &'static str {
        use TriggeredBy::*;
        match self {
            JobRegister => "job-register",
            JobDeregister => "job-deregister",
            PeriodicJob => "periodic-job",
            NodeDrain => "node-drain",
            NodeUpdate => "node-update",
            AllocStop => "alloc-stop",
            Scheduled => "scheduled",
            RollingUpdate => "rolling-update",
            DeploymentWatcher => "deployment-watcher",
            FailedFollowUp => "failed-follow-up",
            MaxPlans => "max-plan-attempts",
            RetryFailedAlloc => "alloc-failure",
            QueuedAllocs => "queued-allocs",
            Preemption => "preemption",
            JobScaling => "job-scaling",
            MaxDisconnectTimeout => "max-disconnect-timeout",
            Reconnect => "reconnect",
        }
    }
}

impl fmt::Display for TriggeredBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why placements of one task group failed (Nomad's `AllocMetric`).
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocMetric {
    pub nodes_evaluated: u32,
    pub nodes_filtered: u32,
    pub nodes_in_pool: u32,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub nodes_available: BTreeMap<Arc<str>, u32>,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub class_filtered: BTreeMap<Arc<str>, u32>,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub constraint_filtered: BTreeMap<Arc<str>, u32>,
    pub nodes_exhausted: u32,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub class_exhausted: BTreeMap<Arc<str>, u32>,
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub dimension_exhausted: BTreeMap<Arc<str>, u32>,
    /// Placements of this group that failed the same way and were folded in.
    pub coalesced_failures: u32,
    pub allocation_time_ns: i64,
}

impl AllocMetric {
    /// One line for people: "exhausted memory on 312 nodes, constraint filtered 40".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (dim, n) in &self.dimension_exhausted {
            parts.push(format!("exhausted {dim} on {n} nodes"));
        }
        for (c, n) in &self.constraint_filtered {
            parts.push(format!("constraint {c} filtered {n} nodes"));
        }
        if self.nodes_evaluated == 0 {
            parts.push("no nodes were eligible for evaluation".to_string());
        }
        if parts.is_empty() {
            parts.push(format!("{} nodes evaluated, {} filtered", self.nodes_evaluated, self.nodes_filtered));
        }
        parts.join(", ")
    }
}

/// A unit of scheduling work for one job (or one node, for system jobs).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Evaluation {
    pub id: EvalId,
    #[rkyv(with = ArcStr)]
    pub namespace: Arc<str>,
    pub priority: u8,
    pub job_type: JobType,
    pub triggered_by: TriggeredBy,
    #[rkyv(with = ArcStr)]
    pub job_id: Arc<str>,
    pub job_modify_index: u64,
    pub node_id: Option<NodeId>,
    pub node_modify_index: u64,
    pub deployment_id: Option<DeploymentId>,
    pub status: EvalStatus,
    #[rkyv(with = ArcStr)]
    pub status_description: Arc<str>,
    /// Delay before the eval may be processed (relative, from creation).
    pub wait_ns: i64,
    /// Absolute time before which the eval must not be processed (0: none).
    pub wait_until_ns: TimeNs,
    pub next_eval: Option<EvalId>,
    pub previous_eval: Option<EvalId>,
    pub blocked_eval: Option<EvalId>,
    /// Per task group: why placements failed.
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub failed_tg_allocs: BTreeMap<Arc<str>, AllocMetric>,
    /// Per computed node class: whether the job could run on it (blocked evals).
    pub class_eligibility: BTreeMap<u64, bool>,
    /// A constraint escaped class caching, so any node change may unblock.
    pub escaped_computed_class: bool,
    pub annotate_plan: bool,
    /// Per task group: allocations still to place.
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub queued_allocations: BTreeMap<Arc<str>, u32>,
    /// Raft index of the snapshot the scheduler used (blocked evals compare it
    /// with capacity-change indexes to catch missed unblocks).
    pub snapshot_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time_ns: TimeNs,
    pub modify_time_ns: TimeNs,
}

impl Evaluation {
    /// A pending evaluation for a job.
    pub fn new(id: EvalId, job_key: &JobKey, job_type: JobType, priority: u8, triggered_by: TriggeredBy) -> Evaluation {
        Evaluation {
            id,
            namespace: job_key.namespace.clone(),
            priority,
            job_type,
            triggered_by,
            job_id: job_key.id.clone(),
            job_modify_index: 0,
            node_id: None,
            node_modify_index: 0,
            deployment_id: None,
            status: EvalStatus::Pending,
            status_description: "".into(),
            wait_ns: 0,
            wait_until_ns: 0,
            next_eval: None,
            previous_eval: None,
            blocked_eval: None,
            failed_tg_allocs: BTreeMap::new(),
            class_eligibility: BTreeMap::new(),
            escaped_computed_class: false,
            annotate_plan: false,
            queued_allocations: BTreeMap::new(),
            snapshot_index: 0,
            create_index: 0,
            modify_index: 0,
            create_time_ns: 0,
            modify_time_ns: 0,
        }
    }

    pub fn job_key(&self) -> JobKey {
        JobKey { namespace: self.namespace.clone(), id: self.job_id.clone() }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}
