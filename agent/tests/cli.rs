//! The `caravan` binary, run as a user would.

use std::process::Command;

fn caravan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caravan")).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn example(name: &str) -> String {
    format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_validates() {
    for name in ["hello.nomad.hcl", "web.nomad.hcl", "gpu-train.nomad.hcl"] {
        let (code, stdout, stderr) = caravan(&["job", "validate", &example(name)]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stdout.starts_with("Job validation successful"), "{stdout}");
    }
}

#[test]
fn nomad_style_single_dash_flags_work() {
    let (code, _, stderr) = caravan(&["job", "validate", "-var", "image=nginx:1.27", &example("web.nomad.hcl")]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = caravan(&["job", "validate", "-var", "nope=1", &example("web.nomad.hcl")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nope"), "{stderr}");
}

#[test]
fn invalid_jobs_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("caravan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.nomad.hcl");
    std::fs::write(&bad, "job \"x\" {\n  priority = 500\n  group \"g\" {\n    count = -1\n    task \"t\" {\n      driver = \"raw_exec\"\n    }\n  }\n}\n").unwrap();
    let (code, _, stderr) = caravan(&["job", "validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("Priority") && stderr.contains("Count"), "{stderr}");
    let unknown = dir.join("unknown.nomad.hcl");
    std::fs::write(
        &unknown,
        "job \"x\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      bogus = 1\n    }\n  }\n}\n",
    )
    .unwrap();
    let (code, _, stderr) = caravan(&["job", "validate", unknown.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bogus"), "{stderr}");
    let (code, _, stderr) = caravan(&["job", "validate", dir.join("missing.hcl").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.hcl"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

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
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        DevAgent { child, addr }
    }

    fn caravan(&self, args: &[&str]) -> (i32, String, String) {
        let out =
            Command::new(env!("CARGO_BIN_EXE_caravan")).args(args).env("NOMAD_ADDR", &self.addr).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_agent_runs_jobs_through_the_cli() {
    let agent = DevAgent::start();
    // The dev agent's own client registers its node first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !agent.caravan(&["node", "status"]).1.contains("ready") {
        assert!(std::time::Instant::now() < deadline, "the dev agent's client node never became ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, stdout, stderr) = agent.caravan(&["job", "run", &example("hello.nomad.hcl")]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("finished with status \"complete\""), "{stdout}");
    // The client runs the task to completion and reports it.
    while !agent.caravan(&["job", "status", "hello"]).1.contains("complete") {
        assert!(std::time::Instant::now() < deadline, "the hello allocation never completed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, stdout, _) = agent.caravan(&["status"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("hello") && stdout.contains("batch"), "{stdout}");
    let (code, stdout, _) = agent.caravan(&["job", "status", "hello"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("ID            = hello"), "{stdout}");
    let (code, stdout, _) = agent.caravan(&["eval", "list"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("job-register") && stdout.contains("complete"), "{stdout}");
    let (code, stdout, _) = agent.caravan(&["operator", "raft", "list-peers"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("leader"), "{stdout}");
    let (code, stdout, _) = agent.caravan(&["job", "plan", &example("web.nomad.hcl")]);
    assert_eq!(code, 1, "a new job would create allocations: {stdout}");
    assert!(stdout.contains("+ Job: \"web\"") && stdout.contains("3 create"), "{stdout}");
    let (code, stdout, _) = agent.caravan(&["job", "inspect", "hello"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"ID\": \"hello\""), "{stdout}");
    let (code, stdout, _) = agent.caravan(&["job", "history", "hello"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Version     = 0"), "{stdout}");
    let (code, _, stderr) = agent.caravan(&["job", "stop", "-purge", "hello"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = agent.caravan(&["job", "status", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");
}
