//! What client agents ask of servers, over the server RPC (method ids
//! 20..29), and the leader's side of heartbeats (Nomad's `Node.Register`,
//! `Node.UpdateStatus`, `Node.GetClientAllocs`, `Node.UpdateAlloc` and
//! `nomad/heartbeat.go`).
//!
//! - [`NODE_REGISTER`]: a fingerprinted node is committed as `ready` (the
//!   servers own drain and eligibility, kept from the stored node); node
//!   evals only on a transition into `ready`, as Nomad's
//!   `shouldCreateNodeEval`. Answers the heartbeat TTL.
//! - [`NODE_HEARTBEAT`]: restarts the node's timer on the leader; a node
//!   that was down or initializing is marked ready first. Answers the TTL.
//! - [`NODE_ALLOCS`]: a blocking query on this server's own state: returns
//!   once the node's allocations change past the caller's index, or at the
//!   wait. Any server answers it.
//! - [`ALLOC_UPDATE`]: client status reports, batched on the server for up
//!   to [`ALLOC_UPDATE_BATCH_WINDOW`] into one raft entry (forwarded to the
//!   leader from a follower, like every write).
//!
//! Register and heartbeat are leader calls: the timers live on the leader,
//! so a follower (or a leader still taking up its duties) answers
//! [`NOT_LEADER`] with the leader's RPC address in the message (empty when
//! unknown), and the client re-targets (`ServerClient` does). Forwarding
//! instead would cost the follower a hop per heartbeat and hide from the
//! client where it should be talking.
//!
//! Threads: handlers run on the raft thread and never block it: commits
//! go to [`CLIENT_WRITERS`] writer threads, status reports to one batcher,
//! and parked `NODE_ALLOCS` queries wait on a oneshot that one watcher
//! thread fires when the store moves. The leader's expiry thread
//! ([`spawn_heartbeat_expiry`]) marks nodes down whose timers run out.
//!
//! Messages are rkyv archives behind a short header, lz4-compressed when
//! large (see `client_codec`); decoding validates them first, so bad bytes
//! answer [`ErrorCode::BAD_FRAME`], never a panic.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use caravan_engine::clock::Clock;
use caravan_engine::endpoints::{self, EndpointError};
use caravan_engine::fsm::Command;
use caravan_engine::heartbeat::{HeartbeatError, Heartbeats};
use caravan_engine::ids::{AllocId, IdGen, NodeId};
use caravan_engine::model::{AllocClientUpdate, Allocation, Node, NodeStatus};
use caravan_engine::plan::Committer;
use caravan_engine::state::{Cancel, NodeAllocChange, State, StateStore, Table};
use futures_channel::oneshot;
use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use super::client_codec::{MessageError, decode, encode};
use super::committer::RaftCommitter;
use super::handle::RaftHandle;
use super::rpc_methods::NOT_LEADER;
use crate::rpc::frame::{ErrorCode, RemoteError};

/// Register (or re-register) a fingerprinted node; answers [`TtlReply`].
pub const NODE_REGISTER: u16 = 20;
/// A node's heartbeat; answers [`TtlReply`].
pub const NODE_HEARTBEAT: u16 = 21;
/// The node's allocations, as a blocking query; answers [`AllocsReply`].
pub const NODE_ALLOCS: u16 = 22;
/// Client status reports for allocations; answers [`IndexReply`].
pub const ALLOC_UPDATE: u16 = 23;
/// The ids reserved for client calls.
pub(crate) const CLIENT_METHODS: RangeInclusive<u16> = 20..=29;

/// The node is not registered: the client should register again.
pub const NODE_NOT_FOUND: ErrorCode = ErrorCode(1010);
/// The write could not be committed (no quorum, raft failing, or the
/// state machine refused it); nothing changed. Worth retrying.
pub const WRITE_FAILED: ErrorCode = ErrorCode(1011);
/// The request is invalid (a node that fails validation); retrying the
/// same request is refused again.
pub(crate) const INVALID_REQUEST: ErrorCode = ErrorCode(1012);

