//! Safety properties of the scheduler and plan applier, over random clusters,
//! jobs and events. Checked after every commit:
//! - no node holds more cpu, memory, disk, ports or device instances than it has,
//!   and the FSM's incremental usage equals a recount from the allocations;
//! - no new allocation lands on a down, ineligible or draining node;
//! - re-running the scheduler after its plan is applied yields an empty plan;
//! - the same inputs give the same plan.

use std::collections::BTreeMap;

use caravan_engine::fixtures::{job, node};
use caravan_engine::ids::{AllocId, JobKey};
use caravan_engine::model::*;
use caravan_engine::scheduler::describe_plan;
use caravan_engine::sim::SimCluster;
use caravan_engine::state::{NodeAllocChange, State, usage_from_allocs};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct JobSpec {
    job_type: JobType,
    count: u32,
    cpu: u32,
    mem: u32,
    static_port: bool,
    priority: u8,
}

#[derive(Debug, Clone)]
enum Event {
    Down(usize),
    Drain(usize),
    Ineligible(usize),
    Fail(usize),
    Complete(usize),
    Scale(usize, u32),
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        prop_oneof![Just(JobType::Service), Just(JobType::Batch), Just(JobType::System)],
        1u32..12,
        100u32..1500,
        64u32..1024,
        any::<bool>(),
        prop_oneof![Just(20u8), Just(50), Just(80)],
    )
        .prop_map(|(job_type, count, cpu, mem, static_port, priority)| JobSpec {
            job_type,
            count,
            cpu,
            mem,
            static_port,
            priority,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0usize..64).prop_map(Event::Down),
        (0usize..64).prop_map(Event::Drain),
        (0usize..64).prop_map(Event::Ineligible),
        (0usize..1000).prop_map(Event::Fail),
        (0usize..1000).prop_map(Event::Complete),
        ((0usize..16), (0u32..10)).prop_map(|(j, c)| Event::Scale(j, c)),
    ]
}

fn check_invariants(state: &State) {
    for node in state.nodes() {
        let live: Vec<&Allocation> = state.allocs_by_node(node.id).filter(|a| !a.is_terminal()).map(|a| &**a).collect();
        let recount = usage_from_allocs(node, live.iter().copied())
            .unwrap_or_else(|e| panic!("node {} over-committed: {e}", node.name));
        let incremental = state.node_usage(node.id).cloned().unwrap_or_default();
        assert_eq!(recount.used, incremental.used, "incremental usage drifted on {}", node.name);
        assert_eq!(recount.ports, incremental.ports, "port usage drifted on {}", node.name);
        // The node's list keeps each allocation's change index in step: a
        // client's pull sends the same allocations as looking each one up.
        for known in [0, state.index() / 2, state.index().saturating_sub(1)] {
            let pulled: Vec<(AllocId, bool)> = state
                .node_allocs_since(node.id, known)
                .map(|c| match c {
                    NodeAllocChange::Changed(a) => (a.id, true),
                    NodeAllocChange::Unchanged(id) => (id, false),
                })
                .collect();
            let looked_up: Vec<(AllocId, bool)> =
                state.allocs_by_node(node.id).map(|a| (a.id, a.alloc_modify_index > known)).collect();
            assert_eq!(pulled, looked_up, "pull of {} since {known}", node.name);
        }
    }
}

fn build(spec: &JobSpec, i: usize) -> Job {
    let count = if spec.job_type == JobType::System { 1 } else { spec.count };
    let mut j = job(&format!("j{i}"), spec.job_type, count, spec.cpu, spec.mem);
    j.priority = spec.priority;
    if spec.static_port {
        j.task_groups[0].ports.push(PortRequest { label: "p".into(), static_port: Some(9000), to: 0 });
    }
    j
}

