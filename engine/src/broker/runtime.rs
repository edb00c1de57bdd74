//! [`SharedBroker`]: the [`EvalBroker`] core behind a mutex, for worker
//! threads to block on, with a timer thread that drives time.
//!
//! Timer: one background thread ([`SharedBroker::spawn_timer`]) sleeps until
//! the core's next deadline and calls [`EvalBroker::tick`]. The alternative,
//! ticking lazily inside every call, would leave nack timeouts unexpired while
//! no one calls. Tests with a [`crate::clock::ManualClock`] advance the clock
//! and call [`SharedBroker::tick_now`] instead.
//!
//! Effects for the leader ([`BrokerOutput`]) collect in a buffer drained by
//! [`SharedBroker::take_outputs`]; the leader loop writes them through raft.
//! The buffer is bounded by the evals the broker holds: each eval yields at
//! most one cancel, and one delivery-limit notice per delivery.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{BrokerConfig, BrokerError, BrokerOutput, BrokerStats, EvalBroker};
use crate::clock::Clock;
use crate::ids::EvalId;
use crate::model::{Evaluation, JobType};
use crate::state::Cancel;

/// Longest a blocked dequeue waits before re-checking its [`Cancel`] token:
/// the token can only wake the state store's waiters, not our condvar, so
/// this bounds how late a cancelled worker notices (shutdown latency) at the
/// price of a cheap wake-up twenty times a second while idle.
pub const CANCEL_POLL_SLICE: Duration = Duration::from_millis(50);
/// Longest the timer thread sleeps between looks at the clock: bounds its
/// reaction to cancellation and to a clock that jumps (a manual clock in
/// tests, a wall clock stepped by NTP).
pub const TIMER_SLEEP_MAX: Duration = Duration::from_millis(50);

/// The thread-safe eval broker.
#[derive(Debug)]
pub struct SharedBroker {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Signalled when an eval may have become ready, or the broker was
    /// disabled: wakes blocked dequeuers.
    ready_changed: Condvar,
    /// Signalled when the next deadline may have moved earlier: wakes the timer.
    deadlines_changed: Condvar,
}

#[derive(Debug)]
struct Inner {
    broker: EvalBroker,
    outputs: Vec<BrokerOutput>,
}

impl SharedBroker {
    /// A disabled broker; see [`SharedBroker::set_enabled`].
    pub fn new(config: BrokerConfig, clock: Arc<dyn Clock>) -> SharedBroker {
        SharedBroker {
            clock,
            inner: Mutex::new(Inner { broker: EvalBroker::new(config), outputs: Vec::new() }),
            ready_changed: Condvar::new(),
            deadlines_changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("eval broker mutex poisoned")
    }

    /// Wakes everyone after a change; both sides re-check their condition, so
    /// a spurious wake-up costs only a lock.
    fn notify(&self) {
        self.ready_changed.notify_all();
        self.deadlines_changed.notify_all();
    }

    pub fn set_enabled(&self, enabled: bool) {
        let mut inner = self.lock();
        inner.broker.set_enabled(enabled);
        if !enabled {
            // Outputs of the lost term are void: the new leader re-derives
            // them from raft.
            inner.outputs.clear();
        }
        drop(inner);
        self.notify();
    }

    pub fn enabled(&self) -> bool {
        self.lock().broker.enabled()
    }

    pub fn enqueue(&self, eval: Arc<Evaluation>) -> Result<(), BrokerError> {
        self.enqueue_all([eval])
    }

    /// Enqueues under one lock; stops at the first refusal (only
    /// [`BrokerError::BrokerDisabled`], which refuses them all).
    pub fn enqueue_all(&self, evals: impl IntoIterator<Item = Arc<Evaluation>>) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        let now_ns = self.clock.now_ns();
        for eval in evals {
            inner.broker.enqueue(eval, now_ns)?;
        }
        drop(inner);
        self.notify();
        Ok(())
    }

    /// Waits for a ready eval of one of `types`. `Ok(None)` when `timeout`
    /// passes or `cancel` fires; the timeout is measured in real time, as it
    /// bounds how long this thread blocks, whatever the broker's clock says.
    pub fn dequeue(
        &self,
        types: &[JobType],
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Option<(Arc<Evaluation>, u64)>, BrokerError> {
        let started = Instant::now();
        let mut inner = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let now_ns = self.clock.now_ns();
            if let Some(found) = inner.broker.dequeue(types, now_ns)? {
                drop(inner);
                // The timer must learn the new nack deadline.
                self.deadlines_changed.notify_all();
                return Ok(Some(found));
            }
            let Some(left) = timeout.checked_sub(started.elapsed()).filter(|left| !left.is_zero()) else {
                return Ok(None);
            };
            let wait = left.min(CANCEL_POLL_SLICE);
            inner = self.ready_changed.wait_timeout(inner, wait).expect("eval broker mutex poisoned").0;
        }
    }