/// Longest a `NODE_ALLOCS` query parks: Nomad's 5 minutes, less a margin so
/// the answer reaches the client before the RPC deadline
/// ([`crate::rpc::server::DEADLINE_MAX`], also 5 minutes) cuts it off.
pub const NODE_ALLOCS_WAIT_MAX: Duration = Duration::from_secs(5 * 60 - 10);

/// How long the batcher gathers status reports into one raft entry after
/// the first arrives: Nomad's server-side `batchUpdateInterval` (50 ms).
/// One fsync per window instead of one per client report.
pub const ALLOC_UPDATE_BATCH_WINDOW: Duration = Duration::from_millis(50);

/// Updates after which a batch is committed without waiting out the
/// window: each carries its task states (hundreds of bytes to a few KiB),
/// so 4,096 keeps an entry a few MiB, under the RPC body limit a
/// follower's forwarded entry must fit.
pub const ALLOC_UPDATE_BATCH_MAX: usize = 4096;

/// Updates one `ALLOC_UPDATE` request may carry (a batch is then at most
/// twice [`ALLOC_UPDATE_BATCH_MAX`]); a client batches every 200 ms, far
/// below this.
pub const ALLOC_UPDATES_PER_REQUEST_MAX: usize = 4096;

/// Status-report requests queued for the batcher: about one in flight per
/// client agent (each sends its next batch after the last is answered),
/// like [`ALLOC_WAITERS_MAX`]. Past it the server is behind raft; callers
/// get [`ErrorCode::OVERLOADED`] and retry.
const UPDATE_QUEUE_MAX: usize = crate::rpc::server::CONNECTIONS_MAX;

/// Threads committing registrations and status transitions. They block on
/// raft (one fsync round trip each); four overlap a register storm after a
/// leader change without holding more threads than raft can keep busy.
pub const CLIENT_WRITERS: usize = 4;

/// Registrations and status transitions committed in one raft entry: a
/// node's fingerprint encodes to a few KiB, so 256 keep an entry around a
/// MiB (well under the RPC body limit a follower's forwarded entry must
/// fit) while 10,000 registering nodes need only some 40 entries.
const NODE_WRITES_PER_ENTRY_MAX: usize = 256;

/// Registrations and status transitions queued for the writers; past it
/// callers get [`ErrorCode::OVERLOADED`] and back off.
const WRITE_QUEUE_MAX: usize = 1024;

/// Parked `NODE_ALLOCS` queries: one per client agent, bounded like the
/// RPC server's connections ([`crate::rpc::server::CONNECTIONS_MAX`]).
const ALLOC_WAITERS_MAX: usize = crate::rpc::server::CONNECTIONS_MAX;

/// How often idle client threads look at the stop flag.
const THREAD_SLICE: Duration = Duration::from_millis(100);

/// Expired nodes marked down per round of the expiry thread; the rest are
/// taken on the next round, so a mass expiry does not hold the timers'
/// lock, and each down node is its own raft entry (with its evals).
const EXPIRED_PER_ROUND_MAX: usize = 64;

/// Longest the expiry thread sleeps between looks at its cancel flag.
const EXPIRY_SLICE: Duration = Duration::from_millis(100);

/// When marking an expired node down fails (no quorum for a moment), it is
/// tried again this much later, while this server still leads.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// `NODE_REGISTER`'s request.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RegisterRequest {
    pub node: Node,
}

/// `NODE_HEARTBEAT`'s request.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HeartbeatRequest {
    pub node_id: NodeId,
}

/// `NODE_REGISTER`'s and `NODE_HEARTBEAT`'s answer: heartbeat again within
/// this TTL.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TtlReply {
    pub ttl_ms: u64,
}

/// `NODE_ALLOCS`'s request.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocsRequest {
    pub node_id: NodeId,
    /// Answer once the node's allocations index passes this (or at the
    /// wait): the `index` of the caller's last reply, 0 at first.
    pub min_index: u64,
    /// The `index` of the reply the caller holds every allocation of (0
    /// for none): allocations unchanged since are sent as ids only.
    pub known_index: u64,
    pub wait_ms: u64,
}

