//! The threaded in-process cluster end to end: broker, parallel workers,
//! plan applier and FSM, with nodes failing mid-run and the safety
//! invariants checked after every commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use caravan_engine::clock::ManualClock;
use caravan_engine::endpoints;
use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::Command;
use caravan_engine::ids::IdGen;
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_engine::model::*;
use caravan_engine::plan::Pipelining;
use caravan_engine::state::{State, usage_from_allocs};
use caravan_engine::worker::WorkerConfig;

/// Liveness bound for the pipeline to drain; generous, not a measurement.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

fn check_invariants(state: &State) -> Result<(), String> {
    for node in state.nodes() {
        let live = state.allocs_by_node(node.id).filter(|a| !a.is_terminal()).map(|a| &**a);
        usage_from_allocs(node, live)
            .map_err(|e| format!("index {}: node {} over-committed: {e}", state.index(), node.name))?;
    }
    Ok(())
}

/// Drain the pipeline, including evals that plan conflicts parked as
/// blocked until the leader's periodic retry (moved along by the clock).
fn settle(cluster: &LocalCluster, clock: &ManualClock) {
    for _ in 0..3 {
        assert!(cluster.wait_idle(IDLE_TIMEOUT), "pipeline drains");
        clock.advance_ns(61 * SECOND_NS);
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(cluster.wait_idle(IDLE_TIMEOUT), "pipeline drains");
}

fn start(workers: usize) -> (LocalCluster, ManualClock) {
    let clock = ManualClock::new(1_700_000_000 * SECOND_NS);
    let config = LocalConfig {
        workers,
        worker: WorkerConfig { raft_sync_limit: Duration::from_millis(200), ..WorkerConfig::default() },
        seed: 11,
        ..LocalConfig::default()
    };
    let cluster = LocalCluster::start(config, Arc::new(clock.clone()));
    cluster.log.set_after_commit(Box::new(check_invariants));
    (cluster, clock)
}

#[test]
fn mixed_jobs_on_a_thousand_nodes_with_failures() {
    let (cluster, clock) = start(4);
    let mut ids = IdGen::with_seed(5);
    let mut node_ids = Vec::new();
    for i in 0..1000 {
        let n = node(&mut ids, &format!("n{i}"), if i % 3 == 0 { "dc2" } else { "dc1" }, 16_000, 32_768);
        node_ids.push(n.id);
        cluster.commit(&Command::NodeRegister { node: n, evals: vec![] }).unwrap();
    }
    let mut jobs = Vec::new();
    for j in 0..200 {
        let (job_type, count) = match j % 10 {
            0 => (JobType::System, 1),
            1..=4 => (JobType::Batch, 12),
            _ => (JobType::Service, 8),
        };
        let mut spec = job(&format!("j{j}"), job_type, count, 150, 256);
        spec.priority = [30, 50, 70][j % 3];
        if j % 7 == 0 {
            spec.datacenters = vec!["dc2".into()];
        }
        jobs.push(spec.clone());
        cluster.register_job(spec).unwrap();
        if j == 100 {
            // Fail 50 nodes mid-run; the evals they trigger replace lost work.
            for node_id in node_ids.iter().take(50) {
                cluster
                    .write(|state, ids, now| endpoints::update_node_status(state, *node_id, NodeStatus::Down, now, ids))
                    .unwrap();
            }
        }
    }
    settle(&cluster, &clock);
    assert_eq!(cluster.log.invariant_violations(), Vec::<String>::new());
    let snapshot = cluster.store.snapshot();
    let ready_nodes = snapshot.nodes().filter(|n| n.ready_for_placement()).count();
    assert_eq!(ready_nodes, 950);
    for spec in &jobs {
        let live: Vec<_> = snapshot.allocs_by_job(&spec.key()).filter(|a| !a.is_terminal()).collect();
        for a in &live {
            assert_ne!(snapshot.node(a.node_id).unwrap().status, NodeStatus::Down, "{} left on a down node", a.name());
        }
        let expected = match spec.job_type {
            JobType::System => snapshot
                .nodes()
                .filter(|n| {
                    n.ready_for_placement()
                        && (spec.datacenters[0].as_ref() == "*" || n.datacenter.text() == spec.datacenters[0])
                })
                .count(),
            _ => spec.task_groups[0].count as usize,
        };
        assert_eq!(live.len(), expected, "job {} has {} live allocations", spec.id, live.len());
    }
    let processed = cluster.evals_processed();
    assert!(processed >= 200, "every registration was evaluated ({processed})");
    cluster.shutdown();
}

#[test]
fn blocked_eval_is_unblocked_by_new_capacity() {
    let (cluster, _clock) = start(2);
    let mut ids = IdGen::with_seed(9);
    let small = node(&mut ids, "small", "dc1", 1000, 1024);
    cluster.commit(&Command::NodeRegister { node: small, evals: vec![] }).unwrap();
    let spec = job("big", JobType::Service, 3, 600, 256);
    let eval_id = cluster.register_job(spec.clone()).unwrap();
    assert!(cluster.wait_idle(IDLE_TIMEOUT));
    let snapshot = cluster.store.snapshot();
    assert_eq!(snapshot.allocs_by_job(&spec.key()).count(), 1);
    let first = snapshot.eval(eval_id).unwrap();
    let blocked_id = first.blocked_eval.expect("a blocked eval was created");
    assert_eq!(snapshot.eval(blocked_id).unwrap().status, EvalStatus::Blocked);
    assert_eq!(cluster.broker.stats().total_ready, 0, "blocked, not spinning in the broker");
    for i in 0..2 {
        let n = node(&mut ids, &format!("more{i}"), "dc1", 1000, 1024);
        cluster.commit(&Command::NodeRegister { node: n, evals: vec![] }).unwrap();
    }
    assert!(cluster.wait_idle(IDLE_TIMEOUT));
    let snapshot = cluster.store.snapshot();
    assert_eq!(
        snapshot.allocs_by_job(&spec.key()).filter(|a| !a.is_terminal()).count(),
        3,
        "capacity change unblocked the eval"
    );
    assert_eq!(snapshot.eval(blocked_id).unwrap().status, EvalStatus::Complete);
    let stats: u64 = cluster.worker_stats.iter().map(|s| s.evals_processed.load(Ordering::Relaxed)).sum();
    assert!(stats >= 2);
    cluster.shutdown();
}

#[test]
fn invalid_job_is_refused_and_changes_nothing() {
    let (cluster, _clock) = start(1);
    let before = cluster.store.snapshot().index();
    let mut bad = job("", JobType::Service, 1, 100, 5);
    bad.priority = 0;
    let err = cluster.register_job(bad).unwrap_err().to_string();
    assert!(err.contains("priority"), "{err}");
    assert!(err.contains("memory"), "{err}");
    assert_eq!(cluster.store.snapshot().index(), before);
    cluster.shutdown();
}

#[test]
fn overlapped_applier_never_over_commits() {
    let clock = ManualClock::new(1_700_000_000 * SECOND_NS);
    let config = LocalConfig { workers: 3, seed: 5, pipelining: Pipelining::Overlap, ..LocalConfig::default() };
    let cluster = LocalCluster::start(config, Arc::new(clock.clone()));
    cluster.log.set_after_commit(Box::new(check_invariants));
    let mut ids = IdGen::with_seed(3);
    for i in 0..200 {
        let n = node(&mut ids, &format!("n{i}"), "dc1", 2000, 4096);
        cluster.commit(&Command::NodeRegister { node: n, evals: vec![] }).unwrap();
    }
    // 60 jobs x 10 x 500 MHz = 300,000 MHz asked of 400,000: tight enough
    // that parallel plans collide and the applier has to reject some.
    let mut keys = Vec::new();
    for j in 0..60 {
        let spec = job(&format!("j{j}"), JobType::Batch, 10, 500, 256);
        keys.push(spec.key());
        cluster.register_job(spec).unwrap();
    }
    settle(&cluster, &clock);
    assert_eq!(cluster.log.invariant_violations(), Vec::<String>::new());
    let snapshot = cluster.store.snapshot();
    for k in &keys {
        let live = snapshot.allocs_by_job(k).filter(|a| !a.is_terminal()).count();
        let evals: Vec<String> = snapshot
            .evals_by_job(k)
            .map(|e| {
                format!(
                    "{:?} {:?} {:?} q={:?} failed={:?}",
                    e.triggered_by,
                    e.status,
                    e.status_description,
                    e.queued_allocations,
                    e.failed_tg_allocs.values().map(|m| m.summary()).collect::<Vec<_>>()
                )
            })
            .collect();
        assert_eq!(live, 10, "job {k}: {evals:#?}");
    }
    cluster.shutdown();
}
