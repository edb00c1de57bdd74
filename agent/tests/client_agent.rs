//! The client agent end to end against an in-process cluster: real
//! scheduling (`LocalCluster`) behind a fake [`ServerApi`], real processes
//! through `raw_exec`. Batch completion, service stop, the task
//! environment, bad input, an agent restart that re-attaches, task
//! lifecycle hooks (prestart, poststart, poststop, sidecars), and the
//! deployment health the client decides.
//!
//! `CARAVAN_SLOW_TESTS=1` adds the 100-task start measurement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caravan::client::agent::{ClientAgent, ClientTuning};
use caravan::client::driver::Driver;
use caravan::client::driver::executor::Executor;
use caravan::client::driver::raw_exec::RawExecDriver;
use caravan::client::server_api::{ServerApi, ServerError};
use caravan::config::AgentConfig;
use caravan_engine::clock::SystemClock;
use caravan_engine::endpoints;
use caravan_engine::ids::{JobKey, NodeId};
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_engine::model::{
    AllocClientUpdate, Allocation, ClientStatus, ConfigValue, DeploymentStatus, Job, JobType, LifecycleHook, Node,
    Parameterized, PayloadMode, RestartMode, SECOND_NS, Task, TaskGroup, TaskLifecycle, TaskLifecycleState,
    UpdateStrategy,
};
use caravan_engine::state::{Cancel, StateStore, Table};

/// The heartbeat TTL the fake hands out: short, so tests see heartbeats.
const HEARTBEAT_TTL: Duration = Duration::from_secs(1);
/// How long a test waits for the cluster and the agent to get somewhere:
/// generous for a loaded 2-core machine; tests end as soon as it happens.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// The servers, in process: a `LocalCluster` behind the client's RPC seam.
struct FakeServer {
    cluster: Mutex<Option<LocalCluster>>,
    store: Arc<StateStore>,
    cancel: Cancel,
    registrations: AtomicU64,
    heartbeats: AtomicU64,
}

impl FakeServer {
    fn start() -> Arc<FakeServer> {
        let config = LocalConfig { workers: 2, ..LocalConfig::default() };
        let cluster = LocalCluster::start(config, Arc::new(SystemClock));
        Arc::new(FakeServer {
            store: Arc::clone(&cluster.store),
            cluster: Mutex::new(Some(cluster)),
            cancel: Cancel::new(),
            registrations: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
        })
    }

    fn with_cluster<T>(&self, f: impl FnOnce(&LocalCluster) -> T) -> Result<T, ServerError> {
        let cluster = self.cluster.lock().unwrap();
        cluster.as_ref().map(f).ok_or_else(|| ServerError::Unavailable("cluster shut down".into()))
    }

    fn register_job(&self, job: Job) {
        self.with_cluster(|c| c.register_job(job)).unwrap().unwrap();
    }

    fn stop_job(&self, key: &JobKey) {
        self.with_cluster(|c| c.write(|state, ids, now| endpoints::deregister_job(state, key, false, now, ids)))
            .unwrap()
            .unwrap();
    }

    fn allocs(&self, key: &JobKey) -> Vec<Arc<Allocation>> {
        self.store.snapshot().allocs_by_job(key).cloned().collect()
    }

    fn close(&self) {
        self.cancel.cancel();
        if let Some(cluster) = self.cluster.lock().unwrap().take() {
            cluster.shutdown();
        }
    }
}

impl ServerApi for FakeServer {
    fn register_node(&self, node: &Node) -> Result<Duration, ServerError> {
        let node = node.clone();
        self.with_cluster(|c| c.write(|state, ids, now| endpoints::register_node(state, node, now, ids)))?
            .map_err(|err| ServerError::Rejected(err.to_string()))?;
        self.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(HEARTBEAT_TTL)
    }

    fn heartbeat(&self, node_id: NodeId) -> Result<Duration, ServerError> {
        if self.store.snapshot().node(node_id).is_none() {
            return Err(ServerError::NodeNotFound(node_id));
        }
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(HEARTBEAT_TTL)
    }

    fn node_allocs(
        &self,
        node_id: NodeId,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Vec<Allocation>, u64), ServerError> {
        let deadline = Instant::now() + wait;
        loop {
            let snap = self.store.snapshot();
            let index = snap.table_index(Table::Allocs).max(1);
            let now = Instant::now();
            if index > min_index || now >= deadline {
                return Ok((snap.allocs_by_node(node_id).map(|a| (**a).clone()).collect(), index));
            }
            if self.cancel.is_cancelled() {
                return Err(ServerError::Unavailable("shutting down".into()));
            }
            let _ = self.store.snapshot_min_index(snap.index() + 1, deadline - now, &self.cancel);
        }
    }

