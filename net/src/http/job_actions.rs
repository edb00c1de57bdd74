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
use caravan_engine::ids::{EvalId, IdGen, JobKey};
use caravan_engine::model::{ClientStatus, DesiredStatus};
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

/// `POST /v1/job/<id>/scale`: `Count`, `Target{Group}`, `Message`.
pub(super) fn scale(server: &Arc<dyn Server>, key: &JobKey, body: &[u8]) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let group = match body.get("Target").and_then(|t| t.get("Group")) {
        Some(Value::String(g)) if !g.is_empty() => g.clone(),
        Some(v) if !v.is_null() => {
            return refuse(StatusCode::BAD_REQUEST, format!("Target.Group must be a string, got {v}"));
        }
        _ => return refuse(StatusCode::BAD_REQUEST, "missing task group name for scaling action"),
    };
    if let Some(Value::String(job)) = body.get("Target").and_then(|t| t.get("Job"))
        && **job != *key.id
    {
        return refuse(StatusCode::BAD_REQUEST, format!("Target.Job {job:?} does not match the URL {:?}", key.id));
    }
    let count = match body.get("Count") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(c) if c < 0 => return refuse(StatusCode::BAD_REQUEST, "scaling action count can't be negative"),
            Some(c) => match u32::try_from(c) {
                Ok(c) => Some(c),
                Err(_) => return refuse(StatusCode::BAD_REQUEST, format!("scaling action count {c} is too large")),
            },
            None => return refuse(StatusCode::BAD_REQUEST, format!("Count must be an integer, got {v}")),
        },
    };
    if let Some(m) = body.get("Message")
        && !m.is_null()
        && !m.is_string()
    {
        return refuse(StatusCode::BAD_REQUEST, format!("Message must be a string, got {m}"));
    }
    // A scaling request without a count only validates the target: it
    // answers the current index and writes nothing.
    if count.is_none() {
        let snap = server.store().snapshot();
        return match endpoints::scale_job(&snap, key, &group, None, 0, &mut IdGen::with_seed(0)) {
            Ok(_) => register_reply(snap.index(), None),
            Err(e) => endpoint_error(e),
        };
    }
    let mut eval_id = None;
    let result = server.write(&mut |state, ids, now| {
        let command = endpoints::scale_job(state, key, &group, count, now, ids)?
            .ok_or_else(|| EndpointError::Refused("scaling action has no count".into()))?;
        eval_id = eval_of(&command);
        Ok(command)
    });
    match result {
        Ok(index) => register_reply(index, eval_id),
        Err(e) => endpoint_error(e),
    }
}

/// `GET /v1/job/<id>/scale`: Nomad's `JobScaleStatus`. Caravan keeps no
/// scaling events, so `Events` is always empty.
pub(super) fn scale_status(snap: &Snapshot, key: &JobKey, index: u64) -> Response {
    let Some(job) = snap.job(key) else { return refuse(StatusCode::NOT_FOUND, "job not found") };
    let mut groups: BTreeMap<String, Value> = BTreeMap::new();
    for g in &job.task_groups {
        let (mut placed, mut running, mut healthy, mut unhealthy) = (0u32, 0u32, 0u32, 0u32);
        for a in snap.allocs_by_job(key).filter(|a| a.group_name() == &*g.name) {
            if a.desired_status != DesiredStatus::Run || a.client_status.is_terminal() {
                if matches!(a.client_status, ClientStatus::Failed | ClientStatus::Lost) {
                    unhealthy += 1;
                }
                continue;
            }
            placed += 1;
            if a.client_status == ClientStatus::Running {
                running += 1;
                healthy += 1;
            }
        }
        groups.insert(
            g.name.to_string(),
            json!({"Desired": g.count, "Placed": placed, "Running": running, "Healthy": healthy,
                   "Unhealthy": unhealthy, "Events": Value::Array(vec![])}),
        );
    }
    reply(
        index,
        &json!({"JobID": job.id.to_string(), "Namespace": job.namespace.to_string(),
                "JobCreateIndex": job.create_index, "JobModifyIndex": job.job_modify_index,
                "JobStopped": job.stop, "TaskGroups": groups}),
    )
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