/// `NODE_ALLOCS`'s answer: the node's allocations still in the state
/// (terminal ones until garbage-collected) as a change to the caller's
/// copy as of the request's `known_index`: in full (each with its job)
/// those the servers changed after it (their `alloc_modify_index`: the
/// client's own status reports do not count); the ids of the others, or
/// `None` where none was removed since (so the caller keeps all it holds);
/// and the index to pass as `min_index` and `known_index` next time.
/// Sending only what changed is what keeps a node with a hundred
/// allocations from receiving all of them, or all their ids, on every
/// placement (Nomad's client asks for the changed ones in a second call,
/// `Alloc.GetAllocs`, after a list of every id and index).
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocsReply {
    pub changed: Vec<Arc<Allocation>>,
    pub unchanged: Option<Vec<AllocId>>,
    pub index: u64,
}

/// `ALLOC_UPDATE`'s request.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocUpdateRequest {
    pub updates: Vec<AllocClientUpdate>,
}

/// `ALLOC_UPDATE`'s answer: the raft index the batch was applied at.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct IndexReply {
    pub index: u64,
}

/// The node's allocations index: the servers' last change to any of its
/// allocations (0 before its first), or the allocations table's index for
/// a node the state has never seen.
pub(crate) fn node_allocs_index(state: &State, node: NodeId) -> u64 {
    state.node_allocs_index(node).unwrap_or_else(|| state.table_index(Table::Allocs))
}

/// `NODE_ALLOCS`'s answer for `node` to a caller holding every allocation
/// as of `known_index`: one pass over the node's list, which carries each
/// allocation's `alloc_modify_index`, so only the changed allocations are
/// looked up (see [`State::node_allocs_since`]); the unchanged ones are
/// listed only when the caller must drop some of what it holds.
fn allocs_reply(state: &State, node: NodeId, known_index: u64) -> AllocsReply {
    // A node this state has never seen has nothing the caller may keep.
    let removals = state.node_allocs_removed_index(node).is_none_or(|removed| removed > known_index);
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for alloc in state.node_allocs_since(node, known_index) {
        match alloc {
            NodeAllocChange::Changed(alloc) => changed.push(alloc.clone()),
            NodeAllocChange::Unchanged(id) if removals => unchanged.push(id),
            NodeAllocChange::Unchanged(_) => {}
        }
    }
    AllocsReply { changed, unchanged: removals.then_some(unchanged), index: node_allocs_index(state, node) }
}

/// What the writer threads commit.
enum WriteJob {
    Register { node: Box<Node>, reply: oneshot::Sender<Result<Duration, RemoteError>> },
    MarkReady { node_id: NodeId, reply: oneshot::Sender<Result<Duration, RemoteError>> },
}

/// One `ALLOC_UPDATE` request waiting for its batch.
struct PendingUpdate {
    updates: Vec<AllocClientUpdate>,
    reply: oneshot::Sender<Result<u64, RemoteError>>,
}

/// A parked `NODE_ALLOCS` query.
struct Waiter {
    min_index: u64,
    wake: oneshot::Sender<()>,
}

/// Parked queries by node, so a commit wakes the queries of the nodes it
/// touched without looking at the others.
#[derive(Default)]
struct Waiters {
    by_node: std::collections::HashMap<NodeId, Vec<Waiter>>,
    count: usize,
}

impl Waiters {
    /// Drop the queries whose callers went away (timed out, disconnected).
    fn prune(&mut self) {
        self.by_node.retain(|_, parked| {
            parked.retain(|w| !w.wake.is_canceled());
            !parked.is_empty()
        });
        self.count = self.by_node.values().map(Vec::len).sum();
    }

    /// Take out the node's queries its allocations index has passed, for
    /// the caller to wake once it has let go of the lock (see
    /// [`ClientRpc::run_watcher`]).
    fn passed(&mut self, node: NodeId, index: u64, woken: &mut Vec<oneshot::Sender<()>>) {
        let Some(parked) = self.by_node.remove(&node) else { return };
        self.count -= parked.len();
        let mut still = Vec::new();
        for waiter in parked {
            if waiter.wake.is_canceled() {
                continue;
            }
            if index > waiter.min_index {
                woken.push(waiter.wake);
            } else {
                still.push(waiter);
            }
        }
        if !still.is_empty() {
            self.count += still.len();
            self.by_node.insert(node, still);
        }
    }
}

