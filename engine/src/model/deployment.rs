use std::sync::Arc;

use crate::ids::{DeploymentId, JobKey};
use crate::model::rkyv_with::ArcStr;

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

/// The record of rolling out one job version. Minimal for now: rolling
/// updates, canaries and health tracking build on it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Deployment {
    pub id: DeploymentId,
    pub job: JobKey,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub status: DeploymentStatus,
    #[rkyv(with = ArcStr)]
    pub status_description: Arc<str>,
    pub create_index: u64,
    pub modify_index: u64,
}
