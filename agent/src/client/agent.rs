//! The client agent: makes this machine a node of the cluster and runs what
//! the servers place on it.
//!
//! [`ClientAgent::start`] loads (or creates) the node id, recovers what an
//! earlier agent ran from the state database, and starts its threads:
//!
//! - `client-node`: fingerprints the machine (host, drivers, GPUs),
//!   registers the node, heartbeats at the TTL the servers hand out, and
//!   re-fingerprints every [`ClientTuning::fingerprint_period`],
//!   re-registering only when [`node_changes`] finds a difference. Errors
//!   are retried with backoff; a server that no longer knows the node gets
//!   it registered again.
//! - `client-watch`: long-polls the node's allocations (a blocking query on
//!   the last index) and hands each new answer to the allocation loop.
//! - `client-allocs`: the allocation loop, the only owner of the runners and
//!   of the state database. It diffs the servers' allocations against what
//!   runs (starts new ones, kills those the servers stopped, forgets those
//!   they dropped), takes every task state change, persists allocations,
//!   task states and task handles, and queues the allocations' reports.
//! - `client-updates`: sends the queued reports in one `update_allocs` every
//!   [`ALLOC_UPDATE_BATCH_INTERVAL`], newest report per allocation.
//!
//! Stopping the agent ([`ClientAgent::shutdown`], or dropping it) leaves the
//! tasks running, as Nomad does: the next agent on the same data directory
//! re-attaches to them from the state database. In this process, the old
//! task runners are cut off from their drivers (they neither start, stop nor
//! destroy anything any more), so they never fight the new agent's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use caravan_engine::clock::{Clock, SystemClock};
use caravan_engine::ids::{AllocId, IdGen, NodeId};
use caravan_engine::model::{
    AllocClientUpdate, Allocation, ConfigValue, DesiredStatus, Node, NodeStatus, TaskLifecycleState,
};

use super::alloc_runner::{AllocContext, AllocRunner};
use super::driver::{Driver, DriverError, DriverFingerprint, ExitResult, TaskHandle, TaskSpec};
use super::env::NodeEnv;
use super::server_api::{ServerApi, ServerError};
use super::state_db::{StateChange, StateDb, StateDbError};
use super::task_runner::TaskStateUpdate;
use crate::config::AgentConfig;
use crate::fingerprint::{self, HostFingerprint, fingerprint_node, node_changes};

/// How often allocation reports go to the servers, newest per allocation:
/// Nomad's client batches every 200 ms, so a burst of task events (100
/// tasks starting) costs one RPC, not hundreds, and a report waits at most
/// this long.
pub const ALLOC_UPDATE_BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Reports per `update_allocs` call at most: one call stays a bounded RPC
/// (a few hundred KiB) even when thousands of allocations change at once.
pub const ALLOC_UPDATES_PER_CALL_MAX: usize = 512;
/// First retry delay after a failed server call.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay: a server outage is noticed within this once it
/// ends, and a fleet of clients retrying does not flood a recovering leader.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Shortest heartbeat interval whatever TTL a server hands out: a TTL of
/// zero (a bug, a test) must not turn the heartbeat into a busy loop.
pub const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Events the allocation loop takes before it persists and reports: one
/// database transaction per round, bounded so a flood of events never
/// holds back the reports of the first ones for long.
pub const EVENTS_PER_ROUND_MAX: usize = 1024;

/// The longest the allocation loop sleeps while a health decision is
/// pending: the decision is due at a clock time, and a second's slack
/// covers a clock that is not the wall clock (tests) without spinning.
const HEALTH_CHECK_WAIT_MAX_NS: i64 = 1_000_000_000;
/// How often the node is fingerprinted again by default (Nomad's drivers
/// fingerprint every 30 s).
pub const FINGERPRINT_PERIOD_DEFAULT: Duration = Duration::from_secs(30);
/// How long one blocking `node_allocs` query waits by default: Nomad's
/// client holds its query up to 5 minutes; changes return at once anyway.
pub const WATCH_WAIT_DEFAULT: Duration = Duration::from_secs(300);
/// The node id file in the state directory, Nomad's name.
pub const NODE_ID_FILE: &str = "node-id";
/// The state database in the state directory.
pub const STATE_DB_FILE: &str = "state.db";

