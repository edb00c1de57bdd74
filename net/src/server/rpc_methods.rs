//! The server RPC methods on the QUIC endpoint, and their handler on the
//! raft thread: raft's own messages, writes forwarded by followers, and the
//! status/join calls that form and grow a cluster.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures_util::future::LocalBoxFuture;
use openraft::Raft;
use openraft::storage::Snapshot;
use openraft::type_config::async_runtime::WatchReceiver;

use caravan_engine::duties::DutiesLeader;

use super::client_rpc;
use super::client_thread::ClientRpcThread;
use super::engine_fsm::EngineFsm;
use super::handle::{LeaderContact, ViewCell};
use super::raft_messages::{self as msg, Reader, Writer};
use super::worker_rpc;
use crate::raft::snapshot_files::verify_snapshot;
use crate::raft::{ApplyReply, LogPayload, ServerNode, SnapshotFile, StateMachineStore, TypeConfig};
use crate::rpc::RpcHandler;
use crate::rpc::frame::{ErrorCode, RemoteError};

pub(crate) const RAFT_APPEND: u16 = 1;
pub(crate) const RAFT_VOTE: u16 = 2;
pub(crate) const RAFT_SNAPSHOT_CHUNK: u16 = 3;
/// A follower's write, proposed by the leader.
pub(crate) const FORWARD_WRITE: u16 = 10;
/// Who a server is and what it knows of the cluster.
pub(crate) const STATUS: u16 = 11;
/// Ask the leader to add a server as a voter.
pub(crate) const JOIN: u16 = 12;
/// Ask the leader for the index its state has applied: a follower serves a
/// consistent read once its own state has reached it (a read index).
pub(crate) const READ_INDEX: u16 = 13;

/// The server is not the leader; the message holds the leader's RPC
/// address when known (empty otherwise).
pub const NOT_LEADER: ErrorCode = ErrorCode(1001);
pub(crate) const RAFT_FAILED: ErrorCode = ErrorCode(1002);

/// Snapshot transfers received at once. A leader sends one per follower at
/// a time; two covers a new leader's transfer overlapping the old one's.
const INCOMING_SNAPSHOTS_MAX: usize = 2;

pub(crate) type ServerRaft = Raft<TypeConfig, StateMachineStore<EngineFsm>>;

/// A snapshot being received in chunks.
struct Incoming {
    path: PathBuf,
    file: File,
    next_offset: u64,
    started: Instant,
}

pub(crate) struct Handler {
    pub(crate) raft: Rc<RefCell<Option<ServerRaft>>>,
    pub(crate) me: RefCell<(u64, ServerNode)>,
    pub(crate) incoming_dir: PathBuf,
    incoming: RefCell<HashMap<u64, Incoming>>,
    /// This server's duties, for followers' workers (set once the server
    /// has started).
    pub(crate) services: Arc<OnceLock<Arc<DutiesLeader>>>,
    /// The client agents' methods ([`client_rpc::CLIENT_METHODS`]),
    /// answered on their own thread.
    client: ClientRpcThread,
    status: RaftStatus,
}

/// What the raft thread publishes about itself, shared with the handler.
pub(crate) struct RaftStatus {
    pub(crate) view: Arc<ViewCell>,
    /// Set on every AppendEntries accepted from a leader.
    pub(crate) contact: Arc<LeaderContact>,
}

impl Handler {
    pub(crate) fn new(
        raft: Rc<RefCell<Option<ServerRaft>>>,
        me: (u64, ServerNode),
        incoming_dir: PathBuf,
        services: Arc<OnceLock<Arc<DutiesLeader>>>,
        client: ClientRpcThread,
        status: RaftStatus,
    ) -> Handler {
        Handler {
            raft,
            me: RefCell::new(me),
            incoming_dir,
            incoming: RefCell::new(HashMap::new()),
            services,
            client,
            status,
        }
    }

    fn raft(&self) -> Result<ServerRaft, RemoteError> {
        self.raft.borrow().clone().ok_or_else(|| RemoteError::new(RAFT_FAILED, "raft is starting"))
    }

