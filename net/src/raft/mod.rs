//! Replicated servers: openraft's type configuration for Caravan, the
//! durable log (redb), the state machine around the engine's FSM, and the
//! raft network over QUIC.
//!
//! Storage, built so far (on disk under `data_dir/raft/`: `log.redb` and
//! `snapshots/`):
//! - [`entry_codec`]: self-checking (crc32) records of entries, votes and
//!   log ids.
//! - [`log_store`]: [`LogStore`], openraft's log storage over redb.
//! - [`state_machine`]: [`StateMachineStore`], openraft's state machine
//!   over a [`ReplicatedFsm`], with snapshots as files
//!   ([`snapshot_files`]).

pub mod entry_codec;
pub mod log_store;
pub mod snapshot_files;
pub mod state_machine;
mod types;

pub use log_store::{LogReader, LogStore, LogStoreError, LogStoreMetrics};
pub use snapshot_files::{SnapshotError, SnapshotFile};
pub use state_machine::{ReplicatedFsm, SnapshotBuilder, SnapshotWriter, StateMachineStore};
pub use types::{ApplyReply, LogPayload, ServerNode, TypeConfig};
