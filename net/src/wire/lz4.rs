//! lz4 blocks around rkyv archives, shared by the raft entry codec and the
//! client message codec: compress only where it shrinks, and inflate into
//! the aligned memory rkyv reads from, exactly as long as announced.
//! Callers bound the announced length before calling [`inflate`].

use rkyv::util::AlignedVec;

/// `archive` as an lz4 block, where the block plus `overhead` (what the
/// caller writes only for a compressed body) is shorter than the archive.
pub(crate) fn shrink(archive: &[u8], overhead: usize) -> Option<Vec<u8>> {
    Some(lz4_flex::block::compress(archive)).filter(|block| block.len() + overhead < archive.len())
}

/// Why a block did not inflate to its announced archive.
#[derive(Debug)]
pub(crate) enum InflateError {
    /// Not a valid lz4 block, or one longer than announced.
    Block(lz4_flex::block::DecompressError),
    /// A valid block, shorter than announced.
    Short { inflated: usize },
}

/// `block` inflated into aligned memory of exactly `archive_len` bytes.
pub(crate) fn inflate(block: &[u8], archive_len: usize) -> Result<AlignedVec<16>, InflateError> {
    let mut aligned = AlignedVec::<16>::with_capacity(archive_len);
    aligned.resize(archive_len, 0);
    let inflated = lz4_flex::block::decompress_into(block, &mut aligned).map_err(InflateError::Block)?;
    if inflated != archive_len {
        return Err(InflateError::Short { inflated });
    }
    Ok(aligned)
}
