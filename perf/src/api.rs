//! The scenarios' HTTP client: what any user of the /v1 API would send.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// One request's limit: a read of a million allocations' worth of JSON on a
/// busy 2-core machine takes seconds, not minutes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections kept open for reuse. ureq keeps 3 per host by default, so
/// the latency scenario's 9 concurrent senders opened a fresh connection
/// (a resolver thread, a handshake, an accept on the server) for most
/// requests, CPU the server on the same machine then lacked.
const IDLE_CONNECTIONS_MAX: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    pub(crate) fn new(base: &str) -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_idle_connections(IDLE_CONNECTIONS_MAX)
            .max_idle_connections_per_host(IDLE_CONNECTIONS_MAX)
            .build();
        Api { base: base.trim_end_matches('/').to_string(), agent: config.into() }
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.agent.get(format!("{}{path}", self.base)).call();
        finish(&format!("GET {path}"), response)
    }

    pub(crate) fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self.agent.put(format!("{}{path}", self.base)).send_json(body);
        finish(&format!("PUT {path}"), response)
    }

    /// Register a job; its evaluation id.
    pub(crate) fn register(&self, job: &Value) -> anyhow::Result<String> {
        let reply = self.put("/v1/jobs", &json!({ "Job": job }))?;
        reply["EvalID"].as_str().map(String::from).context("register answered no EvalID")
    }

    /// `/v1/metrics` gauges by name.
    pub(crate) fn gauge(&self, name: &str) -> anyhow::Result<f64> {
        let metrics = self.get("/v1/metrics")?;
        let gauges = metrics["Gauges"].as_array().context("metrics without Gauges")?;
        gauges
            .iter()
            .find(|g| g["Name"] == name)
            .and_then(|g| g["Value"].as_f64())
            .with_context(|| format!("no gauge {name}"))
    }
}

fn finish(what: &str, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Value> {
    let mut response = response.with_context(|| format!("{what}: no response"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .with_context(|| format!("{what}: reading the body"))?;
    if !status.is_success() {
        bail!("{what}: {status}: {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: not JSON"))
}

/// A service or batch job of `count` raw_exec allocations of `cpu_mhz` and
/// `memory_mb`, in the API's JSON form.
pub(crate) fn job(id: &str, job_type: &str, count: u32, cpu_mhz: u32, memory_mb: u32) -> Value {
    json!({
        "ID": id,
        "Name": id,
        "Type": job_type,
        "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "g",
            "Count": count,
            "EphemeralDisk": { "SizeMB": 10 },
            "Tasks": [{
                "Name": "t",
                "Driver": "raw_exec",
                "Config": { "command": "/bin/true" },
                "Resources": { "CPU": cpu_mhz, "MemoryMB": memory_mb }
            }]
        }]
    })
}
