//! Replicated servers: openraft's type configuration for Caravan, the
//! durable log (redb), the state machine around the engine's FSM, and the
//! raft network over QUIC.
//!
//! Storage, built so far:
//! - [`entry_codec`]: self-checking (crc32) records of entries, votes and
//!   log ids.
//! - [`log_store`]: [`LogStore`], openraft's log storage over redb.

pub mod entry_codec;
pub mod log_store;
mod types;

pub use log_store::{LogReader, LogStore, LogStoreError, LogStoreMetrics};
pub use types::{ApplyReply, LogPayload, ServerNode, TypeConfig};
