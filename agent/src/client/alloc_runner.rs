//! Runs one allocation: its directory tree, each task's environment and a
//! [`TaskRunner`] thread per task, and the allocation's client status
//! derived from its tasks' states the way Nomad derives it.
//!
//! An [`AllocRunner`] holds no thread of its own: the client agent's
//! allocation loop owns every runner, feeds it the task updates its task
//! runners send ([`AllocRunner::on_task_update`]) and the servers' changes
//! ([`AllocRunner::update_alloc`]), and asks it for the report to send
//! ([`AllocRunner::client_update`]). Only the blocking work has threads:
//! one per task (a task runner blocks on its task) and one per kill.
//!
//! Tasks start in their lifecycle order ([`super::lifecycle`]: prestart,
//! main, poststart, poststop), decided after every change by the pure
//! [`decide`] and applied here. A task that fails for good takes its
//! siblings down, as in Nomad (poststop tasks still run after); a task that
//! cannot even be set up (an unknown driver, a directory that cannot be
//! made) fails the allocation before anything starts, with an event saying
//! why.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use caravan_engine::clock::Clock;
use caravan_engine::ids::{AllocId, DeploymentId};
use caravan_engine::model::{
    AllocClientUpdate, AllocHealthReport, Allocation, ClientStatus, MAX_TASK_EVENTS, TaskEvent, TaskLifecycleState,
    TaskState,
};

use super::driver::{Driver, LogConfig, PortMapping, TaskDirs, TaskHandle, TaskResources, TaskSpec};
use super::env::{NodeEnv, device_env, task_devices, task_env};
use super::health::{HealthPolicy, TaskHealthView, Verdict, assess};
use super::lifecycle::{Action, EndReason, Stage, TaskView, decide};
use super::state_db::StoredAlloc;
use super::task_runner::{KillHandle, TaskRunner, TaskRunnerConfig, TaskStateUpdate};

/// What every allocation runner of an agent shares.
#[derive(Debug, Clone)]
pub struct AllocContext {
    /// Drivers by name (`raw_exec`, `exec`, `docker`).
    pub drivers: BTreeMap<String, Arc<dyn Driver>>,
    /// Where allocation directories go: `<alloc root>/<alloc id>/`.
    pub alloc_root: std::path::PathBuf,
    pub node: NodeEnv,
    pub clock: Arc<dyn Clock>,
    /// Where task runners send their state changes.
    pub updates: Sender<TaskStateUpdate>,
}

/// One task of the allocation, as the runner tracks it.
#[derive(Debug)]
struct TaskSlot {
    stage: Stage,
    leader: bool,
    /// The task's state as last reported (merged over `base`).
    state: TaskState,
    /// The state an earlier agent left, when this task was recovered: its
    /// events and restart count go under what the new task runner reports.
    base: Option<TaskState>,
    /// What starting the task takes, until its turn comes.
    prepared: Option<Prepared>,
    /// A task runner was started for it.
    launched: bool,
    /// `None` when no task runner runs (the task never started or is done).
    kill: Option<KillHandle>,
    /// Its kill was requested.
    killing: bool,
    /// When it last went to running, as this agent saw it (0: not running).
    running_since_ns: i64,
}

impl TaskSlot {
    fn view(&self) -> TaskView {
        TaskView {
            stage: self.stage,
            leader: self.leader,
            state: self.state.state,
            failed: self.state.failed,
            launched: self.launched,
            killing: self.killing,
        }
    }
}

/// Runs one allocation; see the module documentation.
#[derive(Debug)]
pub struct AllocRunner {
    alloc: Arc<Allocation>,
    /// By task name; a `BTreeMap` so reports list tasks in a stable order.
    tasks: BTreeMap<String, TaskSlot>,
    /// The allocation was stopped (by the servers, or it left this node):
    /// every task but the poststop ones is killed.
    stopped: bool,
    clock: Arc<dyn Clock>,
    updates: Sender<TaskStateUpdate>,
    /// Deployment health, decided by this agent ([`super::health`]).
    health: HealthTracking,
}

