//! The raft thread: one compio runtime that owns openraft, the redb log,
//! the state machine and the QUIC endpoint (raft messages and server RPC).
//! It publishes a [`RaftView`] after every metrics change, serves
//! [`RaftRequest`]s from other threads, and forms or joins the cluster.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Config, ServerState, SnapshotPolicy};

use super::ServerConfig;
use super::client_rpc::ClientRpc;
use super::client_thread::ClientRpcThread;
use super::committer::LeaderForwarder;
use super::engine_fsm::EngineFsm;
use super::handle::{LeaderContact, RaftHandle, RaftRequest, RaftView, Role, ViewCell, WriteError};
use super::network::Network;
use super::rpc_methods::{self as method, Handler, ServerRaft};
use crate::quic::ClusterTls;
use crate::raft::{ApplyReply, LogPayload, LogStore, LogStoreMetrics, ServerNode, StateMachineStore};
use crate::rpc::{BlockingRpcClient, RpcClient, RpcError, RpcServer};

/// Raft's clock, in milliseconds. Defaults suit servers on one LAN:
/// heartbeats every 200 ms, an election after 1–2 s without one, so a dead
/// leader is replaced well within 5 s.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Entries applied since the last snapshot before a new one is taken
    /// (Nomad's `raft_snapshot_threshold`, 8192).
    pub snapshot_threshold: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_threshold: 8192,
        }
    }
}

/// How often a server that is not yet in a cluster looks for its peers.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// How long a status or join call to a peer may take.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Log entries kept after a snapshot, so a follower slightly behind
/// catches up from the log instead of a whole snapshot.
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1024;

/// How long the caller waits for the raft thread to come up (opening a
/// large log or loading a large snapshot takes a while).
const START_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) struct Started {
    pub(crate) id: u64,
    pub(crate) handle: RaftHandle,
    pub(crate) forwarder: Arc<dyn LeaderForwarder>,
    pub(crate) rpc_addr: SocketAddr,
    pub(crate) log_metrics: LogStoreMetrics,
    /// A blocking RPC client with this server's identity, for OS threads.
    pub(crate) client: BlockingRpcClient,
}

/// This server's raft id: random on first start, then read from the data
/// dir, so a restarted server is the same member.
fn server_id(data_dir: &Path) -> std::io::Result<u64> {
    let path = data_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: not a server id: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Non-zero and below 2^53 so it prints the same everywhere.
            let id = fastrand::u64(1..(1 << 53));
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, id.to_string())?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// The cluster TLS identity: given files, or a dev CA generated once in
/// the data dir (good for one server, or servers sharing that dir's CA).
pub(crate) fn load_tls(config: &ServerConfig) -> std::io::Result<ClusterTls> {
    let err = |e: crate::quic::TlsError| std::io::Error::other(e.to_string());
    match &config.tls {
        Some(files) => ClusterTls::load(&files.ca_file, &files.cert_file, &files.key_file).map_err(err),
        None => {
            let dir = config.data_dir.join("tls");
            let files = [crate::quic::tls::CA_FILE, crate::quic::tls::CERT_FILE, crate::quic::tls::KEY_FILE];
            if files.iter().all(|f| dir.join(f).exists()) {
                ClusterTls::load(&dir.join(files[0]), &dir.join(files[1]), &dir.join(files[2])).map_err(err)
            } else {
                ClusterTls::generate_dev(&dir).map_err(err)
            }
        }
    }
}

pub(crate) fn start(
    config: &ServerConfig,
    fsm: EngineFsm,
    services: Arc<std::sync::OnceLock<Arc<caravan_engine::duties::DutiesLeader>>>,
    client: Arc<ClientRpc>,
) -> std::io::Result<Started> {
    let id = server_id(&config.data_dir)?;
    let tls = load_tls(config)?;
    let client = ClientRpcThread::start(client)?;
    let raft_dir = config.data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir)?;
    let log = LogStore::open(&raft_dir.join("log.redb")).map_err(std::io::Error::other)?;
    let log_metrics = log.metrics();
    let state_machine = StateMachineStore::open(&raft_dir.join("snapshots"), fsm).map_err(std::io::Error::other)?;
    let raft_config = Config {
        cluster_name: "caravan".into(),
        heartbeat_interval: config.raft.heartbeat_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_threshold),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT.min(config.raft.snapshot_threshold),
        ..Default::default()
    }
    .validate()
    .map_err(|e| std::io::Error::other(format!("raft configuration: {e}")))?;
    let (requests, request_rx) = futures_channel::mpsc::unbounded();
    let view = Arc::new(ViewCell::default());
    let contact = Arc::new(LeaderContact::default());
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<std::io::Result<SocketAddr>>(1);
    let thread_view = view.clone();
    let thread_contact = contact.clone();
    let thread_tls = tls.clone();
    let thread_config = config.clone();
    let incoming_dir = raft_dir.join("incoming");
    std::thread::Builder::new().name("raft".into()).spawn(move || {
        let runtime = match crate::runtime::server_runtime() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = started_tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(run(RaftThread {
            id,
            config: thread_config,
            raft_config: Arc::new(raft_config),
            tls: thread_tls,
            log,
            state_machine,
            view: thread_view,
            contact: thread_contact,
            requests: request_rx,
            started: started_tx,
            incoming_dir,
            services,
            client,
        }));
    })?;
    let rpc_addr = started_rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| std::io::Error::other("the raft thread did not start"))??;
    let client = BlockingRpcClient::start(SocketAddr::from(([0, 0, 0, 0], 0)), &tls)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let forwarder = Arc::new(RpcForwarder { client: client.clone() });
    Ok(Started { id, handle: RaftHandle { requests, view, contact }, forwarder, rpc_addr, log_metrics, client })
}

