use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{Affinity, ConfigValue, Constraint, PortRequest, SECOND_NS, Spread, TaskResources, TimeNs};
use crate::ids::JobKey;
use crate::model::rkyv_with::ArcStr;
use rkyv::with::{Map, MapKV};

/// Which scheduler handles a job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum JobType {
    Service,
    Batch,
    System,
    SysBatch,
}

impl JobType {
    pub const ALL: [JobType; 4] = [JobType::Service, JobType::Batch, JobType::System, JobType::SysBatch];

    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
            JobType::System => "system",
            JobType::SysBatch => "sysbatch",
        }
    }

    pub fn parse(s: &str) -> Option<JobType> {
        JobType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Batch-like jobs run to completion: a successful allocation is not replaced.
    pub fn is_batch_like(self) -> bool {
        matches!(self, JobType::Batch | JobType::SysBatch)
    }

    /// System-like jobs run one allocation per task group on every eligible node.
    pub fn is_system_like(self) -> bool {
        matches!(self, JobType::System | JobType::SysBatch)
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum JobStatus {
    Pending,
    Running,
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Dead => "dead",
        }
    }
}

/// `restart { attempts interval delay mode }`, applied by the client.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RestartPolicy {
    pub attempts: u32,
    pub interval_ns: i64,
    pub delay_ns: i64,
    pub mode: RestartMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RestartMode {
    Fail,
    Delay,
}

impl RestartPolicy {
    /// Nomad's defaults per job type (structs.NewRestartPolicy).
    pub fn default_for(job_type: JobType) -> RestartPolicy {
        match job_type {
            JobType::Service | JobType::System => RestartPolicy {
                attempts: 2,
                interval_ns: 30 * 60 * SECOND_NS,
                delay_ns: 15 * SECOND_NS,
                mode: RestartMode::Fail,
            },
            JobType::Batch | JobType::SysBatch => RestartPolicy {
                attempts: 3,
                interval_ns: 24 * 3600 * SECOND_NS,
                delay_ns: 15 * SECOND_NS,
                mode: RestartMode::Fail,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DelayFunction {
    Constant,
    Exponential,
    Fibonacci,
}

impl DelayFunction {
    pub fn parse(s: &str) -> Option<DelayFunction> {
        match s {
            "constant" => Some(DelayFunction::Constant),
            "exponential" => Some(DelayFunction::Exponential),
            "fibonacci" => Some(DelayFunction::Fibonacci),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DelayFunction::Constant => "constant",
            DelayFunction::Exponential => "exponential",
            DelayFunction::Fibonacci => "fibonacci",
        }
    }
}

/// `reschedule { ... }`: how the servers replace a failed allocation.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ReschedulePolicy {
    /// Attempts allowed within `interval_ns` (ignored when `unlimited`).
    pub attempts: u32,
    pub interval_ns: i64,
    pub delay_ns: i64,
    pub delay_function: DelayFunction,
    pub max_delay_ns: i64,
    pub unlimited: bool,
}

impl ReschedulePolicy {
    /// Nomad's defaults: service reschedules forever with exponential backoff,
    /// batch once a day; system jobs are never rescheduled.
    pub fn default_for(job_type: JobType) -> Option<ReschedulePolicy> {
        match job_type {
            JobType::Service => Some(ReschedulePolicy {
                attempts: 0,
                interval_ns: 0,
                delay_ns: 30 * SECOND_NS,
                delay_function: DelayFunction::Exponential,
                max_delay_ns: 3600 * SECOND_NS,
                unlimited: true,
            }),
            JobType::Batch => Some(ReschedulePolicy {
                attempts: 1,
                interval_ns: 24 * 3600 * SECOND_NS,
                delay_ns: 5 * SECOND_NS,
                delay_function: DelayFunction::Constant,
                max_delay_ns: 0,
                unlimited: false,
            }),
            JobType::System | JobType::SysBatch => None,
        }
    }
}

/// `update { ... }`: carried and validated; rolling deployments build on it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct UpdateStrategy {
    pub stagger_ns: i64,
    pub max_parallel: u32,
    #[rkyv(with = ArcStr)]
    pub health_check: Arc<str>,
    pub min_healthy_time_ns: i64,
    pub healthy_deadline_ns: i64,
    pub progress_deadline_ns: i64,
    pub auto_revert: bool,
    pub auto_promote: bool,
    pub canary: u32,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            stagger_ns: 30 * SECOND_NS,
            max_parallel: 1,
            health_check: "checks".into(),
            min_healthy_time_ns: 10 * SECOND_NS,
            healthy_deadline_ns: 5 * 60 * SECOND_NS,
            progress_deadline_ns: 10 * 60 * SECOND_NS,
            auto_revert: false,
            auto_promote: false,
            canary: 0,
        }
    }
}

