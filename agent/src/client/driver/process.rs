//! What `raw_exec` and `exec` share: spawning a process whose stdout and
//! stderr go through named pipes into rotating log files, waiting for it,
//! signalling its process group, and re-attaching after an agent restart.
//!
//! The task writes to fifos in the log directory (`.<task>.stdout.fifo`),
//! opened read-write on its side so that it never gets SIGPIPE while no agent
//! reads: a restarted agent opens the fifos again and log capture resumes.
//! Each task is its own process-group leader, so signals reach everything it
//! started (for `exec`, the `unshare` wrapper and the task inside).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};

use super::executor::{self, Executor, ExecutorHandle, Launch};
use super::logs::{LogStream, RotatingWriter, pump};
use super::{DriverError, ExitResult, HandleState, TaskHandle, TaskSpec};

/// How often `wait` looks at a process it cannot block on (one re-attached
/// after an agent restart is not our child) and `stop` checks whether the
/// task has gone: short against kill timeouts of seconds, cheap in CPU.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a SIGKILLed process may take to disappear before we report an
/// error: the kernel needs milliseconds; a process stuck in uninterruptible
/// sleep (D state, a dead NFS mount) can take longer, and we do not wait on it forever.
const KILL_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long `destroy` lets an executor whose task is dead finish writing
/// the exit status before killing it: it needs microseconds.
const EXECUTOR_EXIT_MAX: Duration = Duration::from_secs(2);
/// `PATH` for tasks whose environment has none: the usual system directories.
pub(crate) const PATH_DEFAULT: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Offset of a signal in an exit code, as shells and Nomad's executor report
/// a task killed by a signal (SIGKILL → 137).
const SIGNAL_EXIT_CODE_BASE: i32 = 128;

/// Fifos being read by a pump thread of this process, so re-attaching in the
/// same process (a driver dropped and made again) never starts a second reader.
static ACTIVE_PUMPS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn fifo_path(log_dir: &Path, task: &str, stream: LogStream) -> PathBuf {
    log_dir.join(format!(".{task}.{}.fifo", stream.as_str()))
}

/// Finds `command` as `execvp` would with the task's `PATH`, so a missing
/// command fails the start with a clear message instead of a task exiting 127.
pub(crate) fn resolve_command(command: &str, env: &BTreeMap<String, String>) -> Result<PathBuf, DriverError> {
    let is_executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata().map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0).unwrap_or(false)
    };
    if command.contains('/') {
        let path = PathBuf::from(command);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(DriverError::Start(format!("command {command:?} not found or not executable")))
        };
    }
    let path_var = env.get("PATH").map(String::as_str).unwrap_or(PATH_DEFAULT);
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(command))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| DriverError::Start(format!("command {command:?} not found in PATH {path_var:?}")))
}

