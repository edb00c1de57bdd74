//! One function per endpoint. Reads take a snapshot (waiting first for
//! blocking queries) and render Nomad's JSON; writes decode, validate and go
//! through the server. Every refusal is a 4xx with a text body saying why.

// Helpers return `Err(Response)` to let a handler bail out with the refusal
// itself; it is built at most once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caravan_engine::endpoints::EndpointError;
use caravan_engine::ids::{AllocId, EvalId, JobKey, NodeId};
use caravan_engine::state::{Snapshot, Table};
use serde::Serialize;
use serde_json::{Value, json};

use super::blocking::Blocking;
use super::server::Server;
use crate::api;

pub(super) type Shared = State<Arc<dyn Server>>;
pub(super) type Params = Query<HashMap<String, String>>;

/// A JSON body with Nomad's index header.
pub(super) fn reply<T: Serialize>(index: u64, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut r = (StatusCode::OK, bytes).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // X-Nomad-KnownLeader and -LastContact: see `consistency`.
            h.insert("X-Nomad-Index", HeaderValue::from(index.max(1)));
            r
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding response: {e}")),
    }
}

pub(super) fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

pub(super) fn endpoint_error(e: EndpointError) -> Response {
    match e {
        EndpointError::Invalid(v) => refuse(StatusCode::BAD_REQUEST, v.to_string()),
        EndpointError::JobNotFound(k) => refuse(StatusCode::NOT_FOUND, format!("job not found: {}", k.id)),
        EndpointError::NodeNotFound(n) => refuse(StatusCode::NOT_FOUND, format!("node not found: {n}")),
        EndpointError::AllocNotFound(a) => refuse(StatusCode::NOT_FOUND, format!("alloc not found: {a}")),
        EndpointError::DeploymentNotFound(d) => refuse(StatusCode::NOT_FOUND, format!("deployment not found: {d}")),
        EndpointError::JobVersionNotFound(k, v) => {
            refuse(StatusCode::NOT_FOUND, format!("job {:?} at version {v} not found", k.id))
        }
        EndpointError::Refused(reason) => refuse(StatusCode::BAD_REQUEST, reason),
        EndpointError::Apply(a) => refuse(StatusCode::INTERNAL_SERVER_ERROR, a.to_string()),
        // Nomad answers 500 "No cluster leader"; 503 says the same and
        // tells clients to retry.
        EndpointError::Commit(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Take the snapshot a read answers from, honouring `?index=&wait=`.
pub(super) async fn read_snapshot(
    server: &Arc<dyn Server>,
    params: &HashMap<String, String>,
    tables: &'static [Table],
) -> Result<(Snapshot, u64), Response> {
    let blocking = Blocking::from_query(params).map_err(|m| refuse(StatusCode::BAD_REQUEST, m))?;
    let snap = blocking.snapshot(server.store(), tables).await;
    let index = tables.iter().map(|t| snap.table_index(*t)).max().unwrap_or(0);
    Ok((snap, index))
}

pub(super) fn namespace(params: &HashMap<String, String>) -> &str {
    params.get("namespace").map(String::as_str).filter(|n| !n.is_empty()).unwrap_or("default")
}

/// Go's `strconv.ParseBool` truths, which Nomad's query flags accept.
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn parse_id<T: FromStr>(text: &str, what: &str) -> Result<T, Response> {
    text.parse().map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("invalid {what} id {text:?}")))
}

pub(super) async fn list_jobs(State(server): Shared, Query(params): Params) -> Response {
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Jobs, Table::Allocs]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let ns = namespace(&params);
    let queued = BTreeMap::new();
    let stubs: Vec<_> = snap
        .jobs()
        .filter(|j| (ns == "*" || &*j.namespace == ns) && j.id.starts_with(prefix))
        .map(|j| {
            let mut summary = api::job_summary(j, snap.allocs_by_job(&j.key()).map(|a| &**a), &queued);
            summary.children = api::children_summary(&snap, j);
            api::job_stub(j, Some(summary))
        })
        .collect();
    reply(index, &stubs)
}