/// `migrate { ... }`: how allocations leave a draining node.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MigrateStrategy {
    pub max_parallel: u32,
    #[rkyv(with = ArcStr)]
    pub health_check: Arc<str>,
    pub min_healthy_time_ns: i64,
    pub healthy_deadline_ns: i64,
}

impl Default for MigrateStrategy {
    fn default() -> Self {
        MigrateStrategy {
            max_parallel: 1,
            health_check: "checks".into(),
            min_healthy_time_ns: 10 * SECOND_NS,
            healthy_deadline_ns: 5 * 60 * SECOND_NS,
        }
    }
}

/// What a dispatch must carry as its payload (`parameterized { payload }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum PayloadMode {
    Optional,
    Required,
    Forbidden,
}

impl PayloadMode {
    pub fn parse(s: &str) -> Option<PayloadMode> {
        match s {
            "" | "optional" => Some(PayloadMode::Optional),
            "required" => Some(PayloadMode::Required),
            "forbidden" => Some(PayloadMode::Forbidden),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadMode::Optional => "optional",
            PayloadMode::Required => "required",
            PayloadMode::Forbidden => "forbidden",
        }
    }
}

/// `parameterized { ... }`: the job is a template that runs only as the
/// children `job dispatch` creates (Nomad's `ParameterizedJobConfig`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Parameterized {
    pub payload: PayloadMode,
    #[rkyv(with = Map<ArcStr>)]
    pub meta_required: Vec<Arc<str>>,
    #[rkyv(with = Map<ArcStr>)]
    pub meta_optional: Vec<Arc<str>>,
}

/// `periodic { ... }`: the job is a template the leader launches as a child
/// job at each time its cron expressions name (Nomad's `PeriodicConfig`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Periodic {
    /// Launches happen only while enabled (Nomad's default: true).
    pub enabled: bool,
    /// Cron expressions (`cron = "..."` is one, `crons = [...]` several);
    /// the next launch is the earliest next time of any of them.
    #[rkyv(with = Map<ArcStr>)]
    pub specs: Vec<Arc<str>>,
    /// Whether `specs` came from the legacy single `cron` (`Spec` in the
    /// API): rendered back the way it was submitted.
    pub legacy_spec: bool,
    /// Skip a launch while a child launched earlier is still running.
    pub prohibit_overlap: bool,
    /// IANA time zone the expressions are evaluated in (default `UTC`).
    #[rkyv(with = ArcStr)]
    pub time_zone: Arc<str>,
}

impl Periodic {
    /// A periodic block with Nomad's defaults for the given expressions.
    pub fn cron(specs: &[&str]) -> Periodic {
        Periodic {
            enabled: true,
            specs: specs.iter().map(|s| Arc::from(*s)).collect(),
            legacy_spec: false,
            prohibit_overlap: false,
            time_zone: "UTC".into(),
        }
    }
}

/// The suffix between a periodic job's id and a child's launch time
/// (Nomad's `PeriodicLaunchSuffix`): children are `<parent>/periodic-<unix s>`.
pub const PERIODIC_LAUNCH_SUFFIX: &str = "/periodic-";

/// The last launch of a periodic job (Nomad's `PeriodicLaunch` table),
/// kept through raft so a new leader neither repeats nor re-launches a
/// time the previous one already launched. Written when the job is first
/// registered (then it holds that time: nothing before it is missed) and
/// with every launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeriodicLaunch {
    pub launch_ns: TimeNs,
    pub create_index: u64,
    pub modify_index: u64,
}

/// When a task with a `lifecycle` block runs relative to its group's main
/// tasks (Nomad's `TaskLifecycleConfig.Hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum LifecycleHook {
    /// Before the main tasks: they start once it completed successfully
    /// (or, for a sidecar, once it runs).
    Prestart,
    /// Once every main task is running.
    Poststart,
    /// Once every other task is dead, the allocation stopped or not.
    Poststop,
}

