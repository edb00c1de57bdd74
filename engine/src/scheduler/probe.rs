//! Entry points into the placement stack for benchmarks: score one node,
//! select one placement, without the rest of a scheduler run.

use std::sync::Arc;

use crate::ids::NodeId;
use crate::model::{Allocation, Job};
use crate::state::State;

use super::stack::{Stack, StackConfig};

/// A placement stack for one job on one snapshot.
#[derive(Debug)]
pub struct Probe<'a> {
    stack: Stack<'a>,
}

impl<'a> Probe<'a> {
    pub fn new(state: &'a State, job: &'a Arc<Job>, existing: &'a [Arc<Allocation>], seed: u64) -> Probe<'a> {
        let config = state.scheduler_config();
        let config = StackConfig { algorithm: config.algorithm, preemption: false };
        Probe { stack: Stack::new(state, job, existing, seed, config) }
    }

    /// Number of candidate nodes.
    pub fn candidates(&self) -> usize {
        self.stack.candidates.len()
    }

    /// Feasibility, fit and score of candidate `i` for the first group.
    pub fn score(&mut self, i: usize) -> Option<f64> {
        self.stack.score_candidate(0, i)
    }

    /// Choose a node for one allocation of the first group (not recorded,
    /// so repeated calls measure the same work).
    pub fn select(&mut self) -> Option<NodeId> {
        self.stack.select(0, &[]).ok().map(|s| s.node.id)
    }
}
