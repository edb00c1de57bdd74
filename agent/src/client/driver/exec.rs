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
//! names the cause. A pure v1 machine (no cgroup2 mount) gets the same
//! allow list in the task's v1 `devices` cgroup (deny all, then allow each
//! rule); one with neither does not run exec tasks.
//!
//! A GPU's nodes are what NVIDIA's container toolkit gives a container:
//! a whole GPU's `/dev/nvidiaN` (its minor from `/proc/driver/nvidia/gpus`);
//! for a MIG instance, its parent GPU's `/dev/nvidiaN` and the capability
//! nodes `/dev/nvidia-caps/nvidia-cap<M>` of its GPU instance's and compute
//! instance's `access` (the parent minor and instance ids from the GPU
//! fingerprint's [`MigIndex`], the minors `M` from the driver's
//! `mig-minors`); then `/dev/nvidiactl`, `/dev/nvidia-modeset` and
//! `/dev/nvidia-uvm(-tools)`. An assigned id that resolves to none of
//! these is denied, with a warning. Every other GPU and capability node is
//! hidden.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use caravan_engine::model::ConfigValue;
use caravan_gpu::{MigIndex, MigPlacement};

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
/// Where the NVIDIA driver lists the minors of the MIG capability nodes:
/// `config 1`, `monitor 2`, then `gpu<minor>/gi<G>/access <M>` and
/// `gpu<minor>/gi<G>/ci<C>/access <M>` lines.
const NVIDIA_MIG_MINORS: &str = "/proc/driver/nvidia-caps/mig-minors";
/// The MIG capability nodes, `nvidia-cap<M>`.
const NVIDIA_CAPS_DIR: &str = "/dev/nvidia-caps";
const NVIDIA_CAP_NODE_PREFIX: &str = "nvidia-cap";
/// The capability nodes' (dynamic) major in `/proc/devices`.
const NVIDIA_CAPS_DEVICE: &str = "nvidia-caps";
/// Most `mig-minors` lines read: the driver lists 2, then 135 a GPU (15
/// GPU instances, each its `access` and 8 compute instances') for up to 32
/// GPUs, about 4,300; the bound leaves room and stops a runaway file.
const MIG_MINORS_LINES_MAX: usize = 16_384;
/// Most entries looked at in [`NVIDIA_CAPS_DIR`]: one per `mig-minors`
/// line at most. More is refused rather than left unhidden.
const CAP_NODES_MAX: usize = MIG_MINORS_LINES_MAX;
/// Most entries looked at in `/dev` for GPU nodes: a host has hundreds,
/// thousands with many disks. More is refused rather than left unhidden.
const DEV_ENTRIES_MAX: usize = 65_536;
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
    /// Where the node's MIG instances sit; empty: a MIG instance is denied.
    mig_index: MigIndex,
}

impl ExecDriver {
    /// Tasks as children of the agent: a task re-attached after an agent
    /// restart has an unknown exit status.
    pub fn new() -> ExecDriver {
        ExecDriver::default()
    }

    /// Tasks under an executor that records their exit status; the
    /// executor stays outside the task's cgroups and namespaces.
    pub fn with_executor(executor: Executor) -> ExecDriver {
        ExecDriver { executor: Some(executor), ..ExecDriver::default() }
    }

