//! [`ServerClient`]: the client agent's blocking handle on the servers'
//! client RPC (see `client_rpc.rs` for the methods), for plain OS threads.
//!
//! It keeps a list of server RPC addresses and a current one. A call that
//! cannot reach its server, times out, or finds the server overloaded or
//! without a leader is retried on the next server after a bounded,
//! doubling backoff; a `NOT_LEADER` answer naming the leader re-targets
//! the client there at once (register and heartbeat are leader calls).
//! Every call is idempotent (a re-registration, a heartbeat, a read, a
//! whole-state status report), so retrying one that may have run is safe.
//!
//! ```no_run
//! # fn example(node: caravan_engine::model::Node, tls: &caravan_net::quic::ClusterTls) -> Result<(), caravan_net::server::ClientApiError> {
//! use std::time::Duration;
//! use caravan_net::server::ServerClient;
//!
//! let client = ServerClient::new(vec!["127.0.0.1:4647".parse().unwrap()], tls)?;
//! let ttl = client.register_node(&node)?;
//! let (allocs, index) = client.node_allocs(node.id, 0, Duration::ZERO)?;
//! client.heartbeat(node.id)?; // again within `ttl`
//! # let _ = (ttl, allocs, index); Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caravan_engine::ids::NodeId;
use caravan_engine::model::{AllocClientUpdate, Allocation, Node};

use super::client_rpc::{
    self, ALLOC_UPDATE, AllocUpdateRequest, AllocsReply, AllocsRequest, HeartbeatRequest, IndexReply, MessageError,
    NODE_ALLOCS, NODE_ALLOCS_WAIT_MAX, NODE_HEARTBEAT, NODE_NOT_FOUND, NODE_REGISTER, RegisterRequest, TtlReply,
};
use super::rpc_methods::{NOT_LEADER, RAFT_FAILED};
use crate::quic::{ClusterTls, EndpointError};
use crate::rpc::frame::ErrorCode;
use crate::rpc::{BlockingRpcClient, RpcError};

/// Attempts per call, redirects included: enough to ride out a leader
/// election (about two seconds with the default raft timings) across a
/// three- or five-server list; after that the agent's own loop decides.
pub const ATTEMPTS_MAX: usize = 8;

/// The first retry's backoff; doubled per failed attempt.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The longest backoff between two attempts, so a recovered cluster is
/// noticed within seconds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// Time one register, heartbeat or status report may take: longer than a
/// server's own raft write timeout ([`super::WRITE_TIMEOUT`], 15 s), so a
/// write stuck behind an election answers before the client gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Added to a `node_allocs` wait for the call's timeout: the server
/// answers at the wait, and the reply needs time to arrive.
pub const NODE_ALLOCS_CALL_SLACK: Duration = Duration::from_secs(10);