    /// The oldest eval past the delivery limit, for the leader to write as
    /// failed with a follow-up and then ack. Does not block.
    pub fn dequeue_failed(&self) -> Result<Option<(Arc<Evaluation>, u64)>, BrokerError> {
        let mut inner = self.lock();
        let found = inner.broker.dequeue_failed(self.clock.now_ns())?;
        drop(inner);
        self.deadlines_changed.notify_all();
        Ok(found)
    }

    pub fn ack(&self, eval_id: EvalId, token: u64) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        let outputs = inner.broker.ack(eval_id, token)?;
        inner.outputs.extend(outputs);
        drop(inner);
        self.notify();
        Ok(())
    }

    pub fn nack(&self, eval_id: EvalId, token: u64) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        let now_ns = self.clock.now_ns();
        let outputs = inner.broker.nack(eval_id, token, now_ns)?;
        inner.outputs.extend(outputs);
        drop(inner);
        self.notify();
        Ok(())
    }

    pub fn outstanding_reset(&self, eval_id: EvalId, token: u64) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        let now_ns = self.clock.now_ns();
        inner.broker.outstanding_reset(eval_id, token, now_ns)
    }

    pub fn pause_nack_timeout(&self, eval_id: EvalId, token: u64) -> Result<(), BrokerError> {
        self.lock().broker.pause_nack_timeout(eval_id, token)
    }

    pub fn resume_nack_timeout(&self, eval_id: EvalId, token: u64) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        let now_ns = self.clock.now_ns();
        inner.broker.resume_nack_timeout(eval_id, token, now_ns)?;
        drop(inner);
        self.deadlines_changed.notify_all();
        Ok(())
    }

    pub fn stats(&self) -> BrokerStats {
        self.lock().broker.stats()
    }

    /// Effects collected since the last call, oldest first.
    pub fn take_outputs(&self) -> Vec<BrokerOutput> {
        std::mem::take(&mut self.lock().outputs)
    }

    /// Runs the core's timers at the clock's current time.
    pub fn tick_now(&self) {
        let mut inner = self.lock();
        self.tick_locked(&mut inner);
    }

    fn tick_locked(&self, inner: &mut Inner) {
        let now_ns = self.clock.now_ns();
        let outputs = inner.broker.tick(now_ns);
        inner.outputs.extend(outputs);
        // Whatever became ready, dequeuers re-check.
        self.ready_changed.notify_all();
    }

    /// Starts the timer thread; it stops when `cancel` fires (within
    /// [`TIMER_SLEEP_MAX`]).
    pub fn spawn_timer(self: &Arc<Self>, cancel: Cancel) -> JoinHandle<()> {
        let broker = Arc::clone(self);
        std::thread::Builder::new()
            .name("eval-broker-timer".into())
            .spawn(move || broker.run_timer(&cancel))
            .expect("spawn eval broker timer thread")
    }

    fn run_timer(&self, cancel: &Cancel) {
        let mut inner = self.lock();
        while !cancel.is_cancelled() {
            let now_ns = self.clock.now_ns();
            let sleep = match inner.broker.next_deadline_ns() {
                Some(deadline_ns) if deadline_ns <= now_ns => {
                    self.tick_locked(&mut inner);
                    continue;
                }
                Some(deadline_ns) => {
                    Duration::from_nanos(u64::try_from(deadline_ns - now_ns).unwrap_or(0)).min(TIMER_SLEEP_MAX)
                }
                None => TIMER_SLEEP_MAX,
            };
            inner = self.deadlines_changed.wait_timeout(inner, sleep).expect("eval broker mutex poisoned").0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::ids::JobKey;
    use crate::model::{SECOND_NS, TriggeredBy};

    const T0_NS: i64 = 1_000 * SECOND_NS;
    /// Generous bound for "promptly": far above the poll slice, far below
    /// any timeout used, so a loaded CI machine does not flake.
    const PROMPT_MAX: Duration = Duration::from_secs(2);

    fn eval(job: &str, n: u64) -> Arc<Evaluation> {
        let id = EvalId(u128::from(n) << 96 | 1);
        let mut eval =
            Evaluation::new(id, &JobKey::new("default", job), JobType::Service, 50, TriggeredBy::JobRegister);
        eval.create_index = n;
        Arc::new(eval)
    }

    fn broker() -> (Arc<SharedBroker>, ManualClock) {
        let clock = ManualClock::new(T0_NS);
        let broker = Arc::new(SharedBroker::new(BrokerConfig::default(), Arc::new(clock.clone())));
        broker.set_enabled(true);
        (broker, clock)
    }

    #[test]
    fn dequeue_wakes_when_another_thread_enqueues() {
        let (broker, _) = broker();
        let waiter = {
            let broker = Arc::clone(&broker);
            std::thread::spawn(move || broker.dequeue(&[JobType::Service], Duration::from_secs(30), &Cancel::new()))
        };
        // Give the waiter a chance to block first; correctness does not
        // depend on it, only what the test exercises.
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        broker.enqueue(eval("j1", 1)).unwrap();
        let (got, token) = waiter.join().unwrap().unwrap().unwrap();
        assert!(started.elapsed() < PROMPT_MAX);
        assert_eq!(got.id, eval("j1", 1).id);
        broker.ack(got.id, token).unwrap();
        assert_eq!(broker.stats(), BrokerStats::default());
    }

    #[test]
    fn dequeue_times_out_with_none() {
        let (broker, _) = broker();
        let started = Instant::now();
        let got = broker.dequeue(&[JobType::Service], Duration::from_millis(120), &Cancel::new()).unwrap();
        assert_eq!(got, None);
        assert!(started.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    fn dequeue_returns_promptly_on_cancel() {
        let (broker, _) = broker();
        let cancel = Cancel::new();
        let waiter = {
            let (broker, cancel) = (Arc::clone(&broker), cancel.clone());
            std::thread::spawn(move || broker.dequeue(&[JobType::Service], Duration::from_secs(60), &cancel))
        };
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Ok(None));
        assert!(started.elapsed() < PROMPT_MAX);
    }

    #[test]
    fn disabling_wakes_waiters_with_an_error() {
        let (broker, _) = broker();
        let waiter = {
            let broker = Arc::clone(&broker);
            std::thread::spawn(move || broker.dequeue(&[JobType::Service], Duration::from_secs(60), &Cancel::new()))
        };
        std::thread::sleep(Duration::from_millis(20));
        broker.set_enabled(false);
        assert_eq!(waiter.join().unwrap(), Err(BrokerError::BrokerDisabled));
        assert_eq!(broker.enqueue(eval("j1", 1)), Err(BrokerError::BrokerDisabled));
    }

    #[test]
    fn tick_now_follows_the_manual_clock() {
        let (broker, clock) = broker();
        let no_wait = Duration::ZERO;
        let cancel = Cancel::new();
        broker.enqueue(eval("j1", 1)).unwrap();
        let (got, token) = broker.dequeue(&[JobType::Service], no_wait, &cancel).unwrap().unwrap();
        broker.nack(got.id, token).unwrap();
        broker.tick_now();
        assert_eq!(broker.dequeue(&[JobType::Service], no_wait, &cancel).unwrap(), None, "backing off");
        clock.advance_ns(SECOND_NS);
        broker.tick_now();
        let (again, token) = broker.dequeue(&[JobType::Service], no_wait, &cancel).unwrap().unwrap();
        assert_eq!(again.id, got.id);

        // Two more silent deliveries: nack timeouts, then the failed queue.
        clock.advance_ns(60 * SECOND_NS);
        broker.tick_now();
        clock.advance_ns(20 * SECOND_NS);
        broker.tick_now();
        let (_, _) = broker.dequeue(&[JobType::Service], no_wait, &cancel).unwrap().unwrap();
        clock.advance_ns(60 * SECOND_NS);
        broker.tick_now();
        assert_eq!(broker.take_outputs(), vec![BrokerOutput::DeliveryLimitReached(got.id)]);
        assert!(broker.take_outputs().is_empty());
        let (failed, failed_token) = broker.dequeue_failed().unwrap().unwrap();
        assert_eq!(failed.id, got.id);
        assert_eq!(broker.ack(got.id, token), Err(BrokerError::TokenMismatch(got.id)), "a stale token");
        broker.ack(failed.id, failed_token).unwrap();
        assert_eq!(broker.stats(), BrokerStats::default());
    }

    #[test]
    fn timer_thread_releases_delayed_evals() {
        let (broker, clock) = broker();
        let cancel = Cancel::new();
        let timer = broker.spawn_timer(cancel.clone());
        let mut delayed = (*eval("j1", 1)).clone();
        delayed.wait_until_ns = T0_NS + 5 * SECOND_NS;
        broker.enqueue(Arc::new(delayed)).unwrap();
        assert_eq!(broker.dequeue(&[JobType::Service], Duration::from_millis(60), &cancel).unwrap(), None);
        clock.advance_ns(5 * SECOND_NS);
        let got = broker.dequeue(&[JobType::Service], Duration::from_secs(30), &cancel).unwrap();
        assert!(got.is_some(), "the timer saw the clock move");
        cancel.cancel();
        timer.join().unwrap();
    }
}
