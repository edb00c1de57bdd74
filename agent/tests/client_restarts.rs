//! Real processes riding out restarts: a client agent killed with SIGKILL
//! and started again on its data dir reports the real exit code of a task
//! that exits afterwards (the task's `caravan executor` recorded it: the
//! task is no child of the new agent); a server killed and started again on
//! its data dir leaves the client's running task alone, the client
//! registers and heartbeats again, and a new job runs. A task killed from
//! outside goes through its restart policy until it fails; a client
//! stopped past its heartbeat TTL, whose allocation the servers declared
//! lost, kills that task once it runs again.

#[path = "support/cluster.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{Ca, ServerConfig, get, http, wait_until};
use serde_json::{Value, json};

/// Generous for a loaded 2-core CI machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The task waits for `$NOMAD_TASK_DIR/go`, then exits with the code in it.
const WAIT_FOR_GO: &str = "echo $$ > \"$NOMAD_TASK_DIR/pid\"; while [ ! -s \"$NOMAD_TASK_DIR/go\" ]; do sleep 0.05; done; \
                           exit $(cat \"$NOMAD_TASK_DIR/go\")";

struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
}

impl Agent {
    fn start(dir: &Path, config: &Path) -> Agent {
        let mut agent = Agent { child: None, dir: dir.to_path_buf(), config: config.to_path_buf() };
        agent.restart();
        agent
    }

    /// Starts the agent (again) on the same configuration and data dir.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: nothing of the agent gets to clean up.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn client_config(dir: &Path, server_rpc: &str, ca: &Ca) -> PathBuf {
    let tls = dir.join("tls");
    ca.server_cert(&tls);
    let text = format!(
        r#"name = "c1"
data_dir = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
ports {{
  http = {http}
}}
client {{
  enabled = true
  servers = ["{server_rpc}"]
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
tls {{
  rpc = true
  ca_file = "{ca}/caravan-agent-ca.pem"
  cert_file = "{tls}/global-server-caravan.pem"
  key_file = "{tls}/global-server-caravan-key.pem"
}}
"#,
        data = dir.join("data").display(),
        http = free_port(),
        ca = ca.dir.display(),
        tls = tls.display(),
    );
    let path = dir.join("agent.hcl");
    std::fs::write(&path, text).unwrap();
    path
}

/// A server and one client on loopback, each in its own directory.
struct Cluster {
    _root: tempfile::TempDir,
    server: Agent,
    client: Agent,
    base: String,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// `server_extra`: lines inside the server's `server { }` block.
    fn start_with(server_extra: &str) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let ca = Ca::create(root.path());
        let server_dir = root.path().join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        ca.server_cert(&server_dir.join("tls"));
        let (http_port, rpc_port) = (free_port(), free_port());
        let server_rpc = format!("127.0.0.1:{rpc_port}");
        let peers = [server_rpc.clone()];
        let server_config = ServerConfig {
            name: "server",
            dir: &server_dir,
            bind_addr: "127.0.0.1",
            http_port,
            rpc_port,
            peers: &peers,
            ca: &ca,
            server_extra,
        }
        .write();
        let server = Agent::start(&server_dir, &server_config);
        let client_dir = root.path().join("c1");
        std::fs::create_dir_all(&client_dir).unwrap();
        let client = Agent::start(&client_dir, &client_config(&client_dir, &server_rpc, &ca));
        let cluster = Cluster { _root: root, server, client, base: format!("http://127.0.0.1:{http_port}") };
        assert!(wait_until(TIMEOUT, || cluster.node_ready()), "a ready node; server log:\n{}", cluster.server.log());
        cluster
    }

    fn node_ready(&self) -> bool {
        get(&format!("{}/v1/nodes", self.base))
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|nodes| nodes.iter().any(|n| n["Status"] == "ready"))
    }

    fn put_job(&self, job: Value) {
        let resp = http().put(&format!("{}/v1/jobs", self.base)).send_json(json!({ "Job": job })).unwrap();
        assert_eq!(resp.status(), 200, "job registered");
    }

    fn alloc_by_id(&self, id: &str) -> Option<Value> {
        get(&format!("{}/v1/allocation/{id}", self.base))
    }

    fn alloc(&self, job: &str) -> Option<Value> {
        let list = get(&format!("{}/v1/job/{job}/allocations", self.base))?;
        let id = list.as_array()?.first()?["ID"].as_str()?.to_string();
        get(&format!("{}/v1/allocation/{id}", self.base))
    }

