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

use caravan_engine::ids::{AllocId, NodeId};
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

/// What a node last received: every allocation as of `index`, so the next
/// query asks only for what changed since.
#[derive(Debug, Default)]
struct KnownAllocs {
    index: u64,
    allocs: std::collections::HashMap<AllocId, Arc<Allocation>>,
}

/// Nodes whose allocations one client remembers: an agent runs one node; a
/// few cover tests that share a client. Past it the oldest is forgotten
/// (its next query asks for everything).
const KNOWN_NODES_MAX: usize = 16;

/// A blocking, thread-safe handle on the servers for a client agent.
#[derive(Debug)]
pub struct ServerClient {
    rpc: BlockingRpcClient,
    servers: Mutex<Servers>,
    known: Mutex<Vec<(NodeId, KnownAllocs)>>,
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
        Ok(ServerClient {
            rpc,
            servers: Mutex::new(Servers { list: servers, current: 0 }),
            known: Mutex::new(Vec::new()),
        })
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
    /// next time. A zero wait answers at once. Only allocations changed
    /// since the last answer travel; the rest come from this client's copy.
    pub fn node_allocs(
        &self,
        node_id: NodeId,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Vec<Arc<Allocation>>, u64), ClientApiError> {
        let wait = wait.min(NODE_ALLOCS_WAIT_MAX);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let mut known = self.take_known(node_id);
        let request = |known_index| AllocsRequest { node_id, min_index, known_index, wait_ms };
        let mut reply = self.fetch_allocs(request(known.index), wait)?;
        if reply.index < known.index {
            // A server behind the one that answered last (a follower that
            // has not caught up): nothing newer than what we hold.
            let allocs = known.allocs.values().cloned().collect();
            let index = known.index;
            self.put_known(node_id, known);
            return Ok((allocs, index));
        }
        if reply.unchanged.iter().flatten().any(|id| !known.allocs.contains_key(id)) {
            // Our copy lacks one the server thinks we have: ask for all.
            known = KnownAllocs::default();
            reply = self.fetch_allocs(request(0), Duration::ZERO)?;
        }
        let mut allocs = match reply.unchanged {
            // Nothing was removed since our copy: keep all of it.
            None => std::mem::take(&mut known.allocs),
            Some(unchanged) => {
                let mut kept = std::collections::HashMap::with_capacity(reply.changed.len() + unchanged.len());
                for id in unchanged {
                    if let Some(alloc) = known.allocs.remove(&id) {
                        kept.insert(id, alloc);
                    }
                }
                kept
            }
        };
        for alloc in reply.changed {
            allocs.insert(alloc.id, alloc);
        }
        let list = allocs.values().cloned().collect();
        self.put_known(node_id, KnownAllocs { index: reply.index, allocs });
        Ok((list, reply.index))
    }

    fn fetch_allocs(&self, request: AllocsRequest, wait: Duration) -> Result<AllocsReply, ClientApiError> {
        let body = client_rpc::encode(&request).map_err(ClientApiError::Encode)?;
        let (server, reply) = self.call(NODE_ALLOCS, body, wait + NODE_ALLOCS_CALL_SLACK)?;
        decode_reply(server, &reply)
    }

    fn take_known(&self, node_id: NodeId) -> KnownAllocs {
        let mut known = self.known.lock().expect("known allocs poisoned");
        match known.iter().position(|(id, _)| *id == node_id) {
            Some(at) => known.swap_remove(at).1,
            None => KnownAllocs::default(),
        }
    }

    fn put_known(&self, node_id: NodeId, allocs: KnownAllocs) {
        let mut known = self.known.lock().expect("known allocs poisoned");
        if known.len() >= KNOWN_NODES_MAX {
            known.remove(0);
        }
        known.push((node_id, allocs));
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
