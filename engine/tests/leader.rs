//! Leader duties: restoring the broker and blocked evals after an election,
//! and garbage collection.

use std::sync::Arc;

use caravan_engine::blocked::BlockedEvals;
use caravan_engine::broker::{BrokerConfig, SharedBroker};
use caravan_engine::clock::ManualClock;
use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::Command;
use caravan_engine::ids::{AllocId, JobKey};
use caravan_engine::leader::{GcThresholds, collect_garbage, restore};
use caravan_engine::model::*;
use caravan_engine::sim::SimCluster;

#[test]
fn new_leader_restores_pending_and_blocked_evals() {
    let mut c = SimCluster::new(4);
    let n = node(&mut c.ids, "n0", "dc1", 1000, 1024);
    c.add_node(n);
    c.register(job("a", JobType::Service, 1, 100, 64));
    c.register(job("b", JobType::Batch, 1, 100, 64));
    let too_big = c.register(job("big", JobType::Service, 1, 5000, 64));
    let (outcome, _) = c.process(&too_big);
    assert!(outcome.blocked_eval.is_some());

    let broker = SharedBroker::new(BrokerConfig::default(), Arc::new(ManualClock::new(0)));
    broker.set_enabled(true);
    let mut blocked = BlockedEvals::new();
    blocked.set_enabled(true);
    let restored = restore(&c.snapshot(), &broker, &mut blocked).unwrap();
    assert_eq!(restored.enqueued, 2, "the two pending registrations");
    assert_eq!(restored.blocked, 1);
    assert_eq!(broker.stats().total_ready, 2);
    assert!(blocked.blocked_for_job(&JobKey::new("default", "big")).is_some());
}

#[test]
fn garbage_collection_reaps_old_terminal_state_only() {
    let mut c = SimCluster::new(4);
    let n0 = node(&mut c.ids, "n0", "dc1", 4000, 4096);
    let n1 = node(&mut c.ids, "n1", "dc1", 4000, 4096);
    c.add_node(n0);
    let gone = c.add_node(n1);
    let batch = c.register(job("b", JobType::Batch, 2, 100, 64));
    c.process(&batch);
    let service = c.register(job("s", JobType::Service, 1, 100, 64));
    c.process(&service);
    let batch_allocs: Vec<AllocId> = c.snapshot().allocs_by_job(&JobKey::new("default", "b")).map(|a| a.id).collect();
    for id in batch_allocs {
        c.client_update(id, ClientStatus::Complete);
    }
    let snap = c.snapshot();
    assert!(snap.allocs_by_node(gone).all(|a| a.is_terminal()), "node n1 holds nothing live");
    c.set_node_status(gone, NodeStatus::Down);

    assert!(collect_garbage(&c.snapshot(), c.now_ns, GcThresholds::default()).is_empty(), "nothing is old yet");

    c.advance(25 * 3600 * SECOND_NS);
    let commands = collect_garbage(&c.snapshot(), c.now_ns, GcThresholds::default());
    let summary: Vec<String> = commands
        .iter()
        .map(|cmd| match cmd {
            Command::EvalReap { evals, allocs } => format!("reap {} evals {} allocs", evals.len(), allocs.len()),
            Command::JobDeregister { key, purge, .. } => format!("purge {key} {purge}"),
            Command::NodeDeregister { .. } => "deregister node".to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    // The finished batch job and its eval and allocations go; the running
    // service job stays; the down, empty node goes.
    assert_eq!(summary, ["reap 1 evals 2 allocs", "purge default/b true", "deregister node"]);
    for cmd in commands {
        c.commit(cmd);
    }
    let snap = c.snapshot();
    assert!(snap.job(&JobKey::new("default", "b")).is_none());
    assert!(snap.job(&JobKey::new("default", "s")).is_some());
    assert_eq!(snap.allocs().count(), 1, "the service allocation remains");
    assert_eq!(snap.node_count(), 1);
}
