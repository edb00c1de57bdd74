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

criterion_group!(benches, scoring, snapshots, plan_apply, broker);
criterion_main!(benches);
