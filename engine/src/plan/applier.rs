use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::Clock;
use crate::fsm::{self, Command};
use crate::ids::{IdGen, JobKey};
use crate::model::{Evaluation, Plan, PlanResult, TriggeredBy};
use crate::state::{Cancel, State, StateStore};

use super::evaluate::{evaluate_plan, plan_applied};
use super::queue::{PendingPlan, PlanError, PlanQueue};

/// Why a command was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commit failed: {0}")]
pub struct CommitError(pub String);

/// Commits commands: raft on a real server, the in-process log in tests.
pub trait Committer: Send + Sync + std::fmt::Debug {
    /// Commit `command` and return the index it was applied at, after the
    /// local state store has applied it.
    fn commit(&self, command: Command) -> Result<u64, CommitError>;

    /// Commit several commands, in order, and return the index of the last.
    /// A log that can (raft) writes them as one entry: one round trip and
    /// one fsync for all. Each command applies all or nothing on its own;
    /// on an error some may have applied (callers treat the batch as failed
    /// and retry, which the FSM makes harmless).
    fn commit_all(&self, commands: &[Command]) -> Result<u64, CommitError> {
        let mut index = 0;
        for command in commands {
            index = self.commit(command.clone())?;
        }
        Ok(index)
    }

    /// Build a command from the latest state and commit it with no other
    /// write in between; `None` from `build` commits nothing. A log that can
    /// do this (in-process) makes plan evaluation and commit atomic; raft
    /// cannot, and keeps the default, which reads a snapshot first.
    fn commit_built(
        &self,
        store: &StateStore,
        build: &mut dyn FnMut(&State) -> Option<Command>,
    ) -> Result<Option<u64>, CommitError> {
        match build(&store.snapshot()) {
            Some(command) => self.commit(command).map(Some),
            None => Ok(None),
        }
    }
}

/// How long the applier waits for a plan before re-checking for shutdown.
const DEQUEUE_SLICE: Duration = Duration::from_millis(100);

/// Plans evaluated but not yet committed, queued for the committer, which
/// commits all it finds queued as one entry (up to
/// [`PLANS_PER_ENTRY_MAX`]): while one entry waits for raft's fsync, the
/// plans evaluated meanwhile gather for the next. Small plans (one
/// allocation per eval) then cost a fraction of a round trip each instead
/// of a whole one. A failed commit refuses every plan evaluated on its
/// optimistic view, so this also bounds the work a failure throws away.
const PLANS_IN_FLIGHT_MAX: usize = 64;

/// Plans committed in one raft entry: small plans batch by the dozen.
const PLANS_PER_ENTRY_MAX: usize = 64;

/// Allocations (placed, stopped, preempted) in one entry of several plans:
/// one allocation encodes to ~325 bytes, so 8,192 keep an entry near
/// 3 MB, well under the RPC frame (16 MiB) every entry must fit to reach
/// the followers. A single plan larger than this is still one entry.
const ALLOCS_PER_ENTRY_MAX: usize = 8192;

struct InFlight {
    pending: PendingPlan,
    result: PlanResult,
    command: Option<Command>,
    /// The optimistic chain this plan was evaluated on (see `Chain`).
    chain: u64,
}

/// The optimistic chain's generation: the committer moves it on when a
/// commit fails, so the applier drops its view (which still holds the
/// failed plan's result) and every plan evaluated on that view is refused
/// instead of committed. Without it, a worker retrying the failed plan's
/// eval on the same snapshot (same seed, same allocation ids) would be
/// evaluated against a view that already holds those allocations.
#[derive(Debug, Default)]
struct Chain {
    generation: AtomicU64,
}

/// How the applier overlaps evaluation with commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipelining {
    /// Evaluate plan N+1 against an optimistic state while plan N commits:
    /// worth its extra in-memory apply when a commit waits on raft's
    /// replication and fsync.
    Overlap,
    /// Evaluate and commit in one thread: best when commits are in-memory.
    Serial,
}

