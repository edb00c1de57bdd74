//! The worker loop against a scripted leader: the raft-sync catch-up
//! (Nomad #15523), early return when the store catches up, shutdown while
//! waiting, and the partial-commit refresh path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caravan_engine::clock::SystemClock;
use caravan_engine::eval_completer::EvalCompleter;
use caravan_engine::fixtures::{job, node};
use caravan_engine::model::*;
use caravan_engine::scheduling_slots::SchedulingSlots;
use caravan_engine::sim::SimCluster;
use caravan_engine::state::{Cancel, StateStore};
use caravan_engine::worker::{Delivery, LeaderServices, ServiceError, Worker, WorkerConfig, WorkerStats};

type SubmitFn = dyn Fn(&Plan, u64) -> PlanResult + Send + Sync;

/// A leader that hands out one scripted delivery (again after each nack) and
/// records what the worker did.
struct ScriptedLeader {
    queue: Mutex<VecDeque<Delivery>>,
    dequeues: AtomicU64,
    nacks: AtomicU64,
    acks: AtomicU64,
    submits: AtomicU64,
    upserts: Mutex<Vec<Evaluation>>,
    on_submit: Box<SubmitFn>,
}

impl std::fmt::Debug for ScriptedLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptedLeader")
    }
}

impl ScriptedLeader {
    fn new(delivery: Delivery, on_submit: Box<SubmitFn>) -> Arc<ScriptedLeader> {
        Arc::new(ScriptedLeader {
            queue: Mutex::new(VecDeque::from([delivery])),
            dequeues: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            submits: AtomicU64::new(0),
            upserts: Mutex::new(Vec::new()),
            on_submit,
        })
    }
}

