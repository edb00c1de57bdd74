use std::sync::{Arc, Mutex, OnceLock};

use imbl::shared_ptr::DefaultSharedPtr;
use imbl::{GenericHashMap, OrdMap, Vector};

use super::usage::NodeUsage;
use crate::ids::{AllocId, DeploymentId, EvalId, IdBuildHasher, JobKey, NodeId};
use crate::intern::Sym;
use crate::model::{
    Allocation, Deployment, Evaluation, Job, JobScalingEvents, JobType, Node, PeriodicLaunch, ScalingEvent,
};

// Every hashed table uses the deterministic id hasher, so iteration order is
// the same on every server and every run.
type HashMap<K, V> = GenericHashMap<K, V, IdBuildHasher, DefaultSharedPtr>;
type IdMap<K, V> = HashMap<K, V>;
/// A secondary index entry: the ids under one key, shared copy-on-write.
/// Flat vectors beat a persistent set here: one batch copies a key's list
/// once and then appends in place, and lookups of a node's few allocations
/// are a linear scan over contiguous memory.
type IdList<K> = Arc<Vec<K>>;

/// Job versions kept per job (Nomad's `JobTrackedVersions`): enough to revert
/// a few deploys back without letting history grow without bound.
pub const JOB_VERSIONS_KEPT: usize = 6;

/// The tables whose last-modified index blocking queries watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Jobs,
    Nodes,
    Allocs,
    Evals,
    Deployments,
    SchedulerConfig,
}

const TABLES: usize = 6;

/// How many tables carry a last-write index ([`State::table_indexes`]).
pub const TABLE_COUNT: usize = TABLES;

/// Bin-packing or spreading, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum SchedulerAlgorithm {
    #[default]
    Binpack,
    Spread,
}

/// `/v1/operator/scheduler/configuration`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SchedulerConfig {
    pub algorithm: SchedulerAlgorithm,
    pub preemption_system: bool,
    pub preemption_sysbatch: bool,
    pub preemption_batch: bool,
    pub preemption_service: bool,
    pub memory_oversubscription: bool,
    pub modify_index: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        // Nomad's defaults: preemption on for system jobs only.
        SchedulerConfig {
            algorithm: SchedulerAlgorithm::Binpack,
            preemption_system: true,
            preemption_sysbatch: false,
            preemption_batch: false,
            preemption_service: false,
            memory_oversubscription: false,
            modify_index: 0,
        }
    }
}

impl SchedulerConfig {
    pub fn preemption_enabled(&self, job_type: JobType) -> bool {
        match job_type {
            JobType::System => self.preemption_system,
            JobType::SysBatch => self.preemption_sysbatch,
            JobType::Batch => self.preemption_batch,
            JobType::Service => self.preemption_service,
        }
    }
}

/// All tables at one raft index. Cloning is O(1).
#[derive(Debug, Clone, Default)]
pub struct State {
    index: u64,
    table_index: [u64; TABLES],
    jobs: OrdMap<JobKey, Arc<Job>>,
    job_versions: HashMap<JobKey, Vector<Arc<Job>>>,
    nodes: IdMap<NodeId, Arc<Node>>,
    nodes_by_pool: HashMap<Sym, IdList<NodeId>>,
    /// Per node: what its live allocations hold and the ids of all its
    /// allocations, in one record so a plan touches one map entry per node.
    node_slots: IdMap<NodeId, Arc<NodeSlot>>,
    /// Allocations, partitioned by job: a plan writes one job's table, so
    /// copy-on-write copies a small map instead of paths through one map of
    /// every allocation. Ids carry their job's tag to find the table.
    allocs: HashMap<JobKey, IdMap<AllocId, Arc<Allocation>>>,
    jobs_by_tag: HashMap<u64, IdList<JobKey>>,
    alloc_count: usize,
    evals: IdMap<EvalId, Arc<Evaluation>>,
    evals_by_job: HashMap<JobKey, IdList<EvalId>>,
    deployments: IdMap<DeploymentId, Arc<Deployment>>,
    deployments_by_job: HashMap<JobKey, IdList<DeploymentId>>,
    /// Per deployment: its allocations' health, kept in step with every
    /// allocation write so the FSM decides a deployment's end in O(1)
    /// per status batch instead of scanning the job's allocations.
    deployment_health: IdMap<DeploymentId, DeploymentHealth>,
    /// The same per (deployment, task group name).
    group_health: HashMap<(DeploymentId, Arc<str>), DeploymentHealth>,
    scheduler_config: Arc<SchedulerConfig>,
    /// Each periodic job's last launch (see [`PeriodicLaunch`]).
    periodic_launches: OrdMap<JobKey, PeriodicLaunch>,
    /// Each job's recent scaling events (see [`JobScalingEvents`]); gone
    /// with the job.
    scaling_events: OrdMap<JobKey, Arc<JobScalingEvents>>,
    /// Nodes ready for placement, in id order, computed on first use after
    /// any node write and shared by every snapshot until the next one.
    ready_nodes: Arc<OnceLock<Arc<Vec<Arc<Node>>>>>,
    /// All nodes in id order, cached the same way (a hash map is faster
    /// for lookups; callers that iterate want a stable order).
    sorted_nodes: Arc<OnceLock<Arc<Vec<Arc<Node>>>>>,
    /// Ready nodes per placement scope (pool and datacenter patterns),
    /// memoized per node-table version like `ready_nodes`.
    scoped_nodes: Arc<Mutex<std::collections::HashMap<ScopeKey, Arc<ScopedNodes>>>>,
    /// Nodes whose allocations the batch being written touched (repeats
    /// possible): the store moves them into its [`super::AllocNodeFeed`]
    /// when it publishes, so this is empty in every published snapshot.
    alloc_nodes_touched: TouchedNodes,
}