    fn wait_status(&self, job: &str, status: &str) -> Value {
        let reached = wait_until(TIMEOUT, || self.alloc(job).is_some_and(|a| a["ClientStatus"] == status));
        assert!(reached, "{job} {status}: {:?}\nclient log:\n{}", self.alloc(job), self.client.log());
        self.alloc(job).unwrap()
    }

    /// The task's `local/` directory on the client.
    fn task_local(&self, alloc: &Value) -> PathBuf {
        self.client.dir.join("data/alloc").join(alloc["ID"].as_str().unwrap()).join("t/local")
    }

    fn stop_job(&self, job: &str) {
        let _ = http().delete(&format!("{}/v1/job/{job}?purge=true", self.base)).call();
    }
}

fn shell_job(id: &str, job_type: &str, script: &str) -> Value {
    json!({
        "ID": id, "Name": id, "Type": job_type, "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail", "Interval": 60_000_000_000u64, "Delay": 1_000_000_000u64},
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/sh", "args": ["-c", script]},
                "Resources": {"CPU": 100, "MemoryMB": 64}}]}]
    })
}

fn terminated_exit_code(alloc: &Value) -> Option<i64> {
    alloc["TaskStates"]["t"]["Events"].as_array()?.iter().find(|e| e["Type"] == "Terminated")?["ExitCode"].as_i64()
}

