//! Consistent reads on any server. Nomad forwards a read without `?stale`
//! to the leader; Caravan asks the leader only for the index its state has
//! applied (one small RPC), waits until this server's own state reaches
//! it, and answers from here. Every write the leader acknowledged before
//! the read began is then visible, as with forwarding, while the read
//! itself (blocking queries included) stays on the server that got it.

use std::net::SocketAddr;
use std::time::Duration;

use caravan_engine::state::{Cancel, StateStore};

use super::handle::RaftHandle;
use super::rpc_methods::{NOT_LEADER, READ_INDEX};
use crate::rpc::{BlockingRpcClient, RpcError};

/// How long a read waits for the leader's answer and then for this
/// server to apply up to it: a healthy follower is milliseconds behind,
/// one installing a snapshot may not be, and the reader should hear so.
pub const READ_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a consistent read cannot be served here now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadSyncError {
    /// Nomad's text for the same condition.
    #[error("No cluster leader")]
    NoLeader,
    #[error("asking the leader for its applied index: {0}")]
    Leader(String),
    #[error("this server has not applied the leader's index {index} within {timeout:?}; retry, or read with ?stale")]
    Behind { index: u64, timeout: Duration },
}

/// Return once `store` holds every write the leader had applied when this
/// was called. Immediate on the leader itself.
pub fn sync_with_leader(
    raft: &RaftHandle,
    rpc: &BlockingRpcClient,
    store: &StateStore,
    timeout: Duration,
) -> Result<(), ReadSyncError> {
    let view = raft.view();
    if view.is_leader() {
        return Ok(());
    }
    let (_, leader) = view.leader_node().ok_or(ReadSyncError::NoLeader)?;
    let addr: SocketAddr =
        leader.rpc_addr.parse().map_err(|_| ReadSyncError::Leader(format!("bad address {:?}", leader.rpc_addr)))?;
    let reply = rpc.call(addr, READ_INDEX, Vec::new(), timeout).map_err(|e| match e {
        RpcError::Remote(ref remote) if remote.code == NOT_LEADER => ReadSyncError::NoLeader,
        other => ReadSyncError::Leader(other.to_string()),
    })?;
    let index =
        decode_index(&reply).ok_or_else(|| ReadSyncError::Leader(format!("{} bytes, not an index", reply.len())))?;
    store.snapshot_min_index(index, timeout, &Cancel::new()).map_err(|_| ReadSyncError::Behind { index, timeout })?;
    Ok(())
}

pub(crate) fn encode_index(index: u64) -> Vec<u8> {
    index.to_le_bytes().to_vec()
}

fn decode_index(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
