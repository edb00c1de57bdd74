//! `/v1/client/fs/*` for an allocation on another node, as an operator
//! meets it: one agent runs a server and a client, a second agent only a
//! client. A task placed on the second agent's node is read through the
//! first agent's HTTP API (`NOMAD_ADDR` pointing at the server): its files,
//! its log with `caravan alloc logs` (also followed, lines arriving while
//! it runs, ending when the task is stopped), and a stream of a file; the
//! server's agent forwards each request to the node's registered HTTP
//! address.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{Ca, get, http, wait_until};
use serde_json::json;

/// Generous for a loaded 2-core CI machine.
const TIMEOUT: Duration = Duration::from_secs(90);

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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An agent's configuration: `blocks` are its `server`/`client` blocks.
fn write_config(name: &str, dir: &Path, http_port: u16, rpc_port: u16, ca: &Ca, blocks: &str) -> PathBuf {
    let tls = dir.join("tls");
    ca.server_cert(&tls);
    let text = format!(
        r#"name = "{name}"
data_dir = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
ports {{
  http = {http_port}
  rpc = {rpc_port}
}}
{blocks}
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
        ca = ca.dir.display(),
        tls = tls.display(),
    );
    let path = dir.join("agent.hcl");
    std::fs::write(&path, text).unwrap();
    path
}

fn caravan(base: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_caravan"));
    command.args(args).env("NOMAD_ADDR", base);
    command
}

#[test]
fn server_agent_serves_files_of_an_allocation_on_another_node() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::create(root.path());
    let (server_http, server_rpc_port) = (free_port(), free_port());
    let server_rpc = format!("127.0.0.1:{server_rpc_port}");
    let server_dir = root.path().join("s1");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server_blocks = format!(
        "server {{\n  enabled = true\n  bootstrap_expect = 1\n  server_join {{\n    retry_join = [\"{server_rpc}\"]\n  }}\n}}\n\
         client {{\n  enabled = true\n}}\n"
    );
    let server_config = write_config("s1", &server_dir, server_http, server_rpc_port, &ca, &server_blocks);
    let server = Agent::start(&server_dir, &server_config);
    let client_dir = root.path().join("c2");
    std::fs::create_dir_all(&client_dir).unwrap();
    let client_http = free_port();
    let client_blocks = format!("client {{\n  enabled = true\n  servers = [\"{server_rpc}\"]\n}}\n");
    let client_config = write_config("c2", &client_dir, client_http, free_port(), &ca, &client_blocks);
    let client = Agent::start(&client_dir, &client_config);
    let base = format!("http://127.0.0.1:{server_http}");

    let nodes = || get(&format!("{base}/v1/nodes")).and_then(|v| v.as_array().cloned()).unwrap_or_default();
    let ready = wait_until(TIMEOUT, || nodes().iter().filter(|n| n["Status"] == "ready").count() == 2);
    assert!(ready, "two ready nodes: {:?}\nserver log:\n{}\nclient log:\n{}", nodes(), server.log(), client.log());
    let c2 = nodes().into_iter().find(|n| n["Name"] == "c2").unwrap();
    let c2_id = c2["ID"].as_str().unwrap().to_string();
    // The client-only agent registered the HTTP address it serves on.
    let c2_node = get(&format!("{base}/v1/node/{c2_id}")).unwrap();
    assert_eq!(c2_node["HTTPAddr"], format!("127.0.0.1:{client_http}"), "{c2_node}");

    // A task pinned to c2, printing a line, then ticks while it runs.
    let job = json!({
        "ID": "far", "Name": "far", "Type": "service", "Datacenters": ["dc1"],
        "Constraints": [{"LTarget": "${node.unique.name}", "RTarget": "c2", "Operand": "="}],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c",
                "echo hello from c2 > \"$NOMAD_TASK_DIR/greeting.txt\"; echo hello from c2; \
                 i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done"]},
            "Resources": {"CPU": 100, "MemoryMB": 64}}]}]
    });
    let resp = http().put(&format!("{base}/v1/jobs")).send_json(json!({ "Job": job })).unwrap();
    assert_eq!(resp.status(), 200);
    let running = || {
        get(&format!("{base}/v1/job/far/allocations"))
            .and_then(|v| v.as_array().cloned())
            .and_then(|allocs| allocs.into_iter().find(|a| a["ClientStatus"] == "running"))
    };
    assert!(wait_until(TIMEOUT, || running().is_some()), "running on c2\nclient log:\n{}", client.log());
    let alloc = running().unwrap();
    assert_eq!(alloc["NodeID"], c2_id.as_str(), "placed on c2");
    let alloc_id = alloc["ID"].as_str().unwrap().to_string();

    // A file of the allocation, through the server's agent.
    let cat = format!("{base}/v1/client/fs/cat/{alloc_id}?path=t/local/greeting.txt");
    let read = |url: &str| {
        let mut resp = http().get(url).call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    };
    assert!(wait_until(TIMEOUT, || read(&cat) == (200, "hello from c2\n".to_string())), "{:?}", read(&cat));
    let (status, body) = read(&format!("{base}/v1/client/fs/ls/{alloc_id}?path=t/local"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("greeting.txt"), "{body}");
    let (status, body) =
        read(&format!("{base}/v1/client/fs/stream/{alloc_id}?path=t/local/greeting.txt&follow=false&plain=true"));
    assert_eq!((status, body.as_str()), (200, "hello from c2\n"));

    // `caravan alloc logs` against the server's address.
    let out = caravan(&base, &["alloc", "logs", &alloc_id, "t"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("hello from c2\n"), "{stdout}");
    // Followed: lines arrive while the task writes them, through the hop.
    let mut follow = caravan(&base, &["alloc", "logs", "-f", &alloc_id, "t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first_tick = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("tick")).unwrap();
    let first: u64 = first_tick.trim_start_matches("tick").parse().unwrap();
    let later = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.trim_start_matches("tick").parse::<u64>().is_ok_and(|n| n >= first + 5));
    assert!(later.is_some(), "new lines kept arriving after {first_tick}");

    // Stop the job: the task is killed on c2, and the followed log, which
    // c2's agent serves through the hop, ends by itself once it is dead.
    let _ = http().delete(&format!("{base}/v1/job/far")).call();
    let stopped = wait_until(TIMEOUT, || {
        get(&format!("{base}/v1/allocation/{alloc_id}"))
            .is_some_and(|a| a["ClientStatus"] != "running" && a["ClientStatus"] != "pending")
    });
    assert!(stopped, "the task stopped\nclient log:\n{}", client.log());
    let ended = wait_until(TIMEOUT, || follow.try_wait().ok().flatten().is_some());
    let _ = follow.kill();
    let _ = follow.wait();
    drop(lines);
    assert!(ended, "the followed log ended with its task");
}