    fn update_allocs(&self, updates: Vec<AllocClientUpdate>) -> Result<(), ServerError> {
        self.with_cluster(|c| {
            c.write(|state, ids, now| Ok(endpoints::update_allocs_from_client(state, updates, now, ids)))
        })?
        .map(|_| ())
        .map_err(|err| ServerError::Rejected(err.to_string()))
    }
}

/// One test's cluster, data dir and agent; dropping it stops every job,
/// waits for the tasks to die, and shuts everything down.
struct Harness {
    server: Arc<FakeServer>,
    config: AgentConfig,
    agent: Option<ClientAgent>,
    jobs: Vec<JobKey>,
    _data_dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig { name: Some("client-test".into()), ..AgentConfig::default() };
        config.data_dir = Some(data_dir.path().to_path_buf());
        config.client.enabled = true;
        config.plugins.raw_exec.enabled = true;
        config.plugins.gpu.enabled = false;
        // Room for 100 small tasks whatever the machine.
        config.client.cpu_total_compute_mhz = Some(100_000);
        config.client.memory_total_mb = Some(64_000);
        config.client.disk_free_mb = Some(1_000_000);
        let server = FakeServer::start();
        let mut harness = Harness { server, config, agent: None, jobs: Vec::new(), _data_dir: data_dir };
        harness.start_agent();
        harness
    }

    fn start_agent(&mut self) {
        // Tasks under `caravan executor`, as the real agent runs them.
        let executor = Executor::new(env!("CARGO_BIN_EXE_caravan"));
        let drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(RawExecDriver::with_executor(executor))];
        let tuning = ClientTuning { fingerprint_period: Duration::from_secs(2), watch_wait: Duration::from_secs(1) };
        let server: Arc<dyn ServerApi> = self.server.clone();
        let agent =
            ClientAgent::start_with(&self.config, tuning, server, drivers, None, Arc::new(SystemClock)).unwrap();
        self.agent = Some(agent);
    }

    fn data_dir(&self) -> &Path {
        self.config.data_dir.as_deref().unwrap()
    }

    fn run(&mut self, job: Job) -> JobKey {
        let key = job.key();
        self.jobs.push(key.clone());
        self.server.register_job(job);
        key
    }

    fn task_dir(&self, alloc: &Allocation) -> PathBuf {
        self.data_dir().join("alloc").join(alloc.id.to_string()).join("t")
    }

    /// Waits until `done` holds for the job's allocations; panics with them
    /// after [`WAIT_MAX`].
    fn wait_allocs(&self, key: &JobKey, what: &str, done: impl Fn(&[Arc<Allocation>]) -> bool) -> Vec<Arc<Allocation>> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let allocs = self.server.allocs(key);
            if done(&allocs) {
                return allocs;
            }
            if Instant::now() >= deadline {
                let summary: Vec<_> = allocs.iter().map(|a| (a.client_status, a.task_states.clone())).collect();
                panic!("timed out waiting for {what}: {summary:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.agent.is_some() {
            for key in &self.jobs {
                if self.server.store.snapshot().job(key).is_some_and(|job| !job.stop) {
                    self.server.stop_job(key);
                }
            }
            let deadline = Instant::now() + WAIT_MAX;
            while Instant::now() < deadline {
                let running = self
                    .jobs
                    .iter()
                    .flat_map(|key| self.server.allocs(key))
                    .any(|a| a.task_states.values().any(|state| state.state != TaskLifecycleState::Dead));
                if !running {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(agent) = self.agent.take() {
            agent.shutdown();
        }
        self.server.close();
    }
}

fn command_config(command: &str, args: &[&str]) -> ConfigValue {
    let args = ConfigValue::List(args.iter().map(|arg| ConfigValue::String((*arg).into())).collect());
    ConfigValue::Map([(Arc::from("command"), ConfigValue::String(command.into())), (Arc::from("args"), args)].into())
}

fn raw_exec_job(id: &str, job_type: JobType, count: u32, config: ConfigValue) -> Job {
    let mut task = Task::new("t", "raw_exec");
    task.config = config;
    task.resources.cpu_mhz = 20;
    task.resources.memory_mb = 16;
    task.kill_timeout_ns = 2 * SECOND_NS;
    let mut group = TaskGroup::new("g", count, job_type, vec![task]);
    group.ephemeral_disk_mb = 10;
    Job::new(id, job_type, vec![group])
}

fn shell_job(id: &str, job_type: JobType, count: u32, script: &str) -> Job {
    raw_exec_job(id, job_type, count, command_config("/bin/sh", &["-c", script]))
}

fn event_kinds(alloc: &Allocation) -> Vec<String> {
    alloc.task_states.get("t").map_or_else(Vec::new, |s| s.events.iter().map(|e| e.kind.to_string()).collect())
}

fn all_with_status(count: usize, status: ClientStatus) -> impl Fn(&[Arc<Allocation>]) -> bool {
    move |allocs| allocs.len() == count && allocs.iter().all(|a| a.client_status == status)
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn batch_job_runs_to_completion() {
    let mut h = Harness::start();
    let key = h.run(shell_job("batch", JobType::Batch, 4, "echo working; exit 0"));
    let allocs = h.wait_allocs(&key, "4 complete allocations", all_with_status(4, ClientStatus::Complete));
    let node_id = h.agent.as_ref().unwrap().node_id();
    for alloc in &allocs {
        assert_eq!(alloc.node_id, node_id);
        let state = &alloc.task_states["t"];
        assert_eq!(state.state, TaskLifecycleState::Dead);
        assert!(!state.failed);
        let terminated = state.events.iter().find(|e| &*e.kind == "Terminated").expect("a Terminated event");
        assert_eq!(terminated.exit_code, Some(0));
        assert_eq!(event_kinds(alloc), ["Received", "Task Setup", "Started", "Terminated"]);
        let log = std::fs::read_to_string(h.data_dir().join(format!("alloc/{}/alloc/logs/t.stdout.0", alloc.id)));
        assert_eq!(log.unwrap(), "working\n");
    }
    assert!(h.server.registrations.load(Ordering::Relaxed) >= 1);
    // Heartbeats go out at the TTL the server handed out.
    std::thread::sleep(HEARTBEAT_TTL * 2 + Duration::from_millis(500));
    assert!(h.server.heartbeats.load(Ordering::Relaxed) >= 1, "no heartbeat within two TTLs");
}

#[test]
fn service_job_runs_until_stopped() {
    let mut h = Harness::start();
    let key = h.run(raw_exec_job("web", JobType::Service, 1, command_config("/bin/sleep", &["600"])));
    h.wait_allocs(&key, "a running allocation", all_with_status(1, ClientStatus::Running));
    std::thread::sleep(Duration::from_millis(500));
    let allocs = h.server.allocs(&key);
    assert_eq!(allocs[0].client_status, ClientStatus::Running, "{:?}", event_kinds(&allocs[0]));
    assert_eq!(allocs[0].task_states["t"].restarts, 0);

    h.server.stop_job(&key);
    let allocs = h.wait_allocs(&key, "the stopped allocation complete", all_with_status(1, ClientStatus::Complete));
    let kinds = event_kinds(&allocs[0]);
    assert_eq!(kinds.last().map(String::as_str), Some("Killed"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "Killing"), "{kinds:?}");
    assert!(!allocs[0].task_states["t"].failed);
}

#[test]
fn task_sees_the_nomad_environment() {
    let mut h = Harness::start();
    let mut job = shell_job("envjob", JobType::Batch, 1, "env > \"$NOMAD_TASK_DIR/env.txt\"");
    job.task_groups[0].tasks[0].env.insert("GREETING".into(), "hello".into());
    let key = h.run(job);
    let allocs = h.wait_allocs(&key, "the env job complete", all_with_status(1, ClientStatus::Complete));
    let alloc = &allocs[0];
    let text = std::fs::read_to_string(h.task_dir(alloc).join("local/env.txt")).unwrap();
    let env: BTreeMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
    let alloc_dir = h.data_dir().join("alloc").join(alloc.id.to_string());
    let expected = [
        ("NOMAD_ALLOC_ID", alloc.id.to_string()),
        ("NOMAD_ALLOC_NAME", "envjob.g[0]".to_string()),
        ("NOMAD_ALLOC_INDEX", "0".to_string()),
        ("NOMAD_JOB_NAME", "envjob".to_string()),
        ("NOMAD_GROUP_NAME", "g".to_string()),
        ("NOMAD_TASK_NAME", "t".to_string()),
        ("NOMAD_CPU_LIMIT", "20".to_string()),
        ("NOMAD_MEMORY_LIMIT", "16".to_string()),
        ("NOMAD_DC", "dc1".to_string()),
        ("NOMAD_REGION", "global".to_string()),
        ("NOMAD_ALLOC_DIR", alloc_dir.join("alloc").display().to_string()),
        ("NOMAD_TASK_DIR", alloc_dir.join("t/local").display().to_string()),
        ("NOMAD_SECRETS_DIR", alloc_dir.join("t/secrets").display().to_string()),
        ("GREETING", "hello".to_string()),
    ];
    for (key, value) in expected {
        assert_eq!(env.get(key).copied(), Some(value.as_str()), "{key} in {text}");
    }
}

#[test]
fn bad_input_fails_the_allocation_and_the_agent_goes_on() {
    let mut h = Harness::start();
    let missing = h.run(raw_exec_job("missing", JobType::Batch, 1, command_config("/nonexistent/no-such-cmd", &[])));
    let allocs = h.wait_allocs(&missing, "a failed allocation", |allocs| {
        allocs.iter().any(|a| a.client_status == ClientStatus::Failed)
    });
    let failed = allocs.iter().find(|a| a.client_status == ClientStatus::Failed).unwrap();
    let last = failed.task_states["t"].events.last().unwrap().clone();
    assert_eq!(&*last.kind, "Driver Failure");
    assert!(last.message.contains("no-such-cmd"), "{}", last.message);
    assert!(last.fails_task);

    let mut bad_config = command_config("/bin/true", &[]);
    if let ConfigValue::Map(entries) = &mut bad_config {
        entries.insert("colour".into(), ConfigValue::Bool(true));
    }
    let bad = h.run(raw_exec_job("badconfig", JobType::Batch, 1, bad_config));
    let allocs = h.wait_allocs(&bad, "a failed allocation", |allocs| {
        allocs.iter().any(|a| a.client_status == ClientStatus::Failed)
    });
    let failed = allocs.iter().find(|a| a.client_status == ClientStatus::Failed).unwrap();
    let last = failed.task_states["t"].events.last().unwrap().clone();
    assert_eq!(&*last.kind, "Failed Validation");
    assert!(last.message.contains("colour"), "{}", last.message);

    // The agent is still there and runs the next job.
    let good = h.run(shell_job("after", JobType::Batch, 1, "exit 0"));
    h.wait_allocs(&good, "the next job complete", all_with_status(1, ClientStatus::Complete));
}

#[test]
fn agent_restart_reattaches_running_tasks() {
    let mut h = Harness::start();
    let script = "echo $$ >> \"$NOMAD_TASK_DIR/pids\"; exec /bin/sleep 600";
    let key = h.run(shell_job("survivor", JobType::Service, 1, script));
    let allocs = h.wait_allocs(&key, "a running allocation", all_with_status(1, ClientStatus::Running));
    let pids_file = h.task_dir(&allocs[0]).join("local/pids");
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&pids_file).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    };
    let deadline = Instant::now() + WAIT_MAX;
    while read_pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = read_pids();
    assert_eq!(pids.len(), 1);
    let pid = pids[0];
    let node_id = h.agent.as_ref().unwrap().node_id();

    // The agent goes away; the task does not.
    h.agent.take().unwrap().shutdown();
    std::thread::sleep(Duration::from_millis(300));
    assert!(process_alive(pid), "the task died with the agent");

    h.start_agent();
    assert_eq!(h.agent.as_ref().unwrap().node_id(), node_id, "the node id is kept in the data dir");
    // Give the new agent time to re-attach and report; the task is the
    // same process, never restarted.
    std::thread::sleep(Duration::from_secs(1));
    let allocs = h.wait_allocs(&key, "the allocation still running", all_with_status(1, ClientStatus::Running));
    assert_eq!(read_pids(), [pid], "the task was started again");
    assert!(process_alive(pid));
    assert_eq!(allocs[0].task_states["t"].restarts, 0);

    h.server.stop_job(&key);
    let allocs = h.wait_allocs(&key, "the allocation stopped", all_with_status(1, ClientStatus::Complete));
    assert_eq!(event_kinds(&allocs[0]).last().map(String::as_str), Some("Killed"));
    let deadline = Instant::now() + WAIT_MAX;
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(pid), "the new agent stopped the re-attached task");
}

