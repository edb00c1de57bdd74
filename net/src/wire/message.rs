//! RPC message bodies: one rkyv archive, validated on decode. No header or
//! checksum of its own: a message travels inside one RPC frame on a TLS
//! stream, which already delimits and authenticates it.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::WireError;

pub fn encode_message<T>(value: &T) -> Result<Vec<u8>, WireError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    Ok(rkyv::to_bytes::<rancor::Error>(value).map_err(WireError::Encode)?.into_vec())
}

pub fn decode_message<T>(bytes: &[u8]) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    // rkyv reads in place and needs alignment; a frame body sits anywhere.
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(WireError::Malformed)
}
