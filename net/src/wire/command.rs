//! Command batches: the payload of one raft log entry.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! offset size field
//!      0    4 magic         "CVNC"
//!      4    1 version       COMMAND_FORMAT_VERSION
//!      5    1 codec         0: the body is the archive; 1: one lz4 block
//!      6    4 body length
//!     10    4 body crc32
//!     14    4 archive length (the body's, inflated)
//!     18    n body
//! ```
//!
//! The archive is the rkyv archive of the batch as a boxed slice of
//! `Command`s. One archive per batch, so an `Arc<Job>` shared by a plan's
//! thousand allocations is written once and shared again after decoding.
//! Batches of more than a few hundred bytes are lz4-compressed where that
//! shrinks them: rkyv's fixed layout is mostly zero padding (a plan of a
//! thousand allocations compresses about 6x), and every byte of an entry
//! is written to the log, checksummed, and sent to each follower by the
//! raft thread. The proposer compresses, off that thread.
//!
//! The length and checksum are not redundant with rkyv's validation: an
//! archive's root sits at its end, so a truncated batch can still validate
//! (as an empty one, say), and a flipped bit inside a number validates as a
//! different number. Both would apply the wrong commands; checked here they
//! are refused, before anything is inflated. A crc32 of a 1,000-allocation
//! plan costs microseconds.
//!
//! Version 5 batches (the same archive, plain, behind a 13-byte header
//! without codec and archive length) are still read: a log written before
//! compression replays after an upgrade.

use caravan_engine::fsm::{ArchivedCommand, Command};
use rkyv::boxed::ArchivedBox;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::with::{InlineAsBox, With};

use super::WireError;
use super::lz4::{self, InflateError};

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
/// 6: the codec byte and archive length (lz4 bodies); the archive as in 5.
pub const COMMAND_FORMAT_VERSION: u8 = 6;

/// The last version without a codec, still read.
const PLAIN_FORMAT_VERSION: u8 = 5;

/// Magic, version, codec, body length, body crc32, archive length.
const HEADER_LEN: usize = COMMAND_MAGIC.len() + 1 + 1 + 4 + 4 + 4;

/// Version 5's header: magic, version, archive length, archive crc32.
const PLAIN_HEADER_LEN: usize = COMMAND_MAGIC.len() + 1 + 4 + 4;

const CODEC_PLAIN: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// Archives shorter than this are stored plain: a client's status report
/// or an eval update, too small for compression to pay.
const COMPRESS_FROM_BYTES: usize = 512;

/// lz4 never inflates a block by more than this factor (a match token of
/// one byte stands for at most 255 more); a header announcing more is
/// corrupt, and refused before its memory is allocated.
const LZ4_RATIO_MAX: usize = 255;

/// The largest archive accepted: a raft entry is bounded far below this by
/// the log's own limits; the length fields are u32s.
const ARCHIVE_BYTES_MAX: usize = u32::MAX as usize;

/// How a batch's body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Body {
    codec: u8,
    archive_len: usize,
}

/// Encodes a batch of commands into one log entry's bytes.
pub fn encode_commands(commands: &[Command]) -> Result<Vec<u8>, WireError> {
    let archive =
        rkyv::to_bytes::<rancor::Error>(With::<&[Command], InlineAsBox>::cast(&commands)).map_err(WireError::Encode)?;
    if archive.len() > ARCHIVE_BYTES_MAX {
        return Err(WireError::TooLarge { len: archive.len() as u64, max: ARCHIVE_BYTES_MAX as u64 });
    }
    let compressed = (archive.len() >= COMPRESS_FROM_BYTES).then(|| lz4::shrink(&archive, 0)).flatten();
    let (codec, body) = match &compressed {
        Some(block) => (CODEC_LZ4, block.as_slice()),
        None => (CODEC_PLAIN, archive.as_slice()),
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&COMMAND_MAGIC);
    bytes.extend_from_slice(&[COMMAND_FORMAT_VERSION, codec]);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    bytes.extend_from_slice(body);
    Ok(bytes)
}

/// Decodes a log entry's bytes: header, length and checksum first, then
/// the body inflated (if compressed) and its archive validated before it
/// is read.
pub fn decode_commands(bytes: &[u8]) -> Result<Vec<Command>, WireError> {
    let (how, body) = checked_body(bytes)?;
    decode_body(how, body)
}

