//! Driver conformance suite: one set of checks every driver passes, run for
//! `raw_exec`, `exec` and `docker`.
//!
//! `exec` needs root, cgroups and namespaces; `docker` needs an engine and
//! builds `caravan-test/busybox:latest` with `tests/support/busybox-image.sh`
//! when it is missing (static busybox, `docker import`). Where either is
//! unavailable the test prints why and passes, unless
//! `CARAVAN_REQUIRE_ALL_TESTS=1`, which CI sets: then the skip fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caravan::client::driver::docker::DockerDriver;
use caravan::client::driver::exec::ExecDriver;
use caravan::client::driver::executor::Executor;
use caravan::client::driver::logs::{LogStream, read_all};
use caravan::client::driver::raw_exec::RawExecDriver;
use caravan::client::driver::{Driver, DriverError, LogConfig, TaskDirs, TaskHandle, TaskResources, TaskSpec};
use caravan_engine::model::ConfigValue;

const TEST_IMAGE: &str = "caravan-test/busybox:latest";
/// How long a test waits for a log line to appear: the pump copies within
/// milliseconds; a loaded CI machine gets slack.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// The kill timeout used by the stop check: long enough to see SIGTERM
/// ignored, short enough to keep the suite fast.
const KILL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Prints why a test cannot run here, or fails it when CI demands every test.
fn skip(reason: &str) {
    if std::env::var("CARAVAN_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1") {
        panic!("CARAVAN_REQUIRE_ALL_TESTS=1 but the test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// How the suite runs a shell script with one driver.
struct Kind {
    make: fn() -> Arc<dyn Driver>,
    /// A config running `script` with `sh -c`.
    config: fn(&str) -> ConfigValue,
    /// A config whose command or image does not exist.
    missing: fn() -> ConfigValue,
}

fn map(entries: &[(&str, ConfigValue)]) -> ConfigValue {
    ConfigValue::Map(entries.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
}

fn string(s: &str) -> ConfigValue {
    ConfigValue::String(s.into())
}

fn process_config(script: &str) -> ConfigValue {
    map(&[("command", string("/bin/sh")), ("args", ConfigValue::List(vec![string("-c"), string(script)]))])
}

fn process_missing() -> ConfigValue {
    map(&[("command", string("/nonexistent/caravan-no-such-command"))])
}

fn docker_config(script: &str) -> ConfigValue {
    map(&[
        ("image", string(TEST_IMAGE)),
        ("command", string("sh")),
        ("args", ConfigValue::List(vec![string("-c"), string(script)])),
    ])
}

fn docker_missing() -> ConfigValue {
    map(&[("image", string("caravan-test/no-such-image:latest"))])
}

fn raw_exec_kind() -> Kind {
    Kind { make: || Arc::new(RawExecDriver::new()), config: process_config, missing: process_missing }
}

/// The `caravan` binary of this build, which runs `caravan executor`.
fn executor() -> Executor {
    Executor::new(env!("CARGO_BIN_EXE_caravan"))
}

fn raw_exec_executor_kind() -> Kind {
    Kind {
        make: || Arc::new(RawExecDriver::with_executor(executor())),
        config: process_config,
        missing: process_missing,
    }
}

fn exec_executor_kind() -> Option<Kind> {
    exec_kind()?;
    Some(Kind {
        make: || Arc::new(ExecDriver::with_executor(executor())),
        config: process_config,
        missing: process_missing,
    })
}

fn exec_kind() -> Option<Kind> {
    if let Some(reason) = ExecDriver::unavailable_reason() {
        skip(&format!("exec driver: {reason}"));
        return None;
    }
    Some(Kind { make: || Arc::new(ExecDriver::new()), config: process_config, missing: process_missing })
}

fn docker_kind() -> Option<Kind> {
    let driver = DockerDriver::new();
    let fingerprint = driver.fingerprint();
    if !fingerprint.healthy {
        skip(&format!("docker driver: {}", fingerprint.health_description));
        return None;
    }
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output()
        .is_ok_and(|out| out.status.success());
    if !present {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/busybox-image.sh");
        let built = std::process::Command::new("sh").arg(&script).arg(TEST_IMAGE).output();
        match built {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                skip(&format!("cannot build {TEST_IMAGE}: {}", String::from_utf8_lossy(&out.stderr)));
                return None;
            }
            Err(err) => {
                skip(&format!("cannot run {}: {err}", script.display()));
                return None;
            }
        }
    }
    Some(Kind { make: || Arc::new(DockerDriver::new()), config: docker_config, missing: docker_missing })
}

/// A scratch allocation directory and the tasks started in it; dropping it
/// destroys the tasks and removes the directory, also when a check fails.
struct Scratch {
    driver: Arc<dyn Driver>,
    root: PathBuf,
    handles: Vec<TaskHandle>,
    counter: u32,
    alloc_id: String,
}

impl Scratch {
    fn new(driver: Arc<dyn Driver>, test: &str) -> Scratch {
        let root =
            std::env::temp_dir().join(format!("caravan-drivers-{}-{test}-{}", driver.name(), std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let alloc_id = format!("{}-{test}-{}", driver.name().replace('_', "-"), std::process::id());
        Scratch { driver, root, handles: Vec::new(), counter: 0, alloc_id }
    }

    fn spec(&mut self, config: ConfigValue) -> TaskSpec {
        self.counter += 1;
        let task_name = format!("task{}", self.counter);
        TaskSpec {
            alloc_id: self.alloc_id.clone(),
            dirs: TaskDirs::new(&self.root, &task_name),
            task_name,
            config,
            env: BTreeMap::new(),
            device_env: BTreeMap::new(),
            devices: Vec::new(),
            user: None,
            resources: TaskResources { cpu_mhz: 100, memory_mb: 64 },
            ports: Vec::new(),
            logs: LogConfig::default(),
        }
    }

    fn start(&mut self, spec: &TaskSpec) -> TaskHandle {
        let handle = self.driver.start(spec).unwrap_or_else(|err| panic!("{} start: {err}", self.driver.name()));
        self.handles.push(handle.clone());
        handle
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for handle in &self.handles {
            let _ = self.driver.destroy(handle);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn wait_for_log(spec: &TaskSpec, stream: LogStream, needle: &str) -> String {
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let text = String::from_utf8_lossy(&read_all(&spec.dirs.log_dir, &spec.task_name, stream).unwrap_or_default())
            .into_owned();
        if text.contains(needle) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every check of the suite, in order, for one driver.
fn conformance(kind: &Kind, test: &str) {
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), test);

    // Fingerprint: detected and healthy with the driver's attribute.
    let fingerprint = driver.fingerprint();
    assert!(fingerprint.detected && fingerprint.healthy, "{fingerprint:?}");
    assert_eq!(fingerprint.attributes.get(&format!("driver.{}", driver.name())).map(String::as_str), Some("1"));

    // Exit code, environment and both log streams.
    let mut spec = scratch.spec((kind.config)(r#"echo "greeting=$GREETING"; echo oops >&2; exit 3"#));
    spec.env.insert("GREETING".into(), "hello from caravan".into());
    let handle = scratch.start(&spec);
    let exit = driver.wait(&handle).unwrap();
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert!(!exit.successful());
    let stdout = wait_for_log(&spec, LogStream::Stdout, "greeting=hello from caravan");
    assert!(stdout.contains("greeting=hello from caravan"), "stdout: {stdout:?}");
    let stderr = wait_for_log(&spec, LogStream::Stderr, "oops");
    assert!(stderr.contains("oops"), "stderr: {stderr:?}");
    assert!(spec.dirs.log_dir.join(format!("{}.stdout.0", spec.task_name)).exists());
    driver.destroy(&handle).unwrap();

    // A successful task.
    let spec = scratch.spec((kind.config)("exit 0"));
    let handle = scratch.start(&spec);
    assert!(driver.wait(&handle).unwrap().successful());
    driver.destroy(&handle).unwrap();

    // Stop kills a task that ignores SIGTERM once the kill timeout passes.
    let spec = scratch.spec((kind.config)("trap '' TERM; echo ready; while true; do sleep 1; done"));
    let handle = scratch.start(&spec);
    wait_for_log(&spec, LogStream::Stdout, "ready");
    let stopped_at = Instant::now();
    driver.stop(&handle, KILL_TIMEOUT).unwrap();
    let exit = driver.wait(&handle).unwrap();
    assert!(!exit.successful(), "{exit:?}");
    assert!(stopped_at.elapsed() < KILL_TIMEOUT + LOG_WAIT, "stop took {:?}", stopped_at.elapsed());
    driver.destroy(&handle).unwrap();

    // Recover: the handle survives serialization and a new driver, which
    // re-attaches, captures output and can stop the task.
    let spec = scratch.spec((kind.config)("echo first; sleep 2; echo second; sleep 60"));
    let handle = scratch.start(&spec);
    wait_for_log(&spec, LogStream::Stdout, "first");
    let stored = serde_json::to_string(&handle).unwrap();
    drop(driver);
    let driver = (kind.make)();
    scratch.driver = Arc::clone(&driver);
    let handle: TaskHandle = serde_json::from_str(&stored).unwrap();
    driver.recover(&handle).unwrap();
    let stdout = wait_for_log(&spec, LogStream::Stdout, "second");
    assert!(stdout.contains("second"), "output after recovery is captured: {stdout:?}");
    driver.stop(&handle, KILL_TIMEOUT).unwrap();
    assert!(!driver.wait(&handle).unwrap().successful());
    driver.destroy(&handle).unwrap();
    match driver.recover(&handle) {
        Err(DriverError::TaskGone(_)) => {}
        other => panic!("recovering a destroyed task: {other:?}"),
    }

    // Unknown config keys are refused, naming the key.
    let mut bad = (kind.config)("exit 0");
    if let ConfigValue::Map(entries) = &mut bad {
        entries.insert("bogus_key".into(), ConfigValue::Int(1));
    }
    let err = driver.validate_config(&bad).unwrap_err();
    assert!(err.to_string().contains("bogus_key"), "{err}");
    let spec = scratch.spec(bad);
    assert!(matches!(driver.start(&spec), Err(DriverError::InvalidConfig(_))));
    assert!(driver.validate_config(&ConfigValue::Null).is_err(), "a config without command or image is refused");

    // A command or image that does not exist fails the start cleanly.
    let spec = scratch.spec((kind.missing)());
    match driver.start(&spec) {
        Err(DriverError::Start(message)) => assert!(message.contains("no-such"), "{message}"),
        other => panic!("starting a missing command or image: {other:?}"),
    }
}

#[test]
fn raw_exec_conformance() {
    conformance(&raw_exec_kind(), "conformance");
}

#[test]
fn raw_exec_executor_conformance() {
    conformance(&raw_exec_executor_kind(), "conformance-executor");
}

#[test]
fn exec_executor_conformance() {
    if let Some(kind) = exec_executor_kind() {
        conformance(&kind, "conformance-executor");
    }
}

/// Waits until `path` exists or a deadline passes.
fn wait_for_file(path: &std::path::Path) {
    let deadline = Instant::now() + LOG_WAIT;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The executor records the exit status, so a driver that re-attached to a
/// task (a new agent) reports its real exit code: when the task exits after
/// the re-attach, and when it exited while no agent was there.
fn exit_status_survives_reattach(kind: &Kind, test: &str) {
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), test);
    // The task exits with the code written in the file `go`.
    let script = "echo $$ > pid; while [ ! -s go ]; do sleep 0.05; done; exit $(cat go)";
    let mut handles = Vec::new();
    for _ in 0..2 {
        let spec = scratch.spec((kind.config)(script));
        let handle = scratch.start(&spec);
        wait_for_file(&spec.dirs.task_dir.join("pid"));
        handles.push((spec, serde_json::to_string(&handle).unwrap()));
    }
    // The agent goes away; its tasks do not.
    drop(driver);
    // The second task exits while no agent runs.
    let (gone_spec, _) = &handles[1];
    std::fs::write(gone_spec.dirs.task_dir.join("go"), "4").unwrap();
    let status_file = caravan::client::driver::executor::executor_dir(&gone_spec.dirs).join("status.json");
    wait_for_file(&status_file);
    assert!(status_file.exists(), "the executor recorded the exit");

    let driver = (kind.make)();
    scratch.driver = Arc::clone(&driver);
    // The first exits after the new driver re-attached.
    let (spec, stored) = &handles[0];
    let handle: TaskHandle = serde_json::from_str(stored).unwrap();
    driver.recover(&handle).unwrap();
    std::fs::write(spec.dirs.task_dir.join("go"), "3").unwrap();
    let exit = driver.wait(&handle).unwrap();
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert_eq!(exit.signal, None);
    assert_eq!(exit.error, None, "the status is known");
    driver.destroy(&handle).unwrap();

    let (_, stored) = &handles[1];
    let handle: TaskHandle = serde_json::from_str(stored).unwrap();
    driver.recover(&handle).expect("a task that exited with a recorded status is not lost");
    let exit = driver.wait(&handle).unwrap();
    assert_eq!(exit.exit_code, 4, "{exit:?}");
    assert_eq!(exit.error, None);
    driver.destroy(&handle).unwrap();
    assert!(matches!(driver.recover(&handle), Err(DriverError::TaskGone(_))));
}

#[test]
fn raw_exec_exit_status_survives_reattach() {
    exit_status_survives_reattach(&raw_exec_executor_kind(), "reattach");
}

#[test]
fn exec_exit_status_survives_reattach() {
    if let Some(kind) = exec_executor_kind() {
        exit_status_survives_reattach(&kind, "reattach");
    }
}

/// An `exec` task's user owns its task directory, so the executor's files
/// live outside it, for the agent's user alone: the task cannot see,
/// replace or forge its exit status; the status it reports is the real one.
#[test]
fn exec_task_cannot_touch_its_executor_status() {
    use std::os::unix::fs::MetadataExt;
    let Some(kind) = exec_executor_kind() else { return };
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), "executor-dir");
    // Every way in the task could try: a `.executor` in its own directory
    // (where it used to be), and the allocation directory above it.
    let forged = r#"{"exit_code":0,"signal":null,"finished_at_unix_ms":1}"#;
    let script = format!(
        "mkdir -p /.executor && echo '{forged}' > /.executor/status.json; \
         mkdir -p ../.executor/task1 2>/dev/null && echo '{forged}' > ../.executor/task1/status.json; \
         exit 3"
    );
    let spec = scratch.spec(process_config(&script));
    let handle = scratch.start(&spec);
    let exit = driver.wait(&handle).unwrap();
    assert_eq!(exit.exit_code, 3, "the real status: {exit:?}");
    let dir = caravan::client::driver::executor::executor_dir(&spec.dirs);
    assert!(!dir.starts_with(&spec.dirs.task_dir), "{} is outside the task directory", dir.display());
    let agent_uid = rustix::process::geteuid().as_raw();
    for path in [dir.parent().unwrap(), dir.as_path()] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(meta.uid(), agent_uid, "{} belongs to the agent", path.display());
        assert_eq!(meta.mode() & 0o077, 0, "{} is the agent's alone", path.display());
    }
    let recorded = caravan::client::driver::executor::read_status(&dir).expect("the executor's record");
    assert_eq!(recorded.exit_code, 3, "{recorded:?}");
    // The task's user cannot write the allocation directory the executors'
    // directory sits in, so cannot rename or replace it.
    let alloc_root = spec.dirs.task_dir.parent().unwrap();
    let alloc_meta = std::fs::metadata(alloc_root).unwrap();
    assert_eq!(alloc_meta.uid(), agent_uid);
    assert_eq!(alloc_meta.mode() & 0o022, 0, "{} is not writable by others", alloc_root.display());
}

/// The agent runs with transparent huge pages off (its allocator's memory
/// use) and children inherit that; a task must get them back.
#[test]
fn task_gets_transparent_huge_pages_back_from_the_executor() {
    let thp_enabled =
        |status: &str| status.lines().find_map(|line| line.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()));
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    if thp_enabled(&own).is_none() {
        skip("this kernel's /proc/<pid>/status has no THP_enabled line");
        return;
    }
    // As the agent's main does.
    rustix::thread::disable_transparent_huge_pages(true).unwrap();
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(thp_enabled(&own).as_deref(), Some("0"), "the test process (the agent's stand-in) has THP off");
    let kind = raw_exec_executor_kind();
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), "thp");
    let spec = scratch.spec(process_config("grep -q '^THP_enabled:[[:space:]]*1' /proc/self/status || exit 7"));
    let handle = scratch.start(&spec);
    let exit = driver.wait(&handle).unwrap();
    assert_eq!(exit.exit_code, 0, "the task saw THP_enabled 0 (exit 7) or failed: {exit:?}");
}

/// What a container prints while no agent runs reaches its log once a new
/// driver re-attaches: every line, in order, none twice.
#[test]
fn docker_output_while_no_agent_ran_is_copied_after_reattach() {
    let Some(kind) = docker_kind() else { return };
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), "docker-gap");
    let script = "i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo line$i; sleep 0.1; done; sleep 60";
    let spec = scratch.spec(docker_config(script));
    let handle = scratch.start(&spec);
    let seen = wait_for_log(&spec, LogStream::Stdout, "line3\n");
    assert!(seen.contains("line3\n"), "{seen:?}");
    // The agent goes away (its driver and log copy with it) while the
    // container goes on printing.
    scratch.driver = Arc::new(DockerDriver::new());
    drop(driver);
    let copied_before =
        String::from_utf8_lossy(&read_all(&spec.dirs.log_dir, &spec.task_name, LogStream::Stdout).unwrap())
            .into_owned();
    std::thread::sleep(Duration::from_millis(1500));
    let still = String::from_utf8_lossy(&read_all(&spec.dirs.log_dir, &spec.task_name, LogStream::Stdout).unwrap())
        .into_owned();
    assert_eq!(still, copied_before, "nothing is copied while no agent runs");

    // A new agent re-attaches: the lines printed meanwhile arrive, once.
    scratch.driver.recover(&handle).unwrap();
    let text = wait_for_log(&spec, LogStream::Stdout, "line30\n");
    let want: String = (1..=30).map(|i| format!("line{i}\n")).collect();
    assert_eq!(text, want, "every line once, in order");
}