/// Spawns `launch` for `spec`: the environment, the task directory as
/// working directory, its own process group, output into the log fifos.
/// With an `executor`, the agent starts the executor, which starts the task
/// and records its exit status (see [`executor`]); without, the task is the
/// agent's child and its status is lost if the agent restarts.
pub(crate) fn spawn(
    driver: &str,
    spec: &TaskSpec,
    launch: Launch,
    executor: Option<&Executor>,
    cgroups: Vec<PathBuf>,
) -> Result<TaskHandle, DriverError> {
    spec.dirs.create()?;
    let log_dir = &spec.dirs.log_dir;
    let task = &spec.task_name;
    let mut readers = Vec::new();
    let mut task_ends = Vec::new();
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let fifo = fifo_path(log_dir, task, stream);
        let _ = std::fs::remove_file(&fifo);
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(|e| DriverError::io(format!("mkfifo {}", fifo.display()), e.into()))?;
        readers.push((stream, fifo.clone(), open_fifo_reader(&fifo)?));
        let task_end = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .map_err(|e| DriverError::io(format!("open {}", fifo.display()), e))?;
        task_ends.push(task_end);
    }
    let stderr_end = task_ends.pop().ok_or_else(|| DriverError::Start("no stderr fifo".into()))?;
    let stdout_end = task_ends.pop().ok_or_else(|| DriverError::Start("no stdout fifo".into()))?;
    let mut env = spec.full_env();
    env.entry("PATH".into()).or_insert_with(|| PATH_DEFAULT.into());
    let executor_dir = executor::executor_dir(&spec.dirs);
    let mut command = match executor {
        Some(executor) => {
            executor::prepare_dir(&executor_dir)?;
            executor.command(&executor_dir, &launch)
        }
        None => {
            let mut command = Command::new(&launch.program);
            command.args(&launch.args);
            if let Some((uid, gid)) = launch.user {
                command.uid(uid).gid(gid);
            }
            // The executor makes its own session; a task started directly
            // leads its own process group.
            command.process_group(0);
            command
        }
    };
    command
        .env_clear()
        .envs(&env)
        .current_dir(&spec.dirs.task_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout_end))
        .stderr(Stdio::from(stderr_end));
    let child = command.spawn().map_err(|e| DriverError::Start(format!("{:?}: {e}", launch.program)))?;
    // Our copies of the task's fifo ends must close, or the pumps would
    // never see end of file.
    drop(command);
    let child_pid = i32::try_from(child.id()).map_err(|_| DriverError::Start("pid out of range".into()))?;
    // The child is reaped by `wait` through waitpid, not through `Child`.
    drop(child);
    // A task that already exited is a zombie until `wait` reaps it; its
    // start time is still there.
    let (_, child_ticks) =
        stat(child_pid).ok_or_else(|| DriverError::Start(format!("task process {child_pid} vanished")))?;
    let (pid, start_ticks, executor) = match executor {
        None => (child_pid, child_ticks, None),
        Some(_) => {
            let exited = || reap_if_exited(child_pid);
            let (pid, ticks) = executor::wait_started(&executor_dir, exited).inspect_err(|_| {
                if let Some(raw) = Pid::from_raw(child_pid) {
                    let _ = rustix::process::kill_process(raw, Signal::KILL);
                }
                reap_if_exited(child_pid);
            })?;
            (pid, ticks, Some(Box::new(ExecutorHandle { pid: child_pid, start_ticks: child_ticks, dir: executor_dir })))
        }
    };
    for (stream, fifo, reader) in readers {
        start_pump(fifo, reader, log_dir, task, stream, spec.logs);
    }
    Ok(TaskHandle {
        driver: driver.into(),
        alloc_id: spec.alloc_id.clone(),
        task_name: task.clone(),
        log_dir: log_dir.clone(),
        logs: spec.logs,
        state: HandleState::Process { pid, start_ticks, cgroups, executor },
    })
}

/// Reaps `pid` if it is our child and has exited; true when it is gone
/// (reaped now, earlier, or not our child and no longer running).
fn reap_if_exited(pid: i32) -> bool {
    let Some(raw) = Pid::from_raw(pid) else { return true };
    loop {
        match rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
            Ok(Some(_)) => return true,
            Ok(None) => return false,
            Err(Errno::INTR) => continue,
            Err(Errno::CHILD) => return start_ticks(pid).is_none(),
            Err(_) => return true,
        }
    }
}

/// Opens the agent's end of a fifo without blocking when no writer exists
/// (a task that exited while no agent ran): reads then see end of file.
fn open_fifo_reader(fifo: &Path) -> Result<File, DriverError> {
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(fifo)
        .map_err(|e| DriverError::io(format!("open {}", fifo.display()), e))?;
    rustix::fs::fcntl_setfl(&reader, OFlags::empty())
        .map_err(|e| DriverError::io(format!("fcntl {}", fifo.display()), e.into()))?;
    Ok(reader)
}