struct RaftThread {
    id: u64,
    config: ServerConfig,
    raft_config: Arc<Config>,
    tls: ClusterTls,
    log: LogStore,
    state_machine: StateMachineStore<EngineFsm>,
    view: Arc<ViewCell>,
    contact: Arc<LeaderContact>,
    requests: futures_channel::mpsc::UnboundedReceiver<RaftRequest>,
    started: std::sync::mpsc::SyncSender<std::io::Result<SocketAddr>>,
    incoming_dir: PathBuf,
    services: Arc<std::sync::OnceLock<Arc<caravan_engine::duties::DutiesLeader>>>,
    client: ClientRpcThread,
}

async fn run(t: RaftThread) {
    let raft_cell: Rc<RefCell<Option<ServerRaft>>> = Rc::new(RefCell::new(None));
    let fail = |e: String| {
        tracing::error!(error = %e, "raft thread failed to start");
        let _ = t.started.send(Err(std::io::Error::other(e)));
    };
    // The endpoint binds first so the advertised address is known (port 0
    // picks one), then raft starts behind the handler.
    let placeholder = ServerNode::default();
    let handler = Rc::new(Handler::new(
        raft_cell.clone(),
        (t.id, placeholder),
        t.incoming_dir.clone(),
        t.services.clone(),
        t.client,
        method::RaftStatus { view: t.view.clone(), contact: t.contact.clone() },
    ));
    let server = match RpcServer::bind(t.config.rpc_bind, &t.tls, handler.clone()).await {
        Ok(s) => s,
        Err(e) => return fail(format!("binding the rpc endpoint {}: {e}", t.config.rpc_bind)),
    };
    let rpc_addr = server.local_addr();
    let me = ServerNode {
        rpc_addr: if t.config.rpc_advertise.is_empty() { rpc_addr.to_string() } else { t.config.rpc_advertise.clone() },
        http_addr: t.config.http_advertise.clone(),
        name: t.config.name.clone(),
    };
    // Peers are dialled from the listening socket: one address per server
    // in both directions, and the same certificate.
    let client = Rc::new(RpcClient::with_endpoint(server.endpoint().clone()));
    let raft =
        match ServerRaft::new(t.id, t.raft_config.clone(), Network { client: client.clone() }, t.log, t.state_machine)
            .await
        {
            Ok(r) => r,
            Err(e) => return fail(format!("starting raft: {e}")),
        };
    *raft_cell.borrow_mut() = Some(raft.clone());
    // STATUS answers with the advertised node from now on.
    *handler.me.borrow_mut() = (t.id, me.clone());
    let _ = t.started.send(Ok(rpc_addr));
    let lease = Duration::from_millis(t.config.raft.election_timeout_max_ms);
    compio::runtime::spawn(publish_view(raft.clone(), t.view.clone(), lease)).detach();
    compio::runtime::spawn(form_or_join(raft.clone(), client.clone(), t.id, me, t.config.clone())).detach();
    let mut requests = t.requests;
    while let Some(request) = requests.next().await {
        match request {
            RaftRequest::Write { payload, reply } => {
                let raft = raft.clone();
                compio::runtime::spawn(async move {
                    let _ = reply.send(write(&raft, payload).await);
                })
                .detach();
            }
            RaftRequest::Initialize { members, reply } => {
                let result = raft.initialize(members).await.map_err(|e| WriteError::Raft(e.to_string()));
                let _ = reply.send(result);
            }
            RaftRequest::AddVoter { id, node, reply } => {
                let raft = raft.clone();
                compio::runtime::spawn(async move {
                    let _ = reply.send(add_voter(&raft, id, node).await);
                })
                .detach();
            }
            RaftRequest::Shutdown { reply } => {
                let _ = raft.shutdown().await;
                server.shutdown().await;
                let mut view = t.view.view_now();
                view.role = Role::Shutdown;
                t.view.publish(view);
                let _ = reply.send(());
                return;
            }
        }
    }
}

async fn write(raft: &ServerRaft, payload: LogPayload) -> Result<ApplyReply, WriteError> {
    match raft.client_write(payload).await {
        Ok(resp) => Ok(resp.data),
        Err(e) => Err(match e.forward_to_leader() {
            Some(fwd) => WriteError::NotLeader { leader: fwd.leader_id.zip(fwd.leader_node.clone()) },
            None => WriteError::Raft(e.to_string()),
        }),
    }
}

