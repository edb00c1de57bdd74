//! `/v1/deployments`, `/v1/deployment/<id>` (+ `allocations/<id>`) and the
//! deployment actions `fail`, `pause` (`Pause`: pause or resume) and
//! `promote` (`All`, `Groups`), and `allocation-health`
//! (`HealthyAllocationIDs`, `UnhealthyAllocationIDs`: an operator's
//! decision, for `health_check = "manual"`), as Nomad's
//! `deployment_endpoint.go`.

// See handlers.rs: a refusal is returned as the response itself.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use caravan_engine::endpoints::{self, DeploymentAction};
use caravan_engine::fsm::Command;
use caravan_engine::ids::{AllocId, DeploymentId};
use caravan_engine::state::Table;
use serde_json::{Value, json};

use super::handlers::{Params, Shared, endpoint_error, namespace, off_thread, read_snapshot, refuse, reply};
use super::job_actions::{body_object, deployment_json, opt_bool};
use crate::api;

fn parse_deployment_id(text: &str) -> Result<DeploymentId, Response> {
    text.parse().map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("invalid deployment id {text:?}")))
}

/// `GET /v1/deployments`: newest first, `prefix` on the id, `namespace`.
pub(super) async fn list(State(server): Shared, Query(params): Params) -> Response {
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Deployments, Table::Allocs]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let ns = namespace(&params);
    let mut list: Vec<_> = snap
        .deployments()
        .filter(|d| (ns == "*" || &*d.job.namespace == ns) && d.id.to_string().starts_with(prefix))
        .collect();
    list.sort_by_key(|d| (std::cmp::Reverse(d.create_index), d.id));
    reply(index, &list.into_iter().map(|d| deployment_json(&snap, d)).collect::<Vec<_>>())
}

/// `GET /v1/deployment/<id>` and `/v1/deployment/allocations/<id>`.
pub(super) async fn read(State(server): Shared, Path(rest): Path<String>, Query(params): Params) -> Response {
    let (id, allocations) = match rest.strip_prefix("allocations/") {
        Some(id) => (id, true),
        None => (rest.as_str(), false),
    };
    let id = match parse_deployment_id(id) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Deployments, Table::Allocs]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(d) = snap.deployment(id) else { return refuse(StatusCode::NOT_FOUND, "deployment not found") };
    if allocations {
        let allocs: Vec<_> = snap
            .allocs_by_job(&d.job)
            .filter(|a| a.deployment_id == Some(id))
            .map(|a| api::alloc_stub(a, snap.node(a.node_id).map(|n| &**n)))
            .collect();
        return reply(index, &allocs);
    }
    reply(index, &deployment_json(&snap, d))
}

/// `POST/PUT /v1/deployment/fail/<id>`, `pause/<id>`, `promote/<id>`,
/// `allocation-health/<id>`.
pub(super) async fn action(server: Shared, path: Path<String>, body: Bytes) -> Response {
    off_thread(move || action_now(server, path, body)).await
}