#[test]
fn exec_conformance() {
    if let Some(kind) = exec_kind() {
        conformance(&kind, "conformance");
    }
}

#[test]
fn docker_conformance() {
    if let Some(kind) = docker_kind() {
        conformance(&kind, "conformance");
    }
}

#[test]
fn exec_isolates_and_limits() {
    let Some(kind) = exec_kind() else { return };
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), "isolation");
    // PID 1 of its own namespace, as nobody, with a private /proc.
    let spec = scratch.spec(process_config("echo pid=$$ uid=$(id -u); ls /proc | grep -c '^[0-9]'"));
    let handle = scratch.start(&spec);
    assert!(driver.wait(&handle).unwrap().successful());
    let stdout = wait_for_log(&spec, LogStream::Stdout, "uid=");
    assert!(stdout.contains("pid=1 uid=65534"), "{stdout:?}");
    let processes: u32 = stdout.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(u32::MAX);
    assert!(processes < 5, "the task sees only its own processes: {stdout:?}");
    driver.destroy(&handle).unwrap();

    // Memory limit and CPU shares land in the task's cgroups.
    let mut spec = scratch.spec(process_config("sleep 30"));
    spec.resources = TaskResources { cpu_mhz: 250, memory_mb: 32 };
    let handle = scratch.start(&spec);
    let caravan::client::driver::HandleState::Process { cgroups, .. } = &handle.state else { panic!("process handle") };
    let read = |file: &str| {
        cgroups.iter().find_map(|dir| std::fs::read_to_string(dir.join(file)).ok()).map(|s| s.trim().to_string())
    };
    match (read("memory.limit_in_bytes"), read("memory.max")) {
        (Some(limit), _) | (None, Some(limit)) => assert_eq!(limit, (32u64 * 1024 * 1024).to_string()),
        (None, None) => panic!("no memory limit file in {cgroups:?}"),
    }
    if let Some(shares) = read("cpu.shares") {
        assert_eq!(shares, "250");
    }
    driver.destroy(&handle).unwrap();
    assert!(cgroups.iter().all(|dir| !dir.exists()), "destroy removes the cgroups");
}

