//! Task drivers: one synchronous [`Driver`] trait and its implementations.
//!
//! The client runs every task on its own OS thread, so the trait blocks
//! (`wait` returns when the task exits) and carries no async runtime; the
//! docker driver keeps its tokio runtime to itself.
//!
//! - [`raw_exec::RawExecDriver`]: a plain process, no isolation.
//! - [`exec::ExecDriver`]: a process in its own PID and mount namespace,
//!   inside cgroups limiting memory and CPU shares, as a configured user.
//! - [`docker::DockerDriver`]: a container through the Docker Engine API.
//!
//! `raw_exec` and `exec` built `with_executor` start each task under
//! [`executor`], a small supervisor process that records the task's exit
//! status, so a task re-attached after an agent restart reports it.
//!
//! A task starts from a [`TaskSpec`] and is known afterwards only by its
//! [`TaskHandle`], which serializes: the client stores it, and after an agent
//! restart a fresh driver re-attaches with [`Driver::recover`].
//!
//! ```no_run
//! use std::time::Duration;
//! use caravan::client::driver::{Driver, raw_exec::RawExecDriver};
//! # fn spec() -> caravan::client::driver::TaskSpec { unimplemented!() }
//! let driver = RawExecDriver::new();
//! let handle = driver.start(&spec()).unwrap();
//! let exit = driver.wait(&handle).unwrap();
//! assert_eq!(exit.exit_code, 0);
//! driver.destroy(&handle).unwrap();
//! ```

mod bpf;
pub mod device_cgroup;
pub mod docker;
pub mod exec;
pub mod executor;
pub mod logs;
mod process;
pub mod raw_exec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use caravan_engine::model::{AssignedDevice, ConfigValue};
use serde::{Deserialize, Serialize};

pub use logs::LogConfig;

/// Errors at the driver boundary. Every one carries a message fit for a
/// task event ("Driver Failure", "Failed Validation").
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The task's `config { }` block is wrong: an unknown key, a missing
    /// required key, a value of the wrong type.
    #[error("invalid driver config: {0}")]
    InvalidConfig(String),
    /// The driver cannot run tasks on this machine (no Docker engine, no
    /// namespaces, not root).
    #[error("driver unavailable: {0}")]
    Unavailable(String),
    /// The task could not be started (command not found, image missing).
    #[error("failed to start task: {0}")]
    Start(String),
    /// The task a handle names no longer exists.
    #[error("task not found: {0}")]
    TaskGone(String),
    /// The handle belongs to another driver or is malformed.
    #[error("invalid task handle: {0}")]
    InvalidHandle(String),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The Docker engine refused a request.
    #[error("docker: {0}")]
    Docker(String),
}

impl DriverError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> DriverError {
        DriverError::Io { context: context.into(), source }
    }
}

/// What a driver reports about itself to the node fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriverFingerprint {
    /// The driver can be used on this machine at all.
    pub detected: bool,
    /// The driver works right now (Docker answers, cgroups are writable).
    pub healthy: bool,
    /// Why the driver is unhealthy or undetected; empty when healthy.
    pub health_description: String,
    pub version: Option<String>,
    /// Node attributes with Nomad's names (`driver.docker`,
    /// `driver.docker.version`, `driver.raw_exec`, ...).
    pub attributes: BTreeMap<String, String>,
}

/// Resources a task asked for, as the scheduler granted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResources {
    /// CPU in MHz; drivers turn it into CPU shares (1 MHz = 1 share, as Nomad).
    pub cpu_mhz: u32,
    /// Hard memory limit in MB.
    pub memory_mb: u32,
}

/// The directories of one task inside its allocation, Nomad's layout:
/// `<alloc>/alloc` (shared by the group's tasks, with `logs/` inside),
/// `<alloc>/<task>/local` and `<alloc>/<task>/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDirs {
    /// `<alloc>/<task>`: the task's working directory.
    pub task_dir: PathBuf,
    /// `<alloc>/alloc`, mounted at `/alloc` in containers.
    pub alloc_dir: PathBuf,
    /// `<alloc>/<task>/local`, mounted at `/local`.
    pub local_dir: PathBuf,
    /// `<alloc>/<task>/secrets`, mounted at `/secrets`.
    pub secrets_dir: PathBuf,
    /// `<alloc>/alloc/logs`: `<task>.stdout.N` and `<task>.stderr.N`.
    pub log_dir: PathBuf,
}

