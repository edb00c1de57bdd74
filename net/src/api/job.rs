//! The submitted job, in Nomad's `api` package shape (`api/jobs.go`,
//! `api/tasks.go`, `api/resources.go`, `api/constraint.go`, `api/affinity.go`).
//!
//! Every field is an `Option`, as Nomad's api package uses pointers, so
//! canonicalization ([`super::job_from_api`]) can tell "unset" from "zero".
//! Integers are `i64` whatever their engine width: a negative count or a
//! priority of 1000 then reaches canonicalization, which names the field,
//! instead of failing inside the decoder. Durations are integer nanoseconds.
//!
//! Unknown fields are ignored, as Go's `encoding/json` ignores them (Nomad
//! accepts them silently everywhere). Fields Nomad knows but Caravan does not
//! model are kept as raw JSON in `Option<Value>` fields: an empty value (null,
//! `false`, `0`, `""`, `[]`, `{}`) passes, anything else is refused with
//! "not supported by Caravan", so a job never silently loses behaviour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Nomad's `api.Job`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Job {
    pub region: Option<String>,
    pub namespace: Option<String>,
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "Type")]
    pub job_type: Option<String>,
    pub priority: Option<i64>,
    pub all_at_once: Option<bool>,
    pub datacenters: Option<Vec<String>>,
    pub node_pool: Option<String>,
    pub constraints: Option<Vec<Constraint>>,
    pub affinities: Option<Vec<Affinity>>,
    pub spreads: Option<Vec<Spread>>,
    pub task_groups: Option<Vec<TaskGroup>>,
    pub update: Option<UpdateStrategy>,
    /// Job-level default merged into every group's policy, as Nomad does.
    pub reschedule: Option<ReschedulePolicy>,
    /// Job-level default merged into every group's policy, as Nomad does.
    pub migrate: Option<MigrateStrategy>,
    pub meta: Option<BTreeMap<String, String>>,
    pub stop: Option<bool>,
    /// Caravan extension: place every task group together, all or nothing.
    pub gang: Option<bool>,
    // Set by the servers; ignored on submit, rendered on read.
    pub status: Option<String>,
    pub status_description: Option<String>,
    pub stable: Option<bool>,
    pub version: Option<u64>,
    pub submit_time: Option<i64>,
    pub create_index: Option<u64>,
    pub modify_index: Option<u64>,
    pub job_modify_index: Option<u64>,
    /// `PeriodicConfig`, read field by field by canonicalization (so a
    /// wrong type is named with its path rather than failing the decode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub periodic: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameterized_job: Option<Value>,
    /// Known to Nomad, not modelled by Caravan: refused unless empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiregion: Option<Value>,
    /// Base64 (a dispatched child's payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// A dispatched child's parent.
    #[serde(rename = "ParentID", skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatched: Option<bool>,
}

/// Nomad's `api.TaskGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroup {
    pub name: Option<String>,
    pub count: Option<i64>,
    pub constraints: Option<Vec<Constraint>>,
    pub affinities: Option<Vec<Affinity>>,
    pub spreads: Option<Vec<Spread>>,
    pub tasks: Option<Vec<Task>>,
    pub restart_policy: Option<RestartPolicy>,
    pub reschedule_policy: Option<ReschedulePolicy>,
    pub ephemeral_disk: Option<EphemeralDisk>,
    pub update: Option<UpdateStrategy>,
    pub migrate: Option<MigrateStrategy>,
    /// At most one network; its ports are the group's ports.
    pub networks: Option<Vec<NetworkResource>>,
    pub meta: Option<BTreeMap<String, String>>,
    /// Nanoseconds.
    pub max_client_disconnect: Option<i64>,
    /// Caravan extension: place all `Count` allocations together or none.
    pub gang: Option<bool>,
    /// Caravan extension: prefer nodes sharing this attribute's value.
    pub gang_topology: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_after_client_disconnect: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Value>,
}

/// Nomad's `api.Task`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub user: Option<String>,
    /// The driver's configuration: any JSON object.
    pub config: Option<serde_json::Map<String, Value>>,
    pub constraints: Option<Vec<Constraint>>,
    pub affinities: Option<Vec<Affinity>>,
    pub env: Option<BTreeMap<String, String>>,
    pub resources: Option<Resources>,
    pub meta: Option<BTreeMap<String, String>>,
    /// Nanoseconds.
    pub kill_timeout: Option<i64>,
    pub leader: Option<bool>,
    /// Nomad copies the group's policy here on canonicalization; Caravan
    /// accepts it when it equals the group's and refuses a different one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Log rotation settings: accepted and ignored (the client's defaults apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_config: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_signal: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<Value>,
}