/// Errors that keep the client agent from starting. Once started, nothing
/// stops it but [`ClientAgent::shutdown`]: every later failure is retried
/// or reported on the allocation it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the client needs a data_dir")]
    NoDataDir,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node id file {path} holds {text:?}, not a node id")]
    BadNodeId { path: String, text: String },
    #[error(transparent)]
    StateDb(#[from] StateDbError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let context = context.into();
    move |source| ClientError::Io { context, source }
}

/// Intervals of the client's loops; the defaults are Nomad's, tests shorten
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTuning {
    pub fingerprint_period: Duration,
    pub watch_wait: Duration,
}

impl Default for ClientTuning {
    fn default() -> ClientTuning {
        ClientTuning { fingerprint_period: FINGERPRINT_PERIOD_DEFAULT, watch_wait: WATCH_WAIT_DEFAULT }
    }
}

/// Exponential backoff between [`RETRY_BACKOFF_MIN`] and [`RETRY_BACKOFF_MAX`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: RETRY_BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = RETRY_BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RETRY_BACKOFF_MAX);
        delay
    }
}

/// What the node thread and the watcher tell each other, and the stop flag.
#[derive(Debug, Default)]
struct Signals {
    stop: bool,
    /// The servers know the node: the watcher may poll.
    registered: bool,
    /// The servers forgot the node: register again.
    reregister: bool,
}

#[derive(Debug, Default)]
struct Shared {
    signals: Mutex<Signals>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Signals> {
        self.signals.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stopped(&self) -> bool {
        self.lock().stop
    }

    /// Sleeps `timeout` or until the agent stops; true when it stopped.
    fn sleep(&self, timeout: Duration) -> bool {
        let signals = self.lock();
        let (signals, _) = self
            .changed
            .wait_timeout_while(signals, timeout, |s| !s.stop)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        signals.stop
    }
}

/// A driver as this agent's task runners see it: once the agent has shut
/// down, the runners it left behind can no longer touch their tasks, so
/// the tasks keep running for the next agent. `wait` still works: an old
/// runner keeps watching until its task ends, then gives up (its restart
/// finds the driver gone), and its reports go nowhere.
#[derive(Debug)]
struct AgentDriver {
    inner: Arc<dyn Driver>,
    detached: Arc<AtomicBool>,
}

impl AgentDriver {
    fn detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }
}

impl Driver for AgentDriver {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn fingerprint(&self) -> DriverFingerprint {
        self.inner.fingerprint()
    }

    fn validate_config(&self, config: &ConfigValue) -> Result<(), DriverError> {
        self.inner.validate_config(config)
    }

    fn start(&self, spec: &TaskSpec) -> Result<TaskHandle, DriverError> {
        if self.detached() {
            // A `Start` error is permanent: the old runner ends at once.
            return Err(DriverError::Start("the client agent that ran this task has shut down".into()));
        }
        self.inner.start(spec)
    }

    fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.inner.wait(handle)
    }

    fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<(), DriverError> {
        if self.detached() {
            return Ok(());
        }
        self.inner.signal(handle, signal)
    }

    fn stop(&self, handle: &TaskHandle, kill_timeout: Duration) -> Result<(), DriverError> {
        if self.detached() {
            return Ok(());
        }
        self.inner.stop(handle, kill_timeout)
    }

    fn recover(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if self.detached() {
            return Err(DriverError::Start("the client agent has shut down".into()));
        }
        self.inner.recover(handle)
    }

    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if self.detached() {
            return Ok(());
        }
        self.inner.destroy(handle)
    }
}

/// What the allocation loop is told.
#[derive(Debug)]
enum AgentEvent {
    /// The servers' allocations for this node (a blocking query answered).
    Allocs(Vec<Allocation>),
    /// A task runner's state change.
    Task(Box<TaskStateUpdate>),
    Stop,
}

/// Reports waiting for the next batch, newest per allocation: bounded by
/// the number of allocations on the node.
#[derive(Debug, Default)]
struct UpdateQueue {
    pending: Mutex<(BTreeMap<AllocId, AllocClientUpdate>, bool)>,
    wake: Condvar,
}

