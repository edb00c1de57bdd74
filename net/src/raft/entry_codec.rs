//! Caravan's own binary encoding of what the raft log stores: entries,
//! votes and log ids, each as one self-checking record.
//!
//! Why not serde: the log is read back after crashes, by later versions,
//! and a torn or flipped record must be told apart from a valid one. So
//! every record is `[tag u8][version u8][body][crc32 u32 LE]`, where the
//! crc covers tag, version and body; the tag keeps a vote from being read
//! as an entry. Integers are little-endian and fixed-width, byte strings
//! are `u32` length-prefixed. Decoding checks the crc first, then every
//! length against both the bytes left and a named bound, and never panics.
//!
//! Entry body: `term u64, leader node u64, index u64, kind u8` then for
//! `Normal` the payload bytes, for `Membership` the joint config (`u32`
//! count of configs, each a `u32` count of `u64` voter ids) and the node
//! map (`u32` count of `u64` id, rpc_addr, http_addr, name).
//!
//! ```
//! use caravan_net::raft::entry_codec::{decode_entry, encode_entry, LogEntry, LogId};
//! use caravan_net::raft::LogPayload;
//! use openraft::impls::leader_id_adv::LeaderId;
//! use openraft::EntryPayload;
//!
//! let entry = LogEntry {
//!     log_id: LogId::new(LeaderId { term: 2, node_id: 1 }, 7),
//!     payload: EntryPayload::Normal(LogPayload { bytes: b"cmd".to_vec() }),
//! };
//! let mut record = Vec::new();
//! encode_entry(&entry, &mut record).unwrap();
//! assert_eq!(decode_entry(&record).unwrap(), entry);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use openraft::impls::leader_id_adv::LeaderId;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{EntryPayload, Membership};

use super::types::{LogPayload, ServerNode, TypeConfig};

/// One raft log entry of Caravan's type configuration.
pub type LogEntry = EntryOf<TypeConfig>;
/// A log id: (term, leader node id) and index.
pub type LogId = LogIdOf<TypeConfig>;
/// A vote: (term, candidate node id) and whether it is committed.
pub type Vote = VoteOf<TypeConfig>;
/// A cluster membership: joint config of voter ids plus every node's address.
pub type ClusterMembership = Membership<u64, ServerNode>;

/// Largest payload a stored entry may carry. A payload is one batch of
/// engine commands, which the leader's batcher keeps far smaller; a length
/// over this in a stored record means corruption, and the bound keeps a
/// bad length from turning into a huge allocation on encode or decode.
pub const ENTRY_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most configs in a joint membership. openraft's joint consensus holds at
/// most two (old and new); four leaves headroom without letting a corrupt
/// count allocate.
pub const MEMBERSHIP_CONFIGS_MAX: usize = 4;
/// Most nodes (voters and learners) in one membership. Caravan runs 3 to 7
/// servers plus a few learners; 1024 is far above that and still bounds
/// what a corrupt count can allocate.
pub const MEMBERSHIP_NODES_MAX: usize = 1024;
/// Longest address or server name stored for a node. Host names are at
/// most 253 bytes; 4 KiB bounds a corrupt length.
pub const NODE_STRING_BYTES_MAX: usize = 4096;

