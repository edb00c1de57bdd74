//! [`EvalBroker`]: the eval broker as a pure state machine (Nomad's
//! `nomad/eval_broker.go` semantics, no threads, no sleeping).
//!
//! Where an eval can be:
//! - *waiting*: delayed until `wait_until_ns` (or `wait_ns` from enqueue), or
//!   re-enqueued after a nack with a back-off; [`EvalBroker::tick`] moves it on;
//! - *ready*: in its scheduler type's priority heap, the job's one in-flight eval;
//! - *pending*: behind the job's in-flight eval (at most one ready-or-unacked
//!   eval per job, so two workers never plan the same job at once);
//! - *unacked*: handed to a worker with a token and a nack deadline;
//! - *failed*: nacked `delivery_limit` times; the leader drains this queue with
//!   [`EvalBroker::dequeue_failed`], writes the eval as failed plus a follow-up
//!   ([`failed_followup`]) and acks it.
//!
//! Bounds: the ready, pending, waiting and failed queues cannot drop anything,
//! since each entry is an eval already committed to raft and dropping it would
//! lose work silently. They are bounded by the evals in the state store, which
//! the job and eval write paths bound. The unacked table is bounded by the
//! number of workers (one eval each). The per-eval nack counts live only while
//! the broker holds the eval and are removed on ack.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crate::ids::{EvalId, IdBuildHasher, IdGen, JobKey};
use crate::model::{EvalStatus, Evaluation, JobType, SECOND_NS, TimeNs, TriggeredBy};

/// A worker that neither acks nor nacks within this time is presumed dead and
/// its eval is redelivered (Nomad's default `EvalNackTimeout`).
pub const NACK_TIMEOUT_NS_DEFAULT: i64 = 60 * SECOND_NS;
/// Deliveries before an eval is given up on: a scheduler bug or a poisoned
/// eval must not loop forever (Nomad's `EvalDeliveryLimit`).
pub const DELIVERY_LIMIT_DEFAULT: u32 = 3;
/// Back-off before redelivering an eval nacked once: short, as the first nack
/// is usually a transient (worker behind raft).
pub const INITIAL_NACK_DELAY_NS_DEFAULT: i64 = SECOND_NS;
/// Back-off for later nacks: long enough for a struggling cluster to recover.
pub const SUBSEQUENT_NACK_DELAY_NS_DEFAULT: i64 = 20 * SECOND_NS;
/// Follow-up of a failed eval waits at least this long (Nomad's
/// `failedEvalFollowUpBaseLineWait`) ...
pub const FAILED_FOLLOWUP_BASELINE_WAIT_NS: i64 = 60 * SECOND_NS;
/// ... plus up to this much jitter, so evals that failed together (for example
/// during a leader election) do not all retry together.
pub const FAILED_FOLLOWUP_JITTER_NS_MAX: i64 = 5 * 60 * SECOND_NS;
/// Status description of an eval superseded by a newer one of the same job.
pub const CANCELED_DESCRIPTION: &str = "canceled after more recent eval was processed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub nack_timeout_ns: i64,
    pub delivery_limit: u32,
    pub initial_nack_delay_ns: i64,
    pub subsequent_nack_delay_ns: i64,
    /// Mixed into ack tokens: a stale or forged ack must not guess a live
    /// token, yet a seeded run must hand out the same tokens every time.
    pub token_seed: u64,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            nack_timeout_ns: NACK_TIMEOUT_NS_DEFAULT,
            delivery_limit: DELIVERY_LIMIT_DEFAULT,
            initial_nack_delay_ns: INITIAL_NACK_DELAY_NS_DEFAULT,
            subsequent_nack_delay_ns: SUBSEQUENT_NACK_DELAY_NS_DEFAULT,
            token_seed: 0,
        }
    }
}

/// A request the broker refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("eval broker disabled: this server is not the leader")]
    BrokerDisabled,
    #[error("evaluation {0} is not outstanding")]
    NotOutstanding(EvalId),
    #[error("evaluation {0}: token does not match")]
    TokenMismatch(EvalId),
}

/// Effects the leader must carry out (through raft).
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerOutput {
    /// Superseded evals of a job: write them with status canceled
    /// ([`cancel_update`]).
    Cancel(Vec<Arc<Evaluation>>),
    /// An eval reached the delivery limit and sits in the failed queue: the
    /// leader should call [`EvalBroker::dequeue_failed`].
    DeliveryLimitReached(EvalId),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub total_ready: usize,
    pub total_unacked: usize,
    pub total_pending: usize,
    pub total_waiting: usize,
    pub total_failed: usize,
    pub ready_by_type: BTreeMap<JobType, usize>,
}

/// Which queue an unacked eval came from, so a nack puts it back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Scheduler(JobType),
    Failed,
}

/// A ready eval; the heap's maximum is the next to dequeue.
#[derive(Debug)]
struct Ready {
    eval: Arc<Evaluation>,
    /// Enqueue order, to keep FIFO among evals with equal create index.
    seq: u64,
}

impl Ready {
    fn rank(&self) -> (u8, Reverse<u64>, Reverse<u64>) {
        (self.eval.priority, Reverse(self.eval.create_index), Reverse(self.seq))
    }
}

