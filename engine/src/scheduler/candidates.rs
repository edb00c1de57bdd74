//! The candidate nodes of one eval: ready, eligible, not draining, in one of
//! the job's datacenters and its node pool, shuffled from the run's seed.
//! Placements walk the list round-robin from where the last one stopped,
//! so consecutive placements look at different nodes (Nomad's StaticIterator).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::intern::Sym;
use crate::model::{Job, Node};
use crate::state::{ScopedNodes, State};

/// The node pool that matches every node.
pub(super) const POOL_ALL: &str = "all";

#[derive(Debug)]
pub(super) struct Candidates<'a> {
    ready: &'a [Arc<Node>],
    /// Indexes into `ready` of the nodes in scope; shuffled lazily, so
    /// positions below `shuffled` are final and the rest not yet drawn.
    order: Vec<u32>,
    shuffled: usize,
    rng: fastrand::Rng,
    /// Where the next walk starts.
    pub(super) cursor: usize,
    /// Ready nodes per datacenter, for failure metrics.
    per_datacenter: Vec<(Sym, u32)>,
}

/// Whether a datacenter name matches a job's pattern (`*` globs, as Nomad 1.5+).
pub(super) fn datacenter_matches(pattern: &str, datacenter: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == datacenter,
        Some((prefix, rest)) => {
            datacenter.len() >= prefix.len()
                && datacenter.starts_with(prefix)
                && (rest.is_empty()
                    || (0..=datacenter.len() - prefix.len())
                        .any(|i| datacenter_matches(rest, &datacenter[prefix.len() + i..])))
        }
    }
}

/// Decides datacenter and pool membership with one string match per distinct
/// datacenter, not per node.
#[derive(Debug)]
pub(super) struct PlacementScope<'j> {
    job: &'j Job,
    pool: Option<Sym>,
    /// Verdict per datacenter seen; a fleet has few, so a scan beats hashing.
    datacenter_ok: Vec<(Sym, bool)>,
}

impl<'j> PlacementScope<'j> {
    pub(super) fn new(job: &'j Job) -> PlacementScope<'j> {
        let pool = (&*job.node_pool != POOL_ALL).then(|| Sym::new(&job.node_pool));
        PlacementScope { job, pool, datacenter_ok: Vec::new() }
    }

    pub(super) fn contains(&mut self, node: &Node) -> bool {
        if self.pool.is_some_and(|p| p != node.node_pool) {
            return false;
        }
        if let Some((_, ok)) = self.datacenter_ok.iter().find(|(dc, _)| *dc == node.datacenter) {
            return *ok;
        }
        let dc = node.datacenter.text();
        let ok = self.job.datacenters.iter().any(|p| datacenter_matches(p, &dc));
        self.datacenter_ok.push((node.datacenter, ok));
        ok
    }
}

impl<'a> Candidates<'a> {
    /// Nodes where `job` may place new allocations, in seeded random order.
    /// `order` is a reused buffer.
    pub(super) fn new(state: &'a State, job: &Job, seed: u64, mut order: Vec<u32>) -> Candidates<'a> {
        let ready: &'a [Arc<Node>] = state.ready_nodes();
        let key = (job.node_pool.clone(), job.datacenters.clone());
        let scoped = state.scoped_ready_nodes(key, |ready| {
            let mut scope = PlacementScope::new(job);
            let mut out = ScopedNodes::default();
            for (i, node) in ready.iter().enumerate() {
                if scope.contains(node) {
                    out.indexes.push(u32::try_from(i).expect("fewer than 2^32 nodes"));
                    match out.per_datacenter.iter_mut().find(|(dc, _)| *dc == node.datacenter) {
                        Some((_, n)) => *n += 1,
                        None => out.per_datacenter.push((node.datacenter, 1)),
                    }
                }
            }
            out
        });
        order.clear();
        order.extend_from_slice(&scoped.indexes);
        let per_datacenter = scoped.per_datacenter.clone();
        Candidates { ready, order, shuffled: 0, rng: fastrand::Rng::with_seed(seed), cursor: 0, per_datacenter }
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// The `i`th candidate. Walks visit a prefix of the list far more often
    /// than all of it, so the Fisher-Yates shuffle runs only as far as asked.
    pub(super) fn node(&mut self, i: usize) -> &'a Arc<Node> {
        while self.shuffled <= i {
            let j = self.rng.usize(self.shuffled..self.order.len());
            self.order.swap(self.shuffled, j);
            self.shuffled += 1;
        }
        &self.ready[self.order[i] as usize]
    }

    pub(super) fn per_datacenter(&self) -> BTreeMap<Arc<str>, u32> {
        self.per_datacenter.iter().map(|(dc, n)| (dc.text(), *n)).collect()
    }

    /// Take the buffer back for reuse.
    pub(super) fn take_buffer(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.order)
    }
}

#[cfg(test)]
mod tests {
    use super::datacenter_matches;

    #[test]
    fn datacenter_globs() {
        assert!(datacenter_matches("*", "dc1"));
        assert!(datacenter_matches("dc1", "dc1"));
        assert!(!datacenter_matches("dc1", "dc10"));
        assert!(datacenter_matches("dc*", "dc10"));
        assert!(datacenter_matches("us-*-1", "us-east-1"));
        assert!(!datacenter_matches("us-*-1", "us-east-2"));
        assert!(!datacenter_matches("eu*", "dc1"));
    }
}
