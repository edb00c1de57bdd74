//! State store and FSM: indexes, job versions, and errors that change nothing.

use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::{ApplyError, Command};
use caravan_engine::ids::{AllocId, JobKey, NodeId};
use caravan_engine::intern::Sym;
use caravan_engine::model::*;
use caravan_engine::sim::SimCluster;
use caravan_engine::state::Table;

#[test]
fn nodes_by_pool_follow_moves_and_removals() {
    let mut c = SimCluster::new(1);
    let mut a = node(&mut c.ids, "a", "dc1", 1000, 1024);
    a.node_pool = Sym::new("gpu");
    let a_id = c.add_node(a.clone());
    let b = node(&mut c.ids, "b", "dc1", 1000, 1024);
    let b_id = c.add_node(b);
    assert_eq!(c.snapshot().nodes_in_pool(Sym::new("gpu")), &[a_id]);
    assert_eq!(c.snapshot().nodes_in_pool(Sym::new("default")), &[b_id]);
    a.node_pool = Sym::new("default");
    c.add_node(a);
    assert!(c.snapshot().nodes_in_pool(Sym::new("gpu")).is_empty());
    assert_eq!(c.snapshot().nodes_in_pool(Sym::new("default")), &[b_id, a_id]);
    c.commit(Command::NodeDeregister { node_id: b_id, evals: vec![] });
    assert_eq!(c.snapshot().nodes_in_pool(Sym::new("default")), &[a_id]);
}

#[test]
fn job_versions_bump_only_on_spec_change() {
    let mut c = SimCluster::new(1);
    let key = JobKey::new("default", "web");
    c.register(job("web", JobType::Service, 1, 100, 64));
    c.register(job("web", JobType::Service, 1, 100, 64));
    assert_eq!(c.snapshot().job(&key).unwrap().version, 0, "same spec, same version");
    c.register(job("web", JobType::Service, 2, 100, 64));
    let snap = c.snapshot();
    assert_eq!(snap.job(&key).unwrap().version, 1);
    assert_eq!(snap.job_versions(&key).iter().map(|j| j.version).collect::<Vec<_>>(), [1, 0]);
    assert!(snap.table_index(Table::Jobs) > 0, "job writes move the jobs table index");
}

#[test]
fn failed_command_changes_nothing() {
    let mut c = SimCluster::new(1);
    let a = node(&mut c.ids, "a", "dc1", 1000, 1024);
    c.add_node(a);
    let before = c.snapshot();
    let missing = NodeId(42);
    let err = c
        .fsm
        .apply(
            before.index() + 1,
            &Command::NodeStatusUpdate { node_id: missing, status: NodeStatus::Down, evals: vec![], now_ns: 0 },
        )
        .unwrap_err();
    assert_eq!(err, ApplyError::NodeNotFound(missing));
    let after = c.snapshot();
    assert_eq!(after.node_count(), 1);
    assert_eq!(after.table_index(Table::Nodes), before.table_index(Table::Nodes));
}

#[test]
fn a_plan_committed_twice_places_its_allocations_once() {
    // A plan whose commit timed out but landed, planned again from the same
    // snapshot (same seed, same allocation ids) and committed again.
    let mut c = SimCluster::new(7);
    let n = node(&mut c.ids, "n", "dc1", 4000, 8192);
    let node_id = c.add_node(n);
    let eval = c.register(job("web", JobType::Service, 3, 100, 128));
    let outcome = c.schedule(&eval);
    let snapshot = c.snapshot();
    let (result, _) = caravan_engine::plan::evaluate::evaluate_plan(&snapshot, &outcome.plan);
    let applied = caravan_engine::plan::evaluate::plan_applied(&outcome.plan, &result, vec![], 0);
    c.commit(Command::ApplyPlanResults(applied.clone()));
    let after_first = c.snapshot();
    assert_eq!(after_first.allocs_by_node(node_id).count(), 3);
    let usage_first = after_first.node_usage(node_id).cloned();

    let mut state = (*after_first).clone();
    let outcome =
        caravan_engine::fsm::apply_to(&mut state, after_first.index() + 1, &Command::ApplyPlanResults(applied))
            .expect("the second copy applies without error");
    assert_eq!(outcome.duplicate_placements, 3, "every placement of the second copy is skipped");
    assert_eq!(state.allocs_by_node(node_id).count(), 3, "no allocation is added twice");
    assert_eq!(state.alloc_count(), 3);
    assert_eq!(state.node_usage(node_id).cloned(), usage_first, "usage is not counted twice");
}