    /// Finds assigned MIG instances in `mig_index` (the GPU fingerprinter's,
    /// [`caravan_gpu::Fingerprinter::mig_index`]); without it, a task
    /// assigned one is denied it.
    pub fn with_mig_index(mut self, mig_index: MigIndex) -> ExecDriver {
        self.mig_index = mig_index;
        self
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

/// The task's cgroups: every directory it joins, and among them the one
/// that confines its devices.
struct TaskCgroups {
    dirs: Vec<PathBuf>,
    devices: DeviceCgroup,
}

/// Where a task's device allow list goes.
enum DeviceCgroup {
    /// A cgroup v2 directory: a device eBPF program.
    Program(PathBuf),
    /// A cgroup v1 `devices` controller directory (no cgroup2 mount):
    /// `devices.deny` / `devices.allow` lines.
    V1(PathBuf),
}

impl DeviceCgroup {
    fn dir(&self) -> &Path {
        match self {
            DeviceCgroup::Program(dir) | DeviceCgroup::V1(dir) => dir,
        }
    }
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
            Ok(TaskCgroups { dirs: vec![dir.clone()], devices: DeviceCgroup::Program(dir) })
        }
        Some(CgroupVersion::V1) => {
            // The hybrid layout's cgroup2 mount takes a device program;
            // without one, the v1 devices controller takes the same list.
            // Decided before anything is created, so a refusal leaves nothing.
            let unified = Path::new(CGROUP_UNIFIED_ROOT);
            let devices = if unified.join("cgroup.procs").exists() {
                DeviceCgroup::Program(unified.join(CGROUP_PARENT).join(name))
            } else if root.join("devices").join("devices.allow").exists() {
                DeviceCgroup::V1(root.join("devices").join(CGROUP_PARENT).join(name))
            } else {
                return Err(DriverError::Unavailable(format!(
                    "no cgroup2 mount and no v1 devices controller under {CGROUP_ROOT}: \
                     the exec driver does not run a task with access to every device"
                )));
            };
            let memory = root.join("memory").join(CGROUP_PARENT).join(name);
            create_dir(&memory)?;
            write(&memory.join("memory.limit_in_bytes"), &memory_bytes.to_string())?;
            let cpu = root.join("cpu").join(CGROUP_PARENT).join(name);
            create_dir(&cpu)?;
            write(&cpu.join("cpu.shares"), &shares.min(CPU_SHARES_MAX).to_string())?;
            let mut dirs = vec![memory, cpu];
            if let Err(err) = create_dir(devices.dir()) {
                remove_cgroups(&dirs);
                return Err(err);
            }
            dirs.push(devices.dir().to_path_buf());
            Ok(TaskCgroups { dirs, devices })
        }
        None => Err(DriverError::Unavailable(format!("no usable cgroup hierarchy under {CGROUP_ROOT}"))),
    }
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

/// The capability minors of `mig-minors` text by name (`gpu0/gi1/access`
/// → 12); a line that is not `name minor` is skipped.
fn parse_mig_minors(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .take(MIG_MINORS_LINES_MAX)
        .filter_map(|line| {
            let (name, minor) = line.trim().split_once(char::is_whitespace)?;
            Some((name.to_string(), minor.trim().parse().ok()?))
        })
        .collect()
}

/// The minors of a MIG instance's two capability nodes: its GPU instance's
/// `access` and its compute instance's. `None` when `mig_minors` lacks
/// either (the instance is gone, or the driver names it otherwise).
fn mig_cap_minors(mig_minors: &BTreeMap<String, u32>, placement: MigPlacement) -> Option<[u32; 2]> {
    let gpu_instance = format!("gpu{}/gi{}", placement.parent_minor, placement.gpu_instance_id);
    let gpu_instance_access = *mig_minors.get(&format!("{gpu_instance}/access"))?;
    let compute_instance_access =
        *mig_minors.get(&format!("{gpu_instance}/ci{}/access", placement.compute_instance_id))?;
    Some([gpu_instance_access, compute_instance_access])
}

/// What this machine says about its NVIDIA devices, read once per task
/// start: the input of [`grant_gpus`] and [`device_rules`].
#[derive(Debug, Default)]
struct NvidiaHost {
    /// Whole GPUs: `/dev/nvidiaN` minor by UUID.
    gpu_minors: BTreeMap<String, u32>,
    /// MIG instances by UUID, from the last GPU fingerprint.
    mig_placements: Arc<BTreeMap<String, MigPlacement>>,
    /// `mig-minors` parsed; empty when the file is missing.
    mig_minors: BTreeMap<String, u32>,
    /// `nvidia-caps`' major; `None` when `/proc/devices` has none.
    caps_major: Option<u32>,
    /// `nvidia-uvm`'s major; `None` when `/proc/devices` has none.
    uvm_major: Option<u32>,
}

impl NvidiaHost {
    fn read(mig_index: &MigIndex) -> NvidiaHost {
        use caravan_gpu::reserve::{PROC_DEVICES_PATH, character_major};
        let proc_devices = std::fs::read_to_string(PROC_DEVICES_PATH).ok();
        let major = |name: &str| proc_devices.as_deref().and_then(|text| character_major(text, name));
        NvidiaHost {
            gpu_minors: nvidia_uuid_minors(),
            mig_placements: mig_index.placements(),
            mig_minors: std::fs::read_to_string(NVIDIA_MIG_MINORS)
                .map(|text| parse_mig_minors(&text))
                .unwrap_or_default(),
            caps_major: major(NVIDIA_CAPS_DEVICE),
            uvm_major: major("nvidia-uvm"),
        }
    }
}

/// The GPU device nodes a task's assigned NVIDIA instances resolve to here.
#[derive(Debug, Default, PartialEq, Eq)]
struct GpuGrant {
    /// `/dev/nvidiaN`: each whole GPU's, each MIG instance's parent's; once each.
    gpu_minors: Vec<u32>,
    /// `/dev/nvidia-caps/nvidia-capM`: each MIG instance's GPU and compute
    /// instance `access`; once each.
    cap_minors: Vec<u32>,
    /// Assigned ids that resolve to nothing here: denied.
    unknown: Vec<String>,
}

/// Resolves the task's `assigned` instance ids on `host`: a whole GPU to
/// its node; a MIG instance to its parent's node and its two capability
/// nodes, only when all three are known (its placement, both minors in
/// `mig-minors`, the `nvidia-caps` major); anything else to nothing.
fn grant_gpus(assigned: &[String], host: &NvidiaHost) -> GpuGrant {
    fn push_once(list: &mut Vec<u32>, value: u32) {
        if !list.contains(&value) {
            list.push(value);
        }
    }
    let mut grant = GpuGrant::default();
    for id in assigned {
        if let Some(&minor) = host.gpu_minors.get(id) {
            push_once(&mut grant.gpu_minors, minor);
            continue;
        }
        let mig = host
            .mig_placements
            .get(id)
            .filter(|_| host.caps_major.is_some())
            .and_then(|&placement| Some((placement.parent_minor, mig_cap_minors(&host.mig_minors, placement)?)));
        match mig {
            Some((parent_minor, cap_minors)) => {
                push_once(&mut grant.gpu_minors, parent_minor);
                for minor in cap_minors {
                    push_once(&mut grant.cap_minors, minor);
                }
            }
            None => grant.unknown.push(id.clone()),
        }
    }
    grant
}

/// The device cgroup rules of a task granted `grant`: the standard devices,
/// and for a task granted a GPU its `/dev/nvidiaN` nodes, the MIG
/// capability nodes, `/dev/nvidiactl`, `/dev/nvidia-modeset`, and
/// `/dev/nvidia-uvm` + `nvidia-uvm-tools` when their major is known.
fn device_rules(grant: &GpuGrant, host: &NvidiaHost) -> Vec<DeviceRule> {
    use caravan_gpu::reserve::{NVIDIA_DEVICE_MAJOR, NVIDIACTL_MINOR};
    let mut rules = device_cgroup::standard_rules();
    if grant.gpu_minors.is_empty() {
        assert!(grant.cap_minors.is_empty(), "a capability is granted with its parent GPU");
        return rules;
    }
    for &minor in &grant.gpu_minors {
        rules.push(DeviceRule::char_rw(format!("/dev/nvidia{minor}"), NVIDIA_DEVICE_MAJOR, Some(minor)));
    }
    if !grant.cap_minors.is_empty() {
        let caps_major = host.caps_major.expect("a capability is granted only with the nvidia-caps major known");
        for &minor in &grant.cap_minors {
            let path = format!("{NVIDIA_CAPS_DIR}/{NVIDIA_CAP_NODE_PREFIX}{minor}");
            rules.push(DeviceRule::char_rw(path, caps_major, Some(minor)));
        }
    }
    rules.push(DeviceRule::char_rw("/dev/nvidiactl", NVIDIA_DEVICE_MAJOR, Some(NVIDIACTL_MINOR)));
    rules.push(DeviceRule::char_rw("/dev/nvidia-modeset", NVIDIA_DEVICE_MAJOR, Some(NVIDIA_MODESET_MINOR)));
    if let Some(major) = host.uvm_major {
        rules.push(DeviceRule::char_rw("/dev/nvidia-uvm", major, Some(0)));
        rules.push(DeviceRule::char_rw("/dev/nvidia-uvm-tools", major, Some(1)));
    }
    rules
}

/// The UUIDs of the task's assigned NVIDIA instances.
fn assigned_nvidia_ids(spec: &TaskSpec) -> Vec<String> {
    spec.devices
        .iter()
        .filter(|device| &*device.vendor == VENDOR_NVIDIA)
        .flat_map(|device| device.instance_ids.iter().map(|id| id.to_string()))
        .collect()
}

/// What the task is granted of the machine's GPUs (nothing without an
/// assigned NVIDIA device), warning of assigned ids it is denied.
fn task_gpu_grant(spec: &TaskSpec, mig_index: &MigIndex) -> (GpuGrant, NvidiaHost) {
    let assigned = assigned_nvidia_ids(spec);
    if assigned.is_empty() {
        return (GpuGrant::default(), NvidiaHost::default());
    }
    let host = NvidiaHost::read(mig_index);
    let grant = grant_gpus(&assigned, &host);
    if !grant.unknown.is_empty() {
        tracing::warn!(
            task = %spec.task_name,
            unknown = ?grant.unknown,
            "assigned GPU instances not found here (a GPU not in {NVIDIA_PROC_GPUS}, or a MIG instance \
             not in the GPU fingerprint or {NVIDIA_MIG_MINORS}); the task is denied their device nodes"
        );
    }
    (grant, host)
}

/// Confines the task to `rules`: a device program on its cgroup v2
/// directory, or deny-all then allow lines in its v1 devices cgroup.
fn confine_devices(rules: &[DeviceRule], cgroup: &DeviceCgroup) -> Result<(), DriverError> {
    match cgroup {
        DeviceCgroup::Program(dir) => attach_device_program(rules, dir),
        DeviceCgroup::V1(dir) => write_v1_device_rules(rules, dir),
    }
}

/// The v1 devices controller: `a` (everything) denied, then each rule
/// allowed, before the task joins the cgroup.
fn write_v1_device_rules(rules: &[DeviceRule], dir: &Path) -> Result<(), DriverError> {
    let refused = |err: DriverError| {
        DriverError::Start(format!(
            "cannot confine the task to its devices (the v1 devices cgroup {}: {err}); \
             the exec driver does not run a task with access to every device",
            dir.display()
        ))
    };
    write(&dir.join("devices.deny"), "a").map_err(refused)?;
    for line in device_cgroup::v1_allow_lines(rules) {
        write(&dir.join("devices.allow"), &line).map_err(refused)?;
    }
    Ok(())
}

/// Puts the task's device program, allowing `rules`, on its cgroup v2 directory.
fn attach_device_program(rules: &[DeviceRule], cgroup: &Path) -> Result<(), DriverError> {
    let program = device_cgroup::program(rules).map_err(|err| DriverError::Start(err.to_string()))?;
    super::bpf::attach_device_program(cgroup, &program).map_err(|err| {
        DriverError::Start(format!(
            "cannot confine the task to its devices (the cgroup device eBPF program on {} failed: {err}); \
             the exec driver does not run a task with access to every device",
            cgroup.display()
        ))
    })
}

/// The minors `N` of the nodes `<prefix>N` among `names` (directory entries).
fn node_minors<'a>(names: impl IntoIterator<Item = &'a str>, prefix: &str) -> Vec<u32> {
    let mut minors: Vec<u32> = names.into_iter().filter_map(|name| name.strip_prefix(prefix)?.parse().ok()).collect();
    minors.sort_unstable();
    minors
}