/// The nodes one write batch touched. It belongs to the batch, not to the
/// state: a clone starts empty, which keeps cloning a state O(1) for a
/// writer that never publishes (the plan applier's view of results still
/// committing, which was cloned for every plan and grew by a node per
/// allocation placed).
#[derive(Debug, Default)]
struct TouchedNodes(Vec<NodeId>);

impl Clone for TouchedNodes {
    fn clone(&self) -> TouchedNodes {
        TouchedNodes::default()
    }
}

/// How a deployment's allocations are doing, from their clients' health
/// decisions: derived from the allocations (never stored in a snapshot; a
/// restore rebuilds it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeploymentHealth {
    /// Allocations placed in the deployment, whatever their status since.
    pub placed: u64,
    /// Allocations their client found healthy.
    pub healthy: u64,
    /// Allocations their client found unhealthy.
    pub unhealthy: u64,
}

impl DeploymentHealth {
    fn of(alloc: &Allocation) -> DeploymentHealth {
        let healthy = alloc.deployment_healthy();
        DeploymentHealth {
            placed: 1,
            healthy: u64::from(healthy == Some(true)),
            unhealthy: u64::from(healthy == Some(false)),
        }
    }

    fn add(&mut self, other: DeploymentHealth) {
        self.placed += other.placed;
        self.healthy += other.healthy;
        self.unhealthy += other.unhealthy;
    }

    fn sub(&mut self, other: DeploymentHealth) {
        // The tally counted `other` when it was written; saturating so a
        // broken invariant cannot take the FSM down on every server.
        debug_assert!(
            self.placed >= other.placed && self.healthy >= other.healthy && self.unhealthy >= other.unhealthy
        );
        self.placed = self.placed.saturating_sub(other.placed);
        self.healthy = self.healthy.saturating_sub(other.healthy);
        self.unhealthy = self.unhealthy.saturating_sub(other.unhealthy);
    }
}

/// A placement scope: node pool and datacenter patterns.
pub type ScopeKey = (Arc<str>, Vec<Arc<str>>);

/// Scopes memoized at once. Jobs share a handful of (pool, datacenters)
/// pairs; past this many the memo starts over rather than grow unbounded.
const SCOPES_MEMOIZED_MAX: usize = 1024;

/// The ready nodes of one scope, as indexes into [`State::ready_nodes`].
#[derive(Debug, Default)]
pub struct ScopedNodes {
    pub indexes: Vec<u32>,
    /// Nodes per datacenter, for failure metrics.
    pub per_datacenter: Vec<(Sym, u32)>,
}

/// Append to a shared id list: in place when this state owns it, else one
/// copy sized for the result (not `make_mut`'s exact-size clone followed by
/// a reallocation).
fn append_ids<K: Clone>(list: &mut IdList<K>, extra: impl ExactSizeIterator<Item = K>) {
    match Arc::get_mut(list) {
        Some(owned) => owned.extend(extra),
        None => {
            let mut copy = Vec::with_capacity(list.len() + extra.len());
            copy.extend_from_slice(list);
            copy.extend(extra);
            *list = Arc::new(copy);
        }
    }
}

/// One node's allocations and their usage.
#[derive(Debug, Clone, Default)]
struct NodeSlot {
    usage: NodeUsage,
    /// Each allocation's id and `alloc_modify_index`, kept in step with the
    /// allocation by every write, so a client's pull
    /// ([`State::node_allocs_since`]) tells what changed without looking
    /// up the allocations that did not.
    allocs: super::chunks::Chunked<NodeAllocEntry>,
    /// The index of the last change the servers made to the node's
    /// allocations (placed, stopped, updated, removed; not the client's
    /// own status reports): what its client's blocking query watches. At
    /// least the highest `alloc_modify_index` among them.
    allocs_index: u64,
    /// The index of the last removal from `allocs` (garbage collection), or
    /// of the snapshot this state was restored from: a client holding the
    /// node's allocations as of a later index has nothing to drop, so its
    /// pull need not list the ones it keeps.
    allocs_removed_index: u64,
}

