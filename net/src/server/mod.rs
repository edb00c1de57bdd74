//! A Caravan server: the engine's state store and FSM replicated by raft,
//! the leader duties that follow leadership, and the HTTP API's view of it.
//!
//! Threads: openraft and the QUIC endpoint (raft and server RPC) run on one
//! compio thread (`raft_thread`); the engine's workers, plan applier and
//! leader loop are OS threads that reach raft through a [`RaftHandle`]; a
//! leadership thread turns the duties on and off (`leadership`). Workers
//! run on every server: a follower's dequeue from the leader's broker and
//! submit plans to its queue over RPC (`worker_rpc`).
//!
//! ```text
//! HTTP write ─► RaftServer::write ─► RaftCommitter ─► raft (leader) ─► log (redb) ─► apply on every server
//!                                      └─ follower: forward to the leader over QUIC
//! apply ─► EngineFsm: Fsm::apply ─► events, LeaderDuties::route (leader only) ─► broker / blocked evals
//! ```
//!
//! Client agents reach the servers over the same QUIC RPC (`client_rpc.rs`:
//! register, heartbeat, blocking allocation pulls, batched status reports)
//! through [`ServerClient`]; the leader marks nodes whose heartbeats stop
//! `down`.

mod client_api;
mod client_codec;
mod client_rpc;
mod client_thread;
mod committer;
mod engine_fsm;
mod handle;
mod leadership;
mod network;
mod raft_messages;
mod raft_thread;
mod read_index;
mod rpc_methods;
mod worker_rpc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use caravan_engine::clock::Clock;
use caravan_engine::duties::{DutiesLeader, LeaderDuties};
use caravan_engine::endpoints::{self, EndpointError};
use caravan_engine::events::{Event, EventBuffer};
use caravan_engine::fsm::Command;
use caravan_engine::heartbeat::{self, HeartbeatConfig, Heartbeats};
use caravan_engine::ids::{EvalId, IdGen, JobKey};
use caravan_engine::model::Job;
use caravan_engine::plan::Committer;
use caravan_engine::state::Cancel;
use caravan_engine::state::StateStore;
use caravan_engine::worker::{WorkerConfig, WorkerStats, spawn_workers};

pub use client_api::{
    ATTEMPTS_MAX, BACKOFF_MAX, BACKOFF_MIN, CALL_TIMEOUT, ClientApiError, NODE_ALLOCS_CALL_SLACK, SERVERS_MAX,
    ServerClient,
};
pub use client_rpc::{
    ALLOC_UPDATE, ALLOC_UPDATE_BATCH_MAX, ALLOC_UPDATE_BATCH_WINDOW, ALLOC_UPDATES_PER_REQUEST_MAX, AllocUpdateRequest,
    AllocsReply, AllocsRequest, CLIENT_WRITERS, HeartbeatRequest, IndexReply, MessageError, NODE_ALLOCS,
    NODE_ALLOCS_WAIT_MAX, NODE_HEARTBEAT, NODE_NOT_FOUND, NODE_REGISTER, RegisterRequest, TtlReply, WRITE_FAILED,
    decode as decode_client_message, encode as encode_client_message,
};
pub use committer::{LeaderForwarder, RaftCommitter, WRITE_TIMEOUT};
pub use handle::{RaftHandle, RaftView, Role, WriteError};
pub use raft_thread::RaftTimings;
pub use read_index::{READ_SYNC_TIMEOUT, ReadSyncError, sync_with_leader};
pub use rpc_methods::NOT_LEADER;

use crate::http::{LeaderContact, Server, WriteBuilder};

/// Everything one server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The agent's `name`; unique in the cluster.
    pub name: String,
    /// Raft log, vote, snapshots, the server id and the dev TLS material.
    pub data_dir: PathBuf,
    /// Where the QUIC endpoint (raft and server RPC) listens.
    pub rpc_bind: SocketAddr,
    /// How other servers reach this one (`host:port`); defaults to the bind
    /// address when empty.
    pub rpc_advertise: String,
    /// How users reach this server's HTTP API, as `/v1/status/*` reports it.
    pub http_advertise: String,
    /// Servers needed before the cluster forms (Nomad's `bootstrap_expect`).
    pub bootstrap_expect: usize,
    /// Other servers' RPC addresses (Nomad's `server_join.retry_join`).
    pub retry_join: Vec<String>,
    pub workers: usize,
    pub worker: WorkerConfig,
    pub raft: RaftTimings,
    /// The cluster CA and this server's certificate; `None` generates a dev
    /// CA in the data dir (one server, or tests that share it).
    pub tls: Option<TlsFiles>,
    pub seed: u64,
    /// Nomad's `min_heartbeat_ttl` (10 s): the shortest TTL handed to a
    /// client agent.
    pub min_heartbeat_ttl: Duration,
    /// Nomad's `heartbeat_grace` (10 s): how long past its TTL a node may
    /// be silent before the leader marks it down.
    pub heartbeat_grace: Duration,
    /// Nomad's `max_heartbeats_per_second` (50): the TTL grows with the
    /// node count so the leader receives at most this many a second.
    pub max_heartbeats_per_second: u32,
}

