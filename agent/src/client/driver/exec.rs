//! `exec`: the task in its own PID and mount namespace (a private `/proc`),
//! inside cgroups that limit its memory and weigh its CPU, as a configured
//! user (`nobody` unless the task says otherwise, as Nomad).
//!
//! The process tree is `sh` (joins the cgroups, then execs) → `unshare
//! --pid --fork --mount-proc --kill-child` → the task as PID 1 of its
//! namespace. Joining the cgroups before `exec` means nothing of the task
//! ever runs outside them; `--kill-child` and the PID namespace mean nothing
//! of it outlives a kill. The agent must run as root.
//!
//! Cgroups: v2 when `/sys/fs/cgroup` is a cgroup2 mount (`memory.max`,
//! `cpu.weight`), v1 otherwise (`memory.limit_in_bytes`, `cpu.shares`), each
//! task in `caravan/<alloc id>-<task>`.
//!
//! Devices: the task's cgroup v2 directory (on a v1 machine with the hybrid
//! layout, one in `/sys/fs/cgroup/unified`, which the task joins too) gets
//! a device program (`device_cgroup.rs`, loaded by `bpf.rs`) allowing only
//! the standard devices and the nodes of the task's assigned GPUs. If the
//! program cannot be loaded or attached, the task does not start: the error
//! names the cause. A pure v1 machine (no cgroup2 mount) gets no device
//! program; other GPUs' nodes are still hidden by bind mounts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use caravan_engine::model::ConfigValue;

use super::device_cgroup::{self, DeviceRule};
use super::executor::{Executor, Launch};
use super::raw_exec::parse_command_config;
use super::{Driver, DriverError, DriverFingerprint, ExitResult, TaskHandle, TaskResources, TaskSpec, process};

/// The driver's name in jobspecs.
pub const EXEC_DRIVER: &str = "exec";
/// Nomad's default user for `exec` tasks.
pub const EXEC_USER_DEFAULT: &str = "nobody";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup2 mount of the hybrid layout (v1 controllers beside it).
const CGROUP_UNIFIED_ROOT: &str = "/sys/fs/cgroup/unified";
/// The cgroup under which every task's cgroup lives.
const CGROUP_PARENT: &str = "caravan";
const UNSHARE: &str = "unshare";
const SHELL: &str = "/bin/sh";
/// Joins every cgroup named before `--` (writes its own pid into each
/// `cgroup.procs`), then execs what follows. Exit 125 if a join fails, so a
/// task never runs unconfined.
const JOIN_CGROUPS_SCRIPT: &str =
    r#"while [ "$#" -gt 0 ] && [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;
/// Hides every device node named before `--` behind `/dev/null` (a bind
/// mount in the task's own mount namespace), then execs what follows. Exit
/// 125 if a mount fails, so a task never sees a GPU it was not given.
const MASK_DEVICES_SCRIPT: &str = r#"while [ "$#" -gt 0 ] && [ "$1" != -- ]; do mount --bind /dev/null "$1" || exit 125; shift; done; shift; exec "$@""#;
/// Where the NVIDIA kernel driver lists each GPU's UUID and device minor,
/// readable without NVML.
const NVIDIA_PROC_GPUS: &str = "/proc/driver/nvidia/gpus";
/// The NVIDIA driver's vendor name in assigned devices.
const VENDOR_NVIDIA: &str = "nvidia";
/// The minor of `/dev/nvidia-modeset`, fixed by the NVIDIA driver.
const NVIDIA_MODESET_MINOR: u32 = 254;
/// The kernel refuses `cpu.shares` below 2.
const CPU_SHARES_MIN: u64 = 2;
/// `cpu.weight` bounds in cgroup v2.
const CPU_WEIGHT_MIN: u64 = 1;
const CPU_WEIGHT_MAX: u64 = 10_000;
/// `cpu.shares` bound in cgroup v1, the top of the shares → weight scale.
const CPU_SHARES_MAX: u64 = 262_144;
/// Bytes per MB of `memory_mb`.
const BYTES_PER_MB: u64 = 1024 * 1024;
/// Removing a cgroup fails while the kernel still counts exiting tasks in it;
/// it takes milliseconds, so retry 50 × 20 ms = 1 s before giving up.
const CGROUP_REMOVE_ATTEMPTS: u32 = 50;
const CGROUP_REMOVE_PAUSE: Duration = Duration::from_millis(20);