impl UpdateQueue {
    fn lock(&self) -> MutexGuard<'_, (BTreeMap<AllocId, AllocClientUpdate>, bool)> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, update: AllocClientUpdate) {
        self.lock().0.insert(update.alloc_id, update);
    }

    /// Puts back reports that failed to send, unless a newer one is queued.
    fn requeue(&self, updates: Vec<AllocClientUpdate>) {
        let mut pending = self.lock();
        for update in updates {
            pending.0.entry(update.alloc_id).or_insert(update);
        }
    }

    fn stop(&self) {
        self.lock().1 = true;
        self.wake.notify_all();
    }

    /// Waits `interval` (or until stopped); returns the queued reports and
    /// whether the agent stops.
    fn take_after(&self, interval: Duration) -> (Vec<AllocClientUpdate>, bool) {
        let pending = self.lock();
        let (mut pending, _) =
            self.wake.wait_timeout_while(pending, interval, |p| !p.1).unwrap_or_else(|poisoned| poisoned.into_inner());
        let updates = std::mem::take(&mut pending.0).into_values().collect();
        (updates, pending.1)
    }
}

/// Which tasks of this client's allocations are dead for good, as the
/// allocation loop last recorded them: what the HTTP API of a client-only
/// agent asks to end a followed log. One entry per allocation the loop
/// holds (bounded as the runners are).
#[derive(Debug, Clone, Default)]
pub struct TaskLiveness {
    dead: Arc<Mutex<BTreeMap<AllocId, BTreeMap<String, bool>>>>,
}

impl TaskLiveness {
    /// `None` for an allocation or task this client does not know.
    pub fn task_dead(&self, alloc_id: &str, task: &str) -> Option<bool> {
        let id = alloc_id.parse::<AllocId>().ok()?;
        self.lock().get(&id)?.get(task).copied()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<AllocId, BTreeMap<String, bool>>> {
        self.dead.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, alloc_id: AllocId, task: &str, dead: bool) {
        self.lock().entry(alloc_id).or_default().insert(task.to_string(), dead);
    }

    fn forget(&self, alloc_id: AllocId) {
        self.lock().remove(&alloc_id);
    }
}

/// The device instances assigned to each task of this client's allocations,
/// as the allocation loop holds them: what `/v1/client/allocation/<id>/stats`
/// reports the usage of. One entry per allocation the loop holds.
#[derive(Debug, Clone, Default)]
pub struct AllocDevices {
    by_alloc: Arc<Mutex<BTreeMap<AllocId, TaskInstanceIds>>>,
}

/// Device instance ids by task name.
pub type TaskInstanceIds = BTreeMap<String, Vec<String>>;

impl AllocDevices {
    /// Instance ids by task name (every task of the allocation, with or
    /// without devices); `None` for an allocation this client does not hold.
    pub fn get(&self, alloc_id: AllocId) -> Option<TaskInstanceIds> {
        self.lock().get(&alloc_id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<AllocId, TaskInstanceIds>> {
        self.by_alloc.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, alloc: &Allocation) {
        let tasks = alloc
            .group()
            .tasks
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let ids = super::env::task_devices(alloc, index)
                    .iter()
                    .flat_map(|device| device.instance_ids.iter().map(|id| id.to_string()))
                    .collect();
                (task.name.to_string(), ids)
            })
            .collect();
        self.lock().insert(alloc.id, tasks);
    }

