//! The job actions (`revert`, `stable`, `scale`, `dispatch`,
//! `periodic/force`), deployments and node purge over a real socket,
//! against an in-process cluster: each success changes the state as Nomad
//! would; bad input is a 4xx with a reason and changes nothing; unknown
//! ids are 404.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use caravan_engine::fsm::Command;
use caravan_engine::ids::AllocId;
use caravan_engine::model::{AllocClientUpdate, ClientStatus};
use caravan_net::http::LocalServer;
use serde_json::{Value, json};

mod common;

use common::{Reply, call, start};

/// A service job (Nomad gives service jobs an update strategy, so each
/// version rolls out under a deployment).
fn service_job(id: &str, count: u32, meta: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"Job": {"ID": id, "Type": "service", "Meta": {"m": meta}, "TaskGroups": [
        {"Name": "g", "Count": count, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/sleep", "args": ["60"]}, "Resources": {"CPU": 100, "MemoryMB": 64}}]}
    ]}}))
    .unwrap()
}

fn idle(server: &LocalServer) {
    assert!(server.cluster.wait_idle(Duration::from_secs(30)), "the cluster settles");
}

fn job(addr: SocketAddr, id: &str) -> Value {
    let r = call(addr, "GET", &format!("/v1/job/{id}"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    call(addr, "POST", path, body.to_string().as_bytes())
}

/// A refusal: the status, and a body that says why.
fn refused(r: &Reply, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(r.body.contains(reason), "{:?} should say {reason:?}", r.body);
}

/// The clients report every live allocation of the job running, and
/// healthy in its deployment.
fn report_running(server: &LocalServer, addr: SocketAddr, job_id: &str) {
    let allocs = call(addr, "GET", &format!("/v1/job/{job_id}/allocations"), b"").json();
    let updates: Vec<AllocClientUpdate> = allocs
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["DesiredStatus"] == "run")
        .map(|a| AllocClientUpdate {
            alloc_id: a["ID"].as_str().unwrap().parse::<AllocId>().unwrap(),
            client_status: ClientStatus::Running,
            client_description: "Tasks are running".into(),
            at_ns: 1,
            task_states: Default::default(),
            deployment_health: {
                let full = call(addr, "GET", &format!("/v1/allocation/{}", a["ID"].as_str().unwrap()), b"").json();
                full["DeploymentID"].as_str().and_then(|d| d.parse().ok()).map(|deployment_id| {
                    caravan_engine::model::AllocHealthReport { deployment_id, healthy: true, at_ns: 1 }
                })
            },
        })
        .collect();
    server.cluster.commit(&Command::AllocClientUpdate { updates, evals: vec![] }).unwrap();
}

#[test]
fn revert_and_stable() {
    let (addr, server) = start();
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("web", 1, "a")).status, 200);
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("web", 2, "b")).status, 200);
    idle(&server);
    assert_eq!(job(addr, "web")["Version"], 1);

    // Refusals first: each leaves the job at version 1.
    refused(&post(addr, "/v1/job/web/revert", json!({"JobVersion": 1})), 400, "current version");
    refused(
        &post(addr, "/v1/job/web/revert", json!({"JobVersion": 0, "EnforcePriorVersion": 5})),
        400,
        "enforcing version 5",
    );
    refused(&post(addr, "/v1/job/web/revert", json!({"JobVersion": "0"})), 400, "JobVersion");
    refused(&post(addr, "/v1/job/web/revert", json!({"JobVersion": -1})), 400, "JobVersion");
    refused(&call(addr, "POST", "/v1/job/web/revert", b"{not json"), 400, "invalid JSON");
    refused(&post(addr, "/v1/job/web/revert", json!({"JobVersion": 9})), 404, "version 9");
    refused(&post(addr, "/v1/job/nope/revert", json!({"JobVersion": 0})), 404, "not found");
    let unchanged = job(addr, "web");
    assert_eq!(unchanged["Version"], 1);
    assert_eq!(unchanged["TaskGroups"][0]["Count"], 2);

    let r = post(addr, "/v1/job/web/revert", json!({"JobVersion": 0, "EnforcePriorVersion": 1}));
    assert_eq!(r.status, 200, "{}", r.body);
    let eval_id = r.json()["EvalID"].as_str().unwrap().to_string();
    idle(&server);
    let reverted = job(addr, "web");
    assert_eq!(reverted["Version"], 2, "a revert is a new version");
    assert_eq!(reverted["TaskGroups"][0]["Count"], 1, "with version 0's spec");
    assert_eq!(reverted["Meta"]["m"], "a");
    let eval = call(addr, "GET", &format!("/v1/evaluation/{eval_id}"), b"").json();
    assert_eq!(eval["Status"], "complete", "{eval}");
    let live = call(addr, "GET", "/v1/job/web/allocations", b"").json();
    let running = live.as_array().unwrap().iter().filter(|a| a["DesiredStatus"] == "run").count();
    assert_eq!(running, 1, "the scheduler applied the reverted count: {live}");

    // Stable: set and clear on a kept version.
    assert_eq!(reverted["Stable"], false);
    let r = post(addr, "/v1/job/web/stable", json!({"JobVersion": 2, "Stable": true}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Index"].as_u64(), Some(r.index()), "the body's index is the header's");
    assert_eq!(job(addr, "web")["Stable"], true);
    let r = post(addr, "/v1/job/web/stable", json!({"JobVersion": 0, "Stable": true}));
    assert_eq!(r.status, 200, "{}", r.body);
    let versions = call(addr, "GET", "/v1/job/web/versions", b"").json();
    let stable: Vec<(u64, bool)> = versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["Version"].as_u64().unwrap(), v["Stable"].as_bool().unwrap()))
        .collect();
    assert_eq!(stable, vec![(2, true), (1, false), (0, true)]);
    refused(&post(addr, "/v1/job/web/stable", json!({"JobVersion": 7, "Stable": true})), 404, "version 7");
    refused(&post(addr, "/v1/job/web/stable", json!({"JobVersion": 2, "Stable": "yes"})), 400, "Stable");
    refused(&post(addr, "/v1/job/nope/stable", json!({"JobVersion": 0, "Stable": true})), 404, "not found");
    let r = post(addr, "/v1/job/web/stable", json!({"JobVersion": 2, "Stable": false}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(job(addr, "web")["Stable"], false);
}

#[test]
fn scale_and_scale_status() {
    let (addr, server) = start();
    // Job ids may contain `/` (as dispatched children do).
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("team/web", 1, "a")).status, 200);
    idle(&server);

    for (body, status, reason) in [
        (json!({"Count": 3}), 400, "missing task group"),
        (json!({"Count": 3, "Target": {"Group": "nope"}}), 400, "does not exist"),
        (json!({"Count": -1, "Target": {"Group": "g"}}), 400, "negative"),
        (json!({"Count": "3", "Target": {"Group": "g"}}), 400, "Count"),
        (json!({"Count": 3, "Target": {"Group": 7}}), 400, "Target.Group"),
        (json!({"Count": 5000000000u64, "Target": {"Group": "g"}}), 400, "too large"),
        (json!({"Count": 3, "Target": {"Group": "g"}, "Message": 1}), 400, "Message"),
        (json!({"Count": 3, "Target": {"Group": "g"}, "Error": true}), 400, "should not contain count"),
        (json!({"Target": {"Group": "g"}, "Error": "yes"}), 400, "Error"),
        (json!({"Target": {"Group": "g"}, "Meta": ["a"]}), 400, "Meta"),
        (json!({"Target": {"Group": "g", "Job": "other"}}), 400, "did not match"),
        (json!({"Target": "g"}), 400, "Target"),
        (json!({"Target": {"Group": "g"}, "Message": "x".repeat(20_000)}), 400, "Message"),
    ] {
        refused(&post(addr, "/v1/job/team/web/scale", body), status, reason);
    }
    refused(&post(addr, "/v1/job/nope/scale", json!({"Count": 3, "Target": {"Group": "g"}})), 404, "not found");
    assert_eq!(job(addr, "team/web")["Version"], 0, "refusals change nothing");
    let status = call(addr, "GET", "/v1/job/team/web/scale", b"").json();
    assert_eq!(status["TaskGroups"]["g"]["Events"], json!([]), "refusals record no event");

    // No count: an event is recorded; the job is not written.
    let r = post(addr, "/v1/job/team/web/scale", json!({"Target": {"Group": "g"}, "Message": "just checking"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["EvalID"], "");
    assert_eq!(job(addr, "team/web")["Version"], 0);

    // A count while the job's first deployment runs is refused, as Nomad
    // refuses it; once its allocations are healthy the deployment is done.
    refused(
        &post(addr, "/v1/job/team/web/scale", json!({"Count": 3, "Target": {"Group": "g"}})),
        400,
        "active deployment",
    );
    report_running(&server, addr, "team/web");
    assert_eq!(call(addr, "GET", "/v1/job/team/web/deployment", b"").json()["Status"], "successful");
    refused(
        &post(addr, "/v1/job/team/web/scale", json!({"Count": 3, "Target": {"Group": "g"}, "JobModifyIndex": 999})),
        400,
        "conflicting job modify index",
    );

    let meta = json!({"reason": "cpu", "policy": {"target": 70}});
    let r = post(
        addr,
        "/v1/job/team/web/scale",
        json!({"Count": 3, "Target": {"Group": "g", "Job": "team/web"}, "Message": "more", "Meta": meta}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let eval_id = r.json()["EvalID"].as_str().unwrap().to_string();
    idle(&server);
    let scaled = job(addr, "team/web");
    assert_eq!(scaled["Version"], 1);
    assert_eq!(scaled["TaskGroups"][0]["Count"], 3);
    let eval = call(addr, "GET", &format!("/v1/evaluation/{eval_id}"), b"").json();
    assert_eq!(eval["TriggeredBy"], "job-scaling");
    assert_eq!(eval["Status"], "complete");

    // An error event (an autoscaler's) carries no count and changes none.
    let r = post(addr, "/v1/job/team/web/scale", json!({"Target": {"Group": "g"}, "Error": true, "Message": "boom"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["EvalID"], "");

    report_running(&server, addr, "team/web");
    let status = call(addr, "GET", "/v1/job/team/web/scale", b"");
    assert_eq!(status.status, 200, "{}", status.body);
    let status = status.json();
    assert_eq!(status["JobID"], "team/web");
    assert_eq!(status["JobStopped"], false);
    let g = &status["TaskGroups"]["g"];
    assert_eq!((g["Desired"].as_u64(), g["Placed"].as_u64(), g["Running"].as_u64()), (Some(3), Some(3), Some(3)));
    assert_eq!((g["Healthy"].as_u64(), g["Unhealthy"].as_u64()), (Some(3), Some(0)));
    let events = g["Events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    let (error, scaled_up, checked) = (&events[0], &events[1], &events[2]);
    assert_eq!((error["Error"].as_bool(), error["Count"].is_null()), (Some(true), true), "newest first: {error}");
    assert_eq!((error["PreviousCount"].as_u64(), error["Message"].as_str()), (Some(3), Some("boom")));
    assert!(error["EvalID"].is_null() && error["Meta"].is_null(), "{error}");
    assert_eq!((scaled_up["Count"].as_u64(), scaled_up["PreviousCount"].as_u64()), (Some(3), Some(1)));
    assert_eq!(scaled_up["EvalID"], eval_id.as_str());
    assert_eq!(scaled_up["Meta"], meta);
    assert_eq!((scaled_up["Message"].as_str(), scaled_up["Error"].as_bool()), (Some("more"), Some(false)));
    assert!(scaled_up["Time"].as_u64().unwrap() > 1_600_000_000_000_000_000, "unix nanoseconds: {scaled_up}");
    assert!(checked["Count"].is_null() && checked["Message"] == "just checking", "{checked}");
    let created: Vec<u64> = events.iter().map(|e| e["CreateIndex"].as_u64().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] > w[1]), "{created:?}");
    assert_eq!(call(addr, "GET", "/v1/job/nope/scale", b"").status, 404);

    // Allocation short ids (the first 8 characters) differ within a job.
    let allocs = call(addr, "GET", "/v1/job/team/web/allocations", b"").json();
    let mut shorts: Vec<String> =
        allocs.as_array().unwrap().iter().map(|a| a["ID"].as_str().unwrap()[..8].to_string()).collect();
    shorts.sort();
    shorts.dedup();
    assert_eq!(shorts.len(), 3, "{allocs}");
    let by_prefix = call(addr, "GET", &format!("/v1/allocations?prefix={}", shorts[0]), b"").json();
    assert_eq!(by_prefix.as_array().unwrap().len(), 1, "a short id finds one allocation");
}

#[test]
fn dispatch_and_periodic_force_refuse_plain_jobs_and_bad_bodies() {
    let (addr, server) = start();
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("web", 1, "a")).status, 200);
    idle(&server);
    let before = server.cluster.store.latest_index();
    refused(&post(addr, "/v1/job/web/dispatch", json!({"Payload": "aGk="})), 400, "not a parameterized job");
    refused(&post(addr, "/v1/job/web/dispatch", json!({"Payload": "not base64!"})), 400, "base64");
    refused(&post(addr, "/v1/job/web/dispatch", json!({"Payload": 5})), 400, "Payload");
    let big = "A".repeat(4 * 6000);
    refused(&post(addr, "/v1/job/web/dispatch", json!({"Payload": big})), 400, "maximum size");
    refused(&post(addr, "/v1/job/web/dispatch", json!({"Meta": {"k": 1}})), 400, "Meta");
    refused(&post(addr, "/v1/job/web/dispatch", json!({"Meta": "k=v"})), 400, "Meta");
    refused(&post(addr, "/v1/job/nope/dispatch", json!({})), 404, "not found");
    refused(&call(addr, "POST", "/v1/job/web/periodic/force", b""), 400, "non-periodic");
    refused(&call(addr, "POST", "/v1/job/nope/periodic/force", b""), 404, "not found");
    assert_eq!(server.cluster.store.latest_index(), before, "nothing written");
}

#[test]
fn deployments_follow_a_service_job() {
    let (addr, server) = start();
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("web", 2, "a")).status, 200);
    idle(&server);

    let latest = call(addr, "GET", "/v1/job/web/deployment", b"");
    assert_eq!(latest.status, 200, "{}", latest.body);
    let d = latest.json();
    let id = d["ID"].as_str().expect("a deployment for version 0").to_string();
    assert_eq!(d["JobID"], "web");
    assert_eq!(d["JobVersion"], 0);
    assert_eq!(d["Status"], "running");
    assert_eq!(d["TaskGroups"]["g"]["DesiredTotal"], 2);
    assert_eq!(d["TaskGroups"]["g"]["PlacedAllocs"], 2);
    assert_eq!(d["TaskGroups"]["g"]["HealthyAllocs"], 0);
    let list = call(addr, "GET", "/v1/deployments", b"").json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(call(addr, "GET", &format!("/v1/deployments?prefix={}", &id[..4]), b"").json()[0]["ID"], id);
    assert_eq!(call(addr, "GET", "/v1/job/web/deployments", b"").json()[0]["ID"], id);
    assert_eq!(call(addr, "GET", &format!("/v1/deployment/{id}"), b"").json()["ID"], id);
    let allocs = call(addr, "GET", &format!("/v1/deployment/allocations/{id}"), b"").json();
    assert_eq!(allocs.as_array().unwrap().len(), 2);
    for a in allocs.as_array().unwrap() {
        let full = call(addr, "GET", &format!("/v1/allocation/{}", a["ID"].as_str().unwrap()), b"").json();
        assert_eq!(full["DeploymentID"], id.as_str());
    }

    // Pause and resume.
    refused(&post(addr, &format!("/v1/deployment/pause/{id}"), json!({})), 400, "Pause");
    refused(&post(addr, &format!("/v1/deployment/pause/{id}"), json!({"Pause": "yes"})), 400, "Pause");
    let r = post(addr, &format!("/v1/deployment/pause/{id}"), json!({"Pause": true}));
    assert_eq!(r.status, 200, "{}", r.body);
    let d = call(addr, "GET", &format!("/v1/deployment/{id}"), b"").json();
    assert_eq!((d["Status"].as_str(), d["StatusDescription"].as_str()), (Some("paused"), Some("Deployment is paused")));
    let r = post(addr, &format!("/v1/deployment/pause/{id}"), json!({"Pause": false}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.json()["EvalID"].as_str().unwrap().is_empty(), "resuming evaluates the job");
    assert_eq!(call(addr, "GET", &format!("/v1/deployment/{id}"), b"").json()["Status"], "running");

    // Promote: there are no canaries.
    refused(&post(addr, &format!("/v1/deployment/promote/{id}"), json!({"All": true})), 400, "no canaries");
    refused(&post(addr, &format!("/v1/deployment/promote/{id}"), json!({"Groups": [1]})), 400, "Groups");

    // Fail, then every action on the terminal deployment is refused.
    let r = post(addr, &format!("/v1/deployment/fail/{id}"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let eval_id = r.json()["EvalID"].as_str().unwrap().to_string();
    let eval = call(addr, "GET", &format!("/v1/evaluation/{eval_id}"), b"").json();
    assert_eq!(eval["TriggeredBy"], "deployment-watcher");
    assert_eq!(eval["DeploymentID"], id.as_str());
    let d = call(addr, "GET", &format!("/v1/deployment/{id}"), b"").json();
    assert_eq!(
        (d["Status"].as_str(), d["StatusDescription"].as_str()),
        (Some("failed"), Some("Deployment marked as failed"))
    );
    refused(&post(addr, &format!("/v1/deployment/fail/{id}"), json!({})), 400, "terminal");
    refused(&post(addr, &format!("/v1/deployment/pause/{id}"), json!({"Pause": true})), 400, "terminal");
    idle(&server);

    // Unknown and malformed ids.
    let unknown = "0a1b2c3d-0000-4000-8000-000000000000";
    assert_eq!(call(addr, "GET", &format!("/v1/deployment/{unknown}"), b"").status, 404);
    refused(&post(addr, &format!("/v1/deployment/fail/{unknown}"), json!({})), 404, "not found");
    refused(&call(addr, "GET", "/v1/deployment/nope", b""), 400, "invalid deployment id");
    refused(&post(addr, &format!("/v1/deployment/bogus/{id}"), json!({})), 404, "bogus");
    assert_eq!(call(addr, "GET", "/v1/job/nope/deployment", b"").status, 404);

    // A new version gets a new deployment, which succeeds once its
    // allocations run, and the version becomes stable.
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("web", 2, "b")).status, 200);
    idle(&server);
    let d = call(addr, "GET", "/v1/job/web/deployment", b"").json();
    let id2 = d["ID"].as_str().unwrap().to_string();
    assert_ne!(id2, id);
    assert_eq!(d["JobVersion"], 1);
    assert_eq!(d["Status"], "running");
    report_running(&server, addr, "web");
    let d = call(addr, "GET", &format!("/v1/deployment/{id2}"), b"").json();
    assert_eq!(d["Status"], "successful", "{d}");
    assert_eq!(d["TaskGroups"]["g"]["HealthyAllocs"], 2);
    assert_eq!(job(addr, "web")["Stable"], true);
    assert_eq!(call(addr, "GET", "/v1/job/web/deployments", b"").json().as_array().unwrap().len(), 2);
}

#[test]
fn deployment_events_stream() {
    let (addr, server) = start();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
        .write_all(format!("GET /v1/event/stream?topic=Deployment HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        call(addr, "PUT", "/v1/jobs", &service_job("web", 1, "a"))
    });
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"Topic\":\"Deployment\"") {
        let n = stream.read(&mut buf).expect("the stream delivers before the read timeout");
        assert!(n > 0, "stream closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("\"JobID\":\"web\""), "{seen}");
    assert!(!seen.contains("\"Topic\":\"Job\""), "{seen}");
    assert_eq!(writer.join().unwrap().status, 200);
    idle(&server);
}