/// A task that exits after the agent restarted reports its real exit code
/// (recorded by its executor): 3 fails a service with no restarts left, 0
/// completes a batch task; the restart policy sees only the code.
#[test]
fn reattached_task_reports_its_exit_code() {
    let mut h = Harness::start();
    let script = "echo $$ > \"$NOMAD_TASK_DIR/pid\"; while [ ! -s \"$NOMAD_TASK_DIR/go\" ]; do sleep 0.05; done; \
                  exit $(cat \"$NOMAD_TASK_DIR/go\")";
    let mut service = shell_job("exits-3", JobType::Service, 1, script);
    service.task_groups[0].restart_policy.attempts = 0;
    service.task_groups[0].restart_policy.mode = RestartMode::Fail;
    let service = h.run(service);
    let batch = h.run(shell_job("exits-0", JobType::Batch, 1, script));
    let mut task_dirs = Vec::new();
    for key in [&service, &batch] {
        let allocs = h.wait_allocs(key, "a running allocation", all_with_status(1, ClientStatus::Running));
        let dir = h.task_dir(&allocs[0]).join("local");
        let deadline = Instant::now() + WAIT_MAX;
        while !dir.join("pid").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        task_dirs.push(dir);
    }

    // The agent goes away and a new one re-attaches; then the tasks exit.
    h.agent.take().unwrap().shutdown();
    h.start_agent();
    std::thread::sleep(Duration::from_secs(1));
    h.wait_allocs(&service, "the service still running", all_with_status(1, ClientStatus::Running));
    std::fs::write(task_dirs[0].join("go"), "3").unwrap();
    std::fs::write(task_dirs[1].join("go"), "0").unwrap();

    let allocs = h.wait_allocs(&service, "the service failed", all_with_status(1, ClientStatus::Failed));
    let state = &allocs[0].task_states["t"];
    let terminated = state.events.iter().find(|e| e.kind.as_ref() == "Terminated").expect("a Terminated event");
    assert_eq!(terminated.exit_code, Some(3), "{:?}", state.events);
    assert!(!terminated.message.contains("unknown"), "{}", terminated.message);
    assert_eq!(state.restarts, 0);
    assert!(state.failed);
    assert_eq!(event_kinds(&allocs[0]).last().map(String::as_str), Some("Not Restarting"));

    let allocs = h.wait_allocs(&batch, "the batch complete", all_with_status(1, ClientStatus::Complete));
    let state = &allocs[0].task_states["t"];
    let terminated = state.events.iter().find(|e| e.kind.as_ref() == "Terminated").expect("a Terminated event");
    assert_eq!(terminated.exit_code, Some(0), "{:?}", state.events);
    assert!(!state.failed);
}

