use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use super::{AllocatedResources, Job, TaskGroup, TimeNs};
use crate::ids::{AllocId, DeploymentId, EvalId, JobKey, NodeId};
use crate::model::rkyv_with::{ArcStr, SharedTaskStates};
use rkyv::with::{Identity, MapKV};

/// What the servers want for an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DesiredStatus {
    Run,
    Stop,
    Evict,
}

impl DesiredStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredStatus::Run => "run",
            DesiredStatus::Stop => "stop",
            DesiredStatus::Evict => "evict",
        }
    }
}

/// What the client reports for an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ClientStatus {
    Pending,
    Running,
    Complete,
    Failed,
    Lost,
    Unknown,
}

impl ClientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Pending => "pending",
            ClientStatus::Running => "running",
            ClientStatus::Complete => "complete",
            ClientStatus::Failed => "failed",
            ClientStatus::Lost => "lost",
            ClientStatus::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<ClientStatus> {
        use ClientStatus::*;
        [Pending, Running, Complete, Failed, Lost, Unknown].into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, ClientStatus::Complete | ClientStatus::Failed | ClientStatus::Lost)
    }
}

/// One past reschedule of an allocation's lineage.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RescheduleEvent {
    pub at_ns: TimeNs,
    pub prev_alloc_id: AllocId,
    pub prev_node_id: NodeId,
    pub delay_ns: i64,
}

/// History carried from an allocation to its replacement, to enforce the
/// reschedule policy's attempts and compute its next delay.
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RescheduleTracker {
    pub events: Vec<RescheduleEvent>,
}

/// Server-requested transitions on a running allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DesiredTransition {
    /// Move off a draining node.
    pub migrate: bool,
    /// Replace now even though it is not failed (e.g. `alloc stop`).
    pub reschedule: bool,
    /// Replace right away ignoring the reschedule delay.
    pub force_reschedule: bool,
}

/// A task group instance bound to a node.
///
/// Kept small: the job is shared (`Arc`) with every allocation of the same
/// version, and the name `job.group[index]` is computed, not stored.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Allocation {
    pub id: AllocId,
    pub eval_id: EvalId,
    pub node_id: NodeId,
    /// The job version this allocation was placed or last updated with.
    pub job: Arc<Job>,
    /// Index of the task group in `job.task_groups`.
    pub group_index: u16,
    /// The `[n]` of the allocation's name.
    pub name_index: u32,
    pub resources: Arc<AllocatedResources>,
    pub desired_status: DesiredStatus,
    #[rkyv(with = ArcStr)]
    pub desired_description: Arc<str>,
    pub desired_transition: DesiredTransition,
    pub client_status: ClientStatus,
    #[rkyv(with = ArcStr)]
    pub client_description: Arc<str>,
    pub previous_alloc: Option<AllocId>,
    pub next_alloc: Option<AllocId>,
    pub reschedule_tracker: Option<Arc<RescheduleTracker>>,
    /// Eval that will reschedule this failed allocation later.
    pub followup_eval_id: Option<EvalId>,
    pub deployment_id: Option<DeploymentId>,
    /// Health within its deployment (Nomad's `DeploymentStatus`): the
    /// client decides it, the scheduler marks canaries.
    pub deployment_status: Option<AllocDeploymentStatus>,
    pub preempted_by: Option<AllocId>,
    pub create_index: u64,
    pub modify_index: u64,
    /// Index of the last change made by the servers (not by client updates).
    pub alloc_modify_index: u64,
    pub create_time_ns: TimeNs,
    pub modify_time_ns: TimeNs,
    /// The client's view of each task, by task name; shared until a client
    /// update replaces it.
    #[rkyv(with = SharedTaskStates)]
    pub task_states: Arc<BTreeMap<Arc<str>, TaskState>>,
}

impl Allocation {
    pub fn group(&self) -> &TaskGroup {
        &self.job.task_groups[usize::from(self.group_index)]
    }

    pub fn group_name(&self) -> &str {
        &self.group().name
    }

    pub fn job_key(&self) -> JobKey {
        self.job.key()
    }

    /// Nomad's `job.group[n]` name.
    pub fn name(&self) -> String {
        format!("{}.{}[{}]", self.job.id, self.group_name(), self.name_index)
    }

    /// Terminal from the servers' point of view: stopped/evicted, or finished
    /// on the client. A terminal allocation holds no resources.
    pub fn is_terminal(&self) -> bool {
        self.server_terminal() || self.client_status.is_terminal()
    }

    pub fn server_terminal(&self) -> bool {
        matches!(self.desired_status, DesiredStatus::Stop | DesiredStatus::Evict)
    }

    /// The allocation finished successfully and batch semantics say keep it.
    pub fn ran_successfully(&self) -> bool {
        self.client_status == ClientStatus::Complete
    }

