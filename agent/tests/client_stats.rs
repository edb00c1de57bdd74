//! `/v1/client/stats` and `/v1/client/allocation/<id>/stats` of a dev agent
//! whose client has simulated GPUs (4 × H200 at 40 % load): the host's
//! device stats come as one group per GPU model with Nomad's NVIDIA stat
//! names and units, and a GPU job's allocation lists exactly the GPU
//! instances the scheduler assigned it. Bad ids are refused.

#[path = "support/cluster.rs"]
mod cluster;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{get, http, wait_until};
use serde_json::{Value, json};

/// Generous for a loaded 2-core CI machine.
const TIMEOUT: Duration = Duration::from_secs(90);

const GPU_CONFIG: &str = r#"
plugin "nvidia-gpu" {
  config {
    simulated {
      count              = 4
      numa_nodes         = 1
      nvlink_island_size = 2
      load_percent       = 40
    }
  }
}
plugin "raw_exec" {
  config {
    enabled = true
  }
}
"#;

struct DevAgent {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DevAgent {
    fn start() -> DevAgent {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gpu.hcl");
        std::fs::write(&config, GPU_CONFIG).unwrap();
        let log = dir.path().join("agent.log");
        let http_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-dev", "-config", config.to_str().unwrap()])
            .args(["-http-port", &http_port.to_string(), "-rpc-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        DevAgent { child, base: format!("http://127.0.0.1:{http_port}"), log, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self, path: &str) -> (u16, String) {
        match http().get(&format!("{}{path}", self.base)).call() {
            Ok(mut resp) => (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default()),
            Err(err) => (0, err.to_string()),
        }
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The instance ids of every `DeviceStats` group, sorted.
fn instance_ids(groups: &Value) -> Vec<String> {
    let mut ids: Vec<String> = groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["InstanceStats"].as_object().into_iter().flat_map(|m| m.keys().cloned()))
        .collect();
    ids.sort();
    ids
}

#[test]
fn client_stats_report_gpu_usage_and_an_allocation_gets_its_own_gpus() {
    let agent = DevAgent::start();
    let base = agent.base.clone();
    let host = || get(&format!("{base}/v1/client/stats"));
    let ready =
        wait_until(TIMEOUT, || host().is_some_and(|h| h["DeviceStats"].as_array().is_some_and(|d| !d.is_empty())));
    assert!(ready, "device stats: {:?}\nagent log:\n{}", host(), agent.log());

    let stats = host().unwrap();
    assert!(stats["Memory"]["Total"].as_u64().is_some_and(|t| t > 0), "{stats}");
    let groups = stats["DeviceStats"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "one group per GPU model: {stats}");
    let group = &groups[0];
    assert_eq!(
        (&group["Vendor"], &group["Type"], &group["Name"]),
        (&json!("nvidia"), &json!("gpu"), &json!("NVIDIA H200"))
    );
    let instances = group["InstanceStats"].as_object().unwrap();
    assert_eq!(instances.len(), 4);
    for (id, instance) in instances {
        assert!(id.starts_with("GPU-"), "{id}");
        let summary = &instance["Summary"];
        assert_eq!(summary["Unit"], "MiB");
        assert_eq!(summary["IntNumeratorVal"], 143_771 * 40 / 100);
        assert_eq!(summary["IntDenominatorVal"], 143_771);
        let attributes = &instance["Stats"]["Attributes"];
        let check = |name: &str, unit: &str, value: i64| {
            assert_eq!(attributes[name]["Unit"], unit, "{name}: {attributes}");
            assert_eq!(attributes[name]["IntNumeratorVal"], value, "{name}: {attributes}");
        };
        check("GPU utilization", "%", 40);
        check("Memory utilization", "%", 20);
        check("Temperature", "C", 52);
        check("Power usage", "W", 70 + 630 * 40 / 100);
        check("Memory state", "MiB", 143_771 * 40 / 100);
        assert_eq!(attributes["Power usage"]["IntDenominatorVal"], 700);
        assert!(instance["Timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{instance}");
    }

    // A job asking for two GPUs.
    let job = json!({
        "ID": "train", "Name": "train", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [
            {"Name": "trainer", "Driver": "raw_exec",
             "Config": {"command": "/bin/sleep", "args": ["300"]},
             "Resources": {"CPU": 100, "MemoryMB": 32, "Devices": [{"Name": "nvidia/gpu", "Count": 2}]}},
            {"Name": "sidecar", "Driver": "raw_exec",
             "Config": {"command": "/bin/sleep", "args": ["300"]},
             "Resources": {"CPU": 100, "MemoryMB": 32}}]}]
    });
    let resp = http().put(&format!("{base}/v1/jobs")).send_json(json!({ "Job": job })).unwrap();
    assert_eq!(resp.status(), 200);
    let running = || {
        get(&format!("{base}/v1/job/train/allocations"))
            .and_then(|v| v.as_array().cloned())
            .and_then(|allocs| allocs.into_iter().find(|a| a["ClientStatus"] == "running"))
    };
    assert!(wait_until(TIMEOUT, || running().is_some()), "running\nagent log:\n{}", agent.log());
    let alloc_id = running().unwrap()["ID"].as_str().unwrap().to_string();
    let alloc = get(&format!("{base}/v1/allocation/{alloc_id}")).unwrap();
    let mut assigned: Vec<String> = alloc["AllocatedResources"]["Tasks"]["trainer"]["Devices"][0]["DeviceIDs"]
        .as_array()
        .unwrap_or_else(|| panic!("assigned devices: {alloc}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assigned.sort();
    assert_eq!(assigned.len(), 2);

    let (status, body) = agent.status(&format!("/v1/client/allocation/{alloc_id}/stats"));
    assert_eq!(status, 200, "{body}");
    let usage: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(instance_ids(&usage["ResourceUsage"]["DeviceStats"]), assigned, "{usage}");
    assert_eq!(instance_ids(&usage["Tasks"]["trainer"]["ResourceUsage"]["DeviceStats"]), assigned, "{usage}");
    assert_eq!(usage["Tasks"]["sidecar"]["ResourceUsage"]["DeviceStats"], json!([]), "{usage}");
    assert_eq!(usage["ResourceUsage"]["MemoryStats"]["Measured"], json!([]), "memory not measured: {usage}");

    // This agent's own node by id; bad and unknown ids.
    let node_id = alloc["NodeID"].as_str().unwrap();
    assert_eq!(agent.status(&format!("/v1/client/stats?node_id={node_id}")).0, 200);
    assert_eq!(agent.status("/v1/client/stats?node_id=not-a-node").0, 400);
    assert_eq!(agent.status("/v1/client/stats?node_id=00000000-0000-0000-0000-000000000001").0, 404);
    assert_eq!(agent.status("/v1/client/allocation/not-an-id/stats").0, 400);
    assert_eq!(agent.status("/v1/client/allocation/00000000-0000-0000-0000-000000000001/stats").0, 404);
    let _ = http().delete(&format!("{base}/v1/job/train?purge=true")).call();
}
