//! The `/v1` HTTP API over a real socket, against an in-process cluster:
//! register (JSON and from HCL), read back, evaluations complete,
//! allocations placed, blocking queries, purge, and bad input refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;

use common::{call, start};

fn hello_json() -> Vec<u8> {
    let source =
        std::fs::read_to_string(format!("{}/../examples/hello.nomad.hcl", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_json::to_vec(&caravan_net::jobspec::parse_jobspec(&source, &[], &[]).unwrap()).unwrap()
}

#[test]
fn register_read_evaluate_and_purge() {
    let (addr, server) = start();
    let r = call(addr, "PUT", "/v1/jobs", &hello_json());
    assert_eq!(r.status, 200, "{}", r.body);
    let eval_id = r.json()["EvalID"].as_str().unwrap().to_string();

    assert!(server.cluster.wait_idle(Duration::from_secs(30)));
    let job = call(addr, "GET", "/v1/job/hello", b"");
    assert_eq!(job.status, 200);
    assert_eq!(job.json()["ID"], "hello");
    assert_eq!(job.json()["Type"], "batch");
    let eval = call(addr, "GET", &format!("/v1/evaluation/{eval_id}"), b"");
    assert_eq!(eval.json()["Status"], "complete", "{}", eval.body);
    let allocs = call(addr, "GET", "/v1/job/hello/allocations", b"").json();
    assert_eq!(allocs.as_array().unwrap().len(), 1);
    let alloc_id = allocs[0]["ID"].as_str().unwrap().to_string();
    let alloc = call(addr, "GET", &format!("/v1/allocation/{alloc_id}"), b"");
    assert_eq!(alloc.json()["JobID"], "hello");
    assert_eq!(alloc.json()["DesiredStatus"], "run");
    let node_id = alloc.json()["NodeID"].as_str().unwrap().to_string();
    let stopped = call(addr, "POST", &format!("/v1/allocation/{alloc_id}/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert!(server.cluster.wait_idle(Duration::from_secs(30)));
    let after = call(addr, "GET", &format!("/v1/allocation/{alloc_id}"), b"").json();
    assert_eq!(after["DesiredStatus"], "stop", "stopped");
    let replaced = call(addr, "GET", "/v1/job/hello/allocations", b"").json();
    assert_eq!(replaced.as_array().unwrap().iter().filter(|a| a["DesiredStatus"] == "run").count(), 1, "and replaced");
    assert_eq!(call(addr, "POST", "/v1/allocation/not-an-id/stop", b"").status, 400);
    let on_node = call(addr, "GET", &format!("/v1/node/{node_id}/allocations"), b"").json();
    assert!(!on_node.as_array().unwrap().is_empty());
    let list = call(addr, "GET", "/v1/jobs?prefix=hel", b"").json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(call(addr, "GET", "/v1/nodes", b"").json().as_array().unwrap().len(), 3);
    assert_eq!(call(addr, "GET", "/v1/status/leader", b"").json(), "127.0.0.1:4647");
    let metrics = call(addr, "GET", "/v1/metrics", b"").json();
    let placements = metrics["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == "caravan.worker.placements")
        .unwrap()["Value"]
        .clone();
    assert_eq!(placements, 2.0, "the first placement and the replacement of the stopped one");
    let prometheus = call(addr, "GET", "/v1/metrics?format=prometheus", b"");
    assert!(prometheus.body.contains("nomad_state_nodes 3"), "{}", prometheus.body);

    let del = call(addr, "DELETE", "/v1/job/hello?purge=true", b"");
    assert_eq!(del.status, 200, "{}", del.body);
    assert_eq!(call(addr, "GET", "/v1/job/hello", b"").status, 404);
    server.cluster.wait_idle(Duration::from_secs(30));
}

#[test]
fn blocking_query_returns_when_jobs_change() {
    let (addr, server) = start();
    let first = call(addr, "GET", "/v1/jobs", b"");
    let index = first.index();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        call(addr, "PUT", "/v1/jobs", &hello_json())
    });
    // Without a change this would wait the full 30 s; it returns with the
    // new job because the registration moved the jobs index past `index`.
    let blocked = call(addr, "GET", &format!("/v1/jobs?index={index}&wait=30s"), b"");
    assert_eq!(blocked.status, 200);
    assert!(blocked.index() > index);
    assert_eq!(blocked.json().as_array().unwrap().len(), 1, "{}", blocked.body);
    assert_eq!(writer.join().unwrap().status, 200);
    assert!(server.cluster.wait_idle(Duration::from_secs(30)));
    let settled = call(addr, "GET", "/v1/jobs", b"").index();
    let quiet = call(addr, "GET", &format!("/v1/jobs?index={settled}&wait=200ms"), b"");
    assert_eq!(quiet.index(), settled, "nothing changed: the wait ends with the same index");
}

#[test]
fn bad_input_is_refused_with_a_reason_and_stores_nothing() {
    let (addr, _server) = start();
    let cases: [(&str, &str, &[u8], u16, &str); 7] = [
        ("PUT", "/v1/jobs", b"{not json", 400, ""),
        ("PUT", "/v1/jobs", br#"{"Job":{"ID":"x","Priority":"high"}}"#, 400, "Priority"),
        (
            "PUT",
            "/v1/jobs",
            br#"{"Job":{"ID":"x","TaskGroups":[{"Name":"g","Count":-1,"Tasks":[{"Name":"t","Driver":"raw_exec"}]}]}}"#,
            400,
            "Count",
        ),
        ("PUT", "/v1/jobs", &[0xff, 0xfe, 0x00], 400, ""),
        ("GET", "/v1/job/nope", b"", 404, "not found"),
        ("GET", "/v1/evaluation/not-a-uuid", b"", 400, "invalid evaluation id"),
        ("GET", "/v1/jobs?index=abc", b"", 400, "invalid index"),
    ];
    for (method, path, body, status, needle) in cases {
        let r = call(addr, method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(r.body.contains(needle), "{method} {path}: {}", r.body);
    }
    let huge = vec![b' '; caravan_net::api::BODY_BYTES_MAX + 1];
    let r = call(addr, "PUT", "/v1/jobs", &huge);
    assert_eq!(r.status, 413);
    assert!(r.body.contains("limit"), "413 says why: {:?}", r.body);
    assert_eq!(call(addr, "GET", "/v1/no/such/path", b"").status, 404);
    for (method, path) in [("DELETE", "/v1/jobs"), ("PATCH", "/v1/job/x"), ("POST", "/v1/agent/members")] {
        let r = call(addr, method, path, b"");
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        assert!(r.body.contains("not allowed"), "{method} {path}: {:?}", r.body);
    }
    assert_eq!(call(addr, "GET", "/v1/jobs", b"").json().as_array().unwrap().len(), 0, "nothing stored");
}

#[test]
fn parse_plan_evaluate_drain_and_scheduler_config() {
    let (addr, server) = start();
    let hcl = std::fs::read_to_string(format!("{}/../examples/web.nomad.hcl", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let parse = serde_json::json!({"JobHCL": hcl, "Canonicalize": true});
    let parsed = call(addr, "POST", "/v1/jobs/parse", parse.to_string().as_bytes());
    assert_eq!(parsed.status, 200, "{}", parsed.body);
    assert_eq!(parsed.json()["ID"], "web");
    assert_eq!(parsed.json()["Priority"], 50, "canonicalized");

    // A dry run: the plan says what would happen and nothing is stored.
    let job = serde_json::json!({"Job": parsed.json()});
    let plan = call(addr, "POST", "/v1/job/web/plan", job.to_string().as_bytes());
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(plan.json()["Diff"]["Type"], "Added");
    let groups = plan.json()["Annotations"]["DesiredTGUpdates"].clone();
    let (_, updates) = groups.as_object().unwrap().iter().next().unwrap();
    assert_eq!(updates["Place"], 3, "{groups}");
    assert_eq!(call(addr, "GET", "/v1/job/web", b"").status, 404, "a plan stores nothing");

    assert_eq!(call(addr, "PUT", "/v1/jobs", job.to_string().as_bytes()).status, 200);
    assert!(server.cluster.wait_idle(Duration::from_secs(30)));
    let again = call(addr, "POST", "/v1/job/web/plan", job.to_string().as_bytes());
    assert_eq!(again.json()["Diff"]["Type"], "None", "{}", again.body);
    // An edit is listed field by field, with what it forces.
    let mut edited = job.clone();
    edited["Job"]["Priority"] = serde_json::json!(60);
    edited["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]["args"] = serde_json::json!(["-c", "sleep 1"]);
    let plan = call(addr, "POST", "/v1/job/web/plan", edited.to_string().as_bytes());
    assert_eq!(plan.status, 200, "{}", plan.body);
    let diff = &plan.json()["Diff"];
    assert_eq!(diff["Type"], "Edited", "{diff}");
    assert_eq!(
        diff["Fields"],
        serde_json::json!([{"Type": "Edited", "Name": "Priority", "Old": "50", "New": "60", "Annotations": null}])
    );
    let group = &diff["TaskGroups"][0];
    // At least one replacement (a rolling update may hold back the rest).
    assert!(group["Updates"]["create/destroy update"].as_u64().is_some_and(|n| n >= 1), "{group}");
    assert_eq!(group["Tasks"][0]["Annotations"], serde_json::json!(["forces create/destroy update"]), "{group}");
    assert_eq!(group["Tasks"][0]["Objects"][0]["Name"], "Config", "{group}");
    let evaluate = call(addr, "POST", "/v1/job/web/evaluate", b"{}");
    assert_eq!(evaluate.status, 200, "{}", evaluate.body);
    assert!(evaluate.json()["EvalID"].is_string());
    assert!(server.cluster.wait_idle(Duration::from_secs(30)));

    // Drain the node of one allocation: it moves elsewhere.
    let allocs = call(addr, "GET", "/v1/job/web/allocations", b"").json();
    let node_id = allocs[0]["NodeID"].as_str().unwrap().to_string();
    let drain = serde_json::json!({"DrainSpec": {"Deadline": 3_600_000_000_000i64, "IgnoreSystemJobs": false}, "MarkEligible": false});
    let r = call(addr, "POST", &format!("/v1/node/{node_id}/drain"), drain.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(server.cluster.wait_idle(Duration::from_secs(30)));
    let node = call(addr, "GET", &format!("/v1/node/{node_id}"), b"").json();
    assert_eq!(node["SchedulingEligibility"], "ineligible");
    let live_on_node = call(addr, "GET", &format!("/v1/node/{node_id}/allocations"), b"")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["DesiredStatus"] == "run")
        .count();
    assert_eq!(live_on_node, 0, "drained");
    let undrain = serde_json::json!({"DrainSpec": null, "MarkEligible": true});
    assert_eq!(call(addr, "POST", &format!("/v1/node/{node_id}/drain"), undrain.to_string().as_bytes()).status, 200);
    assert_eq!(call(addr, "GET", &format!("/v1/node/{node_id}"), b"").json()["SchedulingEligibility"], "eligible");
    let bad = call(addr, "POST", &format!("/v1/node/{node_id}/eligibility"), br#"{"Eligibility":"maybe"}"#);
    assert_eq!(bad.status, 400);

    let config = call(addr, "GET", "/v1/operator/scheduler/configuration", b"").json();
    assert_eq!(config["SchedulerConfig"]["SchedulerAlgorithm"], "binpack");
    let set =
        serde_json::json!({"SchedulerAlgorithm": "spread", "PreemptionConfig": {"ServiceSchedulerEnabled": true}});
    assert_eq!(call(addr, "PUT", "/v1/operator/scheduler/configuration", set.to_string().as_bytes()).status, 200);
    let config = call(addr, "GET", "/v1/operator/scheduler/configuration", b"").json();
    assert_eq!(config["SchedulerConfig"]["SchedulerAlgorithm"], "spread");
    assert_eq!(config["SchedulerConfig"]["PreemptionConfig"]["ServiceSchedulerEnabled"], true);
    // Nomad replaces the whole configuration: a flag left out is false.
    assert_eq!(config["SchedulerConfig"]["PreemptionConfig"]["SystemSchedulerEnabled"], false);
    let modify_index = config["SchedulerConfig"]["ModifyIndex"].as_u64().unwrap();
    for (body, reason) in [
        (serde_json::json!({"SchedulerAlgorithm": "fastest"}), "invalid scheduler algorithm"),
        (serde_json::json!({"SchedulerAlgorithm": 1}), "invalid scheduler algorithm"),
        (
            serde_json::json!({"PreemptionConfig": {"BatchSchedulerEnabled": "yes"}}),
            "PreemptionConfig.BatchSchedulerEnabled",
        ),
        (serde_json::json!({"PreemptionConfig": []}), "PreemptionConfig"),
        (serde_json::json!({"MemoryOversubscriptionEnabled": 1}), "MemoryOversubscriptionEnabled"),
        (serde_json::json!(["spread"]), "object"),
    ] {
        let r = call(addr, "PUT", "/v1/operator/scheduler/configuration", body.to_string().as_bytes());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains(reason), "{body}: {}", r.body);
    }
    // Check-and-set: a stale index writes nothing; the current one writes.
    let batch =
        serde_json::json!({"SchedulerAlgorithm": "spread", "PreemptionConfig": {"BatchSchedulerEnabled": true}});
    let stale = call(addr, "PUT", "/v1/operator/scheduler/configuration?cas=1", batch.to_string().as_bytes());
    assert_eq!((stale.status, stale.json()["Updated"].as_bool()), (200, Some(false)), "{}", stale.body);
    let path = format!("/v1/operator/scheduler/configuration?cas={modify_index}");
    let fresh = call(addr, "PUT", &path, batch.to_string().as_bytes());
    assert_eq!((fresh.status, fresh.json()["Updated"].as_bool()), (200, Some(true)), "{}", fresh.body);
    let config = call(addr, "GET", "/v1/operator/scheduler/configuration", b"").json();
    let preemption = &config["SchedulerConfig"]["PreemptionConfig"];
    assert_eq!(
        (preemption["BatchSchedulerEnabled"].as_bool(), preemption["ServiceSchedulerEnabled"].as_bool()),
        (Some(true), Some(false))
    );
    // A blocking read returns once the configuration changes past the index.
    let index = config["Index"].as_u64().unwrap();
    let started = std::time::Instant::now();
    let r = call(addr, "GET", &format!("/v1/operator/scheduler/configuration?index={index}&wait=300ms"), b"");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "it waited for a change");
}

#[test]
fn event_stream_delivers_job_registered() {
    let (addr, _server) = start();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
        .write_all(format!("GET /v1/event/stream?topic=Job%3A%2A HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        call(addr, "PUT", "/v1/jobs", &hello_json())
    });
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("JobRegistered") {
        let n = stream.read(&mut buf).expect("the stream delivers before the read timeout");
        assert!(n > 0, "stream closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("200 OK"), "{seen}");
    assert!(seen.contains("\"Topic\":\"Job\"") && seen.contains("\"Key\":\"hello\""), "{seen}");
    assert!(!seen.contains("\"Topic\":\"Evaluation\""), "the filter keeps only Job events: {seen}");
    assert_eq!(writer.join().unwrap().status, 200);
    let bad = call(addr, "GET", "/v1/event/stream?topic=Bogus", b"");
    assert_eq!(bad.status, 400);
}

#[test]
fn agent_members_lists_the_servers() {
    let (addr, _server) = start();
    let r = call(addr, "GET", "/v1/agent/members", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.json();
    assert_eq!((m["ServerRegion"].as_str(), m["ServerDC"].as_str()), (Some("global"), Some("dc1")));
    let members = m["Members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{m}");
    let me = &members[0];
    assert_eq!((me["Status"].as_str(), me["Tags"]["role"].as_str()), (Some("alive"), Some("nomad")), "{me}");
    assert_eq!(me["Name"], m["ServerName"]);
    assert!(me["Port"].as_u64().is_some() && me["Addr"].as_str().is_some(), "{me}");
    let servers = call(addr, "GET", "/v1/agent/servers", b"").json();
    assert_eq!(servers.as_array().map(Vec::len), Some(1), "{servers}");
}

/// A server whose job registrations wait at a gate, as a raft commit waits
/// for its quorum: everything else goes straight to the in-process cluster.
#[derive(Debug)]
struct GatedServer {
    inner: std::sync::Arc<caravan_net::http::LocalServer>,
    /// (registrations waiting, gate open)
    gate: std::sync::Mutex<(usize, bool)>,
    moved: std::sync::Condvar,
}

impl caravan_net::http::Server for GatedServer {
    fn store(&self) -> &std::sync::Arc<caravan_engine::state::StateStore> {
        self.inner.store()
    }

    fn register_job(
        &self,
        job: caravan_engine::model::Job,
    ) -> Result<(caravan_engine::ids::EvalId, u64), caravan_engine::endpoints::EndpointError> {
        let mut gate = self.gate.lock().unwrap();
        gate.0 += 1;
        self.moved.notify_all();
        while !gate.1 {
            gate = self.moved.wait(gate).unwrap();
        }
        drop(gate);
        self.inner.register_job(job)
    }

    fn deregister_job(
        &self,
        key: &caravan_engine::ids::JobKey,
        purge: bool,
    ) -> Result<(caravan_engine::ids::EvalId, u64), caravan_engine::endpoints::EndpointError> {
        self.inner.deregister_job(key, purge)
    }

    fn write(
        &self,
        build: &mut caravan_net::http::WriteBuilder<'_>,
    ) -> Result<u64, caravan_engine::endpoints::EndpointError> {
        self.inner.write(build)
    }

    fn events_since(&self, index: u64, limit: usize) -> Vec<caravan_engine::events::Event> {
        self.inner.events_since(index, limit)
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        self.inner.gauges()
    }

    fn leader_addr(&self) -> String {
        self.inner.leader_addr()
    }

    fn peers(&self) -> Vec<String> {
        self.inner.peers()
    }
}

#[test]
fn a_write_waiting_for_its_commit_does_not_hold_other_requests() {
    use caravan_net::http::Server;
    let (_, local) = start();
    let gated = std::sync::Arc::new(GatedServer {
        inner: local,
        gate: std::sync::Mutex::new((0, false)),
        moved: std::sync::Condvar::new(),
    });
    let addr = caravan_net::http::spawn("127.0.0.1:0".parse().unwrap(), gated.clone()).unwrap();
    let open_gate = || {
        gated.gate.lock().unwrap().1 = true;
        gated.moved.notify_all();
    };
    // Two registrations wait for their commit at once.
    let writers: Vec<_> =
        (0..2).map(|_| std::thread::spawn(move || call(addr, "PUT", "/v1/jobs", &hello_json()))).collect();
    {
        let gate = gated.gate.lock().unwrap();
        let (gate, waited) = gated.moved.wait_timeout_while(gate, Duration::from_secs(30), |g| g.0 < 2).unwrap();
        let both = !waited.timed_out();
        drop(gate);
        if !both {
            open_gate();
            panic!("the second registration did not reach its commit while the first waited");
        }
    }
    // Reads are answered meanwhile.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(call(addr, "GET", "/v1/jobs", b"").status));
    let read = rx.recv_timeout(Duration::from_secs(30));
    open_gate();
    assert_eq!(read, Ok(200), "a read waited behind the pending writes");
    for writer in writers {
        let reply = writer.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert!(gated.store().snapshot().job(&caravan_engine::ids::JobKey::new("default", "hello")).is_some());
}
