//! An in-process cluster: one server with the state store, FSM, eval broker,
//! blocked evals, plan queue and applier, and N scheduler workers on OS
//! threads. Commands are applied by a serial in-memory log in place of raft,
//! so everything above the log is the production code path. Used by the
//! integration tests, the benches and `caravan-perf engine`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::broker::SharedBroker;
use crate::clock::Clock;
use crate::duties::{DutiesLeader, LeaderDuties, LeaderThreadsConfig, spawn_leader_threads};
use crate::endpoints::{self, EndpointError};
use crate::fsm::{ApplyError, ApplyOutcome, Command, Fsm};
use crate::ids::{EvalId, IdGen};
use crate::model::{Evaluation, Job, TimeNs};
use crate::plan::{CommitError, Committer, Pipelining, PlanQueue};
use crate::state::{Cancel, StateStore};
use crate::worker::{WorkerConfig, WorkerStats, spawn_workers};

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub workers: usize,
    pub worker: WorkerConfig,
    pub seed: u64,
    /// The log is in memory, so serial evaluate-then-commit is the default.
    pub pipelining: Pipelining,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            // One more worker than cores: a worker waiting for its plan to
            // commit leaves its core to another that is scheduling.
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()) + 1,
            worker: WorkerConfig::default(),
            seed: 1,
            pipelining: Pipelining::Serial,
        }
    }
}

/// The serial log standing in for raft: assigns indexes, applies to the
/// FSM, and routes what the FSM reports to the leader-only services.
#[derive(Debug)]
pub struct LocalLog {
    fsm: Fsm,
    index: Mutex<u64>,
    duties: Arc<LeaderDuties>,
    /// Commands applied.
    pub commits: AtomicU64,
    /// A check run on the state after every commit (tests), and what it found.
    after_commit: Mutex<Option<CommitCheck>>,
    violations: Mutex<Vec<String>>,
    /// What each commit changed, for the event stream.
    events: Mutex<crate::events::EventBuffer>,
}

/// An invariant check over a state.
pub type StateCheck = dyn Fn(&crate::state::State) -> Result<(), String> + Send + Sync;

/// The installed check (a named type so the log can be `Debug`).
struct CommitCheck(Box<StateCheck>);

impl std::fmt::Debug for CommitCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitCheck")
    }
}

impl LocalLog {
    /// Apply at the next index; the caller holds the index lock.
    fn apply_locked(&self, index: &mut u64, command: &Command) -> Result<(u64, ApplyOutcome), ApplyError> {
        *index += 1;
        let outcome = self.fsm.apply(*index, command);
        self.commits.fetch_add(1, Ordering::Relaxed);
        if outcome.is_ok() {
            self.events.lock().expect("events poisoned").record(*index, command);
        }
        // Still under the log lock: the check sees exactly this commit.
        if let Some(check) = self.after_commit.lock().expect("check poisoned").as_ref()
            && let Err(violation) = (check.0)(&self.fsm.store().snapshot())
        {
            self.violations.lock().expect("violations poisoned").push(violation);
        }
        Ok((*index, outcome?))
    }

    /// Events committed after `index`, oldest first, at most `limit`.
    pub fn events_since(&self, index: u64, limit: usize) -> Vec<crate::events::Event> {
        let state = self.fsm.store().snapshot();
        self.events.lock().expect("events poisoned").since(index, limit, &state)
    }

    /// Run `check` on the state after every commit from now on.
    pub fn set_after_commit(&self, check: Box<StateCheck>) {
        *self.after_commit.lock().expect("check poisoned") = Some(CommitCheck(check));
    }

    /// What the after-commit check found so far.
    pub fn invariant_violations(&self) -> Vec<String> {
        self.violations.lock().expect("violations poisoned").clone()
    }

    /// Build a command from the latest state and commit it, with no other
    /// commit in between (the leader's endpoint write path).
    pub fn commit_with<E: From<ApplyError>>(
        &self,
        build: impl FnOnce(&crate::state::State) -> Result<Command, E>,
    ) -> Result<u64, E> {
        let index = self.index.lock().expect("log poisoned");
        let command = build(&self.fsm.store().snapshot())?;
        Ok(self.commit_locked(index, &command)?)
    }

    /// Commit a command and hand its effects to the broker and blocked evals.
    pub fn commit(&self, command: &Command) -> Result<u64, ApplyError> {
        self.commit_locked(self.index.lock().expect("log poisoned"), command)
    }

    /// Apply under the log lock, route the effects in log order while still
    /// holding it, then write any follow-ups (cancellations of duplicate
    /// blocked evals) after releasing it.
    fn commit_locked(&self, mut index: std::sync::MutexGuard<'_, u64>, command: &Command) -> Result<u64, ApplyError> {
        let (at, outcome) = self.apply_locked(&mut index, command)?;
        let follow_ups = self.route(&outcome);
        drop(index);
        if !follow_ups.is_empty() {
            self.commit(&Command::EvalUpsert { evals: follow_ups })?;
        }
        Ok(at)
    }