/// Record tag of a log entry.
const TAG_ENTRY: u8 = b'E';
/// Record tag of a vote.
const TAG_VOTE: u8 = b'V';
/// Record tag of a bare log id (the committed index, the last purged id).
const TAG_LOG_ID: u8 = b'L';
/// Format version of every record kind; bumped when a layout changes so
/// old records are still read by the decoder of their version.
const RECORD_VERSION: u8 = 1;
/// Bytes of the crc32 that ends every record.
const CRC_BYTES: usize = 4;
/// Bytes of tag + version that start every record.
const HEAD_BYTES: usize = 2;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Why bytes could not be encoded or decoded as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort { len: usize, min: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("record tag {found:#04x}, expected {expected:#04x}")]
    Tag { found: u8, expected: u8 },
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown entry payload kind {0}")]
    PayloadKind(u8),
    #[error("invalid {what} tag {tag}")]
    BadTag { what: &'static str, tag: u8 },
    #[error("record truncated: {what} needs {needed} bytes at offset {offset}, {left} left")]
    Truncated { what: &'static str, needed: usize, offset: usize, left: usize },
    #[error("{what} is {len}, over the bound of {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what} is not valid UTF-8")]
    Utf8 { what: &'static str },
    #[error("{0} unexpected bytes after the record body")]
    Trailing(usize),
    #[error("invalid membership: {0}")]
    Membership(String),
}

/// Appends one entry record to `out` (which the caller may reuse).
pub fn encode_entry(entry: &LogEntry, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.push(TAG_ENTRY);
    out.push(RECORD_VERSION);
    put_log_id(out, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(payload) => {
            out.push(KIND_NORMAL);
            put_bytes(out, "payload", &payload.bytes, ENTRY_PAYLOAD_BYTES_MAX)?;
        }
        EntryPayload::Membership(membership) => {
            out.push(KIND_MEMBERSHIP);
            put_membership(out, membership)?;
        }
    }
    seal(out, start);
    Ok(())
}

/// Decodes one entry record, checksum first.
pub fn decode_entry(record: &[u8]) -> Result<LogEntry, CodecError> {
    let mut reader = Reader::open(record, TAG_ENTRY)?;
    let log_id = reader.log_id()?;
    let payload = match reader.u8("payload kind")? {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => {
            EntryPayload::Normal(LogPayload { bytes: reader.bytes("payload", ENTRY_PAYLOAD_BYTES_MAX)?.to_vec() })
        }
        KIND_MEMBERSHIP => EntryPayload::Membership(reader.membership()?),
        kind => return Err(CodecError::PayloadKind(kind)),
    };
    reader.finish()?;
    Ok(LogEntry { log_id, payload })
}

/// The log id of an entry record, checksum verified, body not decoded:
/// what the log's tail scan and `get_log_state` need.
pub fn decode_entry_log_id(record: &[u8]) -> Result<LogId, CodecError> {
    Reader::open(record, TAG_ENTRY)?.log_id()
}

/// Encodes a vote as one record.
pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_BYTES + 17 + CRC_BYTES);
    out.push(TAG_VOTE);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&vote.leader_id.term.to_le_bytes());
    out.extend_from_slice(&vote.leader_id.node_id.to_le_bytes());
    out.push(u8::from(vote.committed));
    seal(&mut out, 0);
    out
}

/// Decodes a vote record.
pub fn decode_vote(record: &[u8]) -> Result<Vote, CodecError> {
    let mut reader = Reader::open(record, TAG_VOTE)?;
    let term = reader.u64("vote term")?;
    let node_id = reader.u64("vote node id")?;
    let committed = reader.bool("vote committed")?;
    reader.finish()?;
    Ok(Vote { leader_id: LeaderId { term, node_id }, committed })
}

/// Encodes a bare log id as one record.
pub fn encode_log_id(log_id: &LogId) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_BYTES + 24 + CRC_BYTES);
    out.push(TAG_LOG_ID);
    out.push(RECORD_VERSION);
    put_log_id(&mut out, log_id);
    seal(&mut out, 0);
    out
}

/// Decodes a bare log id record.
pub fn decode_log_id(record: &[u8]) -> Result<LogId, CodecError> {
    let mut reader = Reader::open(record, TAG_LOG_ID)?;
    let log_id = reader.log_id()?;
    reader.finish()?;
    Ok(log_id)
}

/// Appends the crc32 of `out[start..]` to `out`.
fn seal(out: &mut Vec<u8>, start: usize) {
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

pub(crate) fn put_log_id(out: &mut Vec<u8>, log_id: &LogId) {
    out.extend_from_slice(&log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&log_id.index.to_le_bytes());
}

pub(crate) fn put_option_log_id(out: &mut Vec<u8>, log_id: Option<&LogId>) {
    match log_id {
        None => out.push(0),
        Some(log_id) => {
            out.push(1);
            put_log_id(out, log_id);
        }
    }
}

/// Appends `u32` length then `bytes`, refusing lengths over `max`.
pub(crate) fn put_bytes(out: &mut Vec<u8>, what: &'static str, bytes: &[u8], max: usize) -> Result<(), CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge { what, len: bytes.len(), max });
    }
    // The bounds above are all below u32::MAX, so the length fits.
    let len = u32::try_from(bytes.len()).map_err(|_| CodecError::TooLarge { what, len: bytes.len(), max })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_count(out: &mut Vec<u8>, what: &'static str, count: usize, max: usize) -> Result<(), CodecError> {
    if count > max {
        return Err(CodecError::TooLarge { what, len: count, max });
    }
    let count = u32::try_from(count).map_err(|_| CodecError::TooLarge { what, len: count, max })?;
    out.extend_from_slice(&count.to_le_bytes());
    Ok(())
}

pub(crate) fn put_membership(out: &mut Vec<u8>, membership: &ClusterMembership) -> Result<(), CodecError> {
    let configs = membership.get_joint_config();
    put_count(out, "membership configs", configs.len(), MEMBERSHIP_CONFIGS_MAX)?;
    for config in configs {
        put_count(out, "config voters", config.len(), MEMBERSHIP_NODES_MAX)?;
        for voter in config {
            out.extend_from_slice(&voter.to_le_bytes());
        }
    }
    let nodes: Vec<(&u64, &ServerNode)> = membership.nodes().collect();
    put_count(out, "membership nodes", nodes.len(), MEMBERSHIP_NODES_MAX)?;
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_le_bytes());
        put_bytes(out, "node rpc_addr", node.rpc_addr.as_bytes(), NODE_STRING_BYTES_MAX)?;
        put_bytes(out, "node http_addr", node.http_addr.as_bytes(), NODE_STRING_BYTES_MAX)?;
        put_bytes(out, "node name", node.name.as_bytes(), NODE_STRING_BYTES_MAX)?;
    }
    Ok(())
}