/// Raft's handle and the committer, known once raft is up.
#[derive(Debug)]
struct Bound {
    raft: RaftHandle,
    committer: Arc<RaftCommitter>,
}

/// The queues' receiving ends, handed to the threads by [`ClientRpc::start`].
struct Receivers {
    writes: Receiver<WriteJob>,
    updates: Receiver<PendingUpdate>,
}

/// The client-facing services of one server, shared by the RPC handler (on
/// the raft thread) and the threads that do the blocking work.
pub(crate) struct ClientRpc {
    store: Arc<StateStore>,
    heartbeats: Arc<Heartbeats>,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdGen>,
    bound: OnceLock<Bound>,
    writes: SyncSender<WriteJob>,
    updates: SyncSender<PendingUpdate>,
    waiters: Mutex<Waiters>,
    receivers: Mutex<Option<Receivers>>,
    stop: AtomicBool,
}

impl std::fmt::Debug for ClientRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRpc").field("bound", &self.bound.get().is_some()).finish_non_exhaustive()
    }
}

fn bad(e: MessageError) -> RemoteError {
    RemoteError::new(ErrorCode::BAD_FRAME, e.to_string())
}

fn encoded<T>(value: &T) -> Result<Vec<u8>, RemoteError>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
{
    encode(value).map_err(|e| RemoteError::new(ErrorCode::INTERNAL, e.to_string()))
}

fn endpoint_error(e: EndpointError) -> RemoteError {
    match e {
        EndpointError::Invalid(_) => RemoteError::new(INVALID_REQUEST, e.to_string()),
        EndpointError::NodeNotFound(_) => RemoteError::new(NODE_NOT_FOUND, e.to_string()),
        _ => RemoteError::new(WRITE_FAILED, e.to_string()),
    }
}

fn stopped() -> RemoteError {
    RemoteError::new(ErrorCode::INTERNAL, "the server is shutting down")
}

fn ttl_reply(ttl: Duration) -> Result<Vec<u8>, RemoteError> {
    encoded(&TtlReply { ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX) })
}

impl ClientRpc {
    /// The services, idle until [`Self::start`].
    pub(crate) fn new(
        store: Arc<StateStore>,
        heartbeats: Arc<Heartbeats>,
        clock: Arc<dyn Clock>,
        seed: u64,
    ) -> Arc<ClientRpc> {
        let (writes, write_rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE_MAX);
        let (updates, update_rx) = std::sync::mpsc::sync_channel(UPDATE_QUEUE_MAX);
        Arc::new(ClientRpc {
            store,
            heartbeats,
            clock,
            ids: Mutex::new(IdGen::with_seed(seed)),
            bound: OnceLock::new(),
            writes,
            updates,
            waiters: Mutex::new(Waiters::default()),
            receivers: Mutex::new(Some(Receivers { writes: write_rx, updates: update_rx })),
            stop: AtomicBool::new(false),
        })
    }