impl LifecycleHook {
    pub const ALL: [LifecycleHook; 3] = [LifecycleHook::Prestart, LifecycleHook::Poststart, LifecycleHook::Poststop];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleHook::Prestart => "prestart",
            LifecycleHook::Poststart => "poststart",
            LifecycleHook::Poststop => "poststop",
        }
    }

    pub fn parse(s: &str) -> Option<LifecycleHook> {
        LifecycleHook::ALL.into_iter().find(|hook| hook.as_str() == s)
    }
}

/// `lifecycle { hook = ..., sidecar = ... }` (Nomad's `TaskLifecycleConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TaskLifecycle {
    pub hook: LifecycleHook,
    /// Keeps running beside the main tasks (restarted even after a
    /// successful exit) and is killed when they are done. Meaningless for
    /// `poststop`.
    pub sidecar: bool,
}

/// One process or container.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Task {
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub driver: Arc<str>,
    #[rkyv(with = Map<ArcStr>)]
    pub user: Option<Arc<str>>,
    pub config: ConfigValue,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub env: BTreeMap<Arc<str>, Arc<str>>,
    pub resources: TaskResources,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub meta: BTreeMap<Arc<str>, Arc<str>>,
    pub kill_timeout_ns: i64,
    pub leader: bool,
    /// `None` for a main task.
    pub lifecycle: Option<TaskLifecycle>,
    /// `dispatch_payload { file }`: where, relative to the task's `local/`
    /// directory, the client writes a dispatched job's payload. Validated
    /// by the API to stay inside `local/`.
    #[rkyv(with = Map<ArcStr>)]
    pub dispatch_payload_file: Option<Arc<str>>,
}

impl Task {
    /// A task with Nomad's canonical defaults (100 MHz, 300 MB).
    pub fn new(name: &str, driver: &str) -> Task {
        Task {
            name: name.into(),
            driver: driver.into(),
            user: None,
            config: ConfigValue::Null,
            env: BTreeMap::new(),
            resources: TaskResources { cpu_mhz: 100, memory_mb: 300, ..Default::default() },
            constraints: Vec::new(),
            affinities: Vec::new(),
            meta: BTreeMap::new(),
            kill_timeout_ns: 5 * SECOND_NS,
            leader: false,
            lifecycle: None,
            dispatch_payload_file: None,
        }
    }

    /// A task without a lifecycle hook: the group's reason to exist.
    pub fn is_main(&self) -> bool {
        self.lifecycle.is_none()
    }
}

/// Why `file`, a dispatch payload's path relative to the task's `local/`
/// directory, is refused: it is absolute, climbs out with `..`, names the
/// directory itself, or holds a NUL. `None`: it stays inside. The API
/// refuses such a job; the client checks again before it writes.
pub fn dispatch_payload_file_problem(file: &str) -> Option<&'static str> {
    if file.contains('\0') {
        return Some("must not contain NUL");
    }
    if file.starts_with('/') {
        return Some("must be a path relative to the task's local/ directory, not absolute");
    }
    let mut depth: usize = 0;
    for part in file.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return Some("escapes the task's local/ directory"),
            },
            _ => depth += 1,
        }
    }
    if depth == 0 || file.ends_with('/') {
        return Some("must name a file inside the task's local/ directory");
    }
    None
}

/// A set of tasks placed together on one node, `count` times.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TaskGroup {
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    pub count: u32,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub spreads: Vec<Spread>,
    pub tasks: Vec<Task>,
    pub restart_policy: RestartPolicy,
    pub reschedule_policy: Option<ReschedulePolicy>,
    pub update: Option<UpdateStrategy>,
    pub migrate: Option<MigrateStrategy>,
    pub ephemeral_disk_mb: u32,
    pub ports: Vec<PortRequest>,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub meta: BTreeMap<Arc<str>, Arc<str>>,
    /// Place all `count` allocations in one plan, or none of them.
    pub gang: bool,
    /// For gang groups: prefer nodes sharing this attribute's value (for
    /// example `${meta.rack}`) with the group's first placement.
    #[rkyv(with = Map<ArcStr>)]
    pub gang_topology: Option<Arc<str>>,
    /// How long an allocation on a disconnected node stays before it is replaced.
    pub max_client_disconnect_ns: Option<i64>,
}