async fn add_voter(raft: &ServerRaft, id: u64, node: ServerNode) -> Result<(), WriteError> {
    let metrics = raft.metrics().borrow_watched().clone();
    let mut voters: std::collections::BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
    if voters.contains(&id) {
        return Ok(());
    }
    raft.add_learner(id, node, true).await.map_err(|e| WriteError::Raft(e.to_string()))?;
    voters.insert(id);
    raft.change_membership(voters, false).await.map_err(|e| WriteError::Raft(e.to_string()))?;
    Ok(())
}

/// Copy raft's metrics into the shared view after every change.
async fn publish_view(raft: ServerRaft, cell: Arc<ViewCell>, lease: Duration) {
    let mut metrics = raft.metrics();
    loop {
        let view = {
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
            RaftView {
                id: m.id,
                role: match m.state {
                    ServerState::Leader => Role::Leader,
                    ServerState::Candidate => Role::Candidate,
                    ServerState::Learner => Role::Learner,
                    ServerState::Follower => Role::Follower,
                    ServerState::Shutdown => Role::Shutdown,
                },
                term: m.current_term,
                leader: m.current_leader,
                last_log_index: m.last_log_index.unwrap_or(0),
                committed: m.local_committed.as_ref().map_or(0, |id| id.index),
                last_applied: m.last_applied.as_ref().map_or(0, |id| id.index),
                snapshot_index: m.snapshot.as_ref().map_or(0, |id| id.index),
                members: membership.nodes().map(|(id, node)| (*id, (node.clone(), voters.contains(id)))).collect(),
                last_quorum_acked: m.last_quorum_acked.as_ref().map(|at| **at),
                lease,
                voters: voters.len(),
            }
        };
        cell.publish(view);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Until this server is in a cluster: if a peer already belongs to one,
/// ask its leader to add us; otherwise, once `bootstrap_expect` servers
/// (us included) are up and none is in a cluster, the one with the lowest
/// id forms it with all of them.
async fn form_or_join(raft: ServerRaft, client: Rc<RpcClient>, id: u64, me: ServerNode, config: ServerConfig) {
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return,
        }
        let mut found: BTreeMap<u64, ServerNode> = BTreeMap::new();
        found.insert(id, me.clone());
        let mut leader = None;
        for peer in &config.retry_join {
            let Ok(addr) = peer.parse::<SocketAddr>() else {
                tracing::warn!(peer, "retry_join: not a host:port address");
                continue;
            };
            let Ok(reply) = client.call(addr, method::STATUS, Vec::new(), PEER_CALL_TIMEOUT).await else { continue };
            let Ok(status) = method::decode_status(&reply) else { continue };
            if status.id == id {
                continue;
            }
            if status.initialized {
                leader = leader.or(status.leader.clone());
            } else {
                found.insert(status.id, status.node);
            }
        }
        if let Some((leader_id, leader_node)) = leader {
            match leader_node.rpc_addr.parse::<SocketAddr>() {
                Ok(addr) => {
                    match client.call(addr, method::JOIN, method::encode_join(id, &me), PEER_CALL_TIMEOUT).await {
                        Ok(_) => tracing::info!(leader = leader_id, "joined the cluster"),
                        Err(e) => tracing::debug!(error = %e, "join refused; retrying"),
                    }
                }
                Err(_) => tracing::warn!(addr = %leader_node.rpc_addr, "leader has a bad rpc address"),
            }
        } else if found.len() >= config.bootstrap_expect.max(1) && found.keys().next() == Some(&id) {
            match raft.initialize(found.clone()).await {
                Ok(()) => {
                    tracing::info!(servers = found.len(), "formed the cluster");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "forming the cluster failed; retrying"),
            }
        }
        compio::time::sleep(JOIN_RETRY).await;
    }
}

/// Forwards a follower's write to the leader over the blocking RPC client.
#[derive(Debug)]
struct RpcForwarder {
    client: BlockingRpcClient,
}

impl LeaderForwarder for RpcForwarder {
    fn forward(&self, leader: &ServerNode, payload: LogPayload, timeout: Duration) -> Result<ApplyReply, WriteError> {
        let addr: SocketAddr = leader
            .rpc_addr
            .parse()
            .map_err(|_| WriteError::Raft(format!("leader has a bad rpc address {:?}", leader.rpc_addr)))?;
        let reply = self.client.call(addr, method::FORWARD_WRITE, payload.bytes, timeout).map_err(|e| match e {
            RpcError::Remote(ref error) if error.code == method::NOT_LEADER => WriteError::NotLeader { leader: None },
            RpcError::Timeout { .. } => WriteError::Timeout(timeout),
            other => WriteError::Raft(other.to_string()),
        })?;
        method::decode_apply_reply(&reply).map_err(|e| WriteError::Raft(format!("bad reply from the leader: {e}")))
    }
}
