//! Three `caravan agent -server` processes on loopback, as an operator
//! runs them: they form a cluster from `bootstrap_expect`, take writes on
//! any server, survive `kill -9` of the leader with every acknowledged job
//! kept, and the killed server restarts from its data dir and catches up,
//! through a snapshot since the leader has compacted its log meanwhile.
//! Reads are consistent on every server, and `?stale` reads answer even
//! without a leader.

#[path = "support/cluster.rs"]
mod cluster;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Ca, ServerConfig, get, wait_until};

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

fn register(server: &ServerProc, id: &str) -> bool {
    cluster::register(&server.url(""), id)
}

fn job_ids(server: &ServerProc) -> Option<Vec<String>> {
    cluster::job_ids(&server.url(""))
}

fn leader_of(server: &ServerProc) -> Option<String> {
    cluster::leader(&server.url(""))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn three_server_processes_survive_kill_9_of_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::create(root.path());
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
        ca.server_cert(&s.dir.join("tls"));
        ServerConfig {
            name: &s.name,
            dir: &s.dir,
            bind_addr: "127.0.0.1",
            http_port: s.http_port,
            rpc_port: s.rpc_port,
            peers: &peers,
            ca: &ca,
            // Small, so the leader compacts its log while a server is down.
            server_extra: "  raft_snapshot_threshold = 32",
        }
        .write();
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

    // Reads without `?stale` are consistent on every server: a job
    // acknowledged through one server is in the very next read on another,
    // with no wait in between.
    for i in 0..10 {
        let id = format!("read-after-write-{i}");
        assert!(register(&servers[i % 3], &id));
        let reader = &servers[(i + 1) % 3];
        assert!(
            get(&reader.url(&format!("/v1/job/{id}"))).is_some(),
            "{id}, acknowledged by {}, is read at once on {}",
            servers[i % 3].name,
            reader.name
        );
        acked.push(id);
    }

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
    let failed: Vec<&serde_json::Value> =
        evals.as_array().unwrap().iter().filter(|e| e["Status"] == "failed").collect();
    assert!(failed.is_empty(), "no evaluation failed: {failed:?}");

    // Without a quorum no server knows a leader: consistent reads are
    // refused as Nomad refuses them, `?stale` reads still answer from the
    // server's own state and say that no leader is known.
    let lone = survivors[0];
    servers[survivors[1]].kill9();
    servers[leader].kill9();
    assert!(wait_until(CONVERGE_TIMEOUT, || leader_of(&servers[lone]).is_none()), "the lone server knows no leader");
    let mut resp = cluster::http().get(&servers[lone].url("/v1/jobs")).call().expect("the server answers");
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.body_mut().read_to_string().unwrap(), "No cluster leader");
    let mut resp = cluster::http().get(&servers[lone].url("/v1/jobs?stale")).call().expect("the server answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("X-Nomad-KnownLeader").and_then(|v| v.to_str().ok()), Some("false"));
    let last_contact_ms: u64 =
        resp.headers().get("X-Nomad-LastContact").and_then(|v| v.to_str().ok()?.parse().ok()).expect("LastContact");
    assert!(last_contact_ms > 0, "a follower reports how long ago it heard from the leader");
    let stale: serde_json::Value = resp.body_mut().read_json().unwrap();
    let ids: Vec<&str> = stale.as_array().unwrap().iter().filter_map(|j| j["ID"].as_str()).collect();
    assert!(acked.iter().all(|id| ids.contains(&id.as_str())), "a stale read lists every acknowledged job");
}
