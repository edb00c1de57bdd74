//! A deterministic, single-threaded cluster: FSM, scheduler and plan
//! evaluation wired synchronously, with a manual clock. Tests and property
//! checks drive it step by step; nothing sleeps and nothing races.

use std::sync::Arc;

use crate::fsm::{Command, Fsm};
use crate::ids::{AllocId, IdGen, JobKey, NodeId};
use crate::model::{
    AllocClientUpdate, ClientStatus, DrainStrategy, EvalStatus, Evaluation, Job, Node, NodeStatus, PlanResult,
    SECOND_NS, TimeNs, TriggeredBy,
};
use crate::plan::evaluate_plan;
use crate::scheduler::{self, ScheduleOutcome};
use crate::state::{Snapshot, StateStore};

/// A one-server cluster without threads.
#[derive(Debug)]
pub struct SimCluster {
    pub fsm: Fsm,
    pub ids: IdGen,
    pub now_ns: TimeNs,
    index: u64,
}

impl SimCluster {
    pub fn new(seed: u64) -> SimCluster {
        SimCluster {
            fsm: Fsm::new(Arc::new(StateStore::new())),
            ids: IdGen::with_seed(seed),
            now_ns: 1_700_000_000 * SECOND_NS,
            index: 0,
        }
    }

    /// A cluster continuing from an existing state (benchmarks fork one).
    pub fn from_state(state: crate::state::State, seed: u64, now_ns: TimeNs) -> SimCluster {
        let index = state.index();
        SimCluster {
            fsm: Fsm::new(Arc::new(StateStore::from_state(state))),
            ids: IdGen::with_seed(seed),
            now_ns,
            index,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.fsm.store().snapshot()
    }

    /// Commit a command at the next index; panics on an apply error, which
    /// in a test means the test itself is wrong.
    pub fn commit(&mut self, command: Command) -> u64 {
        self.index += 1;
        self.fsm.apply(self.index, &command).expect("sim command applies");
        self.index
    }

    pub fn advance(&mut self, by_ns: i64) {
        self.now_ns += by_ns;
    }

    pub fn add_node(&mut self, node: Node) -> NodeId {
        let id = node.id;
        self.commit(Command::NodeRegister { node, evals: vec![] });
        id
    }

    /// Register a job with its eval; returns the eval.
    pub fn register(&mut self, job: Job) -> Evaluation {
        let mut eval = crate::fixtures::register_eval(&mut self.ids, &job, self.now_ns);
        eval.priority = job.priority;
        let eval_id = eval.id;
        self.commit(Command::JobRegister { job, eval: Some(eval), now_ns: self.now_ns });
        (**self.snapshot().eval(eval_id).expect("just written")).clone()
    }

    /// A fresh eval for an existing job.
    pub fn eval_for(&mut self, key: &JobKey, triggered_by: TriggeredBy) -> Evaluation {
        let job = self.snapshot().job(key).cloned().expect("job exists");
        let mut eval = Evaluation::new(self.ids.eval(), key, job.job_type, job.priority, triggered_by);
        eval.create_time_ns = self.now_ns;
        self.commit(Command::EvalUpsert { evals: vec![eval.clone()] });
        eval
    }

    pub fn schedule(&self, eval: &Evaluation) -> ScheduleOutcome {
        scheduler::schedule(&self.snapshot(), eval, self.now_ns).expect("schedules")
    }

    /// Evaluate and commit a plan as the leader's applier would.
    pub fn apply(&mut self, outcome: &ScheduleOutcome) -> PlanResult {
        let snapshot = self.snapshot();
        let (mut result, _) = evaluate_plan(&snapshot, &outcome.plan);
        if !result.is_no_op() {
            let applied = crate::plan::evaluate::plan_applied(&outcome.plan, &result, vec![], self.now_ns);
            result.alloc_index = self.commit(Command::ApplyPlanResults(applied));
        }
        if !result.rejected_nodes.is_empty() {
            // As the committer does: retry from at least the current state.
            result.refresh_index = result.alloc_index.max(self.index);
        }
        let mut evals: Vec<Evaluation> = outcome.blocked_eval.iter().cloned().collect();
        evals.extend(outcome.followup_evals.iter().cloned());
        if !evals.is_empty() {
            self.commit(Command::EvalUpsert { evals });
        }
        result
    }

    /// Schedule and apply in one step.
    pub fn process(&mut self, eval: &Evaluation) -> (ScheduleOutcome, PlanResult) {
        let outcome = self.schedule(eval);
        let result = self.apply(&outcome);
        let done = scheduler::completed_eval(eval, &outcome, self.snapshot().index(), self.now_ns);
        if done.status == EvalStatus::Complete {
            self.commit(Command::EvalUpsert { evals: vec![done] });
        }
        (outcome, result)
    }

    pub fn set_node_status(&mut self, node_id: NodeId, status: NodeStatus) {
        let now_ns = self.now_ns;
        self.commit(Command::NodeStatusUpdate { node_id, status, evals: vec![], now_ns });
    }

    pub fn drain(&mut self, node_id: NodeId) {
        let drain = DrainStrategy {
            deadline_ns: 3600 * SECOND_NS,
            ignore_system_jobs: false,
            started_at_ns: self.now_ns,
            force_deadline_ns: self.now_ns + 3600 * SECOND_NS,
        };
        let now_ns = self.now_ns;
        self.commit(Command::NodeDrainUpdate {
            node_id,
            drain: Some(drain),
            mark_eligible: false,
            evals: vec![],
            now_ns,
        });
    }

    pub fn client_update(&mut self, alloc_id: AllocId, status: ClientStatus) {
        let update = AllocClientUpdate {
            alloc_id,
            client_status: status,
            client_description: "".into(),
            at_ns: self.now_ns,
            task_states: Default::default(),
            deployment_health: None,
        };
        self.commit(Command::AllocClientUpdate { updates: vec![update], evals: vec![] });
    }

    /// A client's report that the allocation runs and is (un)healthy in
    /// its deployment (unhealthy: it missed its healthy deadline), through
    /// the client status endpoint: returns the evals it created.
    pub fn report_health(&mut self, alloc_id: AllocId, healthy: bool) -> Vec<Evaluation> {
        let snapshot = self.snapshot();
        let alloc = snapshot.alloc(alloc_id).expect("allocation exists");
        let deployment_id = alloc.deployment_id.expect("allocation is in a deployment");
        let update = AllocClientUpdate {
            alloc_id,
            client_status: ClientStatus::Running,
            client_description: "".into(),
            at_ns: self.now_ns,
            task_states: Default::default(),
            deployment_health: Some(crate::model::AllocHealthReport { deployment_id, healthy, at_ns: self.now_ns }),
        };
        let command = crate::endpoints::update_allocs_from_client(&snapshot, vec![update], self.now_ns, &mut self.ids);
        let Command::AllocClientUpdate { evals, .. } = &command else { unreachable!("a client update") };
        let evals = evals.clone();
        self.commit(command);
        evals
    }

    /// One look of the leader's deployment watcher at `now_ns`: commits
    /// its decisions and returns the evals they carry.
    pub fn watch_deployments(&mut self) -> Vec<Evaluation> {
        let mut evals = Vec::new();
        for id in crate::deployment_watcher::watched(&self.snapshot()) {
            let decided = crate::deployment_watcher::watch(&self.snapshot(), id, self.now_ns, &mut self.ids);
            if let Some(command) = decided {
                match &command {
                    Command::DeploymentStatusUpdate { evals: e, .. }
                    | Command::DeploymentPromote { evals: e, .. }
                    | Command::EvalUpsert { evals: e } => evals.extend(e.iter().cloned()),
                    _ => {}
                }
                self.commit(command);
            }
        }
        evals
    }

    /// Live allocations of a job.
    pub fn live_allocs(&self, key: &JobKey) -> usize {
        self.snapshot().allocs_by_job(key).filter(|a| !a.is_terminal()).count()
    }
}
