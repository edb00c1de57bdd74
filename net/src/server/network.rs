//! openraft's network over Caravan's QUIC RPC: one [`RpcClient`] per
//! server (one connection per peer, a stream per call), raft messages
//! encoded by [`super::raft_messages`]. Snapshots travel as the snapshot
//! file itself, in chunks, and are re-assembled and verified by the
//! receiver before raft installs them.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotOf, VoteOf};

use super::raft_messages::{self as msg, Writer};
use super::rpc_methods as method;
use crate::raft::{ServerNode, SnapshotFile, TypeConfig};
use crate::rpc::{RpcClient, RpcError};

/// Snapshot bytes per RPC: well under the frame limit (16 MiB) so a chunk
/// never needs a second frame, large enough that a GiB snapshot is a few
/// hundred calls.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// How long one snapshot chunk may take: the chunk, plus the verification
/// and install work the last one triggers on the receiver.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates one [`PeerNetwork`] per replication target.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) client: Rc<RpcClient>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &ServerNode) -> PeerNetwork {
        PeerNetwork { client: self.client.clone(), target, addr: node.rpc_addr.parse().ok(), node: node.clone() }
    }
}

#[derive(Debug)]
pub(crate) struct PeerNetwork {
    client: Rc<RpcClient>,
    target: u64,
    node: ServerNode,
    /// None when the membership holds an address that does not parse.
    addr: Option<SocketAddr>,
}

impl PeerNetwork {
    async fn call(&self, method: u16, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RPCError<TypeConfig>> {
        let Some(addr) = self.addr else {
            let e =
                std::io::Error::other(format!("server {} has a bad rpc address {:?}", self.target, self.node.rpc_addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        self.client.call(addr, method, body, timeout).await.map_err(|e| match e {
            // Not reachable now: openraft backs off before retrying.
            RpcError::Unreachable { .. } | RpcError::Timeout { .. } | RpcError::ConnectionLost { .. } => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            other => RPCError::Network(NetworkError::new(&other)),
        })
    }
}

/// Largest append-entries body sent at once: the RPC frame limit less room
/// for the frame header and the request's fixed fields.
const APPEND_BODY_BYTES_MAX: usize = crate::rpc::frame::BODY_LEN_MAX - 64 * 1024;

fn decode_failed(e: msg::MessageError) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (body, sent) = msg::encode_append(&rpc, APPEND_BODY_BYTES_MAX).map_err(decode_failed)?;
        let reply = self.call(method::RAFT_APPEND, body, option.hard_ttl()).await?;
        let response = msg::decode_append_response(&reply).map_err(decode_failed)?;
        // The follower took the entries we sent; the rest go next time.
        Ok(match response {
            AppendEntriesResponse::Success if sent < rpc.entries.len() => {
                AppendEntriesResponse::PartialSuccess(Some(rpc.entries[sent - 1].log_id))
            }
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let reply = self.call(method::RAFT_VOTE, msg::encode_vote_request(&rpc), option.hard_ttl()).await?;
        msg::decode_vote_response(&reply).map_err(decode_failed)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
        };
        let transfer_id = fastrand::u64(..);
        let mut file = snapshot.snapshot.into_file();
        let mut cancel = std::pin::pin!(cancel);
        let mut offset = 0u64;
        let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        loop {
            // The file is local and the chunk small; reading it inline is
            // cheaper than a hop to the blocking pool.
            let n = read_full(&mut file, &mut chunk).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            let done = n < chunk.len();
            let mut w = Writer::default();
            w.u64(transfer_id);
            w.u64(offset);
            w.u8(u8::from(done));
            w.bytes(&msg::encode_vote_only(&vote));
            w.bytes(&chunk[..n]);
            let call = std::pin::pin!(self.call(method::RAFT_SNAPSHOT_CHUNK, w.out, SNAPSHOT_CHUNK_TIMEOUT));
            let reply = futures_util::future::select(call, cancel.as_mut()).await;
            let reply = match reply {
                futures_util::future::Either::Left((reply, _)) => reply.map_err(streaming)?,
                futures_util::future::Either::Right((closed, _)) => return Err(StreamingError::Closed(closed)),
            };
            offset += n as u64;
            if done {
                return msg::decode_snapshot_response(&reply)
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e)));
            }
        }
    }
}

/// Fill `buf` as far as the file allows; fewer bytes only at its end.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