#[test]
fn node_purge_loses_its_allocations() {
    let (addr, server) = start();
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("web", 3, "a")).status, 200);
    idle(&server);
    let allocs = call(addr, "GET", "/v1/job/web/allocations", b"").json();
    let victim = allocs[0].clone();
    let node_id = victim["NodeID"].as_str().unwrap().to_string();
    let on_node: Vec<String> = allocs
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["NodeID"] == node_id.as_str())
        .map(|a| a["ID"].as_str().unwrap().to_string())
        .collect();

    refused(&call(addr, "POST", "/v1/node/not-an-id/purge", b""), 400, "invalid node id");
    let unknown = "0a1b2c3d-0000-4000-8000-000000000000";
    refused(&call(addr, "POST", &format!("/v1/node/{unknown}/purge"), b""), 404, "not found");
    assert_eq!(call(addr, "GET", "/v1/nodes", b"").json().as_array().unwrap().len(), 3);

    let r = call(addr, "POST", &format!("/v1/node/{node_id}/purge"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let evals = r.json()["EvalIDs"].as_array().unwrap().clone();
    assert_eq!(evals.len(), 1, "one eval for the one job on the node: {}", r.body);
    idle(&server);
    assert_eq!(call(addr, "GET", &format!("/v1/node/{node_id}"), b"").status, 404);
    assert_eq!(call(addr, "GET", "/v1/nodes", b"").json().as_array().unwrap().len(), 2);
    for id in &on_node {
        let a = call(addr, "GET", &format!("/v1/allocation/{id}"), b"").json();
        assert_eq!((a["ClientStatus"].as_str(), a["DesiredStatus"].as_str()), (Some("lost"), Some("stop")), "{a}");
    }
    let live = call(addr, "GET", "/v1/job/web/allocations", b"").json();
    let live: Vec<&Value> = live.as_array().unwrap().iter().filter(|a| a["DesiredStatus"] == "run").collect();
    assert_eq!(live.len(), 3, "replacements placed");
    assert!(live.iter().all(|a| a["NodeID"] != node_id.as_str()));
    let eval = call(addr, "GET", &format!("/v1/evaluation/{}", evals[0].as_str().unwrap()), b"").json();
    assert_eq!(eval["Status"], "complete");
}

#[test]
fn dispatch_runs_children_of_a_parameterized_job() {
    let (addr, server) = start();
    let parent = json!({"Job": {"ID": "params", "Type": "batch", "Meta": {"base": "1"},
        "ParameterizedJob": {"Payload": "required", "MetaRequired": ["who"], "MetaOptional": ["extra"]},
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}, "Resources": {"CPU": 100, "MemoryMB": 64}}]}]}});
    let r = post(addr, "/v1/jobs", parent);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["EvalID"], "", "a parameterized job is not evaluated itself");
    idle(&server);
    let p = job(addr, "params");
    assert_eq!(p["Status"], "running");
    assert_eq!(p["ParameterizedJob"]["Payload"], "required");
    assert_eq!(call(addr, "GET", "/v1/job/params/allocations", b"").json().as_array().unwrap().len(), 0);
    refused(&call(addr, "POST", "/v1/job/params/evaluate", b""), 400, "parameterized");
    let bad = post(
        addr,
        "/v1/jobs",
        json!({"Job": {"ID": "x", "ParameterizedJob": {"Payload": "sometimes"},
        "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec"}]}]}}),
    );
    refused(&bad, 400, "ParameterizedJob.Payload");

    let before = server.cluster.store.latest_index();
    refused(&post(addr, "/v1/job/params/dispatch", json!({"Meta": {"who": "me"}})), 400, "required by parameterized");
    refused(&post(addr, "/v1/job/params/dispatch", json!({"Payload": "aGk="})), 400, "required meta keys");
    refused(
        &post(addr, "/v1/job/params/dispatch", json!({"Payload": "aGk=", "Meta": {"who": "me", "nope": "x"}})),
        400,
        "unpermitted metadata keys",
    );
    assert_eq!(server.cluster.store.latest_index(), before, "refusals write nothing");

    let r = post(addr, "/v1/job/params/dispatch", json!({"Payload": "aGk=", "Meta": {"who": "me"}}));
    assert_eq!(r.status, 200, "{}", r.body);
    let child = r.json()["DispatchedJobID"].as_str().unwrap().to_string();
    let suffix = child.strip_prefix("params/dispatch-").expect("<parent>/dispatch-<time>-<hex>");
    let (time, hex) = suffix.split_once('-').unwrap();
    assert!(time.parse::<u64>().unwrap() > 1_600_000_000, "{child}");
    assert!(hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{child}");
    assert!(!r.json()["EvalID"].as_str().unwrap().is_empty());
    idle(&server);
    let c = job(addr, &child);
    assert_eq!(c["ParentID"], "params");
    assert_eq!(c["Dispatched"], true);
    assert_eq!(c["Payload"], "aGk=");
    assert_eq!((c["Meta"]["who"].as_str(), c["Meta"]["base"].as_str()), (Some("me"), Some("1")));
    let allocs = call(addr, "GET", &format!("/v1/job/{child}/allocations"), b"").json();
    assert_eq!(allocs.as_array().unwrap().len(), 1, "the child runs: {allocs}");
    assert_eq!(call(addr, "GET", "/v1/jobs?prefix=params", b"").json().as_array().unwrap().len(), 2);
    let again = post(addr, "/v1/job/params/dispatch", json!({"Payload": "aGk=", "Meta": {"who": "you"}}));
    assert_ne!(again.json()["DispatchedJobID"].as_str().unwrap(), child, "each dispatch is a new child");
}