/// Nomad's `tls { ca_file cert_file key_file }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ServerConfig {
    /// A one-server cluster in `data_dir` on an ephemeral loopback port.
    pub fn single(name: &str, data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            data_dir,
            rpc_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rpc_advertise: String::new(),
            http_advertise: String::new(),
            bootstrap_expect: 1,
            retry_join: Vec::new(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()) + 1,
            worker: WorkerConfig::default(),
            raft: RaftTimings::default(),
            tls: None,
            seed: fastrand::u64(..),
            min_heartbeat_ttl: heartbeat::MIN_HEARTBEAT_TTL,
            heartbeat_grace: heartbeat::HEARTBEAT_GRACE,
            max_heartbeats_per_second: heartbeat::MAX_HEARTBEATS_PER_SECOND,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct RaftServer {
    pub id: u64,
    pub name: String,
    pub store: Arc<StateStore>,
    pub duties: Arc<LeaderDuties>,
    pub raft: RaftHandle,
    pub committer: Arc<RaftCommitter>,
    /// The address the QUIC endpoint is bound to.
    pub rpc_addr: SocketAddr,
    pub worker_stats: Vec<Arc<WorkerStats>>,
    /// The raft log's counters (fsyncs).
    pub log_metrics: crate::raft::LogStoreMetrics,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdGen>,
    events: Arc<Mutex<EventBuffer>>,
    stop: Arc<AtomicBool>,
    workers_cancel: Cancel,
    client: Arc<client_rpc::ClientRpc>,
    /// Calls to other servers from OS threads (read indexes).
    rpc: crate::rpc::BlockingRpcClient,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// How long shutdown waits for raft to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl RaftServer {
    /// Open the data dir, start raft and the RPC endpoint, join or form the
    /// cluster, and follow leadership.
    pub fn start(config: ServerConfig, clock: Arc<dyn Clock>) -> std::io::Result<RaftServer> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Arc::new(StateStore::new());
        let duties = Arc::new(LeaderDuties::new(clock.clone()));
        let events = Arc::new(Mutex::new(EventBuffer::default()));
        let fsm = engine_fsm::EngineFsm::new(store.clone(), duties.clone(), events.clone());
        let establisher = fsm.establisher();
        let heartbeats = Arc::new(Heartbeats::new(
            HeartbeatConfig {
                min_ttl: config.min_heartbeat_ttl,
                grace: config.heartbeat_grace,
                max_heartbeats_per_second: config.max_heartbeats_per_second,
            },
            config.seed ^ 0x4eb,
        ));
        let client = client_rpc::ClientRpc::new(store.clone(), heartbeats.clone(), clock.clone(), config.seed ^ 0xc11);
        let services = Arc::new(OnceLock::new());
        let started = raft_thread::start(&config, fsm, services.clone(), client.clone())?;
        let committer = Arc::new(RaftCommitter { raft: started.handle.clone(), forwarder: Some(started.forwarder) });
        let local =
            Arc::new(DutiesLeader { store: store.clone(), duties: duties.clone(), committer: committer.clone() });
        let _ = services.set(local.clone());
        let rpc = started.client.clone();
        let routing =
            Arc::new(worker_rpc::RoutingLeader { local, raft: started.handle.clone(), client: started.client });
        let stop = Arc::new(AtomicBool::new(false));
        let workers_cancel = Cancel::new();
        let (worker_stats, mut threads) =
            spawn_workers(config.workers, &store, routing, &clock, &config.worker, &workers_cancel);
        let leadership = leadership::Leadership {
            raft: started.handle.clone(),
            store: store.clone(),
            duties: duties.clone(),
            establisher,
            committer: committer.clone(),
            clock: clock.clone(),
            config: leadership::LeadershipConfig { seed: config.seed },
            heartbeats,
        };
        threads.push(leadership.spawn(stop.clone()));
        threads.extend(client.start(started.handle.clone(), committer.clone()));
        Ok(RaftServer {
            id: started.id,
            name: config.name.clone(),
            store,
            duties,
            raft: started.handle,
            committer,
            rpc_addr: started.rpc_addr,
            worker_stats,
            log_metrics: started.log_metrics,
            clock,
            ids: Mutex::new(IdGen::with_seed(config.seed ^ 0x1d5)),
            events,
            stop,
            workers_cancel,
            client,
            rpc,
            threads: Mutex::new(threads),
        })
    }

    /// Wait until some server leads and this one has applied its commits.
    pub fn wait_for_leader(&self, timeout: Duration) -> bool {
        self.raft.wait_view(timeout, |v| v.leader.is_some() && v.last_applied >= v.committed).1
    }

    /// Stop following leadership (duties revoked) and stop raft.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.workers_cancel.cancel();
        self.client.stop();
        for t in self.threads.lock().expect("threads poisoned").drain(..) {
            let _ = t.join();
        }
        self.raft.shutdown(SHUTDOWN_TIMEOUT);
    }

    /// Commit through raft. A follower's write is forwarded and answered
    /// once the leader has applied it, as in Nomad; this server may apply
    /// it a little later, and a read without `?stale` waits for that
    /// (see `read_index`).
    fn commit(&self, command: Command) -> Result<u64, EndpointError> {
        self.committer.commit(command).map_err(|e| EndpointError::Commit(e.0))
    }
}