/// A bounds-checked cursor over a record body; every read returns an
/// error instead of indexing past the end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// Checks the trailing crc, tag and version of `record` and returns a
    /// reader over its body.
    fn open(record: &'a [u8], tag: u8) -> Result<Self, CodecError> {
        let min = HEAD_BYTES + CRC_BYTES;
        if record.len() < min {
            return Err(CodecError::TooShort { len: record.len(), min });
        }
        let (covered, crc_bytes) = record.split_at(record.len() - CRC_BYTES);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(CodecError::Checksum { stored, computed });
        }
        if covered[0] != tag {
            return Err(CodecError::Tag { found: covered[0], expected: tag });
        }
        if covered[1] != RECORD_VERSION {
            return Err(CodecError::Version(covered[1]));
        }
        Ok(Reader { bytes: covered, offset: HEAD_BYTES })
    }

    /// A reader over bytes whose integrity the caller checked (the
    /// snapshot header, covered by the file's own checksum).
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }

    fn take(&mut self, what: &'static str, needed: usize) -> Result<&'a [u8], CodecError> {
        let left = self.bytes.len() - self.offset;
        if needed > left {
            return Err(CodecError::Truncated { what, needed, offset: self.offset, left });
        }
        let slice = &self.bytes[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(what, 1)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(CodecError::BadTag { what, tag }),
        }
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(what, 4)?);
        Ok(u32::from_le_bytes(raw))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(what, 8)?);
        Ok(u64::from_le_bytes(raw))
    }

    /// A `u32` count, refused over `max` before anything is allocated.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, CodecError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(CodecError::TooLarge { what, len: count, max });
        }
        Ok(count)
    }

    pub(crate) fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], CodecError> {
        let len = self.count(what, max)?;
        self.take(what, len)
    }

    pub(crate) fn string(&mut self, what: &'static str, max: usize) -> Result<String, CodecError> {
        let bytes = self.bytes(what, max)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Utf8 { what })
    }

    pub(crate) fn log_id(&mut self) -> Result<LogId, CodecError> {
        let term = self.u64("log id term")?;
        let node_id = self.u64("log id node")?;
        let index = self.u64("log id index")?;
        Ok(LogId::new(LeaderId { term, node_id }, index))
    }

    pub(crate) fn option_log_id(&mut self) -> Result<Option<LogId>, CodecError> {
        if self.bool("log id presence")? { Ok(Some(self.log_id()?)) } else { Ok(None) }
    }

    pub(crate) fn membership(&mut self) -> Result<ClusterMembership, CodecError> {
        let config_count = self.count("membership configs", MEMBERSHIP_CONFIGS_MAX)?;
        let mut configs = Vec::with_capacity(config_count);
        for _ in 0..config_count {
            let voter_count = self.count("config voters", MEMBERSHIP_NODES_MAX)?;
            let mut voters = BTreeSet::new();
            for _ in 0..voter_count {
                voters.insert(self.u64("voter id")?);
            }
            configs.push(voters);
        }
        let node_count = self.count("membership nodes", MEMBERSHIP_NODES_MAX)?;
        let mut nodes = BTreeMap::new();
        for _ in 0..node_count {
            let id = self.u64("node id")?;
            let node = ServerNode {
                rpc_addr: self.string("node rpc_addr", NODE_STRING_BYTES_MAX)?,
                http_addr: self.string("node http_addr", NODE_STRING_BYTES_MAX)?,
                name: self.string("node name", NODE_STRING_BYTES_MAX)?,
            };
            nodes.insert(id, node);
        }
        ClusterMembership::new(configs, nodes).map_err(|err| CodecError::Membership(err.to_string()))
    }

    /// Ends decoding: every body byte must have been consumed.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        let left = self.bytes.len() - self.offset;
        if left != 0 {
            return Err(CodecError::Trailing(left));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id }, index)
    }

    fn membership() -> ClusterMembership {
        let node = |name: &str| ServerNode {
            rpc_addr: format!("{name}:4647"),
            http_addr: format!("{name}:4646"),
            name: name.to_string(),
        };
        let nodes = BTreeMap::from([(1, node("a")), (2, node("b")), (3, node("c")), (9, node("learner"))]);
        ClusterMembership::new(vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])], nodes).unwrap()
    }

    fn entries() -> Vec<LogEntry> {
        vec![
            LogEntry { log_id: log_id(1, 2, 3), payload: EntryPayload::Blank },
            LogEntry { log_id: log_id(4, 5, 6), payload: EntryPayload::Normal(LogPayload { bytes: vec![7; 300] }) },
            LogEntry { log_id: log_id(7, 8, 9), payload: EntryPayload::Normal(LogPayload::default()) },
            LogEntry { log_id: log_id(u64::MAX, 0, 10), payload: EntryPayload::Membership(membership()) },
            LogEntry { log_id: log_id(1, 1, 11), payload: EntryPayload::Membership(ClusterMembership::default()) },
        ]
    }

    #[test]
    fn entries_round_trip() {
        for entry in entries() {
            let mut record = Vec::new();
            encode_entry(&entry, &mut record).unwrap();
            assert_eq!(decode_entry(&record).unwrap(), entry);
            assert_eq!(decode_entry_log_id(&record).unwrap(), entry.log_id);
        }
    }

    #[test]
    fn votes_and_log_ids_round_trip() {
        for vote in [Vote::new(3, 4), Vote::new_committed(5, 6)] {
            assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        }
        let id = log_id(9, 8, 7);
        assert_eq!(decode_log_id(&encode_log_id(&id)).unwrap(), id);
        // A vote record is not a log id record, even with a valid crc.
        assert!(matches!(decode_log_id(&encode_vote(&Vote::new(1, 1))), Err(CodecError::Tag { .. })));
    }

    /// Every single-bit flip and every truncation of every record is an
    /// error, never a panic and never a different value.
    #[test]
    fn corruption_is_detected() {
        for entry in entries() {
            let mut record = Vec::new();
            encode_entry(&entry, &mut record).unwrap();
            for len in 0..record.len() {
                assert!(decode_entry(&record[..len]).is_err(), "truncated to {len}");
            }
            for byte in 0..record.len() {
                for bit in 0..8 {
                    let mut flipped = record.clone();
                    flipped[byte] ^= 1 << bit;
                    assert!(decode_entry(&flipped).is_err(), "flip byte {byte} bit {bit}");
                }
            }
        }
    }

    /// Bytes with a valid crc but a malformed body (as a buggy writer
    /// could produce) are refused with an error, not a panic.
    #[test]
    fn malformed_bodies_with_valid_crc_are_errors() {
        let sealed = |body: &[u8]| {
            let mut out = vec![TAG_ENTRY, RECORD_VERSION];
            out.extend_from_slice(body);
            seal(&mut out, 0);
            out
        };
        let mut header = Vec::new();
        put_log_id(&mut header, &log_id(1, 1, 1));
        let with = |tail: &[u8]| {
            let mut body = header.clone();
            body.extend_from_slice(tail);
            sealed(&body)
        };
        assert!(matches!(decode_entry(&with(&[9])), Err(CodecError::PayloadKind(9))));
        assert!(matches!(decode_entry(&with(&[KIND_NORMAL, 255, 255, 255, 255])), Err(CodecError::TooLarge { .. })));
        assert!(matches!(decode_entry(&with(&[KIND_NORMAL, 5, 0, 0, 0, 1])), Err(CodecError::Truncated { .. })));
        assert!(matches!(decode_entry(&with(&[KIND_BLANK, 0])), Err(CodecError::Trailing(1))));
        // A voter with no node entry is not a valid membership.
        let mut voter_without_node = vec![KIND_MEMBERSHIP, 1, 0, 0, 0, 1, 0, 0, 0];
        voter_without_node.extend_from_slice(&5u64.to_le_bytes());
        voter_without_node.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(decode_entry(&with(&voter_without_node)), Err(CodecError::Membership(_))));
        assert!(matches!(decode_entry(&sealed(&[])), Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn oversized_payload_is_refused_on_encode() {
        let entry = LogEntry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Normal(LogPayload { bytes: vec![0; ENTRY_PAYLOAD_BYTES_MAX + 1] }),
        };
        assert!(matches!(encode_entry(&entry, &mut Vec::new()), Err(CodecError::TooLarge { .. })));
    }
}
