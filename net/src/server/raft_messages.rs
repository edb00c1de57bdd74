//! Raft's messages on the wire between servers: append entries, votes and
//! snapshot chunks, as sequences of length-prefixed records. Each entry,
//! vote and log id is the log's own self-checking record (see
//! `raft::entry_codec`), so a message is checked the way the log is.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use crate::raft::TypeConfig;
use crate::raft::entry_codec::{
    CodecError, LogEntry, LogId, Vote, decode_entry, decode_log_id, decode_vote, encode_entry, encode_log_id,
    encode_vote,
};

/// Most entries one append message may carry; openraft sends at most
/// `max_payload_entries` (300 by default), so more is a bad message.
const ENTRIES_PER_MESSAGE_MAX: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MessageError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("message truncated reading {0}")]
    Truncated(&'static str),
    #[error("bad {what} tag {tag}")]
    BadTag { what: &'static str, tag: u8 },
    #[error("{what}: {count} is over the limit of {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Writes records and fixed-width fields.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        // Every message is far below 4 GiB (frames are bounded well under it).
        self.out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.out.extend_from_slice(bytes);
    }

    fn vote(&mut self, vote: &Vote) {
        self.bytes(&encode_vote(vote));
    }

    fn log_id(&mut self, log_id: Option<&LogId>) {
        match log_id {
            None => self.u8(0),
            Some(id) => {
                self.u8(1);
                self.bytes(&encode_log_id(id));
            }
        }
    }
}

/// Reads what [`Writer`] wrote, bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], MessageError> {
        if self.bytes.len() < n {
            return Err(MessageError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, MessageError> {
        Ok(self.take(what, 1)?[0])
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, MessageError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(what, 8)?);
        Ok(u64::from_le_bytes(raw))
    }

    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], MessageError> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(what, 4)?);
        let len = u32::from_le_bytes(raw) as usize;
        self.take(what, len)
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, MessageError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(MessageError::BadTag { what, tag }),
        }
    }

    fn vote(&mut self) -> Result<Vote, MessageError> {
        Ok(decode_vote(self.bytes("vote")?)?)
    }

    fn log_id(&mut self, what: &'static str) -> Result<Option<LogId>, MessageError> {
        if self.bool(what)? { Ok(Some(decode_log_id(self.bytes(what)?)?)) } else { Ok(None) }
    }

    pub(crate) fn finish(self) -> Result<(), MessageError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(MessageError::Trailing(self.bytes.len())) }
    }
}

/// Encode an append-entries request with as many of its entries, in
/// order, as fit in `body_bytes_max` (at least one, so an entry is never
/// held back by the bound alone); returns the body and how many entries it
/// carries. openraft sends up to 300 entries at once and a plan entry can
/// be MBs, so a lagging follower's batch would otherwise outgrow the RPC
/// frame; the caller reports the rest as not yet sent.
pub(crate) fn encode_append(
    req: &AppendEntriesRequest<TypeConfig>,
    body_bytes_max: usize,
) -> Result<(Vec<u8>, usize), MessageError> {
    let mut w = Writer::default();
    w.vote(&req.vote);
    w.log_id(req.prev_log_id.as_ref());
    w.log_id(req.leader_commit.as_ref());
    let count_at = w.out.len();
    w.u64(0);
    let mut record = Vec::new();
    let mut sent = 0;
    for entry in &req.entries {
        record.clear();
        encode_entry(entry, &mut record)?;
        if sent > 0 && w.out.len() + 4 + record.len() > body_bytes_max {
            break;
        }
        w.bytes(&record);
        sent += 1;
    }
    w.out[count_at..count_at + 8].copy_from_slice(&(sent as u64).to_le_bytes());
    Ok((w.out, sent))
}

pub(crate) fn decode_append(bytes: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, MessageError> {
    let mut r = Reader::new(bytes);
    let vote = r.vote()?;
    let prev_log_id = r.log_id("prev_log_id")?;
    let leader_commit = r.log_id("leader_commit")?;
    let count = r.u64("entry count")? as usize;
    if count > ENTRIES_PER_MESSAGE_MAX {
        return Err(MessageError::TooMany { what: "entries", count, max: ENTRIES_PER_MESSAGE_MAX });
    }
    let mut entries: Vec<LogEntry> = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        entries.push(decode_entry(r.bytes("entry")?)?);
    }
    r.finish()?;
    Ok(AppendEntriesRequest { vote, prev_log_id, leader_commit, entries })
}

