//! Nomad's read consistency modes. A read of cluster state without
//! `?stale` first catches this server up with the leader
//! ([`Server::sync_with_leader`]), so a follower answers as the leader
//! would; `?stale` answers from this server's state as it is, and works
//! without a leader. Every response says what the server knows of its
//! leader (`X-Nomad-KnownLeader`, `X-Nomad-LastContact` in milliseconds).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::handlers::refuse;
use super::server::Server;

/// The middleware for the server routes.
pub(super) async fn consistent_reads(State(server): State<Arc<dyn Server>>, request: Request, next: Next) -> Response {
    if reads_cluster_state(request.method(), request.uri().path()) {
        match allows_stale(request.uri().query().unwrap_or("")) {
            Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
            Ok(true) => {}
            Ok(false) if server.is_leader() => {}
            Ok(false) => {
                let syncing = server.clone();
                match compio::runtime::spawn_blocking(move || syncing.sync_with_leader()).await {
                    Ok(Ok(())) => {}
                    // Nomad answers 500 "No cluster leader" here.
                    Ok(Err(reason)) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, reason),
                    Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "catching up with the leader failed"),
                }
            }
        }
    }
    let mut response = next.run(request).await;
    let contact = server.leader_contact();
    let headers = response.headers_mut();
    headers
        .insert("X-Nomad-KnownLeader", HeaderValue::from_static(if contact.known_leader { "true" } else { "false" }));
    let last_contact_ms = contact.last_contact.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    headers.insert("X-Nomad-LastContact", HeaderValue::from(last_contact_ms));
    response
}

/// Reads of the replicated state: what Nomad forwards to the leader unless
/// stale. Agent, status and metrics reads are about this server itself;
/// the event stream follows this server's commits. A job plan is a dry run
/// against the state, so it is a read too.
fn reads_cluster_state(method: &Method, path: &str) -> bool {
    const STATE_PATHS: [&str; 6] =
        ["/v1/job", "/v1/evaluation", "/v1/allocation", "/v1/node", "/v1/deployment", "/v1/operator/scheduler/"];
    if method == Method::GET {
        STATE_PATHS.iter().any(|p| path.starts_with(p))
    } else {
        method == Method::POST && path.starts_with("/v1/job/") && path.ends_with("/plan")
    }
}

/// `?stale` as Nomad parses it: present without a value, or a Go boolean;
/// `?consistent` asks for the default.
fn allows_stale(query: &str) -> Result<bool, String> {
    let mut stale = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "stale" => {
                stale = match value {
                    "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                    _ => return Err("Expect `true` or `false` for `stale` query string parameter".into()),
                }
            }
            "consistent" => return Ok(false),
            _ => {}
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_is_parsed_as_nomad_parses_it() {
        assert_eq!(allows_stale(""), Ok(false));
        assert_eq!(allows_stale("stale"), Ok(true));
        assert_eq!(allows_stale("index=3&stale="), Ok(true));
        assert_eq!(allows_stale("stale=true"), Ok(true));
        assert_eq!(allows_stale("stale=false"), Ok(false));
        assert_eq!(allows_stale("stale&consistent"), Ok(false));
        assert!(allows_stale("stale=maybe").is_err());
    }

    #[test]
    fn only_state_reads_wait_for_the_leader() {
        assert!(reads_cluster_state(&Method::GET, "/v1/jobs"));
        assert!(reads_cluster_state(&Method::GET, "/v1/node/abc/allocations"));
        assert!(reads_cluster_state(&Method::POST, "/v1/job/web/plan"));
        assert!(!reads_cluster_state(&Method::POST, "/v1/job/web"));
        assert!(!reads_cluster_state(&Method::GET, "/v1/agent/self"));
        assert!(!reads_cluster_state(&Method::GET, "/v1/status/leader"));
        assert!(!reads_cluster_state(&Method::GET, "/v1/event/stream"));
    }
}