impl TaskDirs {
    /// The paths of `task` under the allocation directory `alloc_root`.
    pub fn new(alloc_root: &Path, task: &str) -> TaskDirs {
        let alloc_dir = alloc_root.join("alloc");
        let task_dir = alloc_root.join(task);
        TaskDirs {
            log_dir: alloc_dir.join("logs"),
            local_dir: task_dir.join("local"),
            secrets_dir: task_dir.join("secrets"),
            task_dir,
            alloc_dir,
        }
    }

    /// Creates every directory (idempotent).
    pub fn create(&self) -> Result<(), DriverError> {
        for dir in [&self.task_dir, &self.alloc_dir, &self.local_dir, &self.secrets_dir, &self.log_dir] {
            std::fs::create_dir_all(dir).map_err(|e| DriverError::io(format!("create {}", dir.display()), e))?;
        }
        Ok(())
    }
}

/// One port of the allocation: `label` as the jobspec names it, the host
/// port the scheduler assigned, the port inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub label: String,
    pub host_port: u16,
    pub container_port: u16,
}

/// Everything a driver needs to start one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub alloc_id: String,
    pub task_name: String,
    /// The task's `config { }` block.
    pub config: ConfigValue,
    /// The full environment (`NOMAD_*` and the task's `env { }`), built by
    /// the alloc runner.
    pub env: BTreeMap<String, String>,
    /// Device environment (`CUDA_VISIBLE_DEVICES`, ...) from the gpu crate;
    /// merged over `env`.
    pub device_env: BTreeMap<String, String>,
    /// The device instances the scheduler assigned this task (GPUs):
    /// `docker` asks for exactly these in a `DeviceRequest`; `exec` hides
    /// every other GPU's device node from the task.
    pub devices: Vec<AssignedDevice>,
    /// `user = "..."`; `exec` defaults to `nobody`, `raw_exec` runs as the
    /// agent, `docker` as the image says.
    pub user: Option<String>,
    pub resources: TaskResources,
    pub dirs: TaskDirs,
    pub ports: Vec<PortMapping>,
    pub logs: LogConfig,
}

impl TaskSpec {
    /// `env` with `device_env` over it: what the task sees.
    pub fn full_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.extend(self.device_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// How to find a started task again, in this agent or the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHandle {
    /// The driver's name (`raw_exec`, `exec`, `docker`).
    pub driver: String,
    pub alloc_id: String,
    pub task_name: String,
    pub log_dir: PathBuf,
    pub logs: LogConfig,
    pub state: HandleState,
}

/// The driver-specific part of a [`TaskHandle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandleState {
    /// A process: its pid and its start time in clock ticks since boot
    /// (field 22 of `/proc/<pid>/stat`), so a recycled pid is never mistaken
    /// for the task. `cgroups` are the directories the exec driver made.
    /// `executor`: the task's supervisor, which records its exit status
    /// (absent for a task started directly, or by an older agent).
    Process {
        pid: i32,
        start_ticks: u64,
        cgroups: Vec<PathBuf>,
        #[serde(default)]
        executor: Option<Box<executor::ExecutorHandle>>,
    },
    /// A Docker container. `log_cursor`: the file where the driver keeps
    /// the Docker timestamp of the last log line copied, so a re-attaching
    /// agent fetches what the container wrote while no agent ran (absent in
    /// handles of older agents).
    Container {
        id: String,
        #[serde(default)]
        log_cursor: Option<PathBuf>,
    },
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitResult {
    pub exit_code: i32,
    /// The signal that killed the task, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended the task.
    pub oom_killed: bool,
    /// The driver lost track of the task; the exit status is unknown.
    pub error: Option<String>,
}

impl ExitResult {
    /// Exit code 0, no signal, no error.
    pub fn successful(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none() && !self.oom_killed && self.error.is_none()
    }
}

/// A task driver. Implementations are shared between task-runner threads.
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// The name jobspecs use in `driver = "..."`.
    fn name(&self) -> &'static str;

    /// Detects the driver and its health; cheap enough to run periodically.
    fn fingerprint(&self) -> DriverFingerprint;

    /// Checks a task's `config { }` block without starting anything.
    /// Unknown keys are refused, naming the key.
    fn validate_config(&self, config: &ConfigValue) -> Result<(), DriverError>;

    /// Starts the task; returns once it runs.
    fn start(&self, spec: &TaskSpec) -> Result<TaskHandle, DriverError>;

    /// Blocks until the task exits.
    fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError>;

    /// Sends `signal` (a Unix signal number) to the task.
    fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<(), DriverError>;

