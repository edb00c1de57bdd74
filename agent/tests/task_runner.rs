//! Task runner over the real `raw_exec` driver: restart policy (attempts,
//! delay, fail and delay modes), batch completion, kill, bad input.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use caravan::client::driver::raw_exec::RawExecDriver;
use caravan::client::driver::{LogConfig, TaskDirs, TaskResources, TaskSpec};
use caravan::client::task_runner::{TaskRunner, TaskRunnerConfig, TaskStateUpdate};
use caravan_engine::clock::SystemClock;
use caravan_engine::model::{ConfigValue, JobType, RestartMode, RestartPolicy, TaskLifecycleState, TaskState};

/// Restart delay in these tests: long enough to measure, short to run.
const DELAY: Duration = Duration::from_millis(100);

fn config(command: &str, script: &str) -> ConfigValue {
    let args = ConfigValue::List(vec![ConfigValue::String("-c".into()), ConfigValue::String(script.into())]);
    ConfigValue::Map([(Arc::from("command"), ConfigValue::String(command.into())), (Arc::from("args"), args)].into())
}

struct Run {
    root: std::path::PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn new_runner(
    test: &str,
    config: ConfigValue,
    job_type: JobType,
    policy: RestartPolicy,
) -> (TaskRunner, Receiver<TaskStateUpdate>, Run) {
    let root = std::env::temp_dir().join(format!("caravan-task-runner-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let spec = TaskSpec {
        alloc_id: format!("{test}-alloc"),
        task_name: "main".into(),
        config,
        env: BTreeMap::new(),
        device_env: BTreeMap::new(),
        devices: Vec::new(),
        user: None,
        resources: TaskResources { cpu_mhz: 100, memory_mb: 64 },
        dirs: TaskDirs::new(&root, "main"),
        ports: Vec::new(),
        logs: LogConfig::default(),
    };
    let (sender, receiver) = channel();
    let runner_config = TaskRunnerConfig {
        job_type,
        restart_policy: policy,
        kill_timeout: Duration::from_millis(500),
        lifecycle: None,
    };
    let runner = TaskRunner::new(Arc::new(RawExecDriver::new()), spec, runner_config, Arc::new(SystemClock), sender);
    (runner, receiver, Run { root })
}

fn policy(attempts: u32, interval: Duration, mode: RestartMode) -> RestartPolicy {
    RestartPolicy { attempts, interval_ns: interval.as_nanos() as i64, delay_ns: DELAY.as_nanos() as i64, mode }
}

fn kinds(state: &TaskState) -> Vec<&str> {
    state.events.iter().map(|e| e.kind.as_ref()).collect()
}

#[test]
fn batch_exit_zero_completes_without_restart() {
    let (runner, updates, _run) = new_runner(
        "batch-ok",
        config("/bin/sh", "exit 0"),
        JobType::Batch,
        policy(3, Duration::from_secs(60), RestartMode::Fail),
    );
    let state = runner.run();
    assert_eq!(state.state, TaskLifecycleState::Dead);
    assert!(!state.failed);
    assert_eq!(state.restarts, 0);
    assert_eq!(kinds(&state), ["Received", "Task Setup", "Started", "Terminated"]);
    assert_eq!(state.events[3].exit_code, Some(0));
    let sent: Vec<TaskStateUpdate> = updates.try_iter().collect();
    assert!(sent.iter().any(|u| u.state.state == TaskLifecycleState::Running && u.handle.is_some()));
    assert_eq!(sent.last().map(|u| &u.state), Some(&state));
}

#[test]
fn fail_mode_gives_up_after_attempts() {
    let (runner, _updates, _run) = new_runner(
        "fail",
        config("/bin/sh", "exit 2"),
        JobType::Batch,
        policy(2, Duration::from_secs(60), RestartMode::Fail),
    );
    let started = Instant::now();
    let state = runner.run();
    assert!(state.failed);
    assert_eq!(state.state, TaskLifecycleState::Dead);
    assert_eq!(state.restarts, 2, "{:?}", state.events);
    assert!(started.elapsed() >= 2 * DELAY, "each restart waits the delay");
    let kinds = kinds(&state);
    assert_eq!(kinds.iter().filter(|k| **k == "Started").count(), 3);
    assert_eq!(kinds.last(), Some(&"Not Restarting"));
    let restarting = state.events.iter().find(|e| e.kind.as_ref() == "Restarting").unwrap();
    assert_eq!(restarting.restart_delay_ns, Some(DELAY.as_nanos() as i64));
    assert!(state.events.last().unwrap().fails_task);
}

#[test]
fn delay_mode_waits_for_the_interval_then_restarts() {
    // One attempt per 1 s interval: the second exit waits out the interval.
    let interval = Duration::from_secs(1);
    let script = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; [ $n -ge 3 ] && exit 0; exit 1";
    let (runner, _updates, _run) =
        new_runner("delay", config("/bin/sh", script), JobType::Batch, policy(1, interval, RestartMode::Delay));
    let started = Instant::now();
    let state = runner.run();
    assert!(!state.failed, "{:?}", kinds(&state));
    assert_eq!(state.restarts, 2);
    assert!(started.elapsed() >= interval, "the second restart waited for the interval: {:?}", started.elapsed());
    let delays: Vec<i64> = state.events.iter().filter_map(|e| e.restart_delay_ns).collect();
    assert_eq!(delays.len(), 2);
    assert!(delays[1] > DELAY.as_nanos() as i64, "delay mode waits longer than the delay: {delays:?}");
}

#[test]
fn service_restarts_on_success_and_kill_ends_it() {
    let (runner, _updates, _run) = new_runner(
        "kill",
        config("/bin/sh", "trap '' TERM; sleep 0.2"),
        JobType::Service,
        policy(100, Duration::from_secs(60), RestartMode::Fail),
    );
    let kill = runner.kill_handle();
    let thread = std::thread::spawn(move || runner.run());
    // Long enough for at least one exit-0 restart of the service.
    std::thread::sleep(Duration::from_millis(800));
    kill.kill();
    let state = thread.join().unwrap();
    assert!(state.restarts >= 1, "a service restarts after exit 0: {:?}", kinds(&state));
    assert_eq!(state.state, TaskLifecycleState::Dead);
    assert!(!state.failed);
    let kinds = kinds(&state);
    assert!(kinds.contains(&"Killing"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"Killed"));
}

#[test]
fn bad_input_fails_with_a_reason() {
    let (runner, _updates, _run) = new_runner(
        "missing",
        config("/nonexistent/no-such-command", "true"),
        JobType::Batch,
        policy(3, Duration::from_secs(60), RestartMode::Fail),
    );
    let state = runner.run();
    assert!(state.failed);
    let last = state.events.last().unwrap();
    assert_eq!(last.kind.as_ref(), "Driver Failure");
    assert!(last.message.contains("no-such-command"), "{}", last.message);

    let mut bad = config("/bin/sh", "true");
    if let ConfigValue::Map(entries) = &mut bad {
        entries.insert("colour".into(), ConfigValue::Bool(true));
    }
    let (runner, _updates, _run) =
        new_runner("unknown-key", bad, JobType::Batch, policy(3, Duration::from_secs(60), RestartMode::Fail));
    let state = runner.run();
    assert!(state.failed);
    let last = state.events.last().unwrap();
    assert_eq!(last.kind.as_ref(), "Failed Validation");
    assert!(last.message.contains("colour"), "{}", last.message);
}