/// Which cgroup hierarchy the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupVersion {
    V1,
    V2,
}

fn cgroup_version() -> Option<CgroupVersion> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        Some(CgroupVersion::V2)
    } else if root.join("memory").is_dir() && root.join("cpu").is_dir() {
        Some(CgroupVersion::V1)
    } else {
        None
    }
}

/// The `exec` driver; every task lives in its handle.
#[derive(Debug, Default)]
pub struct ExecDriver {
    executor: Option<Executor>,
}

impl ExecDriver {
    /// Tasks as children of the agent: a task re-attached after an agent
    /// restart has an unknown exit status.
    pub fn new() -> ExecDriver {
        ExecDriver { executor: None }
    }

    /// Tasks under an executor that records their exit status; the
    /// executor stays outside the task's cgroups and namespaces.
    pub fn with_executor(executor: Executor) -> ExecDriver {
        ExecDriver { executor: Some(executor) }
    }

    /// Why the driver cannot run tasks here, or `None` when it can.
    pub fn unavailable_reason() -> Option<String> {
        if !rustix::process::geteuid().is_root() {
            return Some("the exec driver needs the agent to run as root".into());
        }
        if cgroup_version().is_none() {
            return Some(format!("no cgroup v2 or v1 memory and cpu controllers under {CGROUP_ROOT}"));
        }
        if process::resolve_command(UNSHARE, &Default::default()).is_err() {
            return Some("unshare (util-linux) not found in PATH".into());
        }
        if !Path::new("/proc/self/ns/pid").exists() {
            return Some("the kernel has no PID namespaces".into());
        }
        None
    }
}

fn cgroup_name(spec: &TaskSpec) -> String {
    let clean = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect::<String>()
    };
    format!("{}-{}", clean(&spec.alloc_id), clean(&spec.task_name))
}

fn write(path: &Path, value: &str) -> Result<(), DriverError> {
    std::fs::write(path, value).map_err(|e| DriverError::io(format!("write {value:?} to {}", path.display()), e))
}

fn create_dir(path: &Path) -> Result<(), DriverError> {
    std::fs::create_dir_all(path).map_err(|e| DriverError::io(format!("create cgroup {}", path.display()), e))
}

/// Nomad's mapping of v1 shares onto v2 weights (the systemd formula).
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(CPU_SHARES_MIN, CPU_SHARES_MAX);
    (CPU_WEIGHT_MIN + ((shares - CPU_SHARES_MIN) * (CPU_WEIGHT_MAX - 1)) / (CPU_SHARES_MAX - CPU_SHARES_MIN))
        .clamp(CPU_WEIGHT_MIN, CPU_WEIGHT_MAX)
}

/// The task's cgroups: every directory it joins, and among them the cgroup
/// v2 one its device program goes on (`None` on a pure v1 machine).
struct TaskCgroups {
    dirs: Vec<PathBuf>,
    devices: Option<PathBuf>,
}

