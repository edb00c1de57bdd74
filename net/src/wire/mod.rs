//! rkyv wire formats for what the servers replicate.
//!
//! - [`encode_commands`] / [`decode_commands`]: a batch of FSM commands,
//!   the bytes of one raft log entry (`raft::LogPayload::bytes`). An
//!   18-byte header (magic `CVNC`, format version, codec, lengths, crc32)
//!   then the rkyv archive of the batch, lz4-compressed when large;
//!   `Arc<Job>`s shared by a plan's allocations are archived once.
//! - [`write_snapshot`] / [`read_snapshot`]: the whole state store as a raft
//!   snapshot, streamed in bounded, checksummed chunks (see `snapshot.rs`
//!   for the layout) and rebuilt through the engine's `StateBuilder`, so
//!   every index and each node's usage come out as the FSM leaves them.
//! - [`encode_message`] / [`decode_message`]: RPC bodies between servers
//!   (a plan, an eval delivery), one validated archive each.
//!
//! Decoding never trusts its input: rkyv's validation (bytecheck) runs
//! before anything is read out of an archive, so malformed bytes give a
//! [`WireError`], never a panic or undefined behaviour.
//!
//! ```
//! use caravan_engine::fsm::Command;
//! use caravan_engine::ids::{EvalId, AllocId};
//! use caravan_net::wire::{decode_commands, encode_commands};
//!
//! let batch = vec![Command::EvalReap { evals: vec![EvalId(7)], allocs: vec![AllocId(9)] }];
//! let bytes = encode_commands(&batch).unwrap();
//! assert_eq!(decode_commands(&bytes).unwrap(), batch);
//! ```

mod command;
pub(crate) mod lz4;
mod message;
mod snapshot;
#[cfg(test)]
mod tests;

pub use command::{COMMAND_FORMAT_VERSION, COMMAND_MAGIC, decode_commands, encode_commands};
pub use message::{decode_message, encode_message};
pub use snapshot::{
    CHUNK_BYTES_MAX, ItemCounts, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC, SnapshotStats, read_snapshot, write_snapshot,
};

use caravan_engine::state::RestoreError;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("input too short for a {what} header: {len} bytes")]
    TooShort { what: &'static str, len: usize },
    #[error("not a Caravan {what}: bad magic {found:02x?}")]
    BadMagic { what: &'static str, found: Vec<u8> },
    #[error("unsupported {what} format version {found} (this build reads version {supported})")]
    UnsupportedVersion { what: &'static str, found: u8, supported: u8 },
    #[error("command batch length {actual} differs from its header's {header}")]
    LengthMismatch { header: u64, actual: u64 },
    #[error("command batch is corrupt (checksum mismatch)")]
    Checksum,
    #[error("{len} bytes exceed the {max}-byte bound")]
    TooLarge { len: u64, max: u64 },
    #[error("unknown body codec {0}")]
    UnknownCodec(u8),
    #[error("malformed compressed body: {0}")]
    Compression(String),
    #[error("malformed archive: {0}")]
    Malformed(#[source] rkyv::rancor::Error),
    #[error("encoding failed: {0}")]
    Encode(#[source] rkyv::rancor::Error),
    #[error("snapshot truncated: {0}")]
    Truncated(&'static str),
    #[error("snapshot header is corrupt (checksum mismatch)")]
    HeaderChecksum,
    #[error("snapshot chunk {seq} is corrupt (checksum mismatch)")]
    ChunkChecksum { seq: u32 },
    #[error("snapshot chunk {seq} out of order: {reason}")]
    OutOfOrder { seq: u32, reason: String },
    #[error("snapshot chunk {seq} has unknown kind {kind}")]
    UnknownChunk { seq: u32, kind: u8 },
    #[error("snapshot chunk of {len} bytes exceeds the {max}-byte bound")]
    ChunkTooLarge { len: u64, max: u64 },
    #[error("snapshot trailer disagrees with its contents: {0}")]
    TrailerMismatch(String),
    #[error("bytes after the snapshot trailer")]
    TrailingBytes,
    #[error("snapshot does not rebuild into a consistent state: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
}
