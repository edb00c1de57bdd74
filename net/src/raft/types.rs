//! The one openraft type configuration every server uses.

use std::fmt;

/// A raft log entry's application payload: a batch of engine commands,
/// already encoded (rkyv, see `wire`), so the log stores and ships bytes
/// without re-encoding and a follower decodes once, at apply.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct LogPayload {
    pub bytes: Vec<u8>,
}

impl fmt::Debug for LogPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogPayload({} bytes)", self.bytes.len())
    }
}

impl fmt::Display for LogPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying one entry returned to the writer on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReply {
    /// The raft index the entry was applied at.
    pub index: u64,
    /// Set when the FSM refused a command of the entry; the state did not
    /// change for that command (apply is all or nothing per command).
    pub error: Option<String>,
}

/// A server as raft's membership records it: where its RPC (raft and
/// server RPC share one QUIC endpoint) and HTTP API listen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerNode {
    /// `host:port` of the QUIC endpoint.
    pub rpc_addr: String,
    /// `host:port` of the HTTP API.
    pub http_addr: String,
    /// The agent's `name`.
    pub name: String,
}

openraft::declare_raft_types!(
    /// Caravan's raft: u64 server ids, engine command batches as payload,
    /// on the compio runtime.
    pub TypeConfig:
        D = LogPayload,
        R = ApplyReply,
        NodeId = u64,
        Node = ServerNode,
        AsyncRuntime = openraft_rt_compio::CompioRuntime,
);