    /// Placed as a canary of its deployment.
    pub fn is_canary(&self) -> bool {
        self.deployment_status.is_some_and(|s| s.canary)
    }

    /// The client's health decision: `None` until it made one.
    pub fn deployment_healthy(&self) -> Option<bool> {
        self.deployment_status.and_then(|s| s.healthy)
    }
}

/// An allocation's standing in its deployment (Nomad's
/// `AllocDeploymentStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocDeploymentStatus {
    /// Set once by the client: `Some(true)` healthy, `Some(false)` not.
    pub healthy: Option<bool>,
    /// When the client decided `healthy`.
    pub timestamp_ns: TimeNs,
    /// Placed as a canary of a new version, beside the old allocations.
    pub canary: bool,
    pub modify_index: u64,
}

impl AllocDeploymentStatus {
    pub fn is_healthy(&self) -> bool {
        self.healthy == Some(true)
    }

    pub fn is_unhealthy(&self) -> bool {
        self.healthy == Some(false)
    }
}

/// A client's health decision for an allocation in a deployment. It names
/// the deployment, so a decision made for one the allocation has since left
/// (an in-place update moved it to a newer one) is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocHealthReport {
    pub deployment_id: DeploymentId,
    pub healthy: bool,
    pub at_ns: TimeNs,
}

/// A client's report about one allocation.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocClientUpdate {
    pub alloc_id: AllocId,
    pub client_status: ClientStatus,
    #[rkyv(with = ArcStr)]
    pub client_description: Arc<str>,
    pub at_ns: TimeNs,
    /// Every task's state, whole (Nomad sends the full map each time).
    #[rkyv(with = MapKV<ArcStr, Identity>)]
    pub task_states: BTreeMap<Arc<str>, TaskState>,
    /// The client's health decision, once made (Nomad sends the
    /// allocation's `DeploymentStatus` with its status).
    pub deployment_health: Option<AllocHealthReport>,
}

/// An allocation's task states, by task name.
pub type TaskStates = BTreeMap<Arc<str>, TaskState>;

/// The task states of an allocation no client has reported on: one shared
/// empty map, so placing an allocation allocates nothing for it.
pub fn no_task_states() -> Arc<TaskStates> {
    static EMPTY: LazyLock<Arc<TaskStates>> = LazyLock::new(Default::default);
    EMPTY.clone()
}

/// Nomad's task lifecycle: pending until started, running, dead at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum TaskLifecycleState {
    Pending,
    Running,
    Dead,
}

impl TaskLifecycleState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskLifecycleState::Pending => "pending",
            TaskLifecycleState::Running => "running",
            TaskLifecycleState::Dead => "dead",
        }
    }
}

/// What a client reports about one task of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TaskState {
    pub state: TaskLifecycleState,
    pub failed: bool,
    pub restarts: u32,
    pub last_restart_ns: TimeNs,
    pub started_at_ns: TimeNs,
    pub finished_at_ns: TimeNs,
    /// Oldest first, at most [`MAX_TASK_EVENTS`] (the oldest are dropped).
    pub events: Vec<TaskEvent>,
}

/// Nomad keeps the last 10 events per task; enough to see a restart loop
/// without letting a crash-looping task grow the state.
pub const MAX_TASK_EVENTS: usize = 10;

impl TaskState {
    pub fn pending() -> TaskState {
        TaskState {
            state: TaskLifecycleState::Pending,
            failed: false,
            restarts: 0,
            last_restart_ns: 0,
            started_at_ns: 0,
            finished_at_ns: 0,
            events: Vec::new(),
        }
    }

    /// Appends an event, dropping the oldest past [`MAX_TASK_EVENTS`].
    pub fn push_event(&mut self, event: TaskEvent) {
        if self.events.len() == MAX_TASK_EVENTS {
            self.events.remove(0);
        }
        self.events.push(event);
    }
}

/// One event of a task, with Nomad's type names ("Received", "Started",
/// "Terminated", "Restarting", "Killing", "Killed", "Not Restarting",
/// "Driver Failure", ...).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TaskEvent {
    #[rkyv(with = ArcStr)]
    pub kind: Arc<str>,
    pub time_ns: TimeNs,
    /// Human-readable detail (Nomad's `DisplayMessage`).
    #[rkyv(with = ArcStr)]
    pub message: Arc<str>,
    /// Set for "Terminated".
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The restart delay for "Restarting".
    pub restart_delay_ns: Option<i64>,
    /// Set when the event ends the task for good (Nomad's `FailsTask`).
    pub fails_task: bool,
}

impl TaskEvent {
    pub fn new(kind: &str, time_ns: TimeNs, message: &str) -> TaskEvent {
        TaskEvent {
            kind: kind.into(),
            time_ns,
            message: message.into(),
            exit_code: None,
            signal: None,
            restart_delay_ns: None,
            fails_task: false,
        }
    }
}
