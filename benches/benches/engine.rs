//! Criterion benches of the engine's hot paths, on fleets built with the
//! same fixtures as the tests. Budgets (2-core machine, release): score one
//! node ≤ 100 ns, snapshot ≤ 100 ns, evaluate+apply a plan ≤ 2 µs per alloc.

use std::hint::black_box;
use std::sync::Arc;

use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::Command;
use caravan_engine::model::{Allocation, Job, JobType};
use caravan_engine::plan::evaluate::{evaluate_plan, plan_applied};
use caravan_engine::scheduler::{self, probe::Probe};
use caravan_engine::sim::SimCluster;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

// Measure with the allocator the binaries ship with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FLEET_NODES: usize = 10_000;

/// 10,000 nodes, half of them already running some allocations.
fn fleet() -> SimCluster {
    let mut c = SimCluster::new(42);
    for i in 0..FLEET_NODES {
        let n = node(&mut c.ids, &format!("n{i}"), if i % 2 == 0 { "dc1" } else { "dc2" }, 64_000, 256 * 1024);
        c.add_node(n);
    }
    for j in 0..10 {
        let eval = c.register(job(&format!("filler{j}"), JobType::Service, 500, 100, 128));
        c.process(&eval);
    }
    c
}

fn scoring(c: &mut Criterion) {
    let mut cluster = fleet();
    let eval = cluster.register(job("bench", JobType::Service, 1000, 100, 128));
    let single_eval = cluster.register(job("single", JobType::Service, 1, 100, 128));
    let snapshot = cluster.snapshot();
    let bench_job: Arc<Job> = snapshot.job(&eval.job_key()).cloned().unwrap();
    let existing: Vec<Arc<Allocation>> = Vec::new();
    let mut probe = Probe::new(&snapshot, &bench_job, &existing, 1);
    let n = probe.candidates();
    let mut i = 0;
    c.bench_function("score_one_node", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(probe.score(black_box(i)))
        })
    });
    c.bench_function("select_one_placement_10k_nodes", |b| b.iter(|| black_box(probe.select())));
    // A whole scheduler run for one allocation: candidate list, shuffle,
    // reconcile, select. The per-eval overhead a small job pays.
    c.bench_function("schedule_count_1_job_10k_nodes", |b| {
        b.iter(|| black_box(scheduler::schedule(&snapshot, &single_eval, 0).unwrap()))
    });
}

fn snapshots(c: &mut Criterion) {
    let cluster = fleet();
    let store = cluster.fsm.store().clone();
    c.bench_function("snapshot", |b| b.iter(|| black_box(store.snapshot())));
}