/// A periodic batch job as the API takes it (`cron` is `Spec`).
fn periodic_job(id: &str, periodic: Value) -> Value {
    json!({"Job": {"ID": id, "Type": "batch", "Periodic": periodic,
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}, "Resources": {"CPU": 100, "MemoryMB": 64}}]}]}})
}

#[test]
fn periodic_jobs_register_as_templates_and_force_launches_a_child() {
    let (addr, server) = start();
    // Six fields: Nomad's minute .. day of week plus a year, so the only
    // scheduled launch is far away and every child here is forced.
    let periodic = json!({"Spec": "0 0 1 1 * 2099", "TimeZone": "America/New_York", "ProhibitOverlap": true});
    let r = post(addr, "/v1/jobs", periodic_job("report", periodic.clone()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["EvalID"], "", "a periodic job is not evaluated itself");
    idle(&server);
    let parent = job(addr, "report");
    assert_eq!(parent["Status"], "running");
    assert_eq!(
        parent["Periodic"],
        json!({"Enabled": true, "Spec": "0 0 1 1 * 2099", "Specs": null, "SpecType": "cron",
               "ProhibitOverlap": true, "TimeZone": "America/New_York"})
    );
    assert_eq!(call(addr, "GET", "/v1/job/report/allocations", b"").json().as_array().unwrap().len(), 0);
    let stubs = call(addr, "GET", "/v1/jobs?prefix=report", b"").json();
    assert_eq!(stubs[0]["Periodic"], true);
    refused(&call(addr, "POST", "/v1/job/report/evaluate", b""), 400, "periodic");
    // A plan of the job says when it launches next: midnight in New York.
    let plan = post(addr, "/v1/job/report/plan", periodic_job("report", periodic));
    assert_eq!(plan.json()["NextPeriodicLaunch"], "2099-01-01T05:00:00Z", "{}", plan.body);

    let forced = call(addr, "POST", "/v1/job/report/periodic/force", b"");
    assert_eq!(forced.status, 200, "{}", forced.body);
    let reply = forced.json();
    let eval_id = reply["EvalID"].as_str().unwrap().to_string();
    assert!(!eval_id.is_empty());
    assert_eq!(reply["EvalCreateIndex"], reply["Index"]);
    assert_eq!(reply["Index"].as_u64(), Some(forced.index()));
    idle(&server);
    let eval = call(addr, "GET", &format!("/v1/evaluation/{eval_id}"), b"").json();
    assert_eq!(eval["TriggeredBy"], "periodic-job");
    let child_id = eval["JobID"].as_str().unwrap().to_string();
    let launched = child_id.strip_prefix("report/periodic-").expect("<parent>/periodic-<unix seconds>");
    assert!(launched.parse::<u64>().unwrap() > 1_600_000_000, "{child_id}");
    let child = job(addr, &child_id);
    assert_eq!(child["ParentID"], "report");
    assert!(child["Periodic"].is_null(), "a child is not periodic itself");
    assert!(child["Dispatched"].is_null(), "a launched child is not a dispatched one");
    let allocs = call(addr, "GET", &format!("/v1/job/{child_id}/allocations"), b"").json();
    assert_eq!(allocs.as_array().unwrap().len(), 1, "the child runs: {allocs}");
    let children = call(addr, "GET", "/v1/jobs?prefix=report/periodic-", b"").json();
    assert_eq!(children.as_array().unwrap().len(), 1);
    assert_eq!(children[0]["ParentID"], "report");
    let summary = call(addr, "GET", "/v1/job/report/summary", b"").json();
    let counted = ["Pending", "Running", "Dead"].iter().map(|s| summary["Children"][s].as_u64().unwrap()).sum::<u64>();
    assert_eq!(counted, 1, "{summary}");

    // Disabled: registered, but not launched, not even by force.
    let disabled = post(addr, "/v1/jobs", periodic_job("later", json!({"Specs": ["@daily"], "Enabled": false})));
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    refused(&call(addr, "POST", "/v1/job/later/periodic/force", b""), 400, "disabled");
}

#[test]
fn bad_periodic_blocks_are_refused_with_the_reason_and_store_nothing() {
    let (addr, server) = start();
    let before = server.cluster.store.latest_index();
    let cases = [
        (json!({"Spec": "*/5 * * *"}), "invalid cron spec \"*/5 * * *\""),
        (json!({"Spec": "99 * * * *"}), "invalid cron spec"),
        (json!({"Specs": ["@daily", "nonsense"]}), "invalid cron spec \"nonsense\""),
        (json!({"Spec": "@daily", "TimeZone": "Mars/Olympus_Mons"}), "invalid time zone \"Mars/Olympus_Mons\""),
        (json!({"Spec": "@daily", "SpecType": "interval"}), "Periodic.SpecType"),
        (json!({"Spec": "@daily", "ProhibitOverlap": "yes"}), "Periodic.ProhibitOverlap"),
        (json!({"Spec": "@daily", "Specs": ["@hourly"]}), "only one of cron"),
        (json!({"Enabled": true}), "must specify a cron expression"),
        (json!("@daily"), "Periodic"),
    ];
    for (periodic, reason) in cases {
        refused(&post(addr, "/v1/jobs", periodic_job("bad", periodic)), 400, reason);
    }
    let mut service = periodic_job("svc", json!({"Spec": "@daily"}));
    service["Job"]["Type"] = json!("service");
    refused(&post(addr, "/v1/jobs", service), 400, "periodic can only be used with batch or sysbatch jobs");
    assert_eq!(server.cluster.store.latest_index(), before, "nothing written");
    assert_eq!(call(addr, "GET", "/v1/job/bad", b"").status, 404);
}

/// A service job whose group leaves health to the operator.
fn manual_health_job(id: &str, meta: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"Job": {"ID": id, "Type": "service", "Meta": {"m": meta}, "TaskGroups": [
        {"Name": "g", "Count": 2, "Update": {"HealthCheck": "manual", "MaxParallel": 2}, "Tasks": [{"Name": "t",
            "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": ["60"]},
            "Resources": {"CPU": 100, "MemoryMB": 64}}]}
    ]}}))
    .unwrap()
}

