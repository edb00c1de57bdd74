//! The event stream's source: a bounded buffer of what each committed
//! command changed (Nomad's event broker), read by `/v1/event/stream`.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::fsm::Command;
use crate::model::{Allocation, Evaluation, Job, Node};
use crate::state::State;

/// Events kept for late readers. Nomad keeps 100 by default; a reader that
/// falls further behind than this resumes from the oldest event kept.
pub const EVENTS_BUFFERED_MAX: usize = 4096;

/// What an event carries.
#[derive(Debug, Clone)]
pub enum EventPayload {
    Job(Arc<Job>),
    Evaluation(Arc<Evaluation>),
    Allocation(Arc<Allocation>),
    Node(Arc<Node>),
}

/// One change, as Nomad's stream names it (`Topic`, `Type`, `Key`).
#[derive(Debug, Clone)]
pub struct Event {
    pub index: u64,
    pub topic: &'static str,
    pub kind: &'static str,
    pub key: String,
    pub namespace: String,
    pub payload: EventPayload,
}

/// The bounded buffer.
#[derive(Debug, Default)]
pub struct EventBuffer {
    events: VecDeque<Event>,
}

impl EventBuffer {
    /// Record the events of `command`, applied at `index` giving `state`.
    pub fn record(&mut self, index: u64, command: &Command, state: &State) {
        let mut push =
            |topic: &'static str, kind: &'static str, key: String, namespace: String, payload: EventPayload| {
                if self.events.len() >= EVENTS_BUFFERED_MAX {
                    self.events.pop_front();
                }
                self.events.push_back(Event { index, topic, kind, key, namespace, payload });
            };
        let job_event =
            |push: &mut dyn FnMut(&'static str, &'static str, String, String, EventPayload), kind, job: &Arc<Job>| {
                push("Job", kind, job.id.to_string(), job.namespace.to_string(), EventPayload::Job(job.clone()))
            };
        let evals: &[Evaluation] = match command {
            Command::JobRegister { job, eval, .. } => {
                if let Some(stored) = state.job(&job.key()) {
                    job_event(&mut push, "JobRegistered", stored);
                }
                eval.as_slice()
            }
            Command::JobDeregister { key, eval, .. } => {
                if let Some(stored) = state.job(key) {
                    job_event(&mut push, "JobDeregistered", stored);
                }
                eval.as_slice()
            }
            Command::NodeRegister { node, evals } => {
                if let Some(n) = state.node(node.id) {
                    push("Node", "NodeRegistration", n.id.to_string(), String::new(), EventPayload::Node(n.clone()));
                }
                evals
            }
            Command::NodeStatusUpdate { node_id, evals, .. }
            | Command::NodeDrainUpdate { node_id, evals, .. }
            | Command::NodeEligibilityUpdate { node_id, evals, .. } => {
                let kind = match command {
                    Command::NodeDrainUpdate { .. } => "NodeDrain",
                    Command::NodeEligibilityUpdate { .. } => "NodeEligibility",
                    _ => "NodeEvent",
                };
                if let Some(n) = state.node(*node_id) {
                    push("Node", kind, n.id.to_string(), String::new(), EventPayload::Node(n.clone()));
                }
                evals
            }
            Command::EvalUpsert { evals } => evals,
            Command::AllocClientUpdate { updates, evals } => {
                for u in updates {
                    if let Some(a) = state.alloc(u.alloc_id) {
                        push(
                            "Allocation",
                            "AllocationUpdated",
                            a.id.to_string(),
                            a.job.namespace.to_string(),
                            EventPayload::Allocation(a.clone()),
                        );
                    }
                }
                evals
            }
            Command::ApplyPlanResults(applied) => {
                let ids = applied
                    .allocs
                    .iter()
                    .map(|a| a.id)
                    .chain(applied.stops.iter().map(|s| s.alloc_id))
                    .chain(applied.preemptions.iter().map(|p| p.alloc_id));
                for id in ids {
                    if let Some(a) = state.alloc(id) {
                        push(
                            "Allocation",
                            "PlanResult",
                            a.id.to_string(),
                            a.job.namespace.to_string(),
                            EventPayload::Allocation(a.clone()),
                        );
                    }
                }
                &applied.preemption_evals
            }
            _ => &[],
        };
        for e in evals {
            if let Some(stored) = state.eval(e.id) {
                push(
                    "Evaluation",
                    "EvaluationUpdated",
                    stored.id.to_string(),
                    stored.namespace.to_string(),
                    EventPayload::Evaluation(stored.clone()),
                );
            }
        }
    }

    /// Events after `index`, oldest first, at most `limit`.
    pub fn since(&self, index: u64, limit: usize) -> Vec<Event> {
        let start = self.events.partition_point(|e| e.index <= index);
        self.events.iter().skip(start).take(limit).cloned().collect()
    }
}
