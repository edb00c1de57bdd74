//! Job actions beyond register/plan/evaluate: `revert`, `stable`, `scale`
//! (and its status), `dispatch`, `periodic/force`, and the job's
//! deployments. Each decodes and checks its body first (400 with the
//! reason, nothing written), then builds its command from the latest state
//! through the engine's endpoint builders.

// See handlers.rs: a refusal is returned as the response itself.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use caravan_engine::endpoints::{self, EndpointError};
use caravan_engine::fsm::Command;
use caravan_engine::ids::{EvalId, JobKey};
use caravan_engine::model::{ClientStatus, DesiredStatus, ScalingEvent};
use caravan_engine::state::Snapshot;
use serde_json::{Value, json};

use super::handlers::{endpoint_error, refuse, reply};
use super::server::Server;
use crate::api;

pub(super) fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(refuse(StatusCode::BAD_REQUEST, "request body must be a JSON object")),
        Err(e) => Err(refuse(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))),
    }
}

/// An optional unsigned integer field.
pub(super) fn opt_u64(body: &serde_json::Map<String, Value>, field: &str) -> Result<Option<u64>, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("{field} must be an unsigned integer, got {v}"))),
    }
}

/// An optional boolean field.
pub(super) fn opt_bool(body: &serde_json::Map<String, Value>, field: &str) -> Result<Option<bool>, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(refuse(StatusCode::BAD_REQUEST, format!("{field} must be a boolean, got {v}"))),
    }
}

fn register_reply(index: u64, eval_id: Option<EvalId>) -> Response {
    reply(
        index,
        &json!({"EvalID": eval_id.map(|e| e.to_string()).unwrap_or_default(), "EvalCreateIndex": index,
                "JobModifyIndex": index, "Warnings": "", "Index": index, "LastContact": 0, "KnownLeader": true}),
    )
}

fn eval_of(command: &Command) -> Option<EvalId> {
    match command {
        Command::JobRegister { eval, .. } => eval.as_ref().map(|e| e.id),
        _ => None,
    }
}

/// `POST /v1/job/<id>/revert`: `JobVersion`, `EnforcePriorVersion`.
pub(super) fn revert(server: &Arc<dyn Server>, key: &JobKey, body: &[u8]) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let (version, enforce) = match (opt_u64(&body, "JobVersion"), opt_u64(&body, "EnforcePriorVersion")) {
        (Ok(v), Ok(e)) => (v.unwrap_or(0), e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut eval_id = None;
    let result = server.write(&mut |state, ids, now| {
        let command = endpoints::revert_job(state, key, version, enforce, now, ids)?;
        eval_id = eval_of(&command);
        Ok(command)
    });
    match result {
        Ok(index) => register_reply(index, eval_id),
        Err(e) => endpoint_error(e),
    }
}

/// `POST /v1/job/<id>/stable`: `JobVersion`, `Stable`.
pub(super) fn stable(server: &Arc<dyn Server>, key: &JobKey, body: &[u8]) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let (version, stable) = match (opt_u64(&body, "JobVersion"), opt_bool(&body, "Stable")) {
        (Ok(v), Ok(s)) => (v.unwrap_or(0), s.unwrap_or(false)),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match server.write(&mut |state, _, _| endpoints::set_job_stability(state, key, version, stable)) {
        Ok(index) => reply(index, &json!({"Index": index})),
        Err(e) => endpoint_error(e),
    }
}

/// `POST /v1/job/<id>/scale` (Nomad's `JobScaleRequest`): `Count`,
/// `Target{Group}`, `Message`, `Error`, `Meta`, `JobModifyIndex`. Every
/// request records a scaling event for the group; one with a count also
/// registers the job with the group's new count and evaluates it. An
/// `Error` event may carry no count.
pub(super) fn scale(server: &Arc<dyn Server>, key: &JobKey, body: &[u8]) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let request = match scale_request(&body, key) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let enforce_index = match opt_u64(&body, "JobModifyIndex") {
        Ok(i) => i.filter(|i| *i > 0),
        Err(e) => return e,
    };
    let mut eval_id = None;
    let mut job_modify_index = None;
    let _turn = enforce_index.map(|_| super::handlers::checked_write_turn());
    let result = server.write(&mut |state, ids, now| {
        if let (Some(want), Some(_), Some(job)) = (enforce_index, request.count, state.job(key))
            && job.job_modify_index != want
        {
            return Err(EndpointError::Refused(format!(
                "Enforcing job modify index {want}: job exists with conflicting job modify index: {}",
                job.job_modify_index
            )));
        }
        let command = endpoints::scale_job(state, key, &request, now, ids)?;
        if let Command::JobScale { job, eval, .. } = &command {
            eval_id = eval.as_ref().map(|e| e.id);
            // Without a count the job is not written: Nomad answers its
            // current modify index.
            job_modify_index = job.is_none().then(|| state.job(key).map(|j| j.modify_index)).flatten();
        }
        Ok(command)
    });
    match result {
        Ok(index) => reply(
            index,
            &json!({"EvalID": eval_id.map(|e| e.to_string()).unwrap_or_default(),
                    "EvalCreateIndex": if eval_id.is_some() { index } else { 0 },
                    "JobModifyIndex": job_modify_index.unwrap_or(index), "Warnings": "", "Index": index,
                    "LastContact": 0, "KnownLeader": true}),
        ),
        Err(e) => endpoint_error(e),
    }
}

