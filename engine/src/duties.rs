//! The leader-only services of one server (eval broker, blocked evals, plan
//! queue) and the threads that serve them while it leads: the plan applier,
//! the broker's timer and the leader loop (failed evals, cancellations,
//! periodic unblocking, garbage collection).
//!
//! Every server owns one [`LeaderDuties`]; it is disabled on followers.
//! [`LeaderDuties::establish`] turns it on after an election, once the local
//! state has caught up with the commit index; [`LeaderDuties::revoke`] turns
//! it off again, which fails queued plans and makes waiting dequeues return,
//! so workers nack and back off. The FSM's effects reach it through
//! [`LeaderDuties::route`], called in log order by whoever applies the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model::JobType;
use crate::worker::{Delivery, LeaderServices, ServiceError};

use crate::blocked::BlockedEvals;
use crate::broker::{
    BrokerConfig, BrokerError, BrokerOutput, SharedBroker, cancel_update, failed_followup, failed_followup_delay_ns,
};
use crate::clock::Clock;
use crate::deployment_watcher::{self, DEPLOYMENT_WATCH_INTERVAL_NS};
use crate::endpoints;
use crate::fsm::{self, ApplyOutcome, Command};
use crate::ids::IdGen;
use crate::leader::{GcThresholds, Restored, collect_garbage, restore};
use crate::model::{EvalStatus, Evaluation, Plan, PlanResult};
use crate::periodic::PeriodicDispatcher;
use crate::plan::{Committer, Pipelining, PlanQueue, spawn_applier};
use crate::state::{Cancel, State, StateStore};

/// How often the leader loop drains broker outputs and the failed queue.
const LEADER_TICK: Duration = Duration::from_millis(20);

/// How often evals blocked by plan conflicts (not capacity) are retried:
/// Nomad's `failedEvalUnblockInterval`.
const FAILED_UNBLOCK_INTERVAL_NS: i64 = 60 * crate::model::SECOND_NS;

/// How often the leader garbage-collects (Nomad's core scheduler runs its
/// GC passes every 5 minutes).
const GC_INTERVAL_NS: i64 = 5 * 60 * crate::model::SECOND_NS;

/// How often the leader looks for periodic jobs due a launch: cron's
/// resolution is a second.
const PERIODIC_INTERVAL_NS: i64 = crate::model::SECOND_NS;

/// Periodic launches committed per look; more wait for the next one (a
/// second later), so one look never holds the leader loop for long.
const PERIODIC_LAUNCHES_PER_TICK_MAX: usize = 256;

/// Eval writes the FSM's routing asks for, waiting for the leader loop.
/// Each is one cancelled duplicate of a blocked eval; more than this means
/// the loop is not committing and the rest are re-derived on the next
/// election, so they are dropped rather than held without bound.
const DEFERRED_WRITES_MAX: usize = 65_536;

/// The broker, blocked evals and plan queue of one server.
#[derive(Debug)]
pub struct LeaderDuties {
    pub broker: Arc<SharedBroker>,
    pub blocked: Mutex<BlockedEvals>,
    pub plans: Arc<PlanQueue>,
    active: AtomicBool,
    /// Writes asked for by [`Self::route_deferred`], committed by the leader loop.
    deferred: Mutex<Vec<Evaluation>>,
}

