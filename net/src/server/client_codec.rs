//! The client RPC's message codec: an rkyv archive behind a 6-byte header
//! (magic `CVCL`, format version, body codec), lz4-compressed when that
//! pays.
//!
//! Compression is for the wire, not the disk: rkyv lays archives out at
//! fixed offsets, so an allocation with its job is mostly zero padding and
//! empty fields (a node's allocation reply of nine allocations: 9.4 KB
//! raw, 1.3 KB as lz4). Every byte crosses the server's QUIC transport,
//! which encrypts and packetizes it on the raft thread, and a fleet's
//! allocation replies are most of those bytes. lz4 costs a few hundred
//! microseconds per megabyte on either end, less than the packets it
//! saves.
//!
//! ```text
//! offset size field
//!      0    4 magic    "CVCL"
//!      4    1 version  MESSAGE_FORMAT_VERSION
//!      5    1 codec    0: the archive follows as is
//!                      1: u32 little-endian archive length, then the
//!                         archive as one lz4 block
//!      6    n body
//! ```
//!
//! Decoding validates everything before trusting it (the archive with
//! bytecheck; the announced length against [`BODY_LEN_MAX`] before any
//! allocation, the lz4 block against that length), so bad bytes are an
//! error, never a panic or an outsized allocation.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::rpc::frame::BODY_LEN_MAX;
use crate::wire::lz4::{self, InflateError};

/// Marks client RPC messages, so a raft message or garbage sent to a
/// client method is refused by name.
const MESSAGE_MAGIC: [u8; 4] = *b"CVCL";

/// Bumped whenever an archived message layout changes (rkyv archives
/// carry no schema), so a server and client of different versions refuse
/// each other's bytes instead of misreading them.
// 4: `Task::dispatch_payload_file`; 5: allocations' deployment health
// (`Allocation::deployment_status`, `AllocClientUpdate::deployment_health`);
// 6: the codec byte (lz4 bodies).
const MESSAGE_FORMAT_VERSION: u8 = 6;

const MESSAGE_HEADER_LEN: usize = MESSAGE_MAGIC.len() + 2;

const CODEC_PLAIN: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// Archives shorter than this travel plain: a heartbeat or a small report
/// fits one packet either way, and compressing it would be work for
/// nothing.
const COMPRESS_FROM_BYTES: usize = 256;

/// Bytes of the archive length ahead of an lz4 block.
const LZ4_LEN_BYTES: usize = 4;

