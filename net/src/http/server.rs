use std::sync::Arc;

use caravan_engine::endpoints::EndpointError;
use caravan_engine::fsm::Command;
use caravan_engine::ids::{EvalId, IdGen, JobKey};
use caravan_engine::local::LocalCluster;
use caravan_engine::model::Job;
use caravan_engine::model::TimeNs;
use caravan_engine::state::State;
use caravan_engine::state::StateStore;

/// Builds one command from the latest state, with an id source and the time.
pub type WriteBuilder<'a> = dyn FnMut(&State, &mut IdGen, TimeNs) -> Result<Command, EndpointError> + 'a;

/// What the HTTP API needs from a server.
pub trait Server: Send + Sync + 'static {
    fn store(&self) -> &Arc<StateStore>;
    /// Register a validated job with its eval; returns the eval id and the
    /// index the write committed at.
    fn register_job(&self, job: Job) -> Result<(EvalId, u64), EndpointError>;
    /// Stop (or purge) a job with its eval.
    fn deregister_job(&self, key: &JobKey, purge: bool) -> Result<(EvalId, u64), EndpointError>;
    /// Build a write from the latest state and commit it atomically;
    /// returns the commit index.
    fn write(&self, build: &mut WriteBuilder<'_>) -> Result<u64, EndpointError>;
    /// Whether this server leads (reads here need no catching up).
    fn is_leader(&self) -> bool {
        true
    }
    /// Bring this server's state up to everything the leader had applied
    /// when called: what a read without `?stale` waits for (and a write
    /// built from local state). The error says why not (no leader).
    fn sync_with_leader(&self) -> Result<(), String> {
        Ok(())
    }
    /// Whether this server knows a leader and when it last heard from it,
    /// for `X-Nomad-KnownLeader` and `X-Nomad-LastContact`.
    fn leader_contact(&self) -> LeaderContact {
        LeaderContact { known_leader: true, last_contact: Some(std::time::Duration::ZERO) }
    }
    /// Events committed after `index`, oldest first, at most `limit`.
    fn events_since(&self, index: u64, limit: usize) -> Vec<caravan_engine::events::Event>;
    /// Gauges for `/v1/metrics`, named as Nomad names them where Nomad has
    /// the same measure (so existing dashboards find them).
    fn gauges(&self) -> Vec<(&'static str, f64)>;
    /// The leader's RPC address, as `/v1/status/leader` reports it.
    fn leader_addr(&self) -> String;
    fn peers(&self) -> Vec<String>;
    /// The raft configuration, as `/v1/operator/raft/configuration` shows it.
    fn raft_servers(&self) -> Vec<RaftServerInfo> {
        let address = self.leader_addr();
        vec![RaftServerInfo { id: address.clone(), node: "local".into(), address, leader: true, voter: true }]
    }
}

/// A server's knowledge of its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderContact {
    pub known_leader: bool,
    /// Since the leader was last heard from: zero on the leader, `None`
    /// if never.
    pub last_contact: Option<std::time::Duration>,
}

/// One server of the raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServerInfo {
    pub id: String,
    pub node: String,
    pub address: String,
    pub leader: bool,
    pub voter: bool,
}

/// The in-process cluster, a one-server "cluster" for `agent -dev`.
#[derive(Debug)]
pub struct LocalServer {
    pub cluster: LocalCluster,
    pub rpc_addr: String,
}

impl Server for LocalServer {
    fn store(&self) -> &Arc<StateStore> {
        &self.cluster.store
    }

    fn register_job(&self, job: Job) -> Result<(EvalId, u64), EndpointError> {
        let eval = self.cluster.register_job(job)?;
        Ok((eval, self.cluster.store.latest_index()))
    }

    fn deregister_job(&self, key: &JobKey, purge: bool) -> Result<(EvalId, u64), EndpointError> {
        let mut eval_id = EvalId::NIL;
        let index = self.cluster.write(|state, ids, now| {
            let command = caravan_engine::endpoints::deregister_job(state, key, purge, now, ids)?;
            if let Command::JobDeregister { eval: Some(eval), .. } = &command {
                eval_id = eval.id;
            }
            Ok(command)
        })?;
        Ok((eval_id, index))
    }

    fn write(&self, build: &mut WriteBuilder<'_>) -> Result<u64, EndpointError> {
        self.cluster.write(|state, ids, now| build(state, ids, now))
    }

    fn events_since(&self, index: u64, limit: usize) -> Vec<caravan_engine::events::Event> {
        self.cluster.log.events_since(index, limit)
    }

    fn gauges(&self) -> Vec<(&'static str, f64)> {
        use std::sync::atomic::Ordering;
        let c = &self.cluster;
        let mut gauges = engine_gauges(&c.broker, &c.plans, &c.store, &c.worker_stats);
        gauges.push(("caravan.log.commits", c.log.commits.load(Ordering::Relaxed) as f64));
        gauges
    }

    fn leader_addr(&self) -> String {
        self.rpc_addr.clone()
    }

    fn peers(&self) -> Vec<String> {
        vec![self.rpc_addr.clone()]
    }
}

/// The gauges every server has, whatever its log: broker, plan queue,
/// state sizes and applied index, and the workers' counters.
pub fn engine_gauges(
    broker: &caravan_engine::broker::SharedBroker,
    plans: &caravan_engine::plan::PlanQueue,
    store: &StateStore,
    workers: &[Arc<caravan_engine::worker::WorkerStats>],
) -> Vec<(&'static str, f64)> {
    use std::sync::atomic::Ordering;
    let stats = broker.stats();
    let snap = store.snapshot();
    let sum = |f: fn(&caravan_engine::worker::WorkerStats) -> u64| workers.iter().map(|s| f(s) as f64).sum::<f64>();
    vec![
        ("nomad.broker.total_ready", stats.total_ready as f64),
        ("nomad.broker.total_unacked", stats.total_unacked as f64),
        ("nomad.broker.total_pending", stats.total_pending as f64),
        ("nomad.broker.total_waiting", stats.total_waiting as f64),
        ("nomad.broker.total_failed", stats.total_failed as f64),
        ("nomad.plan.queue_depth", plans.len() as f64),
        ("nomad.raft.applied_index", snap.index() as f64),
        ("nomad.state.jobs", snap.job_count() as f64),
        ("nomad.state.nodes", snap.node_count() as f64),
        ("nomad.state.allocations", snap.alloc_count() as f64),
        ("caravan.worker.evals_processed", sum(|s| s.evals_processed.load(Ordering::Relaxed))),
        ("caravan.worker.evals_nacked", sum(|s| s.evals_nacked.load(Ordering::Relaxed))),
        ("caravan.worker.plans_submitted", sum(|s| s.plans_submitted.load(Ordering::Relaxed))),
        ("caravan.worker.plan_refreshes", sum(|s| s.plan_refreshes.load(Ordering::Relaxed))),
        ("caravan.worker.placements", sum(|s| s.placements.load(Ordering::Relaxed))),
        ("caravan.worker.sync_timeouts", sum(|s| s.sync_timeouts.load(Ordering::Relaxed))),
    ]
}