    fn forget(&self, alloc_id: AllocId) {
        self.lock().remove(&alloc_id);
    }
}

/// A running client agent; see the module documentation.
pub struct ClientAgent {
    node_id: NodeId,
    shared: Arc<Shared>,
    events: Sender<AgentEvent>,
    updates: Arc<UpdateQueue>,
    detached: Arc<AtomicBool>,
    liveness: TaskLiveness,
    alloc_devices: AllocDevices,
    /// This machine's GPUs; `None` when GPU fingerprinting is misconfigured.
    gpus: Option<Arc<caravan_gpu::Fingerprinter>>,
    /// Joined on shutdown: the node thread, the allocation loop (which owns
    /// the state database, closed when it ends) and the update sender. The
    /// watcher and the task-update forwarder are not joined: one may sit in
    /// a long poll, the other lives as long as the tasks' runners; neither
    /// holds anything the next agent needs.
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClientAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAgent").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// The allocation directory (`client.alloc_dir`, else `<data_dir>/alloc`):
/// where task directories and logs are.
pub fn alloc_dir(config: &AgentConfig) -> Result<PathBuf, ClientError> {
    client_dirs(config).map(|(_, alloc_dir)| alloc_dir)
}

/// The state directory (`client.state_dir`, else `<data_dir>/client`) and
/// the allocation directory (`client.alloc_dir`, else `<data_dir>/alloc`).
fn client_dirs(config: &AgentConfig) -> Result<(PathBuf, PathBuf), ClientError> {
    let data_dir = config.data_dir.as_ref();
    let state_dir = match (&config.client.state_dir, data_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(data)) => data.join("client"),
        (None, None) => return Err(ClientError::NoDataDir),
    };
    let alloc_dir = match (&config.client.alloc_dir, data_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(data)) => data.join("alloc"),
        (None, None) => return Err(ClientError::NoDataDir),
    };
    Ok((state_dir, alloc_dir))
}

/// Reads the node id an earlier agent wrote, or makes and writes a new one.
pub fn load_or_create_node_id(state_dir: &Path) -> Result<NodeId, ClientError> {
    let path = state_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| ClientError::BadNodeId { path: path.display().to_string(), text: text.trim().to_string() }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).map_err(io_err(format!("create {}", state_dir.display())))?;
            let id = IdGen::from_entropy().node();
            // Written aside and renamed, so a crash never leaves half an id.
            let partial = state_dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&partial, format!("{id}\n")).map_err(io_err(format!("write {}", partial.display())))?;
            std::fs::rename(&partial, &path).map_err(io_err(format!("rename to {}", path.display())))?;
            Ok(id)
        }
        Err(err) => Err(io_err(format!("read {}", path.display()))(err)),
    }
}

/// The node as the servers should see it now.
fn fingerprint_now(
    node_id: NodeId,
    config: &AgentConfig,
    drivers: &[Arc<dyn Driver>],
    gpus: Option<&caravan_gpu::Fingerprinter>,
) -> Node {
    let host = HostFingerprint::read(config);
    let driver_fingerprints: Vec<fingerprint::DriverFingerprint> = drivers
        .iter()
        .map(|driver| {
            let found = driver.fingerprint();
            fingerprint::DriverFingerprint {
                name: driver.name().to_string(),
                detected: found.detected,
                healthy: found.healthy,
                health_description: found.health_description,
                attributes: found.attributes,
            }
        })
        .collect();
    let mut node = fingerprint_node(
        node_id,
        config,
        &host,
        &driver_fingerprints,
        gpus.map_or_else(Vec::new, |gpus| gpus.devices()),
    );
    // The RPC seam has no separate status update: a registering client is
    // ready (Nomad registers `initializing`, then reports `ready`).
    node.status = NodeStatus::Ready;
    node
}

/// This machine's GPU fingerprinter from `plugin "nvidia-gpu"`; `None`
/// (logged) when that block is misconfigured. Made before the drivers, so
/// the `exec` driver can be handed its [`caravan_gpu::MigIndex`].
pub fn detect_gpus(config: &AgentConfig) -> Option<Arc<caravan_gpu::Fingerprinter>> {
    caravan_gpu::Fingerprinter::detect(config.plugins.gpu.clone())
        .map_err(|err| tracing::warn!(%err, "GPU fingerprinting is misconfigured; reporting no GPUs"))
        .ok()
        .map(Arc::new)
}

impl ClientAgent {
    /// Starts the client with Nomad's intervals; see [`ClientAgent::start_with`].
    pub fn start(
        config: &AgentConfig,
        server: Arc<dyn ServerApi>,
        drivers: Vec<Arc<dyn Driver>>,
        gpus: Option<Arc<caravan_gpu::Fingerprinter>>,
    ) -> Result<ClientAgent, ClientError> {
        ClientAgent::start_with(config, ClientTuning::default(), server, drivers, gpus, Arc::new(SystemClock))
    }