/// One allocation in its node's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeAllocEntry {
    id: AllocId,
    /// The allocation's `alloc_modify_index` (the servers' last change).
    alloc_modify_index: u64,
}

impl NodeAllocEntry {
    fn of(alloc: &Allocation) -> NodeAllocEntry {
        NodeAllocEntry { id: alloc.id, alloc_modify_index: alloc.alloc_modify_index }
    }
}

/// One of a node's allocations as its client's pull sees it
/// ([`State::node_allocs_since`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NodeAllocChange<'a> {
    /// The servers changed it after the caller's index: sent in full.
    Changed(&'a Arc<Allocation>),
    /// Unchanged since: the caller holds it, only its id is sent.
    Unchanged(AllocId),
}

fn table_slot(t: Table) -> usize {
    match t {
        Table::Jobs => 0,
        Table::Nodes => 1,
        Table::Allocs => 2,
        Table::Evals => 3,
        Table::Deployments => 4,
        Table::SchedulerConfig => 5,
    }
}

/// Reads.
impl State {
    /// The raft index this state reflects.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The index of the last write to `table` (for blocking queries).
    pub fn table_index(&self, table: Table) -> u64 {
        self.table_index[table_slot(table)]
    }

    pub fn job(&self, key: &JobKey) -> Option<&Arc<Job>> {
        self.jobs.get(key)
    }