/// Why a client message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not a client message: bad magic or too short ({len} bytes)")]
    BadMagic { len: usize },
    #[error("unsupported client message version {found} (this build speaks {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("unknown client message codec {0}")]
    UnknownCodec(u8),
    #[error("malformed compressed client message: {0}")]
    BadCompression(String),
    #[error("malformed client message: {0}")]
    Malformed(#[source] rancor::Error),
    #[error("encoding a client message failed: {0}")]
    Encode(#[source] rancor::Error),
    #[error("client message of {len} bytes exceeds the {max}-byte RPC body limit")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Archive `value` behind the message header, compressed when it is long
/// enough and shrinks. The limit applies to the archive itself, compressed
/// or not, so that a receiver never inflates more than a frame could carry.
pub fn encode<T>(value: &T) -> Result<Vec<u8>, MessageError>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
{
    let archive = rkyv::to_bytes::<rancor::Error>(value).map_err(MessageError::Encode)?;
    let len = MESSAGE_HEADER_LEN + archive.len();
    if len > BODY_LEN_MAX {
        return Err(MessageError::TooLarge { len, max: BODY_LEN_MAX });
    }
    let block = (archive.len() >= COMPRESS_FROM_BYTES).then(|| lz4::shrink(&archive, LZ4_LEN_BYTES)).flatten();
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&MESSAGE_MAGIC);
    match block {
        Some(block) => {
            bytes.extend_from_slice(&[MESSAGE_FORMAT_VERSION, CODEC_LZ4]);
            // At most BODY_LEN_MAX, checked above.
            bytes.extend_from_slice(&(archive.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&block);
        }
        None => {
            bytes.extend_from_slice(&[MESSAGE_FORMAT_VERSION, CODEC_PLAIN]);
            bytes.extend_from_slice(&archive);
        }
    }
    Ok(bytes)
}

/// Check the header, inflate or copy the body into aligned memory,
/// validate the archive, and read it out.
pub fn decode<T>(bytes: &[u8]) -> Result<T, MessageError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    if bytes.len() < MESSAGE_HEADER_LEN || bytes[..MESSAGE_MAGIC.len()] != MESSAGE_MAGIC {
        return Err(MessageError::BadMagic { len: bytes.len() });
    }
    let version = bytes[MESSAGE_MAGIC.len()];
    if version != MESSAGE_FORMAT_VERSION {
        return Err(MessageError::UnsupportedVersion { found: version, supported: MESSAGE_FORMAT_VERSION });
    }
    let body = &bytes[MESSAGE_HEADER_LEN..];
    // rkyv reads in place and needs its archive aligned; a frame's body
    // sits anywhere, so it is copied (or inflated) once.
    let archive = match bytes[MESSAGE_MAGIC.len() + 1] {
        CODEC_PLAIN => {
            let mut aligned = AlignedVec::<16>::with_capacity(body.len());
            aligned.extend_from_slice(body);
            aligned
        }
        CODEC_LZ4 => inflate(body)?,
        other => return Err(MessageError::UnknownCodec(other)),
    };
    rkyv::from_bytes::<T, rancor::Error>(&archive).map_err(MessageError::Malformed)
}

/// An lz4 body (length, block) as the aligned archive it announces.
fn inflate(body: &[u8]) -> Result<AlignedVec<16>, MessageError> {
    let (len, block) = body
        .split_first_chunk::<LZ4_LEN_BYTES>()
        .ok_or_else(|| MessageError::BadCompression(format!("{} bytes, no archive length", body.len())))?;
    let len = u32::from_le_bytes(*len) as usize;
    if MESSAGE_HEADER_LEN + len > BODY_LEN_MAX {
        return Err(MessageError::TooLarge { len: MESSAGE_HEADER_LEN + len, max: BODY_LEN_MAX });
    }
    lz4::inflate(block, len).map_err(|e| match e {
        InflateError::Block(e) => MessageError::BadCompression(e.to_string()),
        InflateError::Short { inflated } => {
            MessageError::BadCompression(format!("{inflated} bytes inflated, {len} announced"))
        }
    })
}

#[cfg(test)]
mod tests {
    use caravan_engine::fixtures;
    use caravan_engine::ids::{IdGen, NodeId};

    use super::*;
    use crate::server::client_rpc::{AllocUpdateRequest, AllocsRequest, RegisterRequest};

    #[test]
    fn small_messages_travel_plain_and_large_ones_compressed() {
        let small = encode(&AllocsRequest { node_id: NodeId(9), min_index: 3, known_index: 2, wait_ms: 10 }).unwrap();
        assert_eq!(small[MESSAGE_MAGIC.len() + 1], CODEC_PLAIN);
        let node = fixtures::node(&mut IdGen::with_seed(1), "n1", "dc1", 4000, 8192);
        let archive_len = rkyv::to_bytes::<rancor::Error>(&RegisterRequest { node: node.clone() }).unwrap().len();
        let large = encode(&RegisterRequest { node: node.clone() }).unwrap();
        assert_eq!(large[MESSAGE_MAGIC.len() + 1], CODEC_LZ4);
        assert!(large.len() < archive_len, "compressed {} bytes, archive {archive_len}", large.len());
        let back: RegisterRequest = decode(&large).unwrap();
        assert_eq!(back.node.id, node.id);
        assert_eq!(&*back.node.name, "n1");
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let small = encode(&AllocsRequest { node_id: NodeId(9), min_index: 3, known_index: 2, wait_ms: 10 }).unwrap();
        let large =
            encode(&RegisterRequest { node: fixtures::node(&mut IdGen::with_seed(2), "n", "dc1", 1, 1) }).unwrap();
        assert_eq!(large[MESSAGE_MAGIC.len() + 1], CODEC_LZ4);
        assert!(matches!(decode::<AllocsRequest>(&[]), Err(MessageError::BadMagic { .. })));
        assert!(matches!(decode::<AllocsRequest>(b"CVNC\x06\x00rest"), Err(MessageError::BadMagic { .. })));
        let mut wrong_version = small.clone();
        wrong_version[4] = 99;
        assert!(matches!(decode::<AllocsRequest>(&wrong_version), Err(MessageError::UnsupportedVersion { .. })));
        let mut wrong_codec = small.clone();
        wrong_codec[5] = 7;
        assert!(matches!(decode::<AllocsRequest>(&wrong_codec), Err(MessageError::UnknownCodec(7))));
        // An announced length past the limit is refused before allocating.
        let mut huge = large.clone();
        huge[MESSAGE_HEADER_LEN..MESSAGE_HEADER_LEN + LZ4_LEN_BYTES].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode::<RegisterRequest>(&huge), Err(MessageError::TooLarge { .. })));
        // Every truncation and every single-byte corruption, plain or
        // compressed, decodes to an error or some value, never a panic.
        for good in [&small, &large] {
            for len in 0..good.len() {
                let _ = decode::<RegisterRequest>(&good[..len]);
            }
            for at in MESSAGE_HEADER_LEN..good.len() {
                let mut flipped = good.clone();
                flipped[at] ^= 0xff;
                let _ = decode::<RegisterRequest>(&flipped);
            }
        }
        // A message of one type read as another fails validation.
        assert!(decode::<AllocUpdateRequest>(&large).is_err());
    }
}
