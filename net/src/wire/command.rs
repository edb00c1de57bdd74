//! Command batches: the payload of one raft log entry.
//!
//! Layout: `CVNC` (4 bytes), the format version (1 byte), then the rkyv
//! archive of the batch as a boxed slice of `Command`s. One archive per
//! batch, so an `Arc<Job>` shared by a plan's thousand allocations is
//! written once and shared again after decoding.

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
pub const COMMAND_FORMAT_VERSION: u8 = 1;

const HEADER_LEN: usize = COMMAND_MAGIC.len() + 1;

/// Encodes a batch of commands into one log entry's bytes.
pub fn encode_commands(commands: &[Command]) -> Result<Vec<u8>, WireError> {
    let archive =
        rkyv::to_bytes::<rancor::Error>(With::<&[Command], InlineAsBox>::cast(&commands)).map_err(WireError::Encode)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + archive.len());
    bytes.extend_from_slice(&COMMAND_MAGIC);
    bytes.push(COMMAND_FORMAT_VERSION);
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