    /// Jobs in (namespace, id) order.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<Job>> + '_ {
        self.jobs.values()
    }

    /// Jobs of a namespace whose id starts with `prefix`, in id order (a
    /// range of the ordered table, not a scan).
    pub fn jobs_with_id_prefix<'a>(
        &'a self,
        namespace: &str,
        prefix: &str,
    ) -> impl Iterator<Item = &'a Arc<Job>> + use<'a> {
        let start = JobKey::new(namespace, prefix);
        let within = start.clone();
        self.jobs
            .range(start..)
            .take_while(move |(k, _)| k.namespace == within.namespace && k.id.starts_with(&*within.id))
            .map(|(_, job)| job)
    }

    /// A periodic job's last launch, or when it was registered.
    pub fn periodic_launch(&self, key: &JobKey) -> Option<&PeriodicLaunch> {
        self.periodic_launches.get(key)
    }

    /// Every periodic launch record, in job key order.
    pub fn periodic_launches(&self) -> impl Iterator<Item = (&JobKey, &PeriodicLaunch)> + '_ {
        self.periodic_launches.iter()
    }

    pub fn periodic_launch_count(&self) -> usize {
        self.periodic_launches.len()
    }

    /// A job's recent scaling events, per task group.
    pub fn scaling_events(&self, key: &JobKey) -> Option<&Arc<JobScalingEvents>> {
        self.scaling_events.get(key)
    }

    /// Every job's scaling events, in job key order.
    pub fn all_scaling_events(&self) -> impl Iterator<Item = (&JobKey, &Arc<JobScalingEvents>)> + '_ {
        self.scaling_events.iter()
    }

    /// Jobs with scaling events.
    pub fn scaling_events_count(&self) -> usize {
        self.scaling_events.len()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Kept versions of a job, newest first.
    pub fn job_versions(&self, key: &JobKey) -> Vec<Arc<Job>> {
        let mut versions: Vec<Arc<Job>> =
            self.job_versions.get(key).map(|v| v.iter().cloned().collect()).unwrap_or_default();
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        versions
    }

    pub fn job_version(&self, key: &JobKey, version: u64) -> Option<Arc<Job>> {
        self.job_versions.get(key)?.iter().find(|j| j.version == version).cloned()
    }

    pub fn node(&self, id: NodeId) -> Option<&Arc<Node>> {
        self.nodes.get(&id)
    }

    /// Nodes in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> + '_ {
        self.sorted_nodes().iter()
    }

    fn sorted_nodes(&self) -> &Arc<Vec<Arc<Node>>> {
        self.sorted_nodes.get_or_init(|| {
            let mut all: Vec<Arc<Node>> = self.nodes.values().cloned().collect();
            all.sort_unstable_by_key(|n| n.id);
            Arc::new(all)
        })
    }

    /// Nodes that accept new allocations (ready, eligible, not draining),
    /// in id order. Cached per node-table version.
    pub fn ready_nodes(&self) -> &Arc<Vec<Arc<Node>>> {
        self.ready_nodes
            .get_or_init(|| Arc::new(self.sorted_nodes().iter().filter(|n| n.ready_for_placement()).cloned().collect()))
    }

    /// Ids of the nodes in a node pool, in registration order.
    pub fn nodes_in_pool(&self, pool: Sym) -> &[NodeId] {
        self.nodes_by_pool.get(&pool).map_or(&[], |ids| ids.as_slice())
    }

    /// The ready nodes of a placement scope, computed by `compute` on first
    /// use after a node write and shared by every later caller.
    pub fn scoped_ready_nodes(
        &self,
        key: ScopeKey,
        compute: impl FnOnce(&[Arc<Node>]) -> ScopedNodes,
    ) -> Arc<ScopedNodes> {
        let mut memo = self.scoped_nodes.lock().expect("scope memo poisoned");
        if let Some(hit) = memo.get(&key) {
            return hit.clone();
        }
        let scoped = Arc::new(compute(self.ready_nodes()));
        if memo.len() >= SCOPES_MEMOIZED_MAX {
            memo.clear();
        }
        memo.insert(key, scoped.clone());
        scoped
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// What the non-terminal allocations on the node hold.
    pub fn node_usage(&self, id: NodeId) -> Option<&NodeUsage> {
        self.node_slots.get(&id).map(|s| &s.usage)
    }

    pub fn alloc(&self, id: AllocId) -> Option<&Arc<Allocation>> {
        let jobs = self.jobs_by_tag.get(&id.job_tag())?;
        jobs.iter().find_map(|key| self.allocs.get(key)?.get(&id))
    }

    pub fn allocs(&self) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.allocs.values().flat_map(|table| table.values())
    }

    pub fn alloc_count(&self) -> usize {
        self.alloc_count
    }

    /// The index of the servers' last change to the node's allocations
    /// (see `NodeSlot::allocs_index`); `None` for a node never seen.
    pub fn node_allocs_index(&self, id: NodeId) -> Option<u64> {
        self.node_slots.get(&id).map(|s| s.allocs_index)
    }

    /// The index of the last removal from the node's allocations (see
    /// `NodeSlot::allocs_removed_index`); `None` for a node never seen.
    pub fn node_allocs_removed_index(&self, id: NodeId) -> Option<u64> {
        self.node_slots.get(&id).map(|s| s.allocs_removed_index)
    }

    /// Allocations on a node, in no particular (but deterministic) order.
    pub fn allocs_by_node(&self, id: NodeId) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.node_slots.get(&id).into_iter().flat_map(|s| s.allocs.iter()).filter_map(|e| self.alloc(e.id))
    }

    /// A node's allocations in [`Self::allocs_by_node`]'s order, each
    /// [`NodeAllocChange::Changed`] if the servers changed it after
    /// `known_index` (its `alloc_modify_index`) or else
    /// [`NodeAllocChange::Unchanged`]. One pass over the node's list,
    /// which carries each allocation's `alloc_modify_index`: only the
    /// changed ones are looked up, so a client's pull costs what changed,
    /// not what the node holds.
    pub fn node_allocs_since(&self, id: NodeId, known_index: u64) -> impl Iterator<Item = NodeAllocChange<'_>> + '_ {
        self.node_slots.get(&id).into_iter().flat_map(|s| s.allocs.iter()).filter_map(move |e| {
            if e.alloc_modify_index <= known_index {
                return Some(NodeAllocChange::Unchanged(e.id));
            }
            let alloc = self.alloc(e.id)?;
            debug_assert_eq!(alloc.alloc_modify_index, e.alloc_modify_index, "node list out of step with {}", e.id);
            Some(NodeAllocChange::Changed(alloc))
        })
    }

    /// Allocations of a job (every version), in no particular order.
    pub fn allocs_by_job(&self, key: &JobKey) -> impl Iterator<Item = &Arc<Allocation>> + '_ {
        self.allocs.get(key).into_iter().flat_map(|table| table.values())
    }

    pub fn eval(&self, id: EvalId) -> Option<&Arc<Evaluation>> {
        self.evals.get(&id)
    }

    pub fn evals(&self) -> impl Iterator<Item = &Arc<Evaluation>> + '_ {
        self.evals.values()
    }

    pub fn evals_by_job(&self, key: &JobKey) -> impl Iterator<Item = &Arc<Evaluation>> + '_ {
        self.evals_by_job.get(key).into_iter().flat_map(|ids| ids.iter()).filter_map(|e| self.evals.get(e))
    }

    pub fn deployment(&self, id: DeploymentId) -> Option<&Arc<Deployment>> {
        self.deployments.get(&id)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> + '_ {
        self.deployments.values()
    }

    /// The deployment of the job's newest version, if any.
    pub fn latest_deployment(&self, key: &JobKey) -> Option<&Arc<Deployment>> {
        self.deployments_by_job(key).max_by_key(|d| (d.job_version, d.create_index))
    }

    /// The job's deployments, oldest first.
    pub fn deployments_by_job(&self, key: &JobKey) -> impl Iterator<Item = &Arc<Deployment>> + '_ {
        self.deployments_by_job
            .get(key)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.deployments.get(id))
    }

    /// The health of the deployment's allocations (zero for one without).
    pub fn deployment_health(&self, id: DeploymentId) -> DeploymentHealth {
        self.deployment_health.get(&id).copied().unwrap_or_default()
    }

    /// The health of the deployment's allocations of one task group.
    pub fn deployment_group_health(&self, id: DeploymentId, group: &str) -> DeploymentHealth {
        self.group_health.get(&(id, Arc::from(group))).copied().unwrap_or_default()
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }
}