/// Run the scheduler for `eval` and check every safety property around it.
fn process_checked(c: &mut SimCluster, eval: &Evaluation) {
    let before = c.snapshot();
    let outcome = c.schedule(eval);
    let again = c.schedule(eval);
    assert_eq!(describe_plan(&before, &outcome.plan), describe_plan(&before, &again.plan), "same inputs, same plan");
    let result = c.apply(&outcome);
    for (node_id, allocs) in &result.node_allocation {
        let node = before.node(*node_id).expect("placed on a known node");
        for a in allocs.iter().filter(|a| before.alloc(a.id).is_none()) {
            assert!(
                node.ready_for_placement(),
                "new alloc {} placed on {} which is {:?}/{:?}/drain={}",
                a.name(),
                node.name,
                node.status,
                node.eligibility,
                node.drain.is_some()
            );
        }
    }
    check_invariants(&c.snapshot());
    if result.rejected_nodes.is_empty() {
        let rerun = c.schedule(eval);
        assert!(
            rerun.plan.is_no_op(),
            "rerun after apply must be empty, got:\n{}",
            describe_plan(&c.snapshot(), &rerun.plan)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn safety_holds_under_random_jobs_and_faults(
        seed in any::<u64>(),
        node_sizes in prop::collection::vec((1000u64..8000, 1024u64..8192), 3..24),
        jobs in prop::collection::vec(job_spec(), 1..10),
        events in prop::collection::vec(event(), 0..16),
    ) {
        let mut c = SimCluster::new(seed);
        let mut node_ids = Vec::new();
        for (i, (cpu, mem)) in node_sizes.iter().enumerate() {
            let n = node(&mut c.ids, &format!("n{i}"), "dc1", *cpu, *mem);
            node_ids.push(c.add_node(n));
        }
        let mut keys = Vec::new();
        for (i, spec) in jobs.iter().enumerate() {
            let j = build(spec, i);
            keys.push(j.key());
            let eval = c.register(j);
            process_checked(&mut c, &eval);
        }
        for ev in events {
            let trigger = match ev {
                Event::Down(n) => { c.set_node_status(node_ids[n % node_ids.len()], NodeStatus::Down); TriggeredBy::NodeUpdate }
                Event::Drain(n) => { c.drain(node_ids[n % node_ids.len()]); TriggeredBy::NodeDrain }
                Event::Ineligible(n) => {
                    let node_id = node_ids[n % node_ids.len()];
                    c.commit(caravan_engine::fsm::Command::NodeEligibilityUpdate { node_id, eligibility: SchedulingEligibility::Ineligible, evals: vec![], now_ns: 0 });
                    TriggeredBy::NodeUpdate
                }
                Event::Fail(a) | Event::Complete(a) => {
                    let live: Vec<AllocId> = c.snapshot().allocs().filter(|x| !x.is_terminal()).map(|x| x.id).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                    if live.is_empty() { continue; }
                    let status = if matches!(ev, Event::Fail(_)) { ClientStatus::Failed } else { ClientStatus::Complete };
                    c.client_update(live[a % live.len()], status);
                    TriggeredBy::RetryFailedAlloc
                }
                Event::Scale(j, count) => {
                    let spec = &jobs[j % jobs.len()];
                    let mut scaled = build(spec, j % jobs.len());
                    if scaled.job_type != JobType::System { scaled.task_groups[0].count = count; }
                    let eval = c.register(scaled);
                    process_checked(&mut c, &eval);
                    continue;
                }
            };
            c.advance(10 * SECOND_NS);
            for key in &keys {
                let eval = c.eval_for(key, trigger);
                process_checked(&mut c, &eval);
            }
        }
    }

    /// Two schedulers planning on the same snapshot (as parallel workers do):
    /// the applier must reject whatever no longer fits.
    #[test]
    fn applier_rejects_conflicting_plans(seed in any::<u64>(), nodes in 1usize..6, count in 1u32..20) {
        let mut c = SimCluster::new(seed);
        for i in 0..nodes {
            let n = node(&mut c.ids, &format!("n{i}"), "dc1", 2000, 2048);
            c.add_node(n);
        }
        let a = c.register(job("a", JobType::Batch, count, 700, 256));
        let b = c.register(job("b", JobType::Batch, count, 700, 256));
        let plan_a = c.schedule(&a);
        let plan_b = c.schedule(&b);
        c.apply(&plan_a);
        let result_b = c.apply(&plan_b);
        check_invariants(&c.snapshot());
        let placed: BTreeMap<_, _> = [("a", c.live_allocs(&JobKey::new("default", "a"))), ("b", c.live_allocs(&JobKey::new("default", "b")))].into();
        prop_assert!(placed["a"] + placed["b"] <= nodes * 2, "2 allocs of 700 MHz per 2000 MHz node at most: {placed:?}");
        if plan_a.plan.alloc_count() + plan_b.plan.alloc_count() > nodes * 2 {
            prop_assert!(!result_b.rejected_nodes.is_empty());
            prop_assert!(result_b.refresh_index > 0);
        }
    }
}
