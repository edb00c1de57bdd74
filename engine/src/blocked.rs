//! [`BlockedEvals`]: evaluations that could not place everything, parked
//! until cluster capacity changes (Nomad's `nomad/blocked_evals.go`).
//!
//! A pure core: every method returns the evals the leader must act on, as
//! data: to enqueue in the broker (status set to pending), or to write as
//! canceled. The leader owns it on the leader thread, or behind a `Mutex`.
//!
//! - *captured*: the job's constraints are captured by computed node
//!   classes; its `class_eligibility` says which classes might fit. A capacity
//!   change in a class unblocks it unless the class is marked ineligible.
//! - *escaped*: a constraint escaped class computation (say, on a node's
//!   unique attribute), so any capacity change may unblock it.
//! - *by node*: a system eval for one node waits for that node's change.
//!
//! Bounds: at most one blocked eval per job (a newer one supersedes the older,
//! returned for cancelation), so the tracker is bounded by the jobs in the
//! state store; `unblock_indexes` holds one entry per computed node class,
//! bounded by the distinct node shapes of the fleet (a few hundred at most,
//! against 10,000+ nodes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::ids::{EvalId, IdBuildHasher, JobKey, NodeId};
use crate::model::{EvalStatus, Evaluation, JobType, TriggeredBy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracking {
    Captured,
    Escaped,
    Node(NodeId),
}

#[derive(Debug)]
struct Blocked {
    eval: Arc<Evaluation>,
    tracking: Tracking,
}

/// What [`BlockedEvals::block`] asks of the leader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockOutcome {
    /// The eval missed an unblock while its scheduler ran: enqueue it now
    /// (status already set to pending).
    pub enqueue: Option<Arc<Evaluation>>,
    /// The older blocked eval of the same job: write it (status already set
    /// to canceled).
    pub cancel: Option<Arc<Evaluation>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockedStats {
    pub total_blocked: usize,
    pub total_escaped: usize,
    pub total_by_node: usize,
    pub blocked_by_job: BTreeMap<JobKey, EvalId>,
}

/// The blocked-evals tracker. Disabled until the leader enables it.
#[derive(Debug, Default)]
pub struct BlockedEvals {
    enabled: bool,
    blocked: HashMap<EvalId, Blocked, IdBuildHasher>,
    jobs: HashMap<JobKey, EvalId, IdBuildHasher>,
    /// Per computed node class, the latest raft index at which it gained
    /// capacity: an eval planned on an older snapshot missed that change.
    unblock_indexes: HashMap<u64, u64, IdBuildHasher>,
}

impl BlockedEvals {
    pub fn new() -> BlockedEvals {
        BlockedEvals::default()
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Disabling (leadership lost) forgets everything: blocked evals are
    /// durable in raft, and the next leader re-blocks them.
    pub fn set_enabled(&mut self, enabled: bool) {
        if !enabled {
            *self = BlockedEvals::default();
        }
        self.enabled = enabled;
    }

    /// Parks a blocked eval until capacity changes. Keeps one eval per job,
    /// the newest; an eval that already missed a capacity change comes back
    /// to enqueue instead. Ignored while disabled (the eval stays in raft).
    pub fn block(&mut self, eval: Arc<Evaluation>) -> BlockOutcome {
        assert_eq!(eval.status, EvalStatus::Blocked, "only blocked evals are tracked");
        let mut outcome = BlockOutcome::default();
        if !self.enabled || self.blocked.contains_key(&eval.id) {
            return outcome;
        }
        let job = eval.job_key();
        if let Some(&existing_id) = self.jobs.get(&job) {
            let existing = &self.blocked[&existing_id].eval;
            let newer = |e: &Evaluation| (e.modify_index, e.snapshot_index);
            if newer(&eval) <= newer(existing) {
                outcome.cancel = Some(Arc::new(duplicate(&eval)));
                return outcome;
            }
            let existing = self.remove(existing_id);
            outcome.cancel = Some(Arc::new(duplicate(&existing)));
        }
        if self.missed_unblock(&eval) {
            outcome.enqueue = Some(Arc::new(pending(&eval)));
            return outcome;
        }
        let tracking = match eval.node_id {
            Some(node_id) if eval.job_type == JobType::System => Tracking::Node(node_id),
            _ if eval.escaped_computed_class => Tracking::Escaped,
            _ => Tracking::Captured,
        };
        self.jobs.insert(job, eval.id);
        self.blocked.insert(eval.id, Blocked { eval, tracking });
        assert_eq!(self.jobs.len(), self.blocked.len());
        outcome
    }

    /// A node of `computed_class` gained capacity at raft `index`: returns
    /// the evals to enqueue (status pending), oldest first: every escaped
    /// eval, and every captured eval that does not rule the class out (a
    /// class it never saw might fit).
    pub fn unblock(&mut self, computed_class: u64, index: u64) -> Vec<Arc<Evaluation>> {
        if !self.enabled {
            return Vec::new();
        }
        let recorded = self.unblock_indexes.entry(computed_class).or_default();
        *recorded = (*recorded).max(index);
        self.release(|b| match b.tracking {
            Tracking::Escaped => true,
            Tracking::Captured => may_fit(&b.eval, computed_class),
            Tracking::Node(_) => false,
        })
    }

    /// Evals blocked because their plans kept being rejected (not for lack
    /// of capacity): the leader releases them on a timer, as Nomad's
    /// `UnblockFailed`, since no capacity change may ever come for them.
    pub fn unblock_failed(&mut self) -> Vec<Arc<Evaluation>> {
        if !self.enabled {
            return Vec::new();
        }
        self.release(|b| b.eval.triggered_by == TriggeredBy::MaxPlans)
    }

    /// A node gained capacity: returns the system evals blocked on it.
    pub fn unblock_node(&mut self, node_id: NodeId) -> Vec<Arc<Evaluation>> {
        if !self.enabled {
            return Vec::new();
        }
        self.release(|b| b.tracking == Tracking::Node(node_id))
    }

    /// Forgets the job's blocked eval (job purged, or a newer eval of the job
    /// completed), returning it.
    pub fn untrack(&mut self, job: &JobKey) -> Option<Arc<Evaluation>> {
        let eval_id = *self.jobs.get(job)?;
        Some(self.remove(eval_id))
    }

    pub fn blocked_for_job(&self, job: &JobKey) -> Option<&Arc<Evaluation>> {
        self.jobs.get(job).map(|id| &self.blocked[id].eval)
    }

    pub fn stats(&self) -> BlockedStats {
        let count = |f: fn(&Tracking) -> bool| self.blocked.values().filter(|b| f(&b.tracking)).count();
        BlockedStats {
            total_blocked: self.blocked.len(),
            total_escaped: count(|t| *t == Tracking::Escaped),
            total_by_node: count(|t| matches!(t, Tracking::Node(_))),
            blocked_by_job: self.jobs.iter().map(|(job, id)| (job.clone(), *id)).collect(),
        }
    }

    /// Nomad's `missedUnblock`: some class gained capacity after the eval's
    /// snapshot, and the eval could use that class.
    fn missed_unblock(&self, eval: &Evaluation) -> bool {
        self.unblock_indexes.iter().any(|(&class, &index)| {
            index > eval.snapshot_index && (eval.escaped_computed_class || may_fit(eval, class))
        })
    }

    fn release(&mut self, unblocks: impl Fn(&Blocked) -> bool) -> Vec<Arc<Evaluation>> {
        let mut ids: Vec<(u64, EvalId)> =
            self.blocked.values().filter(|b| unblocks(b)).map(|b| (b.eval.create_index, b.eval.id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| Arc::new(pending(&self.remove(id)))).collect()
    }

    fn remove(&mut self, eval_id: EvalId) -> Arc<Evaluation> {
        let blocked = self.blocked.remove(&eval_id).expect("tracked");
        let job_eval = self.jobs.remove(&blocked.eval.job_key());
        assert_eq!(job_eval, Some(eval_id));
        blocked.eval
    }
}

/// Unknown classes may fit: the scheduler only recorded what it saw.
fn may_fit(eval: &Evaluation, computed_class: u64) -> bool {
    eval.class_eligibility.get(&computed_class) != Some(&false)
}

fn pending(eval: &Evaluation) -> Evaluation {
    let mut pending = eval.clone();
    pending.status = EvalStatus::Pending;
    pending
}

fn duplicate(eval: &Evaluation) -> Evaluation {
    let mut canceled = eval.clone();
    canceled.status = EvalStatus::Canceled;
    canceled.status_description = format!("existing blocked evaluation exists for job {:?}", eval.job_id).into();
    canceled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TriggeredBy;
    use expect_test::expect;

    /// A blocked eval named `job#n`, with the class eligibility given as
    /// `[(class, eligible)]`; `escaped` when `None`.
    fn blocked(job: &str, n: u64, classes: Option<&[(u64, bool)]>) -> Arc<Evaluation> {
        let id = EvalId(u128::from(n) << 96 | 1);
        let mut eval =
            Evaluation::new(id, &JobKey::new("default", job), JobType::Service, 50, TriggeredBy::JobRegister);
        eval.status = EvalStatus::Blocked;
        eval.create_index = n;
        eval.modify_index = n;
        eval.snapshot_index = n;
        match classes {
            Some(classes) => eval.class_eligibility = classes.iter().copied().collect(),
            None => eval.escaped_computed_class = true,
        }
        Arc::new(eval)
    }

    fn names(evals: &[Arc<Evaluation>]) -> String {
        let names: Vec<String> = evals
            .iter()
            .map(|e| {
                assert_eq!(e.status, EvalStatus::Pending);
                format!("{}#{}", e.job_id, e.create_index)
            })
            .collect();
        if names.is_empty() { "-".to_string() } else { names.join(" ") }
    }

    fn enabled() -> BlockedEvals {
        let mut tracker = BlockedEvals::new();
        tracker.set_enabled(true);
        tracker
    }

    #[test]
    fn unblock_by_class_captured_and_escaped() {
        let mut tracker = enabled();
        for eval in [
            blocked("a", 1, Some(&[(1, true), (2, false), (3, false)])),
            blocked("b", 2, Some(&[(2, true)])),
            blocked("c", 3, None),
            blocked("d", 4, Some(&[])),
        ] {
            assert_eq!(tracker.block(eval), BlockOutcome::default());
        }
        assert_eq!((tracker.stats().total_blocked, tracker.stats().total_escaped), (4, 1));
        let mut log = Vec::new();
        for (class, index) in [(2, 10), (3, 11), (1, 12)] {
            log.push(format!("unblock class {class} @{index}: {}", names(&tracker.unblock(class, index))));
        }
        // a is ineligible for classes 2 and 3 and stays blocked until class 1;
        // b says class 2 fits; escaped c and class-agnostic d fit anything.
        expect![[r#"
            unblock class 2 @10: b#2 c#3 d#4
            unblock class 3 @11: -
            unblock class 1 @12: a#1"#]]
        .assert_eq(&log.join("\n"));
        assert_eq!(tracker.stats().total_blocked, 0);
    }

    #[test]
    fn one_blocked_eval_per_job_cancels_the_older() {
        let mut tracker = enabled();
        let first = blocked("j1", 5, Some(&[]));
        assert_eq!(tracker.block(first.clone()), BlockOutcome::default());

        let newer = blocked("j1", 7, Some(&[]));
        let outcome = tracker.block(newer.clone());
        let canceled = outcome.cancel.expect("older one canceled");
        assert_eq!((canceled.id, canceled.status), (first.id, EvalStatus::Canceled));
        assert_eq!(&*canceled.status_description, r#"existing blocked evaluation exists for job "j1""#);
        assert_eq!(outcome.enqueue, None);

        // An older eval arriving late is the duplicate itself.
        let late = blocked("j1", 6, Some(&[]));
        let outcome = tracker.block(late.clone());
        assert_eq!(outcome.cancel.map(|e| e.id), Some(late.id));
        assert_eq!(tracker.blocked_for_job(&JobKey::new("default", "j1")).map(|e| e.id), Some(newer.id));
        assert_eq!(tracker.stats().total_blocked, 1);

        // Blocking the tracked eval again changes nothing.
        assert_eq!(tracker.block(newer), BlockOutcome::default());
    }

    #[test]
    fn missed_unblock_returns_the_eval_at_once() {
        let mut tracker = enabled();
        assert!(tracker.unblock(1, 20).is_empty());
        let mut log = Vec::new();
        for eval in [
            blocked("stale-fits", 15, Some(&[(1, true)])),
            blocked("stale-unknown", 16, Some(&[(9, true)])),
            blocked("stale-ineligible", 17, Some(&[(1, false)])),
            blocked("stale-escaped", 18, None),
            blocked("fresh", 25, Some(&[(1, true)])),
        ] {
            let outcome = tracker.block(eval.clone());
            assert_eq!(outcome.cancel, None);
            let verdict = if outcome.enqueue.is_some() { "enqueue now" } else { "blocked" };
            log.push(format!("{:<16} {verdict}", eval.job_id));
        }
        expect![[r#"
            stale-fits       enqueue now
            stale-unknown    enqueue now
            stale-ineligible blocked
            stale-escaped    enqueue now
            fresh            blocked"#]]
        .assert_eq(&log.join("\n"));
        assert_eq!(tracker.stats().total_blocked, 2);
    }

    #[test]
    fn system_evals_wait_for_their_node() {
        let mut tracker = enabled();
        let node_id = NodeId(42 << 96);
        let mut eval = (*blocked("sys", 1, Some(&[]))).clone();
        eval.job_type = JobType::System;
        eval.node_id = Some(node_id);
        tracker.block(Arc::new(eval));
        assert_eq!(tracker.stats().total_by_node, 1);
        assert!(tracker.unblock(1, 5).is_empty(), "class changes do not concern node evals");
        assert!(tracker.unblock_node(NodeId(7 << 96)).is_empty());
        assert_eq!(names(&tracker.unblock_node(node_id)), "sys#1");
    }

    #[test]
    fn untrack_and_disable_forget() {
        let mut tracker = enabled();
        tracker.block(blocked("j1", 1, Some(&[])));
        tracker.block(blocked("j2", 2, None));
        let job = JobKey::new("default", "j1");
        assert_eq!(tracker.untrack(&job).map(|e| e.create_index), Some(1));
        assert_eq!(tracker.untrack(&job), None);
        assert_eq!(names(&tracker.unblock(3, 10)), "j2#2");

        tracker.block(blocked("j3", 11, Some(&[])));
        tracker.set_enabled(false);
        assert_eq!(tracker.stats(), BlockedStats::default());
        assert_eq!(tracker.block(blocked("j4", 12, Some(&[]))), BlockOutcome::default());
        assert!(tracker.unblock(3, 13).is_empty());
        tracker.set_enabled(true);
        assert_eq!(tracker.stats(), BlockedStats::default());
        // The old term's unblock index is forgotten too: no missed unblock.
        assert_eq!(tracker.block(blocked("j5", 1, Some(&[]))), BlockOutcome::default());
    }
}