impl PartialEq for Ready {
    fn eq(&self, other: &Ready) -> bool {
        self.rank() == other.rank()
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Ready) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ready {
    fn cmp(&self, other: &Ready) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitKind {
    /// A fresh eval with `wait_until_ns`/`wait_ns`: it claims its job's slot
    /// only when due, like any new eval.
    Delayed,
    /// A nacked eval backing off: it keeps its job's slot while waiting, so
    /// no other eval of the job overtakes it.
    Nacked(Queue),
}

#[derive(Debug)]
struct Waiting {
    due_ns: TimeNs,
    seq: u64,
    eval: Arc<Evaluation>,
    kind: WaitKind,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Waiting) -> bool {
        (self.due_ns, self.seq) == (other.due_ns, other.seq)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Waiting) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    /// Reversed: the earliest due is the heap's maximum.
    fn cmp(&self, other: &Waiting) -> Ordering {
        (other.due_ns, other.seq).cmp(&(self.due_ns, self.seq))
    }
}

#[derive(Debug)]
struct Unacked {
    eval: Arc<Evaluation>,
    token: u64,
    /// `None` while paused: the eval's plan sits in the plan queue, and the
    /// worker cannot answer before the plan applier does.
    nack_deadline_ns: Option<TimeNs>,
    queue: Queue,
}

/// The eval broker's state. See the module docs for the life of an eval.
#[derive(Debug)]
pub struct EvalBroker {
    config: BrokerConfig,
    enabled: bool,
    /// Every eval held anywhere in the broker, with the times it was nacked.
    nacks: HashMap<EvalId, u32, IdBuildHasher>,
    /// The job's one ready-or-unacked (or nack-waiting, or failed) eval.
    job_slots: HashMap<JobKey, EvalId, IdBuildHasher>,
    ready: BTreeMap<JobType, BinaryHeap<Ready>>,
    pending: HashMap<JobKey, Vec<Arc<Evaluation>>, IdBuildHasher>,
    unacked: HashMap<EvalId, Unacked, IdBuildHasher>,
    waiting: BinaryHeap<Waiting>,
    failed: VecDeque<Arc<Evaluation>>,
    /// Evals enqueued again while a worker still holds them (a blocked eval
    /// re-blocked and released by a capacity change before the worker
    /// acked): they are enqueued afresh on ack, as Nomad's `requeue`.
    requeue: HashMap<EvalId, Arc<Evaluation>, IdBuildHasher>,
    seq: u64,
    tokens_issued: u64,
}

impl EvalBroker {
    /// A disabled broker; the leader enables it on winning an election.
    pub fn new(config: BrokerConfig) -> EvalBroker {
        assert!(config.nack_timeout_ns > 0);
        assert!(config.delivery_limit > 0);
        assert!(config.initial_nack_delay_ns >= 0);
        assert!(config.subsequent_nack_delay_ns >= 0);
        EvalBroker {
            config,
            enabled: false,
            nacks: HashMap::default(),
            job_slots: HashMap::default(),
            ready: BTreeMap::new(),
            pending: HashMap::default(),
            unacked: HashMap::default(),
            waiting: BinaryHeap::new(),
            failed: VecDeque::new(),
            requeue: HashMap::default(),
            seq: 0,
            tokens_issued: 0,
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Disabling (leadership lost) drops everything: the evals stay in raft
    /// and the next leader re-enqueues them. Enabling starts empty.
    pub fn set_enabled(&mut self, enabled: bool) {
        if !enabled {
            let config = self.config.clone();
            // Keep the token counter: a token issued before must never be
            // issued again, even across leadership terms.
            let tokens_issued = self.tokens_issued;
            *self = EvalBroker::new(config);
            self.tokens_issued = tokens_issued;
        }
        self.enabled = enabled;
    }

    /// Takes an eval in. An eval id the broker already holds is ignored.
    pub fn enqueue(&mut self, eval: Arc<Evaluation>, now_ns: TimeNs) -> Result<(), BrokerError> {
        if !self.enabled {
            return Err(BrokerError::BrokerDisabled);
        }
        if self.nacks.contains_key(&eval.id) {
            if self.unacked.contains_key(&eval.id) {
                self.requeue.insert(eval.id, eval);
            }
            return Ok(());
        }
        self.nacks.insert(eval.id, 0);
        let due_ns = if eval.wait_until_ns > now_ns {
            Some(eval.wait_until_ns)
        } else if eval.wait_ns > 0 {
            Some(now_ns.saturating_add(eval.wait_ns))
        } else {
            None
        };
        match due_ns {
            Some(due_ns) => self.push_waiting(eval, due_ns, WaitKind::Delayed),
            None => self.claim_slot_or_pend(eval),
        }
        Ok(())
    }

    /// The highest-priority ready eval among `types`; at equal priority the
    /// oldest (create index, then enqueue order), whatever its type. Nomad
    /// picks a random type among tied ones; a fixed type order instead would
    /// starve every later type while the first has work (a steady stream of
    /// service registrations held batch evals back forever).
    pub fn dequeue(
        &mut self,
        types: &[JobType],
        now_ns: TimeNs,
    ) -> Result<Option<(Arc<Evaluation>, u64)>, BrokerError> {
        if !self.enabled {
            return Err(BrokerError::BrokerDisabled);
        }
        let mut best: Option<(JobType, &Ready)> = None;
        for &job_type in types {
            let Some(top) = self.ready.get(&job_type).and_then(|heap| heap.peek()) else {
                continue;
            };
            if best.is_none_or(|(_, best_top)| top > best_top) {
                best = Some((job_type, top));
            }
        }
        let Some((job_type, _)) = best else {
            return Ok(None);
        };
        let ready = self.ready.get_mut(&job_type).and_then(|heap| heap.pop()).expect("peeked above");
        Ok(Some(self.hand_out(ready.eval, Queue::Scheduler(job_type), now_ns)))
    }

    /// The oldest eval that reached the delivery limit. The leader writes it
    /// as failed with a follow-up ([`failed_followup`]), then acks it.
    pub fn dequeue_failed(&mut self, now_ns: TimeNs) -> Result<Option<(Arc<Evaluation>, u64)>, BrokerError> {
        if !self.enabled {
            return Err(BrokerError::BrokerDisabled);
        }
        Ok(self.failed.pop_front().map(|eval| self.hand_out(eval, Queue::Failed, now_ns)))
    }

    /// The worker is done with the eval: it leaves the broker, and the best
    /// pending eval of its job becomes ready; the other pending ones are
    /// superseded and come back as [`BrokerOutput::Cancel`].
    pub fn ack(&mut self, eval_id: EvalId, token: u64) -> Result<Vec<BrokerOutput>, BrokerError> {
        let outputs = self.ack_inner(eval_id, token)?;
        if let Some(again) = self.requeue.remove(&eval_id) {
            self.nacks.insert(again.id, 0);
            self.claim_slot_or_pend(again);
        }
        Ok(outputs)
    }

    fn ack_inner(&mut self, eval_id: EvalId, token: u64) -> Result<Vec<BrokerOutput>, BrokerError> {
        let unacked = self.take_unacked(eval_id, token)?;
        let removed = self.nacks.remove(&eval_id);
        assert!(removed.is_some());
        let job = unacked.eval.job_key();
        let slot = self.job_slots.remove(&job);
        assert_eq!(slot, Some(eval_id), "an unacked eval holds its job's slot");

        let mut outputs = Vec::new();
        let Some(mut pending) = self.pending.remove(&job) else {
            return Ok(outputs);
        };
        assert!(!pending.is_empty());
        // Newest wins at equal priority: it reflects the latest job version.
        // `max_by_key` returns the last maximum, the latest enqueued on a tie.
        let (best_index, _) =
            pending.iter().enumerate().max_by_key(|(_, eval)| (eval.priority, eval.modify_index)).expect("not empty");
        let best = pending.swap_remove(best_index);
        for eval in &pending {
            let removed = self.nacks.remove(&eval.id);
            assert!(removed.is_some());
        }
        self.claim_slot_or_pend(best);
        if !pending.is_empty() {
            pending.sort_by_key(|eval| (eval.create_index, eval.id));
            outputs.push(BrokerOutput::Cancel(pending));
        }
        Ok(outputs)
    }

    /// The worker gave up on the eval: redeliver it after a back-off, or move
    /// it to the failed queue once it was nacked `delivery_limit` times.
    pub fn nack(&mut self, eval_id: EvalId, token: u64, now_ns: TimeNs) -> Result<Vec<BrokerOutput>, BrokerError> {
        let unacked = self.take_unacked(eval_id, token)?;
        // The nack redelivers the eval anyway.
        self.requeue.remove(&eval_id);
        let mut outputs = Vec::new();
        self.requeue_nacked(unacked, now_ns, &mut outputs);
        Ok(outputs)
    }

    /// The worker is alive and still working: restart the nack timer.
    pub fn outstanding_reset(&mut self, eval_id: EvalId, token: u64, now_ns: TimeNs) -> Result<(), BrokerError> {
        let timeout_ns = self.config.nack_timeout_ns;
        let unacked = self.unacked_mut(eval_id, token)?;
        if unacked.nack_deadline_ns.is_some() {
            unacked.nack_deadline_ns = Some(now_ns.saturating_add(timeout_ns));
        }
        Ok(())
    }

    /// The eval's plan entered the plan queue: the worker waits on the plan
    /// applier, so its silence is not a sign of death.
    pub fn pause_nack_timeout(&mut self, eval_id: EvalId, token: u64) -> Result<(), BrokerError> {
        self.unacked_mut(eval_id, token)?.nack_deadline_ns = None;
        Ok(())
    }

    /// The plan was applied: a full nack timeout starts again from `now_ns`.
    pub fn resume_nack_timeout(&mut self, eval_id: EvalId, token: u64, now_ns: TimeNs) -> Result<(), BrokerError> {
        let timeout_ns = self.config.nack_timeout_ns;
        self.unacked_mut(eval_id, token)?.nack_deadline_ns = Some(now_ns.saturating_add(timeout_ns));
        Ok(())
    }

    /// Moves time to `now_ns`: expired nack deadlines count as nacks, and
    /// waiting evals that are due become ready (or pending).
    pub fn tick(&mut self, now_ns: TimeNs) -> Vec<BrokerOutput> {
        let mut outputs = Vec::new();
        if !self.enabled {
            return outputs;
        }
        let mut expired: Vec<(TimeNs, EvalId)> = self
            .unacked
            .iter()
            .filter_map(|(id, u)| u.nack_deadline_ns.filter(|&d| d <= now_ns).map(|d| (d, *id)))
            .collect();
        expired.sort_unstable();
        for (_, eval_id) in expired {
            let unacked = self.unacked.remove(&eval_id).expect("collected above");
            self.requeue_nacked(unacked, now_ns, &mut outputs);
        }
        while self.waiting.peek().is_some_and(|w| w.due_ns <= now_ns) {
            let waiting = self.waiting.pop().expect("peeked");
            match waiting.kind {
                WaitKind::Delayed => self.claim_slot_or_pend(waiting.eval),
                WaitKind::Nacked(queue) => self.push_ready(waiting.eval, queue),
            }
        }
        outputs
    }

    /// When [`EvalBroker::tick`] next has work: the earliest nack deadline or
    /// waiting eval due time.
    pub fn next_deadline_ns(&self) -> Option<TimeNs> {
        let nack_ns = self.unacked.values().filter_map(|u| u.nack_deadline_ns).min();
        let waiting_ns = self.waiting.peek().map(|w| w.due_ns);
        match (nack_ns, waiting_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn stats(&self) -> BrokerStats {
        let ready_by_type: BTreeMap<JobType, usize> =
            self.ready.iter().filter(|(_, heap)| !heap.is_empty()).map(|(t, heap)| (*t, heap.len())).collect();
        BrokerStats {
            total_ready: ready_by_type.values().sum(),
            total_unacked: self.unacked.len(),
            total_pending: self.pending.values().map(Vec::len).sum(),
            total_waiting: self.waiting.len(),
            total_failed: self.failed.len(),
            ready_by_type,
        }
    }

    fn hand_out(&mut self, eval: Arc<Evaluation>, queue: Queue, now_ns: TimeNs) -> (Arc<Evaluation>, u64) {
        assert_eq!(self.job_slots.get(&eval.job_key()), Some(&eval.id));
        self.tokens_issued += 1;
        let token = mix_token(self.config.token_seed, self.tokens_issued);
        let deadline_ns = now_ns.saturating_add(self.config.nack_timeout_ns);
        let unacked = Unacked { eval: eval.clone(), token, nack_deadline_ns: Some(deadline_ns), queue };
        let previous = self.unacked.insert(eval.id, unacked);
        assert!(previous.is_none(), "an eval is handed out once at a time");
        (eval, token)
    }

    fn take_unacked(&mut self, eval_id: EvalId, token: u64) -> Result<Unacked, BrokerError> {
        self.unacked_mut(eval_id, token)?;
        Ok(self.unacked.remove(&eval_id).expect("checked above"))
    }

    fn unacked_mut(&mut self, eval_id: EvalId, token: u64) -> Result<&mut Unacked, BrokerError> {
        if !self.enabled {
            return Err(BrokerError::BrokerDisabled);
        }
        let unacked = self.unacked.get_mut(&eval_id).ok_or(BrokerError::NotOutstanding(eval_id))?;
        if unacked.token != token {
            return Err(BrokerError::TokenMismatch(eval_id));
        }
        Ok(unacked)
    }

    /// A nacked (or timed-out) eval keeps its job's slot: it goes back to the
    /// front of its job's line, after a back-off, or to the failed queue.
    fn requeue_nacked(&mut self, unacked: Unacked, now_ns: TimeNs, outputs: &mut Vec<BrokerOutput>) {
        let eval = unacked.eval;
        let nacks = self.nacks.get_mut(&eval.id).expect("an unacked eval is known");
        *nacks += 1;
        let nacks = *nacks;
        if nacks >= self.config.delivery_limit {
            outputs.push(BrokerOutput::DeliveryLimitReached(eval.id));
            self.failed.push_back(eval);
            return;
        }
        assert!(unacked.queue != Queue::Failed, "failed evals are past the delivery limit");
        let delay_ns =
            if nacks == 1 { self.config.initial_nack_delay_ns } else { self.config.subsequent_nack_delay_ns };
        if delay_ns == 0 {
            self.push_ready(eval, unacked.queue);
        } else {
            self.push_waiting(eval, now_ns.saturating_add(delay_ns), WaitKind::Nacked(unacked.queue));
        }
    }

    /// Makes the eval its job's in-flight eval if the job has none, else
    /// parks it in the job's pending set.
    fn claim_slot_or_pend(&mut self, eval: Arc<Evaluation>) {
        let job = eval.job_key();
        match self.job_slots.get(&job) {
            Some(holder) => {
                assert_ne!(*holder, eval.id);
                self.pending.entry(job).or_default().push(eval);
            }
            None => {
                self.job_slots.insert(job, eval.id);
                let job_type = eval.job_type;
                self.push_ready(eval, Queue::Scheduler(job_type));
            }
        }
    }

    fn push_ready(&mut self, eval: Arc<Evaluation>, queue: Queue) {
        assert_eq!(self.job_slots.get(&eval.job_key()), Some(&eval.id));
        match queue {
            Queue::Failed => self.failed.push_back(eval),
            Queue::Scheduler(job_type) => {
                self.seq += 1;
                let seq = self.seq;
                self.ready.entry(job_type).or_default().push(Ready { eval, seq });
            }
        }
    }

    fn push_waiting(&mut self, eval: Arc<Evaluation>, due_ns: TimeNs, kind: WaitKind) {
        self.seq += 1;
        self.waiting.push(Waiting { due_ns, seq: self.seq, eval, kind });
    }
}

/// SplitMix64 of the seeded counter: distinct for every counter value (it is
/// a bijection), and not guessable from the previous token without the seed.
fn mix_token(seed: u64, counter: u64) -> u64 {
    let mut z = seed.wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The eval as the leader writes it when it was superseded by a newer eval of
/// the same job ([`BrokerOutput::Cancel`]).
pub fn cancel_update(eval: &Evaluation, now_ns: TimeNs) -> Evaluation {
    let mut canceled = eval.clone();
    canceled.status = EvalStatus::Canceled;
    canceled.status_description = CANCELED_DESCRIPTION.into();
    canceled.modify_time_ns = now_ns;
    canceled
}

/// How long the follow-up of a failed eval waits: the baseline plus a jitter
/// drawn from the caller's (seeded) rng.
pub fn failed_followup_delay_ns(rng: &mut fastrand::Rng) -> i64 {
    FAILED_FOLLOWUP_BASELINE_WAIT_NS + rng.i64(0..=FAILED_FOLLOWUP_JITTER_NS_MAX)
}

/// For an eval from the failed queue: `(the eval marked failed, its
/// follow-up)`. The follow-up retries the job after `delay_ns`, so a job is
/// never left unscheduled because one eval kept failing.
pub fn failed_followup(
    eval: &Evaluation,
    ids: &mut IdGen,
    now_ns: TimeNs,
    delay_ns: i64,
    delivery_limit: u32,
) -> (Evaluation, Evaluation) {
    assert!(delay_ns >= 0);
    let mut followup =
        Evaluation::new(ids.eval(), &eval.job_key(), eval.job_type, eval.priority, TriggeredBy::FailedFollowUp);
    followup.job_modify_index = eval.job_modify_index;
    followup.node_id = eval.node_id;
    followup.wait_until_ns = now_ns.saturating_add(delay_ns);
    followup.previous_eval = Some(eval.id);
    followup.create_time_ns = now_ns;
    followup.modify_time_ns = now_ns;

    let mut failed = eval.clone();
    failed.status = EvalStatus::Failed;
    failed.status_description = format!("evaluation reached delivery limit ({delivery_limit})").into();
    failed.next_eval = Some(followup.id);
    failed.modify_time_ns = now_ns;
    assert_eq!(followup.status, EvalStatus::Pending);
    (failed, followup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    const T0_NS: TimeNs = 1_000 * SECOND_NS;

    /// An eval named `job#create_index`, so test output reads as a story.
    fn eval(job: &str, create_index: u64, job_type: JobType, priority: u8) -> Arc<Evaluation> {
        let id = EvalId(u128::from(create_index) << 96 | 1);
        let mut eval = Evaluation::new(id, &JobKey::new("default", job), job_type, priority, TriggeredBy::JobRegister);
        eval.create_index = create_index;
        eval.modify_index = create_index;
        Arc::new(eval)
    }

    fn name(eval: &Evaluation) -> String {
        format!("{}#{}", eval.job_id, eval.create_index)
    }

    fn enabled() -> EvalBroker {
        let mut broker = EvalBroker::new(BrokerConfig { token_seed: 7, ..BrokerConfig::default() });
        broker.set_enabled(true);
        broker
    }

    fn dequeue_all(broker: &mut EvalBroker, types: &[JobType]) -> String {
        let mut lines = Vec::new();
        while let Some((eval, _)) = broker.dequeue(types, T0_NS).unwrap() {
            lines.push(format!("{:<8} {:<8} prio={}", name(&eval), eval.job_type.as_str(), eval.priority));
        }
        lines.join("\n")
    }

    #[test]
    fn enqueue_while_unacked_is_redelivered_after_ack() {
        let mut broker = enabled();
        broker.enqueue(eval("a", 1, JobType::Service, 50), T0_NS).unwrap();
        let (held, token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        // Released from the blocked tracker while the worker still holds it.
        broker.enqueue(held.clone(), T0_NS).unwrap();
        assert_eq!(broker.stats().total_ready, 0, "not twice at once");
        broker.ack(held.id, token).unwrap();
        let (again, _) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().expect("redelivered");
        assert_eq!(again.id, held.id);
    }

    #[test]
    fn priority_order_across_types() {
        let mut broker = enabled();
        for e in [
            eval("a", 1, JobType::Service, 50),
            eval("b", 2, JobType::Batch, 70),
            eval("c", 3, JobType::Service, 70),
            eval("d", 4, JobType::Service, 50),
            eval("e", 5, JobType::Batch, 50),
            eval("f", 6, JobType::System, 100),
        ] {
            broker.enqueue(e, T0_NS).unwrap();
        }
        // Priority first; equal priority: oldest, whatever the type.
        expect![[r#"
            b#2      batch    prio=70
            c#3      service  prio=70
            a#1      service  prio=50
            d#4      service  prio=50
            e#5      batch    prio=50"#]]
        .assert_eq(&dequeue_all(&mut broker, &[JobType::Service, JobType::Batch]));
        // The system eval was never offered to these types.
        assert_eq!(broker.stats().ready_by_type, BTreeMap::from([(JobType::System, 1)]));
    }

    #[test]
    fn a_steady_stream_of_one_type_does_not_starve_another_at_equal_priority() {
        let mut broker = enabled();
        broker.enqueue(eval("batch-job", 1, JobType::Batch, 50), T0_NS).unwrap();
        // Service work keeps arriving faster than it is dequeued: one new
        // job per dequeue, so the service heap is never empty.
        broker.enqueue(eval("svc-0", 2, JobType::Service, 50), T0_NS).unwrap();
        let mut dequeued = Vec::new();
        for k in 0..3u64 {
            broker.enqueue(eval(&format!("svc-{}", k + 1), 3 + k, JobType::Service, 50), T0_NS).unwrap();
            let (eval, _) = broker.dequeue(&JobType::ALL, T0_NS).unwrap().expect("work is ready");
            dequeued.push(name(&eval));
        }
        assert_eq!(dequeued, ["batch-job#1", "svc-0#2", "svc-1#3"]);
    }

    #[test]
    fn one_eval_per_job_promotes_best_pending_and_cancels_rest() {
        let mut broker = enabled();
        for e in [
            eval("j1", 1, JobType::Service, 50),
            eval("j1", 2, JobType::Service, 50),
            eval("j1", 3, JobType::Service, 70),
            eval("j1", 4, JobType::Service, 50),
            eval("j2", 5, JobType::Service, 10),
        ] {
            broker.enqueue(e, T0_NS).unwrap();
        }
        let stats = broker.stats();
        assert_eq!((stats.total_ready, stats.total_pending), (2, 3));

        let (first, token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        assert_eq!(name(&first), "j1#1");
        let (other, _) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        assert_eq!(name(&other), "j2#5", "j1's pending evals wait behind j1#1");
        assert_eq!(broker.dequeue(&[JobType::Service], T0_NS).unwrap(), None);

        let outputs = broker.ack(first.id, token).unwrap();
        let [BrokerOutput::Cancel(canceled)] = outputs.as_slice() else { panic!("{outputs:?}") };
        let canceled: Vec<String> = canceled.iter().map(|e| name(e)).collect();
        assert_eq!(canceled, ["j1#2", "j1#4"]);
        let (promoted, _) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        assert_eq!(name(&promoted), "j1#3", "highest priority pending eval wins");
        assert_eq!(broker.stats().total_pending, 0);

        let update = cancel_update(&eval("j1", 2, JobType::Service, 50), T0_NS);
        assert_eq!(update.status, EvalStatus::Canceled);
        assert_eq!(&*update.status_description, CANCELED_DESCRIPTION);
    }

    #[test]
    fn newest_pending_wins_at_equal_priority() {
        let mut broker = enabled();
        for e in
            [eval("j1", 1, JobType::Batch, 50), eval("j1", 3, JobType::Batch, 50), eval("j1", 2, JobType::Batch, 50)]
        {
            broker.enqueue(e, T0_NS).unwrap();
        }
        let (first, token) = broker.dequeue(&[JobType::Batch], T0_NS).unwrap().unwrap();
        let outputs = broker.ack(first.id, token).unwrap();
        assert_eq!(outputs, vec![BrokerOutput::Cancel(vec![eval("j1", 2, JobType::Batch, 50)])]);
        let (next, _) = broker.dequeue(&[JobType::Batch], T0_NS).unwrap().unwrap();
        assert_eq!(name(&next), "j1#3");
    }

    #[test]
    fn wrong_token_or_unknown_eval_is_refused() {
        let mut broker = enabled();
        let e = eval("j1", 1, JobType::Service, 50);
        broker.enqueue(e.clone(), T0_NS).unwrap();
        let (_, token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        let before = broker.stats();
        assert_eq!(broker.ack(e.id, token ^ 1), Err(BrokerError::TokenMismatch(e.id)));
        assert_eq!(broker.nack(e.id, token ^ 1, T0_NS), Err(BrokerError::TokenMismatch(e.id)));
        assert_eq!(broker.pause_nack_timeout(e.id, token ^ 1), Err(BrokerError::TokenMismatch(e.id)));
        let unknown = EvalId(99);
        assert_eq!(broker.ack(unknown, token), Err(BrokerError::NotOutstanding(unknown)));
        assert_eq!(broker.outstanding_reset(unknown, token, T0_NS), Err(BrokerError::NotOutstanding(unknown)));
        assert_eq!(broker.stats(), before);
        assert_eq!(broker.ack(e.id, token), Ok(vec![]));
        assert_eq!(broker.ack(e.id, token), Err(BrokerError::NotOutstanding(e.id)), "acked once only");
    }

    #[test]
    fn enqueue_of_a_known_eval_is_a_noop() {
        let mut broker = enabled();
        let e = eval("j1", 1, JobType::Service, 50);
        broker.enqueue(e.clone(), T0_NS).unwrap();
        broker.enqueue(e.clone(), T0_NS).unwrap();
        let (_, _) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        broker.enqueue(e, T0_NS).unwrap();
        let stats = broker.stats();
        assert_eq!((stats.total_ready, stats.total_pending, stats.total_unacked), (0, 0, 1));
    }

    /// Drives one eval through nacks until the failed queue, printing when it
    /// becomes ready again.
    #[test]
    fn nack_backs_off_then_fails_at_delivery_limit() {
        let mut broker = enabled();
        let e = eval("j1", 1, JobType::Service, 50);
        broker.enqueue(e.clone(), T0_NS).unwrap();
        let mut log = Vec::new();
        let mut now_ns = T0_NS;
        for _ in 0..3 {
            let (_, token) = broker.dequeue(&[JobType::Service], now_ns).unwrap().unwrap();
            let outputs = broker.nack(e.id, token, now_ns).unwrap();
            let nacked_at_ns = now_ns;
            if !outputs.is_empty() {
                log.push(format!("nack at +{}s: {outputs:?}", (now_ns - T0_NS) / SECOND_NS));
                break;
            }
            // Not ready one nanosecond early; ready exactly when due.
            let due_ns = broker.next_deadline_ns().unwrap();
            assert!(broker.tick(due_ns - 1).is_empty());
            assert_eq!(broker.stats().total_ready, 0);
            broker.tick(due_ns);
            assert_eq!(broker.stats().total_ready, 1);
            log.push(format!(
                "nack at +{}s: ready again after {}s",
                (nacked_at_ns - T0_NS) / SECOND_NS,
                (due_ns - nacked_at_ns) / SECOND_NS
            ));
            now_ns = due_ns;
        }
        expect![[r#"
            nack at +0s: ready again after 1s
            nack at +1s: ready again after 20s
            nack at +21s: [DeliveryLimitReached(00000001)]"#]]
        .assert_eq(&log.join("\n"));
        let stats = broker.stats();
        assert_eq!((stats.total_failed, stats.total_ready, stats.total_waiting), (1, 0, 0));

        // A newer eval of the job waits behind the failed one.
        broker.enqueue(eval("j1", 2, JobType::Service, 50), now_ns).unwrap();
        assert_eq!(broker.stats().total_pending, 1);

        let (failed, token) = broker.dequeue_failed(now_ns).unwrap().unwrap();
        assert_eq!(failed.id, e.id);
        let mut ids = IdGen::with_seed(1);
        let (marked, followup) = failed_followup(&failed, &mut ids, now_ns, 90 * SECOND_NS, 3);
        assert_eq!(marked.status, EvalStatus::Failed);
        assert_eq!(&*marked.status_description, "evaluation reached delivery limit (3)");
        assert_eq!(marked.next_eval, Some(followup.id));
        assert_eq!(followup.status, EvalStatus::Pending);
        assert_eq!(followup.triggered_by, TriggeredBy::FailedFollowUp);
        assert_eq!(followup.previous_eval, Some(e.id));
        assert_eq!(followup.wait_until_ns, now_ns + 90 * SECOND_NS);
        assert_eq!((followup.job_key(), followup.job_type, followup.priority), (e.job_key(), e.job_type, e.priority));

        // Acking the failed eval frees the job for the newer eval.
        assert_eq!(broker.ack(failed.id, token), Ok(vec![]));
        let (next, _) = broker.dequeue(&[JobType::Service], now_ns).unwrap().unwrap();
        assert_eq!(name(&next), "j1#2");
    }

    #[test]
    fn failed_followup_delay_is_seeded_and_in_range() {
        let delays: Vec<i64> = (0..100)
            .map({
                let mut rng = fastrand::Rng::with_seed(3);
                move |_| failed_followup_delay_ns(&mut rng)
            })
            .collect();
        let again: Vec<i64> = (0..100)
            .map({
                let mut rng = fastrand::Rng::with_seed(3);
                move |_| failed_followup_delay_ns(&mut rng)
            })
            .collect();
        assert_eq!(delays, again);
        for delay_ns in delays {
            assert!(delay_ns >= FAILED_FOLLOWUP_BASELINE_WAIT_NS);
            assert!(delay_ns <= FAILED_FOLLOWUP_BASELINE_WAIT_NS + FAILED_FOLLOWUP_JITTER_NS_MAX);
        }
    }

    #[test]
    fn nack_timeout_expires_on_tick() {
        let mut broker = enabled();
        let e = eval("j1", 1, JobType::Service, 50);
        broker.enqueue(e.clone(), T0_NS).unwrap();
        let (_, token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        assert_eq!(broker.next_deadline_ns(), Some(T0_NS + NACK_TIMEOUT_NS_DEFAULT));
        broker.tick(T0_NS + NACK_TIMEOUT_NS_DEFAULT - 1);
        assert_eq!(broker.stats().total_unacked, 1);

        // A heartbeat from the worker pushes the deadline out.
        broker.outstanding_reset(e.id, token, T0_NS + 30 * SECOND_NS).unwrap();
        broker.tick(T0_NS + NACK_TIMEOUT_NS_DEFAULT);
        assert_eq!(broker.stats().total_unacked, 1);

        let expiry_ns = T0_NS + 30 * SECOND_NS + NACK_TIMEOUT_NS_DEFAULT;
        assert!(broker.tick(expiry_ns).is_empty());
        let stats = broker.stats();
        assert_eq!((stats.total_unacked, stats.total_waiting), (0, 1));
        assert_eq!(broker.ack(e.id, token), Err(BrokerError::NotOutstanding(e.id)), "the worker lost it");
        assert_eq!(broker.next_deadline_ns(), Some(expiry_ns + INITIAL_NACK_DELAY_NS_DEFAULT));
    }

    #[test]
    fn paused_nack_timeout_does_not_expire() {
        let mut broker = enabled();
        let e = eval("j1", 1, JobType::Service, 50);
        broker.enqueue(e.clone(), T0_NS).unwrap();
        let (_, token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        broker.pause_nack_timeout(e.id, token).unwrap();
        assert_eq!(broker.next_deadline_ns(), None);
        let later_ns = T0_NS + 10 * NACK_TIMEOUT_NS_DEFAULT;
        broker.tick(later_ns);
        assert_eq!(broker.stats().total_unacked, 1);

        broker.resume_nack_timeout(e.id, token, later_ns).unwrap();
        assert_eq!(broker.next_deadline_ns(), Some(later_ns + NACK_TIMEOUT_NS_DEFAULT));
        broker.tick(later_ns + NACK_TIMEOUT_NS_DEFAULT - 1);
        assert_eq!(broker.stats().total_unacked, 1);
        broker.tick(later_ns + NACK_TIMEOUT_NS_DEFAULT);
        assert_eq!(broker.stats().total_unacked, 0);
    }

    #[test]
    fn delayed_eval_is_ready_only_when_due() {
        let mut broker = enabled();
        let mut until = (*eval("j1", 1, JobType::Batch, 50)).clone();
        until.wait_until_ns = T0_NS + 10 * SECOND_NS;
        let mut relative = (*eval("j2", 2, JobType::Batch, 50)).clone();
        relative.wait_ns = 5 * SECOND_NS;
        let mut past = (*eval("j3", 3, JobType::Batch, 50)).clone();
        past.wait_until_ns = T0_NS - 1;
        for e in [until, relative, past] {
            broker.enqueue(Arc::new(e), T0_NS).unwrap();
        }
        let stats = broker.stats();
        assert_eq!((stats.total_waiting, stats.total_ready), (2, 1), "a wait in the past is no wait");
        let mut log = Vec::new();
        for at_s in [0, 4, 5, 9, 10] {
            broker.tick(T0_NS + at_s * SECOND_NS);
            let ready = dequeue_all(&mut broker, &[JobType::Batch]);
            log.push(format!("+{at_s}s: {}", ready.split_whitespace().next().unwrap_or("-")));
        }
        expect![[r#"
            +0s: j3#3
            +4s: -
            +5s: j2#2
            +9s: -
            +10s: j1#1"#]]
        .assert_eq(&log.join("\n"));
    }

    #[test]
    fn disabled_broker_refuses_and_drops_everything() {
        let mut broker = EvalBroker::new(BrokerConfig::default());
        let e = eval("j1", 1, JobType::Service, 50);
        assert_eq!(broker.enqueue(e.clone(), T0_NS), Err(BrokerError::BrokerDisabled));
        broker.set_enabled(true);
        broker.enqueue(e.clone(), T0_NS).unwrap();
        broker.enqueue(eval("j1", 2, JobType::Service, 50), T0_NS).unwrap();
        let (_, token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();

        broker.set_enabled(false);
        assert_eq!(broker.dequeue(&[JobType::Service], T0_NS), Err(BrokerError::BrokerDisabled));
        assert_eq!(broker.dequeue_failed(T0_NS), Err(BrokerError::BrokerDisabled));
        assert_eq!(broker.ack(e.id, token), Err(BrokerError::BrokerDisabled));
        assert!(broker.tick(T0_NS + NACK_TIMEOUT_NS_DEFAULT).is_empty());
        assert_eq!(broker.stats(), BrokerStats::default());

        broker.set_enabled(true);
        assert_eq!(broker.stats(), BrokerStats::default());
        assert_eq!(broker.dequeue(&[JobType::Service], T0_NS), Ok(None));
        // The old eval is unknown to the new term, so it can be enqueued again,
        // and its new token differs from the old one.
        broker.enqueue(e, T0_NS).unwrap();
        let (_, new_token) = broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap();
        assert_ne!(new_token, token);
    }

    #[test]
    fn same_seed_same_tokens() {
        let tokens = |seed: u64| {
            let mut broker = EvalBroker::new(BrokerConfig { token_seed: seed, ..BrokerConfig::default() });
            broker.set_enabled(true);
            (1..=4)
                .map(|i| {
                    broker.enqueue(eval(&format!("j{i}"), i, JobType::Service, 50), T0_NS).unwrap();
                    broker.dequeue(&[JobType::Service], T0_NS).unwrap().unwrap().1
                })
                .collect::<Vec<u64>>()
        };
        assert_eq!(tokens(1), tokens(1));
        assert_ne!(tokens(1), tokens(2));
    }
}