/// Register to all running for 100 `raw_exec` tasks; prints the figure.
#[test]
fn hundred_tasks_start() {
    if std::env::var_os("CARAVAN_SLOW_TESTS").is_none() {
        eprintln!("skipped: set CARAVAN_SLOW_TESTS=1 to measure 100 tasks starting");
        return;
    }
    let mut h = Harness::start();
    // Let the node register first: the figure is about the job.
    let deadline = Instant::now() + WAIT_MAX;
    while h.server.registrations.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let registered_ns = caravan_engine::clock::Clock::now_ns(&SystemClock);
    let started = Instant::now();
    let key = h.run(raw_exec_job("hundred", JobType::Service, 100, command_config("/bin/sleep", &["30"])));
    let allocs = h.wait_allocs(&key, "100 running allocations", all_with_status(100, ClientStatus::Running));
    let elapsed = started.elapsed();
    let last_start_ns = allocs.iter().map(|a| a.task_states["t"].started_at_ns).max().unwrap_or(0);
    let last_start = Duration::from_nanos(u64::try_from(last_start_ns - registered_ns).unwrap_or(0));
    eprintln!(
        "100 raw_exec tasks: register to the last task started {last_start:?}; \
         to all running as the server sees them (after the client's update batching) {elapsed:?}"
    );
    h.server.stop_job(&key);
    h.wait_allocs(&key, "100 stopped allocations", all_with_status(100, ClientStatus::Complete));
}