impl Server for RaftServer {
    fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    fn register_job(&self, job: Job) -> Result<(EvalId, u64), EndpointError> {
        let command = endpoints::register_job(job, self.clock.now_ns(), &mut self.ids.lock().expect("ids poisoned"))?;
        let eval_id = match &command {
            Command::JobRegister { eval: Some(eval), .. } => eval.id,
            _ => EvalId::NIL,
        };
        let index = self.commit(command)?;
        Ok((eval_id, index))
    }

    fn deregister_job(&self, key: &JobKey, purge: bool) -> Result<(EvalId, u64), EndpointError> {
        self.sync_with_leader().map_err(EndpointError::Commit)?;
        let command = endpoints::deregister_job(
            &self.store.snapshot(),
            key,
            purge,
            self.clock.now_ns(),
            &mut self.ids.lock().expect("ids poisoned"),
        )?;
        let eval_id = match &command {
            Command::JobDeregister { eval: Some(eval), .. } => eval.id,
            _ => EvalId::NIL,
        };
        let index = self.commit(command)?;
        Ok((eval_id, index))
    }

    fn write(&self, build: &mut WriteBuilder<'_>) -> Result<u64, EndpointError> {
        // Built from this server's latest state, caught up with the
        // leader's first; the FSM re-checks what it must on apply (a job
        // deleted in between is refused there).
        self.sync_with_leader().map_err(EndpointError::Commit)?;
        let command = build(&self.store.snapshot(), &mut self.ids.lock().expect("ids poisoned"), self.clock.now_ns())?;
        let index = self.commit(command)?;
        Ok(index)
    }

    fn is_leader(&self) -> bool {
        self.raft.view().is_leader()
    }

    fn sync_with_leader(&self) -> Result<(), String> {
        read_index::sync_with_leader(&self.raft, &self.rpc, &self.store, READ_SYNC_TIMEOUT).map_err(|e| e.to_string())
    }

    fn leader_contact(&self) -> LeaderContact {
        let view = self.raft.view();
        LeaderContact { known_leader: view.leader_node().is_some(), last_contact: self.raft.last_leader_contact(&view) }
    }

    fn events_since(&self, index: u64, limit: usize) -> Vec<Event> {
        let state = self.store.snapshot();
        self.events.lock().expect("events poisoned").since(index, limit, &state)
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        let view = self.raft.view();
        let mut gauges =
            crate::http::engine_gauges(&self.duties.broker, &self.duties.plans, &self.store, &self.worker_stats);
        gauges.extend([
            ("nomad.raft.commit_index", view.committed as f64),
            ("nomad.raft.last_index", view.last_log_index as f64),
            ("nomad.raft.term", view.term as f64),
            ("nomad.raft.leader", if view.is_leader() { 1.0 } else { 0.0 }),
            ("caravan.raft.log_fsyncs", self.log_metrics.fsync_count() as f64),
        ]);
        gauges
    }

    fn leader_addr(&self) -> String {
        self.raft.view().leader_node().map(|(_, node)| node.rpc_addr).unwrap_or_default()
    }

    fn raft_servers(&self) -> Vec<crate::http::RaftServerInfo> {
        let view = self.raft.view();
        let leader = view.leader_node().map(|(id, _)| id);
        view.members
            .iter()
            .map(|(id, (node, voter))| crate::http::RaftServerInfo {
                id: id.to_string(),
                node: node.name.clone(),
                address: node.rpc_addr.clone(),
                leader: leader == Some(*id),
                voter: *voter,
            })
            .collect()
    }

    fn peers(&self) -> Vec<String> {
        self.raft.view().members.values().filter(|(_, voter)| *voter).map(|(node, _)| node.rpc_addr.clone()).collect()
    }
}