fn alloc_ids_of(addr: SocketAddr, deployment: &str) -> Vec<String> {
    let allocs = call(addr, "GET", &format!("/v1/deployment/allocations/{deployment}"), b"").json();
    allocs.as_array().unwrap().iter().map(|a| a["ID"].as_str().unwrap().to_string()).collect()
}

#[test]
fn manual_allocation_health_settles_a_deployment() {
    let (addr, server) = start();
    assert_eq!(call(addr, "PUT", "/v1/jobs", &manual_health_job("web", "a")).status, 200);
    assert_eq!(call(addr, "PUT", "/v1/jobs", &service_job("other", 1, "a")).status, 200);
    idle(&server);
    let d = call(addr, "GET", "/v1/job/web/deployment", b"").json();
    let id = d["ID"].as_str().unwrap().to_string();
    let allocs = alloc_ids_of(addr, &id);
    assert_eq!(allocs.len(), 2);
    let other_id = call(addr, "GET", "/v1/job/other/deployment", b"").json()["ID"].as_str().unwrap().to_string();
    let foreign = alloc_ids_of(addr, &other_id)[0].clone();
    let path = format!("/v1/deployment/allocation-health/{id}");

    // Refusals: each a 400 with the reason, and nothing recorded.
    let unknown_alloc = "0a1b2c3d-0000-4000-8000-000000000000";
    for (body, reason) in [
        (json!({}), "at least one"),
        (json!({"HealthyAllocationIDs": []}), "at least one"),
        (json!({"HealthyAllocationIDs": [unknown_alloc]}), "unknown alloc"),
        (json!({"HealthyAllocationIDs": [&allocs[0], &foreign]}), "not part of deployment"),
        (json!({"HealthyAllocationIDs": [&allocs[0]], "UnhealthyAllocationIDs": [&allocs[0]]}), "more than once"),
        (json!({"HealthyAllocationIDs": [&allocs[0][..8]]}), "full allocation IDs"),
        (json!({"HealthyAllocationIDs": "all"}), "HealthyAllocationIDs"),
        (json!({"UnhealthyAllocationIDs": [7]}), "UnhealthyAllocationIDs"),
    ] {
        refused(&post(addr, &path, body), 400, reason);
    }
    refused(&call(addr, "POST", &path, b"[1,"), 400, "invalid JSON");
    refused(
        &post(addr, &format!("/v1/deployment/allocation-health/{unknown_alloc}"), json!({"HealthyAllocationIDs": []})),
        404,
        "not found",
    );
    for a in &allocs {
        let full = call(addr, "GET", &format!("/v1/allocation/{a}"), b"").json();
        assert!(full["DeploymentStatus"]["Healthy"].is_null(), "{}", full["DeploymentStatus"]);
    }

    // One healthy: the deployment waits for the other.
    let r = post(addr, &path, json!({"HealthyAllocationIDs": [&allocs[0]]}));
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r.json();
    let eval_id = reply["EvalID"].as_str().unwrap().to_string();
    assert!(!eval_id.is_empty(), "{reply}");
    assert_eq!(reply["DeploymentModifyIndex"].as_u64(), Some(r.index()));
    let eval = call(addr, "GET", &format!("/v1/evaluation/{eval_id}"), b"").json();
    assert_eq!((eval["TriggeredBy"].as_str(), eval["DeploymentID"].as_str()), (Some("deployment-watcher"), Some(&*id)));
    let full = call(addr, "GET", &format!("/v1/allocation/{}", allocs[0]), b"").json();
    assert_eq!(full["DeploymentStatus"]["Healthy"], true, "{}", full["DeploymentStatus"]);
    let d = call(addr, "GET", &format!("/v1/deployment/{id}"), b"").json();
    assert_eq!((d["Status"].as_str(), d["TaskGroups"]["g"]["HealthyAllocs"].as_u64()), (Some("running"), Some(1)));

    // Both: the deployment succeeds and its version is stable.
    let r = post(addr, &path, json!({"HealthyAllocationIDs": allocs}));
    assert_eq!(r.status, 200, "{}", r.body);
    let d = call(addr, "GET", &format!("/v1/deployment/{id}"), b"").json();
    assert_eq!((d["Status"].as_str(), d["TaskGroups"]["g"]["HealthyAllocs"].as_u64()), (Some("successful"), Some(2)));
    assert_eq!(job(addr, "web")["Stable"], true);
    refused(&post(addr, &path, json!({"HealthyAllocationIDs": [&allocs[0]]})), 400, "terminal deployment");
    idle(&server);

    // A new version; one allocation marked unhealthy fails its deployment.
    assert_eq!(call(addr, "PUT", "/v1/jobs", &manual_health_job("web", "b")).status, 200);
    idle(&server);
    let d2 = call(addr, "GET", "/v1/job/web/deployment", b"").json();
    let id2 = d2["ID"].as_str().unwrap().to_string();
    assert_ne!(id2, id);
    let allocs2 = alloc_ids_of(addr, &id2);
    assert!(!allocs2.is_empty());
    // Field names match case-insensitively, as Go decodes them (python-nomad relies on it).
    let r = post(
        addr,
        &format!("/v1/deployment/allocation-health/{id2}"),
        json!({"UnHealthyAllocationIDs": [&allocs2[0]]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d2 = call(addr, "GET", &format!("/v1/deployment/{id2}"), b"").json();
    assert_eq!(d2["Status"], "failed", "{d2}");
    assert_eq!(d2["TaskGroups"]["g"]["UnhealthyAllocs"], 1);
    idle(&server);
}

/// As in Nomad: a job both periodic and parameterized is a template that
/// launches nothing itself; each child dispatched from it is a periodic
/// job, which launches its own children.
#[test]
fn a_periodic_parameterized_job_dispatches_periodic_children() {
    let (addr, server) = start();
    let mut spec = periodic_job("nightly", json!({"Spec": "0 0 1 1 * 2099"}));
    spec["Job"]["ParameterizedJob"] = json!({"Payload": "optional", "MetaOptional": ["region"]});
    let r = post(addr, "/v1/jobs", spec);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["EvalID"], "", "a template is not evaluated");
    refused(&post(addr, "/v1/job/nightly/periodic/force", json!({})), 400, "nightly");

    let r = post(addr, "/v1/job/nightly/dispatch", json!({"Meta": {"region": "eu"}}));
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r.json();
    let child = reply["DispatchedJobID"].as_str().unwrap().to_string();
    assert_eq!(reply["EvalID"], "", "a periodic child is not evaluated itself: {reply}");
    let c = job(addr, &child);
    assert_eq!((c["ParentID"].as_str(), c["Meta"]["region"].as_str()), (Some("nightly"), Some("eu")));
    assert_eq!(c["Periodic"]["Spec"], "0 0 1 1 * 2099");
    assert_eq!(call(addr, "GET", &format!("/v1/job/{child}/allocations"), b"").json(), json!([]));

    // The child launches its own children.
    let r = post(addr, &format!("/v1/job/{child}/periodic/force"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    idle(&server);
    let jobs = call(addr, "GET", &format!("/v1/jobs?prefix={child}/periodic-"), b"").json();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["ParentID"], child.as_str());
}