/// Run a write's handler on compio's blocking pool. A write waits for its
/// raft commit (a log fsync on one server; on three, a round trip to a
/// follower and its fsync as well): on the API's one thread that held every
/// other request, reads included, so concurrent job registrations were
/// committed one after another instead of together.
pub(super) async fn off_thread(handler: impl FnOnce() -> Response + Send + 'static) -> Response {
    compio::runtime::spawn_blocking(handler)
        .await
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "the request's handler failed"))
}

/// Writes whose builder checks an index the caller sent (`?cas=`, a
/// scale's `JobModifyIndex`) take turns, so that on this server the check
/// and the commit stay one step, as when every write ran on the API thread.
pub(super) fn checked_write_turn() -> std::sync::MutexGuard<'static, ()> {
    static CHECKED_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CHECKED_WRITES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) async fn register_job(server: Shared, body: Bytes) -> Response {
    off_thread(move || register_job_now(server, body)).await
}

pub(super) fn register_job_now(State(server): Shared, body: Bytes) -> Response {
    let job = match api::decode_job_request(&body) {
        Ok(job) => job,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match server.register_job(job) {
        Ok((eval_id, index)) => reply(
            index,
            // A parameterized or periodic job registers without an eval: "" as Nomad.
            &json!({"EvalID": if eval_id.is_nil() { String::new() } else { eval_id.to_string() }, "EvalCreateIndex": index, "JobModifyIndex": index, "Warnings": "", "Index": index, "LastContact": 0, "KnownLeader": true}),
        ),
        Err(e) => endpoint_error(e),
    }
}

/// Job ids may contain `/` (dispatched children), so sub-resources are
/// recognised by suffix, as Nomad does.
const JOB_SUFFIXES: [&str; 7] =
    ["/allocations", "/evaluations", "/summary", "/versions", "/deployments", "/deployment", "/scale"];

fn split_job_path(rest: &str) -> (&str, &str) {
    for suffix in JOB_SUFFIXES {
        if let Some(id) = rest.strip_suffix(suffix) {
            return (id, suffix);
        }
    }
    (rest, "")
}

pub(super) async fn read_job(State(server): Shared, Path(rest): Path<String>, Query(params): Params) -> Response {
    let (id, what) = split_job_path(&rest);
    let key = JobKey::new(namespace(&params), id);
    let tables: &'static [Table] = match what {
        "/allocations" => &[Table::Allocs],
        "/evaluations" => &[Table::Evals],
        "/summary" | "/scale" => &[Table::Jobs, Table::Allocs],
        "/deployments" | "/deployment" => &[Table::Deployments, Table::Allocs],
        _ => &[Table::Jobs],
    };
    let (snap, index) = match read_snapshot(&server, &params, tables).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(job) = snap.job(&key) else { return refuse(StatusCode::NOT_FOUND, "job not found") };
    match what {
        "/allocations" => {
            let allocs: Vec<_> =
                snap.allocs_by_job(&key).map(|a| api::alloc_stub(a, snap.node(a.node_id).map(|n| &**n))).collect();
            reply(index, &allocs)
        }
        "/evaluations" => {
            let mut evals: Vec<_> = snap.evals_by_job(&key).collect();
            evals.sort_by_key(|e| std::cmp::Reverse(e.create_index));
            reply(index, &evals.into_iter().map(|e| api::eval_to_api(e)).collect::<Vec<_>>())
        }
        "/summary" => {
            let mut summary = api::job_summary(job, snap.allocs_by_job(&key).map(|a| &**a), &BTreeMap::new());
            summary.children = api::children_summary(&snap, job);
            reply(index, &summary)
        }
        "/deployments" => super::job_actions::job_deployments(&snap, &key, index, false),
        "/deployment" => super::job_actions::job_deployments(&snap, &key, index, true),
        "/scale" => super::job_actions::scale_status(&snap, &key, index),
        "/versions" => {
            let versions: Vec<_> = snap.job_versions(&key).iter().map(|j| api::job_to_api(j)).collect();
            reply(index, &json!({"Versions": versions, "Diffs": null}))
        }
        _ => reply(index, &api::job_to_api(job)),
    }
}