/// Server addresses remembered; `NOT_LEADER` may name one not in the
/// initial list, and a hostile answer must not grow the list without end.
pub const SERVERS_MAX: usize = 64;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientApiError {
    #[error("no server addresses given")]
    NoServers,
    #[error("starting the rpc client: {0}")]
    Start(#[from] EndpointError),
    /// The node must register (again).
    #[error("node is not registered: {0}")]
    NodeNotFound(String),
    /// The server refused the request itself (validation, bad frame); a
    /// retry would be refused too.
    #[error("refused by {server}: {message}")]
    Refused { server: SocketAddr, message: String },
    #[error("encoding the request: {0}")]
    Encode(#[source] MessageError),
    #[error("bad reply from {server}: {source}")]
    BadReply {
        server: SocketAddr,
        #[source]
        source: MessageError,
    },
    /// Every attempt failed with a retryable error; the last one is kept.
    #[error("gave up after {attempts} attempts; last: {last}")]
    Exhausted { attempts: usize, last: RpcError },
}

#[derive(Debug)]
struct Servers {
    list: Vec<SocketAddr>,
    current: usize,
}

/// A blocking, thread-safe handle on the servers for a client agent.
#[derive(Debug)]
pub struct ServerClient {
    rpc: BlockingRpcClient,
    servers: Mutex<Servers>,
}

/// What to do after a failed attempt.
enum Next {
    /// Try the named server at once.
    Redirect(SocketAddr),
    /// Try the next server after backing off.
    Rotate,
    /// Try the same server after backing off.
    Again,
    /// Give up with this error.
    Fail(ClientApiError),
}

fn classify(server: SocketAddr, error: &RpcError) -> Next {
    match error {
        RpcError::Unreachable { .. } | RpcError::Timeout { .. } | RpcError::ConnectionLost { .. } => Next::Rotate,
        RpcError::Protocol { .. } => Next::Rotate,
        RpcError::Remote(remote) => match remote.code {
            NOT_LEADER => match remote.message.parse::<SocketAddr>() {
                Ok(leader) if leader != server => Next::Redirect(leader),
                _ => Next::Rotate,
            },
            NODE_NOT_FOUND => Next::Fail(ClientApiError::NodeNotFound(remote.message.clone())),
            ErrorCode::OVERLOADED | ErrorCode::DEADLINE_EXCEEDED => Next::Again,
            // No quorum or raft starting: another server may do better.
            client_rpc::WRITE_FAILED | RAFT_FAILED | ErrorCode::INTERNAL => Next::Rotate,
            _ => Next::Fail(ClientApiError::Refused { server, message: remote.message.clone() }),
        },
        RpcError::TooLarge { .. } | RpcError::Shutdown => {
            Next::Fail(ClientApiError::Refused { server, message: error.to_string() })
        }
    }
}

impl ServerClient {
    /// A client with its own RPC endpoint (an ephemeral UDP port) and the
    /// cluster's TLS identity.
    pub fn new(servers: Vec<SocketAddr>, tls: &ClusterTls) -> Result<ServerClient, ClientApiError> {
        let rpc = BlockingRpcClient::start(SocketAddr::from(([0, 0, 0, 0], 0)), tls)?;
        ServerClient::with_rpc(rpc, servers)
    }

    /// A client over an existing RPC client.
    pub fn with_rpc(rpc: BlockingRpcClient, mut servers: Vec<SocketAddr>) -> Result<ServerClient, ClientApiError> {
        servers.dedup();
        servers.truncate(SERVERS_MAX);
        if servers.is_empty() {
            return Err(ClientApiError::NoServers);
        }
        Ok(ServerClient { rpc, servers: Mutex::new(Servers { list: servers, current: 0 }) })
    }

    /// The server calls go to first.
    pub fn current_server(&self) -> SocketAddr {
        let servers = self.servers.lock().expect("servers poisoned");
        servers.list[servers.current]
    }

    /// Register (or re-register) the node; returns the heartbeat TTL.
    pub fn register_node(&self, node: &Node) -> Result<Duration, ClientApiError> {
        let body = client_rpc::encode(&RegisterRequest { node: node.clone() }).map_err(ClientApiError::Encode)?;
        let (server, reply) = self.call(NODE_REGISTER, body, CALL_TIMEOUT)?;
        let ttl: TtlReply = decode_reply(server, &reply)?;
        Ok(Duration::from_millis(ttl.ttl_ms))
    }

    /// Heartbeat; returns the TTL within which to heartbeat again.
    /// [`ClientApiError::NodeNotFound`] means register first.
    pub fn heartbeat(&self, node_id: NodeId) -> Result<Duration, ClientApiError> {
        let body = client_rpc::encode(&HeartbeatRequest { node_id }).map_err(ClientApiError::Encode)?;
        let (server, reply) = self.call(NODE_HEARTBEAT, body, CALL_TIMEOUT)?;
        let ttl: TtlReply = decode_reply(server, &reply)?;
        Ok(Duration::from_millis(ttl.ttl_ms))
    }

    /// The node's allocations once they change past `min_index`, or at
    /// `wait` (capped at [`NODE_ALLOCS_WAIT_MAX`]); with the index to pass
    /// next time. A zero wait answers at once.
    pub fn node_allocs(
        &self,
        node_id: NodeId,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Vec<Arc<Allocation>>, u64), ClientApiError> {
        let wait = wait.min(NODE_ALLOCS_WAIT_MAX);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let body =
            client_rpc::encode(&AllocsRequest { node_id, min_index, wait_ms }).map_err(ClientApiError::Encode)?;
        let (server, reply) = self.call(NODE_ALLOCS, body, wait + NODE_ALLOCS_CALL_SLACK)?;
        let reply: AllocsReply = decode_reply(server, &reply)?;
        Ok((reply.allocs, reply.index))
    }

    /// Report client status changes (with task states); returns the raft
    /// index they were committed at. The server batches concurrent reports.
    pub fn update_allocs(&self, updates: Vec<AllocClientUpdate>) -> Result<u64, ClientApiError> {
        let body = client_rpc::encode(&AllocUpdateRequest { updates }).map_err(ClientApiError::Encode)?;
        let (server, reply) = self.call(ALLOC_UPDATE, body, CALL_TIMEOUT)?;
        let reply: IndexReply = decode_reply(server, &reply)?;
        Ok(reply.index)
    }

    /// One call with retries: see the module docs.
    fn call(&self, method: u16, body: Vec<u8>, timeout: Duration) -> Result<(SocketAddr, Vec<u8>), ClientApiError> {
        let mut backoff = BACKOFF_MIN;
        let mut last = None;
        for _ in 0..ATTEMPTS_MAX {
            let server = self.current_server();
            let error = match self.rpc.call(server, method, body.clone(), timeout) {
                Ok(reply) => return Ok((server, reply)),
                Err(e) => e,
            };
            tracing::debug!(%server, method, error = %error, "client rpc failed");
            match classify(server, &error) {
                Next::Fail(e) => return Err(e),
                Next::Redirect(leader) => self.retarget(leader),
                Next::Rotate => {
                    self.rotate(server);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Next::Again => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            last = Some(error);
        }
        Err(ClientApiError::Exhausted { attempts: ATTEMPTS_MAX, last: last.expect("at least one attempt") })
    }

    /// Move on from `failed` (unless another caller already has).
    fn rotate(&self, failed: SocketAddr) {
        let mut servers = self.servers.lock().expect("servers poisoned");
        if servers.list[servers.current] == failed {
            servers.current = (servers.current + 1) % servers.list.len();
        }
    }

    /// Talk to `leader` from now on, adding it to the list if new.
    fn retarget(&self, leader: SocketAddr) {
        let mut servers = self.servers.lock().expect("servers poisoned");
        match servers.list.iter().position(|s| *s == leader) {
            Some(at) => servers.current = at,
            None if servers.list.len() < SERVERS_MAX => {
                servers.list.push(leader);
                servers.current = servers.list.len() - 1;
            }
            None => {
                let at = servers.current;
                servers.list[at] = leader;
            }
        }
    }
}

fn decode_reply<T>(server: SocketAddr, bytes: &[u8]) -> Result<T, ClientApiError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    client_rpc::decode(bytes).map_err(|source| ClientApiError::BadReply { server, source })
}