/// Start the applier (and, when overlapping, committer) threads; they stop
/// when `cancel` fires.
pub fn spawn_applier(
    queue: Arc<PlanQueue>,
    store: Arc<StateStore>,
    committer: Arc<dyn Committer>,
    clock: Arc<dyn Clock>,
    seed: u64,
    pipelining: Pipelining,
    cancel: Cancel,
) -> Vec<JoinHandle<()>> {
    if pipelining == Pipelining::Serial {
        let serial = std::thread::Builder::new()
            .name("plan-applier".into())
            .spawn(move || serial_loop(&queue, &store, committer.as_ref(), &clock, seed, &cancel))
            .expect("spawn plan applier");
        return vec![serial];
    }
    let (tx, rx) = crossbeam_channel::bounded::<InFlight>(PLANS_IN_FLIGHT_MAX);
    let in_flight = Arc::new(AtomicU64::new(0));
    let chain = Arc::new(Chain::default());
    let applier = {
        let (store, in_flight, chain, cancel) = (store.clone(), in_flight.clone(), chain.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("plan-applier".into())
            .spawn(move || apply_loop(&queue, &store, &clock, seed, &in_flight, &chain, &tx, &cancel))
            .expect("spawn plan applier")
    };
    let commit = std::thread::Builder::new()
        .name("plan-committer".into())
        .spawn(move || commit_loop(&rx, &store, committer.as_ref(), &in_flight, &chain))
        .expect("spawn plan committer");
    vec![applier, commit]
}

fn serial_loop(
    queue: &PlanQueue,
    store: &StateStore,
    committer: &dyn Committer,
    clock: &Arc<dyn Clock>,
    seed: u64,
    cancel: &Cancel,
) {
    let mut ids = IdGen::with_seed(seed);
    while !cancel.is_cancelled() {
        let Some(pending) = queue.dequeue(DEQUEUE_SLICE, cancel) else { continue };
        let mut result = PlanResult::default();
        let mut seen_index = 0;
        let now = clock.now_ns();
        let committed = committer.commit_built(store, &mut |state: &State| {
            let (evaluated, _rejections) = evaluate_plan(state, &pending.plan);
            result = evaluated;
            seen_index = state.index();
            (!result.is_no_op()).then(|| {
                let evals = preemption_evals(state, &pending.plan, &result, &mut ids, now);
                Command::ApplyPlanResults(plan_applied(&pending.plan, &result, evals, now))
            })
        });
        let answer = match committed {
            Ok(index) => {
                let index = index.unwrap_or(seen_index);
                if index > seen_index {
                    result.alloc_index = index;
                }
                if !result.rejected_nodes.is_empty() {
                    result.refresh_index = index;
                }
                Ok(result)
            }
            Err(e) => Err(PlanError::CommitFailed(e.0)),
        };
        let _ = pending.respond.send(answer);
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_loop(
    queue: &PlanQueue,
    store: &StateStore,
    clock: &Arc<dyn Clock>,
    seed: u64,
    in_flight: &AtomicU64,
    chain: &Chain,
    tx: &crossbeam_channel::Sender<InFlight>,
    cancel: &Cancel,
) {
    let mut ids = IdGen::with_seed(seed);
    let mut view = OptimisticView::default();
    let mut generation = chain.generation.load(Ordering::SeqCst);
    while !cancel.is_cancelled() {
        let Some(pending) = queue.dequeue(DEQUEUE_SLICE, cancel) else {
            if in_flight.load(Ordering::SeqCst) == 0 {
                // Idle: let go of the view's copies.
                view = OptimisticView::default();
            }
            continue;
        };
        let now_generation = chain.generation.load(Ordering::SeqCst);
        if now_generation != generation {
            // A commit failed: the view holds a result that never landed,
            // and every plan sent on it will be refused.
            view = OptimisticView::default();
            generation = now_generation;
        }
        let base = view.base(store, in_flight);
        let (result, _rejections) = evaluate_plan(&base, &pending.plan);
        let command = (!result.is_no_op()).then(|| {
            let evals = preemption_evals(&base, &pending.plan, &result, &mut ids, clock.now_ns());
            Command::ApplyPlanResults(plan_applied(&pending.plan, &result, evals, clock.now_ns()))
        });
        // The next plan evaluated while this one is in flight must see
        // this one's result on top of the same base, committed or not.
        let replaced = view.extend(base, command.clone());
        in_flight.fetch_add(1, Ordering::SeqCst);
        if tx.send(InFlight { pending, result, command, chain: generation }).is_err() {
            return;
        }
        // After the hand-over: a view replaced by a rebuild is the last
        // owner of its copies, and freeing them takes a while.
        drop(replaced);
    }
}

/// Plans the applier builds a view on before it takes a fresh base from
/// the store. The view misses every write that is not a plan (client
/// status, node updates) and holds its own copy of every allocation it
/// placed, so a view that is never rebuilt under steady load grows into a
/// second copy of the cluster's allocations (measured: ~50 MiB of RSS per
/// scheduler worker at a million allocations, which kept the view going).
const REBASE_AFTER_PLANS: usize = 16;

/// The state the applier evaluates plans on: the store's latest state plus
/// the results it sent to the committer that the store may not have yet.
#[derive(Default)]
struct OptimisticView {
    /// The store's state with `unapplied` on top, and every plan since.
    state: Option<State>,
    /// Plans built on `state` since it was taken from the store.
    plans_on_state: usize,
    /// Results sent to the committer, numbered in sending order, that the
    /// store had not applied when last looked at.
    unapplied: VecDeque<(u64, Option<Command>)>,
    /// Results sent to the committer since the view began.
    sent: u64,
}

impl OptimisticView {
    /// The state to evaluate the next plan on.
    fn base(&mut self, store: &StateStore, in_flight: &AtomicU64) -> State {
        // The committer counts a plan out of `in_flight` only once the
        // store has applied it, so every result before `sent - in_flight`
        // is in any snapshot taken after this load. A result counted as in
        // flight may be in the snapshot too; applying it again changes
        // nothing (the FSM skips a placement it already holds).
        let applied = self.sent - in_flight.load(Ordering::SeqCst).min(self.sent);
        while self.unapplied.front().is_some_and(|(seq, _)| *seq < applied) {
            self.unapplied.pop_front();
        }
        match &self.state {
            Some(state) if !self.unapplied.is_empty() && self.plans_on_state < REBASE_AFTER_PLANS => state.clone(),
            _ => {
                let mut fresh = (*store.snapshot()).clone();
                for command in self.unapplied.iter().filter_map(|(_, c)| c.as_ref()) {
                    let index = fresh.index() + 1;
                    // A result that does not apply did not apply when it
                    // was built either: the view stays as it was.
                    let _ = fsm::apply_to(&mut fresh, index, command);
                }
                self.plans_on_state = 0;
                fresh
            }
        }
    }

    /// Put this plan's result (sent to the committer next) on `base`;
    /// returns the view it replaces, for the caller to drop.
    fn extend(&mut self, mut base: State, command: Option<Command>) -> Option<State> {
        let applied = match &command {
            Some(command) => {
                let index = base.index() + 1;
                // An error is never expected (the plan was just evaluated
                // on this very state); the view is rebuilt next time.
                fsm::apply_to(&mut base, index, command).ok().map(|_| base)
            }
            None => Some(base),
        };
        self.plans_on_state += 1;
        self.unapplied.push_back((self.sent, command));
        self.sent += 1;
        std::mem::replace(&mut self.state, applied)
    }
}

fn commit_loop(
    rx: &crossbeam_channel::Receiver<InFlight>,
    store: &StateStore,
    committer: &dyn Committer,
    in_flight: &AtomicU64,
    chain: &Chain,
) {
    // A plan taken off the channel that did not fit the last entry.
    let mut carried: Option<InFlight> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv() {
                Ok(first) => first,
                Err(_) => return,
            },
        };
        let mut allocs = allocs_written(&first.result);
        let mut batch = vec![first];
        while batch.len() < PLANS_PER_ENTRY_MAX {
            let Ok(more) = rx.try_recv() else { break };
            let more_allocs = allocs_written(&more.result);
            if allocs + more_allocs > ALLOCS_PER_ENTRY_MAX {
                carried = Some(more);
                break;
            }
            allocs += more_allocs;
            batch.push(more);
        }
        let count = batch.len() as u64;
        commit_batch(batch, store, committer, chain);
        in_flight.fetch_sub(count, Ordering::SeqCst);
    }
}

/// Allocations the plan's command writes: placed or updated, stopped,
/// preempted.
fn allocs_written(result: &PlanResult) -> usize {
    let placed: usize = result.node_allocation.values().map(Vec::len).sum();
    let stopped: usize = result.node_update.values().map(Vec::len).sum();
    let preempted: usize = result.node_preemptions.values().map(Vec::len).sum();
    placed + stopped + preempted
}

/// Commit the batch's plans as one entry, in evaluation order, and answer
/// each. Plans evaluated on a view that held a failed commit are refused.
fn commit_batch(batch: Vec<InFlight>, store: &StateStore, committer: &dyn Committer, chain: &Chain) {
    let generation = chain.generation.load(Ordering::SeqCst);
    let mut current = Vec::with_capacity(batch.len());
    for in_flight in batch {
        if in_flight.chain == generation {
            current.push(in_flight);
        } else {
            // Evaluated against a view that included a result that never
            // committed: it may rely on stops that did not happen.
            let refused = PlanError::CommitFailed("an earlier plan failed to commit; retry".into());
            let _ = in_flight.pending.respond.send(Err(refused));
        }
    }
    let mut commands = Vec::with_capacity(current.len());
    let mut committing = Vec::with_capacity(current.len());
    for in_flight in &mut current {
        committing.push(in_flight.command.is_some());
        commands.extend(in_flight.command.take());
    }
    let committed = if commands.is_empty() {
        // Nothing to write: everything before these plans has been (this
        // thread commits in order), so the store's index is a safe refresh
        // point.
        Ok(store.latest_index())
    } else {
        committer.commit_all(&commands).inspect_err(|_| {
            chain.generation.fetch_add(1, Ordering::SeqCst);
        })
    };
    for (InFlight { pending, mut result, .. }, wrote) in current.into_iter().zip(committing) {
        let answer = match &committed {
            Ok(index) => {
                if wrote {
                    result.alloc_index = *index;
                }
                if !result.rejected_nodes.is_empty() {
                    result.refresh_index = *index;
                }
                Ok(result)
            }
            Err(e) => Err(PlanError::CommitFailed(e.0.clone())),
        };
        let _ = pending.respond.send(answer);
    }
}

/// One eval per job whose allocations the plan preempts, so those jobs
/// reschedule elsewhere.
fn preemption_evals(state: &State, plan: &Plan, result: &PlanResult, ids: &mut IdGen, now_ns: i64) -> Vec<Evaluation> {
    let mut jobs: Vec<JobKey> = Vec::new();
    for p in result.node_preemptions.values().flatten() {
        if let Some(alloc) = state.alloc(p.alloc_id) {
            let key = alloc.job_key();
            if !jobs.contains(&key) {
                jobs.push(key);
            }
        }
    }
    jobs.into_iter()
        .filter_map(|key| {
            let job = state.job(&key)?;
            let mut eval = Evaluation::new(ids.eval(), &key, job.job_type, job.priority, TriggeredBy::Preemption);
            eval.job_modify_index = job.job_modify_index;
            eval.previous_eval = Some(plan.eval_id);
            eval.create_time_ns = now_ns;
            Some(eval)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{job, node};
    use crate::model::JobType;
    use crate::sim::SimCluster;

    /// A plan's result as the applier sends it: a two-allocation job
    /// registered and scheduled on a copy of the cluster's state.
    fn result_command(cluster: &SimCluster, name: &str) -> Command {
        let mut copy = SimCluster::from_state((*cluster.snapshot()).clone(), 1, cluster.now_ns);
        let eval = copy.register(job(name, JobType::Batch, 2, 100, 64));
        let outcome = copy.schedule(&eval);
        let (result, _) = evaluate_plan(&copy.snapshot(), &outcome.plan);
        Command::ApplyPlanResults(plan_applied(&outcome.plan, &result, vec![], 0))
    }

    #[test]
    fn the_view_is_rebuilt_from_the_store_with_what_it_lacks() {
        let mut cluster = SimCluster::new(4);
        let first = node(&mut cluster.ids, "a", "dc1", 4000, 8192);
        cluster.add_node(first);
        let in_flight = AtomicU64::new(0);
        let mut view = OptimisticView::default();
        let store = cluster.fsm.store().clone();

        // One result sent and not yet committed: the next plan sees it.
        let base = view.base(&store, &in_flight);
        let command = result_command(&cluster, "web");
        view.extend(base, Some(command.clone()));
        in_flight.store(1, Ordering::SeqCst);
        assert_eq!(view.base(&store, &in_flight).alloc_count(), 2);

        // A write that is not a plan lands meanwhile; once the view has
        // carried enough plans it is rebuilt: the store's write and the
        // uncommitted result both in it.
        let second = node(&mut cluster.ids, "b", "dc1", 4000, 8192);
        cluster.add_node(second);
        assert_eq!(view.base(&store, &in_flight).node_count(), 1, "the view misses non-plan writes");
        view.plans_on_state = REBASE_AFTER_PLANS;
        let rebuilt = view.base(&store, &in_flight);
        assert_eq!((rebuilt.node_count(), rebuilt.alloc_count()), (2, 2));

        // The result commits: the view is the store's, allocations once.
        cluster.commit(command);
        in_flight.store(0, Ordering::SeqCst);
        let fresh = view.base(&store, &in_flight);
        assert!(view.unapplied.is_empty());
        assert_eq!((fresh.node_count(), fresh.alloc_count()), (2, 2));
        assert_eq!(fresh.index(), store.latest_index());
    }
}
