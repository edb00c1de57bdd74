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

impl DevAgent {
    /// Stop every job and wait (bounded) until no task runs: tasks live in
    /// their executors' own sessions and outlive a killed agent by design
    /// (a restarted agent re-attaches), so a test must not leave them.
    fn stop_all_jobs(&self) {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .new_agent();
        let get = |path: &str| -> Option<serde_json::Value> {
            http.get(&format!("{}{path}", self.addr)).call().ok()?.body_mut().read_json().ok()
        };
        let Some(jobs) = get("/v1/jobs") else { return };
        for job in jobs.as_array().into_iter().flatten() {
            if let Some(id) = job["ID"].as_str() {
                let _ = http.delete(&format!("{}/v1/job/{id}", self.addr)).call();
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let running = get("/v1/allocations").is_some_and(|allocs| {
                allocs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["ClientStatus"] == "running" || a["ClientStatus"] == "pending")
            });
            if !running {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.stop_all_jobs();
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
    // -json on the read verbs, as Nomad's.
    for (args, check) in [
        (&["job", "status", "-json", "hello"][..], "/ID"),
        (&["job", "history", "-json", "hello"][..], "/0/Version"),
        (&["job", "inspect", "-json", "hello"][..], "/Job/ID"),
        (&["status", "-json"][..], "/0/ID"),
        (&["server", "members", "-json"][..], "/0/Status"),
    ] {
        let (code, stdout, stderr) = agent.caravan(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let value: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(value.pointer(check).is_some(), "{args:?}: {value}");
    }
    let (code, stdout, _) = agent.caravan(&["server", "members"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("Name") && stdout.contains("alive") && stdout.contains("true"), "{stdout}");
    let (code, _, stderr) = agent.caravan(&["job", "stop", "-purge", "hello"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = agent.caravan(&["job", "status", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");
    // A usage error exits 1, as Nomad's CLI does (2 means placement failures).
    let (code, _, stderr) = agent.caravan(&["job", "status", "-bogus", "hello"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(agent.caravan(&["job", "--help"]).0, 0);
}

/// A service pinned to one static port: on the dev agent's one node only
/// one of its `count` allocations fits, so its deployment stays running.
const PINNED_JOB: &str = r#"
job "pinned" {
  type = "service"
  group "g" {
    count = 2
    network {
      port "http" {
        static = 18999
      }
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"#;

fn wait_for(agent: &DevAgent, args: &[&str], text: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, stdout, stderr) = agent.caravan(args);
        if stdout.contains(text) {
            return stdout;
        }
        assert!(std::time::Instant::now() < deadline, "`{}` never showed {text:?}: {stdout}{stderr}", args.join(" "));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn job_actions_deployments_and_id_prefixes_through_the_cli() {
    let agent = DevAgent::start();
    wait_for(&agent, &["node", "status"], "ready");
    let dir = std::env::temp_dir().join(format!("caravan-cli-actions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("pinned.nomad.hcl");
    std::fs::write(&spec, PINNED_JOB).unwrap();
    let (code, stdout, stderr) = agent.caravan(&["job", "run", "-detach", spec.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Deployments: list, status by id prefix, pause, resume, promote, fail.
    let list = wait_for(&agent, &["deployment", "list"], "pinned");
    assert!(list.contains("running"), "{list}");
    let (_, json, _) = agent.caravan(&["deployment", "list", "-json"]);
    let deployments: serde_json::Value = serde_json::from_str(&json).unwrap();
    let id = deployments[0]["ID"].as_str().unwrap().to_string();
    let prefix = &id[..8];
    let (code, stdout, stderr) = agent.caravan(&["deployment", "status", prefix]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("ID          = {id}")) && stdout.contains("Job ID      = pinned"), "{stdout}");
    assert!(stdout.contains("Task Group") && stdout.contains("Desired"), "{stdout}");
    let (code, _, stderr) = agent.caravan(&["deployment", "pause", prefix]);
    assert_eq!(code, 0, "{stderr}");
    assert!(agent.caravan(&["deployment", "status", prefix]).1.contains("Status      = paused"));
    let (code, _, stderr) = agent.caravan(&["deployment", "resume", prefix]);
    assert_eq!(code, 0, "{stderr}");
    assert!(agent.caravan(&["deployment", "status", prefix]).1.contains("Status      = running"));
    let (code, _, stderr) = agent.caravan(&["deployment", "promote", prefix]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no canaries"), "{stderr}");
    let (code, _, stderr) = agent.caravan(&["deployment", "fail", prefix]);
    assert_eq!(code, 0, "{stderr}");
    assert!(agent.caravan(&["deployment", "status", prefix]).1.contains("Status      = failed"));
    let (code, _, stderr) = agent.caravan(&["deployment", "fail", prefix]);
    assert_eq!(code, 1);
    assert!(stderr.contains("terminal"), "{stderr}");
    let (code, _, stderr) = agent.caravan(&["deployment", "status", "ffffffff"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no deployment"), "{stderr}");

    // Scale (the job has one group, so the group may be left out), revert.
    let (code, stdout, stderr) = agent.caravan(&["job", "scale", "-detach", "pinned", "1"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Evaluation ID"), "{stdout}");
    // Version 1 rolls out under a new deployment, once its eval ran; Nomad
    // refuses to scale while a deployment is active, so fail it first.
    let mut attempts = 0;
    let (code, stdout, stderr) = loop {
        let (code, stdout, stderr) = agent.caravan(&["job", "scale", "pinned", "g", "3"]);
        attempts += 1;
        assert!(attempts < 20, "a deployment stays active: {stderr}");
        if code != 1 || !stderr.contains("active deployment") {
            break (code, stdout, stderr);
        }
        let (_, json, _) = agent.caravan(&["deployment", "list", "-json"]);
        let deployments: serde_json::Value = serde_json::from_str(&json).unwrap();
        let newest = deployments[0]["ID"].as_str().unwrap().to_string();
        agent.caravan(&["deployment", "fail", &newest]);
    };
    assert!(code == 0 || code == 2, "followed, with placement failures allowed: {stdout}{stderr}");
    assert!(stdout.contains("Monitoring evaluation"), "{stdout}");
    let (code, events, stderr) = agent.caravan(&["job", "scaling-events", "-verbose", "pinned"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(events.starts_with("Task Group  Count  PrevCount  Error  Message"), "{events}");
    let rows: Vec<&str> = events.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "two scaling requests went through: {events}");
    assert!(rows[0].starts_with("g           3      1          false  submitted using the Caravan CLI"), "{events}");
    assert!(!rows[0].contains('.'), "dates in whole seconds, as Nomad prints them: {events}");
    let (_, json, _) = agent.caravan(&["job", "scaling-events", "-json", "pinned"]);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["TaskGroups"]["g"]["Events"][1]["Count"], 1, "{status}");
    let (code, _, stderr) = agent.caravan(&["job", "scale", "pinned", "nope", "3"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (code, _, stderr) = agent.caravan(&["job", "scale", "pinned", "g", "-2"]);
    assert_ne!(code, 0, "{stderr}");
    let history = agent.caravan(&["job", "history", "pinned"]).1;
    assert!(history.contains("Version     = 2"), "{history}");
    let (code, stdout, stderr) = agent.caravan(&["job", "revert", "-detach", "pinned", "1"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let inspect = agent.caravan(&["job", "inspect", "pinned"]).1;
    assert!(inspect.contains("\"Version\": 3") && inspect.contains("\"Count\": 1"), "{inspect}");
    let (code, _, stderr) = agent.caravan(&["job", "revert", "pinned", "3"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("current version"), "{stderr}");

    // Dispatch: the body is sent; the server refuses a job that is not parameterized.
    let input = dir.join("payload.txt");
    std::fs::write(&input, "hello").unwrap();
    let (code, _, stderr) = agent.caravan(&["job", "dispatch", "-meta", "k=v", "pinned", input.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a parameterized job"), "{stderr}");
    let (code, _, stderr) = agent.caravan(&["job", "dispatch", "-meta", "novalue", "pinned"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("KEY=VALUE"), "{stderr}");
    let (code, _, stderr) = agent.caravan(&["job", "dispatch", "pinned", dir.join("missing").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing"), "{stderr}");

    // A parameterized job: registered without an eval, dispatched with a
    // payload file and meta; the child runs.
    let params = dir.join("params.nomad.hcl");
    std::fs::write(
        &params,
        "job \"params\" {\n  type = \"batch\"\n  parameterized {\n    payload = \"required\"\n    meta_required = [\"who\"]\n  }\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config {\n        command = \"/bin/true\"\n      }\n      resources {\n        cpu = 50\n        memory = 32\n      }\n    }\n  }\n}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = agent.caravan(&["job", "run", "-detach", params.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = agent.caravan(&["job", "dispatch", "params", input.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("required meta keys"), "{stderr}");
    let (code, stdout, stderr) =
        agent.caravan(&["job", "dispatch", "-detach", "-meta", "who=me", "params", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let child = stdout.lines().find_map(|l| l.strip_prefix("Dispatched Job ID = ")).unwrap().to_string();
    assert!(child.starts_with("params/dispatch-"), "{stdout}");
    assert!(stdout.contains("Evaluation ID"), "{stdout}");
    let inspect = agent.caravan(&["job", "inspect", &child]).1;
    assert!(inspect.contains("\"Payload\": \"aGVsbG8=\"") && inspect.contains("\"who\": \"me\""), "{inspect}");
    wait_for(&agent, &["job", "status", &child], "complete");

    // Allocation, node and evaluation ids by prefix; short ids are distinct.
    let (_, json, _) = agent.caravan(&["alloc", "status", "-json", "ffffffffffffffff"]);
    assert!(json.is_empty());
    let status = wait_for(&agent, &["job", "status", "pinned"], "running");
    let alloc_ids: Vec<&str> = status
        .lines()
        .skip_while(|l| *l != "Allocations")
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!alloc_ids.is_empty(), "{status}");
    let mut distinct = alloc_ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), alloc_ids.len(), "short allocation ids collide: {status}");
    let (code, stdout, stderr) = agent.caravan(&["alloc", "status", alloc_ids[0]]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("ID                   = {}", alloc_ids[0])), "{stdout}");
    assert!(stdout.contains("JobID                = pinned"), "{stdout}");
    let node_id = stdout.lines().find_map(|l| l.strip_prefix("NodeID               = ")).unwrap().to_string();
    let (code, stdout, stderr) = agent.caravan(&["node", "status", &node_id[..8]]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&node_id), "{stdout}");
    let eval_id = stdout_of(&agent, &["eval", "list", "-json"]);
    let (code, stdout, stderr) = agent.caravan(&["eval", "status", &eval_id[..8]]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&eval_id), "{stdout}");
    let (code, _, stderr) = agent.caravan(&["alloc", "status", "not-hex!"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not an id"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The first evaluation's id from `eval list -json`.
fn stdout_of(agent: &DevAgent, args: &[&str]) -> String {
    let (code, stdout, stderr) = agent.caravan(args);
    assert_eq!(code, 0, "{stderr}");
    let evals: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    evals[0]["ID"].as_str().unwrap().to_string()
}
