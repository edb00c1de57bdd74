//! Scheduler workers: OS threads that dequeue evals, wait for the local state
//! to catch up with the eval, run the scheduler on a snapshot (in one of the
//! server's [`SchedulingSlots`]), submit the plan (retrying partial commits
//! on refreshed state), and hand the eval's outcome to the
//! [`EvalCompleter`], which writes it and acks.
//!
//! Worker behind raft (Nomad #15523): a follower's store may lag the leader.
//! A worker waits at most `raft_sync_limit` for the eval's wait index; on
//! timeout it nacks (another worker, or this one later, retries) and then
//! waits up to 10 × that limit for its store to catch up, returning as soon
//! as it does, so a lagging worker neither spins nor fails evals. On shutdown
//! a waiting worker nacks and stops with a warning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::Clock;
use crate::eval_completer::{Completion, EvalCompleter};
use crate::model::{EvalStatus, Evaluation, JobType, Plan, PlanResult};
use crate::scheduler::{self, ScheduleOutcome};
use crate::scheduling_slots::SchedulingSlots;
use crate::state::{Cancel, StateStore, WaitError};

/// An eval handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub eval: Arc<Evaluation>,
    pub token: u64,
    /// The state index the worker must reach before scheduling: the highest
    /// modify index among the job's evals, as the leader saw it.
    pub wait_index: u64,
}

/// A failed call to the leader's services.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

/// What a worker needs from the leader: the broker, the plan queue, and
/// eval writes through raft. In-process it calls them directly; on a
/// follower `net` implements it over RPC.
pub trait LeaderServices: Send + Sync + std::fmt::Debug {
    fn dequeue(&self, types: &[JobType], timeout: Duration, cancel: &Cancel) -> Result<Option<Delivery>, ServiceError>;
    fn ack(&self, delivery: &Delivery) -> Result<(), ServiceError>;
    fn nack(&self, delivery: &Delivery) -> Result<(), ServiceError>;
    fn submit_plan(&self, delivery: &Delivery, plan: Plan) -> Result<PlanResult, ServiceError>;
    /// Write evals through raft; returns the index they were written at.
    fn upsert_evals(&self, evals: Vec<Evaluation>) -> Result<u64, ServiceError>;
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long to wait for the local state to reach an eval's wait index.
    pub raft_sync_limit: Duration,
    pub schedulers: Vec<JobType>,
    /// Dequeue long-poll; bounds how long shutdown waits for an idle worker.
    pub dequeue_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_limit: Duration,
    /// Workers that may run the scheduler at once ([`SchedulingSlots`]):
    /// the cores. More workers than this only wait on raft meanwhile.
    pub scheduling_concurrency: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            raft_sync_limit: Duration::from_secs(5),
            schedulers: JobType::ALL.to_vec(),
            dequeue_timeout: Duration::from_millis(500),
            backoff_base: Duration::from_millis(20),
            backoff_limit: Duration::from_secs(10),
            scheduling_concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Catch-up wait after a sync timeout, as a multiple of `raft_sync_limit`.
const CATCH_UP_FACTOR: u32 = 10;

/// Plan submissions for one eval before giving up (Nomad's limits): service
/// and system plans conflict more and deserve more tries than batch.
fn max_plan_attempts(job_type: JobType) -> u32 {
    match job_type {
        JobType::Batch | JobType::SysBatch => 2,
        JobType::Service | JobType::System => 5,
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub evals_processed: AtomicU64,
    pub evals_nacked: AtomicU64,
    pub sync_timeouts: AtomicU64,
    pub catch_up_waits: AtomicU64,
    /// Catch-up waits that ended because the store arrived (not the timeout).
    pub catch_up_completed: AtomicU64,
    pub plans_submitted: AtomicU64,
    pub plan_refreshes: AtomicU64,
    pub placements: AtomicU64,
    pub service_errors: AtomicU64,
    pub shutdown_nacks: AtomicU64,
    /// Register-to-processed latency of each eval, microseconds (for perf).
    pub eval_latency_us: std::sync::Mutex<Vec<u64>>,
}

/// Exponential backoff for service errors, ended early by shutdown.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    limit: Duration,
    failures: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleep the next backoff step; false when shut down meanwhile.
    fn wait(&mut self, cancel: &Cancel) -> bool {
        let step = self.base.saturating_mul(1u32 << self.failures.min(16)).min(self.limit);
        self.failures = self.failures.saturating_add(1);
        cancel.sleep(step)
    }
}

/// One scheduler worker.
#[derive(Debug)]
pub struct Worker {
    pub store: Arc<StateStore>,
    pub leader: Arc<dyn LeaderServices>,
    pub clock: Arc<dyn Clock>,
    pub config: WorkerConfig,
    pub stats: Arc<WorkerStats>,
    pub cancel: Cancel,
    /// Shared by the server's workers.
    pub slots: Arc<SchedulingSlots>,
    /// Writes and acks what the worker is done with, so it need not wait.
    pub completer: EvalCompleter,
}

/// How processing one delivery ended.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Stop,
}

