//! Three `caravan agent -server` processes on loopback, as an operator
//! runs them: they form a cluster from `bootstrap_expect`, take writes on
//! any server, survive `kill -9` of the leader with every acknowledged job
//! kept, and the killed server restarts from its data dir and catches up,
//! through a snapshot since the leader has compacted its log meanwhile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Generous for a loaded 2-core CI machine; the measured figures are in perf.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

struct ServerProc {
    name: String,
    dir: PathBuf,
    http_port: u16,
    rpc_port: u16,
    child: Option<Child>,
}

impl ServerProc {
    fn config_path(&self) -> PathBuf {
        self.dir.join("agent.hcl")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-config", self.config_path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn rpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rpc_port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn get(url: &str) -> Option<Value> {
    let mut resp = http().get(url).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.body_mut().read_json().ok()
}

/// Register a job; true when the server acknowledged it.
fn register(server: &ServerProc, id: &str) -> bool {
    let job = json!({"Job": {
        "ID": id, "Name": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{
            "Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
            "Resources": {"CPU": 100, "MemoryMB": 64}}]}]}});
    match http().put(&server.url("/v1/jobs")).send_json(&job) {
        Ok(resp) => resp.status() == 200,
        Err(_) => false,
    }
}

fn job_ids(server: &ServerProc) -> Option<Vec<String>> {
    let jobs = get(&server.url("/v1/jobs"))?;
    Some(jobs.as_array()?.iter().filter_map(|j| j["ID"].as_str().map(String::from)).collect())
}

fn leader_of(server: &ServerProc) -> Option<String> {
    get(&server.url("/v1/status/leader"))?.as_str().filter(|s| !s.is_empty()).map(String::from)
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `caravan tls ...`, as an operator creates the cluster's certificates.
fn caravan_tls(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_caravan")).arg("tls").args(args).output().unwrap();
    assert!(out.status.success(), "caravan tls {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn write_config(server: &ServerProc, peers: &[String], ca_dir: &Path, tls_dir: &Path) {
    let join: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        r#"name = "{name}"
data_dir = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
ports {{
  http = {http}
  rpc = {rpc}
}}
server {{
  enabled = true
  bootstrap_expect = 3
  # Small, so the leader compacts its log while a server is down.
  raft_snapshot_threshold = 32
  server_join {{
    retry_join = [{join}]
  }}
}}
tls {{
  rpc = true
  ca_file = "{ca}/caravan-agent-ca.pem"
  cert_file = "{tls}/global-server-caravan.pem"
  key_file = "{tls}/global-server-caravan-key.pem"
}}
"#,
        name = server.name,
        data = server.dir.join("data").display(),
        http = server.http_port,
        rpc = server.rpc_port,
        join = join.join(", "),
        ca = ca_dir.display(),
        tls = tls_dir.display(),
    );
    std::fs::write(server.config_path(), text).unwrap();
}

#[test]
fn three_server_processes_survive_kill_9_of_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let ca_dir = root.path().join("ca");
    caravan_tls(&["ca", "create", "-dir", ca_dir.to_str().unwrap()]);
    let ca_cert = ca_dir.join("caravan-agent-ca.pem");
    let ca_key = ca_dir.join("caravan-agent-ca-key.pem");
    let mut servers: Vec<ServerProc> = (0..3)
        .map(|i| ServerProc {
            name: format!("s{i}"),
            dir: root.path().join(format!("s{i}")),
            http_port: free_port(),
            rpc_port: free_port(),
            child: None,
        })
        .collect();
    let peers: Vec<String> = servers.iter().map(ServerProc::rpc_addr).collect();
    for s in &servers {
        std::fs::create_dir_all(&s.dir).unwrap();
        let tls_dir = s.dir.join("tls");
        std::fs::create_dir_all(&tls_dir).unwrap();
        let (ca, key, dir) = (ca_cert.to_str().unwrap(), ca_key.to_str().unwrap(), tls_dir.to_str().unwrap());
        caravan_tls(&["cert", "create", "-server", "-ca", ca, "-key", key, "-dir", dir]);
        write_config(s, &peers, &ca_dir, &tls_dir);
    }
    for s in &mut servers {
        s.start();
    }
    let agreed = wait_until(CONVERGE_TIMEOUT, || {
        let leaders: Vec<Option<String>> = servers.iter().map(leader_of).collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });
    assert!(agreed, "the three servers agree on a leader; logs:\n{}", servers[0].log());

    // Writes on every server: followers forward to the leader.
    let mut acked = Vec::new();
    for i in 0..30 {
        let id = format!("before-{i}");
        if register(&servers[i % 3], &id) {
            acked.push(id);
        }
    }
    assert_eq!(acked.len(), 30, "every registration is acknowledged");

    let leader_addr = leader_of(&servers[0]).unwrap();
    let leader = servers.iter().position(|s| s.rpc_addr() == leader_addr).expect("the leader is one of ours");
    servers[leader].kill9();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut new_leader = None;
    let elected = wait_until(CONVERGE_TIMEOUT, || {
        new_leader = survivors.iter().copied().find(|&i| leader_of(&servers[i]) == Some(servers[i].rpc_addr()));
        new_leader.is_some()
    });
    assert!(elected, "a new leader among the survivors");
    let new_leader = new_leader.unwrap();
    assert!(wait_until(CONVERGE_TIMEOUT, || register(&servers[new_leader], "after-failover")), "writes resume");
    acked.push("after-failover".into());
    eprintln!("failover: kill -9 to first committed write on the new leader: {:?}", killed_at.elapsed());
    let present = job_ids(&servers[new_leader]).unwrap();
    for id in &acked {
        assert!(present.contains(id), "acknowledged job {id} survived the leader's death");
    }
    // Scheduling continues on the new leader: the new job's eval is processed.
    let evaluated = wait_until(CONVERGE_TIMEOUT, || {
        get(&servers[new_leader].url("/v1/job/after-failover/evaluations")).is_some_and(|evals| {
            evals.as_array().is_some_and(|e| e.iter().any(|e| e["Status"] == "complete" || e["Status"] == "blocked"))
        })
    });
    assert!(evaluated, "the new leader's workers process evaluations");

    // While the old leader is down the cluster moves on and compacts its
    // log past where the old leader stopped.
    for i in 0..120 {
        let id = format!("while-down-{i}");
        assert!(register(&servers[survivors[i % 2]], &id), "{id} acknowledged by the surviving majority");
        acked.push(id);
    }
    servers[leader].start();
    let caught_up = wait_until(CONVERGE_TIMEOUT, || {
        job_ids(&servers[leader]).is_some_and(|ids| acked.iter().all(|id| ids.contains(id)))
    });
    assert!(caught_up, "the restarted server catches up; log:\n{}", servers[leader].log());
    assert!(
        servers[leader].log().contains("installed a snapshot from the leader"),
        "it was far behind a compacted log, so it caught up by snapshot; log:\n{}",
        servers[leader].log()
    );
    for s in &servers {
        assert!(wait_until(CONVERGE_TIMEOUT, || job_ids(s).is_some_and(|ids| ids.len() == acked.len())));
    }
    // Workers on a server still catching up (replaying, installing the
    // snapshot) wait for their state and nack; no evaluation fails for it.
    let evals = get(&servers[new_leader].url("/v1/evaluations")).expect("evaluations");
    let failed: Vec<&Value> = evals.as_array().unwrap().iter().filter(|e| e["Status"] == "failed").collect();
    assert!(failed.is_empty(), "no evaluation failed: {failed:?}");
}
