//! Runs one task: start it through its driver, wait for it, apply the
//! group's restart policy, and report Nomad's task events and state.
//!
//! [`TaskRunner::run`] blocks (the client gives every task its own thread);
//! [`KillHandle::kill`] from any other thread stops the task with its kill
//! timeout, after which the task is dead, not failed, and never restarted.
//! Every change of the [`TaskState`] goes out on the update channel, with
//! the current [`TaskHandle`] so the alloc runner can persist it and re-attach
//! after an agent restart ([`TaskRunner::run_recovered`]).
//!
//! Restart semantics are Nomad's (client/allocrunner/taskrunner/restarts):
//! a batch task that exits 0 is complete; any other exit (and every exit of
//! a service task) counts one restart in the current interval; past
//! `attempts` restarts within `interval`, mode `fail` ends the task as
//! failed and mode `delay` waits until the interval ends, then starts over.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use caravan_engine::clock::Clock;
use caravan_engine::model::{
    JobType, LifecycleHook, RestartMode, RestartPolicy, TaskEvent, TaskLifecycle, TaskLifecycleState, TaskState, TimeNs,
};

use super::driver::{Driver, DriverError, ExitResult, TaskHandle, TaskSpec};

/// What the runner needs beyond the task: how the group restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunnerConfig {
    /// Batch and sysbatch tasks complete on exit 0; services restart.
    pub job_type: JobType,
    pub restart_policy: RestartPolicy,
    /// Time between SIGTERM and SIGKILL when the task is killed.
    pub kill_timeout: Duration,
    /// The task's lifecycle hook: whether a successful exit completes it.
    pub lifecycle: Option<TaskLifecycle>,
}

/// One state change of a task, for the alloc runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStateUpdate {
    pub alloc_id: String,
    pub task_name: String,
    pub state: TaskState,
    /// The running task's handle, `None` while none runs.
    pub handle: Option<TaskHandle>,
}

#[derive(Debug)]
struct Inner {
    state: TaskState,
    handle: Option<TaskHandle>,
    kill_requested: bool,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the runner out of a restart delay when a kill arrives.
    killed: Condvar,
    alloc_id: String,
    task_name: String,
    updates: Sender<TaskStateUpdate>,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to the state and sends the result.
    fn update(&self, change: impl FnOnce(&mut Inner, TimeNs)) {
        let mut inner = self.lock();
        change(&mut inner, self.clock.now_ns());
        self.send(&inner);
    }

    fn send(&self, inner: &Inner) {
        // A closed channel means nobody listens any more (the alloc runner
        // is gone); the task still runs to its end.
        let _ = self.updates.send(TaskStateUpdate {
            alloc_id: self.alloc_id.clone(),
            task_name: self.task_name.clone(),
            state: inner.state.clone(),
            handle: inner.handle.clone(),
        });
    }

    fn event(&self, event: TaskEvent) {
        self.update(|inner, _| inner.state.push_event(event));
    }
}

/// Stops a task from another thread.
#[derive(Debug, Clone)]
pub struct KillHandle {
    shared: Arc<Shared>,
    driver: Arc<dyn Driver>,
    kill_timeout: Duration,
}

impl KillHandle {
    /// Kills the task (SIGTERM, SIGKILL after the kill timeout) and stops
    /// the runner from restarting it. Returns once the task is gone; a second
    /// call does nothing.
    pub fn kill(&self) {
        self.kill_because(None);
    }

    /// [`KillHandle::kill`], with `reason` (a sibling failed, the main
    /// tasks are done) as the task's event before "Killing".
    pub fn kill_because(&self, reason: Option<TaskEvent>) {
        let handle = {
            let mut inner = self.shared.lock();
            if inner.kill_requested {
                return;
            }
            inner.kill_requested = true;
            if let Some(reason) = reason {
                inner.state.push_event(reason);
            }
            let now = self.shared.clock.now_ns();
            inner.state.push_event(TaskEvent::new(
                "Killing",
                now,
                &format!("Sent interrupt. Waiting {:?} before force killing", self.kill_timeout),
            ));
            self.shared.send(&inner);
            inner.handle.clone()
        };
        self.shared.killed.notify_all();
        if let Some(handle) = handle
            && let Err(err) = self.driver.stop(&handle, self.kill_timeout)
        {
            tracing::warn!(task = %self.shared.task_name, %err, "stopping task failed");
        }
    }
}

/// What the restart tracker decided after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// A batch task exited 0.
    Complete,
    Restart {
        delay: Duration,
        reason: String,
    },
    NotRestarting {
        reason: String,
    },
}

/// Nomad's restart tracker: counts restarts in the current interval.
#[derive(Debug)]
struct RestartTracker {
    policy: RestartPolicy,
    /// A successful exit counts as a restart rather than completing the task.
    restart_on_success: bool,
    count: u32,
    interval_start_ns: TimeNs,
}

