//! The client agent's view of the servers: four blocking calls, the client
//! half of Nomad's `Node.Register`, `Node.UpdateStatus` (heartbeat),
//! `Node.GetClientAllocs` and `Node.UpdateAlloc` RPCs.
//!
//! The agent only ever talks to the servers through [`ServerApi`], so it
//! runs the same against the QUIC RPC client (the integrator's
//! implementation) and against an in-process cluster in tests. Every call
//! blocks the calling thread; the agent gives each loop its own thread.

use std::time::Duration;

use caravan_engine::ids::NodeId;
use caravan_engine::model::{AllocClientUpdate, Allocation, Node};

/// Why a server call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// The servers do not know this node (never registered, or garbage
    /// collected after a long outage): the client registers again.
    #[error("node {0} is not registered")]
    NodeNotFound(NodeId),
    /// No server answered, or none could serve the call now (no leader,
    /// shutting down): the client retries with backoff.
    #[error("servers unavailable: {0}")]
    Unavailable(String),
    /// The servers refused the request itself (a node that fails
    /// validation): retrying the same request cannot help, but the client
    /// keeps retrying with backoff in case a new fingerprint fixes it.
    #[error("rejected by the servers: {0}")]
    Rejected(String),
}

/// The servers, as a client agent calls them. Implementations are shared
/// between the agent's threads.
pub trait ServerApi: Send + Sync {
    /// Registers (or re-registers) the node; returns the heartbeat TTL: the
    /// servers mark the node down when no heartbeat arrives within it (plus
    /// their grace).
    fn register_node(&self, node: &Node) -> Result<Duration, ServerError>;

    /// Tells the servers the node is alive; returns the next TTL.
    /// [`ServerError::NodeNotFound`] when the node must register again.
    fn heartbeat(&self, node_id: NodeId) -> Result<Duration, ServerError>;

    /// A blocking query: the node's allocations once the servers' allocation
    /// index passes `min_index`, or after `wait` with what there is. Returns
    /// the allocations (terminal ones included) and the index they reflect.
    fn node_allocs(
        &self,
        node_id: NodeId,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Vec<Allocation>, u64), ServerError>;

    /// Client status and task states of allocations, in one batch.
    fn update_allocs(&self, updates: Vec<AllocClientUpdate>) -> Result<(), ServerError>;
}