/// The header's promises checked against the bytes: how the body is
/// stored, and the body.
pub(super) fn checked_body(bytes: &[u8]) -> Result<(Body, &[u8]), WireError> {
    const WHAT: &str = "command batch";
    if bytes.len() < PLAIN_HEADER_LEN {
        return Err(WireError::TooShort { what: WHAT, len: bytes.len() });
    }
    if bytes[..COMMAND_MAGIC.len()] != COMMAND_MAGIC {
        return Err(WireError::BadMagic { what: WHAT, found: bytes[..COMMAND_MAGIC.len()].to_vec() });
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (how, len, crc, body) = match bytes[COMMAND_MAGIC.len()] {
        COMMAND_FORMAT_VERSION => {
            if bytes.len() < HEADER_LEN {
                return Err(WireError::TooShort { what: WHAT, len: bytes.len() });
            }
            let how = Body { codec: bytes[5], archive_len: word(14) as usize };
            (how, word(6) as usize, word(10), &bytes[HEADER_LEN..])
        }
        PLAIN_FORMAT_VERSION => {
            let len = word(5) as usize;
            (Body { codec: CODEC_PLAIN, archive_len: len }, len, word(9), &bytes[PLAIN_HEADER_LEN..])
        }
        version => {
            return Err(WireError::UnsupportedVersion {
                what: WHAT,
                found: version,
                supported: COMMAND_FORMAT_VERSION,
            });
        }
    };
    if body.len() != len {
        return Err(WireError::LengthMismatch { header: len as u64, actual: body.len() as u64 });
    }
    if crc32fast::hash(body) != crc {
        return Err(WireError::Checksum);
    }
    Ok((how, body))
}

/// Inflates (or copies) a body into aligned memory and decodes its archive.
pub(super) fn decode_body(how: Body, body: &[u8]) -> Result<Vec<Command>, WireError> {
    // rkyv reads archived values in place and needs them aligned; a log
    // entry's bytes sit anywhere, so the archive is copied (or inflated)
    // once into aligned memory.
    let aligned = match how.codec {
        CODEC_PLAIN if body.len() == how.archive_len => {
            let mut aligned = AlignedVec::<16>::with_capacity(body.len());
            aligned.extend_from_slice(body);
            aligned
        }
        CODEC_PLAIN => {
            return Err(WireError::LengthMismatch { header: how.archive_len as u64, actual: body.len() as u64 });
        }
        CODEC_LZ4 => {
            let bound = body.len().saturating_mul(LZ4_RATIO_MAX);
            if how.archive_len > bound {
                return Err(WireError::TooLarge { len: how.archive_len as u64, max: bound as u64 });
            }
            lz4::inflate(body, how.archive_len).map_err(|e| match e {
                InflateError::Block(e) => WireError::Compression(e.to_string()),
                InflateError::Short { inflated } => {
                    WireError::LengthMismatch { header: how.archive_len as u64, actual: inflated as u64 }
                }
            })?
        }
        codec => return Err(WireError::UnknownCodec(codec)),
    };
    let archived =
        rkyv::access::<ArchivedBox<[ArchivedCommand]>, rancor::Error>(&aligned).map_err(WireError::Malformed)?;
    let commands: Box<[Command]> =
        rkyv::deserialize::<Box<[Command]>, rancor::Error>(archived).map_err(WireError::Malformed)?;
    Ok(commands.into_vec())
}

#[cfg(test)]
impl Body {
    /// A plain archive of `len` bytes.
    pub(super) fn plain(len: usize) -> Body {
        Body { codec: CODEC_PLAIN, archive_len: len }
    }

    pub(super) fn is_compressed(&self) -> bool {
        self.codec == CODEC_LZ4
    }
}

/// Version 5's bytes for `commands` (the archive plain, behind the old
/// header), as a log written before compression holds them.
#[cfg(test)]
pub(super) fn encode_commands_v5(commands: &[Command]) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rancor::Error>(With::<&[Command], InlineAsBox>::cast(&commands)).unwrap();
    let mut bytes = COMMAND_MAGIC.to_vec();
    bytes.push(PLAIN_FORMAT_VERSION);
    bytes.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&archive).to_le_bytes());
    bytes.extend_from_slice(&archive);
    bytes
}