/// Whether a successful exit restarts the task (Nomad's
/// `NewRestartTracker`): services restart, batch tasks complete; a sidecar
/// restarts in any job, and other hooks complete in any job.
fn restarts_on_success(job_type: JobType, lifecycle: Option<TaskLifecycle>) -> bool {
    match lifecycle {
        None => !matches!(job_type, JobType::Batch | JobType::SysBatch),
        Some(TaskLifecycle { hook: LifecycleHook::Poststop, .. }) => false,
        Some(TaskLifecycle { sidecar, .. }) => sidecar,
    }
}

impl RestartTracker {
    fn new(
        policy: RestartPolicy,
        job_type: JobType,
        lifecycle: Option<TaskLifecycle>,
        now_ns: TimeNs,
    ) -> RestartTracker {
        let restart_on_success = restarts_on_success(job_type, lifecycle);
        RestartTracker { policy, restart_on_success, count: 0, interval_start_ns: now_ns }
    }

    fn decide(&mut self, exit: &ExitResult, now_ns: TimeNs) -> Decision {
        if !self.restart_on_success && exit.successful() {
            return Decision::Complete;
        }
        if now_ns.saturating_sub(self.interval_start_ns) > self.policy.interval_ns {
            self.count = 0;
            self.interval_start_ns = now_ns;
        }
        self.count += 1;
        if self.count <= self.policy.attempts {
            return Decision::Restart { delay: nanos(self.policy.delay_ns), reason: "Restart within policy".into() };
        }
        match self.policy.mode {
            RestartMode::Fail => Decision::NotRestarting {
                reason: format!(
                    "Exceeded allowed attempts {} in interval {:?} and mode is \"fail\"",
                    self.policy.attempts,
                    nanos(self.policy.interval_ns)
                ),
            },
            RestartMode::Delay => {
                let interval_end_ns = self.interval_start_ns.saturating_add(self.policy.interval_ns);
                // The next start opens a new interval.
                let delay = nanos(interval_end_ns.saturating_sub(now_ns)).max(nanos(self.policy.delay_ns));
                Decision::Restart {
                    delay,
                    reason: format!(
                        "Exceeded allowed attempts {} in interval {:?} and mode is \"delay\"",
                        self.policy.attempts,
                        nanos(self.policy.interval_ns)
                    ),
                }
            }
        }
    }
}