/// The health decision for the allocation's current deployment.
#[derive(Debug, Clone, Copy, Default)]
struct HealthTracking {
    /// The deployment tracked, and since when.
    deployment_id: Option<DeploymentId>,
    since_ns: i64,
    /// The decision, once made: healthy or not, and when.
    decided: Option<(bool, i64)>,
}

/// Nomad's allocation client status from its tasks (`getClientStatus`): any
/// failed task fails it; else any running task makes it running; else any
/// pending task keeps it pending; else every task is dead and it is complete.
pub fn derive_client_status<'a>(states: impl IntoIterator<Item = &'a TaskState>) -> (ClientStatus, &'static str) {
    let (mut failed, mut running, mut pending) = (false, false, false);
    for state in states {
        match state.state {
            TaskLifecycleState::Dead if state.failed => failed = true,
            TaskLifecycleState::Dead => {}
            TaskLifecycleState::Running => running = true,
            TaskLifecycleState::Pending => pending = true,
        }
    }
    if failed {
        (ClientStatus::Failed, "Failed tasks")
    } else if running {
        (ClientStatus::Running, "Tasks are running")
    } else if pending {
        (ClientStatus::Pending, "No tasks have started")
    } else {
        (ClientStatus::Complete, "All tasks have completed")
    }
}

/// `state` reported by a task runner started by this agent, under what an
/// earlier agent reported for the same task: the older events first (the
/// last [`MAX_TASK_EVENTS`] kept) and the restarts added up.
fn merge_states(base: &TaskState, new: &TaskState) -> TaskState {
    let mut merged = new.clone();
    let mut events: Vec<TaskEvent> = base.events.iter().chain(new.events.iter()).cloned().collect();
    let excess = events.len().saturating_sub(MAX_TASK_EVENTS);
    events.drain(..excess);
    merged.events = events;
    merged.restarts = base.restarts.saturating_add(new.restarts);
    merged.last_restart_ns = base.last_restart_ns.max(new.last_restart_ns);
    if base.started_at_ns != 0 {
        merged.started_at_ns = base.started_at_ns;
    }
    merged
}

/// A dead task that never ran, with the event that says why.
fn dead_state(kind: &str, message: &str, failed: bool, now_ns: i64) -> TaskState {
    let mut state = TaskState::pending();
    let mut event = TaskEvent::new(kind, now_ns, message);
    event.fails_task = failed;
    state.push_event(event);
    state.state = TaskLifecycleState::Dead;
    state.failed = failed;
    state.finished_at_ns = now_ns;
    state
}

/// The event a task gets when it ends (or never starts) for `reason`.
fn end_event(reason: EndReason, failed_task: Option<&str>, now_ns: i64) -> TaskEvent {
    match reason {
        EndReason::SiblingFailed(_) => {
            let name = failed_task.unwrap_or("?");
            TaskEvent::new("Sibling Task Failed", now_ns, &format!("Task's sibling {name:?} failed"))
        }
        EndReason::LeaderDead => TaskEvent::new("Leader Task Dead", now_ns, "Leader Task in Group dead"),
        EndReason::MainDead => TaskEvent::new("Main Tasks Dead", now_ns, "Main tasks in the group died"),
        EndReason::Stopped => TaskEvent::new("Killed", now_ns, "Task killed before it started"),
    }
}

/// Bound on the rounds of [`decide`] after one change: each round launches,
/// kills or buries at least one task, so three per task and one to settle.
fn decide_rounds_max(tasks: usize) -> usize {
    3 * tasks + 1
}