    /// Sends SIGTERM, then SIGKILL once `kill_timeout` has passed; returns
    /// when the task is gone. Stopping a task that already exited is fine.
    fn stop(&self, handle: &TaskHandle, kill_timeout: Duration) -> Result<(), DriverError>;

    /// Re-attaches to a task started by an earlier driver (an agent
    /// restart): resumes log capture. [`DriverError::TaskGone`] when the
    /// task no longer runs.
    fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError>;

    /// Kills the task if it still runs and frees what the driver made for it
    /// (cgroups, the container). Logs stay.
    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError>;
}

/// Reads a driver `config { }` block: refuses keys outside `allowed`, then
/// hands out typed values.
#[derive(Debug)]
pub(crate) struct ConfigReader<'a> {
    map: Option<&'a BTreeMap<std::sync::Arc<str>, ConfigValue>>,
}

impl<'a> ConfigReader<'a> {
    pub(crate) fn new(config: &'a ConfigValue, allowed: &[&str]) -> Result<ConfigReader<'a>, DriverError> {
        let map = match config {
            ConfigValue::Null => None,
            ConfigValue::Map(map) => Some(map),
            _ => return Err(DriverError::InvalidConfig("config must be a block of key = value".into())),
        };
        if let Some(map) = map
            && let Some(key) = map.keys().find(|key| !allowed.contains(&key.as_ref()))
        {
            return Err(DriverError::InvalidConfig(format!("unknown key {key:?} (allowed: {})", allowed.join(", "))));
        }
        Ok(ConfigReader { map })
    }

    fn get(&self, key: &str) -> Option<&'a ConfigValue> {
        self.map.and_then(|map| map.get(key)).filter(|value| !matches!(value, ConfigValue::Null))
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, DriverError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => scalar_string(value)
                .map(Some)
                .ok_or_else(|| DriverError::InvalidConfig(format!("{key} must be a string"))),
        }
    }

    pub(crate) fn required_string(&self, key: &str) -> Result<String, DriverError> {
        match self.string(key)? {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(DriverError::InvalidConfig(format!("missing required key {key:?}"))),
        }
    }

    /// A list of strings; numbers and booleans are turned into strings, as
    /// Nomad does for `args`.
    pub(crate) fn string_list(&self, key: &str) -> Result<Vec<String>, DriverError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(ConfigValue::List(items)) => items
                .iter()
                .map(|item| {
                    scalar_string(item)
                        .ok_or_else(|| DriverError::InvalidConfig(format!("{key} must be a list of strings")))
                })
                .collect(),
            Some(_) => Err(DriverError::InvalidConfig(format!("{key} must be a list of strings"))),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<bool, DriverError> {
        match self.get(key) {
            None => Ok(false),
            Some(ConfigValue::Bool(value)) => Ok(*value),
            Some(_) => Err(DriverError::InvalidConfig(format!("{key} must be true or false"))),
        }
    }

    /// A block of `key = "value"` (docker `labels`); HCL may give it as a
    /// list of one block.
    pub(crate) fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, DriverError> {
        let invalid = || DriverError::InvalidConfig(format!("{key} must be a block of key = \"value\""));
        let map = match self.get(key) {
            None => return Ok(BTreeMap::new()),
            Some(ConfigValue::Map(map)) => map,
            Some(ConfigValue::List(items)) if items.len() == 1 => match &items[0] {
                ConfigValue::Map(map) => map,
                _ => return Err(invalid()),
            },
            Some(_) => return Err(invalid()),
        };
        map.iter().map(|(k, v)| Ok((k.to_string(), scalar_string(v).ok_or_else(invalid)?))).collect()
    }
}

fn scalar_string(value: &ConfigValue) -> Option<String> {
    match value {
        ConfigValue::String(s) => Some(s.to_string()),
        ConfigValue::Int(i) => Some(i.to_string()),
        ConfigValue::Float(f) => Some(f.to_string()),
        ConfigValue::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The uid, gid and home of a local user, read from `/etc/passwd` (no NSS:
/// tasks run as local system users such as `nobody`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn lookup_user(name: &str) -> Result<LocalUser, DriverError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| DriverError::io("read /etc/passwd", e))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let parse = |field: &str| field.parse::<u32>().ok();
            if let (Some(uid), Some(gid)) = (parse(fields[2]), parse(fields[3])) {
                return Ok(LocalUser { uid, gid });
            }
        }
    }
    Err(DriverError::Start(format!("user {name:?} not found in /etc/passwd")))
}
