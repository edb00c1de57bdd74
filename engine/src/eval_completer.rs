//! [`EvalCompleter`]: writes finished evals' outcomes through raft and acks
//! them, so a worker hands its eval over and dequeues the next at once.
//!
//! A worker used to wait for two commits per eval: its plan's and then its
//! eval's completion. The second wait held the worker (and with it a share
//! of the server's eval throughput) for a whole raft round trip that
//! decides nothing: the broker keeps the job's slot until the ack anyway,
//! so no later eval of the job can start before the completion is written.
//! Here one thread gathers the completions of every worker and writes all it
//! finds queued as one entry (one round trip, one fsync), then acks each;
//! if the write fails it nacks each and the broker redelivers them, which
//! the FSM makes harmless.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::clock::Clock;
use crate::model::Evaluation;
use crate::worker::{Delivery, LeaderServices, WorkerStats};

/// Completions written in one entry: the evals of a few dozen workers, a
/// few KB each.
const COMPLETIONS_PER_ENTRY_MAX: usize = 256;

/// Pause after a failed write before the next, so a server without a
/// leader is not asked in a loop; the broker redelivers the nacked evals.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(50);

/// One eval a worker is done with: its delivery and what to write for it
/// (its completion, and any blocked or follow-up evals).
#[derive(Debug)]
pub struct Completion {
    pub delivery: Delivery,
    pub evals: Vec<Evaluation>,
    /// The worker's counters: processed evals and their latency are counted
    /// once the completion is written.
    pub stats: Arc<WorkerStats>,
}

/// The workers' side: hands completions to the completer thread. The thread
/// ends once every clone is dropped and the queue is drained.
#[derive(Debug, Clone)]
pub struct EvalCompleter {
    queue: Sender<Completion>,
}

impl EvalCompleter {
    pub fn spawn(leader: Arc<dyn LeaderServices>, clock: Arc<dyn Clock>) -> (EvalCompleter, JoinHandle<()>) {
        let (queue, completions) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("eval-completer".into())
            .spawn(move || run(&completions, leader.as_ref(), clock.as_ref()))
            .expect("spawn eval completer");
        (EvalCompleter { queue }, thread)
    }

    /// Queue `completion`; false when the completer has stopped (the caller
    /// nacks the eval itself).
    pub fn complete(&self, completion: Completion) -> Result<(), Completion> {
        self.queue.send(completion).map_err(|err| err.0)
    }
}

fn run(completions: &Receiver<Completion>, leader: &dyn LeaderServices, clock: &dyn Clock) {
    while let Ok(first) = completions.recv() {
        let mut batch = vec![first];
        while batch.len() < COMPLETIONS_PER_ENTRY_MAX {
            match completions.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let evals: Vec<Evaluation> = batch.iter_mut().flat_map(|c| std::mem::take(&mut c.evals)).collect();
        match leader.upsert_evals(evals) {
            Ok(_) => {
                for c in &batch {
                    c.stats.evals_processed.fetch_add(1, Ordering::Relaxed);
                    let eval = &c.delivery.eval;
                    let latency_ns = clock.now_ns() - eval.create_time_ns;
                    if eval.create_time_ns > 0 && latency_ns >= 0 {
                        c.stats.eval_latency_us.lock().expect("stats poisoned").push((latency_ns / 1000) as u64);
                    }
                    if leader.ack(&c.delivery).is_err() {
                        c.stats.service_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(_) => {
                for c in &batch {
                    c.stats.service_errors.fetch_add(1, Ordering::Relaxed);
                    c.stats.evals_nacked.fetch_add(1, Ordering::Relaxed);
                    // A failed nack is covered by the broker's nack timeout.
                    let _ = leader.nack(&c.delivery);
                }
                std::thread::sleep(FAILED_WRITE_PAUSE);
            }
        }
    }
}