pub(super) async fn deregister_job(server: Shared, path: Path<String>, params: Params) -> Response {
    off_thread(move || deregister_job_now(server, path, params)).await
}

fn deregister_job_now(State(server): Shared, Path(rest): Path<String>, Query(params): Params) -> Response {
    let key = JobKey::new(namespace(&params), &rest);
    let purge = params.get("purge").is_some_and(|v| parse_bool(v));
    match server.deregister_job(&key, purge) {
        Ok((eval_id, index)) => reply(
            index,
            &json!({"EvalID": eval_id.to_string(), "EvalCreateIndex": index, "JobModifyIndex": index, "Index": index, "LastContact": 0, "KnownLeader": true}),
        ),
        Err(e) => endpoint_error(e),
    }
}

pub(super) async fn list_evals(State(server): Shared, Query(params): Params) -> Response {
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Evals]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let mut evals: Vec<_> = snap.evals().filter(|e| e.id.to_string().starts_with(prefix)).collect();
    evals.sort_by_key(|e| std::cmp::Reverse(e.create_index));
    reply(index, &evals.into_iter().map(|e| api::eval_to_api(e)).collect::<Vec<_>>())
}

pub(super) async fn read_eval(State(server): Shared, Path(rest): Path<String>, Query(params): Params) -> Response {
    let (id, allocations) = match rest.strip_suffix("/allocations") {
        Some(id) => (id, true),
        None => (rest.as_str(), false),
    };
    let id: EvalId = match parse_id(id, "evaluation") {
        Ok(id) => id,
        Err(e) => return e,
    };
    let tables: &'static [Table] = if allocations { &[Table::Allocs] } else { &[Table::Evals] };
    let (snap, index) = match read_snapshot(&server, &params, tables).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(eval) = snap.eval(id) else { return refuse(StatusCode::NOT_FOUND, "eval not found") };
    if allocations {
        let allocs: Vec<_> = snap
            .allocs_by_job(&eval.job_key())
            .filter(|a| a.eval_id == id)
            .map(|a| api::alloc_stub(a, snap.node(a.node_id).map(|n| &**n)))
            .collect();
        return reply(index, &allocs);
    }
    reply(index, &api::eval_to_api(eval))
}

pub(super) async fn list_allocs(State(server): Shared, Query(params): Params) -> Response {
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Allocs]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let mut allocs: Vec<_> = snap.allocs().filter(|a| a.id.to_string().starts_with(prefix)).collect();
    allocs.sort_by_key(|a| (std::cmp::Reverse(a.create_index), a.id));
    let stubs: Vec<_> = allocs.into_iter().map(|a| api::alloc_stub(a, snap.node(a.node_id).map(|n| &**n))).collect();
    reply(index, &stubs)
}

pub(super) async fn read_alloc(State(server): Shared, Path(id): Path<String>, Query(params): Params) -> Response {
    let id: AllocId = match parse_id(&id, "allocation") {
        Ok(id) => id,
        Err(e) => return e,
    };
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Allocs]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    match snap.alloc(id) {
        Some(a) => reply(index, &api::alloc_to_api(a, snap.node(a.node_id).map(|n| &**n))),
        None => refuse(StatusCode::NOT_FOUND, "alloc not found"),
    }
}

pub(super) async fn list_nodes(State(server): Shared, Query(params): Params) -> Response {
    let (snap, index) = match read_snapshot(&server, &params, &[Table::Nodes]).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    let stubs: Vec<_> =
        snap.nodes().filter(|n| n.id.to_string().starts_with(prefix)).map(|n| api::node_stub(n)).collect();
    reply(index, &stubs)
}