impl LeaderDuties {
    /// Disabled until [`Self::establish`].
    pub fn new(clock: Arc<dyn Clock>) -> LeaderDuties {
        LeaderDuties {
            broker: Arc::new(SharedBroker::new(BrokerConfig::default(), clock)),
            blocked: Mutex::new(BlockedEvals::new()),
            plans: Arc::new(PlanQueue::new()),
            active: AtomicBool::new(false),
            deferred: Mutex::new(Vec::new()),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Take up the duties with `state` caught up to the commit index: every
    /// pending eval back into the broker, every blocked eval back into the
    /// tracker, then plans accepted. The caller holds off applying the log
    /// while this runs, so no eval is routed twice or missed.
    pub fn establish(&self, state: &State) -> Result<Restored, BrokerError> {
        self.broker.set_enabled(true);
        let mut blocked = self.blocked.lock().expect("blocked evals poisoned");
        blocked.set_enabled(true);
        let restored = restore(state, &self.broker, &mut blocked)?;
        drop(blocked);
        self.plans.set_enabled(true);
        self.active.store(true, Ordering::Release);
        Ok(restored)
    }

    /// Give up the duties: queued plans fail, waiting dequeues return, and
    /// everything held is dropped (the next leader rebuilds it from raft).
    pub fn revoke(&self) {
        self.active.store(false, Ordering::Release);
        self.plans.set_enabled(false);
        self.broker.set_enabled(false);
        self.blocked.lock().expect("blocked evals poisoned").set_enabled(false);
        self.deferred.lock().expect("deferred writes poisoned").clear();
    }

    /// The leader's reaction to one applied command (Nomad's FSM hooks):
    /// pending evals to the broker, blocked ones to the tracker, capacity
    /// changes unblock. Returns the eval writes this asks for (cancelled
    /// duplicates). Call in log order; a no-op while not leading.
    pub fn route(&self, outcome: &ApplyOutcome) -> Vec<Evaluation> {
        let mut writes = Vec::new();
        if !self.is_active() {
            return writes;
        }
        let mut blocked = self.blocked.lock().expect("blocked evals poisoned");
        for eval in &outcome.evals {
            if fsm::should_enqueue(eval) {
                let _ = self.broker.enqueue(eval.clone());
            } else if fsm::should_block(eval) {
                let out = blocked.block(eval.clone());
                if let Some(ready) = out.enqueue {
                    let _ = self.broker.enqueue(ready);
                }
                writes.extend(out.cancel.map(|e| (*e).clone()));
            } else if eval.status == EvalStatus::Complete && eval.failed_tg_allocs.is_empty() {
                blocked.untrack(&eval.job_key());
            }
        }
        for key in &outcome.jobs_purged {
            blocked.untrack(key);
        }
        for change in &outcome.capacity_changes {
            for ready in blocked.unblock(change.computed_class, outcome.index) {
                let _ = self.broker.enqueue(ready);
            }
        }
        writes
    }

    /// [`Self::route`] for a log applier that cannot wait for its own
    /// writes (raft's apply thread): the writes go to the leader loop.
    pub fn route_deferred(&self, outcome: &ApplyOutcome) {
        let writes = self.route(outcome);
        if writes.is_empty() {
            return;
        }
        let mut deferred = self.deferred.lock().expect("deferred writes poisoned");
        let room = DEFERRED_WRITES_MAX.saturating_sub(deferred.len());
        deferred.extend(writes.into_iter().take(room));
    }

    /// Release evals blocked by plan conflicts into the broker.
    pub fn unblock_failed(&self) {
        let released = self.blocked.lock().expect("blocked evals poisoned").unblock_failed();
        for eval in released {
            let _ = self.broker.enqueue(eval);
        }
    }

    /// Wait until no eval is ready, in flight or delayed, and no plan is
    /// queued; false if `timeout` passes first.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut quiet_rounds = 0;
        while std::time::Instant::now() < deadline {
            let stats = self.broker.stats();
            let busy = stats.total_ready + stats.total_unacked + stats.total_pending > 0 || !self.plans.is_empty();
            // Two quiet looks in a row: an ack and the enqueue it triggers
            // are not atomic together.
            quiet_rounds = if busy { 0 } else { quiet_rounds + 1 };
            if quiet_rounds >= 2 {
                return true;
            }
            // Short: callers measure elapsed time up to the moment this notices.
            std::thread::sleep(Duration::from_micros(500));
        }
        false
    }

    fn take_deferred(&self) -> Vec<Evaluation> {
        std::mem::take(&mut *self.deferred.lock().expect("deferred writes poisoned"))
    }
}

/// What the leader threads need.
#[derive(Debug, Clone)]
pub struct LeaderThreadsConfig {
    pub seed: u64,
    pub pipelining: Pipelining,
}

/// Start the threads that serve `duties` until `cancel`: the plan applier,
/// the broker's nack/delay timer and the leader loop.
pub fn spawn_leader_threads(
    duties: Arc<LeaderDuties>,
    store: Arc<StateStore>,
    committer: Arc<dyn Committer>,
    clock: Arc<dyn Clock>,
    config: LeaderThreadsConfig,
    cancel: Cancel,
) -> Vec<JoinHandle<()>> {
    let mut threads = spawn_applier(
        duties.plans.clone(),
        store.clone(),
        committer.clone(),
        clock.clone(),
        config.seed,
        config.pipelining,
        cancel.clone(),
    );
    threads.push(duties.broker.spawn_timer(cancel.clone()));
    let loop_thread = std::thread::Builder::new()
        .name("leader".into())
        .spawn(move || leader_loop(&duties, &store, committer.as_ref(), clock.as_ref(), config.seed, &cancel))
        .expect("spawn leader loop");
    threads.push(loop_thread);
    threads
}

/// Leader duties: write what the broker decided (cancelled duplicates of
/// pending evals) and what routing deferred, drain the failed queue (mark
/// the eval failed, create its delayed follow-up, then ack it), retry evals
/// blocked by plan conflicts, launch periodic jobs, watch deployments
/// (progress deadlines, auto-promotion, auto-revert), and collect garbage.
fn leader_loop(
    duties: &LeaderDuties,
    store: &StateStore,
    committer: &dyn Committer,
    clock: &dyn Clock,
    seed: u64,
    cancel: &Cancel,
) {
    let mut ids = IdGen::with_seed(seed ^ 0xfa11);
    let mut rng = fastrand::Rng::with_seed(seed);
    let delivery_limit = BrokerConfig::default().delivery_limit;
    let mut last_failed_unblock_ns = clock.now_ns();
    let mut last_gc_ns = clock.now_ns();
    let mut periodic = PeriodicDispatcher::new();
    let mut last_periodic_ns = clock.now_ns().saturating_sub(PERIODIC_INTERVAL_NS);
    let mut last_deployment_watch_ns = clock.now_ns();
    while cancel.sleep(LEADER_TICK) {
        let now = clock.now_ns();
        if now.saturating_sub(last_deployment_watch_ns) >= DEPLOYMENT_WATCH_INTERVAL_NS {
            last_deployment_watch_ns = now;
            watch_deployments(store, committer, now, &mut ids);
        }
        if now.saturating_sub(last_periodic_ns) >= PERIODIC_INTERVAL_NS {
            last_periodic_ns = now;
            launch_periodic(&mut periodic, store, committer, now, &mut ids);
        }
        if now - last_gc_ns >= GC_INTERVAL_NS {
            last_gc_ns = now;
            for command in collect_garbage(&store.snapshot(), now, GcThresholds::default()) {
                // A purge racing a new registration fails cleanly and is
                // retried on the next pass.
                let _ = committer.commit(command);
            }
        }
        if now - last_failed_unblock_ns >= FAILED_UNBLOCK_INTERVAL_NS {
            last_failed_unblock_ns = now;
            duties.unblock_failed();
        }
        let mut writes = duties.take_deferred();
        for output in duties.broker.take_outputs() {
            if let BrokerOutput::Cancel(evals) = output {
                writes.extend(evals.iter().map(|e| cancel_update(e, now)));
            }
        }
        let mut failed_acks = Vec::new();
        while let Ok(Some((failed, token))) = duties.broker.dequeue_failed() {
            let delay = failed_followup_delay_ns(&mut rng);
            let (marked, follow_up) = failed_followup(&failed, &mut ids, now, delay, delivery_limit);
            writes.push(marked);
            writes.push(follow_up);
            failed_acks.push((failed.id, token));
        }
        if !writes.is_empty() && committer.commit(Command::EvalUpsert { evals: writes }).is_ok() {
            for (id, token) in failed_acks {
                let _ = duties.broker.ack(id, token);
            }
        }
    }
}

/// Commit what the deployment watcher decides for each watched deployment
/// at `now`, each decision built from the latest state; one that fails is
/// decided again on the next look. Returns the commands committed.
pub fn watch_deployments(
    store: &StateStore,
    committer: &dyn Committer,
    now: crate::model::TimeNs,
    ids: &mut IdGen,
) -> usize {
    let mut committed = 0;
    for id in deployment_watcher::watched(&store.snapshot()) {
        let result = committer.commit_built(store, &mut |state| deployment_watcher::watch(state, id, now, ids));
        if let Ok(Some(_)) = result {
            committed += 1;
        }
    }
    committed
}

/// Commit the launches `dispatcher` finds due at `now`, each built from the
/// latest state; one that fails (the job changed, or the FSM finds the time
/// launched already) is decided again on the next look.
pub fn launch_periodic(
    dispatcher: &mut PeriodicDispatcher,
    store: &StateStore,
    committer: &dyn Committer,
    now: crate::model::TimeNs,
    ids: &mut IdGen,
) -> usize {
    let mut launched = 0;
    for due in dispatcher.due(&store.snapshot(), now, PERIODIC_LAUNCHES_PER_TICK_MAX) {
        let result = committer.commit_built(store, &mut |state| {
            endpoints::periodic_launch(state, &due.key, due.launch_ns, false, now, ids).ok().map(|(command, _)| command)
        });
        match result {
            Ok(Some(_)) => launched += 1,
            _ => dispatcher.launch_failed(&due.key),
        }
    }
    launched
}

/// The workers' view of a leader in the same process: its broker and plan
/// queue directly, eval writes through its committer.
#[derive(Debug)]
pub struct DutiesLeader {
    pub store: Arc<StateStore>,
    pub duties: Arc<LeaderDuties>,
    pub committer: Arc<dyn Committer>,
}

impl LeaderServices for DutiesLeader {
    fn dequeue(&self, types: &[JobType], timeout: Duration, cancel: &Cancel) -> Result<Option<Delivery>, ServiceError> {
        let Some((eval, token)) =
            self.duties.broker.dequeue(types, timeout, cancel).map_err(|e| ServiceError(e.to_string()))?
        else {
            return Ok(None);
        };
        // Wait for every write of the job's evals, not just this one's, so
        // the scheduler sees the job as the leader last changed it.
        let snapshot = self.store.snapshot();
        let job_evals_index = snapshot.evals_by_job(&eval.job_key()).map(|e| e.modify_index).max().unwrap_or(0);
        let wait_index = eval.modify_index.max(job_evals_index);
        Ok(Some(Delivery { eval, token, wait_index }))
    }

    fn ack(&self, d: &Delivery) -> Result<(), ServiceError> {
        self.duties.broker.ack(d.eval.id, d.token).map_err(|e| ServiceError(e.to_string()))
    }

    fn nack(&self, d: &Delivery) -> Result<(), ServiceError> {
        self.duties.broker.nack(d.eval.id, d.token).map_err(|e| ServiceError(e.to_string()))
    }

    fn submit_plan(&self, d: &Delivery, plan: Plan) -> Result<PlanResult, ServiceError> {
        // The eval's nack timer pauses while its plan waits in the queue.
        let _ = self.duties.broker.pause_nack_timeout(d.eval.id, d.token);
        let result = self.duties.plans.submit(plan).and_then(|ticket| ticket.wait());
        let _ = self.duties.broker.resume_nack_timeout(d.eval.id, d.token);
        result.map_err(|e| ServiceError(e.to_string()))
    }

    fn upsert_evals(&self, evals: Vec<Evaluation>) -> Result<u64, ServiceError> {
        self.committer.commit(Command::EvalUpsert { evals }).map_err(|e| ServiceError(e.to_string()))
    }
}
