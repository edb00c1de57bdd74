//! Real processes, as an operator runs them: one `caravan agent` server and
//! two client agents on loopback, each client with its own data dir and
//! name. A batch job of 4 runs to completion across both nodes; a service
//! job keeps running; stopping the client that runs it marks its node down
//! and the allocation is rescheduled onto the other; a docker job runs a
//! container from the locally built image and its output lands in the
//! task's log.

#[path = "support/cluster.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{Ca, ServerConfig, get, http, wait_until};
use serde_json::{Value, json};

/// Generous for a loaded 2-core CI machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// A marker in the service task's command line, so the test can find and
/// kill the copy left running by the client it stopped (raw_exec tasks
/// outlive their agent by design).
const SERVICE_MARKER_S: &str = "3617";

struct Agent {
    child: Option<Child>,
    dir: PathBuf,
}

impl Agent {
    fn start(dir: &Path, config: &Path) -> Agent {
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child: Some(child), dir: dir.to_path_buf() }
    }

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

fn client_config(name: &str, dir: &Path, server_rpc: &str, ca: &Ca) -> PathBuf {
    let tls = dir.join("tls");
    ca.server_cert(&tls);
    let text = format!(
        r#"name = "{name}"
data_dir = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
ports {{
  http = {http}
}}
client {{
  enabled = true
  servers = ["{server_rpc}"]
  # Room for two 400 MB tasks, so four spread over both nodes.
  memory_total_mb = 1000
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

fn put_job(base: &str, job: Value) {
    let resp = http().put(&format!("{base}/v1/jobs")).send_json(json!({ "Job": job })).unwrap();
    assert_eq!(resp.status(), 200, "job registered");
}

fn allocs(base: &str, job: &str) -> Vec<Value> {
    get(&format!("{base}/v1/job/{job}/allocations")).and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn raw_exec_job(id: &str, job_type: &str, count: u32, command: &str, args: &[&str]) -> Value {
    json!({
        "ID": id, "Name": id, "Type": job_type, "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": count,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail", "Interval": 60_000_000_000u64, "Delay": 1_000_000_000u64},
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                "Config": {"command": command, "args": args},
                "Resources": {"CPU": 100, "MemoryMB": 400}}]}]
    })
}

fn docker_available() -> Result<(), String> {
    let ok = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !matches!(ok, Ok(s) if s.success()) {
        return Err("no Docker engine answers".into());
    }
    let image = Command::new("docker").args(["image", "inspect", "caravan-test/busybox:latest"]).output();
    if matches!(image, Ok(o) if o.status.success()) {
        return Ok(());
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/busybox-image.sh");
    let built = Command::new("sh").arg(script).output().map_err(|e| e.to_string())?;
    if built.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&built.stderr).into_owned()) }
}

fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[test]
fn server_and_two_clients_run_reschedule_and_log() {
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
        // Fast node-down detection for the test.
        server_extra: "  min_heartbeat_ttl = \"2s\"\n  heartbeat_grace = \"1s\"",
    }
    .write();
    let server = Agent::start(&server_dir, &server_config);
    let base = format!("http://127.0.0.1:{http_port}");
    let mut clients: Vec<Agent> = ["c1", "c2"]
        .iter()
        .map(|name| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let config = client_config(name, &dir, &server_rpc, &ca);
            Agent::start(&dir, &config)
        })
        .collect();
    let ready_nodes = || {
        get(&format!("{base}/v1/nodes"))
            .and_then(|v| v.as_array().cloned())
            .map(|nodes| nodes.iter().filter(|n| n["Status"] == "ready").count())
            .unwrap_or(0)
    };
    assert!(wait_until(TIMEOUT, || ready_nodes() == 2), "two ready nodes; server log:\n{}", server.log());

    // A batch job of 4 runs to completion on both nodes.
    put_job(&base, raw_exec_job("batch4", "batch", 4, "/bin/sh", &["-c", "echo done"]));
    let complete = wait_until(TIMEOUT, || {
        let a = allocs(&base, "batch4");
        a.len() == 4 && a.iter().all(|a| a["ClientStatus"] == "complete")
    });
    assert!(complete, "4 complete: {:?}\n{}", allocs(&base, "batch4"), clients[0].log());
    let nodes: std::collections::BTreeSet<String> =
        allocs(&base, "batch4").iter().map(|a| a["NodeID"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(nodes.len(), 2, "the batch ran on both nodes");
    // Task states and events reach the API in Nomad's shape.
    let id = allocs(&base, "batch4")[0]["ID"].as_str().unwrap().to_string();
    let alloc = get(&format!("{base}/v1/allocation/{id}")).unwrap();
    let task = &alloc["TaskStates"]["t"];
    assert_eq!(task["State"], "dead", "{alloc}");
    assert_eq!(task["Failed"], false);
    let events: Vec<&str> = task["Events"].as_array().unwrap().iter().filter_map(|e| e["Type"].as_str()).collect();
    assert!(events.contains(&"Started") && events.contains(&"Terminated"), "{events:?}");

    // A service job keeps running.
    put_job(&base, raw_exec_job("svc", "service", 1, "/bin/sleep", &[SERVICE_MARKER_S]));
    let running = |base: &str| {
        allocs(base, "svc").into_iter().find(|a| a["ClientStatus"] == "running" && a["DesiredStatus"] == "run")
    };
    assert!(wait_until(TIMEOUT, || running(&base).is_some()), "service running: {:?}", allocs(&base, "svc"));
    let first = running(&base).unwrap();
    let first_node = first["NodeID"].as_str().unwrap().to_string();
    let node_names: Vec<(String, String)> = get(&format!("{base}/v1/nodes"))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["ID"].as_str().unwrap().to_string(), n["Name"].as_str().unwrap().to_string()))
        .collect();
    let victim_name = node_names.iter().find(|(id, _)| *id == first_node).map(|(_, name)| name.clone()).unwrap();
    let victim = if victim_name == "c1" { 0 } else { 1 };

    // Stop the client that runs it: its node goes down, the allocation is
    // lost and replaced on the other node.
    clients[victim].kill();
    let moved = wait_until(TIMEOUT, || running(&base).is_some_and(|a| a["NodeID"] != first_node.as_str()));
    assert!(moved, "service rescheduled: {:?}\nserver log:\n{}", allocs(&base, "svc"), server.log());
    let down = get(&format!("{base}/v1/node/{first_node}")).unwrap();
    assert_eq!(down["Status"], "down", "the stopped client's node is down");

    // A docker job from the locally built image; its output in the task log.
    match docker_available() {
        Ok(()) => {
            put_job(
                &base,
                json!({
                    "ID": "dock", "Name": "dock", "Type": "batch", "Datacenters": ["dc1"],
                    "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "hello", "Driver": "docker",
                        "Config": {"image": "caravan-test/busybox:latest", "command": "/bin/echo",
                                   "args": ["hello from a caravan container"]},
                        "Resources": {"CPU": 100, "MemoryMB": 64}}]}]
                }),
            );
            assert!(
                wait_until(TIMEOUT, || allocs(&base, "dock").iter().any(|a| a["ClientStatus"] == "complete")),
                "docker job complete: {:?}",
                allocs(&base, "dock")
            );
            let survivor = &clients[1 - victim];
            let log = find_file(&survivor.dir.join("data"), "hello.stdout.0").expect("the task's stdout log");
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(text.contains("hello from a caravan container"), "log {}: {text:?}", log.display());
        }
        Err(reason) => {
            let message = format!("docker part skipped: {reason}");
            assert!(std::env::var("CARAVAN_REQUIRE_ALL_TESTS").is_err(), "{message}");
            eprintln!("SKIPPED: {message}");
        }
    }

    // Clean up: the service stops on the surviving client; the copy the
    // stopped client left behind is killed here.
    let _ = http().delete(&format!("{base}/v1/job/svc?purge=true")).call();
    for c in &mut clients {
        c.kill();
    }
    let _ = Command::new("pkill").args(["-f", &format!("/bin/sleep {SERVICE_MARKER_S}")]).status();
}