    /// Start the writers, the batcher and the watcher once raft is up.
    /// Called once; they run until [`Self::stop`].
    pub(crate) fn start(self: &Arc<Self>, raft: RaftHandle, committer: Arc<RaftCommitter>) -> Vec<JoinHandle<()>> {
        let receivers = self.receivers.lock().expect("receivers poisoned").take().expect("ClientRpc started once");
        assert!(self.bound.set(Bound { raft, committer }).is_ok(), "ClientRpc bound once");
        let writes = Arc::new(Mutex::new(receivers.writes));
        let mut threads = Vec::new();
        for i in 0..CLIENT_WRITERS {
            let (me, writes) = (self.clone(), writes.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("client-writer-{i}"))
                    .spawn(move || me.run_writer(&writes))
                    .expect("spawn client writer"),
            );
        }
        let (me, updates) = (self.clone(), receivers.updates);
        threads.push(
            std::thread::Builder::new()
                .name("alloc-update-batcher".into())
                .spawn(move || me.run_batcher(&updates))
                .expect("spawn alloc update batcher"),
        );
        let me = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("client-allocs-watcher".into())
                .spawn(move || me.run_watcher())
                .expect("spawn allocs watcher"),
        );
        threads
    }

    /// Ask the threads to stop; the caller joins them.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// `NOT_LEADER` with the leader's RPC address when another server leads.
    fn not_leader(&self) -> RemoteError {
        let leader = self.bound.get().and_then(|b| {
            let view = b.raft.view();
            if view.is_leader() { None } else { view.leader_node().map(|(_, node)| node.rpc_addr) }
        });
        RemoteError::new(NOT_LEADER, leader.unwrap_or_default())
    }

    /// Serve one client method (the ids in [`CLIENT_METHODS`]).
    pub(crate) async fn dispatch(&self, method: u16, body: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        match method {
            NODE_REGISTER => {
                let request: RegisterRequest = decode(&body).map_err(bad)?;
                self.register(request.node).await
            }
            NODE_HEARTBEAT => {
                let request: HeartbeatRequest = decode(&body).map_err(bad)?;
                self.heartbeat(request.node_id).await
            }
            NODE_ALLOCS => {
                let request: AllocsRequest = decode(&body).map_err(bad)?;
                self.node_allocs(request).await
            }
            ALLOC_UPDATE => {
                let request: AllocUpdateRequest = decode(&body).map_err(bad)?;
                self.alloc_update(request.updates).await
            }
            other => Err(RemoteError::unknown_method(other)),
        }
    }

    fn submit_write(&self, job: WriteJob) -> Result<(), RemoteError> {
        match self.writes.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(RemoteError::new(ErrorCode::OVERLOADED, "too many node writes queued; retry later"))
            }
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }

    async fn register(&self, node: Node) -> Result<Vec<u8>, RemoteError> {
        if !self.heartbeats.is_active() {
            return Err(self.not_leader());
        }
        let (reply, answer) = oneshot::channel();
        self.submit_write(WriteJob::Register { node: Box::new(node), reply })?;
        ttl_reply(answer.await.map_err(|_| stopped())??)
    }

    async fn heartbeat(&self, node_id: NodeId) -> Result<Vec<u8>, RemoteError> {
        if !self.heartbeats.is_active() {
            return Err(self.not_leader());
        }
        let state = self.store.snapshot();
        let Some(node) = state.node(node_id) else {
            return Err(RemoteError::new(NODE_NOT_FOUND, format!("node {node_id} is not registered")));
        };
        if node.status == NodeStatus::Ready {
            // The common case: no write, just the timer.
            let ttl = self
                .heartbeats
                .heartbeat(node_id, state.node_count(), self.clock.now_ns())
                .map_err(|HeartbeatError::NotActive| self.not_leader())?;
            return ttl_reply(ttl);
        }
        let (reply, answer) = oneshot::channel();
        self.submit_write(WriteJob::MarkReady { node_id, reply })?;
        ttl_reply(answer.await.map_err(|_| stopped())??)
    }

    async fn node_allocs(&self, request: AllocsRequest) -> Result<Vec<u8>, RemoteError> {
        let wait = Duration::from_millis(request.wait_ms).min(NODE_ALLOCS_WAIT_MAX);
        // No snapshot may live across the wait: a parked query holding the
        // state it parked on keeps that version's copied table paths alive,
        // and with one parked query per node the server retained hundreds
        // of superseded versions (`c1m`'s heap peak fell 558 → 231 MB with
        // this and two smaller fixes).
        let changed = node_allocs_index(&self.store.snapshot(), request.node_id) > request.min_index;
        if !changed && !wait.is_zero() {
            let (wake, woken) = oneshot::channel();
            {
                let mut waiters = self.waiters.lock().expect("alloc waiters poisoned");
                if waiters.count >= ALLOC_WAITERS_MAX {
                    waiters.prune();
                }
                if waiters.count >= ALLOC_WAITERS_MAX {
                    return Err(RemoteError::new(ErrorCode::OVERLOADED, "too many parked allocation queries"));
                }
                let parked = waiters.by_node.entry(request.node_id).or_default();
                // A client re-asking (its previous call timed out) leaves
                // the old query behind: drop those first.
                let before = parked.len();
                parked.retain(|w| !w.wake.is_canceled());
                parked.push(Waiter { min_index: request.min_index, wake });
                let after = parked.len();
                waiters.count = waiters.count + after - before;
            }
            // A write between the first look and parking would be missed by
            // the watcher (it had already checked): look once more.
            if node_allocs_index(&self.store.snapshot(), request.node_id) <= request.min_index {
                let timer = std::pin::pin!(compio::time::sleep(wait));
                let _ = futures_util::future::select(woken, timer).await;
            }
        }
        encoded(&allocs_reply(&self.store.snapshot(), request.node_id, request.known_index))
    }

    async fn alloc_update(&self, updates: Vec<AllocClientUpdate>) -> Result<Vec<u8>, RemoteError> {
        if updates.len() > ALLOC_UPDATES_PER_REQUEST_MAX {
            return Err(RemoteError::new(
                ErrorCode::BAD_FRAME,
                format!("{} updates in one request; at most {ALLOC_UPDATES_PER_REQUEST_MAX}", updates.len()),
            ));
        }
        if updates.is_empty() {
            return encoded(&IndexReply { index: self.store.latest_index() });
        }
        let (reply, answer) = oneshot::channel();
        match self.updates.try_send(PendingUpdate { updates, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(RemoteError::new(ErrorCode::OVERLOADED, "too many status updates queued; retry later"));
            }
            Err(TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        let index = answer.await.map_err(|_| stopped())??;
        encoded(&IndexReply { index })
    }

    fn committer(&self) -> &Arc<RaftCommitter> {
        &self.bound.get().expect("threads start after binding").committer
    }

    fn commit(&self, command: Command) -> Result<u64, RemoteError> {
        self.committer().commit(command).map_err(|e| RemoteError::new(WRITE_FAILED, e.0))
    }

    fn commit_all(&self, commands: &[Command]) -> Result<u64, RemoteError> {
        self.committer().commit_all(commands).map_err(|e| RemoteError::new(WRITE_FAILED, e.0))
    }

    /// Take whatever registrations and status transitions are queued (up
    /// to [`NODE_WRITES_PER_ENTRY_MAX`]) and commit them as one entry: a
    /// register storm (every client after a leader change, a fleet coming
    /// up) then costs one raft round trip per batch, not per node.
    fn run_writer(&self, jobs: &Mutex<Receiver<WriteJob>>) {
        while !self.stopping() {
            let batch = {
                let queue = jobs.lock().expect("write queue poisoned");
                match queue.recv_timeout(THREAD_SLICE) {
                    Ok(first) => {
                        let mut batch = vec![first];
                        while batch.len() < NODE_WRITES_PER_ENTRY_MAX {
                            match queue.try_recv() {
                                Ok(more) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        batch
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            self.commit_node_writes(batch);
        }
    }

    /// Build each write's command from one snapshot, commit them together,
    /// then restart each node's heartbeat timer and answer its caller.
    /// Writes are independent (one node each), so one state serves all; a
    /// node twice in one batch registers twice, which is harmless. A failed
    /// entry fails every caller in it: each retries on its own.
    fn commit_node_writes(&self, batch: Vec<WriteJob>) {
        let state = self.store.snapshot();
        let mut commands = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for job in batch {
            let (node_id, reply, command) = match job {
                WriteJob::Register { node, reply } => (node.id, reply, self.register_command(&state, *node)),
                WriteJob::MarkReady { node_id, reply } => (node_id, reply, self.ready_command(&state, node_id)),
            };
            match command {
                Ok(command) => {
                    commands.extend(command);
                    waiting.push((node_id, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        let committed = if commands.is_empty() { Ok(state.index()) } else { self.commit_all(&commands) };
        let node_count = self.store.snapshot().node_count();
        let now = self.clock.now_ns();
        for (node_id, reply) in waiting {
            let answer = committed
                .clone()
                .and_then(|_| self.heartbeats.heartbeat(node_id, node_count, now).map_err(|_| self.not_leader()));
            let _ = reply.send(answer);
        }
    }

    /// Nomad's `Node.Register`: the client's fingerprint, the servers' own
    /// fields (drain, eligibility) kept, status ready; evals when the node
    /// is new or becomes ready, not on every re-registration.
    fn register_command(&self, state: &State, mut node: Node) -> Result<Option<Command>, RemoteError> {
        let existing = state.node(node.id).cloned();
        if let Some(old) = &existing {
            node.drain = old.drain.clone();
            node.eligibility = old.eligibility;
        }
        node.status = NodeStatus::Ready;
        node.status_updated_at_ns = self.clock.now_ns();
        let command = {
            let mut ids = self.ids.lock().expect("ids poisoned");
            endpoints::register_node(state, node, self.clock.now_ns(), &mut ids).map_err(endpoint_error)?
        };
        Ok(Some(match command {
            Command::NodeRegister { node, .. }
                if existing.as_ref().is_some_and(|old| old.status == NodeStatus::Ready) =>
            {
                Command::NodeRegister { node, evals: Vec::new() }
            }
            other => other,
        }))
    }

    /// Nomad's `Node.UpdateStatus` from a heartbeat: down or initializing
    /// becomes ready (with node evals); nothing to write for a ready node.
    fn ready_command(&self, state: &State, node_id: NodeId) -> Result<Option<Command>, RemoteError> {
        let node = state
            .node(node_id)
            .ok_or_else(|| RemoteError::new(NODE_NOT_FOUND, format!("node {node_id} is not registered")))?;
        if node.status == NodeStatus::Ready {
            return Ok(None);
        }
        let command = {
            let mut ids = self.ids.lock().expect("ids poisoned");
            endpoints::update_node_status(state, node_id, NodeStatus::Ready, self.clock.now_ns(), &mut ids)
                .map_err(endpoint_error)?
        };
        tracing::info!(node = %node_id, was = node.status.as_str(), "node heartbeated: marking ready");
        Ok(Some(command))
    }

    /// Gather status reports for [`ALLOC_UPDATE_BATCH_WINDOW`] after the
    /// first (or until [`ALLOC_UPDATE_BATCH_MAX`]) and hand each batch to
    /// one committer thread, which commits it as one entry and answers
    /// every caller. Gathering the next batch overlaps committing the last
    /// (Nomad's update future works the same way); one committer keeps the
    /// batches in order, so a later report never lands before an earlier.
    fn run_batcher(&self, queue: &Receiver<PendingUpdate>) {
        let (to_committer, batches) = std::sync::mpsc::sync_channel::<Vec<PendingUpdate>>(1);
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("alloc-update-committer".into())
                .spawn_scoped(scope, move || {
                    for batch in batches {
                        self.commit_updates(batch);
                    }
                })
                .expect("spawn alloc update committer");
            while !self.stopping() {
                let first = match queue.recv_timeout(THREAD_SLICE) {
                    Ok(first) => first,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let closes = Instant::now() + ALLOC_UPDATE_BATCH_WINDOW;
                let mut count = first.updates.len();
                let mut batch = vec![first];
                while count < ALLOC_UPDATE_BATCH_MAX {
                    let now = Instant::now();
                    if now >= closes {
                        break;
                    }
                    match queue.recv_timeout(closes - now) {
                        Ok(more) => {
                            count += more.updates.len();
                            batch.push(more);
                        }
                        Err(_) => break,
                    }
                }
                if to_committer.send(batch).is_err() {
                    break;
                }
            }
            drop(to_committer);
        });
    }

    /// Commit one batch of status reports as one entry; answer its callers.
    fn commit_updates(&self, batch: Vec<PendingUpdate>) {
        let count = batch.iter().map(|p| p.updates.len()).sum();
        let mut updates = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(batch.len());
        for pending in batch {
            updates.extend(pending.updates);
            replies.push(pending.reply);
        }
        // Built from the state after the previous batch applied, so evals
        // for failed allocations see every earlier report.
        let command = {
            let mut ids = self.ids.lock().expect("ids poisoned");
            endpoints::update_allocs_from_client(&self.store.snapshot(), updates, self.clock.now_ns(), &mut ids)
        };
        let result = self.commit(command);
        if let Err(e) = &result {
            tracing::warn!(error = %e.message, requests = replies.len(), "committing client status updates failed");
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }

    /// Wake parked `NODE_ALLOCS` queries whose node's allocations moved:
    /// the store's feed names the nodes each commit touched.
    fn run_watcher(&self) {
        while !self.stopping() {
            let changes = self.store.alloc_feed().take(THREAD_SLICE);
            if changes.nodes.is_empty() && !changes.everything {
                continue;
            }
            // Taken after the feed: it shows every change the feed named.
            let state = self.store.snapshot();
            let mut woken = Vec::new();
            {
                let mut waiters = self.waiters.lock().expect("alloc waiters poisoned");
                let nodes: Vec<NodeId> =
                    if changes.everything { waiters.by_node.keys().copied().collect() } else { changes.nodes };
                for node in nodes {
                    waiters.passed(node, node_allocs_index(&state, node), &mut woken);
                }
            }
            // Woken outside the lock: waking a task queues it on the raft
            // thread's runtime, and when that queue is full the waker
            // waits for the raft thread to drain it. Were the lock held,
            // a query being parked on the raft thread would wait for the
            // lock and neither would move (seen at 2,000 simulated nodes).
            for wake in woken {
                let _ = wake.send(());
            }
        }
    }
}

/// Start the leader's heartbeat expiry thread for one term: nodes whose
/// timers run out are marked down (their node evals reschedule what ran
/// there) until `cancel`.
pub(crate) fn spawn_heartbeat_expiry(
    heartbeats: Arc<Heartbeats>,
    store: Arc<StateStore>,
    committer: Arc<dyn Committer>,
    clock: Arc<dyn Clock>,
    seed: u64,
    cancel: Cancel,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("heartbeat-expiry".into())
        .spawn(move || {
            let mut ids = IdGen::with_seed(seed);
            while !cancel.is_cancelled() {
                let now = clock.now_ns();
                for node_id in heartbeats.take_expired(now, EXPIRED_PER_ROUND_MAX) {
                    let state = store.snapshot();
                    match state.node(node_id) {
                        None => continue,
                        Some(node) if node.status == NodeStatus::Down => continue,
                        Some(_) => {}
                    }
                    let marked = endpoints::update_node_status(&state, node_id, NodeStatus::Down, now, &mut ids)
                        .map_err(|e| e.to_string())
                        .and_then(|command| committer.commit(command).map_err(|e| e.0));
                    match marked {
                        Ok(index) => tracing::warn!(node = %node_id, index, "node missed its heartbeats: marked down"),
                        Err(e) => {
                            tracing::warn!(node = %node_id, error = %e, "marking a node down failed; retrying");
                            let retry_ns = i64::try_from(EXPIRY_RETRY.as_nanos()).unwrap_or(i64::MAX);
                            heartbeats.rearm(node_id, now.saturating_add(retry_ns));
                        }
                    }
                }
                heartbeats.wait_for_deadline(clock.now_ns(), EXPIRY_SLICE);
            }
        })
        .expect("spawn heartbeat expiry")
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_engine::fixtures;
    use caravan_engine::model::ClientStatus;

    #[test]
    fn messages_round_trip() {
        let mut ids = IdGen::with_seed(1);
        let node = fixtures::node(&mut ids, "n1", "dc1", 4000, 8192);
        let bytes = encode(&RegisterRequest { node: node.clone() }).unwrap();
        let back: RegisterRequest = decode(&bytes).unwrap();
        assert_eq!(back.node.id, node.id);
        assert_eq!(&*back.node.name, "n1");
        let update = AllocClientUpdate {
            alloc_id: ids.alloc_tagged(0),
            client_status: ClientStatus::Running,
            client_description: "started".into(),
            at_ns: 5,
            task_states: Default::default(),
            deployment_health: Some(caravan_engine::model::AllocHealthReport {
                deployment_id: ids.deployment(),
                healthy: true,
                at_ns: 5,
            }),
        };
        let bytes = encode(&AllocUpdateRequest { updates: vec![update.clone()] }).unwrap();
        let back: AllocUpdateRequest = decode(&bytes).unwrap();
        assert_eq!(back.updates, vec![update]);
    }
}