/// A task of a lifecycle test: `/bin/sh -c script`, with a hook or none.
fn hook_task(name: &str, hook: Option<(LifecycleHook, bool)>, script: &str) -> Task {
    let mut task = Task::new(name, "raw_exec");
    task.config = command_config("/bin/sh", &["-c", script]);
    task.resources.cpu_mhz = 20;
    task.resources.memory_mb = 16;
    task.kill_timeout_ns = 2 * SECOND_NS;
    task.lifecycle = hook.map(|(hook, sidecar)| TaskLifecycle { hook, sidecar });
    task
}

/// A one-group job of `tasks`, restarting a failed task `attempts` times
/// 100 ms apart, then failing.
fn lifecycle_job(id: &str, job_type: JobType, attempts: u32, tasks: Vec<Task>) -> Job {
    let mut group = TaskGroup::new("g", 1, job_type, tasks);
    group.ephemeral_disk_mb = 10;
    group.restart_policy.attempts = attempts;
    group.restart_policy.delay_ns = SECOND_NS / 10;
    group.restart_policy.mode = RestartMode::Fail;
    Job::new(id, job_type, vec![group])
}

fn task_kinds(alloc: &Allocation, task: &str) -> Vec<String> {
    alloc.task_states.get(task).map_or_else(Vec::new, |s| s.events.iter().map(|e| e.kind.to_string()).collect())
}