pub(crate) fn encode_append_response(resp: &AppendEntriesResponse<TypeConfig>) -> Vec<u8> {
    let mut w = Writer::default();
    match resp {
        AppendEntriesResponse::Success => w.u8(0),
        AppendEntriesResponse::PartialSuccess(id) => {
            w.u8(1);
            w.log_id(id.as_ref());
        }
        AppendEntriesResponse::Conflict => w.u8(2),
        AppendEntriesResponse::HigherVote(vote) => {
            w.u8(3);
            w.vote(vote);
        }
    }
    w.out
}

pub(crate) fn decode_append_response(bytes: &[u8]) -> Result<AppendEntriesResponse<TypeConfig>, MessageError> {
    let mut r = Reader::new(bytes);
    let resp = match r.u8("append response")? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(r.log_id("partial success")?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(r.vote()?),
        tag => return Err(MessageError::BadTag { what: "append response", tag }),
    };
    r.finish()?;
    Ok(resp)
}

pub(crate) fn encode_vote_request(req: &VoteRequest<TypeConfig>) -> Vec<u8> {
    let mut w = Writer::default();
    w.vote(&req.vote);
    w.log_id(req.last_log_id.as_ref());
    w.u8(u8::from(req.leadership_transfer));
    w.out
}

pub(crate) fn decode_vote_request(bytes: &[u8]) -> Result<VoteRequest<TypeConfig>, MessageError> {
    let mut r = Reader::new(bytes);
    let vote = r.vote()?;
    let last_log_id = r.log_id("last_log_id")?;
    let leadership_transfer = r.bool("leadership_transfer")?;
    r.finish()?;
    Ok(VoteRequest { vote, last_log_id, leadership_transfer })
}

pub(crate) fn encode_vote_response(resp: &VoteResponse<TypeConfig>) -> Vec<u8> {
    let mut w = Writer::default();
    w.vote(&resp.vote);
    w.u8(u8::from(resp.vote_granted));
    w.log_id(resp.last_log_id.as_ref());
    w.out
}

pub(crate) fn decode_vote_response(bytes: &[u8]) -> Result<VoteResponse<TypeConfig>, MessageError> {
    let mut r = Reader::new(bytes);
    let vote = r.vote()?;
    let vote_granted = r.bool("vote_granted")?;
    let last_log_id = r.log_id("last_log_id")?;
    r.finish()?;
    Ok(VoteResponse { vote, vote_granted, last_log_id })
}

pub(crate) fn encode_snapshot_response(resp: &SnapshotResponse<TypeConfig>) -> Vec<u8> {
    let mut w = Writer::default();
    w.vote(&resp.vote);
    w.out
}

pub(crate) fn decode_snapshot_response(bytes: &[u8]) -> Result<SnapshotResponse<TypeConfig>, MessageError> {
    let mut r = Reader::new(bytes);
    let vote = r.vote()?;
    r.finish()?;
    Ok(SnapshotResponse { vote })
}

pub(crate) fn encode_vote_only(vote: &Vote) -> Vec<u8> {
    let mut w = Writer::default();
    w.vote(vote);
    w.out
}

pub(crate) fn decode_vote_only(r: &mut Reader<'_>) -> Result<Vote, MessageError> {
    r.vote()
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::raft::LogPayload;
    use crate::raft::entry_codec::{LogEntry, LogId};

    fn request(entry_bytes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let leader = LeaderId { term: 2, node_id: 1 };
        let entries = entry_bytes
            .iter()
            .enumerate()
            .map(|(i, len)| LogEntry {
                log_id: LogId::new(leader, 10 + i as u64),
                payload: EntryPayload::Normal(LogPayload { bytes: vec![7; *len] }),
            })
            .collect();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(2, 1),
            prev_log_id: Some(LogId::new(leader, 9)),
            leader_commit: Some(LogId::new(leader, 9)),
            entries,
        }
    }

    #[test]
    fn append_bodies_stop_at_the_bound_and_say_how_many_entries_they_carry() {
        let req = request(&[1000, 1000, 1000]);
        let (all, sent) = encode_append(&req, usize::MAX).unwrap();
        assert_eq!(sent, 3);
        assert_eq!(decode_append(&all).unwrap().entries.len(), 3);

        // Room for two entries, not three: the body carries the first two.
        let (two, sent) = encode_append(&req, all.len() - 500).unwrap();
        assert_eq!(sent, 2);
        assert!(two.len() <= all.len() - 500);
        let decoded = decode_append(&two).unwrap();
        assert_eq!(decoded.entries.len(), 2);
        assert_eq!(decoded.entries[1].log_id, req.entries[1].log_id);

        // An entry larger than the bound alone is still sent, by itself.
        let (one, sent) = encode_append(&request(&[5000, 10]), 100).unwrap();
        assert_eq!(sent, 1);
        assert_eq!(decode_append(&one).unwrap().entries.len(), 1);
    }
}