fn nanos(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

/// Why a task cannot even start: the event kind and its message.
type SetupFailure = (&'static str, String);

/// Writes `payload` to `file` under `local_dir` (as Nomad's dispatch hook,
/// without snappy: Caravan stores the payload as it was sent). The task may
/// have planted symlinks in `local/` on an earlier run (an agent restart
/// prepares its tasks again), so no component of the path is followed
/// through a symlink: directories are checked and created one at a time
/// and the file is opened with `O_NOFOLLOW`.
pub(crate) fn write_dispatch_payload(local_dir: &Path, file: &str, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    if let Some(problem) = caravan_engine::model::dispatch_payload_file_problem(file) {
        return Err(invalid(format!("{file:?} {problem}")));
    }
    // Lexically resolved: the check above guarantees `..` never climbs out.
    let mut parts: Vec<&str> = Vec::new();
    for part in file.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    let (name, dirs) = parts.split_last().ok_or_else(|| invalid(format!("{file:?} names no file")))?;
    let mut path = local_dir.to_path_buf();
    for dir in dirs {
        path.push(dir);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(invalid(format!("{} is not a directory", path.display()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&path)?,
            Err(err) => return Err(err),
        }
    }
    path.push(name);
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)?;
    handle.write_all(payload)
}

/// Everything needed to start one task.
#[derive(Debug)]
struct Prepared {
    driver: Arc<dyn Driver>,
    spec: TaskSpec,
    config: TaskRunnerConfig,
}

impl AllocRunner {
    /// The allocation's directory: `<alloc root>/<alloc id>`.
    pub fn alloc_dir(alloc_root: &Path, alloc_id: AllocId) -> std::path::PathBuf {
        alloc_root.join(alloc_id.to_string())
    }

    /// Starts a new allocation: builds its directories and starts the tasks
    /// whose turn it is. Nothing here fails the agent: a task that cannot be
    /// set up fails the allocation instead.
    pub fn start(alloc: Arc<Allocation>, ctx: &AllocContext) -> AllocRunner {
        let recovered: BTreeMap<String, (TaskState, Option<TaskHandle>)> = BTreeMap::new();
        AllocRunner::launch(alloc, ctx, recovered)
    }

    /// Restores an allocation an earlier agent ran: tasks that were dead
    /// stay dead; a task with a handle is re-attached
    /// ([`TaskRunner::run_recovered`]: one that is gone is restarted under
    /// the restart policy); any other task starts afresh when its turn
    /// comes.
    pub fn restore(stored: StoredAlloc, ctx: &AllocContext) -> AllocRunner {
        let recovered = stored.tasks.into_iter().map(|(name, task)| (name, (task.state, task.handle))).collect();
        AllocRunner::launch(Arc::new(stored.alloc), ctx, recovered)
    }

    fn launch(
        alloc: Arc<Allocation>,
        ctx: &AllocContext,
        mut recovered: BTreeMap<String, (TaskState, Option<TaskHandle>)>,
    ) -> AllocRunner {
        let now = ctx.clock.now_ns();
        let group = alloc.group();
        let mut runner = AllocRunner {
            alloc: Arc::clone(&alloc),
            tasks: BTreeMap::new(),
            // A recovered allocation the servers stopped starts nothing new.
            stopped: alloc.server_terminal(),
            clock: Arc::clone(&ctx.clock),
            updates: ctx.updates.clone(),
            health: HealthTracking::default(),
        };
        let slot = |task: &caravan_engine::model::Task, state: TaskState| {
            let running = state.state == TaskLifecycleState::Running;
            TaskSlot {
                stage: Stage::of(task.lifecycle),
                leader: task.leader,
                state,
                base: None,
                prepared: None,
                launched: false,
                kill: None,
                killing: false,
                // A recovered task that runs counts from now: this agent did not
                // see it start.
                running_since_ns: if running { now } else { 0 },
            }
        };

        // Every task of the group is prepared before any starts, so a group
        // that cannot run starts nothing.
        let mut prepared: Vec<(usize, Result<Prepared, SetupFailure>)> = Vec::new();
        for (index, task) in group.tasks.iter().enumerate() {
            let name = task.name.to_string();
            if let Some((state, _)) = recovered.get(&name)
                && state.state == TaskLifecycleState::Dead
            {
                // Finished before the restart; its state says how.
                let (state, _) = recovered.remove(&name).unwrap_or_else(|| (TaskState::pending(), None));
                runner.tasks.insert(name, TaskSlot { launched: true, ..slot(task, state) });
                continue;
            }
            prepared.push((index, AllocRunner::prepare(&alloc, index, ctx)));
        }
        let first_failure =
            prepared.iter().find_map(|(index, result)| result.as_ref().err().map(|_| group.tasks[*index].name.clone()));
        for (index, result) in prepared {
            let task = &group.tasks[index];
            let name = task.name.to_string();
            let (base, handle) = match recovered.remove(&name) {
                Some((state, handle)) => (Some(state), handle),
                None => (None, None),
            };
            match (result, &first_failure) {
                (Err((kind, message)), _) => {
                    let dead = dead_state(kind, &message, true, now);
                    runner.tasks.insert(name, slot(task, dead));
                }
                (Ok(_), Some(failed)) => {
                    let message = format!("Task's sibling {failed:?} failed");
                    let dead = dead_state("Sibling Task Failed", &message, false, now);
                    runner.tasks.insert(name, slot(task, dead));
                }
                (Ok(prepared), None) => {
                    let state = base.clone().unwrap_or_else(TaskState::pending);
                    let mut new = TaskSlot { base, prepared: Some(prepared), ..slot(task, state) };
                    if let Some(handle) = handle {
                        // It was running: re-attach now, whatever its stage.
                        runner.spawn(&name, &mut new, Some(handle));
                    }
                    runner.tasks.insert(name, new);
                }
            }
        }
        runner.track_health(now);
        runner.advance();
        runner
    }

    /// Directories, environment and driver of task `index`.
    fn prepare(alloc: &Allocation, index: usize, ctx: &AllocContext) -> Result<Prepared, SetupFailure> {
        let group = alloc.group();
        let task = &group.tasks[index];
        let driver = ctx.drivers.get(&*task.driver).cloned().ok_or_else(|| {
            ("Driver Failure", format!("failed to find a driver for task: unknown driver {:?}", task.driver))
        })?;
        let dirs = TaskDirs::new(&AllocRunner::alloc_dir(&ctx.alloc_root, alloc.id), &task.name);
        dirs.create().map_err(|err| ("Setup Failure", format!("failed to build task directories: {err}")))?;
        // Nomad's dispatch hook: a dispatched job's payload, in `local/`.
        if let Some(file) = &task.dispatch_payload_file
            && !alloc.job.payload.is_empty()
        {
            write_dispatch_payload(&dirs.local_dir, file, &alloc.job.payload).map_err(|err| {
                ("Setup Failure", format!("failed to write the dispatch payload to local/{file}: {err}"))
            })?;
        }
        let spec = TaskSpec {
            alloc_id: alloc.id.to_string(),
            task_name: task.name.to_string(),
            config: task.config.clone(),
            env: task_env(alloc, task, &dirs, &ctx.node),
            device_env: device_env(alloc, index),
            devices: task_devices(alloc, index),
            user: task.user.as_ref().map(|user| user.to_string()),
            resources: TaskResources { cpu_mhz: task.resources.cpu_mhz, memory_mb: task.resources.memory_mb },
            dirs,
            ports: alloc
                .resources
                .ports
                .iter()
                .map(|port| PortMapping {
                    label: port.label.to_string(),
                    host_port: port.value,
                    container_port: if port.to == 0 { port.value } else { port.to },
                })
                .collect(),
            logs: LogConfig::default(),
        };
        let config = TaskRunnerConfig {
            job_type: alloc.job.job_type,
            restart_policy: group.restart_policy.clone(),
            kill_timeout: nanos(task.kill_timeout_ns),
            lifecycle: task.lifecycle,
        };
        Ok(Prepared { driver, spec, config })
    }

    /// Starts the task runner thread of one task (re-attaching to `handle`
    /// when it was recovered running).
    fn spawn(&self, name: &str, slot: &mut TaskSlot, handle: Option<TaskHandle>) {
        assert!(!slot.launched, "task {name} launched twice");
        let Some(Prepared { driver, spec, config }) = slot.prepared.take() else {
            // Only prepared tasks are ever left pending and unlaunched.
            unreachable!("task {name} has nothing to start");
        };
        slot.launched = true;
        let alloc_id = spec.alloc_id.clone();
        let runner = TaskRunner::new(driver, spec, config, Arc::clone(&self.clock), self.updates.clone());
        let kill = runner.kill_handle();
        let thread_name = format!("task-{}-{name}", alloc_id.get(..8).unwrap_or(&alloc_id));
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || match handle {
            Some(handle) => runner.run_recovered(handle),
            None => runner.run(),
        });
        match spawned {
            Ok(_) => slot.kill = Some(kill),
            Err(err) => {
                let message = format!("failed to start the task runner thread: {err}");
                slot.state = dead_state("Setup Failure", &message, true, self.clock.now_ns());
                slot.base = None;
            }
        }
    }

    /// Applies the lifecycle decisions until none is left: starts the
    /// tasks whose turn came, kills and buries the ones whose time is up.
    fn advance(&mut self) {
        let rounds_max = decide_rounds_max(self.tasks.len());
        for _ in 0..rounds_max {
            let views: Vec<TaskView> = self.tasks.values().map(TaskSlot::view).collect();
            let actions = decide(&views, self.stopped);
            if actions.is_empty() {
                return;
            }
            let names: Vec<String> = self.tasks.keys().cloned().collect();
            let now = self.clock.now_ns();
            let mut kills: Vec<(KillHandle, Option<TaskEvent>, u8)> = Vec::new();
            for action in actions {
                match action {
                    Action::Start(index) => {
                        let name = &names[index];
                        tracing::debug!(alloc = %self.alloc.id, task = %name, "starting task");
                        let mut slot = self.tasks.remove(name).unwrap_or_else(|| unreachable!("task {name} listed"));
                        self.spawn(name, &mut slot, None);
                        self.tasks.insert(name.clone(), slot);
                    }
                    Action::Kill(index, reason) => {
                        let failed = failed_name(&names, reason);
                        let slot = self.slot_at(&names, index);
                        slot.killing = true;
                        // Stop sends no event of its own but "Killing"; the
                        // others say why.
                        let event = (reason != EndReason::Stopped).then(|| end_event(reason, failed, now));
                        // Nomad's order: the leader, then the other tasks, sidecars last.
                        let order = if slot.leader {
                            0
                        } else if slot.stage.is_sidecar() {
                            2
                        } else {
                            1
                        };
                        if let Some(kill) = slot.kill.clone() {
                            kills.push((kill, event, order));
                        }
                    }
                    Action::Skip(index, reason) => {
                        let failed = failed_name(&names, reason);
                        let slot = self.slot_at(&names, index);
                        slot.prepared = None;
                        slot.state.push_event(end_event(reason, failed, now));
                        slot.state.state = TaskLifecycleState::Dead;
                        slot.state.failed = false;
                        slot.state.finished_at_ns = now;
                    }
                }
            }
            self.kill(kills);
        }
        // Every round changes a task for good, so the rounds are bounded;
        // only kills that could not be sent are asked again. The next
        // change of a task tries again.
        tracing::error!(alloc = %self.alloc.id, rounds_max, "lifecycle decisions did not settle");
    }

    fn slot_at(&mut self, names: &[String], index: usize) -> &mut TaskSlot {
        let name = &names[index];
        self.tasks.get_mut(name).unwrap_or_else(|| unreachable!("task {name} listed"))
    }

    /// Kills tasks on a thread of its own, each with its kill timeout; the
    /// tasks report "Killing" and "Killed" as they go. Lower `order` first.
    fn kill(&mut self, mut kills: Vec<(KillHandle, Option<TaskEvent>, u8)>) {
        if kills.is_empty() {
            return;
        }
        kills.sort_by_key(|(_, _, order)| *order);
        let name = format!("kill-{}", self.alloc.id.to_string().get(..8).unwrap_or_default());
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            for order in 0..=2u8 {
                std::thread::scope(|scope| {
                    for (kill, event, _) in kills.iter().filter(|(_, _, o)| *o == order) {
                        scope.spawn(move || kill.kill_because(event.clone()));
                    }
                });
            }
        });
        if let Err(err) = spawned {
            tracing::error!(alloc = %self.alloc.id, %err, "cannot start a thread to kill the tasks");
            // Asked again at the next change.
            for slot in self.tasks.values_mut() {
                if slot.state.state != TaskLifecycleState::Dead {
                    slot.killing = false;
                }
            }
        }
    }

    pub fn alloc(&self) -> &Arc<Allocation> {
        &self.alloc
    }

    pub fn id(&self) -> AllocId {
        self.alloc.id
    }

    /// Takes a task runner's report; returns the task's state as the
    /// allocation reports it, or `None` for a task it does not know. Then
    /// starts, kills or buries what the change calls for: the next
    /// lifecycle stage, the siblings of a task that failed for good.
    pub fn on_task_update(&mut self, update: &TaskStateUpdate) -> Option<TaskState> {
        let now = self.clock.now_ns();
        let slot = self.tasks.get_mut(&update.task_name)?;
        let was_running = slot.state.state == TaskLifecycleState::Running;
        slot.state = match &slot.base {
            Some(base) => merge_states(base, &update.state),
            None => update.state.clone(),
        };
        if slot.state.state != TaskLifecycleState::Running {
            slot.running_since_ns = 0;
        } else if !was_running {
            slot.running_since_ns = now;
        }
        if slot.state.state == TaskLifecycleState::Dead {
            slot.kill = None;
        }
        let state = slot.state.clone();
        if state.state == TaskLifecycleState::Dead && state.failed {
            tracing::info!(alloc = %self.alloc.id, task = %update.task_name, "task failed");
        }
        self.advance();
        Some(state)
    }

    /// The servers changed the allocation: a stop or eviction kills its
    /// tasks. Other changes (a new job version) apply to tasks started
    /// later; in-place updates of running tasks come later.
    pub fn update_alloc(&mut self, alloc: Arc<Allocation>) {
        let stop = alloc.server_terminal();
        self.alloc = alloc;
        self.track_health(self.clock.now_ns());
        if stop {
            self.kill_all();
        }
    }

    /// Start tracking health when the allocation joins a deployment (or
    /// moves to another one); stop when it leaves or is stopped.
    fn track_health(&mut self, now_ns: i64) {
        let wanted = HealthPolicy::of(&self.alloc).and(self.alloc.deployment_id);
        if wanted != self.health.deployment_id {
            self.health = HealthTracking { deployment_id: wanted, since_ns: now_ns, decided: None };
        }
    }

    /// Decides deployment health at `now_ns` if it can be decided now.
    /// Returns whether a decision was just made (a report is due) and,
    /// while undecided, when to look again.
    pub fn check_health(&mut self, now_ns: i64) -> (bool, Option<i64>) {
        if self.health.deployment_id.is_none() || self.health.decided.is_some() {
            return (false, None);
        }
        let Some(policy) = HealthPolicy::of(&self.alloc) else { return (false, None) };
        let views: Vec<TaskHealthView<'_>> = self
            .tasks
            .values()
            .map(|slot| TaskHealthView {
                stage: slot.stage,
                state: &slot.state,
                running_since_ns: slot.running_since_ns,
            })
            .collect();
        match assess(policy, &views, self.health.since_ns, now_ns) {
            Verdict::Pending { check_at_ns } => (false, check_at_ns),
            verdict => {
                let healthy = verdict == Verdict::Healthy;
                tracing::info!(alloc = %self.alloc.id, healthy, "allocation deployment health decided");
                self.health.decided = Some((healthy, now_ns));
                (true, None)
            }
        }
    }

    /// Stops the allocation: kills every task that still runs but the
    /// poststop ones (which then run), and starts nothing else. Calling it
    /// again does nothing.
    pub fn kill_all(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.advance();
    }

    /// Every task is dead: nothing of the allocation runs any more.
    pub fn is_finished(&self) -> bool {
        self.tasks.values().all(|slot| slot.state.state == TaskLifecycleState::Dead)
    }

    /// The allocation's client status and description.
    pub fn client_status(&self) -> (ClientStatus, &'static str) {
        derive_client_status(self.tasks.values().map(|slot| &slot.state))
    }

    /// The report for the servers: status and every task's state.
    pub fn client_update(&self, now_ns: i64) -> AllocClientUpdate {
        let (client_status, description) = self.client_status();
        AllocClientUpdate {
            alloc_id: self.alloc.id,
            client_status,
            client_description: description.into(),
            at_ns: now_ns,
            task_states: self.tasks.iter().map(|(name, slot)| (Arc::from(name.as_str()), slot.state.clone())).collect(),
            deployment_health: match (self.health.deployment_id, self.health.decided) {
                (Some(deployment_id), Some((healthy, at_ns))) => {
                    Some(AllocHealthReport { deployment_id, healthy, at_ns })
                }
                _ => None,
            },
        }
    }

    /// Every task's current state, by name.
    pub fn task_states(&self) -> impl Iterator<Item = (&str, &TaskState)> {
        self.tasks.iter().map(|(name, slot)| (name.as_str(), &slot.state))
    }
}

