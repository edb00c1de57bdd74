use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::model::{Plan, PlanResult};
use crate::state::Cancel;

/// Why a plan got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan queue is disabled (not the leader)")]
    Disabled,
    #[error("plan queue is full ({0} plans waiting)")]
    Full(usize),
    #[error("plan commit failed: {0}")]
    CommitFailed(String),
    #[error("plan applier stopped")]
    Stopped,
}

/// Plans waiting at most. Each worker has at most one plan outstanding, so
/// this only binds if workers from many servers pile up on one leader; past
/// it, submitters get an error and nack, rather than the leader growing a
/// queue it cannot drain.
pub const PLANS_QUEUED_MAX: usize = 4096;

/// A queued plan and where its result goes.
#[derive(Debug)]
pub struct PendingPlan {
    pub plan: Plan,
    pub(crate) respond: Sender<Result<PlanResult, PlanError>>,
    seq: u64,
}

impl PartialEq for PendingPlan {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}
impl Eq for PendingPlan {}
impl PartialOrd for PendingPlan {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PendingPlan {
    /// Higher priority first, then first come first served.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.plan.priority.cmp(&other.plan.priority).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The submitter's handle on a queued plan.
#[derive(Debug)]
pub struct PlanTicket(Receiver<Result<PlanResult, PlanError>>);

impl PlanTicket {
    /// Wait for the applier's answer.
    pub fn wait(self) -> Result<PlanResult, PlanError> {
        self.0.recv().unwrap_or(Err(PlanError::Stopped))
    }
}

#[derive(Debug, Default)]
struct Inner {
    heap: BinaryHeap<PendingPlan>,
    enabled: bool,
    seq: u64,
}

/// Priority queue of plans waiting for the applier.
#[derive(Debug, Default)]
pub struct PlanQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl PlanQueue {
    pub fn new() -> PlanQueue {
        PlanQueue::default()
    }

    /// Enable on gaining leadership; disabling fails every waiting plan.
    pub fn set_enabled(&self, enabled: bool) {
        let mut inner = self.inner.lock().expect("plan queue poisoned");
        inner.enabled = enabled;
        if !enabled {
            for pending in inner.heap.drain() {
                let _ = pending.respond.send(Err(PlanError::Disabled));
            }
        }
        self.ready.notify_all();
    }

    pub fn submit(&self, plan: Plan) -> Result<PlanTicket, PlanError> {
        let mut inner = self.inner.lock().expect("plan queue poisoned");
        if !inner.enabled {
            return Err(PlanError::Disabled);
        }
        if inner.heap.len() >= PLANS_QUEUED_MAX {
            return Err(PlanError::Full(inner.heap.len()));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        inner.seq += 1;
        let seq = inner.seq;
        inner.heap.push(PendingPlan { plan, respond: tx, seq });
        self.ready.notify_one();
        Ok(PlanTicket(rx))
    }

    /// The next plan, waiting up to `timeout`; `None` on timeout or cancel.
    pub fn dequeue(&self, timeout: Duration, cancel: &Cancel) -> Option<PendingPlan> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock().expect("plan queue poisoned");
        loop {
            if inner.enabled
                && let Some(p) = inner.heap.pop()
            {
                return Some(p);
            }
            let now = Instant::now();
            if cancel.is_cancelled() || now >= deadline {
                return None;
            }
            // Bounded slices so a cancel is seen promptly without this queue
            // having to know every token that might cancel it.
            let slice = (deadline - now).min(Duration::from_millis(50));
            inner = self.ready.wait_timeout(inner, slice).expect("plan queue poisoned").0;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("plan queue poisoned").heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
