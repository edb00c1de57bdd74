//! The task executor: a small supervisor between the agent and a `raw_exec`
//! or `exec` task, as Nomad's executor plugin, so that a task re-attached by
//! a restarted agent still reports its exit status.
//!
//! The agent runs its own binary as `caravan executor --dir D [--uid U --gid
//! G] -- PROGRAM ARGS...`. The executor leaves the agent's session
//! (`setsid`), starts the task as the leader of its own process group,
//! writes `D/started.json` (the task's pid and start time), waits for the
//! task and writes `D/status.json` (exit code, signal, finish time), each by
//! an atomic rename. It is the task's parent, so the status is exact however
//! often the agent dies and comes back. `D` is [`executor_dir`], beside the
//! task's directory and writable by the agent's user alone: an `exec`
//! task's user owns its own directory and could otherwise replace `D`.
//!
//! Signals never go to the executor: the agent signals the task's process
//! group, which the executor is not in, and the executor outlives the task
//! by the few microseconds it takes to write the status. The agent watches
//! the executor's pid (its child, or through `/proc` after a restart) and
//! reads the status when it exits.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::DriverError;

/// The hidden subcommand of the `caravan` binary that runs an executor.
pub const EXECUTOR_SUBCOMMAND: &str = "executor";
/// The executors' directory inside the allocation directory, beside the
/// tasks' directories: `<alloc>/.executor/<task>/`.
pub const EXECUTOR_DIR_NAME: &str = ".executor";
/// Mode of the executors' directories: the agent's user alone. An `exec`
/// task's user owns its task directory, so anything inside it could be
/// renamed or replaced by the task (a forged `status.json`); the allocation
/// directory and these belong to the agent, and tasks cannot write them
/// (an `exec` task does not even see them: it is chrooted in its own).
const EXECUTOR_DIR_MODE: u32 = 0o700;
const STARTED_FILE: &str = "started.json";
const STATUS_FILE: &str = "status.json";
/// How long the agent waits for the executor to report the task's pid:
/// starting two processes takes milliseconds; a loaded machine may take a
/// second or two, and a start never blocks the task runner forever.
const START_REPORT_MAX: Duration = Duration::from_secs(10);
/// How often the agent looks for `started.json`: short against process
/// start times, a handful of wakeups per task start.
const START_POLL: Duration = Duration::from_millis(2);
/// Exit code of an executor that could not start its task (as a shell's
/// "command not found").
const EXIT_START_FAILED: i32 = 127;
/// Exit code of an executor given bad arguments.
const EXIT_USAGE: i32 = 2;
/// Offset of a signal in an exit code, as shells report a task killed by a
/// signal (SIGKILL → 137).
const SIGNAL_EXIT_CODE_BASE: i32 = 128;

/// Where the executor program is: the agent's own binary, which
/// understands [`EXECUTOR_SUBCOMMAND`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executor {
    program: PathBuf,
}

impl Executor {
    /// `program` must be a `caravan` binary.
    pub fn new(program: impl Into<PathBuf>) -> Executor {
        Executor { program: program.into() }
    }

    /// The running binary, for the `caravan` agent itself.
    pub fn current_exe() -> std::io::Result<Executor> {
        std::env::current_exe().map(Executor::new)
    }

    /// The command that runs `launch` under an executor writing to `dir`.
    pub(crate) fn command(&self, dir: &Path, launch: &Launch) -> Command {
        let mut command = Command::new(&self.program);
        command.arg(EXECUTOR_SUBCOMMAND).arg("--dir").arg(dir);
        if let Some((uid, gid)) = launch.user {
            command.arg("--uid").arg(uid.to_string()).arg("--gid").arg(gid.to_string());
        }
        command.arg("--").arg(&launch.program).args(&launch.args);
        command
    }
}

/// What a process driver starts: the program, its arguments and, when the
/// task runs as another user than the agent, the uid and gid to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) user: Option<(u32, u32)>,
}

/// The executor of a running task, as a task handle stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorHandle {
    pub pid: i32,
    /// Start time in clock ticks since boot (a recycled pid is not ours).
    pub start_ticks: u64,
    /// Where `started.json` and `status.json` are.
    pub dir: PathBuf,
}

/// `started.json`: the task's process, or why it could not start.
#[derive(Debug, Serialize, Deserialize)]
enum Started {
    Task { pid: i32, start_ticks: u64 },
    Failed { error: String },
}

/// `status.json`: how the task ended, recorded by its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code; `128 + signal` for a task killed by a signal.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// When the executor saw the task exit, in ms since the Unix epoch.
    pub finished_at_unix_ms: u64,
}

/// Writes `value` as JSON to `dir/name` through a temporary file and a
/// rename, so a reader sees the whole file or none.
fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The exit status the executor recorded, if it did.
pub fn read_status(dir: &Path) -> Option<ExitStatus> {
    read_json(&dir.join(STATUS_FILE))
}

/// Where a task's executor keeps `started.json` and `status.json`:
/// `<alloc>/.executor/<task>`, outside the task's directory.
pub fn executor_dir(dirs: &super::TaskDirs) -> PathBuf {
    let alloc_root = dirs.task_dir.parent().unwrap_or(&dirs.task_dir);
    let task = dirs.task_dir.file_name().unwrap_or_default();
    alloc_root.join(EXECUTOR_DIR_NAME).join(task)
}

/// Creates `dir` and its parent for the agent's user alone
/// ([`EXECUTOR_DIR_MODE`]) and empties it of an earlier run's files (a
/// restarted task reuses it).
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| DriverError::io(format!("create {}", dir.display()), e))?;
    for path in [dir.parent().unwrap_or(dir), dir] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(EXECUTOR_DIR_MODE))
            .map_err(|e| DriverError::io(format!("chmod {}", path.display()), e))?;
    }
    for name in [STARTED_FILE, STATUS_FILE] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(DriverError::io(format!("remove {}", dir.join(name).display()), err)),
        }
    }
    Ok(())
}