fn start_pump(fifo: PathBuf, reader: File, log_dir: &Path, task: &str, stream: LogStream, config: super::LogConfig) {
    {
        let mut active = ACTIVE_PUMPS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !active.insert(fifo.clone()) {
            return;
        }
    }
    let writer = match RotatingWriter::open(log_dir, task, stream, config) {
        Ok(writer) => writer,
        Err(err) => {
            tracing::warn!(%err, task, "cannot open task log");
            ACTIVE_PUMPS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&fifo);
            return;
        }
    };
    let name = format!("log-{task}-{}", stream.as_str());
    let spawned = std::thread::Builder::new().name(name).spawn({
        let fifo = fifo.clone();
        move || {
            pump(reader, writer);
            ACTIVE_PUMPS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&fifo);
        }
    });
    if let Err(err) = spawned {
        tracing::warn!(%err, task, "cannot start log pump");
        ACTIVE_PUMPS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&fifo);
    }
}

pub(crate) fn process_of(handle: &TaskHandle) -> Result<(i32, u64, &[PathBuf]), DriverError> {
    match &handle.state {
        HandleState::Process { pid, start_ticks, cgroups, .. } => Ok((*pid, *start_ticks, cgroups)),
        HandleState::Container { .. } => {
            Err(DriverError::InvalidHandle("a container handle given to a process driver".into()))
        }
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in ticks since boot), or
/// `None` when the process is gone or a zombie.
fn start_ticks(pid: i32) -> Option<u64> {
    let (state, ticks) = stat(pid)?;
    if state == "Z" || state == "X" {
        return None;
    }
    Some(ticks)
}

/// State (field 3) and start time (field 22) of `/proc/<pid>/stat`.
pub(crate) fn stat(pid: i32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

/// The task still runs: its pid exists, is no zombie, and started when the
/// handle says (a recycled pid belongs to someone else).
pub(crate) fn alive(pid: i32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks)
}

fn executor_of(handle: &TaskHandle) -> Option<&ExecutorHandle> {
    match &handle.state {
        HandleState::Process { executor, .. } => executor.as_deref(),
        HandleState::Container { .. } => None,
    }
}

/// Blocks until the task exits. A task under an executor: once the
/// executor exits (reaped if it is our child, watched through `/proc`
/// otherwise), its recorded status. A task started directly: our own child
/// is reaped with its exit status; one re-attached after an agent restart
/// is watched through `/proc`, and its status is unknown.
pub(crate) fn wait(handle: &TaskHandle) -> Result<ExitResult, DriverError> {
    let (pid, ticks, _) = process_of(handle)?;
    if let Some(executor) = executor_of(handle) {
        while !reap_if_exited(executor.pid) && alive(executor.pid, executor.start_ticks) {
            std::thread::sleep(POLL_INTERVAL);
        }
        if let Some(status) = executor::read_status(&executor.dir) {
            return Ok(ExitResult {
                exit_code: status.exit_code,
                signal: status.signal,
                oom_killed: false,
                error: None,
            });
        }
        // The executor was killed: watch the task itself, status unknown.
        while alive(pid, ticks) {
            std::thread::sleep(POLL_INTERVAL);
        }
        return Ok(ExitResult {
            exit_code: 0,
            signal: None,
            oom_killed: false,
            error: Some("the task executor died without recording the exit status".into()),
        });
    }
    let raw = Pid::from_raw(pid).ok_or_else(|| DriverError::InvalidHandle(format!("pid {pid}")))?;
    loop {
        match rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                let signal = status.terminating_signal();
                let exit_code = match signal {
                    Some(signal) => SIGNAL_EXIT_CODE_BASE + signal,
                    None => status.exit_status().unwrap_or(0),
                };
                return Ok(ExitResult { exit_code, signal, oom_killed: false, error: None });
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(Errno::INTR) => continue,
            Err(Errno::CHILD) => {
                if !alive(pid, ticks) {
                    return Ok(ExitResult {
                        exit_code: 0,
                        signal: None,
                        oom_killed: false,
                        error: Some("task exited while not a child of this agent; exit status unknown".into()),
                    });
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(err) => return Err(DriverError::io(format!("waitpid {pid}"), err.into())),
        }
    }
}

fn signal_group(pid: i32, signal: Signal) -> Result<(), DriverError> {
    let raw = Pid::from_raw(pid).ok_or_else(|| DriverError::InvalidHandle(format!("pid {pid}")))?;
    match rustix::process::kill_process_group(raw, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(err) => Err(DriverError::io(format!("kill -{} -{pid}", signal.as_raw()), err.into())),
    }
}

pub(crate) fn signal(handle: &TaskHandle, signal: i32) -> Result<(), DriverError> {
    let (pid, ticks, _) = process_of(handle)?;
    if !alive(pid, ticks) {
        return Err(DriverError::TaskGone(format!("process {pid} is not running")));
    }
    let signal =
        Signal::from_named_raw(signal).ok_or_else(|| DriverError::Start(format!("unknown signal {signal}")))?;
    signal_group(pid, signal)
}

/// Waits until the process is gone, at most `timeout`; true when it is.
fn wait_gone(pid: i32, ticks: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid, ticks) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

pub(crate) fn stop(handle: &TaskHandle, kill_timeout: Duration) -> Result<(), DriverError> {
    let (pid, ticks, _) = process_of(handle)?;
    if alive(pid, ticks) {
        signal_group(pid, Signal::TERM)?;
        if wait_gone(pid, ticks, kill_timeout) {
            // What the task started and left behind goes too.
            return signal_group(pid, Signal::KILL);
        }
    }
    kill(pid, ticks)
}

fn kill(pid: i32, ticks: u64) -> Result<(), DriverError> {
    if !alive(pid, ticks) {
        return Ok(());
    }
    signal_group(pid, Signal::KILL)?;
    if wait_gone(pid, ticks, KILL_WAIT_MAX) {
        Ok(())
    } else {
        Err(DriverError::Start(format!("process {pid} survived SIGKILL for {KILL_WAIT_MAX:?}")))
    }
}

pub(crate) fn recover(handle: &TaskHandle) -> Result<(), DriverError> {
    let (pid, ticks, _) = process_of(handle)?;
    // A task that exited while no agent ran is not lost when its executor
    // runs or recorded how it ended: `wait` reports that.
    let known_end = executor_of(handle).is_some_and(|executor| {
        alive(executor.pid, executor.start_ticks) || executor::read_status(&executor.dir).is_some()
    });
    if !alive(pid, ticks) && !known_end {
        return Err(DriverError::TaskGone(format!("process {pid} is not running")));
    }
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let fifo = fifo_path(&handle.log_dir, &handle.task_name, stream);
        let reader = open_fifo_reader(&fifo)?;
        start_pump(fifo, reader, &handle.log_dir, &handle.task_name, stream, handle.logs);
    }
    Ok(())
}

/// Kills the task if it runs, reaps it if it is our child, removes the fifos.
pub(crate) fn destroy(handle: &TaskHandle) -> Result<(), DriverError> {
    let (pid, ticks, _) = process_of(handle)?;
    kill(pid, ticks)?;
    if let Some(raw) = Pid::from_raw(pid) {
        // Not our child, or already reaped by `wait`: nothing to do.
        let _ = rustix::process::waitpid(Some(raw), WaitOptions::NOHANG);
    }
    if let Some(executor) = executor_of(handle) {
        // The executor exits right after recording the status; one that
        // does not (stopped, stuck) is killed, and reaped if ours.
        let deadline = Instant::now() + EXECUTOR_EXIT_MAX;
        while !reap_if_exited(executor.pid) && alive(executor.pid, executor.start_ticks) {
            if Instant::now() >= deadline {
                if let Some(raw) = Pid::from_raw(executor.pid) {
                    let _ = rustix::process::kill_process(raw, Signal::KILL);
                }
                std::thread::sleep(POLL_INTERVAL);
                reap_if_exited(executor.pid);
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        // The status has been read (or never will be): a destroyed task is
        // gone for `recover`.
        let _ = std::fs::remove_dir_all(&executor.dir);
    }
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let _ = std::fs::remove_file(fifo_path(&handle.log_dir, &handle.task_name, stream));
    }
    Ok(())
}
