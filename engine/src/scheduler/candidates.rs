//! The candidate nodes of one eval: ready, eligible, not draining, in one of
//! the job's datacenters and its node pool, shuffled from the run's seed.
//! Placements walk the list round-robin from where the last one stopped,
//! so consecutive placements look at different nodes (Nomad's StaticIterator).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::intern::Sym;
use crate::model::{Job, Node};
use crate::state::State;

/// The node pool that matches every node.
pub(super) const POOL_ALL: &str = "all";

#[derive(Debug)]
pub(super) struct Candidates<'a> {
    pub(super) nodes: Vec<&'a Arc<Node>>,
    /// Where the next walk starts.
    pub(super) cursor: usize,
    /// Ready nodes per datacenter, for failure metrics.
    pub(super) per_datacenter: BTreeMap<Arc<str>, u32>,
}

/// Whether a datacenter name matches a job's pattern (`*` globs, as Nomad 1.5+).
pub(super) fn datacenter_matches(pattern: &str, datacenter: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == datacenter,
        Some((prefix, rest)) => {
            datacenter.len() >= prefix.len()
                && datacenter.starts_with(prefix)
                && (rest.is_empty() || (0..=datacenter.len() - prefix.len()).any(|i| datacenter_matches(rest, &datacenter[prefix.len() + i..])))
        }
    }
}

/// Decides datacenter and pool membership with one string match per distinct
/// datacenter, not per node.
#[derive(Debug)]
pub(super) struct PlacementScope<'j> {
    job: &'j Job,
    pool: Option<Sym>,
    datacenter_ok: HashMap<Sym, bool>,
}

impl<'j> PlacementScope<'j> {
    pub(super) fn new(job: &'j Job) -> PlacementScope<'j> {
        let pool = (&*job.node_pool != POOL_ALL).then(|| Sym::new(&job.node_pool));
        PlacementScope { job, pool, datacenter_ok: HashMap::new() }
    }

    pub(super) fn contains(&mut self, node: &Node) -> bool {
        if self.pool.is_some_and(|p| p != node.node_pool) {
            return false;
        }
        let job = self.job;
        *self.datacenter_ok.entry(node.datacenter).or_insert_with(|| {
            let dc = node.datacenter.text();
            job.datacenters.iter().any(|p| datacenter_matches(p, &dc))
        })
    }
}

impl<'a> Candidates<'a> {
    /// Nodes where `job` may place new allocations, in seeded random order.
    pub(super) fn new(state: &'a State, job: &Job, rng: &mut fastrand::Rng) -> Candidates<'a> {
        let mut scope = PlacementScope::new(job);
        let mut nodes = Vec::with_capacity(state.node_count());
        let mut per_datacenter: BTreeMap<Arc<str>, u32> = BTreeMap::new();
        let mut per_dc_sym: HashMap<Sym, u32> = HashMap::new();
        for node in state.nodes() {
            if node.ready_for_placement() && scope.contains(node) {
                nodes.push(node);
                *per_dc_sym.entry(node.datacenter).or_default() += 1;
            }
        }
        for (dc, n) in per_dc_sym {
            per_datacenter.insert(dc.text(), n);
        }
        rng.shuffle(&mut nodes);
        Candidates { nodes, cursor: 0, per_datacenter }
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.len()
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