fn wait_for_file(path: &Path) {
    assert!(wait_until(TIMEOUT, || path.exists()), "{} never appeared", path.display());
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn killed_client_reports_the_real_exit_code_after_restart() {
    let mut cluster = Cluster::start();
    cluster.put_job(shell_job("fails", "service", WAIT_FOR_GO));
    cluster.put_job(shell_job("succeeds", "batch", WAIT_FOR_GO));
    let fails = cluster.task_local(&cluster.wait_status("fails", "running"));
    let succeeds = cluster.task_local(&cluster.wait_status("succeeds", "running"));
    wait_for_file(&fails.join("pid"));
    wait_for_file(&succeeds.join("pid"));

    // SIGKILL the client; one task exits while no agent runs, the other
    // after the new agent re-attached.
    cluster.client.kill();
    std::fs::write(succeeds.join("go"), "0").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.client.restart();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(fails.join("go"), "3").unwrap();

    let alloc = cluster.wait_status("fails", "failed");
    assert_eq!(terminated_exit_code(&alloc), Some(3), "{alloc}");
    assert_eq!(alloc["TaskStates"]["t"]["Restarts"], 0, "{alloc}");
    let alloc = cluster.wait_status("succeeds", "complete");
    assert_eq!(terminated_exit_code(&alloc), Some(0), "{alloc}");
    assert_eq!(alloc["TaskStates"]["t"]["Failed"], false, "{alloc}");
}

#[test]
fn client_rides_out_a_server_restart() {
    let mut cluster = Cluster::start();
    cluster.put_job(shell_job("svc", "service", WAIT_FOR_GO));
    let alloc = cluster.wait_status("svc", "running");
    let local = cluster.task_local(&alloc);
    wait_for_file(&local.join("pid"));
    let pid: i32 = std::fs::read_to_string(local.join("pid")).unwrap().trim().parse().unwrap();

    // The server goes away for a while and comes back on its data dir.
    cluster.server.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(process_alive(pid), "the task died while the server was down");
    cluster.server.restart();
    assert!(wait_until(TIMEOUT, || cluster.node_ready()), "node ready again; server log:\n{}", cluster.server.log());

    // The task was never touched, and new work still runs on the client.
    cluster.put_job(shell_job("after", "batch", "exit 0"));
    cluster.wait_status("after", "complete");
    assert!(process_alive(pid), "the task survived the server restart");
    let alloc = cluster.wait_status("svc", "running");
    assert_eq!(alloc["TaskStates"]["t"]["Restarts"], 0, "{alloc}");
    assert_eq!(cluster.task_local(&alloc), local, "the same allocation");
    // A task that exits now is reported to the restarted server.
    std::fs::write(local.join("go"), "5").unwrap();
    let alloc = cluster.wait_status("svc", "failed");
    assert_eq!(terminated_exit_code(&alloc), Some(5), "{alloc}");
    cluster.stop_job("svc");
}

/// The task writes its pid, then becomes a long sleep (the same pid).
const PID_THEN_SLEEP: &str = "echo $$ > \"$NOMAD_TASK_DIR/pid\"; exec /bin/sleep 3600";

fn read_pid(local: &Path) -> Option<i32> {
    std::fs::read_to_string(local.join("pid")).ok()?.trim().parse().ok()
}

fn sigkill(pid: i32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

#[test]
fn task_killed_from_outside_restarts_under_its_policy_then_fails() {
    let cluster = Cluster::start();
    let mut job = shell_job("flaky", "service", PID_THEN_SLEEP);
    job["TaskGroups"][0]["RestartPolicy"] = json!({
        "Attempts": 2, "Mode": "fail", "Interval": 600_000_000_000u64, "Delay": 1_000_000_000u64});
    // No replacement elsewhere: the failed allocation stays the only one.
    job["TaskGroups"][0]["ReschedulePolicy"] = json!({"Attempts": 0, "Unlimited": false});
    cluster.put_job(job);
    let alloc = cluster.wait_status("flaky", "running");
    let id = alloc["ID"].as_str().unwrap().to_string();
    let local = cluster.task_local(&alloc);
    wait_for_file(&local.join("pid"));

    let mut pid = read_pid(&local).unwrap();
    for restarts in 1..=2 {
        sigkill(pid);
        // A new process, and the restart counted in the API.
        let restarted = wait_until(TIMEOUT, || {
            read_pid(&local).is_some_and(|p| p != pid && process_alive(p))
                && cluster
                    .alloc_by_id(&id)
                    .is_some_and(|a| a["TaskStates"]["t"]["Restarts"] == restarts && a["ClientStatus"] == "running")
        });
        assert!(restarted, "restart {restarts}: {:?}\nclient log:\n{}", cluster.alloc_by_id(&id), cluster.client.log());
        pid = read_pid(&local).unwrap();
    }
    // Attempts exhausted: the next kill fails the allocation.
    sigkill(pid);
    let failed = wait_until(TIMEOUT, || cluster.alloc_by_id(&id).is_some_and(|a| a["ClientStatus"] == "failed"));
    let alloc = cluster.alloc_by_id(&id).unwrap();
    assert!(failed, "failed: {alloc}\nclient log:\n{}", cluster.client.log());
    assert_eq!(alloc["TaskStates"]["t"]["Restarts"], 2, "{alloc}");
    assert_eq!(alloc["TaskStates"]["t"]["State"], "dead", "{alloc}");
    assert_eq!(alloc["TaskStates"]["t"]["Failed"], true, "{alloc}");
    let current = read_pid(&local).unwrap();
    assert!(!process_alive(current), "no process left running");
    cluster.stop_job("flaky");
}

#[test]
fn client_back_after_its_node_was_marked_down_kills_the_lost_task() {
    // Short TTLs: the paused client's node is marked down within seconds.
    let cluster = Cluster::start_with("  min_heartbeat_ttl = \"2s\"\n  heartbeat_grace = \"1s\"");
    cluster.put_job(shell_job("lost", "service", PID_THEN_SLEEP));
    let alloc = cluster.wait_status("lost", "running");
    let id = alloc["ID"].as_str().unwrap().to_string();
    let node = alloc["NodeID"].as_str().unwrap().to_string();
    let local = cluster.task_local(&alloc);
    wait_for_file(&local.join("pid"));
    let pid = read_pid(&local).unwrap();

    // Freeze the client agent (its task runs on, under its executor).
    let agent_pid = cluster.client.child.as_ref().unwrap().id().to_string();
    let frozen = Command::new("kill").args(["-STOP", &agent_pid]).status().unwrap();
    assert!(frozen.success());
    let down = wait_until(TIMEOUT, || {
        get(&format!("{}/v1/node/{node}", cluster.base)).is_some_and(|n| n["Status"] == "down")
            && cluster.alloc_by_id(&id).is_some_and(|a| a["ClientStatus"] == "lost")
    });
    let task_ran_on = process_alive(pid);
    let resumed = Command::new("kill").args(["-CONT", &agent_pid]).status().unwrap();
    assert!(resumed.success());
    assert!(down, "node down, allocation lost: {:?}\nserver log:\n{}", cluster.alloc_by_id(&id), cluster.server.log());
    assert!(task_ran_on, "the task ran on while its agent was frozen");

    // Back: the client learns the allocation is to stop, kills the task,
    // and the allocation stays terminal with its task dead.
    let killed = wait_until(TIMEOUT, || !process_alive(pid));
    assert!(killed, "the lost allocation's task still runs\nclient log:\n{}", cluster.client.log());
    let settled = wait_until(TIMEOUT, || {
        cluster.alloc_by_id(&id).is_some_and(|a| {
            ["lost", "complete", "failed"].contains(&a["ClientStatus"].as_str().unwrap_or(""))
                && a["DesiredStatus"] != "run"
                && a["TaskStates"]["t"]["State"] == "dead"
        })
    });
    assert!(settled, "terminal: {:?}\nclient log:\n{}", cluster.alloc_by_id(&id), cluster.client.log());
    cluster.stop_job("lost");
}