impl LeaderServices for ScriptedLeader {
    fn dequeue(
        &self,
        _types: &[JobType],
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Option<Delivery>, ServiceError> {
        self.dequeues.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.queue.lock().unwrap().pop_front() {
            return Ok(Some(d));
        }
        cancel.sleep(timeout);
        Ok(None)
    }
    fn ack(&self, _d: &Delivery) -> Result<(), ServiceError> {
        self.acks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn nack(&self, d: &Delivery) -> Result<(), ServiceError> {
        self.nacks.fetch_add(1, Ordering::SeqCst);
        self.queue.lock().unwrap().push_back(d.clone());
        Ok(())
    }
    fn submit_plan(&self, _d: &Delivery, plan: Plan) -> Result<PlanResult, ServiceError> {
        let n = self.submits.fetch_add(1, Ordering::SeqCst);
        Ok((self.on_submit)(&plan, n))
    }
    fn upsert_evals(&self, evals: Vec<Evaluation>) -> Result<u64, ServiceError> {
        self.upserts.lock().unwrap().extend(evals);
        Ok(1)
    }
}

fn start(
    store: Arc<StateStore>,
    leader: Arc<ScriptedLeader>,
    sync_limit: Duration,
) -> (Cancel, Arc<WorkerStats>, std::thread::JoinHandle<()>) {
    let cancel = Cancel::new();
    let stats = Arc::new(WorkerStats::default());
    let (completer, _) = EvalCompleter::spawn(leader.clone(), Arc::new(SystemClock));
    let worker = Worker {
        store,
        leader,
        clock: Arc::new(SystemClock),
        config: WorkerConfig {
            raft_sync_limit: sync_limit,
            dequeue_timeout: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
        stats: stats.clone(),
        cancel: cancel.clone(),
        slots: Arc::new(SchedulingSlots::new(1)),
        completer,
    };
    (cancel, stats, worker.spawn("test-worker".into()))
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    // A liveness bound, not a performance assertion: generous on purpose.
    for _ in 0..1000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {what}");
}

fn cluster_with_job() -> (SimCluster, Evaluation) {
    let mut c = SimCluster::new(3);
    for i in 0..3 {
        let n = node(&mut c.ids, &format!("n{i}"), "dc1", 4000, 4096);
        c.add_node(n);
    }
    let eval = c.register(job("web", JobType::Service, 3, 100, 64));
    (c, eval)
}

#[test]
fn behind_store_nacks_then_waits_without_spinning() {
    let (c, eval) = cluster_with_job();
    let far_ahead = c.snapshot().index() + 1000;
    let delivery = Delivery { eval: Arc::new(eval), token: 1, wait_index: far_ahead };
    let leader = ScriptedLeader::new(delivery, Box::new(|_, _| PlanResult::default()));
    // 30 ms sync limit: the catch-up wait after a nack is 300 ms.
    let (cancel, stats, handle) = start(c.fsm.store().clone(), leader.clone(), Duration::from_millis(30));
    wait_until("first nack", || leader.nacks.load(Ordering::SeqCst) >= 1);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(stats.sync_timeouts.load(Ordering::SeqCst), 1);
    assert_eq!(stats.catch_up_waits.load(Ordering::SeqCst), 1);
    assert_eq!(leader.dequeues.load(Ordering::SeqCst), 1, "still in the catch-up wait: no new dequeue, no spin");
    assert_eq!(leader.submits.load(Ordering::SeqCst), 0, "never schedules on a stale snapshot");
    cancel.cancel();
    handle.join().unwrap();
}

#[test]
fn catch_up_returns_as_soon_as_the_store_arrives() {
    let (mut c, eval) = cluster_with_job();
    let target = c.snapshot().index() + 1;
    let delivery = Delivery { eval: Arc::new(eval.clone()), token: 1, wait_index: target };
    let leader = ScriptedLeader::new(delivery, Box::new(|_, _| PlanResult::default()));
    // 200 ms sync limit: the catch-up wait could last 2 s, but ends when the store arrives.
    let (cancel, stats, handle) = start(c.fsm.store().clone(), leader.clone(), Duration::from_millis(200));
    wait_until("sync timeout", || stats.sync_timeouts.load(Ordering::SeqCst) >= 1);
    c.commit(caravan_engine::fsm::Command::EvalUpsert { evals: vec![eval] });
    wait_until("redelivered eval processed", || leader.acks.load(Ordering::SeqCst) == 1);
    assert_eq!(leader.nacks.load(Ordering::SeqCst), 1);
    assert_eq!(stats.catch_up_completed.load(Ordering::SeqCst), 1, "the wait ended because the store arrived");
    assert!(leader.submits.load(Ordering::SeqCst) >= 1);
    cancel.cancel();
    handle.join().unwrap();
}

#[test]
fn shutdown_while_waiting_nacks_and_stops() {
    let (c, eval) = cluster_with_job();
    let delivery = Delivery { eval: Arc::new(eval), token: 1, wait_index: 1_000_000 };
    let leader = ScriptedLeader::new(delivery, Box::new(|_, _| PlanResult::default()));
    let (cancel, stats, handle) = start(c.fsm.store().clone(), leader.clone(), Duration::from_secs(3600));
    wait_until("worker dequeued", || leader.dequeues.load(Ordering::SeqCst) >= 1);
    std::thread::sleep(Duration::from_millis(20));
    cancel.cancel();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        handle.join().unwrap();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("worker stops promptly on shutdown");
    assert_eq!(stats.shutdown_nacks.load(Ordering::SeqCst), 1);
    assert_eq!(leader.nacks.load(Ordering::SeqCst), 1);
    assert_eq!(leader.acks.load(Ordering::SeqCst), 0);
}

#[test]
fn partial_commit_refreshes_and_replans() {
    let (c, eval) = cluster_with_job();
    let store = c.fsm.store().clone();
    let index_now = c.snapshot().index();
    let delivery = Delivery { eval: Arc::new(eval), token: 7, wait_index: index_now };
    // First submission: every node rejected, refresh at the current index.
    // Second: everything committed.
    let leader = ScriptedLeader::new(
        delivery,
        Box::new(move |plan: &Plan, n: u64| {
            assert_eq!(plan.eval_token, 7, "the plan carries the delivery token");
            if n == 0 {
                PlanResult { rejected_nodes: plan.nodes(), refresh_index: index_now, ..Default::default() }
            } else {
                PlanResult {
                    node_allocation: plan.node_allocation.clone(),
                    alloc_index: index_now + 1,
                    ..Default::default()
                }
            }
        }),
    );
    let (cancel, stats, handle) = start(store, leader.clone(), Duration::from_secs(5));
    wait_until("eval acked", || leader.acks.load(Ordering::SeqCst) == 1);
    assert_eq!(leader.submits.load(Ordering::SeqCst), 2);
    assert_eq!(stats.plan_refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(stats.placements.load(Ordering::SeqCst), 3);
    let upserts = leader.upserts.lock().unwrap().clone();
    assert_eq!(upserts.len(), 1);
    assert_eq!(upserts[0].status, EvalStatus::Complete);
    cancel.cancel();
    handle.join().unwrap();
}

#[test]
fn plan_attempts_are_bounded() {
    let (c, eval) = cluster_with_job();
    let index_now = c.snapshot().index();
    let delivery = Delivery { eval: Arc::new(eval), token: 1, wait_index: index_now };
    let leader = ScriptedLeader::new(
        delivery,
        Box::new(move |plan: &Plan, _| PlanResult {
            rejected_nodes: plan.nodes(),
            refresh_index: index_now,
            ..Default::default()
        }),
    );
    let (cancel, _stats, handle) = start(c.fsm.store().clone(), leader.clone(), Duration::from_secs(5));
    wait_until("eval finished", || leader.acks.load(Ordering::SeqCst) == 1);
    assert_eq!(leader.submits.load(Ordering::SeqCst), 5, "service evals get 5 plan attempts");
    let upserts = leader.upserts.lock().unwrap().clone();
    assert_eq!(upserts[0].status, EvalStatus::Failed);
    assert_eq!(upserts[1].status, EvalStatus::Blocked, "retried when capacity changes or on the leader's timer");
    assert_eq!(upserts[1].triggered_by, TriggeredBy::MaxPlans);
    cancel.cancel();
    handle.join().unwrap();
}
