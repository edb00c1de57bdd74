//! `caravan alloc logs` against a real dev agent (server and client in one
//! process, so the HTTP API reads the client's log files): the whole log,
//! stderr, an id prefix, `-tail -n`, `-f` following a running task, and an
//! unknown task refused; then `caravan alloc fs` listing, stating and
//! printing the allocation's files.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the test waits for the agent, the job and log lines: seconds
/// normally; a loaded CI machine gets slack.
const WAIT_MAX: Duration = Duration::from_secs(60);

const JOBSPEC: &str = r#"
job "logs" {
  type        = "service"
  datacenters = ["dc1"]
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo line1; echo line2; echo line3; echo err-line >&2; i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done"]
      }
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
"#;

/// A dev agent on a free port, stopped when dropped.
struct DevAgent {
    child: std::process::Child,
    addr: String,
}

impl DevAgent {
    fn start() -> DevAgent {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-dev", "-http-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT_MAX;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the dev agent never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        DevAgent { child, addr: format!("http://127.0.0.1:{port}") }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_caravan"));
        command.args(args).env("NOMAD_ADDR", &self.addr);
        command
    }

    fn caravan(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let mut response = ureq::get(&format!("{}{path}", self.addr)).call().unwrap();
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ticks(text: &str) -> Vec<u64> {
    text.lines().filter_map(|line| line.strip_prefix("tick")?.parse().ok()).collect()
}

#[test]
fn alloc_logs_shows_follows_and_tails_a_tasks_output() {
    let agent = DevAgent::start();
    wait_until("the dev agent's client node", || agent.caravan(&["node", "status"]).1.contains("ready"));
    let spec = std::env::temp_dir().join(format!("caravan-alloc-logs-{}.nomad.hcl", std::process::id()));
    std::fs::write(&spec, JOBSPEC).unwrap();
    let (code, stdout, stderr) = agent.caravan(&["job", "run", "-detach", spec.to_str().unwrap()]);
    let _ = std::fs::remove_file(&spec);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let mut alloc_id = String::new();
    wait_until("a running allocation", || {
        let allocs = agent.get("/v1/job/logs/allocations");
        match allocs.as_array().and_then(|a| a.first()) {
            Some(alloc) if alloc["ClientStatus"] == "running" => {
                alloc_id = alloc["ID"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    wait_until("a few ticks", || ticks(&agent.caravan(&["alloc", "logs", &alloc_id]).1).len() >= 3);

    // The whole stdout, the task found by itself (the allocation runs one).
    let (code, stdout, stderr) = agent.caravan(&["alloc", "logs", &alloc_id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("line1\nline2\nline3\ntick1\n"), "{stdout}");
    // stderr, the allocation by an id prefix, the task named.
    let (code, stdout, stderr) = agent.caravan(&["alloc", "logs", "-stderr", &alloc_id[..8], "t"]);
    assert_eq!((code, stdout.as_str()), (0, "err-line\n"), "{stderr}");
    // The last two lines.
    let (code, stdout, stderr) = agent.caravan(&["alloc", "logs", "-tail", "-n", "2", &alloc_id, "t"]);
    assert_eq!(code, 0, "{stderr}");
    let tail = ticks(&stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert_eq!(tail.len(), 2, "{stdout}");
    assert_eq!(tail[1], tail[0] + 1);
    // An unknown task is refused with the reason.
    let (code, _, stderr) = agent.caravan(&["alloc", "logs", &alloc_id, "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown task"), "{stderr}");

    // -f: lines written after the command started arrive while it runs.
    let before = ticks(&agent.caravan(&["alloc", "logs", &alloc_id]).1).into_iter().max().unwrap_or(0);
    let mut follow = agent.command(&["alloc", "logs", "-f", &alloc_id, "t"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT_MAX;
    let mut newest = 0;
    while newest < before + 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line =
            rx.recv_timeout(left).unwrap_or_else(|_| panic!("follow stalled at tick{newest} (from tick{before})"));
        if let Some(n) = line.strip_prefix("tick").and_then(|n| n.parse().ok()) {
            newest = n;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // `alloc fs`: the allocation directory's root listed as Nomad's table,
    // a file printed, a path leaving the directory refused.
    let (code, stdout, stderr) = agent.caravan(&["alloc", "fs", &alloc_id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("Mode"), "{stdout}");
    assert!(stdout.contains(" alloc/\n") && stdout.contains(" t/\n"), "{stdout}");
    let (code, stdout, stderr) = agent.caravan(&["alloc", "fs", "-stat", &alloc_id, "t/local"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().nth(1).is_some_and(|row| row.starts_with('d') && row.ends_with(" local/")), "{stdout}");
    let (code, stdout, stderr) = agent.caravan(&["alloc", "fs", &alloc_id[..8], "alloc/logs/t.stderr.0"]);
    assert_eq!((code, stdout.as_str()), (0, "err-line\n"), "{stderr}");
    let (code, _, stderr) = agent.caravan(&["alloc", "fs", &alloc_id, "../.."]);
    assert_eq!(code, 1);
    assert!(stderr.contains("must not contain"), "{stderr}");
    // Stop the job and let the client kill the task: tasks outlive their
    // agent by design, so one left running would outlive the test.
    let (code, _, stderr) = agent.caravan(&["job", "stop", "logs"]);
    assert_eq!(code, 0, "{stderr}");
    wait_until("the task stopped", || {
        agent.get("/v1/job/logs/allocations").as_array().is_some_and(|allocs| {
            allocs.iter().all(|a| a["ClientStatus"] != "running" && a["ClientStatus"] != "pending")
        })
    });
}