fn nanos(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn duration_ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// Runs one task; see the module documentation.
#[derive(Debug)]
pub struct TaskRunner {
    driver: Arc<dyn Driver>,
    spec: TaskSpec,
    config: TaskRunnerConfig,
    shared: Arc<Shared>,
}

impl TaskRunner {
    pub fn new(
        driver: Arc<dyn Driver>,
        spec: TaskSpec,
        config: TaskRunnerConfig,
        clock: Arc<dyn Clock>,
        updates: Sender<TaskStateUpdate>,
    ) -> TaskRunner {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { state: TaskState::pending(), handle: None, kill_requested: false }),
            killed: Condvar::new(),
            alloc_id: spec.alloc_id.clone(),
            task_name: spec.task_name.clone(),
            updates,
            clock,
        });
        TaskRunner { driver, spec, config, shared }
    }

    pub fn kill_handle(&self) -> KillHandle {
        KillHandle {
            shared: Arc::clone(&self.shared),
            driver: Arc::clone(&self.driver),
            kill_timeout: self.config.kill_timeout,
        }
    }

    /// Runs the task until it is dead; returns its final state.
    pub fn run(self) -> TaskState {
        self.shared.event(TaskEvent::new("Received", self.shared.clock.now_ns(), "Task received by client"));
        self.run_loop(None)
    }

    /// Re-attaches to a task an earlier agent started, then goes on as
    /// [`TaskRunner::run`]. A task that is gone counts as an exit with an
    /// unknown status, and the restart policy decides.
    pub fn run_recovered(self, handle: TaskHandle) -> TaskState {
        self.run_loop(Some(handle))
    }

    fn kill_requested(&self) -> bool {
        self.shared.lock().kill_requested
    }

    fn finish(&self, failed: bool, event: Option<TaskEvent>) -> TaskState {
        let mut inner = self.shared.lock();
        let now = self.shared.clock.now_ns();
        if let Some(event) = event {
            inner.state.push_event(event);
        }
        inner.state.state = TaskLifecycleState::Dead;
        inner.state.failed = failed;
        inner.state.finished_at_ns = now;
        inner.handle = None;
        self.shared.send(&inner);
        inner.state.clone()
    }

    fn killed(&self) -> TaskState {
        let now = self.shared.clock.now_ns();
        self.finish(false, Some(TaskEvent::new("Killed", now, "Task successfully killed")))
    }

    fn run_loop(self, mut recovered: Option<TaskHandle>) -> TaskState {
        if let Err(err) = self.driver.validate_config(&self.spec.config) {
            let mut event = TaskEvent::new("Failed Validation", self.shared.clock.now_ns(), &err.to_string());
            event.fails_task = true;
            return self.finish(true, Some(event));
        }
        let mut tracker = RestartTracker::new(
            self.config.restart_policy.clone(),
            self.config.job_type,
            self.config.lifecycle,
            self.shared.clock.now_ns(),
        );
        let mut set_up = false;
        loop {
            if self.kill_requested() {
                return self.killed();
            }
            let handle = match recovered.take() {
                Some(handle) => match self.driver.recover(&handle) {
                    Ok(()) => {
                        self.shared.update(|inner, _| {
                            inner.state.state = TaskLifecycleState::Running;
                            inner.handle = Some(handle.clone());
                        });
                        Some(handle)
                    }
                    Err(err) => {
                        let _ = self.driver.destroy(&handle);
                        let exit = ExitResult {
                            error: Some(format!("task lost: {err}")),
                            exit_code: -1,
                            ..Default::default()
                        };
                        match self.after_exit(&mut tracker, &exit) {
                            Some(state) => return state,
                            None => continue,
                        }
                    }
                },
                None => None,
            };
            let handle = match handle {
                Some(handle) => handle,
                None => {
                    if !set_up {
                        set_up = true;
                        let now = self.shared.clock.now_ns();
                        self.shared.event(TaskEvent::new("Task Setup", now, "Building Task Directory"));
                    }
                    match self.start() {
                        Ok(handle) => handle,
                        Err(err) if start_error_is_permanent(&err) => {
                            let mut event =
                                TaskEvent::new("Driver Failure", self.shared.clock.now_ns(), &err.to_string());
                            event.fails_task = true;
                            return self.finish(true, Some(event));
                        }
                        Err(err) => {
                            // A machine problem (Docker down): retried under the restart policy.
                            let now = self.shared.clock.now_ns();
                            self.shared.event(TaskEvent::new("Driver Failure", now, &err.to_string()));
                            let exit = ExitResult { exit_code: -1, error: Some(err.to_string()), ..Default::default() };
                            match self.after_exit(&mut tracker, &exit) {
                                Some(state) => return state,
                                None => continue,
                            }
                        }
                    }
                }
            };
            // A kill that arrived while the task started found no handle.
            if self.kill_requested() {
                let _ = self.driver.stop(&handle, self.config.kill_timeout);
            }
            let exit = self.driver.wait(&handle).unwrap_or_else(|err| ExitResult {
                exit_code: -1,
                error: Some(err.to_string()),
                ..Default::default()
            });
            let _ = self.driver.destroy(&handle);
            self.shared.update(|inner, _| inner.handle = None);
            self.terminated(&exit);
            if self.kill_requested() {
                return self.killed();
            }
            if let Some(state) = self.after_exit(&mut tracker, &exit) {
                return state;
            }
        }
    }

    fn start(&self) -> Result<TaskHandle, DriverError> {
        match self.driver.start(&self.spec) {
            Ok(handle) => {
                self.shared.update(|inner, now| {
                    inner.state.state = TaskLifecycleState::Running;
                    if inner.state.started_at_ns == 0 {
                        inner.state.started_at_ns = now;
                    }
                    inner.handle = Some(handle.clone());
                    inner.state.push_event(TaskEvent::new("Started", now, "Task started by client"));
                });
                Ok(handle)
            }
            Err(err) => Err(err),
        }
    }

    fn terminated(&self, exit: &ExitResult) {
        let mut message = format!("Exit Code: {}", exit.exit_code);
        if let Some(signal) = exit.signal {
            message.push_str(&format!(", Signal: {signal}"));
        }
        if exit.oom_killed {
            message.push_str(", OOM Killed");
        }
        if let Some(error) = &exit.error {
            message.push_str(&format!(", Exit Message: {error}"));
        }
        let mut event = TaskEvent::new("Terminated", self.shared.clock.now_ns(), &message);
        event.exit_code = Some(exit.exit_code);
        event.signal = exit.signal;
        self.shared.event(event);
    }

    /// Applies the restart policy; `Some(final state)` when the task is done.
    fn after_exit(&self, tracker: &mut RestartTracker, exit: &ExitResult) -> Option<TaskState> {
        let now = self.shared.clock.now_ns();
        match tracker.decide(exit, now) {
            Decision::Complete => Some(self.finish(false, None)),
            Decision::NotRestarting { reason } => {
                let mut event = TaskEvent::new("Not Restarting", now, &reason);
                event.fails_task = true;
                Some(self.finish(true, Some(event)))
            }
            Decision::Restart { delay, reason } => {
                self.shared.update(|inner, now| {
                    let mut event = TaskEvent::new("Restarting", now, &reason);
                    event.restart_delay_ns = Some(duration_ns(delay));
                    inner.state.push_event(event);
                    inner.state.state = TaskLifecycleState::Pending;
                    inner.state.restarts += 1;
                    inner.state.last_restart_ns = now;
                });
                if self.sleep_unless_killed(delay) { Some(self.killed()) } else { None }
            }
        }
    }

    /// Sleeps `delay`; true when a kill came first.
    fn sleep_unless_killed(&self, delay: Duration) -> bool {
        let inner = self.shared.lock();
        let (inner, _) = self
            .shared
            .killed
            .wait_timeout_while(inner, delay, |inner| !inner.kill_requested)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.kill_requested
    }
}

