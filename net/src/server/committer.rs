//! Engine writes through raft: a command is encoded into one log entry and
//! proposed; on a follower it is forwarded to the leader (as Nomad forwards
//! write RPCs). The call returns once the entry is applied on the server
//! that proposed it.

use std::sync::Arc;
use std::time::Duration;

use caravan_engine::fsm::Command;
use caravan_engine::plan::{CommitError, Committer};

use super::handle::{RaftHandle, WriteError};
use crate::raft::{ApplyReply, LogPayload, ServerNode};
use crate::wire;

/// How long one write may wait for raft: longer than an election (so a
/// write survives a leader change in flight) and short enough that a
/// cluster without quorum answers the caller with an error.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends an encoded entry to the leader and waits for its apply.
pub trait LeaderForwarder: Send + Sync + std::fmt::Debug {
    fn forward(&self, leader: &ServerNode, payload: LogPayload, timeout: Duration) -> Result<ApplyReply, WriteError>;
}

#[derive(Debug, Clone)]
pub struct RaftCommitter {
    pub(crate) raft: RaftHandle,
    pub(crate) forwarder: Option<Arc<dyn LeaderForwarder>>,
}

impl RaftCommitter {
    /// Propose an encoded entry here, or at the leader when this server is
    /// not it.
    pub fn propose(&self, payload: LogPayload) -> Result<ApplyReply, WriteError> {
        match self.raft.write(payload.clone(), WRITE_TIMEOUT) {
            Err(WriteError::NotLeader { leader: Some((_, node)) }) if self.forwarder.is_some() => {
                self.forwarder.as_ref().expect("checked").forward(&node, payload, WRITE_TIMEOUT)
            }
            other => other,
        }
    }
}

impl Committer for RaftCommitter {
    fn commit(&self, command: Command) -> Result<u64, CommitError> {
        self.commit_all(std::slice::from_ref(&command))
    }

    /// One log entry (one raft round trip). The error, if any, is the last
    /// failing command's; the others stay applied.
    fn commit_all(&self, commands: &[Command]) -> Result<u64, CommitError> {
        let bytes = wire::encode_commands(commands).map_err(|e| CommitError(e.to_string()))?;
        let payload = LogPayload { bytes };
        let reply = self.propose(payload).map_err(|e| CommitError(e.to_string()))?;
        match reply.error {
            None => Ok(reply.index),
            Some(e) => Err(CommitError(e)),
        }
    }
}
