//! The placement stack: for one allocation, walk the candidates, filter by
//! feasibility, check fit against committed usage plus this run's changes,
//! assign ports and devices, score, keep the best of `limit` options.

use std::collections::HashMap;
use std::sync::Arc;

use crate::feasible::{self, RegexCache};
use crate::ids::{IdBuildHasher, NodeId};
use crate::intern::Sym;
use crate::model::{
    AllocMetric, AllocatedResources, Allocation, ComparableResources, Constraint, Job, JobType, Node, Spread,
};
use crate::state::{SchedulerAlgorithm, State};

use super::candidates::Candidates;
use super::context::NodeView;
use super::context::PlanLocal;
use super::devices::assign_devices;
use super::feasibility::{Filtered, GroupChecker, JobPlacements};
use super::ports::assign_ports;
use super::preempt::{find_victims, may_preempt};
use super::rank;

/// Options with a negative score the limit may pass over before taking them
/// anyway (Nomad's `maxSkip`): enough to avoid a penalised node when a
/// better one is near, without scanning the whole fleet.
const NEGATIVE_SCORE_SKIPS_MAX: usize = 3;

/// Exhausted nodes remembered per placement as preemption candidates: the
/// preemption pass is a fallback and must stay bounded on large fleets.
const PREEMPTION_CANDIDATES_MAX: usize = 64;

/// Why nodes were passed over during one walk, counted cheaply (symbols and
/// shared strings in small vectors); turned into an [`AllocMetric`] only
/// when the placement fails, which is rare next to the walks that succeed.
#[derive(Debug, Default)]
pub(super) struct WalkStats {
    evaluated: u32,
    filtered: u32,
    exhausted: u32,
    class_filtered: Vec<(Sym, u32)>,
    constraint_filtered: Vec<(Arc<str>, u32)>,
    class_exhausted: Vec<(Sym, u32)>,
    dimension_exhausted: Vec<(Arc<str>, u32)>,
}

fn bump<K: PartialEq>(counts: &mut Vec<(K, u32)>, key: K) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

impl WalkStats {
    fn into_metric(self, nodes_in_pool: u32) -> AllocMetric {
        let named = |v: Vec<(Sym, u32)>| v.into_iter().map(|(s, n)| (s.text(), n)).collect();
        AllocMetric {
            nodes_evaluated: self.evaluated,
            nodes_filtered: self.filtered,
            nodes_in_pool,
            nodes_exhausted: self.exhausted,
            class_filtered: named(self.class_filtered),
            constraint_filtered: self.constraint_filtered.into_iter().collect(),
            class_exhausted: named(self.class_exhausted),
            dimension_exhausted: self.dimension_exhausted.into_iter().collect(),
            ..AllocMetric::default()
        }
    }
}

/// A chosen node and what the placement gets there.
#[derive(Debug)]
pub(super) struct Selection<'a> {
    pub(super) node: &'a Arc<Node>,
    pub(super) resources: AllocatedResources,
    pub(super) preempted: Vec<Arc<Allocation>>,
    pub(super) score: f64,
}

#[derive(Debug)]
struct SpreadState {
    spread: Spread,
    sum_weight: u32,
    /// Desired allocations per target value (percent of the group's count);
    /// the implicit remainder is under `None`.
    desired: Vec<(Arc<str>, f64)>,
    remainder: f64,
    used: HashMap<String, u32>,
}

/// Per task group data the stack computes once.
#[derive(Debug)]
struct GroupPlan {
    checker: GroupChecker,
    cpu_mhz: u64,
    cores: u32,
    memory_mb: u64,
    disk_mb: u64,
    count: u32,
    affinities: Vec<(Constraint, i8)>,
    affinity_abs_sum: i32,
    affinity_cache: HashMap<u64, i32>,
    affinity_escapes: bool,
    spreads: Vec<SpreadState>,
    has_devices: bool,
    has_ports: bool,
    /// Gang topology hint: the attribute, and the value of the group's first
    /// placement in this run once there is one.
    topology: Option<(Arc<str>, Option<String>)>,
}

