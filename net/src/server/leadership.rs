//! Leadership transitions. A thread watches the raft view; when this server
//! becomes leader it waits for its state to reach the commit index, takes
//! up the duties (broker and blocked evals restored from state, plans
//! accepted, client heartbeat timers started) and starts the leader
//! threads (applier, broker timer, leader loop, heartbeat expiry); when it
//! stops leading, it revokes the duties (queued plans fail, waiting
//! dequeues return, so workers nack; heartbeat timers cleared) and stops
//! those threads. The scheduler workers run on every server regardless
//! (see `worker_rpc`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use caravan_engine::clock::Clock;
use caravan_engine::duties::{LeaderDuties, LeaderThreadsConfig, spawn_leader_threads};
use caravan_engine::heartbeat::Heartbeats;
use caravan_engine::plan::Pipelining;
use caravan_engine::state::{Cancel, StateStore};

use super::client_rpc::spawn_heartbeat_expiry;
use super::committer::RaftCommitter;
use super::engine_fsm::Establisher;
use super::handle::{RaftHandle, RaftView};

/// How long a new leader waits for its state to reach the commit index
/// before giving up this term's duties (it then steps through the loop
/// again and retries while it still leads).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the watcher re-reads the view when nothing wakes it (it also
/// checks for shutdown at this pace).
const WATCH_SLICE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub(crate) struct LeadershipConfig {
    pub(crate) seed: u64,
}

pub(crate) struct Leadership {
    pub(crate) raft: RaftHandle,
    pub(crate) store: Arc<StateStore>,
    pub(crate) duties: Arc<LeaderDuties>,
    pub(crate) establisher: Establisher,
    pub(crate) committer: Arc<RaftCommitter>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: LeadershipConfig,
    /// Client heartbeat timers: a leader duty like the broker.
    pub(crate) heartbeats: Arc<Heartbeats>,
}

/// The threads of one term of leadership.
struct Term {
    cancel: Cancel,
    threads: Vec<JoinHandle<()>>,
}

impl Leadership {
    /// Run until `stop`; revokes the duties on the way out.
    pub(crate) fn spawn(self, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        std::thread::Builder::new().name("leadership".into()).spawn(move || self.run(&stop)).expect("spawn leadership")
    }

    fn run(self, stop: &AtomicBool) {
        let mut term: Option<Term> = None;
        let mut led_term = 0;
        while !stop.load(Ordering::Acquire) {
            let (view, _) = self.raft.wait_view(WATCH_SLICE, |v| v.is_leader() != term.is_some());
            if view.is_leader() && term.is_none() {
                if let Some(started) = self.take_up(&view) {
                    led_term = view.term;
                    term = Some(started);
                }
            } else if (!view.is_leader() || view.term != led_term) && term.is_some() {
                tracing::info!(term = led_term, "lost leadership: revoking leader duties");
                self.step_down(term.take().expect("checked"));
            }
        }
        if let Some(t) = term {
            self.step_down(t);
        }
    }

    fn take_up(&self, elected: &RaftView) -> Option<Term> {
        // The leader's first entry of its term commits a blank entry; once
        // that is applied, the state holds everything committed before.
        let term_start = elected.last_log_index;
        let (view, caught_up) = self.raft.wait_view(CATCH_UP_TIMEOUT, |v| {
            !v.is_leader() || v.term != elected.term || (v.last_applied >= term_start && v.last_applied >= v.committed)
        });
        if !caught_up || !view.is_leader() || view.term != elected.term {
            tracing::warn!(term = elected.term, "leader did not catch up with the commit index; retrying");
            return None;
        }
        let restored = match self.establisher.establish() {
            Ok(restored) => restored,
            Err(e) => {
                tracing::error!(error = %e, "restoring the eval broker failed");
                self.duties.revoke();
                return None;
            }
        };
        tracing::info!(
            term = view.term,
            index = view.last_applied,
            enqueued = restored.enqueued,
            blocked = restored.blocked,
            "took up leader duties"
        );
        let cancel = Cancel::new();
        let timed = self.heartbeats.establish(&self.store.snapshot(), self.clock.now_ns());
        tracing::info!(nodes = timed, "started client heartbeat timers");
        let mut threads = spawn_leader_threads(
            self.duties.clone(),
            self.store.clone(),
            self.committer.clone(),
            self.clock.clone(),
            // Raft cannot commit atomically with evaluation: overlap plan
            // N+1's evaluation with plan N's commit on an optimistic state.
            LeaderThreadsConfig { seed: self.config.seed ^ view.term, pipelining: Pipelining::Overlap },
            cancel.clone(),
        );
        threads.push(spawn_heartbeat_expiry(
            self.heartbeats.clone(),
            self.store.clone(),
            self.committer.clone(),
            self.clock.clone(),
            self.config.seed ^ view.term ^ 0x4b7,
            cancel.clone(),
        ));
        Some(Term { cancel, threads })
    }

    fn step_down(&self, term: Term) {
        term.cancel.cancel();
        self.duties.revoke();
        self.heartbeats.revoke();
        for t in term.threads {
            let _ = t.join();
        }
    }
}