/// Shell that waits (up to 10 s) for a file in the shared alloc dir: a
/// task that runs has not necessarily written it yet.
fn wait_for(file: &str) -> String {
    format!("for i in $(seq 100); do test -f \"$NOMAD_ALLOC_DIR/{file}\" && break; sleep 0.1; done")
}

fn alloc_dir_of(h: &Harness, alloc: &Allocation) -> PathBuf {
    h.data_dir().join("alloc").join(alloc.id.to_string()).join("alloc")
}

#[test]
fn prestart_completes_before_main_starts_and_poststop_runs_last() {
    let mut h = Harness::start();
    let tasks = vec![
        // The main task fails unless the prestart task finished first; the
        // poststop task fails unless the main task finished first.
        hook_task(
            "t",
            None,
            "test -f \"$NOMAD_ALLOC_DIR/ready\" || exit 3; echo main > \"$NOMAD_ALLOC_DIR/main-done\"",
        ),
        hook_task("init", Some((LifecycleHook::Prestart, false)), "sleep 0.5; echo ready > \"$NOMAD_ALLOC_DIR/ready\""),
        hook_task(
            "cleanup",
            Some((LifecycleHook::Poststop, false)),
            "test -f \"$NOMAD_ALLOC_DIR/main-done\" || exit 4; echo cleaned > \"$NOMAD_ALLOC_DIR/cleaned\"",
        ),
    ];
    let key = h.run(lifecycle_job("ordered", JobType::Batch, 0, tasks));
    let allocs = h.wait_allocs(&key, "the allocation complete", all_with_status(1, ClientStatus::Complete));
    let alloc = &allocs[0];
    for task in ["init", "t", "cleanup"] {
        let state = &alloc.task_states[task];
        assert_eq!(state.state, TaskLifecycleState::Dead, "{task}");
        assert!(!state.failed, "{task}: {:?}", task_kinds(alloc, task));
        assert_eq!(task_kinds(alloc, task), ["Received", "Task Setup", "Started", "Terminated"], "{task}");
    }
    let (init, main, cleanup) = (&alloc.task_states["init"], &alloc.task_states["t"], &alloc.task_states["cleanup"]);
    assert!(init.finished_at_ns <= main.started_at_ns, "main started before the prestart task ended");
    assert!(main.finished_at_ns <= cleanup.started_at_ns, "poststop started before the main task ended");
    let cleaned = std::fs::read_to_string(alloc_dir_of(&h, alloc).join("cleaned")).unwrap();
    assert_eq!(cleaned, "cleaned\n");
}

#[test]
fn failing_prestart_fails_the_allocation_and_main_never_starts() {
    let mut h = Harness::start();
    let tasks = vec![
        hook_task("init", Some((LifecycleHook::Prestart, false)), "exit 7"),
        hook_task("t", None, "touch \"$NOMAD_ALLOC_DIR/main-ran\""),
    ];
    // One restart under the policy, then the prestart task fails for good.
    let key = h.run(lifecycle_job("badinit", JobType::Batch, 1, tasks));
    let allocs = h.wait_allocs(&key, "the allocation failed", |allocs| {
        allocs.len() == 1
            && allocs[0].client_status == ClientStatus::Failed
            && allocs[0].task_states.values().all(|s| s.state == TaskLifecycleState::Dead)
    });
    let alloc = &allocs[0];
    let init = &alloc.task_states["init"];
    assert!(init.failed);
    assert_eq!(init.restarts, 1, "{:?}", task_kinds(alloc, "init"));
    assert_eq!(task_kinds(alloc, "init").last().map(String::as_str), Some("Not Restarting"));
    let main = &alloc.task_states["t"];
    assert!(!main.failed);
    assert_eq!(task_kinds(alloc, "t"), ["Sibling Task Failed"]);
    assert_eq!(main.started_at_ns, 0);
    assert!(!alloc_dir_of(&h, alloc).join("main-ran").exists(), "the main task ran");
}