impl Worker {
    pub fn spawn(self, name: String) -> JoinHandle<()> {
        std::thread::Builder::new().name(name).spawn(move || self.run()).expect("spawn worker")
    }

    pub fn run(&self) {
        let mut backoff = Backoff { base: self.config.backoff_base, limit: self.config.backoff_limit, failures: 0 };
        while !self.cancel.is_cancelled() {
            let delivery = match self.leader.dequeue(&self.config.schedulers, self.config.dequeue_timeout, &self.cancel)
            {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(_) => {
                    self.stats.service_errors.fetch_add(1, Ordering::Relaxed);
                    if !backoff.wait(&self.cancel) {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            if self.process(&delivery, &mut backoff) == Step::Stop {
                return;
            }
        }
    }

    fn nack(&self, delivery: &Delivery) {
        self.stats.evals_nacked.fetch_add(1, Ordering::Relaxed);
        if self.leader.nack(delivery).is_err() {
            // The broker's nack timeout redelivers it anyway.
            self.stats.service_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn process(&self, delivery: &Delivery, backoff: &mut Backoff) -> Step {
        let sync_limit = self.config.raft_sync_limit;
        match self.store.snapshot_min_index(delivery.wait_index, sync_limit, &self.cancel) {
            Ok(_) => {}
            Err(WaitError::Cancelled { .. }) => {
                self.stats.shutdown_nacks.fetch_add(1, Ordering::Relaxed);
                self.nack(delivery);
                return Step::Stop;
            }
            Err(WaitError::Timeout { .. }) => {
                self.stats.sync_timeouts.fetch_add(1, Ordering::Relaxed);
                self.nack(delivery);
                // Give the store time to catch up before taking more work,
                // returning as soon as it has.
                self.stats.catch_up_waits.fetch_add(1, Ordering::Relaxed);
                let catch_up = sync_limit.saturating_mul(CATCH_UP_FACTOR);
                return match self.store.snapshot_min_index(delivery.wait_index, catch_up, &self.cancel) {
                    Err(WaitError::Cancelled { .. }) => Step::Stop,
                    Err(WaitError::Timeout { .. }) => Step::Continue,
                    Ok(_) => {
                        self.stats.catch_up_completed.fetch_add(1, Ordering::Relaxed);
                        Step::Continue
                    }
                };
            }
        }
        match self.schedule_and_submit(delivery) {
            Ok(evals) => {
                let completion = Completion { delivery: delivery.clone(), evals, stats: self.stats.clone() };
                match self.completer.complete(completion) {
                    Ok(()) => Step::Continue,
                    Err(_) => {
                        // The completer is gone: the server is stopping.
                        self.stats.shutdown_nacks.fetch_add(1, Ordering::Relaxed);
                        self.nack(delivery);
                        Step::Stop
                    }
                }
            }
            Err(Interrupted::Shutdown) => {
                self.stats.shutdown_nacks.fetch_add(1, Ordering::Relaxed);
                self.nack(delivery);
                Step::Stop
            }
            Err(Interrupted::Service) => {
                self.stats.service_errors.fetch_add(1, Ordering::Relaxed);
                self.nack(delivery);
                if backoff.wait(&self.cancel) { Step::Continue } else { Step::Stop }
            }
        }
    }

    /// Schedule until the plan is committed (or the attempts run out); the
    /// evals to write for the outcome.
    fn schedule_and_submit(&self, delivery: &Delivery) -> Result<Vec<Evaluation>, Interrupted> {
        let eval = &delivery.eval;
        let limit = max_plan_attempts(eval.job_type);
        let mut attempts = 0;
        // `process` has waited for the wait index already.
        let mut min_index = delivery.wait_index;
        loop {
            let (outcome, snapshot_index) = self.schedule(eval, min_index)?;
            if outcome.plan.is_no_op() {
                return Ok(outcome_evals(eval, &outcome, snapshot_index, false, self.clock.now_ns()));
            }
            let mut plan = outcome.plan.clone();
            plan.eval_token = delivery.token;
            self.stats.plans_submitted.fetch_add(1, Ordering::Relaxed);
            let result = self.leader.submit_plan(delivery, plan).map_err(|_| Interrupted::Service)?;
            let placed: usize = result.node_allocation.values().map(Vec::len).sum();
            self.stats.placements.fetch_add(placed as u64, Ordering::Relaxed);
            if result.refresh_index == 0 {
                return Ok(outcome_evals(eval, &outcome, snapshot_index, false, self.clock.now_ns()));
            }
            // Partial commit: refresh and plan again for what was rejected.
            // Progress resets the attempt budget (Nomad does the same).
            self.stats.plan_refreshes.fetch_add(1, Ordering::Relaxed);
            attempts = if result.is_no_op() { attempts + 1 } else { 0 };
            if attempts >= limit {
                return Ok(outcome_evals(eval, &outcome, snapshot_index, true, self.clock.now_ns()));
            }
            min_index = result.refresh_index;
        }
    }

    /// One scheduler pass on a snapshot at or past `min_index`, in a
    /// scheduling slot; the snapshot is read once the slot is held (so it is
    /// as fresh as can be) and released with it, before any wait on raft.
    fn schedule(&self, eval: &Evaluation, min_index: u64) -> Result<(ScheduleOutcome, u64), Interrupted> {
        match self.store.snapshot_min_index(min_index, self.config.raft_sync_limit, &self.cancel) {
            Ok(_) => {}
            Err(WaitError::Cancelled { .. }) => return Err(Interrupted::Shutdown),
            Err(WaitError::Timeout { .. }) => return Err(Interrupted::Service),
        }
        let _slot = self.slots.acquire(&self.cancel).ok_or(Interrupted::Shutdown)?;
        let snapshot = self.store.snapshot();
        let outcome = scheduler::schedule(&snapshot, eval, self.clock.now_ns()).map_err(|_| Interrupted::Service)?;
        Ok((outcome, snapshot.index()))
    }
}

/// The evals that record an eval's outcome: completed (or failed after too
/// many plan attempts), plus its blocked and follow-up evals, written in one
/// raft entry.
fn outcome_evals(
    eval: &Evaluation,
    outcome: &ScheduleOutcome,
    snapshot_index: u64,
    out_of_attempts: bool,
    now: i64,
) -> Vec<Evaluation> {
    let mut evals = Vec::with_capacity(2 + outcome.followup_evals.len());
    let mut done = scheduler::completed_eval(eval, outcome, snapshot_index, now);
    if out_of_attempts {
        done.status = EvalStatus::Failed;
        done.status_description =
            format!("maximum plan attempts reached ({})", max_plan_attempts(eval.job_type)).into();
    }
    let max_plans_blocked =
        (out_of_attempts && outcome.blocked_eval.is_none()).then(|| max_plans_blocked_eval(eval, snapshot_index, now));
    match max_plans_blocked.as_ref().or(outcome.blocked_eval.as_ref()) {
        // Re-blocking the same eval replaces its completion.
        Some(blocked) if blocked.id == eval.id => evals.push(blocked.clone()),
        Some(blocked) => {
            evals.push(done);
            evals.push(blocked.clone());
        }
        None => evals.push(done),
    }
    evals.extend(outcome.followup_evals.iter().cloned());
    evals
}

/// After too many rejected plans, a blocked eval that any capacity change,
/// or the leader's periodic retry, releases (Nomad's `createBlockedEval(true)`).
fn max_plans_blocked_eval(eval: &Evaluation, snapshot_index: u64, now_ns: i64) -> Evaluation {
    let mut blocked = eval.clone();
    // Deterministic, like every id the scheduler path creates.
    blocked.id = crate::ids::IdGen::with_seed(!crate::scheduler::run_seed(eval.id, snapshot_index)).eval();
    blocked.status = EvalStatus::Blocked;
    blocked.triggered_by = crate::model::TriggeredBy::MaxPlans;
    blocked.status_description = "created due to placement conflicts".into();
    blocked.previous_eval = Some(eval.id);
    blocked.escaped_computed_class = true;
    blocked.snapshot_index = snapshot_index;
    blocked.create_time_ns = now_ns;
    blocked.modify_time_ns = now_ns;
    blocked.failed_tg_allocs.clear();
    blocked
}

#[derive(Debug)]
enum Interrupted {
    Shutdown,
    Service,
}

/// Start `count` (at least one) workers sharing `leader`, and their eval
/// completer; the workers' stats, in worker order, and every thread (the
/// completer's last: it ends once the workers have).
pub fn spawn_workers(
    count: usize,
    store: &Arc<StateStore>,
    leader: Arc<dyn LeaderServices>,
    clock: &Arc<dyn Clock>,
    config: &WorkerConfig,
    cancel: &Cancel,
) -> (Vec<Arc<WorkerStats>>, Vec<std::thread::JoinHandle<()>>) {
    let slots = Arc::new(SchedulingSlots::new(config.scheduling_concurrency));
    let (completer, completer_thread) = EvalCompleter::spawn(leader.clone(), clock.clone());
    let (stats, mut threads): (Vec<_>, Vec<_>) = (0..count.max(1))
        .map(|i| {
            let stats = Arc::new(WorkerStats::default());
            let worker = Worker {
                store: store.clone(),
                leader: leader.clone(),
                clock: clock.clone(),
                config: config.clone(),
                stats: stats.clone(),
                cancel: cancel.clone(),
                slots: slots.clone(),
                completer: completer.clone(),
            };
            (stats, worker.spawn(format!("worker-{i}")))
        })
        .unzip();
    threads.push(completer_thread);
    (stats, threads)
}