/// The failed task an end reason names.
fn failed_name(names: &[String], reason: EndReason) -> Option<&str> {
    match reason {
        EndReason::SiblingFailed(index) => names.get(index).map(String::as_str),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(lifecycle: TaskLifecycleState, failed: bool) -> TaskState {
        TaskState { state: lifecycle, failed, ..TaskState::pending() }
    }

    #[test]
    fn client_status_follows_nomad() {
        use TaskLifecycleState::*;
        let status = |states: &[TaskState]| derive_client_status(states).0;
        assert_eq!(status(&[state(Pending, false), state(Pending, false)]), ClientStatus::Pending);
        assert_eq!(status(&[state(Running, false), state(Pending, false)]), ClientStatus::Running);
        assert_eq!(status(&[state(Running, false), state(Dead, false)]), ClientStatus::Running);
        assert_eq!(status(&[state(Dead, false), state(Dead, false)]), ClientStatus::Complete);
        assert_eq!(status(&[state(Running, false), state(Dead, true)]), ClientStatus::Failed);
        assert_eq!(status(&[]), ClientStatus::Complete);
    }

    fn context(root: &Path, updates: Sender<TaskStateUpdate>) -> AllocContext {
        use caravan_engine::clock::SystemClock;

        use crate::client::driver::raw_exec::RawExecDriver;

        AllocContext {
            drivers: [("raw_exec".to_string(), Arc::new(RawExecDriver::new()) as Arc<dyn Driver>)].into(),
            alloc_root: root.to_path_buf(),
            node: NodeEnv {
                region: "global".into(),
                datacenter: "dc1".into(),
                node_id: "n".into(),
                node_name: "n".into(),
                ip: "127.0.0.1".into(),
            },
            clock: Arc::new(SystemClock),
            updates,
        }
    }

    #[test]
    fn a_restored_allocation_does_not_rerun_its_finished_prestart_task() {
        use caravan_engine::ids::IdGen;
        use caravan_engine::model::{ConfigValue, Job, JobType, LifecycleHook, Task, TaskGroup, TaskLifecycle};

        use crate::client::state_db::{StoredAlloc, StoredTask};

        let root = tempfile::tempdir().unwrap();
        let (updates, received) = std::sync::mpsc::channel();
        let ctx = context(root.path(), updates);
        let command = |path: &str| {
            ConfigValue::Map([(Arc::from("command"), ConfigValue::String(path.into()))].into_iter().collect())
        };
        // The prestart task would fail if it ran again.
        let mut init = Task::new("init", "raw_exec");
        init.config = command("/bin/false");
        init.lifecycle = Some(TaskLifecycle { hook: LifecycleHook::Prestart, sidecar: false });
        let mut main = Task::new("t", "raw_exec");
        main.config = command("/bin/true");
        let job =
            Arc::new(Job::new("j", JobType::Batch, vec![TaskGroup::new("g", 1, JobType::Batch, vec![init, main])]));
        let alloc = caravan_engine::fixtures::allocation(&mut IdGen::with_seed(4), &job, 0);
        let mut done = TaskState::pending();
        done.state = TaskLifecycleState::Dead;
        let stored = StoredAlloc {
            alloc,
            tasks: [("init".to_string(), StoredTask { state: done, handle: None })].into_iter().collect(),
        };
        let mut runner = AllocRunner::restore(stored, &ctx);
        while !runner.is_finished() {
            let update = received.recv_timeout(Duration::from_secs(60)).expect("task updates");
            assert_eq!(update.task_name, "t", "only the main task runs");
            runner.on_task_update(&update);
        }
        assert_eq!(runner.client_status().0, ClientStatus::Complete);
    }

    #[test]
    fn an_unknown_driver_fails_the_allocation_before_anything_starts() {
        use caravan_engine::ids::IdGen;
        use caravan_engine::model::{Job, JobType, Task, TaskGroup};

        let root = tempfile::tempdir().unwrap();
        let (updates, received) = std::sync::mpsc::channel();
        let ctx = context(root.path(), updates);
        let tasks = vec![Task::new("web", "raw_exec"), Task::new("gpu", "no-such-driver")];
        let job = Arc::new(Job::new("j", JobType::Service, vec![TaskGroup::new("g", 1, JobType::Service, tasks)]));
        let alloc = caravan_engine::fixtures::allocation(&mut IdGen::with_seed(3), &job, 0);
        let runner = AllocRunner::start(Arc::new(alloc), &ctx);
        assert!(runner.is_finished());
        assert_eq!(runner.client_status().0, ClientStatus::Failed);
        let states: BTreeMap<&str, &TaskState> = runner.task_states().collect();
        let failed = states["gpu"].events.last().unwrap();
        assert_eq!(&*failed.kind, "Driver Failure");
        assert!(failed.message.contains("no-such-driver"), "{}", failed.message);
        assert!(states["gpu"].failed);
        assert_eq!(&*states["web"].events.last().unwrap().kind, "Sibling Task Failed");
        assert!(!states["web"].failed);
        assert!(received.try_recv().is_err(), "no task runner started");
    }

    #[test]
    fn recovered_states_keep_their_history() {
        let mut base = TaskState::pending();
        for i in 0..8 {
            base.push_event(TaskEvent::new("Restarting", i, "old"));
        }
        base.restarts = 3;
        base.started_at_ns = 5;
        let mut new = state(TaskLifecycleState::Running, false);
        new.restarts = 1;
        new.push_event(TaskEvent::new("Restarting", 100, "new"));
        new.push_event(TaskEvent::new("Started", 101, "new"));
        new.push_event(TaskEvent::new("Started", 102, "new"));
        let merged = merge_states(&base, &new);
        assert_eq!(merged.restarts, 4);
        assert_eq!(merged.started_at_ns, 5);
        assert_eq!(merged.events.len(), MAX_TASK_EVENTS);
        assert_eq!(merged.events.last().map(|e| e.time_ns), Some(102));
        assert_eq!(merged.events[0].time_ns, 1, "the oldest event goes first");
    }

    #[test]
    fn the_dispatch_payload_is_written_inside_local_and_never_through_a_symlink() {
        let root = std::env::temp_dir().join(format!("caravan-payload-{}", std::process::id()));
        let local = root.join("local");
        std::fs::create_dir_all(&local).unwrap();
        write_dispatch_payload(&local, "in/put.json", b"{}").unwrap();
        assert_eq!(std::fs::read(local.join("in/put.json")).unwrap(), b"{}");
        write_dispatch_payload(&local, "./a/../b.txt", b"x").unwrap();
        assert_eq!(std::fs::read(local.join("b.txt")).unwrap(), b"x");
        assert!(write_dispatch_payload(&local, "../escape", b"x").is_err());
        assert!(write_dispatch_payload(&local, "/etc/passwd", b"x").is_err());
        // A symlink the task left behind is not followed.
        let outside = root.join("outside");
        std::fs::write(&outside, "kept").unwrap();
        std::os::unix::fs::symlink(&outside, local.join("link")).unwrap();
        std::os::unix::fs::symlink(&root, local.join("dirlink")).unwrap();
        assert!(write_dispatch_payload(&local, "link", b"x").is_err());
        assert!(write_dispatch_payload(&local, "dirlink/outside", b"x").is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"kept");
        let _ = std::fs::remove_dir_all(&root);
    }
}