/// A scale body's fields, each checked for its type (Nomad's
/// `JobScaleRequest.Validate` plus what Go's decoder refuses).
fn scale_request(body: &serde_json::Map<String, Value>, key: &JobKey) -> Result<endpoints::ScaleRequest, Response> {
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, m);
    let target = match body.get("Target") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => Some(t),
        Some(v) => return Err(bad(format!("Target must be an object of strings, got {v}"))),
    };
    let target_field = |name: &str| -> Result<Option<&str>, Response> {
        match target.and_then(|t| t.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
            Some(v) => Err(bad(format!("Target.{name} must be a string, got {v}"))),
        }
    };
    if let Some(job) = target_field("Job")?
        && *job != *key.id
    {
        return Err(bad(format!("job ID in payload ({job:?}) did not match URL ({:?})", key.id)));
    }
    if let Some(namespace) = target_field("Namespace")?
        && *namespace != *key.namespace
    {
        return Err(bad(format!("namespace in payload ({namespace:?}) did not match the request's")));
    }
    let Some(group) = target_field("Group")? else {
        return Err(bad("missing task group name for scaling action".into()));
    };
    let count = match body.get("Count") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(c) if c < 0 => return Err(bad("scaling action count can't be negative".into())),
            Some(c) => match u32::try_from(c) {
                Ok(c) => Some(c),
                Err(_) => return Err(bad(format!("scaling action count {c} is too large"))),
            },
            None => return Err(bad(format!("Count must be an integer, got {v}"))),
        },
    };
    let message: Arc<str> = match body.get("Message") {
        None | Some(Value::Null) => "".into(),
        Some(Value::String(m)) => m.as_str().into(),
        Some(m) => return Err(bad(format!("Message must be a string, got {m}"))),
    };
    let error = opt_bool(body, "Error")?.unwrap_or(false);
    let meta_json: Arc<str> = match body.get("Meta") {
        None | Some(Value::Null) => "".into(),
        Some(meta @ Value::Object(_)) => meta.to_string().into(),
        Some(v) => return Err(bad(format!("Meta must be an object, got {v}"))),
    };
    Ok(endpoints::ScaleRequest { group: group.into(), count, message, error, meta_json })
}

/// `GET /v1/job/<id>/scale`: Nomad's `JobScaleStatus`: per group the
/// desired count, the live allocations (canaries left out, as Nomad does)
/// placed, running, healthy and unhealthy in their deployment, and the
/// group's scaling events, newest first.
pub(super) fn scale_status(snap: &Snapshot, key: &JobKey, index: u64) -> Response {
    let Some(job) = snap.job(key) else { return refuse(StatusCode::NOT_FOUND, "job not found") };
    let events = snap.scaling_events(key);
    let mut groups: BTreeMap<String, Value> = BTreeMap::new();
    for g in &job.task_groups {
        let (mut placed, mut running, mut healthy, mut unhealthy) = (0u32, 0u32, 0u32, 0u32);
        for a in snap.allocs_by_job(key).filter(|a| a.group_name() == &*g.name) {
            if a.is_canary() || a.desired_status != DesiredStatus::Run || a.client_status.is_terminal() {
                continue;
            }
            placed += 1;
            running += u32::from(a.client_status == ClientStatus::Running);
            match a.deployment_healthy() {
                Some(true) => healthy += 1,
                Some(false) => unhealthy += 1,
                None => {}
            }
        }
        let group_events: Vec<Value> =
            events.map(|e| e.group(&g.name)).unwrap_or_default().iter().map(scaling_event_json).collect();
        groups.insert(
            g.name.to_string(),
            json!({"Desired": g.count, "Placed": placed, "Running": running, "Healthy": healthy,
                   "Unhealthy": unhealthy, "Events": group_events}),
        );
    }
    reply(
        index,
        &json!({"JobID": job.id.to_string(), "Namespace": job.namespace.to_string(),
                "JobCreateIndex": job.create_index, "JobModifyIndex": job.modify_index,
                "JobStopped": job.stop, "TaskGroups": groups}),
    )
}