/// Creates the task's cgroups with its limits.
fn create_cgroups(name: &str, resources: TaskResources) -> Result<TaskCgroups, DriverError> {
    let memory_bytes = u64::from(resources.memory_mb.max(1)) * BYTES_PER_MB;
    let shares = u64::from(resources.cpu_mhz).max(CPU_SHARES_MIN);
    let root = Path::new(CGROUP_ROOT);
    match cgroup_version() {
        Some(CgroupVersion::V2) => {
            // Controllers must be delegated down the tree; enabling an
            // already enabled one is harmless, so errors are left to the
            // limit writes below, which name the file.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu");
            let parent = root.join(CGROUP_PARENT);
            create_dir(&parent)?;
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu");
            let dir = parent.join(name);
            create_dir(&dir)?;
            write(&dir.join("memory.max"), &memory_bytes.to_string())?;
            write(&dir.join("cpu.weight"), &cpu_weight(shares).to_string())?;
            Ok(TaskCgroups { dirs: vec![dir.clone()], devices: Some(dir) })
        }
        Some(CgroupVersion::V1) => {
            let memory = root.join("memory").join(CGROUP_PARENT).join(name);
            create_dir(&memory)?;
            write(&memory.join("memory.limit_in_bytes"), &memory_bytes.to_string())?;
            let cpu = root.join("cpu").join(CGROUP_PARENT).join(name);
            create_dir(&cpu)?;
            write(&cpu.join("cpu.shares"), &shares.min(CPU_SHARES_MAX).to_string())?;
            let mut dirs = vec![memory, cpu];
            let unified = Path::new(CGROUP_UNIFIED_ROOT);
            let devices = if unified.join("cgroup.procs").exists() {
                let dir = unified.join(CGROUP_PARENT).join(name);
                if let Err(err) = create_dir(&dir) {
                    remove_cgroups(&dirs);
                    return Err(err);
                }
                dirs.push(dir.clone());
                Some(dir)
            } else {
                None
            };
            Ok(TaskCgroups { dirs, devices })
        }
        None => Err(DriverError::Unavailable(format!("no usable cgroup hierarchy under {CGROUP_ROOT}"))),
    }
}

/// The minors of the GPU nodes (`/dev/nvidiaN`) to hide from a task that
/// was given the GPUs `assigned` (UUIDs): every node but the assigned GPUs'.
/// `None` when an assigned id is not a whole GPU known to the driver (a MIG
/// instance, whose parent needs NVML to find): nothing is hidden then.
fn gpu_minors_to_hide(
    node_minors: &[u32],
    uuid_minors: &BTreeMap<String, u32>,
    assigned: &[String],
) -> Option<Vec<u32>> {
    let mut allowed = Vec::new();
    for uuid in assigned {
        allowed.push(*uuid_minors.get(uuid)?);
    }
    Some(node_minors.iter().copied().filter(|minor| !allowed.contains(minor)).collect())
}

/// `Device Minor` by `GPU UUID`, from the driver's `/proc` files.
fn nvidia_uuid_minors() -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(NVIDIA_PROC_GPUS) else { return out };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("information")) else { continue };
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name).map(|rest| rest.trim_start_matches(':').trim().to_string()))
        };
        if let (Some(uuid), Some(minor)) = (field("GPU UUID"), field("Device Minor").and_then(|m| m.parse().ok())) {
            out.insert(uuid, minor);
        }
    }
    out
}

/// The device cgroup rules of a task given the NVIDIA instances `assigned`:
/// the standard devices, and for a task with GPUs each assigned GPU's
/// `/dev/nvidiaN` (its minor from `uuid_minors`), `/dev/nvidiactl`,
/// `/dev/nvidia-modeset`, and `/dev/nvidia-uvm` + `nvidia-uvm-tools` when
/// their major (`uvm_major`, dynamic) is known. An assigned id that is not a
/// GPU known here gets no node: the task is denied it rather than given
/// another. Returns the rules and those unknown ids.
fn device_rules(
    assigned: &[String],
    uuid_minors: &BTreeMap<String, u32>,
    uvm_major: Option<u32>,
) -> (Vec<DeviceRule>, Vec<String>) {
    use caravan_gpu::reserve::{NVIDIA_DEVICE_MAJOR, NVIDIACTL_MINOR};
    let mut rules = device_cgroup::standard_rules();
    let mut unknown = Vec::new();
    if assigned.is_empty() {
        return (rules, unknown);
    }
    for id in assigned {
        match uuid_minors.get(id) {
            Some(&minor) => {
                rules.push(DeviceRule::char_rw(format!("/dev/nvidia{minor}"), NVIDIA_DEVICE_MAJOR, Some(minor)))
            }
            None => unknown.push(id.clone()),
        }
    }
    rules.push(DeviceRule::char_rw("/dev/nvidiactl", NVIDIA_DEVICE_MAJOR, Some(NVIDIACTL_MINOR)));
    rules.push(DeviceRule::char_rw("/dev/nvidia-modeset", NVIDIA_DEVICE_MAJOR, Some(NVIDIA_MODESET_MINOR)));
    if let Some(major) = uvm_major {
        rules.push(DeviceRule::char_rw("/dev/nvidia-uvm", major, Some(0)));
        rules.push(DeviceRule::char_rw("/dev/nvidia-uvm-tools", major, Some(1)));
    }
    (rules, unknown)
}