pub(super) async fn read_node(State(server): Shared, Path(rest): Path<String>, Query(params): Params) -> Response {
    let (id, allocations) = match rest.strip_suffix("/allocations") {
        Some(id) => (id, true),
        None => (rest.as_str(), false),
    };
    let id: NodeId = match parse_id(id, "node") {
        Ok(id) => id,
        Err(e) => return e,
    };
    let tables: &'static [Table] = if allocations { &[Table::Allocs] } else { &[Table::Nodes] };
    let (snap, index) = match read_snapshot(&server, &params, tables).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(node) = snap.node(id) else { return refuse(StatusCode::NOT_FOUND, "node not found") };
    if allocations {
        let allocs: Vec<_> = snap.allocs_by_node(id).map(|a| api::alloc_to_api(a, Some(node))).collect();
        return reply(index, &allocs);
    }
    reply(index, &api::node_to_api(node))
}

pub(super) async fn status_leader(State(server): Shared) -> Response {
    reply(server.store().latest_index(), &server.leader_addr())
}

pub(super) async fn status_peers(State(server): Shared) -> Response {
    reply(server.store().latest_index(), &server.peers())
}

/// Nomad's `/v1/operator/raft/configuration`.
pub(super) async fn raft_configuration(State(server): Shared) -> Response {
    let index = server.store().latest_index();
    let servers: Vec<_> = server
        .raft_servers()
        .into_iter()
        .map(|s| {
            json!({"ID": s.id, "Node": s.node, "Address": s.address, "Leader": s.leader, "Voter": s.voter, "RaftProtocol": "3"})
        })
        .collect();
    reply(index, &json!({"Index": index, "Servers": servers}))
}

pub(super) async fn agent_health(State(server): Shared) -> Response {
    reply(server.store().latest_index(), &json!({"server": {"ok": true, "message": "ok"}}))
}

pub(super) async fn agent_self(State(server): Shared) -> Response {
    let body = json!({
        "config": {"Version": {"Version": env!("CARGO_PKG_VERSION")}, "Server": {"Enabled": true}, "Region": "global", "Datacenter": "dc1"},
        "member": {"Name": "caravan-dev", "Addr": server.leader_addr(), "Tags": {"role": "nomad", "region": "global"}, "Status": "alive"},
        "stats": {"raft": {"last_log_index": server.store().latest_index().to_string()}},
    });
    reply(server.store().latest_index(), &body)
}

/// Nomad's `/v1/agent/members` (`ServerMembers`): the servers, from the
/// raft configuration (Caravan has no gossip pool; every voter or
/// non-voter of the configuration is a member, and `alive` while it is
/// in it).
pub(super) async fn agent_members(State(server): Shared) -> Response {
    let members: Vec<Value> = server
        .raft_servers()
        .into_iter()
        .map(|s| {
            let (addr, port) = match s.address.rsplit_once(':') {
                Some((host, port)) => {
                    (host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse::<u16>().unwrap_or(0))
                }
                None => (s.address.clone(), 0),
            };
            json!({"Name": format!("{}.global", s.node), "Addr": addr, "Port": port, "Status": "alive",
                   "Tags": {"role": "nomad", "region": "global", "dc": "dc1", "id": s.id, "port": port.to_string(),
                            "build": env!("CARGO_PKG_VERSION"), "vsn": "1", "raft_vsn": "3",
                            "leader": s.leader.to_string(), "voter": s.voter.to_string()},
                   "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                   "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4})
        })
        .collect();
    let name = members.first().and_then(|m| m["Name"].as_str()).unwrap_or("").to_string();
    reply(
        server.store().latest_index(),
        &json!({"ServerName": name, "ServerRegion": "global", "ServerDC": "dc1", "Members": members}),
    )
}

/// Nomad's `GET /v1/agent/servers`: the servers' RPC addresses.
pub(super) async fn agent_servers(State(server): Shared) -> Response {
    reply(server.store().latest_index(), &server.peers())
}

/// A known path asked with a method it does not take: 405 with the reason
/// (axum's own answer has no body).
pub(super) async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    refuse(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} not allowed on {}", uri.path()))
}

pub(super) async fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "Invalid URL path")
}

/// Anything but `/v1/client/fs/*` on a client-only agent.
pub(super) async fn client_only() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "this agent runs only a client: it serves /v1/client/fs/* for its own allocations; \
         ask a server's HTTP API for the rest",
    )
}