fn plan_apply(c: &mut Criterion) {
    const PLAN_ALLOCS: u32 = 1000;
    let mut group = c.benchmark_group("plan_evaluate_apply");
    group.throughput(Throughput::Elements(u64::from(PLAN_ALLOCS)));
    group.sample_size(20);
    let mut cluster = fleet();
    let eval = cluster.register(job("bench", JobType::Service, PLAN_ALLOCS, 100, 128));
    let outcome = cluster.schedule(&eval);
    assert_eq!(outcome.plan.alloc_count(), PLAN_ALLOCS as usize);
    group.bench_function("per_plan_of_1000", |b| {
        b.iter_batched(
            || SimCluster::from_state((*cluster.snapshot()).clone(), 1, cluster.now_ns),
            |sim| {
                let snap = sim.snapshot();
                let (result, _) = evaluate_plan(&snap, &outcome.plan);
                let applied = plan_applied(&outcome.plan, &result, vec![], 0);
                sim.fsm.apply(snap.index() + 1, &Command::ApplyPlanResults(applied)).unwrap();
                sim
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// One entry of client status reports, as the servers batch them: every
/// allocation of 200 nodes (of 10,000, 50 jobs of 1,000 placed) reported
/// running, the shape of `caravan-perf c1m`'s reports.
fn client_updates_apply(c: &mut Criterion) {
    use caravan_engine::model::{AllocClientUpdate, ClientStatus};
    const JOBS: usize = 50;
    const REPORTING_NODES: usize = 200;
    let mut cluster = fleet();
    for j in 0..JOBS {
        let eval = cluster.register(job(&format!("placed{j}"), JobType::Service, 1000, 100, 128));
        cluster.process(&eval);
    }
    let snapshot = cluster.snapshot();
    let updates: Vec<AllocClientUpdate> = snapshot
        .nodes()
        .take(REPORTING_NODES)
        .flat_map(|n| snapshot.allocs_by_node(n.id).map(|a| a.id).collect::<Vec<_>>())
        .map(|alloc_id| AllocClientUpdate {
            alloc_id,
            client_status: ClientStatus::Running,
            client_description: "Tasks are running".into(),
            at_ns: 1,
            task_states: Default::default(),
            deployment_health: None,
        })
        .collect();
    let command = Command::AllocClientUpdate { updates, evals: vec![] };
    let Command::AllocClientUpdate { updates, .. } = &command else { unreachable!() };
    let mut group = c.benchmark_group("client_updates_apply");
    group.throughput(Throughput::Elements(updates.len() as u64));
    group.sample_size(20);
    group.bench_function(format!("per_entry_of_{}", updates.len()), |b| {
        b.iter_batched(
            || SimCluster::from_state((*snapshot).clone(), 1, cluster.now_ns),
            |sim| {
                sim.fsm.apply(snapshot.index() + 1, &command).unwrap();
                sim
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn broker(c: &mut Criterion) {
    use caravan_engine::broker::{BrokerConfig, EvalBroker};
    use caravan_engine::ids::{IdGen, JobKey};
    use caravan_engine::model::{Evaluation, TriggeredBy};
    const EVALS: usize = 1000;
    let mut ids = IdGen::with_seed(9);
    let evals: Vec<Arc<Evaluation>> = (0..EVALS)
        .map(|i| {
            let key = JobKey::new("default", &format!("job-{i}"));
            Arc::new(Evaluation::new(ids.eval(), &key, JobType::Service, (i % 100) as u8 + 1, TriggeredBy::JobRegister))
        })
        .collect();
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(EVALS as u64));
    group.bench_function("enqueue_dequeue_ack_1000", |b| {
        b.iter_batched(
            || {
                let mut broker = EvalBroker::new(BrokerConfig::default());
                broker.set_enabled(true);
                broker
            },
            |mut broker| {
                for e in &evals {
                    broker.enqueue(e.clone(), 0).unwrap();
                }
                while let Some((eval, token)) = broker.dequeue(&[JobType::Service], 0).unwrap() {
                    broker.ack(eval.id, token).unwrap();
                }
                broker
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A client's allocation pull (the body of `NODE_ALLOCS`'s reply before
/// encoding): a node holding 100 allocations of 100 jobs, one placed since
/// the client's last reply, in a state of 1,000 jobs on 10 nodes.
/// `lookup_each` builds it as the server did before (every allocation looked
/// up by id to read its change index), `node_list` as it does now
/// (`State::node_allocs_since`: the node's list carries the index, only the
/// changed allocation is looked up).
fn node_allocs_reply(c: &mut Criterion) {
    use caravan_engine::ids::{AllocId, JobKey};
    use caravan_engine::state::NodeAllocChange;
    const NODES: usize = 10;
    const JOBS: usize = 1000;
    let mut cluster = SimCluster::new(11);
    for i in 0..NODES {
        // Room for exactly 100 allocations of 100 MHz each.
        let n = node(&mut cluster.ids, &format!("n{i}"), "dc1", 10_000, 256 * 1024);
        cluster.add_node(n);
    }
    let place = |cluster: &mut SimCluster, j: usize| {
        let eval = cluster.register(job(&format!("j{j}"), JobType::Service, 1, 100, 128));
        cluster.process(&eval);
    };
    for j in 0..JOBS - 1 {
        place(&mut cluster, j);
    }
    let known_index = cluster.snapshot().index();
    place(&mut cluster, JOBS - 1);
    let snapshot = cluster.snapshot();
    let last = JobKey::new("default", &format!("j{}", JOBS - 1));
    let node_id = snapshot.allocs_by_job(&last).next().expect("the last job is placed").node_id;
    assert_eq!(snapshot.allocs_by_node(node_id).count(), 100);
    let changed = snapshot.node_allocs_since(node_id, known_index).filter(|c| matches!(c, NodeAllocChange::Changed(_)));
    assert_eq!(changed.count(), 1);

    let mut group = c.benchmark_group("node_allocs_reply_100_allocs_1_changed");
    group.bench_function("lookup_each", |b| {
        b.iter(|| {
            let (mut changed, mut unchanged): (Vec<Arc<Allocation>>, Vec<AllocId>) = (Vec::new(), Vec::new());
            for alloc in snapshot.allocs_by_node(black_box(node_id)) {
                if alloc.alloc_modify_index > known_index {
                    changed.push(alloc.clone());
                } else {
                    unchanged.push(alloc.id);
                }
            }
            black_box((changed, unchanged))
        })
    });
    group.bench_function("node_list", |b| {
        b.iter(|| {
            let (mut changed, mut unchanged): (Vec<Arc<Allocation>>, Vec<AllocId>) = (Vec::new(), Vec::new());
            for alloc in snapshot.node_allocs_since(black_box(node_id), known_index) {
                match alloc {
                    NodeAllocChange::Changed(alloc) => changed.push(alloc.clone()),
                    NodeAllocChange::Unchanged(id) => unchanged.push(id),
                }
            }
            black_box((changed, unchanged))
        })
    });
    group.finish();
}

criterion_group!(benches, scoring, snapshots, plan_apply, client_updates_apply, broker, node_allocs_reply);
criterion_main!(benches);