/// Stack configuration derived from job type and scheduler config.
#[derive(Debug, Clone, Copy)]
pub(super) struct StackConfig {
    pub(super) algorithm: SchedulerAlgorithm,
    pub(super) preemption: bool,
}

#[derive(Debug)]
pub(super) struct Stack<'a> {
    state: &'a State,
    job: &'a Arc<Job>,
    pub(super) candidates: Candidates<'a>,
    pub(super) local: PlanLocal,
    placements: JobPlacements,
    /// Existing live allocations per (node, group), for anti-affinity.
    existing_per_node_group: HashMap<(NodeId, u16), u32, IdBuildHasher>,
    groups: Vec<Option<GroupPlan>>,
    existing: &'a [Arc<Allocation>],
    rng: fastrand::Rng,
    config: StackConfig,
    regex: RegexCache,
}

impl<'a> Stack<'a> {
    pub(super) fn new(
        state: &'a State,
        job: &'a Arc<Job>,
        existing: &'a [Arc<Allocation>],
        seed: u64,
        config: StackConfig,
    ) -> Stack<'a> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let candidates = Candidates::new(state, job, rng.u64(..), scratch.order);
        let placements = JobPlacements::new(job, existing);
        let mut existing_per_node_group: HashMap<(NodeId, u16), u32, IdBuildHasher> = HashMap::default();
        for (node, groups) in &placements.groups_by_node {
            for g in groups {
                *existing_per_node_group.entry((*node, *g)).or_default() += 1;
            }
        }
        Stack {
            state,
            job,
            candidates,
            local: PlanLocal::with_buffer(scratch.deltas),
            placements,
            existing_per_node_group,
            groups: (0..job.task_groups.len()).map(|_| None).collect(),
            existing,
            rng,
            config,
            regex: RegexCache::new(),
        }
    }

    fn group(&mut self, gi: u16) -> &mut GroupPlan {
        let slot = usize::from(gi);
        if self.groups[slot].is_none() {
            let plan = self.plan_group(gi);
            self.groups[slot] = Some(plan);
        }
        self.groups[slot].as_mut().expect("just set")
    }

    fn plan_group(&self, gi: u16) -> GroupPlan {
        let job = self.job;
        let group = &job.task_groups[usize::from(gi)];
        let state = self.state;
        let checker = GroupChecker::new(job, gi, self.existing, &|id| state.node(id).cloned());
        let mut cpu_mhz = 0;
        let mut cores = 0;
        let mut memory_mb = 0;
        for task in &group.tasks {
            if task.resources.cores == 0 {
                cpu_mhz += u64::from(task.resources.cpu_mhz);
            }
            cores += task.resources.cores;
            memory_mb += u64::from(task.resources.memory_mb);
        }
        let affinities: Vec<(Constraint, i8)> = job
            .affinities
            .iter()
            .chain(group.affinities.iter())
            .chain(group.tasks.iter().flat_map(|t| t.affinities.iter()))
            .map(|a| {
                (
                    Constraint { l_target: a.l_target.clone(), r_target: a.r_target.clone(), operand: a.operand },
                    a.weight,
                )
            })
            .collect();
        let affinity_abs_sum = affinities.iter().map(|(_, w)| i32::from(*w).abs()).sum();
        let affinity_escapes = affinities.iter().any(|(c, _)| feasible::constraint_escapes(c));
        let all_spreads: Vec<&Spread> = job.spreads.iter().chain(group.spreads.iter()).collect();
        let sum_weight: u32 = all_spreads.iter().map(|s| u32::from(s.weight)).sum();
        let spreads = all_spreads
            .into_iter()
            .map(|s| {
                let count = f64::from(group.count);
                let desired: Vec<(Arc<str>, f64)> =
                    s.targets.iter().map(|t| (t.value.clone(), f64::from(t.percent) / 100.0 * count)).collect();
                let percent_sum: u32 = s.targets.iter().map(|t| u32::from(t.percent)).sum();
                let remainder = if s.targets.is_empty() {
                    0.0
                } else {
                    f64::from(100u32.saturating_sub(percent_sum)) / 100.0 * count
                };
                let mut used: HashMap<String, u32> = HashMap::new();
                for alloc in self.existing.iter().filter(|a| !a.is_terminal() && a.group_name() == &*group.name) {
                    if let Some(node) = state.node(alloc.node_id)
                        && let Some(v) = feasible::resolve_target(&s.attribute, node)
                    {
                        *used.entry(v.into_owned()).or_default() += 1;
                    }
                }
                SpreadState { spread: s.clone(), sum_weight, desired, remainder, used }
            })
            .collect();
        GroupPlan {
            checker,
            cpu_mhz,
            cores,
            memory_mb,
            disk_mb: u64::from(group.ephemeral_disk_mb),
            count: group.count,
            affinities,
            affinity_abs_sum,
            affinity_cache: HashMap::new(),
            affinity_escapes,
            spreads,
            has_devices: group.tasks.iter().any(|t| !t.resources.devices.is_empty()),
            has_ports: !group.ports.is_empty(),
            topology: group.gang_topology.clone().filter(|_| group.gang || job.gang).map(|attr| (attr, None)),
        }
    }

    /// How many fitting options to compare for one placement: 2 for batch
    /// (power of two choices), ⌈log2 n⌉ (at least 2) for service, every
    /// node when affinities or spreads make the choice matter more.
    fn limit(&mut self, gi: u16) -> usize {
        let n = self.candidates.len();
        let job_type = self.job.job_type;
        let g = self.group(gi);
        if !g.affinities.is_empty() || !g.spreads.is_empty() || g.topology.is_some() {
            return n.max(1);
        }
        match job_type {
            JobType::Batch | JobType::SysBatch => 2,
            _ => (usize::BITS - n.max(1).leading_zeros()).max(2) as usize,
        }
    }

    /// Tell the stack an allocation stops in this plan, so its resources are free.
    pub(super) fn release(&mut self, alloc: &Allocation) {
        self.local.remove(alloc);
    }

    /// Choose a node for one allocation of group `gi`. On failure the
    /// returned metric says why.
    pub(super) fn select(&mut self, gi: u16, penalty_nodes: &[NodeId]) -> Result<Selection<'a>, Box<AllocMetric>> {
        let mut metric = WalkStats::default();
        let n = self.candidates.len();
        if n == 0 {
            return Err(Box::new(metric.into_metric(0)));
        }
        let limit = self.limit(gi);
        let start = self.candidates.cursor;
        let mut best: Option<Selection<'a>> = None;
        let mut found = 0usize;
        let mut skipped: Vec<Selection<'a>> = Vec::new();
        let mut exhausted: Vec<usize> = Vec::new();
        let mut next_cursor = start;
        for step in 0..n {
            let idx = (start + step) % n;
            next_cursor = (idx + 1) % n;
            let node = self.candidates.node(idx);
            metric.evaluated += 1;
            let exhausted_before = metric.exhausted;
            match self.try_node(gi, node, penalty_nodes, &mut metric) {
                Some(option) => {
                    if option.score < 0.0 && skipped.len() < NEGATIVE_SCORE_SKIPS_MAX {
                        skipped.push(option);
                        continue;
                    }
                    found += 1;
                    if best.as_ref().is_none_or(|b| option.score > b.score) {
                        best = Some(option);
                    }
                    if found >= limit {
                        break;
                    }
                }
                None => {
                    // Only nodes that were full (not filtered) can be freed,
                    // and only worth remembering when preemption may run.
                    let was_full = metric.exhausted > exhausted_before;
                    if self.config.preemption && was_full && exhausted.len() < PREEMPTION_CANDIDATES_MAX {
                        exhausted.push(idx);
                    }
                }
            }
        }
        self.candidates.cursor = next_cursor;
        for option in skipped {
            if best.as_ref().is_none_or(|b| option.score > b.score) {
                best = Some(option);
            }
        }
        if best.is_none() && self.config.preemption {
            best = self.select_with_preemption(gi, &exhausted);
        }
        best.ok_or_else(|| {
            let mut failed = metric.into_metric(n as u32);
            failed.nodes_available = self.candidates.per_datacenter();
            Box::new(failed)
        })
    }

    /// Check one node for group `gi` (system jobs place node by node).
    pub(super) fn select_on_node(&mut self, gi: u16, node: &'a Arc<Node>) -> Result<Selection<'a>, Box<AllocMetric>> {
        let mut metric = WalkStats { evaluated: 1, ..WalkStats::default() };
        if let Some(option) = self.try_node(gi, node, &[], &mut metric) {
            return Ok(option);
        }
        if self.config.preemption
            && metric.exhausted > 0
            && let Some(selection) = self.preempt_on(gi, node)
        {
            return Ok(selection);
        }
        Err(Box::new(metric.into_metric(1)))
    }

    /// Score candidate `i` for group `gi` (benchmarks).
    pub(super) fn score_candidate(&mut self, gi: u16, i: usize) -> Option<f64> {
        let node = self.candidates.node(i);
        let mut metric = WalkStats::default();
        self.try_node(gi, node, &[], &mut metric).map(|s| s.score)
    }

    fn ask_on(&mut self, gi: u16, node: &Node) -> ComparableResources {
        let g = self.group(gi);
        ComparableResources {
            cpu_mhz: g.cpu_mhz + u64::from(g.cores) * node.mhz_per_core(),
            memory_mb: g.memory_mb,
            disk_mb: g.disk_mb,
            cores: g.cores,
        }
    }

    fn try_node(
        &mut self,
        gi: u16,
        node: &'a Arc<Node>,
        penalty_nodes: &[NodeId],
        metric: &mut WalkStats,
    ) -> Option<Selection<'a>> {
        let state = self.state;
        let job = self.job;
        let group = &job.task_groups[usize::from(gi)];
        let ask = self.ask_on(gi, node);
        let g = self.groups[usize::from(gi)].as_mut().expect("ask_on planned the group");
        if let Err(why) = g.checker.check(node, &self.placements, &self.local) {
            metric.filtered += 1;
            match why {
                Filtered::Class(reason) => {
                    bump(&mut metric.class_filtered, node.node_class);
                    bump(&mut metric.constraint_filtered, reason);
                }
                Filtered::Node(reason) => bump(&mut metric.constraint_filtered, reason),
            }
            return None;
        }
        let view = self.local.view(state, node);
        let capacity = node.allocatable();
        let mut used = view.used();
        used.add(&ask);
        if let Some(dim) = used.exceeded_dimension(&capacity) {
            metric.exhausted += 1;
            bump(&mut metric.dimension_exhausted, exhausted_dimension(dim));
            bump(&mut metric.class_exhausted, node.node_class);
            return None;
        }
        let mut resources = AllocatedResources { comparable: ask, ports: Vec::new(), devices: Vec::new() };
        if g.has_ports {
            match assign_ports(node, &view, &group.ports, &mut self.rng) {
                Ok(ports) => resources.ports = ports,
                Err(why) => {
                    metric.exhausted += 1;
                    bump(&mut metric.dimension_exhausted, Arc::from(why));
                    return None;
                }
            }
        }
        let mut device_affinity = None;
        if g.has_devices {
            match assign_devices(node, &view, &group.tasks) {
                Ok((devices, affinity)) => {
                    resources.devices = devices;
                    device_affinity = affinity;
                }
                Err(why) => {
                    metric.exhausted += 1;
                    bump(&mut metric.dimension_exhausted, Arc::from(why));
                    return None;
                }
            }
        }

        let mut scores = [0f64; 8];
        let mut n_scores = 0;
        let mut push = |s: f64| {
            scores[n_scores] = s;
            n_scores += 1;
        };
        push(match self.config.algorithm {
            SchedulerAlgorithm::Binpack => rank::binpack_score(&used, &capacity),
            SchedulerAlgorithm::Spread => rank::spread_fit_score(&used, &capacity),
        });
        let collisions = self.existing_per_node_group.get(&(node.id, gi)).copied().unwrap_or(0)
            + view.delta.map_or(0, |d| d.placed_in_group(gi));
        if let Some(s) = rank::anti_affinity_score(collisions, g.count) {
            push(s);
        }
        if penalty_nodes.contains(&node.id) {
            push(-1.0);
        }
        if !g.affinities.is_empty() {
            let matched = match (g.affinity_escapes, g.affinity_cache.get(&node.computed_class)) {
                (false, Some(m)) => *m,
                _ => {
                    let m: i32 = g
                        .affinities
                        .iter()
                        .filter(|(c, _)| feasible::check_constraint(c, node, &mut self.regex))
                        .map(|(_, w)| i32::from(*w))
                        .sum();
                    if !g.affinity_escapes {
                        g.affinity_cache.insert(node.computed_class, m);
                    }
                    m
                }
            };
            if let Some(s) = rank::affinity_score(matched, g.affinity_abs_sum) {
                push(s);
            }
        }
        if !g.spreads.is_empty() {
            push(spread_score(&g.spreads, node));
        }
        if let Some(s) = device_affinity {
            push(s);
        }
        if let Some((attr, Some(wanted))) = &g.topology {
            let here = feasible::resolve_target(attr, node);
            push(if here.as_deref() == Some(wanted.as_str()) { 1.0 } else { 0.0 });
        }
        let score = rank::normalise(&scores[..n_scores]);
        Some(Selection { node, resources, preempted: Vec::new(), score })
    }

    fn select_with_preemption(&mut self, gi: u16, exhausted: &[usize]) -> Option<Selection<'a>> {
        let mut best: Option<(u64, Selection<'a>)> = None;
        for &idx in exhausted {
            let node = self.candidates.node(idx);
            let Some(selection) = self.preempt_on(gi, node) else { continue };
            let cost: u64 = selection.preempted.iter().map(|v| u64::from(v.job.priority) + 1).sum();
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, selection));
            }
        }
        best.map(|(_, s)| s)
    }

    /// Make room on `node` by evicting lower-priority allocations: first
    /// for cpu, memory and disk, then, if the group asks for devices, the
    /// holders of matching instances (lowest priority first, larger holders
    /// first so fewer are evicted) until the devices can be assigned.
    fn preempt_on(&mut self, gi: u16, node: &'a Arc<Node>) -> Option<Selection<'a>> {
        let ask = self.ask_on(gi, node);
        let priority = self.job.priority;
        let state = self.state;
        let group = &self.job.task_groups[usize::from(gi)];
        let committed = state.node_usage(node.id);
        let base = self.local.delta(node.id).cloned().unwrap_or_default();
        let view = NodeView { committed, delta: Some(&base) };
        let mut used = view.used();
        used.add(&ask);
        let mut victims = find_victims(state, node, &view, used, priority)?;
        let has_devices = group.tasks.iter().any(|t| !t.resources.devices.is_empty());
        let mut device_holders: Vec<&Arc<Allocation>> = if has_devices {
            state
                .allocs_by_node(node.id)
                .filter(|a| !a.is_terminal() && !base.removed_allocs.contains(&a.id) && !a.resources.devices.is_empty())
                .filter(|a| may_preempt(priority, a))
                .collect()
        } else {
            Vec::new()
        };
        device_holders.sort_by_key(|a| {
            let instances: usize = a.resources.devices.iter().map(|d| d.instance_ids.len()).sum();
            (a.job.priority, std::cmp::Reverse(instances), a.id)
        });
        let mut holders = device_holders.into_iter();
        loop {
            let mut delta = base.clone();
            for v in &victims {
                delta.release(v);
            }
            let view = NodeView { committed, delta: Some(&delta) };
            let ports = assign_ports(node, &view, &group.ports, &mut self.rng).ok()?;
            let assigned = if has_devices { assign_devices(node, &view, &group.tasks) } else { Ok((Vec::new(), None)) };
            match assigned {
                Ok((devices, _)) => {
                    let resources = AllocatedResources { comparable: ask, ports, devices };
                    return Some(Selection { node, resources, preempted: victims, score: 0.0 });
                }
                Err(_) => {
                    let next = holders.by_ref().find(|h| !victims.iter().any(|v| v.id == h.id))?;
                    victims.push(next.clone());
                }
            }
        }
    }

    /// Record a placement so later selections in this run see it.
    pub(super) fn commit(&mut self, gi: u16, selection: &Selection<'a>) {
        for victim in &selection.preempted {
            self.local.remove(victim);
        }
        self.local.add(selection.node.id, gi, &selection.resources);
        for g in self.groups.iter_mut().flatten() {
            g.checker.record_placement(selection.node, gi);
        }
        if let Some(g) = self.groups[usize::from(gi)].as_mut() {
            if let Some((attr, chosen @ None)) = &mut g.topology {
                *chosen = feasible::resolve_target(attr, selection.node).map(|v| v.into_owned());
            }
            for s in &mut g.spreads {
                if let Some(v) = feasible::resolve_target(&s.spread.attribute, selection.node) {
                    *s.used.entry(v.into_owned()).or_default() += 1;
                }
            }
        }
    }

    /// Class verdicts and escape flag across every group planned so far.
    pub(super) fn class_eligibility(&self) -> (Vec<(u64, bool)>, bool) {
        let mut verdicts: HashMap<u64, bool> = HashMap::new();
        let mut escaped = false;
        for g in self.groups.iter().flatten() {
            escaped |= g.checker.has_escaped();
            for (class, ok) in g.checker.class_verdicts() {
                *verdicts.entry(class).or_insert(false) |= ok;
            }
        }
        let mut v: Vec<(u64, bool)> = verdicts.into_iter().collect();
        v.sort_unstable();
        (v, escaped)
    }
}