    /// The leader's reaction to applied state, in log order.
    fn route(&self, outcome: &ApplyOutcome) -> Vec<Evaluation> {
        self.duties.route(outcome)
    }
}

impl Committer for LocalLog {
    fn commit(&self, command: Command) -> Result<u64, CommitError> {
        LocalLog::commit(self, &command).map_err(|e| CommitError(e.to_string()))
    }

    fn commit_built(
        &self,
        _store: &StateStore,
        build: &mut dyn FnMut(&crate::state::State) -> Option<Command>,
    ) -> Result<Option<u64>, CommitError> {
        let index = self.index.lock().expect("log poisoned");
        let Some(command) = build(&self.fsm.store().snapshot()) else { return Ok(None) };
        let at = self.commit_locked(index, &command).map_err(|e| CommitError(e.to_string()))?;
        Ok(Some(at))
    }
}

/// A running one-server cluster.
#[derive(Debug)]
pub struct LocalCluster {
    pub store: Arc<StateStore>,
    pub log: Arc<LocalLog>,
    pub broker: Arc<SharedBroker>,
    pub plans: Arc<PlanQueue>,
    pub worker_stats: Vec<Arc<WorkerStats>>,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdGen>,
    cancel: Cancel,
    threads: Vec<JoinHandle<()>>,
}

impl LocalCluster {
    pub fn start(config: LocalConfig, clock: Arc<dyn Clock>) -> LocalCluster {
        let store = Arc::new(StateStore::new());
        let cancel = Cancel::new();
        let duties = Arc::new(LeaderDuties::new(clock.clone()));
        duties.establish(&store.snapshot()).expect("an empty state restores into an empty broker");
        let broker = duties.broker.clone();
        let plans = duties.plans.clone();
        let log = Arc::new(LocalLog {
            fsm: Fsm::new(store.clone()),
            index: Mutex::new(0),
            duties: duties.clone(),
            commits: AtomicU64::new(0),
            after_commit: Mutex::new(None),
            violations: Mutex::new(Vec::new()),
            events: Mutex::new(Default::default()),
        });
        let mut threads = spawn_leader_threads(
            duties.clone(),
            store.clone(),
            log.clone(),
            clock.clone(),
            LeaderThreadsConfig { seed: config.seed, pipelining: config.pipelining },
            cancel.clone(),
        );
        let leader = Arc::new(DutiesLeader { store: store.clone(), duties: duties.clone(), committer: log.clone() });
        let (worker_stats, worker_threads) =
            spawn_workers(config.workers, &store, leader, &clock, &config.worker, &cancel);
        threads.extend(worker_threads);
        LocalCluster {
            store,
            log,
            broker,
            plans,
            worker_stats,
            clock,
            ids: Mutex::new(IdGen::with_seed(config.seed ^ 0x5eed)),
            cancel,
            threads,
        }
    }

    pub fn commit(&self, command: &Command) -> Result<u64, ApplyError> {
        self.log.commit(command)
    }

    /// Validate and register a job with its eval (one log entry).
    pub fn register_job(&self, job: Job) -> Result<EvalId, EndpointError> {
        let command = endpoints::register_job(job, self.clock.now_ns(), &mut self.ids.lock().expect("ids poisoned"))?;
        // A parameterized or periodic job registers without an eval: NIL says so.
        let id = match &command {
            Command::JobRegister { eval: Some(eval), .. } => eval.id,
            _ => EvalId::NIL,
        };
        self.log.commit(&command)?;
        Ok(id)
    }

    /// Build a command from the latest state with the endpoint helpers (for
    /// example `endpoints::update_node_status`) and commit it atomically.
    pub fn write(
        &self,
        build: impl FnOnce(&crate::state::State, &mut IdGen, TimeNs) -> Result<Command, EndpointError>,
    ) -> Result<u64, EndpointError> {
        let now = self.clock.now_ns();
        let mut ids = self.ids.lock().expect("ids poisoned");
        self.log.commit_with(|state| build(state, &mut ids, now))
    }

    /// Wait until no eval is ready, in flight or delayed, and no plan is
    /// queued; false if `timeout` passes first.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.log.duties.wait_idle(timeout)
    }

    pub fn evals_processed(&self) -> u64 {
        self.worker_stats.iter().map(|s| s.evals_processed.load(Ordering::Relaxed)).sum()
    }

    pub fn plan_refreshes(&self) -> u64 {
        self.worker_stats.iter().map(|s| s.plan_refreshes.load(Ordering::Relaxed)).sum()
    }

    /// Every eval latency recorded so far, microseconds.
    pub fn eval_latencies_us(&self) -> Vec<u64> {
        self.worker_stats.iter().flat_map(|s| s.eval_latency_us.lock().expect("stats poisoned").clone()).collect()
    }

    pub fn shutdown(self) {
        self.cancel.cancel();
        self.broker.set_enabled(false);
        self.plans.set_enabled(false);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
