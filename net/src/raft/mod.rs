//! Replicated servers: openraft's type configuration for Caravan, the
//! durable log (redb), the state machine around the engine's FSM, and the
//! raft network over QUIC.

mod types;

pub use types::{ApplyReply, LogPayload, ServerNode, TypeConfig};
