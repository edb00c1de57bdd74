//! Command batches: the payload of one raft log entry.
//!
//! Layout: `CVNC` (4 bytes), the format version (1 byte), the archive's
//! length (u32, little-endian) and its crc32 (u32), then the rkyv archive of
//! the batch as a boxed slice of `Command`s. One archive per batch, so an
//! `Arc<Job>` shared by a plan's thousand allocations is written once and
//! shared again after decoding.
//!
//! The length and checksum are not redundant with rkyv's validation: an
//! archive's root sits at its end, so a truncated batch can still validate
//! (as an empty one, say), and a flipped bit inside a number validates as a
//! different number. Both would apply the wrong commands; checked here they
//! are refused. A crc32 of a 1,000-allocation plan costs microseconds.

use caravan_engine::fsm::{ArchivedCommand, Command};
use rkyv::boxed::ArchivedBox;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::with::{InlineAsBox, With};

use super::WireError;

/// Marks a command batch, so a snapshot or garbage handed to the decoder is
/// refused by name rather than by a validation error deep in the archive.
pub const COMMAND_MAGIC: [u8; 4] = *b"CVNC";

/// Bumped whenever the archived layout of `Command` changes: a server must
/// refuse entries it would misread (rkyv archives carry no schema).
/// 2: `Job::periodic` and `Command::PeriodicLaunch` (periodic jobs), `Task::lifecycle`.
/// 3: `Task::dispatch_payload_file`.
/// 4: `Allocation::deployment_status`, `AllocClientUpdate::deployment_health`,
///    `Deployment::task_groups`, `Command::DeploymentPromote`, rollbacks in
///    `Command::DeploymentStatusUpdate`.
/// 5: `Command::JobScale` (scaling events), `Command::DeploymentAllocHealth`.
pub const COMMAND_FORMAT_VERSION: u8 = 5;

/// Magic, version, archive length, archive crc32.
const HEADER_LEN: usize = COMMAND_MAGIC.len() + 1 + 4 + 4;

/// The largest archive accepted: a raft entry is bounded far below this by
/// the log's own limits; the length field is a u32.
const ARCHIVE_BYTES_MAX: usize = u32::MAX as usize;

/// Encodes a batch of commands into one log entry's bytes.
pub fn encode_commands(commands: &[Command]) -> Result<Vec<u8>, WireError> {
    let archive =
        rkyv::to_bytes::<rancor::Error>(With::<&[Command], InlineAsBox>::cast(&commands)).map_err(WireError::Encode)?;
    if archive.len() > ARCHIVE_BYTES_MAX {
        return Err(WireError::TooLarge { len: archive.len() as u64, max: ARCHIVE_BYTES_MAX as u64 });
    }
    let mut bytes = Vec::with_capacity(HEADER_LEN + archive.len());
    bytes.extend_from_slice(&COMMAND_MAGIC);
    bytes.push(COMMAND_FORMAT_VERSION);
    bytes.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&archive).to_le_bytes());
    bytes.extend_from_slice(&archive);
    Ok(bytes)
}

/// Decodes a log entry's bytes, validating the archive before reading it.
pub fn decode_commands(bytes: &[u8]) -> Result<Vec<Command>, WireError> {
    const WHAT: &str = "command batch";
    if bytes.len() < HEADER_LEN {
        return Err(WireError::TooShort { what: WHAT, len: bytes.len() });
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    if header[..COMMAND_MAGIC.len()] != COMMAND_MAGIC {
        return Err(WireError::BadMagic { what: WHAT, found: header[..COMMAND_MAGIC.len()].to_vec() });
    }
    let version = header[COMMAND_MAGIC.len()];
    if version != COMMAND_FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion { what: WHAT, found: version, supported: COMMAND_FORMAT_VERSION });
    }
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (len, crc) = (word(5) as usize, word(9));
    if body.len() != len {
        return Err(WireError::LengthMismatch { header: len as u64, actual: body.len() as u64 });
    }
    if crc32fast::hash(body) != crc {
        return Err(WireError::Checksum);
    }
    decode_archive(body)
}

/// Validates and decodes the archive part of a batch (no header).
fn decode_archive(body: &[u8]) -> Result<Vec<Command>, WireError> {
    // rkyv reads archived values in place and needs them aligned; a log
    // entry's bytes sit anywhere, so copy the body once into aligned memory.
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let archived =
        rkyv::access::<ArchivedBox<[ArchivedCommand]>, rancor::Error>(&aligned).map_err(WireError::Malformed)?;
    let commands: Box<[Command]> =
        rkyv::deserialize::<Box<[Command]>, rancor::Error>(archived).map_err(WireError::Malformed)?;
    Ok(commands.into_vec())
}

#[cfg(test)]
pub(super) fn decode_archive_unchecked_crc(body: &[u8]) -> Result<Vec<Command>, WireError> {
    decode_archive(body)
}

#[cfg(test)]
pub(super) const COMMAND_HEADER_LEN: usize = HEADER_LEN;