    async fn dispatch(&self, method: u16, body: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        let bad = |e: msg::MessageError| RemoteError::new(ErrorCode::BAD_FRAME, e.to_string());
        let failed = |e: &dyn std::fmt::Display| RemoteError::new(RAFT_FAILED, e.to_string());
        match method {
            RAFT_APPEND => {
                let req = msg::decode_append(&body).map_err(bad)?;
                let resp = self.raft()?.append_entries(req).await.map_err(|e| failed(&e))?;
                if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                    self.status.contact.heard_now();
                }
                Ok(msg::encode_append_response(&resp))
            }
            RAFT_VOTE => {
                let req = msg::decode_vote_request(&body).map_err(bad)?;
                let resp = self.raft()?.vote(req).await.map_err(|e| failed(&e))?;
                Ok(msg::encode_vote_response(&resp))
            }
            RAFT_SNAPSHOT_CHUNK => self.snapshot_chunk(&body).await,
            FORWARD_WRITE => {
                let raft = self.raft()?;
                match raft.client_write(LogPayload { bytes: body }).await {
                    Ok(resp) => Ok(encode_apply_reply(&resp.data)),
                    Err(e) => Err(match e.forward_to_leader() {
                        Some(fwd) => RemoteError::new(
                            NOT_LEADER,
                            fwd.leader_node.as_ref().map(|n| n.rpc_addr.clone()).unwrap_or_default(),
                        ),
                        None => failed(&e),
                    }),
                }
            }
            STATUS => {
                let raft = self.raft()?;
                let initialized = raft.is_initialized().await.map_err(|e| failed(&e))?;
                let metrics = raft.metrics().borrow_watched().clone();
                let leader = metrics
                    .current_leader
                    .and_then(|id| metrics.membership_config.membership().get_node(&id).map(|n| (id, n.clone())));
                let (id, node) = self.me.borrow().clone();
                Ok(encode_status(&Status { id, node, initialized, leader }))
            }
            READ_INDEX => {
                // Only a leader with a live lease answers: one cut off from
                // the majority may be behind a newer leader.
                let view = self.status.view.view_now();
                let store = self.services.get().map(|s| &s.store);
                match store {
                    Some(store) if view.is_leader() => Ok(super::read_index::encode_index(store.latest_index())),
                    _ => Err(RemoteError::new(
                        NOT_LEADER,
                        view.leader_node().map(|(_, n)| n.rpc_addr).unwrap_or_default(),
                    )),
                }
            }
            JOIN => {
                let mut r = Reader::new(&body);
                let id = r.u64("id").map_err(bad)?;
                let node = read_node(&mut r).map_err(bad)?;
                r.finish().map_err(bad)?;
                let raft = self.raft()?;
                let metrics = raft.metrics().borrow_watched().clone();
                if metrics.current_leader != Some(self.me.borrow().0) {
                    let leader = metrics
                        .current_leader
                        .and_then(|l| metrics.membership_config.membership().get_node(&l).map(|n| n.rpc_addr.clone()))
                        .unwrap_or_default();
                    return Err(RemoteError::new(NOT_LEADER, leader));
                }
                let voters: std::collections::BTreeSet<u64> =
                    metrics.membership_config.membership().voter_ids().collect();
                if !voters.contains(&id) {
                    raft.add_learner(id, node, true).await.map_err(|e| failed(&e))?;
                    let mut all = voters;
                    all.insert(id);
                    raft.change_membership(all, false).await.map_err(|e| failed(&e))?;
                }
                Ok(Vec::new())
            }
            worker_rpc::EVAL_DEQUEUE | worker_rpc::EVAL_ACK | worker_rpc::PLAN_SUBMIT => {
                worker_rpc::serve(&self.services, method, body).await
            }
            other => Err(RemoteError::unknown_method(other)),
        }
    }

    /// One chunk of a snapshot: chunks of one transfer arrive in order;
    /// the last one verifies the whole file and installs it.
    async fn snapshot_chunk(&self, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let bad = |e: msg::MessageError| RemoteError::new(ErrorCode::BAD_FRAME, e.to_string());
        let io = |e: std::io::Error| RemoteError::new(RAFT_FAILED, format!("receiving snapshot: {e}"));
        let mut r = Reader::new(body);
        let transfer = r.u64("transfer id").map_err(bad)?;
        let offset = r.u64("offset").map_err(bad)?;
        let done = r.bool("done").map_err(bad)?;
        let vote_bytes = r.bytes("vote").map_err(bad)?;
        let data = r.bytes("data").map_err(bad)?;
        r.finish().map_err(bad)?;
        let vote = msg::decode_vote_only(&mut Reader::new(vote_bytes)).map_err(bad)?;
        {
            let mut incoming = self.incoming.borrow_mut();
            if offset == 0 {
                std::fs::create_dir_all(&self.incoming_dir).map_err(io)?;
                while incoming.len() >= INCOMING_SNAPSHOTS_MAX {
                    let oldest = *incoming.iter().min_by_key(|(_, i)| i.started).map(|(k, _)| k).expect("non-empty");
                    if let Some(old) = incoming.remove(&oldest) {
                        let _ = std::fs::remove_file(&old.path);
                    }
                }
                let path = self.incoming_dir.join(format!("{transfer:016x}.part"));
                let file =
                    File::options().create(true).truncate(true).read(true).write(true).open(&path).map_err(io)?;
                incoming.insert(transfer, Incoming { path, file, next_offset: 0, started: Instant::now() });
            }
            let Some(part) = incoming.get_mut(&transfer) else {
                return Err(RemoteError::new(ErrorCode::BAD_FRAME, format!("unknown snapshot transfer {transfer:x}")));
            };
            if part.next_offset != offset {
                return Err(RemoteError::new(
                    ErrorCode::BAD_FRAME,
                    format!("snapshot chunk at {offset}, expected {}", part.next_offset),
                ));
            }
            part.file.write_all(data).map_err(io)?;
            part.next_offset += data.len() as u64;
            if !done {
                return Ok(Vec::new());
            }
        }
        let mut part = self.incoming.borrow_mut().remove(&transfer).expect("present above");
        part.file.sync_all().map_err(io)?;
        part.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let verified = verify_snapshot(&mut part.file, &part.path)
            .map_err(|e| RemoteError::new(RAFT_FAILED, format!("refusing snapshot: {e}")))?;
        let file = SnapshotFile::open(&part.path).map_err(|e| RemoteError::new(RAFT_FAILED, e.to_string()))?;
        let verified_index = verified.index();
        let snapshot = Snapshot { meta: verified.meta, snapshot: file };
        let resp = self
            .raft()?
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| RemoteError::new(RAFT_FAILED, e.to_string()));
        let _ = std::fs::remove_file(&part.path);
        let resp = resp?;
        tracing::info!(index = verified_index, bytes = part.next_offset, "installed a snapshot from the leader");
        Ok(msg::encode_snapshot_response(&resp))
    }
}

