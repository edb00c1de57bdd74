//! The HTTP `/v1` API: axum routes on the compio runtime, speaking Nomad's
//! JSON (see [`crate::api`]), with Nomad's blocking queries
//! (`?index=N&wait=5s`) and index headers (`X-Nomad-Index`,
//! `X-Nomad-KnownLeader`, `X-Nomad-LastContact`).
//!
//! The routes reach the server through [`Server`]: the in-process cluster
//! implements it today; the raft-replicated server will too.

mod alloc_files;
mod blocking;
mod client_fs;
mod client_stats;
mod consistency;
mod deployments;
mod events;
mod fs_forward;
mod fs_stream;
mod handlers;
mod job_actions;
mod server;
mod writes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use client_fs::{LocalLogs, LocalLogsError, LogFile, LogType};
pub use client_stats::{AllocStats, DeviceGroupStats, DeviceStats, HostMemoryStats, HostStats, LocalStats, StatValue};
pub use fs_forward::FORWARDED_HEADER;
pub use server::{LeaderContact, LocalServer, RaftServerInfo, Server, WriteBuilder, engine_gauges};

/// What an agent adds to its API beyond the server's state.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// The files of the client running in this agent, for
    /// `/v1/client/fs/*`; `None` on a server alone.
    pub local_logs: Option<Arc<dyn LocalLogs>>,
    /// The usage of the client running in this agent, for
    /// `/v1/client/stats` and `/v1/client/allocation/<id>/stats`; `None` on
    /// a server alone.
    pub local_stats: Option<Arc<dyn LocalStats>>,
}

/// The router for every implemented `/v1` endpoint.
pub fn router(server: Arc<dyn Server>) -> Router {
    router_with(server, ApiOptions::default())
}

/// [`router`], with the client endpoints `options` enable.
pub fn router_with(server: Arc<dyn Server>, options: ApiOptions) -> Router {
    server_routes(Arc::clone(&server)).merge(client_fs::router(Some(server), options))
}

/// The API of a client-only agent: its client's `/v1/client/fs/*` and
/// `/v1/client/stats`, `/v1/client/allocation/<id>/stats` (which
/// it cannot forward: it has no state to find other nodes in); anything
/// else is refused with a pointer to the servers.
pub fn client_router(options: ApiOptions) -> Router {
    client_fs::router(None, options).fallback(handlers::client_only)
}

fn server_routes(server: Arc<dyn Server>) -> Router {
    Router::new()
        .route("/v1/jobs", get(handlers::list_jobs).put(handlers::register_job).post(handlers::register_job))
        .route("/v1/jobs/parse", axum::routing::put(writes::parse_job).post(writes::parse_job))
        .route(
            "/v1/job/{*rest}",
            get(handlers::read_job).delete(handlers::deregister_job).post(writes::job_post).put(writes::job_post),
        )
        .route("/v1/evaluations", get(handlers::list_evals))
        .route("/v1/evaluation/{*rest}", get(handlers::read_eval))
        .route("/v1/allocations", get(handlers::list_allocs))
        .route("/v1/allocation/{*rest}", get(handlers::read_alloc).post(writes::alloc_post).put(writes::alloc_post))
        .route("/v1/nodes", get(handlers::list_nodes))
        .route("/v1/node/{*rest}", get(handlers::read_node).post(writes::node_post).put(writes::node_post))
        .route("/v1/deployments", get(deployments::list))
        .route("/v1/deployment/{*rest}", get(deployments::read).post(deployments::action).put(deployments::action))
        .route("/v1/regions", get(writes::regions))
        .route("/v1/metrics", get(writes::metrics))
        .route("/v1/event/stream", get(events::stream))
        .route(
            "/v1/operator/scheduler/configuration",
            get(writes::scheduler_config).put(writes::set_scheduler_config).post(writes::set_scheduler_config),
        )
        .route("/v1/status/leader", get(handlers::status_leader))
        .route("/v1/status/peers", get(handlers::status_peers))
        .route("/v1/operator/raft/configuration", get(handlers::raft_configuration))
        .route("/v1/agent/health", get(handlers::agent_health))
        .route("/v1/agent/self", get(handlers::agent_self))
        .route("/v1/agent/members", get(handlers::agent_members))
        .route("/v1/agent/servers", get(handlers::agent_servers))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(server.clone(), consistency::consistent_reads))
        .layer(DefaultBodyLimit::max(crate::api::BODY_BYTES_MAX))
        .with_state(server)
}

/// Serve the API on `addr` until the process ends. Runs on the calling
/// thread's compio runtime.
pub async fn serve(addr: SocketAddr, server: Arc<dyn Server>) -> std::io::Result<()> {
    let listener = compio::net::TcpListener::bind(addr).await?;
    cyper_axum::serve(listener, router(server)).await
}

/// Start the API on its own thread with its own compio runtime, returning
/// the address it listens on (port 0 picks a free one).
pub fn spawn(addr: SocketAddr, server: Arc<dyn Server>) -> std::io::Result<SocketAddr> {
    spawn_with(addr, server, ApiOptions::default())
}

/// [`spawn`], with the client endpoints `options` enable.
pub fn spawn_with(addr: SocketAddr, server: Arc<dyn Server>, options: ApiOptions) -> std::io::Result<SocketAddr> {
    spawn_router(addr, router_with(server, options))
}

/// A client-only agent's API ([`client_router`]) on its own thread.
pub fn spawn_client(addr: SocketAddr, options: ApiOptions) -> std::io::Result<SocketAddr> {
    spawn_router(addr, client_router(options))
}

fn spawn_router(addr: SocketAddr, router: Router) -> std::io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("http".into()).spawn(move || {
        let runtime = match crate::runtime::server_runtime() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            match compio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let _ = tx.send(listener.local_addr());
                    if let Err(e) = cyper_axum::serve(listener, router).await {
                        eprintln!("http server stopped: {e}");
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    })?;
    rx.recv().map_err(|_| std::io::Error::other("http thread exited before binding"))?
}
