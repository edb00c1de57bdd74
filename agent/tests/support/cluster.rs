//! What the multi-server tests share: certificates made with `caravan tls`
//! as an operator makes them, the agent configuration of one server, and
//! the few HTTP calls the tests make (by URL, so a caller decides where a
//! request comes from: the test's own network or a server's namespace).

// Each test binary includes this file and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A client-side bound on one request: above the servers' 15 s raft write
/// timeout, so a write that raft cannot commit comes back as the server's
/// error rather than as our own timeout.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How often `wait_until` re-checks: cheap requests, quick reaction.
const POLL: Duration = Duration::from_millis(50);

pub(crate) fn http() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(REQUEST_TIMEOUT)).build().into()
}

/// A 200 answer's JSON; `None` for anything else.
pub(crate) fn get(url: &str) -> Option<Value> {
    let mut resp = http().get(url).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.body_mut().read_json().ok()
}

/// A small batch job; no client runs it, the tests only care about state.
pub(crate) fn job(id: &str) -> Value {
    json!({"Job": {
        "ID": id, "Name": id, "Type": "batch", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{
            "Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
            "Resources": {"CPU": 100, "MemoryMB": 64}}]}]}})
}

/// Registers a job through the server at `base` (`http://host:port`); true
/// when the server acknowledged it (a 200: committed through raft).
pub(crate) fn register(base: &str, id: &str) -> bool {
    match http().put(&format!("{base}/v1/jobs")).send_json(job(id)) {
        Ok(resp) => resp.status() == 200,
        Err(_) => false,
    }
}

/// The job ids the server at `base` lists, duplicates kept.
pub(crate) fn job_ids(base: &str) -> Option<Vec<String>> {
    let jobs = get(&format!("{base}/v1/jobs"))?;
    Some(jobs.as_array()?.iter().filter_map(|j| j["ID"].as_str().map(String::from)).collect())
}

/// The leader's RPC address as the server at `base` sees it; `None` when
/// it knows no leader or does not answer.
pub(crate) fn leader(base: &str) -> Option<String> {
    get(&format!("{base}/v1/status/leader"))?.as_str().filter(|s| !s.is_empty()).map(String::from)
}

pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// `caravan tls ...`, as an operator creates the cluster's certificates.
pub(crate) fn caravan_tls(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_caravan")).arg("tls").args(args).output().unwrap();
    assert!(out.status.success(), "caravan tls {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A cluster CA in `root/ca`.
pub(crate) struct Ca {
    pub(crate) dir: PathBuf,
}

impl Ca {
    pub(crate) fn create(root: &Path) -> Ca {
        let dir = root.join("ca");
        caravan_tls(&["ca", "create", "-dir", dir.to_str().unwrap()]);
        Ca { dir }
    }

    /// A server certificate signed by this CA, written to `dir`.
    pub(crate) fn server_cert(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let ca = self.dir.join("caravan-agent-ca.pem");
        let key = self.dir.join("caravan-agent-ca-key.pem");
        let (ca, key, dir) = (ca.to_str().unwrap(), key.to_str().unwrap(), dir.to_str().unwrap());
        caravan_tls(&["cert", "create", "-server", "-ca", ca, "-key", key, "-dir", dir]);
    }
}

/// One server's agent configuration.
pub(crate) struct ServerConfig<'a> {
    pub(crate) name: &'a str,
    /// Holds `data/` and `tls/` (the certificate from [`Ca::server_cert`]).
    pub(crate) dir: &'a Path,
    pub(crate) bind_addr: &'a str,
    pub(crate) http_port: u16,
    pub(crate) rpc_port: u16,
    /// Every server's RPC address, this one's included.
    pub(crate) peers: &'a [String],
    pub(crate) ca: &'a Ca,
    /// Extra lines inside the `server { }` block.
    pub(crate) server_extra: &'a str,
}

impl ServerConfig<'_> {
    /// Writes `dir/agent.hcl` and returns its path.
    pub(crate) fn write(&self) -> PathBuf {
        let join: Vec<String> = self.peers.iter().map(|p| format!("{p:?}")).collect();
        let tls = self.dir.join("tls");
        let text = format!(
            r#"name = "{name}"
data_dir = "{data}"
bind_addr = "{bind}"
log_level = "INFO"
ports {{
  http = {http}
  rpc = {rpc}
}}
server {{
  enabled = true
  bootstrap_expect = {expect}
{extra}
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
            name = self.name,
            data = self.dir.join("data").display(),
            bind = self.bind_addr,
            http = self.http_port,
            rpc = self.rpc_port,
            expect = self.peers.len(),
            extra = self.server_extra,
            join = join.join(", "),
            ca = self.ca.dir.display(),
            tls = tls.display(),
        );
        let path = self.dir.join("agent.hcl");
        std::fs::write(&path, text).unwrap();
        path
    }
}