/// A client's pull: each of the node's allocations with whether the
/// servers changed it after `known`, the fast path and the definition
/// (every allocation looked up) side by side.
fn pull(state: &caravan_engine::state::State, node: NodeId, known: u64) -> Vec<(AllocId, bool)> {
    use caravan_engine::state::NodeAllocChange;
    let fast: Vec<(AllocId, bool)> = state
        .node_allocs_since(node, known)
        .map(|c| match c {
            NodeAllocChange::Changed(a) => (a.id, true),
            NodeAllocChange::Unchanged(id) => (id, false),
        })
        .collect();
    let slow: Vec<(AllocId, bool)> = state.allocs_by_node(node).map(|a| (a.id, a.alloc_modify_index > known)).collect();
    assert_eq!(fast, slow, "known index {known}");
    fast
}

#[test]
fn node_allocs_since_sends_only_what_the_servers_changed() {
    let mut c = SimCluster::new(5);
    let n = node(&mut c.ids, "n", "dc1", 64_000, 64 * 1024);
    let node_id = c.add_node(n);
    let web = c.register(job("web", JobType::Service, 40, 100, 128));
    c.process(&web);
    let db = c.register(job("db", JobType::Service, 1, 100, 128));
    c.process(&db);
    let placed = c.snapshot();
    let all = pull(&placed, node_id, 0);
    assert_eq!(all.len(), 41);
    assert!(all.iter().all(|(_, changed)| *changed), "a first pull gets everything");
    let known = placed.index();
    assert!(pull(&placed, node_id, known).iter().all(|(_, changed)| !changed));

    // The client's own reports change nothing it needs to be sent.
    let db_alloc = placed.allocs_by_job(&JobKey::new("default", "db")).next().unwrap().id;
    for (id, _) in &all {
        c.client_update(*id, ClientStatus::Running);
    }
    assert!(pull(&c.snapshot(), node_id, known).iter().all(|(_, changed)| !changed));

    // A stop is a server change: only that allocation is sent in full,
    // also after the change shared the node's list with older snapshots.
    let db_stop = c.register(job("db", JobType::Service, 0, 100, 128));
    c.process(&db_stop);
    let stopped = c.snapshot();
    let changed: Vec<AllocId> =
        pull(&stopped, node_id, known).into_iter().filter(|(_, c)| *c).map(|(id, _)| id).collect();
    assert_eq!(changed, [db_alloc]);
    assert_eq!(stopped.alloc(db_alloc).unwrap().desired_status, DesiredStatus::Stop);
    assert!(pull(&placed, node_id, known).iter().all(|(_, changed)| !changed), "older snapshots keep their view");
    for index in 0..=stopped.index() {
        pull(&stopped, node_id, index);
    }

    // Removed (garbage-collected) allocations leave the list.
    c.commit(Command::EvalReap { evals: vec![], allocs: vec![db_alloc] });
    let reaped = pull(&c.snapshot(), node_id, known);
    assert_eq!(reaped.len(), 40);
    assert!(reaped.iter().all(|(id, changed)| *id != db_alloc && !changed));
}

#[test]
fn a_nodes_removal_index_moves_only_when_an_allocation_leaves_it() {
    let mut c = SimCluster::new(6);
    let n = node(&mut c.ids, "a", "dc1", 64_000, 64 * 1024);
    let a = c.add_node(n);
    let web = c.register(job("web", JobType::Service, 2, 100, 128));
    c.process(&web);
    let placed = c.snapshot();
    assert_eq!(placed.node_allocs_removed_index(a), Some(0), "placements remove nothing");
    assert_eq!(placed.node_allocs_removed_index(NodeId(424242)), None);
    let ids: Vec<AllocId> = placed.allocs_by_node(a).map(|x| x.id).collect();
    for id in &ids {
        c.client_update(*id, ClientStatus::Running);
    }
    let stop = c.register(job("web", JobType::Service, 1, 100, 128));
    c.process(&stop);
    assert_eq!(c.snapshot().node_allocs_removed_index(a), Some(0), "reports and stops remove nothing");
    let stopped = c.snapshot().allocs_by_node(a).find(|x| x.desired_status == DesiredStatus::Stop).unwrap().id;
    let reaped_at = c.commit(Command::EvalReap { evals: vec![], allocs: vec![stopped] });
    assert_eq!(c.snapshot().node_allocs_removed_index(a), Some(reaped_at));
    assert_eq!(placed.node_allocs_removed_index(a), Some(0), "older snapshots keep their view");
}