/// Nomad's `api.Resources` (a task's asks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    #[serde(rename = "CPU")]
    pub cpu: Option<i64>,
    #[serde(rename = "Cores")]
    pub cores: Option<i64>,
    #[serde(rename = "MemoryMB")]
    pub memory_mb: Option<i64>,
    #[serde(rename = "MemoryMaxMB")]
    pub memory_max_mb: Option<i64>,
    #[serde(rename = "Devices")]
    pub devices: Option<Vec<RequestedDevice>>,
    /// Deprecated in Nomad in favour of the group's `EphemeralDisk`.
    #[serde(rename = "DiskMB", skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<Value>,
    /// Deprecated in Nomad in favour of the group's `Networks`.
    #[serde(rename = "Networks", skip_serializing_if = "Option::is_none")]
    pub networks: Option<Value>,
    #[serde(rename = "NUMA", skip_serializing_if = "Option::is_none")]
    pub numa: Option<Value>,
    #[serde(rename = "SecretsMB", skip_serializing_if = "Option::is_none")]
    pub secrets_mb: Option<Value>,
}

/// Nomad's `api.RequestedDevice`: `device "nvidia/gpu" { count = 2 }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestedDevice {
    pub name: Option<String>,
    pub count: Option<i64>,
    pub constraints: Option<Vec<Constraint>>,
    pub affinities: Option<Vec<Affinity>>,
}

/// Nomad's `api.NetworkResource` (group level).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkResource {
    /// `""` or `"host"`; other modes are not supported.
    pub mode: Option<String>,
    pub reserved_ports: Option<Vec<Port>>,
    pub dynamic_ports: Option<Vec<Port>>,
    /// Deprecated bandwidth ask: accepted and ignored, as Nomad ignores it.
    #[serde(rename = "MBits", skip_serializing_if = "Option::is_none")]
    pub mbits: Option<Value>,
    #[serde(rename = "DNS", skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Value>,
}

/// Nomad's `api.Port`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Port {
    pub label: Option<String>,
    pub value: Option<i64>,
    pub to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_network: Option<Value>,
}

/// Nomad's `api.Constraint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Constraint {
    #[serde(rename = "LTarget")]
    pub l_target: Option<String>,
    #[serde(rename = "RTarget")]
    pub r_target: Option<String>,
    #[serde(rename = "Operand")]
    pub operand: Option<String>,
}

/// Nomad's `api.Affinity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Affinity {
    #[serde(rename = "LTarget")]
    pub l_target: Option<String>,
    #[serde(rename = "RTarget")]
    pub r_target: Option<String>,
    #[serde(rename = "Operand")]
    pub operand: Option<String>,
    #[serde(rename = "Weight")]
    pub weight: Option<i64>,
}

/// Nomad's `api.Spread`; its targets are in the singular field `SpreadTarget`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Spread {
    pub attribute: Option<String>,
    pub weight: Option<i64>,
    pub spread_target: Option<Vec<SpreadTarget>>,
}

/// Nomad's `api.SpreadTarget`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SpreadTarget {
    pub value: Option<String>,
    pub percent: Option<i64>,
}

/// Nomad's `api.RestartPolicy`; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub interval: Option<i64>,
    pub attempts: Option<i64>,
    pub delay: Option<i64>,
    pub mode: Option<String>,
    /// Templates are not supported, so this is accepted and ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render_templates: Option<Value>,
}

/// Nomad's `api.ReschedulePolicy`; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReschedulePolicy {
    pub attempts: Option<i64>,
    pub interval: Option<i64>,
    pub delay: Option<i64>,
    pub delay_function: Option<String>,
    pub max_delay: Option<i64>,
    pub unlimited: Option<bool>,
}

/// Nomad's `api.UpdateStrategy`; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateStrategy {
    pub stagger: Option<i64>,
    pub max_parallel: Option<i64>,
    pub health_check: Option<String>,
    pub min_healthy_time: Option<i64>,
    pub healthy_deadline: Option<i64>,
    pub progress_deadline: Option<i64>,
    pub canary: Option<i64>,
    pub auto_revert: Option<bool>,
    pub auto_promote: Option<bool>,
}

/// Nomad's `api.MigrateStrategy`; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MigrateStrategy {
    pub max_parallel: Option<i64>,
    pub health_check: Option<String>,
    pub min_healthy_time: Option<i64>,
    pub healthy_deadline: Option<i64>,
}

/// Nomad's `api.EphemeralDisk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EphemeralDisk {
    #[serde(rename = "Sticky")]
    pub sticky: Option<bool>,
    #[serde(rename = "Migrate")]
    pub migrate: Option<bool>,
    #[serde(rename = "SizeMB")]
    pub size_mb: Option<i64>,
}