impl TaskGroup {
    /// A group with Nomad's canonical defaults for the job type.
    pub fn new(name: &str, count: u32, job_type: JobType, tasks: Vec<Task>) -> TaskGroup {
        TaskGroup {
            name: name.into(),
            count,
            constraints: Vec::new(),
            affinities: Vec::new(),
            spreads: Vec::new(),
            tasks,
            restart_policy: RestartPolicy::default_for(job_type),
            reschedule_policy: ReschedulePolicy::default_for(job_type),
            update: None,
            migrate: None,
            ephemeral_disk_mb: 300,
            ports: Vec::new(),
            meta: BTreeMap::new(),
            gang: false,
            gang_topology: None,
            max_client_disconnect_ns: None,
        }
    }
}

/// A job: what the user asked to run.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Job {
    #[rkyv(with = ArcStr)]
    pub namespace: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub id: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub name: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub region: Arc<str>,
    pub job_type: JobType,
    /// 1..=100, default 50.
    pub priority: u8,
    pub all_at_once: bool,
    /// Every task group of the job placed together, all or nothing (the
    /// job-level form of `TaskGroup::gang`).
    pub gang: bool,
    /// Datacenter names; `*` globs allowed.
    #[rkyv(with = Map<ArcStr>)]
    pub datacenters: Vec<Arc<str>>,
    #[rkyv(with = ArcStr)]
    pub node_pool: Arc<str>,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub spreads: Vec<Spread>,
    pub task_groups: Vec<TaskGroup>,
    pub update: Option<UpdateStrategy>,
    #[rkyv(with = MapKV<ArcStr, ArcStr>)]
    pub meta: BTreeMap<Arc<str>, Arc<str>>,
    /// Stopped by the user: the scheduler stops all of its allocations.
    pub stop: bool,
    /// A parameterized job: never scheduled itself, only its dispatched children.
    pub parameterized: Option<Parameterized>,
    /// A periodic job: never scheduled itself; the leader launches children.
    pub periodic: Option<Periodic>,
    /// A dispatched or launched child's parent job id.
    #[rkyv(with = Map<ArcStr>)]
    pub parent_id: Option<Arc<str>>,
    /// A dispatched child's payload (bounded by the dispatch endpoint).
    pub payload: Vec<u8>,
    pub status: JobStatus,
    pub stable: bool,
    pub version: u64,
    pub submit_time_ns: TimeNs,
    pub create_index: u64,
    pub modify_index: u64,
    /// Index of the last change to the job's specification (not its status).
    pub job_modify_index: u64,
}

impl Job {
    /// A job with Nomad's canonical defaults.
    pub fn new(id: &str, job_type: JobType, task_groups: Vec<TaskGroup>) -> Job {
        Job {
            namespace: "default".into(),
            id: id.into(),
            name: id.into(),
            region: "global".into(),
            job_type,
            priority: 50,
            all_at_once: false,
            gang: false,
            datacenters: vec!["*".into()],
            node_pool: "default".into(),
            constraints: Vec::new(),
            affinities: Vec::new(),
            spreads: Vec::new(),
            task_groups,
            update: None,
            meta: BTreeMap::new(),
            stop: false,
            parameterized: None,
            periodic: None,
            parent_id: None,
            payload: Vec::new(),
            status: JobStatus::Pending,
            stable: false,
            version: 0,
            submit_time_ns: 0,
            create_index: 0,
            modify_index: 0,
            job_modify_index: 0,
        }
    }

    pub fn key(&self) -> JobKey {
        JobKey { namespace: self.namespace.clone(), id: self.id.clone() }
    }

    /// A parameterized job itself (not one of its dispatched children): a
    /// template the scheduler never places.
    pub fn is_parameterized_parent(&self) -> bool {
        self.parameterized.is_some() && self.parent_id.is_none()
    }

    /// A child dispatched from a parameterized job (Nomad's `Dispatched`):
    /// it keeps its parent's `parameterized` block.
    pub fn is_dispatched(&self) -> bool {
        self.parameterized.is_some() && self.parent_id.is_some()
    }

    /// A periodic job itself: registered, or dispatched from a job both
    /// periodic and parameterized (its launched children carry no
    /// `periodic`).
    pub fn is_periodic_parent(&self) -> bool {
        self.periodic.is_some() && (self.parent_id.is_none() || self.is_dispatched())
    }