/// The UUIDs of the task's assigned NVIDIA instances.
fn assigned_nvidia_ids(spec: &TaskSpec) -> Vec<String> {
    spec.devices
        .iter()
        .filter(|device| &*device.vendor == VENDOR_NVIDIA)
        .flat_map(|device| device.instance_ids.iter().map(|id| id.to_string()))
        .collect()
}

/// Puts the task's device program on its cgroup v2 directory.
fn confine_devices(spec: &TaskSpec, cgroup: &Path) -> Result<(), DriverError> {
    let assigned = assigned_nvidia_ids(spec);
    let uvm_major = if assigned.is_empty() {
        None
    } else {
        std::fs::read_to_string(caravan_gpu::reserve::PROC_DEVICES_PATH)
            .ok()
            .and_then(|text| caravan_gpu::reserve::character_major(&text, "nvidia-uvm"))
    };
    let uuid_minors = if assigned.is_empty() { BTreeMap::new() } else { nvidia_uuid_minors() };
    let (rules, unknown) = device_rules(&assigned, &uuid_minors, uvm_major);
    if !unknown.is_empty() {
        tracing::warn!(task = %spec.task_name, ?unknown, "assigned GPU instances not in {NVIDIA_PROC_GPUS}; the task is denied their device nodes");
    }
    let program = device_cgroup::program(&rules).map_err(|err| DriverError::Start(err.to_string()))?;
    super::bpf::attach_device_program(cgroup, &program).map_err(|err| {
        DriverError::Start(format!(
            "cannot confine the task to its devices (the cgroup device eBPF program on {} failed: {err}); \
             the exec driver does not run a task with access to every device",
            cgroup.display()
        ))
    })
}

/// The GPU device nodes on this machine (`/dev/nvidiaN`) by minor.
fn gpu_node_minors() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    let mut minors: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("nvidia")?.parse().ok())
        .collect();
    minors.sort_unstable();
    minors
}

/// The GPU nodes a task must not see: all but its assigned GPUs'.
fn gpu_nodes_to_hide(spec: &TaskSpec) -> Vec<PathBuf> {
    let node_minors = gpu_node_minors();
    if node_minors.is_empty() {
        return Vec::new();
    }
    let assigned = assigned_nvidia_ids(spec);
    match gpu_minors_to_hide(&node_minors, &nvidia_uuid_minors(), &assigned) {
        Some(minors) => minors.into_iter().map(|minor| PathBuf::from(format!("/dev/nvidia{minor}"))).collect(),
        None => {
            tracing::warn!(task = %spec.task_name, ?assigned, "assigned GPU instances not in {NVIDIA_PROC_GPUS} (MIG?); no GPU node hidden");
            Vec::new()
        }
    }
}