/// Writes, used only by the FSM. Each takes the raft index of the batch.
impl State {
    /// The nodes whose allocations were written since the last take.
    pub(super) fn take_alloc_nodes_touched(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.alloc_nodes_touched.0)
    }

    /// A copy to apply one command to, all or nothing (the FSM's
    /// `apply_to`): the batch's touched nodes move into it, as a clone
    /// starts without them. On failure [`State::abandon_fork`] takes back
    /// those the batch had before.
    pub(crate) fn fork(&mut self) -> State {
        let mut fork = self.clone();
        fork.alloc_nodes_touched = std::mem::take(&mut self.alloc_nodes_touched);
        fork
    }

    /// Undo [`State::fork`] for a command that failed: this state keeps
    /// its tables and gets back the first `touched_before` touched nodes.
    pub(crate) fn abandon_fork(&mut self, fork: State, touched_before: usize) {
        let mut touched = fork.alloc_nodes_touched;
        touched.0.truncate(touched_before);
        self.alloc_nodes_touched = touched;
    }

    /// How many touched nodes the batch has recorded (repeats included).
    pub(crate) fn touched_count(&self) -> usize {
        self.alloc_nodes_touched.0.len()
    }

    pub(crate) fn set_index(&mut self, index: u64) {
        self.index = index;
    }

    fn touch(&mut self, table: Table, index: u64) {
        self.table_index[table_slot(table)] = index;
    }

    /// Store a job as given: the FSM has set its version and indexes.
    pub(crate) fn put_job(&mut self, index: u64, job: Arc<Job>) {
        let key = job.key();
        let versions = self.job_versions.entry(key.clone()).or_default();
        versions.retain(|v| v.version != job.version);
        versions.push_back(job.clone());
        while versions.len() > JOB_VERSIONS_KEPT {
            versions.pop_front();
        }
        self.jobs.insert(key, job);
        self.touch(Table::Jobs, index);
    }

    /// Update the stored record of the current job version without adding a
    /// version (status, stability).
    pub(crate) fn replace_job_record(&mut self, index: u64, job: Arc<Job>) {
        let key = job.key();
        if let Some(versions) = self.job_versions.get_mut(&key) {
            for v in versions.iter_mut() {
                if v.version == job.version {
                    *v = job.clone();
                }
            }
        }
        self.jobs.insert(key, job);
        self.touch(Table::Jobs, index);
    }

    /// Set the stability of one kept version (and of the current record
    /// when it is that version); false when no such version is kept.
    pub(crate) fn set_job_version_stable(&mut self, index: u64, key: &JobKey, version: u64, stable: bool) -> bool {
        let Some(versions) = self.job_versions.get_mut(key) else { return false };
        let mut found = false;
        for v in versions.iter_mut() {
            if v.version == version {
                let mut job = (**v).clone();
                job.stable = stable;
                *v = Arc::new(job);
                found = true;
            }
        }
        if !found {
            return false;
        }
        if let Some(current) = self.jobs.get(key).filter(|j| j.version == version).cloned() {
            let mut job = (*current).clone();
            job.stable = stable;
            self.jobs.insert(key.clone(), Arc::new(job));
        }
        self.touch(Table::Jobs, index);
        true
    }

    pub(crate) fn remove_job(&mut self, index: u64, key: &JobKey) -> Option<Arc<Job>> {
        self.job_versions.remove(key);
        self.scaling_events.remove(key);
        let removed = self.jobs.remove(key);
        self.touch(Table::Jobs, index);
        removed
    }

    /// Record a periodic job's launch. The record never goes back in
    /// time: a launch at or before the recorded one is already covered.
    pub(crate) fn put_periodic_launch(&mut self, index: u64, key: &JobKey, launch_ns: i64) {
        let record = match self.periodic_launches.get(key) {
            Some(old) => PeriodicLaunch {
                launch_ns: old.launch_ns.max(launch_ns),
                create_index: old.create_index,
                modify_index: index,
            },
            None => PeriodicLaunch { launch_ns, create_index: index, modify_index: index },
        };
        self.periodic_launches.insert(key.clone(), record);
        self.touch(Table::Jobs, index);
    }

    /// Record a scaling event of the job's group at `index`, as its newest.
    pub(crate) fn put_scaling_event(&mut self, index: u64, key: &JobKey, group: &str, mut event: ScalingEvent) {
        event.create_index = index;
        let mut events = self.scaling_events.get(key).map(|e| (**e).clone()).unwrap_or_default();
        events.modify_index = index;
        events.push(group, event);
        self.scaling_events.insert(key.clone(), Arc::new(events));
        self.touch(Table::Jobs, index);
    }

    pub(crate) fn remove_periodic_launch(&mut self, index: u64, key: &JobKey) {
        if self.periodic_launches.remove(key).is_some() {
            self.touch(Table::Jobs, index);
        }
    }

    pub(crate) fn put_node(&mut self, index: u64, node: Arc<Node>) {
        self.node_slots.entry(node.id).or_default();
        let moved_from = self.nodes.get(&node.id).map(|old| old.node_pool).filter(|p| *p != node.node_pool);
        if let Some(old_pool) = moved_from {
            self.unindex_pool(old_pool, node.id);
        }
        if moved_from.is_some() || !self.nodes.contains_key(&node.id) {
            append_ids(self.nodes_by_pool.entry(node.node_pool).or_default(), std::iter::once(node.id));
        }
        self.nodes.insert(node.id, node);
        self.ready_nodes = Default::default();
        self.sorted_nodes = Default::default();
        self.scoped_nodes = Default::default();
        self.touch(Table::Nodes, index);
    }

    pub(crate) fn remove_node(&mut self, index: u64, id: NodeId) -> Option<Arc<Node>> {
        let removed = self.nodes.remove(&id);
        if let Some(node) = &removed {
            self.unindex_pool(node.node_pool, id);
        }
        self.ready_nodes = Default::default();
        self.sorted_nodes = Default::default();
        self.scoped_nodes = Default::default();
        self.touch(Table::Nodes, index);
        removed
    }

    pub(crate) fn put_eval(&mut self, index: u64, eval: Arc<Evaluation>) {
        if self.evals.insert(eval.id, eval.clone()).is_none() {
            Arc::make_mut(self.evals_by_job.entry(eval.job_key()).or_default()).push(eval.id);
        }
        self.touch(Table::Evals, index);
    }

    pub(crate) fn remove_eval(&mut self, index: u64, id: EvalId) {
        if let Some(eval) = self.evals.remove(&id) {
            let key = eval.job_key();
            if let Some(list) = self.evals_by_job.get_mut(&key) {
                Arc::make_mut(list).retain(|e| *e != id);
                if list.is_empty() {
                    self.evals_by_job.remove(&key);
                }
            }
        }
        self.touch(Table::Evals, index);
    }

    /// Insert or replace an allocation, keeping the indexes and the node's
    /// usage in step: usage counts an allocation while it is non-terminal.
    pub(crate) fn put_alloc(&mut self, index: u64, alloc: Arc<Allocation>) {
        let old = self.job_table(&alloc.job_key()).insert(alloc.id, alloc.clone());
        self.touch(Table::Allocs, index);
        self.adjust_usage(old.as_deref(), Some(&alloc));
        self.adjust_deployment_health(old.as_deref(), Some(&alloc));
        // Only the servers' changes move the node's index: its client
        // needs no echo of its own status reports (Nomad's client watches
        // `AllocModifyIndex` for the same reason), which halves the
        // wake-ups of a busy node's query.
        let servers_changed = old.as_ref().is_none_or(|o| o.alloc_modify_index != alloc.alloc_modify_index);
        // A client's status report leaves the node's slot as it was: copy
        // it (and its path in the table) only for a change it records.
        // Client reports are most of a busy fleet's allocation writes.
        if old.is_some() && !servers_changed {
            return;
        }
        let slot = Arc::make_mut(self.node_slots.entry(alloc.node_id).or_default());
        if old.is_none() {
            self.alloc_count += 1;
            slot.allocs.push(NodeAllocEntry::of(&alloc));
        }
        if servers_changed {
            if old.is_some() {
                // A scan of the node's list: only the servers' changes to
                // an existing allocation (stop, update, transition) come here.
                let entry = slot.allocs.find_mut(|e| e.id == alloc.id);
                entry.expect("an allocation is listed on its node").alloc_modify_index = alloc.alloc_modify_index;
            }
            slot.allocs_index = slot.allocs_index.max(index).max(alloc.alloc_modify_index);
            self.alloc_nodes_touched.0.push(alloc.node_id);
        }
    }

    /// Insert allocations that do not exist yet, in bulk: the secondary
    /// indexes and usage are touched once per run of allocations sharing a
    /// node (or a job) instead of once per allocation. Plans list their
    /// allocations grouped by node, so runs are long.
    pub(crate) fn put_new_allocs(&mut self, index: u64, allocs: &[Arc<Allocation>]) {
        for run in allocs.chunk_by(|a, b| a.node_id == b.node_id) {
            let slot = Arc::make_mut(self.node_slots.entry(run[0].node_id).or_default());
            slot.allocs.extend(run.iter().map(|a| NodeAllocEntry::of(a)));
            for alloc in run.iter().filter(|a| !a.is_terminal()) {
                slot.usage.add(alloc);
            }
            let newest = run.iter().map(|a| a.alloc_modify_index).max().unwrap_or(0);
            slot.allocs_index = slot.allocs_index.max(index).max(newest);
            self.alloc_nodes_touched.0.push(run[0].node_id);
        }
        for run in allocs.chunk_by(|a, b| Arc::ptr_eq(&a.job, &b.job)) {
            let table = self.job_table(&run[0].job_key());
            for alloc in run {
                let old = table.insert(alloc.id, alloc.clone());
                assert!(old.is_none(), "put_new_allocs given an existing allocation {}", alloc.id);
            }
        }
        for alloc in allocs {
            self.adjust_deployment_health(None, Some(alloc));
        }
        self.alloc_count += allocs.len();
        self.touch(Table::Allocs, index);
    }

    pub(crate) fn remove_alloc(&mut self, index: u64, id: AllocId) {
        if let Some(old) = self.alloc(id).cloned() {
            let key = old.job_key();
            if let Some(table) = self.allocs.get_mut(&key) {
                table.remove(&id);
                if table.is_empty() {
                    self.allocs.remove(&key);
                    if let Some(keys) = self.jobs_by_tag.get_mut(&key.tag()) {
                        Arc::make_mut(keys).retain(|k| *k != key);
                        if keys.is_empty() {
                            self.jobs_by_tag.remove(&key.tag());
                        }
                    }
                }
            }
            self.alloc_count -= 1;
            self.adjust_usage(Some(&old), None);
            self.adjust_deployment_health(Some(&old), None);
            if let Some(slot) = self.node_slots.get_mut(&old.node_id) {
                let slot = Arc::make_mut(slot);
                slot.allocs.remove_where(|e| e.id == id);
                slot.allocs_index = slot.allocs_index.max(index);
                slot.allocs_removed_index = slot.allocs_removed_index.max(index);
            }
            self.alloc_nodes_touched.0.push(old.node_id);
        }
        self.touch(Table::Allocs, index);
    }

    fn unindex_pool(&mut self, pool: Sym, id: NodeId) {
        if let Some(ids) = self.nodes_by_pool.get_mut(&pool) {
            Arc::make_mut(ids).retain(|n| *n != id);
            if ids.is_empty() {
                self.nodes_by_pool.remove(&pool);
            }
        }
    }

    /// The job's allocation table, created (and its tag indexed) on first use.
    fn job_table(&mut self, key: &JobKey) -> &mut IdMap<AllocId, Arc<Allocation>> {
        if !self.allocs.contains_key(key) {
            append_ids(self.jobs_by_tag.entry(key.tag()).or_default(), std::iter::once(key.clone()));
        }
        self.allocs.entry(key.clone()).or_default()
    }

    fn adjust_usage(&mut self, old: Option<&Allocation>, new: Option<&Allocation>) {
        let (old, new) = (old.filter(|a| !a.is_terminal()), new.filter(|a| !a.is_terminal()));
        match (old, new) {
            (None, None) => return,
            // Still live where it was, with what it had (a client's status
            // report): the node's usage stands, and its slot is not copied.
            // (`Arc`'s `==` compares pointers first.)
            (Some(o), Some(n)) if o.node_id == n.node_id && o.resources == n.resources => return,
            _ => {}
        }
        let node_id = old.or(new).map(|a| a.node_id).expect("one side is set");
        let usage = &mut Arc::make_mut(self.node_slots.entry(node_id).or_default()).usage;
        if let Some(old) = old {
            usage.remove(old);
        }
        if let Some(new) = new {
            usage.add(new);
        }
    }

    /// Move the allocation's health from its old to its new deployment
    /// tally (usually the same one).
    fn adjust_deployment_health(&mut self, old: Option<&Allocation>, new: Option<&Allocation>) {
        if let (Some(old), Some(new)) = (old, new)
            && old.deployment_id == new.deployment_id
            && old.group().name == new.group().name
            && DeploymentHealth::of(old) == DeploymentHealth::of(new)
        {
            // The usual write (a status report): both tallies stay as they
            // are, and their maps stay shared with the previous version.
            return;
        }
        if let Some(old) = old
            && let Some(id) = old.deployment_id
        {
            let gone = DeploymentHealth::of(old);
            if let Some(health) = self.deployment_health.get_mut(&id) {
                health.sub(gone);
            }
            if let Some(health) = self.group_health.get_mut(&(id, old.group().name.clone())) {
                health.sub(gone);
            }
        }
        if let Some(new) = new
            && let Some(id) = new.deployment_id
        {
            let add = DeploymentHealth::of(new);
            self.deployment_health.entry(id).or_default().add(add);
            self.group_health.entry((id, new.group().name.clone())).or_default().add(add);
        }
    }

    pub(crate) fn put_deployment(&mut self, index: u64, deployment: Arc<Deployment>) {
        if !self.deployments.contains_key(&deployment.id) {
            append_ids(
                self.deployments_by_job.entry(deployment.job.clone()).or_default(),
                std::iter::once(deployment.id),
            );
        }
        self.deployments.insert(deployment.id, deployment);
        self.touch(Table::Deployments, index);
    }

    pub(crate) fn set_scheduler_config(&mut self, index: u64, mut config: SchedulerConfig) {
        config.modify_index = index;
        self.scheduler_config = Arc::new(config);
        self.touch(Table::SchedulerConfig, index);
    }
}