#[test]
fn sidecar_is_stopped_when_the_batch_main_task_completes() {
    let mut h = Harness::start();
    let tasks = vec![
        hook_task(
            "proxy",
            Some((LifecycleHook::Prestart, true)),
            "echo $$ > \"$NOMAD_ALLOC_DIR/proxy.pid\"; exec sleep 600",
        ),
        // The main task sees the sidecar running.
        hook_task(
            "t",
            None,
            &format!("{}; kill -0 \"$(cat \"$NOMAD_ALLOC_DIR/proxy.pid\")\" || exit 5", wait_for("proxy.pid")),
        ),
    ];
    let key = h.run(lifecycle_job("sidecar", JobType::Batch, 0, tasks));
    let allocs = h.wait_allocs(&key, "the allocation complete", all_with_status(1, ClientStatus::Complete));
    let alloc = &allocs[0];
    let main = &alloc.task_states["t"];
    assert!(!main.failed, "{:?}", task_kinds(alloc, "t"));
    let proxy = &alloc.task_states["proxy"];
    assert_eq!(proxy.state, TaskLifecycleState::Dead);
    assert!(!proxy.failed);
    let kinds = task_kinds(alloc, "proxy");
    assert_eq!(kinds[kinds.len() - 4..], ["Main Tasks Dead", "Killing", "Terminated", "Killed"], "{kinds:?}");
    assert!(proxy.started_at_ns <= main.started_at_ns);
    assert!(main.finished_at_ns <= proxy.finished_at_ns);
    let pid: i32 = std::fs::read_to_string(alloc_dir_of(&h, alloc).join("proxy.pid")).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + WAIT_MAX;
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(pid), "the sidecar process {pid} still runs");
}

#[test]
fn stopping_a_service_runs_its_poststop_task() {
    let mut h = Harness::start();
    let tasks = vec![
        hook_task("t", None, "echo $$ > \"$NOMAD_ALLOC_DIR/main.pid\"; exec sleep 600"),
        hook_task(
            "announce",
            Some((LifecycleHook::Poststart, false)),
            &format!(
                "{}; kill -0 \"$(cat \"$NOMAD_ALLOC_DIR/main.pid\")\" && touch \"$NOMAD_ALLOC_DIR/announced\"",
                wait_for("main.pid")
            ),
        ),
        hook_task(
            "cleanup",
            Some((LifecycleHook::Poststop, false)),
            "pid=$(cat \"$NOMAD_ALLOC_DIR/main.pid\"); kill -0 \"$pid\" 2>/dev/null && exit 6; touch \"$NOMAD_ALLOC_DIR/cleaned\"",
        ),
    ];
    let key = h.run(lifecycle_job("svc", JobType::Service, 0, tasks));
    let allocs = h.wait_allocs(&key, "the poststart task done", |allocs| {
        allocs.len() == 1
            && allocs[0].client_status == ClientStatus::Running
            && allocs[0].task_states.get("announce").is_some_and(|s| s.state == TaskLifecycleState::Dead)
    });
    let alloc = &allocs[0];
    assert!(!alloc.task_states["announce"].failed, "{:?}", task_kinds(alloc, "announce"));
    assert!(alloc_dir_of(&h, alloc).join("announced").exists());
    // Waiting for the main task to end.
    assert_eq!(alloc.task_states["cleanup"].state, TaskLifecycleState::Pending);
    assert!(alloc.task_states["cleanup"].events.is_empty());

    h.server.stop_job(&key);
    let allocs = h.wait_allocs(&key, "the stopped allocation complete", |allocs| {
        allocs.len() == 1
            && allocs[0].client_status == ClientStatus::Complete
            && allocs[0].task_states.values().all(|s| s.state == TaskLifecycleState::Dead)
    });
    let alloc = &allocs[0];
    let (main, cleanup) = (&alloc.task_states["t"], &alloc.task_states["cleanup"]);
    assert_eq!(task_kinds(alloc, "t").last().map(String::as_str), Some("Killed"));
    assert!(!cleanup.failed, "{:?}", task_kinds(alloc, "cleanup"));
    assert!(main.finished_at_ns <= cleanup.started_at_ns);
    assert!(alloc_dir_of(&h, alloc).join("cleaned").exists());
}