/// Buffers a stack reuses from one run to the next on the same thread, so a
/// worker does not allocate (and fault in) a fleet-sized table per eval.
#[derive(Debug, Default)]
struct Scratch {
    order: Vec<u32>,
    deltas: HashMap<NodeId, super::context::NodeDelta, IdBuildHasher>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        let order = self.candidates.take_buffer();
        let deltas = std::mem::take(&mut self.local).into_buffer();
        SCRATCH.with(|s| *s.borrow_mut() = Scratch { order, deltas });
    }
}

/// Shared names of the fixed dimensions, so counting an exhausted node
/// allocates nothing.
fn exhausted_dimension(dim: &'static str) -> Arc<str> {
    static NAMES: std::sync::OnceLock<[Arc<str>; 4]> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| ["cpu".into(), "memory".into(), "disk".into(), "cores".into()]);
    names.iter().find(|n| &***n == dim).cloned().unwrap_or_else(|| dim.into())
}

/// Spread score of a node: weighted boosts of each spread stanza.
fn spread_score(spreads: &[SpreadState], node: &Node) -> f64 {
    let mut total = 0.0;
    for s in spreads {
        let weight = if s.sum_weight == 0 { 0.0 } else { f64::from(s.spread.weight) / f64::from(s.sum_weight) };
        let Some(value) = feasible::resolve_target(&s.spread.attribute, node) else {
            total -= weight;
            continue;
        };
        let used = s.used.get(&*value).copied().unwrap_or(0);
        let boost = if s.spread.targets.is_empty() {
            let min = s.used.values().copied().min().unwrap_or(0);
            let max = s.used.values().copied().max().unwrap_or(0);
            let min = if s.used.contains_key(&*value) { min } else { 0 };
            rank::even_spread_boost(used, min, max)
        } else {
            let desired = s.desired.iter().find(|(v, _)| **v == *value).map_or(s.remainder, |(_, d)| *d);
            rank::spread_target_boost(used, desired)
        };
        total += boost * weight;
    }
    total
}