    /// A periodic job the leader launches children of now: enabled, not
    /// stopped, and not a parameterized template (Nomad's
    /// `IsPeriodicActive`: a job both periodic and parameterized launches
    /// nothing itself; each child dispatched from it is periodic).
    pub fn is_periodic_active(&self) -> bool {
        self.is_periodic_parent()
            && !self.is_parameterized_parent()
            && !self.stop
            && self.periodic.as_ref().is_some_and(|p| p.enabled)
    }

    /// A parameterized or periodic job: a template that only runs as its
    /// children, so it gets no eval and the scheduler never places it.
    pub fn is_template(&self) -> bool {
        self.is_parameterized_parent() || self.is_periodic_parent()
    }

    pub fn group(&self, name: &str) -> Option<&TaskGroup> {
        self.task_groups.iter().find(|g| &*g.name == name)
    }

    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.task_groups.iter().position(|g| &*g.name == name)
    }

    /// The group's update strategy (its own, else the job's) when it rolls
    /// out under a deployment: service jobs only, and `max_parallel = 0`
    /// turns deployments off, as in Nomad.
    pub fn rollout_strategy<'a>(&'a self, group: &'a TaskGroup) -> Option<&'a UpdateStrategy> {
        if self.job_type != JobType::Service {
            return None;
        }
        group.update.as_ref().or(self.update.as_ref()).filter(|u| u.max_parallel > 0)
    }

    /// Whether the job's specification differs in a way that matters to the
    /// scheduler (everything but the bookkeeping fields).
    pub fn spec_changed(&self, other: &Job) -> bool {
        let mut a = self.clone();
        a.version = other.version;
        a.status = other.status;
        a.stable = other.stable;
        a.submit_time_ns = other.submit_time_ns;
        a.create_index = other.create_index;
        a.modify_index = other.modify_index;
        a.job_modify_index = other.job_modify_index;
        a != *other
    }
}

/// Scaling events kept per task group (Nomad's `JobTrackedScalingEvents`):
/// enough to see an autoscaler's recent decisions; older ones are dropped.
pub const SCALING_EVENTS_KEPT: usize = 20;

/// The longest `Message` or `Meta` (as JSON text) a scaling event records:
/// each of the 20 kept events of every group travels in every snapshot,
/// so one request may not make that history large.
pub const SCALING_EVENT_TEXT_BYTES_MAX: usize = 16 * 1024;

/// One scaling request as recorded (Nomad's `ScalingEvent`): the count it
/// set (none for an event that only reports, such as an autoscaler's
/// error), the count before, and the eval it created.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ScalingEvent {
    pub time_ns: TimeNs,
    pub count: Option<u32>,
    pub previous_count: u32,
    #[rkyv(with = ArcStr)]
    pub message: Arc<str>,
    pub error: bool,
    /// `Meta` (Nomad's `map[string]any`) as the JSON text of an object, or
    /// empty for none: the engine carries it, `net` reads and writes it.
    #[rkyv(with = ArcStr)]
    pub meta_json: Arc<str>,
    pub eval_id: Option<crate::ids::EvalId>,
    /// The index that recorded it (set by the FSM).
    pub create_index: u64,
}

/// One task group's scaling events, newest first.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupScalingEvents {
    #[rkyv(with = ArcStr)]
    pub group: Arc<str>,
    pub events: Vec<ScalingEvent>,
}

/// A job's scaling events (Nomad's `JobScalingEvents`): per task group, in
/// group name order, each at most [`SCALING_EVENTS_KEPT`], newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobScalingEvents {
    pub groups: Vec<GroupScalingEvents>,
    pub modify_index: u64,
}

impl JobScalingEvents {
    /// The group's events, newest first (empty when it has none).
    pub fn group(&self, name: &str) -> &[ScalingEvent] {
        self.groups.iter().find(|g| &*g.group == name).map_or(&[], |g| &g.events)
    }

    /// Record `event` as the group's newest, dropping the oldest beyond
    /// [`SCALING_EVENTS_KEPT`].
    pub fn push(&mut self, group: &str, event: ScalingEvent) {
        let at = match self.groups.binary_search_by(|g| (*g.group).cmp(group)) {
            Ok(at) => at,
            Err(at) => {
                self.groups.insert(at, GroupScalingEvents { group: group.into(), events: Vec::new() });
                at
            }
        };
        let events = &mut self.groups[at].events;
        events.insert(0, event);
        events.truncate(SCALING_EVENTS_KEPT);
        assert!(events.len() <= SCALING_EVENTS_KEPT);
    }
}