#[test]
fn docker_ports_labels_and_mounts() {
    let Some(kind) = docker_kind() else { return };
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), "ports");
    let mut config = docker_config("echo shared > /alloc/from-task; ls /local /secrets >/dev/null && echo mounted");
    if let ConfigValue::Map(entries) = &mut config {
        entries.insert("ports".into(), ConfigValue::List(vec![string("http")]));
        entries.insert("labels".into(), map(&[("team", string("caravan"))]));
    }
    let mut spec = scratch.spec(config);
    spec.ports.push(caravan::client::driver::PortMapping {
        label: "http".into(),
        host_port: 28_080,
        container_port: 8080,
    });
    let handle = scratch.start(&spec);
    assert!(driver.wait(&handle).unwrap().successful());
    assert!(wait_for_log(&spec, LogStream::Stdout, "mounted").contains("mounted"));
    assert_eq!(std::fs::read_to_string(spec.dirs.alloc_dir.join("from-task")).unwrap().trim(), "shared");
    let caravan::client::driver::HandleState::Container { id, .. } = &handle.state else { panic!("container handle") };
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Labels}} {{json .HostConfig.PortBindings}}", id])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains(r#""com.caravan.task_name":"task1""#), "{inspect}");
    assert!(inspect.contains(r#""team":"caravan""#), "{inspect}");
    assert!(inspect.contains(r#""8080/tcp":[{"HostIp":"","HostPort":"28080"}]"#), "{inspect}");
    let docker = DockerDriver::new();
    let found = docker.find_containers(&spec.alloc_id).unwrap();
    assert_eq!(found, vec![(id.clone(), "task1".to_string())]);
    driver.destroy(&handle).unwrap();
}

/// Two GPUs of a simulated 8 × H200 board, assigned to a task as the
/// scheduler would.
fn two_simulated_gpus() -> (Vec<caravan_engine::model::AssignedDevice>, Vec<String>) {
    let fingerprint = caravan_gpu::SimulatedGpus::h200_8x().fingerprint();
    let uuids: Vec<String> = fingerprint.gpus.iter().skip(2).take(2).map(|gpu| gpu.uuid.clone()).collect();
    assert_eq!(uuids.len(), 2);
    let assigned = caravan_engine::model::AssignedDevice {
        task_index: 0,
        vendor: "nvidia".into(),
        kind: "gpu".into(),
        name: "NVIDIA H200".into(),
        instance_ids: uuids.iter().map(|id| Arc::from(id.as_str())).collect(),
    };
    (vec![assigned], uuids)
}

/// A docker task given two GPUs asks Docker for exactly those (driver
/// `nvidia`, their UUIDs, capability `gpu`), and sees them in its env. The
/// request is checked as built, then on a created container through the
/// Docker API (it cannot start here: no NVIDIA runtime).
#[test]
fn docker_task_gets_a_device_request_for_its_gpus() {
    let (devices, uuids) = two_simulated_gpus();
    let root = std::env::temp_dir().join(format!("caravan-drivers-docker-gpu-{}", std::process::id()));
    let mut spec = TaskSpec {
        alloc_id: format!("docker-gpu-{}", std::process::id()),
        task_name: "train".into(),
        config: docker_config("nvidia-smi"),
        env: BTreeMap::new(),
        device_env: caravan_gpu::visible_devices_env(&devices).into_iter().collect(),
        devices,
        user: None,
        resources: TaskResources { cpu_mhz: 100, memory_mb: 64 },
        dirs: TaskDirs::new(&root, "train"),
        ports: Vec::new(),
        logs: LogConfig::default(),
    };
    let body = DockerDriver::container_config(&spec).unwrap();
    let requests = body.host_config.as_ref().and_then(|h| h.device_requests.clone()).expect("a device request");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
    assert_eq!(requests[0].device_ids.as_deref(), Some(uuids.as_slice()));
    assert_eq!(requests[0].capabilities, Some(vec![vec!["gpu".to_string()]]));
    let env = body.env.clone().unwrap_or_default();
    assert!(env.contains(&format!("NVIDIA_VISIBLE_DEVICES={}", uuids.join(","))), "{env:?}");
    assert!(env.contains(&format!("CUDA_VISIBLE_DEVICES={}", uuids.join(","))), "{env:?}");

    // Without GPUs, no request: the NVIDIA runtime hook is never invoked.
    let mut plain = spec.clone();
    plain.devices.clear();
    let body = DockerDriver::container_config(&plain).unwrap();
    assert_eq!(body.host_config.and_then(|h| h.device_requests), None);

    if docker_kind().is_none() {
        return;
    }
    spec.task_name = "train-created".into();
    let driver = DockerDriver::new();
    let id = driver.create_container(&spec).unwrap();
    let inspect = std::process::Command::new("docker").args(["container", "inspect", &id]).output().unwrap();
    let handle = TaskHandle {
        driver: "docker".into(),
        alloc_id: spec.alloc_id.clone(),
        task_name: spec.task_name.clone(),
        log_dir: spec.dirs.log_dir.clone(),
        logs: spec.logs,
        state: caravan::client::driver::HandleState::Container { id: id.clone(), log_cursor: None },
    };
    driver.destroy(&handle).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    assert!(inspect.status.success(), "docker inspect: {}", String::from_utf8_lossy(&inspect.stderr));
    let inspected: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let requests = &inspected[0]["HostConfig"]["DeviceRequests"];
    assert_eq!(requests.as_array().map(Vec::len), Some(1), "{requests}");
    assert_eq!(requests[0]["Driver"], "nvidia");
    assert_eq!(requests[0]["DeviceIDs"], serde_json::json!(uuids));
    assert_eq!(requests[0]["Capabilities"], serde_json::json!([["gpu"]]));
}

/// A raw_exec task given two GPUs sees exactly their UUIDs in
/// `NVIDIA_VISIBLE_DEVICES` and `CUDA_VISIBLE_DEVICES`.
#[test]
fn raw_exec_task_sees_its_gpus_in_the_environment() {
    let (devices, uuids) = two_simulated_gpus();
    let driver: Arc<dyn Driver> = Arc::new(RawExecDriver::with_executor(executor()));
    let mut scratch = Scratch::new(Arc::clone(&driver), "gpu-env");
    let mut spec = scratch.spec(process_config(r#"echo "nvidia=$NVIDIA_VISIBLE_DEVICES cuda=$CUDA_VISIBLE_DEVICES""#));
    spec.device_env = caravan_gpu::visible_devices_env(&devices).into_iter().collect();
    spec.devices = devices;
    let handle = scratch.start(&spec);
    assert!(driver.wait(&handle).unwrap().successful());
    let joined = uuids.join(",");
    let expected = format!("nvidia={joined} cuda={joined}");
    let stdout = wait_for_log(&spec, LogStream::Stdout, &expected);
    assert!(stdout.contains(&expected), "{stdout:?}");
}

/// The exec driver's device cgroup: a character device node the task may
/// open by its permissions (1:11, `/dev/kmsg`'s numbers, mode 0666, made in
/// a directory the task can reach) is refused with EPERM, while `/dev/null`
/// works.
#[test]
fn exec_task_is_denied_devices_it_was_not_given() {
    use std::os::unix::fs::PermissionsExt;
    let Some(kind) = exec_kind() else { return };
    let driver = (kind.make)();
    let mut scratch = Scratch::new(Arc::clone(&driver), "devices");
    let dir = scratch.root.join("devnodes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&scratch.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = dir.join("kmsg-copy");
    let made = std::process::Command::new("mknod").args(["-m", "0666"]).arg(&node).args(["c", "1", "11"]).status();
    if !made.is_ok_and(|s| s.success()) {
        skip("cannot mknod a character device here");
        return;
    }
    let script = format!(
        "if head -c 1 {node} >/dev/null 2>/tmp/err.$$; then echo kmsg=opened; else echo kmsg=$(cat /tmp/err.$$); fi; \
         echo null=$(echo x > /dev/null && echo ok)",
        node = node.display()
    );
    let spec = scratch.spec(process_config(&script));
    let handle = scratch.start(&spec);
    assert!(driver.wait(&handle).unwrap().successful());
    let stdout = wait_for_log(&spec, LogStream::Stdout, "null=");
    assert!(stdout.contains("null=ok"), "{stdout:?}");
    assert!(stdout.contains("kmsg=") && stdout.contains("Operation not permitted"), "{stdout:?}");
    driver.destroy(&handle).unwrap();
}