#[test]
fn a_dispatched_task_reads_its_payload_from_local() {
    let mut h = Harness::start();
    let mut parent = shell_job("render", JobType::Batch, 1, "test \"$(cat local/in/input.txt)\" = 'hello payload'");
    parent.parameterized =
        Some(Parameterized { payload: PayloadMode::Required, meta_required: Vec::new(), meta_optional: Vec::new() });
    parent.task_groups[0].tasks[0].dispatch_payload_file = Some("in/input.txt".into());
    let parent_key = h.run(parent);
    let mut child_id = None;
    h.server
        .with_cluster(|c| {
            c.write(|state, ids, now| {
                let (command, id) =
                    endpoints::dispatch_job(state, &parent_key, b"hello payload".to_vec(), BTreeMap::new(), now, ids)?;
                child_id = Some(id);
                Ok(command)
            })
        })
        .unwrap()
        .unwrap();
    let child = JobKey::new(&parent_key.namespace, &child_id.unwrap());
    let allocs = h.wait_allocs(&child, "the dispatched allocation complete", |allocs| {
        allocs.len() == 1 && allocs[0].client_status.is_terminal()
    });
    assert_eq!(allocs[0].client_status, ClientStatus::Complete, "{:#?}", allocs[0].task_states);
    let written = std::fs::read_to_string(h.task_dir(&allocs[0]).join("local/in/input.txt")).unwrap();
    assert_eq!(written, "hello payload");
}

/// A service job rolled out under a deployment: `max_parallel` 1, health
/// decided by the client after `min_healthy_time`.
fn deployed_job(id: &str, script: &str, min_healthy_time_ns: i64) -> Job {
    let mut job = shell_job(id, JobType::Service, 1, script);
    job.task_groups[0].update = Some(UpdateStrategy {
        max_parallel: 1,
        health_check: "task_states".into(),
        min_healthy_time_ns,
        healthy_deadline_ns: 60 * SECOND_NS,
        ..UpdateStrategy::default()
    });
    job.task_groups[0].restart_policy.attempts = 0;
    job.task_groups[0].restart_policy.mode = RestartMode::Fail;
    job
}

#[test]
fn a_deployed_allocation_is_healthy_after_min_healthy_time() {
    let mut h = Harness::start();
    let key = h.run(deployed_job("healthy", "exec sleep 600", SECOND_NS));
    let allocs =
        h.wait_allocs(&key, "a healthy allocation", |allocs| allocs.iter().any(|a| a.deployment_healthy().is_some()));
    let alloc = &allocs[0];
    let status = alloc.deployment_status.expect("health recorded");
    assert_eq!(status.healthy, Some(true), "{:?}", event_kinds(alloc));
    let started = alloc.task_states["t"].started_at_ns;
    assert!(started > 0);
    assert!(status.timestamp_ns >= started + SECOND_NS, "healthy only after running min_healthy_time");
    let snap = h.server.store.snapshot();
    let d = snap.latest_deployment(&key).expect("a deployment");
    assert_eq!(d.status, DeploymentStatus::Successful);
    assert!(snap.job(&key).unwrap().stable);
}

#[test]
fn a_deployed_allocation_whose_task_fails_is_unhealthy() {
    let mut h = Harness::start();
    // It would be healthy after 30 s; it fails first.
    let key = h.run(deployed_job("unhealthy", "sleep 0.5; exit 3", 30 * SECOND_NS));
    let allocs = h
        .wait_allocs(&key, "an unhealthy allocation", |allocs| allocs.iter().any(|a| a.deployment_healthy().is_some()));
    let alloc = &allocs[0];
    assert_eq!(alloc.deployment_healthy(), Some(false), "{:?}", event_kinds(alloc));
    assert_eq!(alloc.client_status, ClientStatus::Failed);
    let d = h.server.store.snapshot().latest_deployment(&key).expect("a deployment").clone();
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(&*d.status_description, "Failed due to unhealthy allocations");
}