#[test]
fn a_client_report_leaves_the_nodes_slot_shared_and_its_usage_as_it_was() {
    let mut c = SimCluster::new(9);
    let n = node(&mut c.ids, "n", "dc1", 64_000, 64 * 1024);
    let node_id = c.add_node(n);
    let web = c.register(job("web", JobType::Batch, 3, 100, 128));
    c.process(&web);
    let placed = c.snapshot();
    let ids: Vec<AllocId> = placed.allocs_by_node(node_id).map(|a| a.id).collect();
    assert_eq!(ids.len(), 3);
    let usage_placed = placed.node_usage(node_id).expect("the node has usage");

    // Running reports change nothing the node's slot records: the new
    // state still shares the slot (no copy per report), usage unchanged.
    for id in &ids {
        c.client_update(*id, ClientStatus::Running);
    }
    let running = c.snapshot();
    assert!(running.allocs_by_node(node_id).all(|a| a.client_status == ClientStatus::Running));
    let usage_running = running.node_usage(node_id).expect("the node has usage");
    assert!(std::ptr::eq(usage_placed, usage_running), "the slot was copied for a client report");

    // A terminal report frees the resources: that one is recorded.
    c.client_update(ids[0], ClientStatus::Complete);
    let done = c.snapshot();
    let usage_done = done.node_usage(node_id).expect("the node has usage");
    assert_eq!(usage_done.alloc_count, 2);
    assert_eq!(usage_running.alloc_count, 3, "older snapshots keep their view");
    let node = done.node(node_id).expect("the node is stored");
    let live = done.allocs_by_node(node_id).filter(|a| !a.is_terminal()).map(|a| &**a);
    let recomputed = caravan_engine::state::usage_from_allocs(node, live).expect("the live allocations fit");
    assert_eq!(usage_done, &recomputed);
}

#[test]
fn every_command_of_a_batch_reaches_the_alloc_feed_even_after_one_fails() {
    // Client blocking queries wake from the feed: a node touched by any
    // command of a log entry must be in it, or its client waits out its
    // query's timeout.
    use std::collections::BTreeSet;
    use std::time::Duration;
    let mut c = SimCluster::new(3);
    let mut plans = Vec::new();
    let mut expected = BTreeSet::new();
    for dc in ["dc1", "dc2"] {
        let n = node(&mut c.ids, dc, dc, 4000, 8192);
        expected.insert(c.add_node(n));
        let mut spec = job(&format!("web-{dc}"), JobType::Service, 2, 100, 128);
        spec.datacenters = vec![dc.into()];
        let eval = c.register(spec);
        let outcome = c.schedule(&eval);
        let snapshot = c.snapshot();
        let (result, _) = caravan_engine::plan::evaluate::evaluate_plan(&snapshot, &outcome.plan);
        let applied = caravan_engine::plan::evaluate::plan_applied(&outcome.plan, &result, vec![], 0);
        assert_eq!(applied.allocs.len(), 2, "{dc}: both allocations placed");
        plans.push(Command::ApplyPlanResults(applied));
    }
    let feed = c.fsm.store().alloc_feed();
    feed.take(Duration::ZERO);
    let failing = Command::NodeStatusUpdate { node_id: NodeId(42), status: NodeStatus::Down, evals: vec![], now_ns: 0 };
    let [first, second] = <[Command; 2]>::try_from(plans).ok().unwrap();
    let results = c.fsm.apply_all(c.snapshot().index() + 1, &[first, failing, second]);
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok(), "{results:?}");
    let changes = feed.take(Duration::ZERO);
    assert!(!changes.everything);
    assert_eq!(changes.nodes.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[test]
fn a_client_report_keeps_task_states_it_repeats_and_shares_an_empty_map() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    let mut c = SimCluster::new(5);
    let n = node(&mut c.ids, "n", "dc1", 4000, 8192);
    c.add_node(n);
    let eval = c.register(job("web", JobType::Batch, 1, 100, 64));
    c.process(&eval);
    let id = c.snapshot().allocs_by_job(&eval.job_key()).next().unwrap().id;
    let report = |task_states: BTreeMap<Arc<str>, TaskState>| Command::AllocClientUpdate {
        updates: vec![AllocClientUpdate {
            alloc_id: id,
            client_status: ClientStatus::Running,
            client_description: "".into(),
            at_ns: 1,
            task_states,
            deployment_health: None,
        }],
        evals: vec![],
    };
    let states = |c: &SimCluster| c.snapshot().alloc(id).unwrap().task_states.clone();

    c.commit(report(BTreeMap::new()));
    assert!(Arc::ptr_eq(&states(&c), &no_task_states()), "no task states: the shared empty map");

    let running: BTreeMap<Arc<str>, TaskState> = [("t".into(), TaskState::pending())].into();
    c.commit(report(running.clone()));
    let first = states(&c);
    assert_eq!(*first, running);
    c.commit(report(running));
    assert!(Arc::ptr_eq(&states(&c), &first), "a repeated map is kept, not copied");

    c.commit(report(BTreeMap::new()));
    assert!(states(&c).is_empty());
}
