use std::sync::Arc;

use crate::ids::{DeploymentId, JobKey};
use crate::model::TimeNs;
use crate::model::rkyv_with::ArcStr;

/// Nomad's status descriptions, which tools match on.
pub const DESCRIPTION_RUNNING: &str = "Deployment is running";
pub const DESCRIPTION_NEEDS_PROMOTION: &str = "Deployment is running but requires manual promotion";
pub const DESCRIPTION_PENDING_AUTO_PROMOTION: &str = "Deployment is running pending automatic promotion";
pub const DESCRIPTION_SUCCESSFUL: &str = "Deployment completed successfully";
pub const DESCRIPTION_UNHEALTHY: &str = "Failed due to unhealthy allocations";
pub const DESCRIPTION_PROGRESS_DEADLINE: &str = "Failed due to progress deadline";

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DeploymentStatus {
    Running,
    Paused,
    Failed,
    Successful,
    Cancelled,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::Paused => "paused",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Successful => "successful",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, DeploymentStatus::Running | DeploymentStatus::Paused)
    }
}

/// One task group's rollout in a deployment (Nomad's `DeploymentState`,
/// less the counts, which the state derives from the allocations).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DeploymentGroup {
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    pub auto_revert: bool,
    pub auto_promote: bool,
    /// The canaries were promoted: the rest of the group rolls.
    pub promoted: bool,
    pub desired_canaries: u32,
    pub desired_total: u32,
    pub progress_deadline_ns: i64,
    /// The deployment fails if no allocation of the group becomes healthy
    /// by then (0: no deadline). Moves on with each healthy allocation.
    pub require_progress_by_ns: TimeNs,
}

impl DeploymentGroup {
    /// Canaries placed and waiting for a promotion.
    pub fn awaits_promotion(&self) -> bool {
        self.desired_canaries > 0 && !self.promoted
    }
}

/// The record of rolling out one job version: per group, its update
/// strategy's settings and progress; the scheduler rolls the version out
/// in `max_parallel` batches as allocations become healthy.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Deployment {
    pub id: DeploymentId,
    pub job: JobKey,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub status: DeploymentStatus,
    #[rkyv(with = ArcStr)]
    pub status_description: Arc<str>,
    /// The groups with an update strategy, in the job's order.
    pub task_groups: Vec<DeploymentGroup>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Deployment {
    pub fn group(&self, name: &str) -> Option<&DeploymentGroup> {
        self.task_groups.iter().find(|g| &*g.name == name)
    }

    /// Some group's canaries wait for a promotion.
    pub fn awaits_promotion(&self) -> bool {
        self.task_groups.iter().any(DeploymentGroup::awaits_promotion)
    }

    /// Some group reverts to the last stable version when this fails.
    pub fn auto_reverts(&self) -> bool {
        self.task_groups.iter().any(|g| g.auto_revert)
    }
}
