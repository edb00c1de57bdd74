//! `/v1/client/fs/*` for allocations on other nodes: as Nomad, any agent
//! answers for any allocation. A request whose allocation this agent's
//! client does not hold is looked up in the server's state (its node and
//! the node's `HTTPAddr`) and sent on, once, to that node's agent over
//! HTTP/1.1; its answer (status, content type, body) streams back as it
//! comes, so a followed log is never buffered whole.
//!
//! Loops: a forwarded request carries [`FORWARDED_HEADER`]; an agent never
//! forwards such a request again, and answers 404 when its own client does
//! not hold the allocation. Failures name their reason: an unknown
//! allocation is 404; a node that is unknown, down, without an address or
//! unreachable is 502.
//!
//! The agents' HTTP API is plain HTTP (the agent does not serve `tls.http`
//! yet), so the hop is plain HTTP too. The client side is hyper's HTTP/1
//! connection on a compio socket (`cyper-core`'s adapter), one connection
//! per request, on the API's own runtime thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use caravan_engine::ids::AllocId;
use caravan_engine::model::NodeStatus;
use futures_util::StreamExt;

use super::client_fs::{LocalLogs, LocalLogsError};
use super::client_stats::LocalStats;
use super::handlers::refuse;
use super::server::Server;

/// Marks a request one agent forwarded to another; its value is the
/// forwarding agent's view of the target (for the target's logs).
pub const FORWARDED_HEADER: &str = "x-caravan-forwarded";
/// How long connecting to the node's agent may take: a live agent on a
/// reachable network accepts within milliseconds; past this it is reported
/// unreachable rather than holding the caller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node's agent may take to answer with its status line and
/// headers. Every `/v1/client/fs` handler answers before it streams (a
/// followed log sends its headers at once), so this bounds only a stuck peer.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Forwarded requests open at once: each holds a connection to another
/// agent for as long as its caller reads (a followed log: hours).
pub(super) const FORWARDS_MAX: usize = 256;

static OPEN_FORWARDS: AtomicUsize = AtomicUsize::new(0);

/// What the client fs routes serve from.
#[derive(Clone)]
pub(super) struct FsContext {
    /// The server's state, to find an allocation's node and to tell when a
    /// followed task is dead; `None` on a client-only agent.
    pub(super) server: Option<Arc<dyn Server>>,
    /// The files of the client running in this agent, if any.
    pub(super) logs: Option<Arc<dyn LocalLogs>>,
    /// The usage of the client running in this agent, if any.
    pub(super) stats: Option<Arc<dyn LocalStats>>,
}

/// Where a request for an allocation is served.
pub(super) enum Route {
    Local(Arc<dyn LocalLogs>),
    /// Another node's agent, at this HTTP address.
    Remote {
        node: String,
        http_addr: String,
    },
}

/// Why a request is refused, with its status.
pub(super) type Refusal = (StatusCode, String);