/// Raw access for full-state snapshots (`restore.rs`): the secondary index
/// lists in their stored order, so a restore that inserts in that order
/// rebuilds the very same indexes.
impl State {
    pub(super) fn job_entries(&self) -> impl Iterator<Item = (&JobKey, &Arc<Job>)> + '_ {
        self.jobs.iter()
    }

    pub(super) fn job_version_list(&self, key: &JobKey) -> Option<&Vector<Arc<Job>>> {
        self.job_versions.get(key)
    }

    pub(super) fn job_version_lists(&self) -> impl Iterator<Item = (&JobKey, &Vector<Arc<Job>>)> + '_ {
        self.job_versions.iter()
    }

    pub(super) fn pool_lists(&self) -> impl Iterator<Item = &[NodeId]> + '_ {
        self.nodes_by_pool.values().map(|ids| ids.as_slice())
    }

    /// Every node slot (one per node ever registered, removed nodes
    /// included) with its allocation ids in insertion order.
    pub fn node_alloc_lists(&self) -> impl Iterator<Item = (NodeId, impl Iterator<Item = AllocId> + '_)> + '_ {
        self.node_slots.iter().map(|(id, slot)| (*id, slot.allocs.iter().map(|e| e.id)))
    }

    pub fn node_slot_count(&self) -> usize {
        self.node_slots.len()
    }

    /// Every job's eval ids, in insertion order.
    pub fn eval_lists(&self) -> impl Iterator<Item = (&JobKey, &[EvalId])> + '_ {
        self.evals_by_job.iter().map(|(key, ids)| (key, ids.as_slice()))
    }

    /// Put a node's allocation list in `ids`' order; false (and nothing
    /// changed) unless `ids` holds exactly the ids already listed.
    pub(super) fn reorder_node_allocs(&mut self, node_id: NodeId, ids: &[AllocId]) -> bool {
        let Some(slot) = self.node_slots.get(&node_id) else { return false };
        let mut have: Vec<NodeAllocEntry> = slot.allocs.iter().copied().collect();
        let mut want = ids.to_vec();
        have.sort_unstable_by_key(|e| e.id);
        want.sort_unstable();
        if !have.iter().map(|e| e.id).eq(want.iter().copied()) {
            return false;
        }
        let entry = |id: &AllocId| have[have.binary_search_by_key(id, |e| e.id).expect("compared above")];
        let slot = Arc::make_mut(self.node_slots.get_mut(&node_id).expect("checked above"));
        slot.allocs = Default::default();
        slot.allocs.extend(ids.iter().map(entry));
        true
    }

    /// Put a job's eval list in `ids`' order; false (and nothing changed)
    /// unless `ids` holds exactly the ids already listed.
    pub(super) fn reorder_job_evals(&mut self, key: &JobKey, ids: &[EvalId]) -> bool {
        let Some(list) = self.evals_by_job.get_mut(key) else { return false };
        let mut have = list.to_vec();
        let mut want = ids.to_vec();
        have.sort_unstable();
        want.sort_unstable();
        if have != want {
            return false;
        }
        *list = Arc::new(ids.to_vec());
        true
    }

    /// The last-write index of every table, in slot order (see [`Table`]).
    pub fn table_indexes(&self) -> [u64; TABLE_COUNT] {
        self.table_index
    }

    pub(super) fn set_table_indexes(&mut self, table_index: [u64; TABLE_COUNT]) {
        self.table_index = table_index;
    }

    /// A restored state does not know what was removed before `index`:
    /// every node's next pull lists what its client may keep.
    pub(super) fn mark_removals_unknown_before(&mut self, index: u64) {
        for (_, slot) in self.node_slots.iter_mut() {
            Arc::make_mut(slot).allocs_removed_index = index;
        }
    }

    /// Set (or clear) the current record of a job without touching its versions.
    pub(super) fn restore_current_job(&mut self, key: &JobKey, job: Option<Arc<Job>>) {
        match job {
            Some(job) => self.jobs.insert(key.clone(), job),
            None => self.jobs.remove(key),
        };
    }

    /// A node slot exists for every node ever registered (and outlives it):
    /// restore creates the empty ones too, so `node_usage` answers the same.
    pub(super) fn ensure_node_slot(&mut self, id: NodeId) {
        self.node_slots.entry(id).or_default();
    }

    /// A periodic launch record as stored, its indexes included.
    pub(super) fn restore_periodic_launch(&mut self, key: JobKey, launch: PeriodicLaunch) -> bool {
        self.periodic_launches.insert(key, launch).is_none()
    }

    /// A job's scaling events as stored, indexes included.
    pub(super) fn restore_scaling_events(&mut self, key: JobKey, events: Arc<JobScalingEvents>) -> bool {
        self.scaling_events.insert(key, events).is_none()
    }

    /// The configuration as stored, its `modify_index` included.
    pub(super) fn restore_scheduler_config(&mut self, config: SchedulerConfig) {
        self.scheduler_config = Arc::new(config);
    }
}