/// Whether the kernel's OOM killer struck inside the task's cgroups.
fn oom_killed(cgroups: &[PathBuf]) -> bool {
    cgroups.iter().any(|dir| {
        // v2 counts kills in memory.events, v1 in memory.oom_control.
        ["memory.events", "memory.oom_control"].iter().any(|file| {
            std::fs::read_to_string(dir.join(file))
                .map(|text| {
                    text.lines().any(|line| {
                        line.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0)
                    })
                })
                .unwrap_or(false)
        })
    })
}

fn remove_cgroups(cgroups: &[PathBuf]) {
    for dir in cgroups {
        for attempt in 0..CGROUP_REMOVE_ATTEMPTS {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                Err(err) if attempt + 1 == CGROUP_REMOVE_ATTEMPTS => {
                    tracing::warn!(cgroup = %dir.display(), %err, "cannot remove task cgroup");
                }
                Err(_) => std::thread::sleep(CGROUP_REMOVE_PAUSE),
            }
        }
    }
}

/// Gives the task's own directories to its user, and makes the shared
/// `alloc/` directory writable by every task of the group, as Nomad does.
fn prepare_dirs(spec: &TaskSpec, uid: u32, gid: u32) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    spec.dirs.create()?;
    for dir in [&spec.dirs.task_dir, &spec.dirs.local_dir, &spec.dirs.secrets_dir] {
        rustix::fs::chown(dir, Some(rustix::process::Uid::from_raw(uid)), Some(rustix::process::Gid::from_raw(gid)))
            .map_err(|e| DriverError::io(format!("chown {}", dir.display()), e.into()))?;
    }
    std::fs::set_permissions(&spec.dirs.alloc_dir, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| DriverError::io(format!("chmod {}", spec.dirs.alloc_dir.display()), e))
}

impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        EXEC_DRIVER
    }

    fn fingerprint(&self) -> DriverFingerprint {
        match ExecDriver::unavailable_reason() {
            None => DriverFingerprint {
                detected: true,
                healthy: true,
                health_description: String::new(),
                version: None,
                attributes: [("driver.exec".to_string(), "1".to_string())].into_iter().collect(),
            },
            Some(reason) => DriverFingerprint { health_description: reason, ..Default::default() },
        }
    }

    fn validate_config(&self, config: &ConfigValue) -> Result<(), DriverError> {
        parse_command_config(config).map(|_| ())
    }

    fn start(&self, spec: &TaskSpec) -> Result<TaskHandle, DriverError> {
        let config = parse_command_config(&spec.config)?;
        if let Some(reason) = ExecDriver::unavailable_reason() {
            return Err(DriverError::Unavailable(reason));
        }
        let program = process::resolve_command(&config.command, &spec.env)?;
        let user = super::lookup_user(spec.user.as_deref().unwrap_or(EXEC_USER_DEFAULT))?;
        prepare_dirs(spec, user.uid, user.gid)?;
        let TaskCgroups { dirs: cgroups, devices } = create_cgroups(&cgroup_name(spec), spec.resources)?;
        if let Some(dir) = &devices
            && let Err(err) = confine_devices(spec, dir)
        {
            remove_cgroups(&cgroups);
            return Err(err);
        }
        let mut args: Vec<OsString> = vec!["-c".into(), JOIN_CGROUPS_SCRIPT.into(), "caravan-exec".into()];
        args.extend(cgroups.iter().map(|dir| dir.join("cgroup.procs").into_os_string()));
        args.push("--".into());
        // GPUs the task was not given are hidden in a mount namespace of its
        // own, before the user switch (mounting needs root).
        let hidden = gpu_nodes_to_hide(spec);
        if !hidden.is_empty() {
            args.extend(
                [
                    UNSHARE,
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    SHELL,
                    "-c",
                    MASK_DEVICES_SCRIPT,
                    "caravan-mask",
                ]
                .map(OsString::from),
            );
            args.extend(hidden.into_iter().map(PathBuf::into_os_string));
            args.push("--".into());
        }
        args.extend([UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child"].map(OsString::from));
        if user.uid != 0 {
            args.push(format!("--setgid={}", user.gid).into());
            args.push(format!("--setuid={}", user.uid).into());
        }
        args.push("--".into());
        args.push(program.into());
        args.extend(config.args.iter().map(OsString::from));
        let launch = Launch { program: SHELL.into(), args, user: None };
        match process::spawn(EXEC_DRIVER, spec, launch, self.executor.as_ref(), cgroups.clone()) {
            Ok(handle) => Ok(handle),
            Err(err) => {
                remove_cgroups(&cgroups);
                Err(err)
            }
        }
    }

    fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        let mut exit = process::wait(handle)?;
        let (_, _, cgroups) = process::process_of(handle)?;
        exit.oom_killed = oom_killed(cgroups);
        Ok(exit)
    }

    fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<(), DriverError> {
        process::signal(handle, signal)
    }

    fn stop(&self, handle: &TaskHandle, kill_timeout: Duration) -> Result<(), DriverError> {
        process::stop(handle, kill_timeout)
    }

    fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        process::recover(handle)
    }

    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        process::destroy(handle)?;
        let (_, _, cgroups) = process::process_of(handle)?;
        remove_cgroups(cgroups);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_every_gpu_node_but_the_assigned() {
        let uuid_minors: BTreeMap<String, u32> =
            [("GPU-a".to_string(), 0), ("GPU-b".to_string(), 1), ("GPU-c".to_string(), 2)].into();
        let nodes = [0, 1, 2];
        assert_eq!(gpu_minors_to_hide(&nodes, &uuid_minors, &["GPU-b".into()]), Some(vec![0, 2]));
        assert_eq!(gpu_minors_to_hide(&nodes, &uuid_minors, &["GPU-a".into(), "GPU-c".into()]), Some(vec![1]));
        assert_eq!(gpu_minors_to_hide(&nodes, &uuid_minors, &[]), Some(vec![0, 1, 2]), "no GPU: none visible");
        assert_eq!(gpu_minors_to_hide(&nodes, &uuid_minors, &["MIG-x".into()]), None);
    }

    #[test]
    fn device_rules_allow_the_assigned_gpus_nodes_only() {
        let uuid_minors: BTreeMap<String, u32> = [("GPU-a".to_string(), 0), ("GPU-b".to_string(), 1)].into();
        let (rules, unknown) = device_rules(&[], &uuid_minors, Some(510));
        assert_eq!(rules, device_cgroup::standard_rules(), "no GPU: no NVIDIA node at all");
        assert!(unknown.is_empty());
        let (rules, unknown) = device_rules(&["GPU-b".into(), "MIG-x".into()], &uuid_minors, Some(510));
        assert_eq!(unknown, ["MIG-x"]);
        let extra: Vec<(String, Option<u32>, Option<u32>)> = rules[device_cgroup::standard_rules().len()..]
            .iter()
            .map(|r| (r.path.display().to_string(), r.major, r.minor))
            .collect();
        let expected = [
            ("/dev/nvidia1", 195, 1),
            ("/dev/nvidiactl", 195, 255),
            ("/dev/nvidia-modeset", 195, 254),
            ("/dev/nvidia-uvm", 510, 0),
            ("/dev/nvidia-uvm-tools", 510, 1),
        ]
        .map(|(path, major, minor)| (path.to_string(), Some(major), Some(minor)));
        assert_eq!(extra, expected);
        let program = device_cgroup::program(&rules).unwrap();
        let rw = device_cgroup::ACCESS_READ | device_cgroup::ACCESS_WRITE;
        let allows =
            |major, minor| device_cgroup::evaluate(&program, device_cgroup::DeviceKind::Char, major, minor, rw);
        assert_eq!(allows(195, 1), Some(true));
        assert_eq!(allows(195, 0), Some(false), "GPU-a is not the task's");
    }

    #[test]
    fn shares_map_onto_weights_like_systemd() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(u64::MAX), 10_000);
    }
}