/// A start error no retry can fix (bad config, missing command or image):
/// the task fails at once instead of burning its restart attempts.
pub fn start_error_is_permanent(err: &DriverError) -> bool {
    matches!(err, DriverError::InvalidConfig(_) | DriverError::Start(_) | DriverError::InvalidHandle(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_engine::model::SECOND_NS;

    fn policy(attempts: u32, mode: RestartMode) -> RestartPolicy {
        RestartPolicy { attempts, interval_ns: 10 * SECOND_NS, delay_ns: SECOND_NS, mode }
    }

    fn failed() -> ExitResult {
        ExitResult { exit_code: 1, ..Default::default() }
    }

    #[test]
    fn fail_mode_stops_after_attempts_within_interval() {
        let mut tracker = RestartTracker::new(policy(2, RestartMode::Fail), JobType::Service, None, 0);
        assert!(matches!(tracker.decide(&failed(), SECOND_NS), Decision::Restart { .. }));
        assert!(matches!(tracker.decide(&failed(), 2 * SECOND_NS), Decision::Restart { .. }));
        assert!(matches!(tracker.decide(&failed(), 3 * SECOND_NS), Decision::NotRestarting { .. }));
    }

    #[test]
    fn interval_resets_the_count() {
        let mut tracker = RestartTracker::new(policy(1, RestartMode::Fail), JobType::Service, None, 0);
        assert!(matches!(tracker.decide(&failed(), SECOND_NS), Decision::Restart { .. }));
        // 11 s after the interval began: a new interval, a fresh attempt.
        assert!(matches!(tracker.decide(&failed(), 11 * SECOND_NS), Decision::Restart { .. }));
        assert!(matches!(tracker.decide(&failed(), 12 * SECOND_NS), Decision::NotRestarting { .. }));
    }

    #[test]
    fn delay_mode_waits_for_the_interval_end() {
        let mut tracker = RestartTracker::new(policy(1, RestartMode::Delay), JobType::Service, None, 0);
        assert!(matches!(tracker.decide(&failed(), SECOND_NS), Decision::Restart { .. }));
        let Decision::Restart { delay, .. } = tracker.decide(&failed(), 4 * SECOND_NS) else {
            panic!("delay mode restarts");
        };
        assert_eq!(delay, Duration::from_secs(6));
    }

    #[test]
    fn batch_success_completes_and_service_success_restarts() {
        let ok = ExitResult::default();
        let mut batch = RestartTracker::new(policy(0, RestartMode::Fail), JobType::Batch, None, 0);
        assert_eq!(batch.decide(&ok, 1), Decision::Complete);
        let mut service = RestartTracker::new(policy(1, RestartMode::Fail), JobType::Service, None, 0);
        assert!(matches!(service.decide(&ok, 1), Decision::Restart { .. }));
    }

    #[test]
    fn hooks_complete_on_success_and_sidecars_restart() {
        let hook = |hook, sidecar| Some(TaskLifecycle { hook, sidecar });
        let cases = [
            (JobType::Service, None, true),
            (JobType::Batch, None, false),
            (JobType::SysBatch, None, false),
            (JobType::Service, hook(LifecycleHook::Prestart, false), false),
            (JobType::Batch, hook(LifecycleHook::Prestart, true), true),
            (JobType::Service, hook(LifecycleHook::Poststart, false), false),
            (JobType::Batch, hook(LifecycleHook::Poststart, true), true),
            (JobType::Service, hook(LifecycleHook::Poststop, false), false),
            (JobType::Service, hook(LifecycleHook::Poststop, true), false),
        ];
        for (job_type, lifecycle, restarts) in cases {
            assert_eq!(restarts_on_success(job_type, lifecycle), restarts, "{job_type:?} {lifecycle:?}");
        }
    }
}