/// Nomad's `ScalingEvent` JSON.
fn scaling_event_json(e: &ScalingEvent) -> Value {
    // The meta was a JSON object when recorded; anything else is dropped
    // rather than failing the whole read.
    let meta =
        if e.meta_json.is_empty() { Value::Null } else { serde_json::from_str(&e.meta_json).unwrap_or(Value::Null) };
    json!({"Time": e.time_ns, "Count": e.count, "PreviousCount": e.previous_count, "Message": &*e.message,
           "Error": e.error, "Meta": meta, "EvalID": e.eval_id.map(|id| id.to_string()), "CreateIndex": e.create_index})
}

/// `POST /v1/job/<id>/periodic/force`: launch a periodic job's child now
/// (Nomad's `Job.PeriodicForce`), whatever its schedule and
/// `prohibit_overlap` say. 404 for an unknown job, 400 for one that is not
/// periodic, or is stopped or disabled.
pub(super) fn periodic_force(server: &Arc<dyn Server>, key: &JobKey) -> Response {
    let mut launched = None;
    let result = server.write(&mut |state, ids, now| {
        let (command, child) = endpoints::periodic_launch(state, key, now, true, now, ids)?;
        if let Command::PeriodicLaunch { eval, .. } = &command {
            launched = Some((child, eval.id));
        }
        Ok(command)
    });
    match (result, launched) {
        (Ok(index), Some((_, eval_id))) => {
            reply(index, &json!({"EvalID": eval_id.to_string(), "EvalCreateIndex": index, "Index": index}))
        }
        (Ok(index), None) => {
            refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("periodic force committed at {index} without a launch"))
        }
        (Err(e), _) => endpoint_error(e),
    }
}

/// `POST /v1/job/<id>/dispatch`: `Payload` (base64), `Meta`. The body is
/// checked first; then the engine's `dispatch_job` checks it against the
/// parent's `parameterized` block and registers the child with its eval.
pub(super) fn dispatch(server: &Arc<dyn Server>, key: &JobKey, body: &[u8]) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let payload = match body.get("Payload") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => match api::base64::decode(text) {
            Some(bytes) => bytes,
            None => return refuse(StatusCode::BAD_REQUEST, "Payload must be base64 (standard alphabet, padded)"),
        },
        Some(v) => return refuse(StatusCode::BAD_REQUEST, format!("Payload must be a base64 string, got {v}")),
    };
    if payload.len() > endpoints::DISPATCH_PAYLOAD_BYTES_MAX {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("Payload exceeds maximum size; {} > {}", payload.len(), endpoints::DISPATCH_PAYLOAD_BYTES_MAX),
        );
    }
    let mut meta: BTreeMap<Arc<str>, Arc<str>> = BTreeMap::new();
    match body.get("Meta") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let Some(v) = v.as_str() else {
                    return refuse(StatusCode::BAD_REQUEST, format!("Meta[{k:?}] must be a string, got {v}"));
                };
                meta.insert(k.as_str().into(), v.into());
            }
        }
        Some(v) => return refuse(StatusCode::BAD_REQUEST, format!("Meta must be an object of strings, got {v}")),
    }
    let mut dispatched = None;
    let result = server.write(&mut |state, ids, now| {
        let (command, child) = endpoints::dispatch_job(state, key, payload.clone(), meta.clone(), now, ids)?;
        dispatched = Some((child, eval_of(&command)));
        Ok(command)
    });
    match (result, dispatched) {
        (Ok(index), Some((child, eval_id))) => reply(
            index,
            &json!({"DispatchedJobID": child.to_string(), "EvalID": eval_id.map(|e| e.to_string()).unwrap_or_default(),
                    "EvalCreateIndex": index, "JobCreateIndex": index, "Index": index}),
        ),
        (Ok(index), None) => {
            refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("dispatch committed at {index} without a job"))
        }
        (Err(e), _) => endpoint_error(e),
    }
}

/// `GET /v1/job/<id>/deployments` (newest first) and `/deployment` (the
/// latest, or null).
pub(super) fn job_deployments(snap: &Snapshot, key: &JobKey, index: u64, latest_only: bool) -> Response {
    if snap.job(key).is_none() {
        return refuse(StatusCode::NOT_FOUND, "job not found");
    }
    if latest_only {
        let body = snap.latest_deployment(key).map(|d| deployment_json(snap, d));
        return reply(index, &body);
    }
    let mut list: Vec<_> = snap.deployments().filter(|d| &d.job == key).collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.create_index));
    reply(index, &list.into_iter().map(|d| deployment_json(snap, d)).collect::<Vec<_>>())
}

pub(super) fn deployment_json(snap: &Snapshot, d: &caravan_engine::model::Deployment) -> api::read::Deployment {
    let job = snap.job_version(&d.job, d.job_version);
    api::deployment_to_api(d, job.as_deref(), snap.allocs_by_job(&d.job).map(|a| &**a))
}