    /// Starts the client: node id, recovery of what an earlier agent ran,
    /// then the threads of the module documentation. `gpus` (see
    /// [`detect_gpus`]) is fingerprinted with the node. Fails only when the
    /// data directory or the state database cannot be used; the servers
    /// need not be up.
    pub fn start_with(
        config: &AgentConfig,
        tuning: ClientTuning,
        server: Arc<dyn ServerApi>,
        drivers: Vec<Arc<dyn Driver>>,
        gpus: Option<Arc<caravan_gpu::Fingerprinter>>,
        clock: Arc<dyn Clock>,
    ) -> Result<ClientAgent, ClientError> {
        let (state_dir, alloc_root) = client_dirs(config)?;
        let node_id = load_or_create_node_id(&state_dir)?;
        std::fs::create_dir_all(&alloc_root).map_err(io_err(format!("create {}", alloc_root.display())))?;
        let db = StateDb::open(&state_dir.join(STATE_DB_FILE))?;
        let stored = db.load()?;

        let detached = Arc::new(AtomicBool::new(false));
        let wrapped: BTreeMap<String, Arc<dyn Driver>> = drivers
            .iter()
            .map(|driver| {
                let wrapped: Arc<dyn Driver> =
                    Arc::new(AgentDriver { inner: Arc::clone(driver), detached: Arc::clone(&detached) });
                (driver.name().to_string(), wrapped)
            })
            .collect();
        let host = HostFingerprint::read(config);
        let node_env = NodeEnv {
            region: config.region.clone(),
            datacenter: config.datacenter.clone(),
            node_id: node_id.to_string(),
            node_name: config.node_name(&host.host.hostname),
            ip: host.network.as_ref().map_or_else(|| "127.0.0.1".to_string(), |network| network.ip.to_string()),
        };
        let (task_sender, task_updates) = channel::<TaskStateUpdate>();
        let (events, event_receiver) = channel::<AgentEvent>();
        let ctx = AllocContext {
            drivers: wrapped,
            alloc_root,
            node: node_env,
            clock: Arc::clone(&clock),
            updates: task_sender,
        };
        let shared = Arc::new(Shared::default());
        let updates = Arc::new(UpdateQueue::default());

        let liveness = TaskLiveness::default();
        let alloc_devices = AllocDevices::default();
        let mut allocs = AllocLoop {
            ctx,
            db,
            runners: BTreeMap::new(),
            updates: Arc::clone(&updates),
            liveness: liveness.clone(),
            alloc_devices: alloc_devices.clone(),
        };
        // A GPU fingerprint before any recovered task can restart, so the
        // exec driver's MIG index is filled (a failure is the node loop's to log).
        let _ = gpus.as_deref().and_then(caravan_gpu::Fingerprinter::fingerprint);
        allocs.recover(stored);

        let mut threads = Vec::new();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.to_string()).spawn(body).map_err(io_err(format!("spawn {name}")))
        };
        // Task updates are forwarded into the loop's one channel (the task
        // runner's API is a `Sender<TaskStateUpdate>`). Not joined: it ends
        // when the loop is gone and the next update finds no receiver.
        spawn(
            "client-task-updates",
            Box::new({
                let events = events.clone();
                move || forward_task_updates(task_updates, events)
            }),
        )?;
        threads.push(spawn("client-allocs", Box::new(move || allocs.run(event_receiver)))?);
        threads.push(spawn(
            "client-updates",
            Box::new({
                let (server, updates, shared) = (Arc::clone(&server), Arc::clone(&updates), Arc::clone(&shared));
                move || send_updates(&*server, &updates, &shared)
            }),
        )?);
        threads.push(spawn(
            "client-node",
            Box::new({
                let (server, shared, config) = (Arc::clone(&server), Arc::clone(&shared), config.clone());
                let fingerprint_period = tuning.fingerprint_period;
                let gpus = gpus.clone();
                move || node_loop(node_id, &config, &drivers, gpus.as_deref(), &*server, &shared, fingerprint_period)
            }),
        )?);
        spawn(
            "client-watch",
            Box::new({
                let (shared, events) = (Arc::clone(&shared), events.clone());
                move || watch_allocs(node_id, &*server, &shared, &events, tuning.watch_wait)
            }),
        )?;
        Ok(ClientAgent { node_id, shared, events, updates, detached, liveness, alloc_devices, gpus, threads })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Which of this client's tasks are dead, kept up to date.
    pub fn task_liveness(&self) -> TaskLiveness {
        self.liveness.clone()
    }

    /// What the HTTP API reports this client's usage from.
    pub fn stats_source(&self) -> super::stats_api::StatsSource {
        super::stats_api::StatsSource {
            node_id: self.node_id,
            gpus: self.gpus.clone(),
            alloc_devices: self.alloc_devices.clone(),
        }
    }

    /// Stops the agent and leaves its tasks running; returns once the state
    /// database is closed, so another agent may open the same data dir.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        // First cut the old task runners off their tasks, so nothing they
        // do from here on reaches a task the next agent takes over.
        self.detached.store(true, Ordering::Release);
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        let _ = self.events.send(AgentEvent::Stop);
        self.updates.stop();
        for thread in self.threads.drain(..) {
            let name = thread.thread().name().unwrap_or("client").to_string();
            if thread.join().is_err() {
                tracing::error!(thread = name, "client thread panicked");
            }
        }
    }
}

