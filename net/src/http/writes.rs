//! Write and action endpoints beyond job registration: jobspec parsing,
//! job evaluate and plan (a dry run), node drain and eligibility, and the
//! scheduler configuration.

// See handlers.rs: a refusal is returned as the response itself.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caravan_engine::endpoints::{self, EndpointError};
use caravan_engine::fsm::{self, Command};
use caravan_engine::ids::{IdGen, JobKey, NodeId};
use caravan_engine::model::{DrainStrategy, Evaluation, SchedulingEligibility, TriggeredBy};
use caravan_engine::scheduler;
use caravan_engine::state::{SchedulerAlgorithm, SchedulerConfig, Table};
use serde_json::{Value, json};

use super::handlers::{Params, Shared, endpoint_error, namespace, off_thread, read_snapshot, refuse, reply};
use super::server::Server;
use crate::api;

fn body_json(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// `PUT/POST /v1/jobs/parse`: `{"JobHCL": ..., "Variables": ..., "Canonicalize": bool}`.
pub(super) async fn parse_job(body: Bytes) -> Response {
    let request = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let Some(hcl) = request["JobHCL"].as_str() else {
        return refuse(StatusCode::BAD_REQUEST, "JobHCL must be a string");
    };
    let var_file = request["Variables"].as_str().unwrap_or("");
    let var_files: Vec<&str> = if var_file.is_empty() { Vec::new() } else { vec![var_file] };
    let parsed = match crate::jobspec::parse_jobspec(hcl, &[], &var_files) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if request["Canonicalize"].as_bool() != Some(true) {
        return reply(0, &parsed["Job"]);
    }
    match api::decode_job_request(parsed.to_string().as_bytes()) {
        Ok(job) => reply(0, &api::job_to_api(&job)),
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `GET /v1/metrics`: Nomad's JSON shape, or Prometheus text with
/// `?format=prometheus`.
pub(super) async fn metrics(State(server): Shared, Query(params): Params) -> Response {
    let gauges = server.gauges();
    if params.get("format").map(String::as_str) == Some("prometheus") {
        let mut text = String::new();
        for (name, value) in &gauges {
            let name = name.replace('.', "_");
            text.push_str(&format!("# TYPE {name} gauge\n{name} {value}\n"));
        }
        let mut r = (StatusCode::OK, text).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let gauges: Vec<Value> =
        gauges.iter().map(|(name, value)| json!({"Name": name, "Value": value, "Labels": {}})).collect();
    reply(0, &json!({"Timestamp": api::rfc3339(now), "Gauges": gauges, "Counters": [], "Samples": []}))
}

pub(super) async fn regions() -> Response {
    reply(0, &["global"])
}

/// `POST /v1/job/<id>` (register), `/evaluate`, `/plan`, and the actions
/// of [`super::job_actions`]. Job ids may contain `/`, so actions are
/// recognised by suffix, as Nomad does.
pub(super) async fn job_post(state: Shared, path: Path<String>, query: Params, body: Bytes) -> Response {
    off_thread(move || job_post_now(state, path, query, body)).await
}

fn job_post_now(state: Shared, Path(rest): Path<String>, query: Params, body: Bytes) -> Response {
    use super::job_actions as actions;
    let server = &state.0;
    let ns = namespace(&query.0);
    if let Some(id) = rest.strip_suffix("/revert") {
        return actions::revert(server, &JobKey::new(ns, id), &body);
    }
    if let Some(id) = rest.strip_suffix("/stable") {
        return actions::stable(server, &JobKey::new(ns, id), &body);
    }
    if let Some(id) = rest.strip_suffix("/scale") {
        return actions::scale(server, &JobKey::new(ns, id), &body);
    }
    if let Some(id) = rest.strip_suffix("/periodic/force") {
        return actions::periodic_force(server, &JobKey::new(ns, id));
    }
    if let Some(id) = rest.strip_suffix("/dispatch") {
        return actions::dispatch(server, &JobKey::new(ns, id), &body);
    }
    if let Some(id) = rest.strip_suffix("/evaluate") {
        return evaluate(&state.0, &JobKey::new(namespace(&query.0), id));
    }
    if let Some(id) = rest.strip_suffix("/plan") {
        return plan(&state.0, &JobKey::new(namespace(&query.0), id), &body);
    }
    super::handlers::register_job_now(state, body)
}

fn evaluate(server: &Arc<dyn Server>, key: &JobKey) -> Response {
    let mut eval_id = None;
    let result = server.write(&mut |state, ids, now| {
        let job = state.job(key).ok_or_else(|| EndpointError::JobNotFound(key.clone()))?;
        if job.is_parameterized_parent() {
            return Err(EndpointError::Refused("can't evaluate parameterized job".into()));
        }
        if job.is_periodic_parent() {
            return Err(EndpointError::Refused("can't evaluate periodic job".into()));
        }
        let mut eval = Evaluation::new(ids.eval(), key, job.job_type, job.priority, TriggeredBy::JobRegister);
        eval.job_modify_index = job.job_modify_index;
        eval.create_time_ns = now;
        eval.modify_time_ns = now;
        eval_id = Some(eval.id);
        Ok(Command::EvalUpsert { evals: vec![eval] })
    });
    match result {
        Ok(index) => reply(
            index,
            &json!({"EvalID": eval_id.map(|e| e.to_string()), "EvalCreateIndex": index, "JobModifyIndex": index, "Index": index}),
        ),
        Err(e) => endpoint_error(e),
    }
}

/// A dry run: the job as submitted is applied to a private copy of the
/// latest state and scheduled there; nothing is stored.
fn plan(server: &Arc<dyn Server>, key: &JobKey, body: &[u8]) -> Response {
    let job = match api::decode_job_request(body) {
        Ok(job) => job,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if *job.id != *key.id {
        return refuse(StatusCode::BAD_REQUEST, format!("job ID {:?} does not match the URL {:?}", job.id, key.id));
    }
    let submitted_periodic = job.periodic.clone().filter(|p| p.enabled && !job.stop);
    let snapshot = server.store().snapshot();
    let as_json = |j: &caravan_engine::model::Job| serde_json::to_value(api::job_to_api(j)).unwrap_or(Value::Null);
    let stored_json = snapshot.job(&job.key()).map(|existing| as_json(existing));
    let submitted_json = as_json(&job);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let mut ids = IdGen::with_seed(now as u64);
    let mut eval = Evaluation::new(ids.eval(), &job.key(), job.job_type, job.priority, TriggeredBy::JobRegister);
    eval.annotate_plan = true;
    let mut scratch = (*snapshot).clone();
    let index = scratch.index() + 1;
    let register = Command::JobRegister { job, eval: Some(eval.clone()), now_ns: now };
    if let Err(e) = fsm::apply_to(&mut scratch, index, &register) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    let outcome = match scheduler::schedule(&scratch, &eval, now) {
        Ok(o) => o,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let preemptions: usize = outcome.plan.node_preemptions.values().map(Vec::len).sum();
    let updates: BTreeMap<String, Value> = outcome
        .desired_updates
        .iter()
        .map(|(group, d)| {
            (
                group.to_string(),
                json!({"Place": d.place, "Stop": d.stop, "Ignore": d.ignore, "InPlaceUpdate": d.in_place_update,
                       "DestructiveUpdate": d.destructive_update, "Migrate": d.migrate, "Canary": d.canary, "Preemptions": 0}),
            )
        })
        .collect();
    let failed: BTreeMap<String, api::read::AllocMetric> =
        outcome.failed_tg_allocs.iter().map(|(g, m)| (g.to_string(), api::metric(m))).collect();
    let group_updates = |group: &str| {
        let Some(d) = outcome.desired_updates.get(group) else { return Vec::new() };
        [
            ("create", d.place),
            ("destroy", d.stop),
            ("ignore", d.ignore),
            ("in-place update", d.in_place_update),
            ("create/destroy update", d.destructive_update),
            ("migrate", d.migrate),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| (kind, u64::from(n)))
        .collect()
    };
    let diff = api::diff::job_diff(stored_json.as_ref(), &submitted_json, &group_updates);
    reply(
        snapshot.index(),
        &json!({
            "Annotations": {"DesiredTGUpdates": updates, "PreemptedAllocs": Value::Array(vec![]), "Preemptions": preemptions},
            "FailedTGAllocs": failed,
            "JobModifyIndex": snapshot.job(key).map_or(0, |j| j.job_modify_index),
            "CreatedEvals": Value::Array(vec![]),
            "Diff": diff,
            "NextPeriodicLaunch": next_periodic_launch(&submitted_periodic, now),
            "Warnings": "",
            "Index": snapshot.index(),
        }),
    )
}

/// When a periodic job as planned would launch next, as RFC 3339 text;
/// Go's zero time for any other job, as Nomad answers.
fn next_periodic_launch(periodic: &Option<caravan_engine::model::Periodic>, now_ns: i64) -> String {
    periodic
        .as_ref()
        .and_then(|p| caravan_engine::periodic::CronSchedule::parse(p).ok())
        .and_then(|schedule| schedule.next_after(now_ns))
        .map_or_else(|| "0001-01-01T00:00:00Z".to_string(), api::rfc3339)
}

/// `POST /v1/node/<id>/drain` and `/eligibility`.
pub(super) async fn node_post(state: Shared, path: Path<String>, body: Bytes) -> Response {
    off_thread(move || node_post_now(state, path, body)).await
}

fn node_post_now(state: Shared, Path(rest): Path<String>, body: Bytes) -> Response {
    let (id, action) = match rest.rsplit_once('/') {
        Some((id, action)) => (id, action),
        None => return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST needs /drain, /eligibility or /purge"),
    };
    let node_id: NodeId = match id.parse() {
        Ok(id) => id,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, format!("invalid node id {id:?}")),
    };
    let server = &state.0;
    if action == "purge" {
        return purge_node(server, node_id);
    }
    let request = match body_json(&body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let result = match action {
        "drain" => {
            let spec = &request["DrainSpec"];
            let mark_eligible = request["MarkEligible"].as_bool().unwrap_or(false);
            let drain = if spec.is_null() {
                None
            } else {
                let deadline_ns = match &spec["Deadline"] {
                    Value::Null => 0,
                    v => match v.as_i64() {
                        Some(ns) => ns,
                        None => {
                            return refuse(
                                StatusCode::BAD_REQUEST,
                                "DrainSpec.Deadline must be an integer of nanoseconds",
                            );
                        }
                    },
                };
                Some((deadline_ns, spec["IgnoreSystemJobs"].as_bool().unwrap_or(false)))
            };
            server.write(&mut |state, ids, now| {
                let strategy = drain.map(|(deadline_ns, ignore_system_jobs)| DrainStrategy {
                    deadline_ns,
                    ignore_system_jobs,
                    started_at_ns: now,
                    force_deadline_ns: if deadline_ns > 0 { now + deadline_ns } else { 0 },
                });
                endpoints::update_node_drain(state, node_id, strategy, mark_eligible, now, ids)
            })
        }
        "eligibility" => {
            let eligibility = match request["Eligibility"].as_str() {
                Some("eligible") => SchedulingEligibility::Eligible,
                Some("ineligible") => SchedulingEligibility::Ineligible,
                other => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        format!("Eligibility must be \"eligible\" or \"ineligible\", got {other:?}"),
                    );
                }
            };
            server
                .write(&mut |state, ids, now| endpoints::update_node_eligibility(state, node_id, eligibility, now, ids))
        }
        other => return refuse(StatusCode::NOT_FOUND, format!("unknown node action {other:?}")),
    };
    match result {
        Ok(index) => reply(
            index,
            &json!({"EvalIDs": Value::Array(vec![]), "EvalCreateIndex": index, "NodeModifyIndex": index, "Index": index}),
        ),
        Err(e) => endpoint_error(e),
    }
}

/// `POST/PUT /v1/node/<id>/purge`: the node is removed; each job with an
/// allocation there is evaluated, and the scheduler marks those
/// allocations lost (Nomad's `Node.Deregister`, answered as its
/// `NodeUpdateResponse`).
fn purge_node(server: &Arc<dyn Server>, node_id: NodeId) -> Response {
    let mut eval_ids = Vec::new();
    let result = server.write(&mut |state, ids, now| {
        let command = endpoints::purge_node(state, node_id, now, ids)?;
        if let Command::NodeDeregister { evals, .. } = &command {
            eval_ids = evals.iter().map(|e| e.id.to_string()).collect();
        }
        Ok(command)
    });
    match result {
        Ok(index) => reply(
            index,
            &json!({"EvalIDs": eval_ids, "EvalCreateIndex": index, "NodeModifyIndex": index, "HeartbeatTTL": 0, "Index": index}),
        ),
        Err(e) => endpoint_error(e),
    }
}

fn config_json(c: &SchedulerConfig) -> Value {
    json!({
        "SchedulerAlgorithm": match c.algorithm { SchedulerAlgorithm::Binpack => "binpack", SchedulerAlgorithm::Spread => "spread" },
        "PreemptionConfig": {
            "SystemSchedulerEnabled": c.preemption_system,
            "SysBatchSchedulerEnabled": c.preemption_sysbatch,
            "BatchSchedulerEnabled": c.preemption_batch,
            "ServiceSchedulerEnabled": c.preemption_service,
        },
        "MemoryOversubscriptionEnabled": c.memory_oversubscription,
        "ModifyIndex": c.modify_index,
    })
}

/// `GET /v1/operator/scheduler/configuration`, with blocking queries.
pub(super) async fn scheduler_config(State(server): Shared, Query(params): Params) -> Response {
    let (snap, _) = match read_snapshot(&server, &params, &[Table::SchedulerConfig]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let config = snap.scheduler_config();
    reply(config.modify_index, &json!({"SchedulerConfig": config_json(config), "Index": config.modify_index}))
}

/// `PUT/POST /v1/operator/scheduler/configuration`: the whole
/// configuration, as Nomad replaces it (a field left out is false, an
/// empty algorithm is binpack); every field's type is checked. `?cas=N`
/// writes only if the configuration's modify index is still N, answering
/// `Updated: false` otherwise.
pub(super) async fn set_scheduler_config(server: Shared, params: Params, body: Bytes) -> Response {
    off_thread(move || set_scheduler_config_now(server, params, body)).await
}

fn set_scheduler_config_now(State(server): Shared, Query(params): Params, body: Bytes) -> Response {
    let request = match body_json(&body) {
        Ok(Value::Object(map)) => map,
        Ok(v) => return refuse(StatusCode::BAD_REQUEST, format!("request body must be a JSON object, got {v}")),
        Err(e) => return e,
    };
    let cas = match params.get("cas").map(|c| c.parse::<u64>()) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "cas must be an unsigned integer (a modify index)"),
    };
    let config = match scheduler_config_from(&request) {
        Ok(c) => c,
        Err(m) => return refuse(StatusCode::BAD_REQUEST, m),
    };
    let mut stale = false;
    let _turn = cas.map(|_| super::handlers::checked_write_turn());
    let result = server.write(&mut |state, _, _| {
        if let Some(cas) = cas
            && state.scheduler_config().modify_index != cas
        {
            stale = true;
            return Err(EndpointError::Refused("cas index is stale".into()));
        }
        Ok(Command::SchedulerConfigUpdate { config: config.clone() })
    });
    match result {
        Ok(index) => reply(index, &json!({"Updated": true, "Index": index})),
        Err(_) if stale => {
            let index = server.store().snapshot().scheduler_config().modify_index;
            reply(index, &json!({"Updated": false, "Index": index}))
        }
        Err(e) => endpoint_error(e),
    }
}

/// A scheduler configuration from Nomad's JSON, every field checked.
fn scheduler_config_from(request: &serde_json::Map<String, Value>) -> Result<SchedulerConfig, String> {
    let flag = |object: &serde_json::Map<String, Value>, field: &str, path: &str| match object.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("{path}{field} must be a boolean, got {v}")),
    };
    let algorithm = match request.get("SchedulerAlgorithm") {
        None | Some(Value::Null) => SchedulerAlgorithm::Binpack,
        Some(Value::String(a)) if a.is_empty() || a == "binpack" => SchedulerAlgorithm::Binpack,
        Some(Value::String(a)) if a == "spread" => SchedulerAlgorithm::Spread,
        Some(v) => return Err(format!("invalid scheduler algorithm: {v} (binpack or spread)")),
    };
    let empty = serde_json::Map::new();
    let preemption = match request.get("PreemptionConfig") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(v) => return Err(format!("PreemptionConfig must be an object, got {v}")),
    };
    // Known to Nomad, not acted on by Caravan: checked, then ignored.
    flag(request, "RejectJobRegistration", "")?;
    flag(request, "PauseEvalBroker", "")?;
    let p = "PreemptionConfig.";
    Ok(SchedulerConfig {
        algorithm,
        preemption_system: flag(preemption, "SystemSchedulerEnabled", p)?,
        preemption_sysbatch: flag(preemption, "SysBatchSchedulerEnabled", p)?,
        preemption_batch: flag(preemption, "BatchSchedulerEnabled", p)?,
        preemption_service: flag(preemption, "ServiceSchedulerEnabled", p)?,
        memory_oversubscription: flag(request, "MemoryOversubscriptionEnabled", "")?,
        modify_index: 0,
    })
}

/// `POST/PUT /v1/allocation/<id>/stop`: the allocation is stopped and
/// replaced (Nomad's `alloc stop`).
pub(super) async fn alloc_post(server: Shared, path: Path<String>) -> Response {
    off_thread(move || alloc_post_now(server, path)).await
}

fn alloc_post_now(State(server): Shared, Path(rest): Path<String>) -> Response {
    let Some(id) = rest.strip_suffix("/stop") else {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST needs /stop");
    };
    let alloc_id: caravan_engine::ids::AllocId = match id.parse() {
        Ok(id) => id,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, format!("invalid allocation id {id:?}")),
    };
    let mut eval_id = None;
    let result = server.write(&mut |state, ids, now| {
        let command = endpoints::stop_alloc(state, alloc_id, now, ids)?;
        if let Command::AllocDesiredTransition { evals, .. } = &command {
            eval_id = evals.first().map(|e| e.id);
        }
        Ok(command)
    });
    match result {
        Ok(index) => reply(index, &json!({"EvalID": eval_id.map(|e| e.to_string()), "Index": index})),
        Err(e) => endpoint_error(e),
    }
}