fn action_now(State(server): Shared, Path(rest): Path<String>, body: Bytes) -> Response {
    let Some((verb, id)) = rest.split_once('/') else {
        return refuse(StatusCode::NOT_FOUND, format!("unknown deployment action {rest:?}"));
    };
    if !matches!(verb, "fail" | "pause" | "promote" | "allocation-health") {
        return refuse(StatusCode::NOT_FOUND, format!("unknown deployment action {verb:?}"));
    }
    let id = match parse_deployment_id(id) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let body = match body_object(&body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    if verb == "allocation-health" {
        let (healthy, unhealthy) =
            match (alloc_ids(&body, "HealthyAllocationIDs"), alloc_ids(&body, "UnhealthyAllocationIDs")) {
                (Ok(h), Ok(u)) => (h, u),
                (Err(e), _) | (_, Err(e)) => return e,
            };
        return commit_action(&server, &mut |state, ids, now| {
            endpoints::set_alloc_health(state, id, healthy.clone(), unhealthy.clone(), now, ids)
        });
    }
    let action = match verb {
        "fail" => DeploymentAction::Fail,
        "pause" => match opt_bool(&body, "Pause") {
            Ok(Some(true)) => DeploymentAction::Pause,
            Ok(Some(false)) => DeploymentAction::Resume,
            Ok(None) => return refuse(StatusCode::BAD_REQUEST, "Pause (a boolean) is required"),
            Err(e) => return e,
        },
        _ => {
            // `All` promotes every group with canaries; else `Groups` names them.
            let all = match opt_bool(&body, "All") {
                Ok(all) => all.unwrap_or(false),
                Err(e) => return e,
            };
            let groups: Vec<std::sync::Arc<str>> = match body.get("Groups") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(groups)) if groups.iter().all(Value::is_string) => {
                    groups.iter().filter_map(Value::as_str).map(std::sync::Arc::from).collect()
                }
                Some(v) => {
                    return refuse(StatusCode::BAD_REQUEST, format!("Groups must be a list of strings, got {v}"));
                }
            };
            if !all && groups.is_empty() {
                return refuse(StatusCode::BAD_REQUEST, "promote needs All = true or a list of Groups");
            }
            let groups = if all { Vec::new() } else { groups };
            return commit_action(&server, &mut |state, ids, now| {
                endpoints::promote_deployment(state, id, groups.clone(), now, ids)
            });
        }
    };
    commit_action(&server, &mut |state, ids, now| endpoints::update_deployment(state, id, action, now, ids))
}

/// A list of full allocation ids (absent or null: none).
fn alloc_ids(body: &serde_json::Map<String, Value>, field: &str) -> Result<Vec<AllocId>, Response> {
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, m);
    // Go decodes field names case-insensitively, and clients rely on it
    // (python-nomad sends `UnHealthyAllocationIDs`).
    let value = body.get(field).or_else(|| body.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v));
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => return Err(bad(format!("{field} must be a list of allocation IDs, got {v}"))),
    };
    if items.len() > endpoints::ALLOC_HEALTH_IDS_MAX {
        return Err(bad(format!(
            "{field} lists {} allocations, at most {}",
            items.len(),
            endpoints::ALLOC_HEALTH_IDS_MAX
        )));
    }
    items
        .iter()
        .map(|v| match v.as_str().map(str::parse::<AllocId>) {
            Some(Ok(id)) => Ok(id),
            _ => Err(bad(format!("{field} must list full allocation IDs, got {v}"))),
        })
        .collect()
}

/// Commit a deployment action; answers with its eval as Nomad's
/// `DeploymentUpdateResponse`, `RevertedJobVersion` set by a rollback.
fn commit_action(server: &std::sync::Arc<dyn super::Server>, build: &mut super::server::WriteBuilder<'_>) -> Response {
    let mut eval_id = None;
    let mut reverted: Option<u64> = None;
    let result = server.write(&mut |state, ids, now| {
        let command = build(state, ids, now)?;
        match &command {
            Command::DeploymentStatusUpdate { evals, job, .. } => {
                eval_id = evals.first().map(|e| e.id);
                // The rollback registers the stable version's spec again.
                reverted = job.as_ref().and_then(|j| {
                    state.job_versions(&j.key()).into_iter().find(|v| v.stable && !v.spec_changed(j)).map(|v| v.version)
                });
            }
            Command::DeploymentPromote { evals, .. } | Command::DeploymentAllocHealth { evals, .. } => {
                eval_id = evals.first().map(|e| e.id)
            }
            _ => {}
        }
        Ok(command)
    });
    match result {
        Ok(index) => reply(
            index,
            &json!({"EvalID": eval_id.map(|e| e.to_string()).unwrap_or_default(), "EvalCreateIndex": index,
                    "DeploymentModifyIndex": index, "RevertedJobVersion": reverted, "Index": index}),
        ),
        Err(e) => endpoint_error(e),
    }
}