impl Drop for ClientAgent {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn forward_task_updates(updates: Receiver<TaskStateUpdate>, events: Sender<AgentEvent>) {
    for update in updates {
        if events.send(AgentEvent::Task(Box::new(update))).is_err() {
            return;
        }
    }
}

/// Registers, heartbeats and re-fingerprints until the agent stops.
fn node_loop(
    node_id: NodeId,
    config: &AgentConfig,
    drivers: &[Arc<dyn Driver>],
    gpus: Option<&caravan_gpu::Fingerprinter>,
    server: &dyn ServerApi,
    shared: &Shared,
    fingerprint_period: Duration,
) {
    let mut node = fingerprint_now(node_id, config, drivers, gpus);
    let mut registered = false;
    let mut backoff = Backoff::new();
    let mut next_heartbeat = Instant::now();
    let mut next_fingerprint = Instant::now() + fingerprint_period;
    loop {
        {
            let mut signals = shared.lock();
            if signals.stop {
                return;
            }
            if signals.reregister {
                signals.reregister = false;
                registered = false;
            }
        }
        let now = Instant::now();
        if now >= next_fingerprint {
            let fresh = fingerprint_now(node_id, config, drivers, gpus);
            let changes = node_changes(&node, &fresh);
            if !changes.is_empty() {
                tracing::info!(?changes, "node fingerprint changed; registering again");
                node = fresh;
                registered = false;
            }
            next_fingerprint = now + fingerprint_period;
        }
        if !registered {
            match server.register_node(&node) {
                Ok(ttl) => {
                    tracing::info!(node = %node_id, ?ttl, "node registered");
                    registered = true;
                    backoff.reset();
                    next_heartbeat = Instant::now() + ttl.max(HEARTBEAT_INTERVAL_MIN);
                    shared.lock().registered = true;
                    shared.changed.notify_all();
                }
                Err(err) => {
                    tracing::warn!(%err, "node registration failed; retrying");
                    next_heartbeat = Instant::now() + backoff.next_delay();
                }
            }
        } else if now >= next_heartbeat {
            match server.heartbeat(node_id) {
                Ok(ttl) => {
                    backoff.reset();
                    next_heartbeat = Instant::now() + ttl.max(HEARTBEAT_INTERVAL_MIN);
                }
                Err(ServerError::NodeNotFound(_)) => {
                    tracing::warn!(node = %node_id, "servers do not know the node; registering again");
                    registered = false;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, "heartbeat failed; retrying");
                    next_heartbeat = Instant::now() + backoff.next_delay();
                }
            }
        }
        let wake = next_heartbeat.min(next_fingerprint);
        let signals = shared.lock();
        let _unused = shared
            .changed
            .wait_timeout_while(signals, wake.saturating_duration_since(Instant::now()), |s| !s.stop && !s.reregister)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Long-polls the node's allocations until the agent stops.
fn watch_allocs(node_id: NodeId, server: &dyn ServerApi, shared: &Shared, events: &Sender<AgentEvent>, wait: Duration) {
    let mut index = 0;
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        {
            // Poll only once the servers know the node.
            let signals = shared.lock();
            let signals = shared
                .changed
                .wait_while(signals, |s| !s.stop && !s.registered)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if signals.stop {
                return;
            }
        }
        match server.node_allocs(node_id, index, wait) {
            Ok((allocs, new_index)) => {
                backoff.reset();
                // An index going backwards means the servers' state was
                // rebuilt (a snapshot restore): take the answer and go on
                // from its index.
                let changed = first || new_index != index;
                first = false;
                index = new_index;
                if changed && events.send(AgentEvent::Allocs(allocs)).is_err() {
                    return;
                }
            }
            Err(ServerError::NodeNotFound(_)) => {
                let mut signals = shared.lock();
                signals.registered = false;
                signals.reregister = true;
                drop(signals);
                shared.changed.notify_all();
            }
            Err(err) => {
                tracing::warn!(%err, "watching allocations failed; retrying");
                if shared.sleep(backoff.next_delay()) {
                    return;
                }
            }
        }
        if shared.stopped() {
            return;
        }
    }
}

/// Sends queued reports every [`ALLOC_UPDATE_BATCH_INTERVAL`]; on stop,
/// one last attempt.
fn send_updates(server: &dyn ServerApi, queue: &UpdateQueue, shared: &Shared) {
    let mut backoff = Backoff::new();
    let mut interval = ALLOC_UPDATE_BATCH_INTERVAL;
    loop {
        let (updates, stop) = queue.take_after(interval);
        let mut failed = Vec::new();
        let mut rest = updates;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(ALLOC_UPDATES_PER_CALL_MAX));
            let batch = std::mem::replace(&mut rest, tail);
            if !failed.is_empty() {
                failed.extend(batch);
                continue;
            }
            if let Err(err) = server.update_allocs(batch.clone()) {
                tracing::warn!(%err, count = batch.len(), "sending allocation updates failed; retrying");
                failed.extend(batch);
            }
        }
        if stop || shared.stopped() {
            return;
        }
        if failed.is_empty() {
            backoff.reset();
            interval = ALLOC_UPDATE_BATCH_INTERVAL;
        } else {
            queue.requeue(failed);
            interval = backoff.next_delay().max(ALLOC_UPDATE_BATCH_INTERVAL);
        }
    }
}

