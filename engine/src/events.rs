//! The event stream's source: a bounded buffer of what each committed
//! command changed (Nomad's event broker), read by `/v1/event/stream`.
//!
//! Recording sits on the commit path, so it stores only ids; the objects are
//! looked up when a reader asks, from the state it reads with. A payload
//! can therefore be newer than its event's index (Nomad sends the object as
//! of the event); the index and type are exact.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::fsm::Command;
use crate::ids::{AllocId, DeploymentId, EvalId, JobKey, NodeId};
use crate::model::{Allocation, Deployment, Evaluation, Job, Node};
use crate::state::State;

/// Events kept for late readers. Nomad keeps 100 by default; a reader that
/// falls further behind than this resumes from the oldest event kept.
pub const EVENTS_BUFFERED_MAX: usize = 4096;

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    Job(JobKey),
    Evaluation(EvalId),
    Allocation(AllocId),
    Node(NodeId),
    Deployment(DeploymentId),
}

#[derive(Debug, Clone)]
struct Recorded {
    index: u64,
    kind: &'static str,
    subject: Subject,
}

/// What an event carries.
#[derive(Debug, Clone)]
pub enum EventPayload {
    Job(Arc<Job>),
    Evaluation(Arc<Evaluation>),
    Allocation(Arc<Allocation>),
    Node(Arc<Node>),
    Deployment(Arc<Deployment>),
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
    events: VecDeque<Recorded>,
}

impl EventBuffer {
    fn push(&mut self, index: u64, kind: &'static str, subject: Subject) {
        if self.events.len() >= EVENTS_BUFFERED_MAX {
            self.events.pop_front();
        }
        self.events.push_back(Recorded { index, kind, subject });
    }

    /// Record the events of `command`, committed at `index`.
    pub fn record(&mut self, index: u64, command: &Command) {
        let evals: &[Evaluation] = match command {
            Command::JobRegister { job, eval, .. } => {
                self.push(index, "JobRegistered", Subject::Job(job.key()));
                eval.as_slice()
            }
            Command::JobDeregister { key, eval, .. } => {
                self.push(index, "JobDeregistered", Subject::Job(key.clone()));
                eval.as_slice()
            }
            Command::NodeRegister { node, evals } => {
                self.push(index, "NodeRegistration", Subject::Node(node.id));
                evals
            }
            Command::NodeStatusUpdate { node_id, evals, .. } => {
                self.push(index, "NodeEvent", Subject::Node(*node_id));
                evals
            }
            Command::NodeDrainUpdate { node_id, evals, .. } => {
                self.push(index, "NodeDrain", Subject::Node(*node_id));
                evals
            }
            Command::NodeEligibilityUpdate { node_id, evals, .. } => {
                self.push(index, "NodeEligibility", Subject::Node(*node_id));
                evals
            }
            Command::EvalUpsert { evals } => evals,
            Command::PeriodicLaunch { job, eval, .. } => {
                self.push(index, "JobRegistered", Subject::Job(job.key()));
                std::slice::from_ref(eval)
            }
            Command::DeploymentStatusUpdate { id, evals, job, .. } => {
                self.push(index, "DeploymentStatusUpdate", Subject::Deployment(*id));
                if let Some(job) = job {
                    self.push(index, "JobRegistered", Subject::Job(job.key()));
                }
                evals
            }
            Command::DeploymentPromote { id, evals, .. } => {
                self.push(index, "DeploymentPromotion", Subject::Deployment(*id));
                evals
            }
            Command::JobScale { job, eval, .. } => {
                if let Some(job) = job {
                    self.push(index, "JobRegistered", Subject::Job(job.key()));
                }
                eval.as_slice()
            }
            Command::DeploymentAllocHealth { id, healthy, unhealthy, evals, .. } => {
                for a in healthy.iter().chain(unhealthy) {
                    self.push(index, "AllocationUpdated", Subject::Allocation(*a));
                }
                self.push(index, "DeploymentAllocHealth", Subject::Deployment(*id));
                evals
            }
            Command::AllocClientUpdate { updates, evals } => {
                for u in updates {
                    self.push(index, "AllocationUpdated", Subject::Allocation(u.alloc_id));
                }
                evals
            }
            Command::ApplyPlanResults(applied) => {
                for a in &applied.allocs {
                    self.push(index, "PlanResult", Subject::Allocation(a.id));
                }
                for s in &applied.stops {
                    self.push(index, "PlanResult", Subject::Allocation(s.alloc_id));
                }
                for p in &applied.preemptions {
                    self.push(index, "PlanResult", Subject::Allocation(p.alloc_id));
                }
                if let Some(d) = &applied.deployment {
                    self.push(index, "PlanResult", Subject::Deployment(d.id));
                }
                &applied.preemption_evals
            }
            _ => &[],
        };
        for e in evals {
            self.push(index, "EvaluationUpdated", Subject::Evaluation(e.id));
        }
    }

    /// Events after `index`, oldest first, at most `limit`, with their
    /// objects from `state` (events whose object is gone are skipped).
    pub fn since(&self, index: u64, limit: usize, state: &State) -> Vec<Event> {
        let start = self.events.partition_point(|e| e.index <= index);
        self.events.iter().skip(start).filter_map(|r| materialize(r, state)).take(limit).collect()
    }
}

fn materialize(r: &Recorded, state: &State) -> Option<Event> {
    let (topic, key, namespace, payload) = match &r.subject {
        Subject::Job(k) => ("Job", k.id.to_string(), k.namespace.to_string(), EventPayload::Job(state.job(k)?.clone())),
        Subject::Evaluation(id) => {
            let e = state.eval(*id)?;
            ("Evaluation", id.to_string(), e.namespace.to_string(), EventPayload::Evaluation(e.clone()))
        }
        Subject::Allocation(id) => {
            let a = state.alloc(*id)?;
            ("Allocation", id.to_string(), a.job.namespace.to_string(), EventPayload::Allocation(a.clone()))
        }
        Subject::Node(id) => ("Node", id.to_string(), String::new(), EventPayload::Node(state.node(*id)?.clone())),
        Subject::Deployment(id) => {
            let d = state.deployment(*id)?;
            ("Deployment", id.to_string(), d.job.namespace.to_string(), EventPayload::Deployment(d.clone()))
        }
    };
    Some(Event { index: r.index, topic, kind: r.kind, key, namespace, payload })
}
