//! The thread-safe side of a server's raft: engine threads (workers, the
//! plan applier, HTTP handlers) are plain OS threads, while openraft runs
//! on one compio thread. A [`RaftHandle`] sends requests to that thread and
//! blocks on the reply; the raft thread publishes a [`RaftView`] of its
//! metrics that any thread can read or wait on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedSender;

use crate::raft::{ApplyReply, LogPayload, ServerNode};

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(u64, ServerNode)> },
    #[error("no reply from raft within {0:?}")]
    Timeout(Duration),
    #[error("raft stopped: {0}")]
    Stopped(String),
    #[error("{0}")]
    Raft(String),
}

/// A server's role, as raft reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    Leader,
    Learner,
    Shutdown,
}

/// What the raft thread last published about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub committed: u64,
    pub last_applied: u64,
    pub snapshot_index: u64,
    /// Voters and learners of the last membership, by id: (node, voter).
    pub members: BTreeMap<u64, (ServerNode, bool)>,
    /// When a quorum last acknowledged this server as leader.
    pub last_quorum_acked: Option<Instant>,
    /// How long a quorum acknowledgement keeps a leader's lease (openraft's
    /// lease is the maximum election timeout).
    pub lease: Duration,
    /// Voters in the membership.
    pub voters: usize,
}

impl RaftView {
    /// The leader as this server knows it. A server that believes itself
    /// leader but whose lease has run out names no leader: it may be cut
    /// off from a majority that has elected another.
    pub fn leader_node(&self) -> Option<(u64, ServerNode)> {
        let id = self.leader?;
        if id == self.id && !self.is_leader() {
            return None;
        }
        self.members.get(&id).map(|(node, _)| (id, node.clone()))
    }

    /// Leader with a live lease. openraft keeps a leader that lost its
    /// quorum in the leader state (it only refuses new proposals, see its
    /// CheckQuorum notes) until it sees a higher term; Caravan steps its
    /// duties down as soon as the lease runs out, so a partitioned minority
    /// leader stops scheduling and stops calling itself leader.
    pub fn is_leader(&self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        // A lone voter is its own quorum.
        if self.voters <= 1 {
            return true;
        }
        self.last_quorum_acked.is_some_and(|at| at.elapsed() < self.lease)
    }
}

/// The published view and a condvar to wait for changes.
#[derive(Debug, Default)]
pub(crate) struct ViewCell {
    view: Mutex<RaftView>,
    changed: Condvar,
}

impl ViewCell {
    pub(crate) fn view_now(&self) -> RaftView {
        self.view.lock().expect("raft view poisoned").clone()
    }

    pub(crate) fn publish(&self, view: RaftView) {
        *self.view.lock().expect("raft view poisoned") = view;
        self.changed.notify_all();
    }
}

/// When this server last accepted an AppendEntries (heartbeats included)
/// from a leader: Nomad's `X-Nomad-LastContact` on a follower.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    epoch: Instant,
    /// Milliseconds after `epoch`, plus one (0: never).
    at_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact { epoch: Instant::now(), at_ms: AtomicU64::new(0) }
    }
}

impl LeaderContact {
    pub(crate) fn heard_now(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.at_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// Time since the last contact; `None` if there was none yet.
    pub(crate) fn since(&self) -> Option<Duration> {
        match self.at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.epoch.elapsed().saturating_sub(Duration::from_millis(at - 1))),
        }
    }
}

/// A request to the raft thread.
#[derive(Debug)]
pub(crate) enum RaftRequest {
    Write { payload: LogPayload, reply: SyncSender<Result<ApplyReply, WriteError>> },
    Initialize { members: BTreeMap<u64, ServerNode>, reply: SyncSender<Result<(), WriteError>> },
    AddVoter { id: u64, node: ServerNode, reply: SyncSender<Result<(), WriteError>> },
    Shutdown { reply: SyncSender<()> },
}

/// How long membership changes may take: adding a voter first catches it
/// up as a learner, which may mean a snapshot transfer.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A cloneable, thread-safe handle to one server's raft.
#[derive(Debug, Clone)]
pub struct RaftHandle {
    pub(crate) requests: UnboundedSender<RaftRequest>,
    pub(crate) view: Arc<ViewCell>,
    pub(crate) contact: Arc<LeaderContact>,
}

impl RaftHandle {
    /// How long ago this server last heard from a leader: zero on the
    /// leader itself (as `view` shows it), `None` when it never has.
    pub fn last_leader_contact(&self, view: &RaftView) -> Option<Duration> {
        if view.is_leader() { Some(Duration::ZERO) } else { self.contact.since() }
    }

    pub fn view(&self) -> RaftView {
        self.view.view.lock().expect("raft view poisoned").clone()
    }

    /// Wait until `done` holds for the view or `timeout` passes; returns
    /// the last view and whether `done` held.
    pub fn wait_view(&self, timeout: Duration, done: impl Fn(&RaftView) -> bool) -> (RaftView, bool) {
        let deadline = Instant::now() + timeout;
        let mut view = self.view.view.lock().expect("raft view poisoned");
        loop {
            if done(&view) {
                return (view.clone(), true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (view.clone(), false);
            }
            view = self.view.changed.wait_timeout(view, left).expect("raft view poisoned").0;
        }
    }

    /// Propose an entry and wait until it is applied here (leader only).
    pub fn write(&self, payload: LogPayload, timeout: Duration) -> Result<ApplyReply, WriteError> {
        let (reply, rx) = sync_channel(1);
        self.send(RaftRequest::Write { payload, reply })?;
        wait(rx, timeout)?
    }

    /// Form a new cluster from `members` (the first start of a cluster).
    pub fn initialize(&self, members: BTreeMap<u64, ServerNode>) -> Result<(), WriteError> {
        let (reply, rx) = sync_channel(1);
        self.send(RaftRequest::Initialize { members, reply })?;
        wait(rx, MEMBERSHIP_CHANGE_TIMEOUT)?
    }

    /// Add a server as a voter (leader only): learner first, then voter.
    pub fn add_voter(&self, id: u64, node: ServerNode) -> Result<(), WriteError> {
        let (reply, rx) = sync_channel(1);
        self.send(RaftRequest::AddVoter { id, node, reply })?;
        wait(rx, MEMBERSHIP_CHANGE_TIMEOUT)?
    }

    /// Stop raft; returns once the raft thread has shut it down.
    pub fn shutdown(&self, timeout: Duration) {
        let (reply, rx) = sync_channel(1);
        if self.send(RaftRequest::Shutdown { reply }).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }

    fn send(&self, request: RaftRequest) -> Result<(), WriteError> {
        self.requests.unbounded_send(request).map_err(|_| WriteError::Stopped("the raft thread has exited".into()))
    }
}

fn wait<T>(rx: Receiver<T>, timeout: Duration) -> Result<T, WriteError> {
    rx.recv_timeout(timeout).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => WriteError::Timeout(timeout),
        std::sync::mpsc::RecvTimeoutError::Disconnected => WriteError::Stopped("the request was dropped".into()),
    })
}