impl RpcHandler for Handler {
    fn handle(
        &self,
        method: u16,
        body: Vec<u8>,
        _deadline: Instant,
    ) -> LocalBoxFuture<'_, Result<Vec<u8>, RemoteError>> {
        // A client call gets a future of its own size: `dispatch`'s is the
        // largest of every arm's (raft's calls, a few KiB), and one client
        // query per node stays parked, so 10,000 nodes held ~32 MB of them.
        if client_rpc::CLIENT_METHODS.contains(&method) {
            return Box::pin(self.client.call(method, body));
        }
        Box::pin(self.dispatch(method, body))
    }
}

pub(crate) fn encode_apply_reply(reply: &ApplyReply) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(reply.index);
    match &reply.error {
        None => w.u8(0),
        Some(e) => {
            w.u8(1);
            w.bytes(e.as_bytes());
        }
    }
    w.out
}

pub(crate) fn decode_apply_reply(bytes: &[u8]) -> Result<ApplyReply, msg::MessageError> {
    let mut r = Reader::new(bytes);
    let index = r.u64("index")?;
    let error = if r.bool("error")? { Some(String::from_utf8_lossy(r.bytes("error")?).into_owned()) } else { None };
    r.finish()?;
    Ok(ApplyReply { index, error })
}

/// What `STATUS` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) id: u64,
    pub(crate) node: ServerNode,
    pub(crate) initialized: bool,
    pub(crate) leader: Option<(u64, ServerNode)>,
}

pub(crate) fn write_node(w: &mut Writer, node: &ServerNode) {
    w.bytes(node.rpc_addr.as_bytes());
    w.bytes(node.http_addr.as_bytes());
    w.bytes(node.name.as_bytes());
}

pub(crate) fn read_node(r: &mut Reader<'_>) -> Result<ServerNode, msg::MessageError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(ServerNode {
        rpc_addr: text(r.bytes("rpc_addr")?),
        http_addr: text(r.bytes("http_addr")?),
        name: text(r.bytes("name")?),
    })
}

pub(crate) fn encode_status(s: &Status) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(s.id);
    write_node(&mut w, &s.node);
    w.u8(u8::from(s.initialized));
    match &s.leader {
        None => w.u8(0),
        Some((id, node)) => {
            w.u8(1);
            w.u64(*id);
            write_node(&mut w, node);
        }
    }
    w.out
}

pub(crate) fn decode_status(bytes: &[u8]) -> Result<Status, msg::MessageError> {
    let mut r = Reader::new(bytes);
    let id = r.u64("id")?;
    let node = read_node(&mut r)?;
    let initialized = r.bool("initialized")?;
    let leader = if r.bool("leader")? { Some((r.u64("leader id")?, read_node(&mut r)?)) } else { None };
    r.finish()?;
    Ok(Status { id, node, initialized, leader })
}

pub(crate) fn encode_join(id: u64, node: &ServerNode) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(id);
    write_node(&mut w, node);
    w.out
}
