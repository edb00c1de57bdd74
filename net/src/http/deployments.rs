//! `/v1/deployments`, `/v1/deployment/<id>` (+ `allocations/<id>`) and the
//! deployment actions `fail`, `pause` (`Pause`: pause or resume) and
//! `promote` (`All`, `Groups`), as Nomad's `deployment_endpoint.go`.

// See handlers.rs: a refusal is returned as the response itself.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use caravan_engine::endpoints::{self, DeploymentAction};
use caravan_engine::fsm::Command;
use caravan_engine::ids::DeploymentId;
use caravan_engine::state::Table;
use serde_json::{Value, json};

use super::handlers::{Params, Shared, endpoint_error, namespace, read_snapshot, refuse, reply};
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

/// `POST/PUT /v1/deployment/fail/<id>`, `pause/<id>`, `promote/<id>`.
pub(super) async fn action(State(server): Shared, Path(rest): Path<String>, body: Bytes) -> Response {
    let Some((verb, id)) = rest.split_once('/') else {
        return refuse(StatusCode::NOT_FOUND, format!("unknown deployment action {rest:?}"));
    };
    if !matches!(verb, "fail" | "pause" | "promote") {
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
    let action = match verb {
        "fail" => DeploymentAction::Fail,
        "pause" => match opt_bool(&body, "Pause") {
            Ok(Some(true)) => DeploymentAction::Pause,
            Ok(Some(false)) => DeploymentAction::Resume,
            Ok(None) => return refuse(StatusCode::BAD_REQUEST, "Pause (a boolean) is required"),
            Err(e) => return e,
        },
        _ => {
            // Checked for their shape; Caravan has no canaries to promote.
            if let Err(e) = opt_bool(&body, "All") {
                return e;
            }
            match body.get("Groups") {
                None | Some(Value::Null) => {}
                Some(Value::Array(groups)) if groups.iter().all(Value::is_string) => {}
                Some(v) => {
                    return refuse(StatusCode::BAD_REQUEST, format!("Groups must be a list of strings, got {v}"));
                }
            }
            let snap = server.store().snapshot();
            return match endpoints::promote_deployment(&snap, id) {
                Ok(never) => match never {},
                Err(e) => endpoint_error(e),
            };
        }
    };
    let mut eval_id = None;
    let result = server.write(&mut |state, ids, now| {
        let command = endpoints::update_deployment(state, id, action, now, ids)?;
        if let Command::DeploymentStatusUpdate { evals, .. } = &command {
            eval_id = evals.first().map(|e| e.id);
        }
        Ok(command)
    });
    match result {
        Ok(index) => reply(
            index,
            &json!({"EvalID": eval_id.map(|e| e.to_string()).unwrap_or_default(), "EvalCreateIndex": index,
                    "DeploymentModifyIndex": index, "RevertedJobVersion": null, "Index": index}),
        ),
        Err(e) => endpoint_error(e),
    }
}