/// The allocation loop's state; see the module documentation.
struct AllocLoop {
    ctx: AllocContext,
    db: StateDb,
    runners: BTreeMap<AllocId, AllocRunner>,
    updates: Arc<UpdateQueue>,
    liveness: TaskLiveness,
    alloc_devices: AllocDevices,
}

impl AllocLoop {
    /// Restarts what an earlier agent ran, before any server answers: a
    /// task survives an agent restart even while the servers are away.
    fn recover(&mut self, stored: Vec<super::state_db::StoredAlloc>) {
        let now = self.ctx.clock.now_ns();
        for stored in stored {
            for (task, state) in &stored.tasks {
                self.liveness.set(stored.alloc.id, task, state.state.state == TaskLifecycleState::Dead);
            }
            self.alloc_devices.set(&stored.alloc);
            let stop = stored.alloc.server_terminal();
            let mut runner = AllocRunner::restore(stored, &self.ctx);
            tracing::info!(alloc = %runner.id(), finished = runner.is_finished(), "allocation recovered");
            if stop {
                runner.kill_all();
            }
            self.updates.push(runner.client_update(now));
            self.runners.insert(runner.id(), runner);
        }
    }

    fn run(mut self, events: Receiver<AgentEvent>) {
        let mut next_health_check_ns: Option<i64> = None;
        loop {
            // Wait for an event, or for the next health decision that time
            // alone may bring (a task that has now run long enough).
            let first = match next_health_check_ns {
                None => match events.recv() {
                    Ok(event) => Some(event),
                    Err(_) => return,
                },
                Some(at_ns) => {
                    let wait_ns = at_ns.saturating_sub(self.ctx.clock.now_ns()).clamp(0, HEALTH_CHECK_WAIT_MAX_NS);
                    match events.recv_timeout(Duration::from_nanos(wait_ns.unsigned_abs())) {
                        Ok(event) => Some(event),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            let mut round: Vec<AgentEvent> = first.into_iter().collect();
            while round.len() < EVENTS_PER_ROUND_MAX {
                match events.try_recv() {
                    Ok(event) => round.push(event),
                    Err(_) => break,
                }
            }
            let mut changes = Vec::new();
            let mut dirty = BTreeSet::new();
            let mut stop = false;
            for event in round {
                match event {
                    AgentEvent::Stop => stop = true,
                    AgentEvent::Allocs(allocs) => self.reconcile(allocs, &mut changes, &mut dirty),
                    AgentEvent::Task(update) => self.on_task_update(&update, &mut changes, &mut dirty),
                }
            }
            if stop {
                // Later task updates belong to no agent: the next one reads
                // the tasks' state from the tasks themselves.
                return;
            }
            if let Err(err) = self.db.write(&changes) {
                tracing::error!(%err, "persisting client state failed; an agent restart may lose track of tasks");
            }
            let now = self.ctx.clock.now_ns();
            next_health_check_ns = None;
            for (id, runner) in self.runners.iter_mut() {
                let (decided, check_at_ns) = runner.check_health(now);
                if decided {
                    dirty.insert(*id);
                }
                if let Some(at) = check_at_ns {
                    next_health_check_ns = Some(next_health_check_ns.map_or(at, |n: i64| n.min(at)));
                }
            }
            for id in dirty {
                if let Some(runner) = self.runners.get(&id) {
                    self.updates.push(runner.client_update(now));
                }
            }
        }
    }

    /// The servers' allocations for this node against what runs here.
    fn reconcile(&mut self, allocs: Vec<Allocation>, changes: &mut Vec<StateChange>, dirty: &mut BTreeSet<AllocId>) {
        let mut listed = BTreeSet::new();
        for alloc in allocs {
            listed.insert(alloc.id);
            match self.runners.get_mut(&alloc.id) {
                Some(runner) => {
                    let known = runner.alloc();
                    if known.alloc_modify_index == alloc.alloc_modify_index
                        && known.desired_status == alloc.desired_status
                    {
                        continue;
                    }
                    tracing::debug!(alloc = %alloc.id, desired = alloc.desired_status.as_str(), "allocation changed");
                    changes.push(StateChange::PutAlloc(Box::new(alloc.clone())));
                    runner.update_alloc(Arc::new(alloc));
                }
                None => {
                    // Terminal allocations are history: nothing to run.
                    if alloc.desired_status != DesiredStatus::Run || alloc.client_status.is_terminal() {
                        continue;
                    }
                    tracing::debug!(alloc = %alloc.id, name = %alloc.name(), "starting allocation");
                    changes.push(StateChange::PutAlloc(Box::new(alloc.clone())));
                    self.alloc_devices.set(&alloc);
                    let runner = AllocRunner::start(Arc::new(alloc), &self.ctx);
                    dirty.insert(runner.id());
                    self.runners.insert(runner.id(), runner);
                }
            }
        }
        // Allocations the servers no longer list were collected: kill what
        // still runs, forget the rest.
        let dropped: Vec<AllocId> = self.runners.keys().filter(|id| !listed.contains(id)).copied().collect();
        for id in dropped {
            if let Some(runner) = self.runners.get_mut(&id) {
                if runner.is_finished() {
                    self.runners.remove(&id);
                    self.liveness.forget(id);
                    self.alloc_devices.forget(id);
                    changes.push(StateChange::RemoveAlloc(id));
                } else {
                    tracing::info!(alloc = %id, "allocation no longer on this node; killing it");
                    runner.kill_all();
                }
            }
        }
    }

    fn on_task_update(
        &mut self,
        update: &TaskStateUpdate,
        changes: &mut Vec<StateChange>,
        dirty: &mut BTreeSet<AllocId>,
    ) {
        let Ok(alloc_id) = update.alloc_id.parse::<AllocId>() else {
            tracing::warn!(alloc = update.alloc_id, "task update for a malformed allocation id");
            return;
        };
        let Some(runner) = self.runners.get_mut(&alloc_id) else { return };
        let Some(state) = runner.on_task_update(update) else { return };
        self.liveness.set(alloc_id, &update.task_name, state.state == TaskLifecycleState::Dead);
        changes.push(StateChange::PutTask {
            alloc_id,
            task_name: update.task_name.clone(),
            state: Box::new(state),
            handle: update.handle.clone(),
        });
        dirty.insert(alloc_id);
    }
}