/// The file names in `dir` (an absent directory has none). Fails past
/// `limit` entries: a node that is not looked at cannot be hidden.
fn dir_names(dir: &str, limit: usize) -> Result<Vec<String>, DriverError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let names: Vec<String> =
        entries.flatten().take(limit + 1).filter_map(|entry| entry.file_name().into_string().ok()).collect();
    if names.len() > limit {
        return Err(DriverError::Start(format!(
            "more than {limit} entries in {dir}; the exec driver cannot hide the GPU nodes among them"
        )));
    }
    Ok(names)
}

/// The device nodes to hide from a task granted `grant`: every GPU node
/// (`/dev/nvidiaN`, of minors `gpu_nodes`) and MIG capability node (of
/// minors `cap_nodes`) that is not its own.
fn nodes_to_hide(gpu_nodes: &[u32], cap_nodes: &[u32], grant: &GpuGrant) -> Vec<PathBuf> {
    let gpus = gpu_nodes
        .iter()
        .filter(|minor| !grant.gpu_minors.contains(minor))
        .map(|minor| PathBuf::from(format!("/dev/nvidia{minor}")));
    let caps = cap_nodes
        .iter()
        .filter(|minor| !grant.cap_minors.contains(minor))
        .map(|minor| PathBuf::from(format!("{NVIDIA_CAPS_DIR}/{NVIDIA_CAP_NODE_PREFIX}{minor}")));
    gpus.chain(caps).collect()
}