/// Decides where `alloc_id`'s files are: this agent's client, or the
/// agent of the node the servers placed it on. `Err` is the refusal.
pub(super) fn route(ctx: &FsContext, alloc_id: &str, headers: &HeaderMap) -> Result<Route, Refusal> {
    if let Some(logs) = &ctx.logs {
        match logs.alloc_dir(alloc_id) {
            Ok(_) => return Ok(Route::Local(Arc::clone(logs))),
            Err(LocalLogsError::UnknownAlloc(_) | LocalLogsError::UnknownTask { .. }) => {}
            Err(err @ LocalLogsError::Io(_)) => return Err((StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
        }
    }
    let (node, http_addr) = remote_route(ctx, ctx.logs.is_some(), alloc_id, headers)?;
    Ok(Route::Remote { node, http_addr })
}

/// The agent of the node the servers placed `alloc_id` on, for an
/// allocation this agent's client does not hold (`has_client`: whether this
/// agent runs one): `(node name, its HTTP address)`, or the refusal.
pub(super) fn remote_route(
    ctx: &FsContext,
    has_client: bool,
    alloc_id: &str,
    headers: &HeaderMap,
) -> Result<(String, String), Refusal> {
    if headers.contains_key(FORWARDED_HEADER) {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "allocation {alloc_id} is not on this agent's client, though another agent forwarded the request \
                 here (a forwarded request is not forwarded again)"
            ),
        ));
    }
    let Some(server) = &ctx.server else {
        return Err(match has_client {
            true => (
                StatusCode::NOT_FOUND,
                format!(
                    "allocation {alloc_id} is not on this client, and this client-only agent cannot look up \
                     other nodes' allocations: ask a server's HTTP API"
                ),
            ),
            false => super::client_fs::not_implemented(alloc_id),
        });
    };
    let unknown = || (StatusCode::NOT_FOUND, format!("unknown allocation {alloc_id:?}"));
    let Ok(id) = alloc_id.parse::<AllocId>() else { return Err(unknown()) };
    let snapshot = server.store().snapshot();
    let Some(alloc) = snapshot.alloc(id) else { return Err(unknown()) };
    let Some(node) = snapshot.node(alloc.node_id) else {
        return Err((
            StatusCode::BAD_GATEWAY,
            format!("allocation {alloc_id} is on node {}, which the servers no longer know", alloc.node_id),
        ));
    };
    let name = format!("{} ({})", node.id, node.name);
    if node.status == NodeStatus::Down {
        return Err((
            StatusCode::BAD_GATEWAY,
            format!("allocation {alloc_id} is on node {name}, which is down: its client cannot be reached"),
        ));
    }
    if node.http_addr.is_empty() {
        return Err((
            StatusCode::BAD_GATEWAY,
            format!("allocation {alloc_id} is on node {name}, which registered no HTTP address"),
        ));
    }
    Ok((name, node.http_addr.to_string()))
}

/// Sends the request (`uri`'s path and query, unchanged) to the node's
/// agent and streams its answer back.
pub(super) async fn forward(node: &str, http_addr: &str, uri: &Uri) -> Response {
    if OPEN_FORWARDS.fetch_add(1, Ordering::SeqCst) >= FORWARDS_MAX {
        OPEN_FORWARDS.fetch_sub(1, Ordering::SeqCst);
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests forwarded to other agents at once (at most {FORWARDS_MAX})"),
        );
    }
    let guard = ForwardGuard;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let addr = http_addr.to_string();
    // The exchange runs as a task of this thread's runtime (its socket is
    // bound to it); the handle is awaited here, and dropping it (the
    // caller went away) cancels the exchange.
    let exchange = compio::runtime::spawn(async move { exchange(&addr, &path).await });
    let upstream = match exchange.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(reason)) => {
            return refuse(StatusCode::BAD_GATEWAY, format!("cannot reach node {node} at {http_addr}: {reason}"));
        }
        Err(_) => return refuse(StatusCode::BAD_GATEWAY, format!("forwarding to node {node} failed")),
    };
    let (parts, body) = upstream.into_parts();
    // The guard lives as long as the body: a followed stream counts until
    // its caller stops reading.
    let stream = Body::new(body).into_data_stream().map(move |chunk| {
        let _held = &guard;
        chunk
    });
    let mut response = Body::from_stream(stream).into_response();
    *response.status_mut() = parts.status;
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
}

/// Counts one open forward until dropped.
struct ForwardGuard;

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        OPEN_FORWARDS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One GET over a fresh connection: the answer's head, its body still
/// streaming.
async fn exchange(addr: &str, path: &str) -> Result<axum::http::Response<hyper::body::Incoming>, String> {
    let socket = match compio::time::timeout(CONNECT_TIMEOUT, compio::net::TcpStream::connect(addr)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    };
    let io = cyper_core::HyperStream::new_plain(socket);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Body>(io).await.map_err(|err| err.to_string())?;
    // The connection runs until the answer's body has been read or
    // dropped; it ends with it.
    compio::runtime::spawn(async move {
        let _ = connection.await;
    })
    .detach();
    let request = Request::get(path)
        .header(header::HOST, HeaderValue::from_str(addr).map_err(|err| err.to_string())?)
        .header(FORWARDED_HEADER, HeaderValue::from_static("1"))
        .body(Body::empty())
        .map_err(|err| err.to_string())?;
    match compio::time::timeout(RESPONSE_HEAD_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {RESPONSE_HEAD_TIMEOUT:?}")),
    }
}