/// Waits for the executor `pid` (the agent's child) to report its task:
/// the task's pid and start time. `exited` says whether the executor is
/// gone (reaping it when it is).
pub(crate) fn wait_started(dir: &Path, exited: impl Fn() -> bool) -> Result<(i32, u64), DriverError> {
    let deadline = Instant::now() + START_REPORT_MAX;
    loop {
        match read_json::<Started>(&dir.join(STARTED_FILE)) {
            Some(Started::Task { pid, start_ticks }) => return Ok((pid, start_ticks)),
            Some(Started::Failed { error }) => return Err(DriverError::Start(error)),
            None => {}
        }
        // Read once more after seeing it exit: it may have written and gone.
        if exited() {
            return match read_json::<Started>(&dir.join(STARTED_FILE)) {
                Some(Started::Task { pid, start_ticks }) => Ok((pid, start_ticks)),
                Some(Started::Failed { error }) => Err(DriverError::Start(error)),
                None => Err(DriverError::Start("the task executor exited before starting the task".into())),
            };
        }
        if Instant::now() >= deadline {
            return Err(DriverError::Start(format!(
                "the task executor did not report the task within {START_REPORT_MAX:?}"
            )));
        }
        std::thread::sleep(START_POLL);
    }
}

/// Arguments of `caravan executor`.
#[derive(Debug)]
struct Args {
    dir: PathBuf,
    user: Option<(u32, u32)>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let (mut dir, mut uid, mut gid) = (None, None, None);
    loop {
        let arg = args.next().ok_or("missing -- PROGRAM")?;
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.to_str() {
            Some("--dir") => dir = Some(PathBuf::from(value("--dir")?)),
            Some("--uid") => {
                uid = Some(value("--uid")?.to_str().and_then(|s| s.parse::<u32>().ok()).ok_or("bad --uid")?)
            }
            Some("--gid") => {
                gid = Some(value("--gid")?.to_str().and_then(|s| s.parse::<u32>().ok()).ok_or("bad --gid")?)
            }
            Some("--") => break,
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let program = args.next().ok_or("missing PROGRAM after --")?;
    let user = match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        (None, None) => None,
        _ => return Err("--uid and --gid go together".into()),
    };
    Ok(Args { dir: dir.ok_or("missing --dir")?, user, program, args: args.collect() })
}

/// Runs the executor when the process was started as one (`caravan
/// executor ...`): returns its exit code, or `None` for any other command
/// line. The `caravan` binary calls this first thing in `main`.
pub fn main_if_executor() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(EXECUTOR_SUBCOMMAND)) {
        return None;
    }
    Some(match parse_args(args) {
        Ok(args) => run(args),
        Err(err) => {
            eprintln!("caravan executor: {err}");
            EXIT_USAGE
        }
    })
}

/// The agent turns transparent huge pages off for itself (its allocator's
/// memory use), and children inherit that: a task gets the machine's own
/// THP policy back, as it would outside Caravan.
fn restore_transparent_huge_pages() {
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(false) {
        eprintln!("caravan executor: cannot restore transparent huge pages for the task ({err})");
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn run(args: Args) -> i32 {
    // Out of the agent's session and process group: nothing aimed at the
    // agent (a terminal's ^C, a kill of its group) reaches the executor.
    let _ = rustix::process::setsid();
    restore_transparent_huge_pages();
    let mut command = Command::new(&args.program);
    command.args(&args.args).process_group(0);
    if let Some((uid, gid)) = args.user {
        command.uid(uid).gid(gid);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let error = format!("{:?}: {err}", args.program);
            if let Err(err) = write_atomic(&args.dir, STARTED_FILE, &Started::Failed { error }) {
                eprintln!("caravan executor: write {STARTED_FILE}: {err}");
            }
            return EXIT_START_FAILED;
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let start_ticks = super::process::stat(pid).map(|(_, ticks)| ticks).unwrap_or(0);
    if let Err(err) = write_atomic(&args.dir, STARTED_FILE, &Started::Task { pid, start_ticks }) {
        // The agent cannot find the task: do not leave it running unseen.
        eprintln!("caravan executor: write {STARTED_FILE}: {err}");
        let _ = child.kill();
        let _ = child.wait();
        return EXIT_START_FAILED;
    }
    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("caravan executor: wait for the task: {err}");
                return 1;
            }
        }
    };
    let signal = status.signal();
    let exit_code = match signal {
        Some(signal) => SIGNAL_EXIT_CODE_BASE + signal,
        None => status.code().unwrap_or(0),
    };
    let record = ExitStatus { exit_code, signal, finished_at_unix_ms: now_unix_ms() };
    match write_atomic(&args.dir, STATUS_FILE, &record) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("caravan executor: write {STATUS_FILE}: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> impl Iterator<Item = OsString> {
        args.iter().map(OsString::from).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn parses_the_command_line() {
        let args =
            parse_args(os(&["--dir", "/d", "--uid", "65534", "--gid", "65534", "--", "/bin/sh", "-c", "x"])).unwrap();
        assert_eq!(args.dir, PathBuf::from("/d"));
        assert_eq!(args.user, Some((65534, 65534)));
        assert_eq!(args.program, OsString::from("/bin/sh"));
        assert_eq!(args.args, [OsString::from("-c"), OsString::from("x")]);
        assert!(parse_args(os(&["--dir", "/d", "--uid", "1", "--", "x"])).is_err());
        assert!(parse_args(os(&["--", "x"])).is_err());
        assert!(parse_args(os(&["--dir", "/d", "--"])).is_err());
    }
}