/// The GPU and capability nodes on this machine the task must not see.
fn gpu_nodes_to_hide(grant: &GpuGrant) -> Result<Vec<PathBuf>, DriverError> {
    let dev = dir_names("/dev", DEV_ENTRIES_MAX)?;
    let gpu_nodes = node_minors(dev.iter().map(String::as_str), "nvidia");
    let caps = dir_names(NVIDIA_CAPS_DIR, CAP_NODES_MAX)?;
    let cap_nodes = node_minors(caps.iter().map(String::as_str), NVIDIA_CAP_NODE_PREFIX);
    Ok(nodes_to_hide(&gpu_nodes, &cap_nodes, grant))
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
        let (grant, host) = task_gpu_grant(spec, &self.mig_index);
        let hidden = gpu_nodes_to_hide(&grant)?;
        let TaskCgroups { dirs: cgroups, devices } = create_cgroups(&cgroup_name(spec), spec.resources)?;
        if let Err(err) = confine_devices(&device_rules(&grant, &host), &devices) {
            remove_cgroups(&cgroups);
            return Err(err);
        }
        let mut args: Vec<OsString> = vec!["-c".into(), JOIN_CGROUPS_SCRIPT.into(), "caravan-exec".into()];
        args.extend(cgroups.iter().map(|dir| dir.join("cgroup.procs").into_os_string()));
        args.push("--".into());
        // GPU nodes the task was not given are hidden in a mount namespace
        // of its own, before the user switch (mounting needs root).
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

    /// The v1 fallback on a real v1 `devices` controller (this needs root
    /// and one; the hybrid layout has both, so CI runs it): a process in
    /// the cgroup opens `/dev/null` but not a 0666 node of 1:11 it was not
    /// given, and cannot `mknod`.
    #[test]
    fn v1_devices_cgroup_denies_what_the_rules_leave_out() {
        use std::os::unix::fs::PermissionsExt;
        let controller = Path::new(CGROUP_ROOT).join("devices");
        if !rustix::process::geteuid().is_root() || !controller.join("devices.allow").exists() {
            let reason = "needs root and a cgroup v1 devices controller";
            assert!(
                std::env::var("CARAVAN_REQUIRE_ALL_TESTS").map_or(true, |v| v != "1"),
                "CARAVAN_REQUIRE_ALL_TESTS=1 but the test cannot run: {reason}"
            );
            eprintln!("SKIPPED: {reason}");
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = scratch.path().join("kmsg-copy");
        let made = std::process::Command::new("mknod").args(["-m", "0666"]).arg(&node).args(["c", "1", "11"]).status();
        assert!(made.is_ok_and(|s| s.success()), "mknod as root");
        let dir = controller.join(CGROUP_PARENT).join(format!("unit-test-{}", std::process::id()));
        create_dir(&dir).unwrap();
        write_v1_device_rules(&device_cgroup::standard_rules(), &dir).unwrap();
        let script = "echo $$ > \"$1/cgroup.procs\" || exit 9; \
            echo x > /dev/null && echo null=ok; \
            if (exec 3<\"$2\") 2>/dev/null; then echo kmsg=opened; else echo kmsg=denied; fi; \
            if mknod \"$3\" c 1 3 2>/dev/null; then echo mknod=made; else echo mknod=denied; fi";
        let out = std::process::Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&dir)
            .arg(&node)
            .arg(scratch.path().join("made-null"))
            .output()
            .unwrap();
        remove_cgroups(std::slice::from_ref(&dir));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("null=ok"), "{stdout}");
        assert!(stdout.contains("kmsg=denied"), "{stdout}");
        assert!(stdout.contains("mknod=denied"), "{stdout}");
    }

    /// `mig-minors` as the driver writes it (excerpt: GPU 0's instances 1
    /// and 2, GPU 1's instance 1), `/proc/devices` naming both dynamic majors.
    const MIG_MINORS: &str = "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\n\
        gpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu0/gi1/ci1/access 14\n\
        gpu0/gi2/access 21\ngpu0/gi2/ci0/access 22\n\
        gpu1/gi1/access 147\ngpu1/gi1/ci0/access 148\n";
    const PROC_DEVICES: &str =
        "Character devices:\n  1 mem\n195 nvidia\n234 nvidia-caps\n510 nvidia-uvm\n\nBlock devices:\n  8 sd\n";

    fn placement(parent_minor: u32, gpu_instance_id: u32, compute_instance_id: u32) -> MigPlacement {
        MigPlacement { parent_minor, gpu_instance_id, compute_instance_id }
    }

    /// Whole GPUs `GPU-a` (minor 0) and `GPU-b` (1), MIG instances `MIG-x`
    /// (GPU 0, gi1/ci0), `MIG-y` (GPU 0, gi1/ci1), `MIG-z` (GPU 1, gi1/ci0)
    /// and `MIG-gone` (GPU 0, gi5: not in `mig-minors`).
    fn test_host() -> NvidiaHost {
        use caravan_gpu::reserve::character_major;
        let mig_placements = [
            ("MIG-x", placement(0, 1, 0)),
            ("MIG-y", placement(0, 1, 1)),
            ("MIG-z", placement(1, 1, 0)),
            ("MIG-gone", placement(0, 5, 0)),
        ]
        .map(|(uuid, placement)| (uuid.to_string(), placement));
        NvidiaHost {
            gpu_minors: [("GPU-a".to_string(), 0), ("GPU-b".to_string(), 1)].into(),
            mig_placements: Arc::new(mig_placements.into()),
            mig_minors: parse_mig_minors(MIG_MINORS),
            caps_major: character_major(PROC_DEVICES, "nvidia-caps"),
            uvm_major: character_major(PROC_DEVICES, "nvidia-uvm"),
        }
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    /// The rules past the standard ones, as (path, major, minor).
    fn nvidia_rules(rules: &[DeviceRule]) -> Vec<(String, u32, u32)> {
        rules[device_cgroup::standard_rules().len()..]
            .iter()
            .map(|r| (r.path.display().to_string(), r.major.unwrap(), r.minor.unwrap()))
            .collect()
    }

    fn rule(path: &str, major: u32, minor: u32) -> (String, u32, u32) {
        (path.to_string(), major, minor)
    }

    fn allows(rules: &[DeviceRule], major: u32, minor: u32) -> bool {
        let program = device_cgroup::program(rules).unwrap();
        let rw = device_cgroup::ACCESS_READ | device_cgroup::ACCESS_WRITE;
        device_cgroup::evaluate(&program, device_cgroup::DeviceKind::Char, major, minor, rw).unwrap()
    }

    #[test]
    fn mig_minors_parse_by_name() {
        let minors = parse_mig_minors(MIG_MINORS);
        assert_eq!(minors.get("config"), Some(&1));
        assert_eq!(minors.get("monitor"), Some(&2));
        assert_eq!(minors.get("gpu0/gi1/access"), Some(&12));
        assert_eq!(minors.get("gpu1/gi1/ci0/access"), Some(&148));
        assert_eq!(minors.len(), 11);
        let odd = parse_mig_minors("gpu0/gi1/access x\n\n  gpu0/gi1/ci0/access   13  \nlonely\n");
        assert_eq!(odd, [("gpu0/gi1/ci0/access".to_string(), 13)].into(), "bad lines skipped");
        assert_eq!(mig_cap_minors(&minors, placement(0, 1, 1)), Some([12, 14]));
        assert_eq!(mig_cap_minors(&minors, placement(0, 2, 1)), None, "no ci1 in gi2");
        assert_eq!(mig_cap_minors(&minors, placement(2, 1, 0)), None, "no GPU 2");
    }

    #[test]
    fn whole_gpus_get_their_nodes_only() {
        let host = test_host();
        let grant = grant_gpus(&ids(&["GPU-b"]), &host);
        assert_eq!(grant, GpuGrant { gpu_minors: vec![1], cap_minors: vec![], unknown: vec![] });
        let rules = device_rules(&grant, &host);
        assert_eq!(
            nvidia_rules(&rules),
            [
                rule("/dev/nvidia1", 195, 1),
                rule("/dev/nvidiactl", 195, 255),
                rule("/dev/nvidia-modeset", 195, 254),
                rule("/dev/nvidia-uvm", 510, 0),
                rule("/dev/nvidia-uvm-tools", 510, 1),
            ]
        );
        assert!(allows(&rules, 195, 1));
        assert!(!allows(&rules, 195, 0), "GPU-a is not the task's");
        assert!(!allows(&rules, 234, 12), "no MIG capability");
        let hidden: Vec<String> =
            nodes_to_hide(&[0, 1], &[1, 2, 12], &grant).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            hidden,
            [
                "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap1",
                "/dev/nvidia-caps/nvidia-cap2",
                "/dev/nvidia-caps/nvidia-cap12",
            ]
        );
    }

    #[test]
    fn no_gpu_gets_no_nvidia_node_and_sees_none() {
        let host = test_host();
        let grant = grant_gpus(&[], &host);
        assert_eq!(grant, GpuGrant::default());
        assert_eq!(device_rules(&grant, &host), device_cgroup::standard_rules());
        assert_eq!(nodes_to_hide(&[0, 1], &[1, 12], &grant).len(), 4, "every node hidden");
    }

    #[test]
    fn a_mig_instance_gets_its_parent_and_its_two_capabilities() {
        let host = test_host();
        let grant = grant_gpus(&ids(&["MIG-x"]), &host);
        assert_eq!(grant, GpuGrant { gpu_minors: vec![0], cap_minors: vec![12, 13], unknown: vec![] });
        let rules = device_rules(&grant, &host);
        assert_eq!(
            nvidia_rules(&rules),
            [
                rule("/dev/nvidia0", 195, 0),
                rule("/dev/nvidia-caps/nvidia-cap12", 234, 12),
                rule("/dev/nvidia-caps/nvidia-cap13", 234, 13),
                rule("/dev/nvidiactl", 195, 255),
                rule("/dev/nvidia-modeset", 195, 254),
                rule("/dev/nvidia-uvm", 510, 0),
                rule("/dev/nvidia-uvm-tools", 510, 1),
            ]
        );
        assert!(allows(&rules, 195, 0), "the parent GPU");
        assert!(allows(&rules, 234, 12), "its GPU instance's access");
        assert!(allows(&rules, 234, 13), "its compute instance's access");
        assert!(!allows(&rules, 234, 1), "not config");
        assert!(!allows(&rules, 234, 2), "not monitor");
        assert!(!allows(&rules, 234, 14), "not the other compute instance of its GPU instance");
        assert!(!allows(&rules, 234, 21), "not another GPU instance");
        assert!(!allows(&rules, 195, 1), "not another GPU");
        let hidden = nodes_to_hide(&[0, 1], &[1, 2, 12, 13, 14, 21, 147], &grant);
        let hidden: Vec<String> = hidden.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            hidden,
            [
                "/dev/nvidia1",
                "/dev/nvidia-caps/nvidia-cap1",
                "/dev/nvidia-caps/nvidia-cap2",
                "/dev/nvidia-caps/nvidia-cap14",
                "/dev/nvidia-caps/nvidia-cap21",
                "/dev/nvidia-caps/nvidia-cap147",
            ]
        );
    }

    #[test]
    fn mig_instances_share_their_parent_and_gpu_instance_nodes_once() {
        let host = test_host();
        let grant = grant_gpus(&ids(&["MIG-x", "MIG-y", "MIG-z", "GPU-a"]), &host);
        assert_eq!(grant, GpuGrant { gpu_minors: vec![0, 1], cap_minors: vec![12, 13, 14, 147, 148], unknown: vec![] });
        assert_eq!(nvidia_rules(&device_rules(&grant, &host)).len(), 2 + 5 + 4);
    }

    #[test]
    fn an_unresolvable_mig_instance_is_denied() {
        let host = test_host();
        let denied_alone = |host: &NvidiaHost, id: &str| {
            let grant = grant_gpus(&ids(&[id]), host);
            assert_eq!(grant, GpuGrant { gpu_minors: vec![], cap_minors: vec![], unknown: vec![id.to_string()] });
            assert_eq!(device_rules(&grant, host), device_cgroup::standard_rules(), "{id}: no NVIDIA node");
            assert_eq!(nodes_to_hide(&[0, 1], &[12, 13], &grant).len(), 4, "{id}: every node hidden");
        };
        denied_alone(&host, "MIG-unknown");
        denied_alone(&host, "MIG-gone");
        let no_minors = NvidiaHost { mig_minors: BTreeMap::new(), ..test_host() };
        denied_alone(&no_minors, "MIG-x");
        let no_caps_major = NvidiaHost { caps_major: None, ..test_host() };
        denied_alone(&no_caps_major, "MIG-x");
        let no_fingerprint = NvidiaHost { mig_placements: Arc::default(), ..test_host() };
        denied_alone(&no_fingerprint, "MIG-x");

        // Beside a known GPU: that one granted, the MIG instance not.
        let grant = grant_gpus(&ids(&["GPU-b", "MIG-unknown"]), &host);
        assert_eq!(grant, GpuGrant { gpu_minors: vec![1], cap_minors: vec![], unknown: ids(&["MIG-unknown"]) });
    }

    #[test]
    fn simulated_mig_fingerprint_resolves_through_the_index() {
        let mut gpus = caravan_gpu::SimulatedGpus::h200_8x();
        gpus.mig =
            Some(caravan_gpu::MigLayout { profile: "1g.18gb".into(), slices_per_gpu: 2, memory_mib_per_slice: 16_384 });
        let fingerprint = gpus.fingerprint();
        let index = MigIndex::default();
        index.publish(&fingerprint);
        // GPU 1's second slice: GPU instance 2, compute instance 0.
        let uuid = fingerprint.gpus[1].mig_instances[1].uuid.clone();
        let host = NvidiaHost {
            gpu_minors: BTreeMap::new(),
            mig_placements: index.placements(),
            mig_minors: parse_mig_minors("gpu1/gi2/access 156\ngpu1/gi2/ci0/access 157\n"),
            caps_major: Some(234),
            uvm_major: None,
        };
        let grant = grant_gpus(&[uuid], &host);
        assert_eq!(grant, GpuGrant { gpu_minors: vec![1], cap_minors: vec![156, 157], unknown: vec![] });
    }

    #[test]
    fn node_minors_from_dev_names() {
        let dev = ["nvidia0", "nvidiactl", "nvidia-caps", "nvidia12", "nvidia-uvm", "null", "nvidia3"];
        assert_eq!(node_minors(dev, "nvidia"), [0, 3, 12]);
        assert_eq!(node_minors(["nvidia-cap2", "nvidia-cap13", "nvidia-capx"], NVIDIA_CAP_NODE_PREFIX), [2, 13]);
    }

    #[test]
    fn shares_map_onto_weights_like_systemd() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(u64::MAX), 10_000);
    }
}
