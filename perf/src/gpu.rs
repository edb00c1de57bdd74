//! The `gpu` scenario: a fleet of 8-GPU nodes (two NVLink islands of 4)
//! takes a seeded mix of 1-, 2-, 4- and 8-GPU jobs and 4 × 8-GPU gang jobs,
//! in waves, until the first request cannot be placed. Reports how full the
//! fleet was at that moment, how fragmented its islands were, and checks the
//! committed state for any GPU instance assigned twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use caravan_engine::clock::SystemClock;
use caravan_engine::fixtures::{gpu_job, node};
use caravan_engine::fsm::Command;
use caravan_engine::ids::{IdGen, JobKey};
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_engine::state::State;
use caravan_gpu::{GpuBackend, SimulatedBackend, SimulatedGpus, to_node_devices};
use serde_json::json;

use crate::machine;

#[derive(clap::Args, Debug)]
pub(crate) struct GpuArgs {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u16,
    #[arg(long, default_value_t = 4)]
    island_size: u16,
    /// Jobs registered per wave before waiting for the pipeline to drain;
    /// smaller waves locate the first failure more precisely.
    #[arg(long, default_value_t = 100)]
    wave: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    no_save: bool,
}

/// Upper bound on waves: a fleet fills long before this, and a run that
/// never fails (a bug) must still stop.
const WAVES_MAX: usize = 100_000;

/// One request of the mix: `count` allocations of `gpus` GPUs, maybe gang.
#[derive(Debug, Clone, Copy)]
struct Request {
    count: u32,
    gpus: u32,
    gang: bool,
}

/// 40 % 1-GPU, 25 % 2-GPU, 20 % 4-GPU, 10 % 8-GPU, 5 % gangs of 4 × 8.
fn draw(rng: &mut fastrand::Rng) -> Request {
    match rng.u32(0..100) {
        0..40 => Request { count: 1, gpus: 1, gang: false },
        40..65 => Request { count: 1, gpus: 2, gang: false },
        65..85 => Request { count: 1, gpus: 4, gang: false },
        85..95 => Request { count: 1, gpus: 8, gang: false },
        _ => Request { count: 4, gpus: 8, gang: true },
    }
}

struct Occupancy {
    gpus_total: usize,
    gpus_used: usize,
    islands_total: usize,
    islands_partial: usize,
    assigned_twice: usize,
}

/// GPU use per node and island, from committed state.
fn occupancy(state: &State) -> Occupancy {
    let mut o = Occupancy { gpus_total: 0, gpus_used: 0, islands_total: 0, islands_partial: 0, assigned_twice: 0 };
    for node in state.nodes() {
        let mut used: BTreeMap<&str, usize> = BTreeMap::new();
        for alloc in state.allocs_by_node(node.id).filter(|a| !a.is_terminal()) {
            for d in &alloc.resources.devices {
                for id in &d.instance_ids {
                    *used.entry(id).or_default() += 1;
                }
            }
        }
        o.assigned_twice += used.values().filter(|n| **n > 1).count();
        let mut islands: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
        for group in &node.resources.devices {
            for inst in &group.instances {
                o.gpus_total += 1;
                let in_use = used.contains_key(&*inst.id);
                o.gpus_used += usize::from(in_use);
                let e = islands.entry(inst.link_island.unwrap_or(u16::MAX)).or_default();
                e.0 += 1;
                e.1 += usize::from(in_use);
            }
        }
        o.islands_total += islands.len();
        o.islands_partial += islands.values().filter(|(size, busy)| *busy > 0 && busy < size).count();
    }
    o
}

pub(crate) fn run(args: &GpuArgs) -> anyhow::Result<()> {
    let mut config = LocalConfig::default();
    if let Some(w) = args.workers {
        config.workers = w;
    }
    let workers = config.workers;
    let cluster = LocalCluster::start(config, Arc::new(SystemClock));
    let mut ids = IdGen::with_seed(args.seed);
    for i in 0..args.nodes {
        // The agent's own path: a simulated backend fingerprints the GPUs
        // and the same conversion as for NVML builds the node's devices.
        let name = format!("gpu-{i}");
        let gpus = SimulatedGpus {
            count: u32::from(args.gpus_per_node),
            nvlink_island_size: u32::from(args.island_size),
            numa_nodes: u32::from(args.gpus_per_node / args.island_size.max(1)).max(1),
            seed: args.seed,
            host: name.clone(),
            ..SimulatedGpus::h200_8x()
        };
        let backend = SimulatedBackend::new(gpus)?;
        let mut n = node(&mut ids, &name, "dc1", 128_000, 2 * 1024 * 1024);
        n.resources.devices = to_node_devices(&backend.fingerprint()?, &[]);
        n.compute_class();
        cluster.commit(&Command::NodeRegister { node: n, evals: vec![] })?;
    }
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_s);
    let mut submitted: Vec<(JobKey, Request)> = Vec::new();
    let mut first_failure: Option<Request> = None;
    for _ in 0..WAVES_MAX {
        let wave_start = submitted.len();
        for _ in 0..args.wave {
            let r = draw(&mut rng);
            let mut j = gpu_job(&format!("train-{}", submitted.len()), r.count, r.gpus);
            j.task_groups[0].gang = r.gang;
            submitted.push((j.key(), r));
            cluster.register_job(j)?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !cluster.wait_idle(left) {
            bail!("pipeline not idle after {} s", args.timeout_s);
        }
        let snapshot = cluster.store.snapshot();
        first_failure = submitted[wave_start..]
            .iter()
            .find(|(key, r)| snapshot.allocs_by_job(key).filter(|a| !a.is_terminal()).count() < r.count as usize)
            .map(|(_, r)| *r);
        if first_failure.is_some() {
            break;
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let Some(failed) = first_failure else { bail!("no request failed within {WAVES_MAX} waves") };
    let snapshot = cluster.store.snapshot();
    let o = occupancy(&snapshot);
    let allocs_placed = snapshot.allocs().filter(|a| !a.is_terminal()).count();
    let (rss_mb, _) = machine::rss_mb();
    let result = json!({
        "scenario": "gpu",
        "nodes": args.nodes,
        "gpus": o.gpus_total,
        "workers": workers,
        "jobs_submitted": submitted.len(),
        "allocs_placed": allocs_placed,
        "elapsed_s": (elapsed_s * 1000.0).round() / 1000.0,
        "placements_per_s": (allocs_placed as f64 / elapsed_s).round(),
        "gpu_fill_at_first_failure": (o.gpus_used as f64 / o.gpus_total.max(1) as f64 * 1e4).round() / 1e4,
        "fragmented_island_fraction": (o.islands_partial as f64 / o.islands_total.max(1) as f64 * 1e4).round() / 1e4,
        "instances_assigned_twice": o.assigned_twice,
        "first_failure": format!("{} x {} GPU{}", failed.count, failed.gpus, if failed.gang { " gang" } else { "" }),
        "rss_mb": rss_mb.round(),
        "machine": machine::facts(),
    });
    cluster.shutdown();
    machine::save("gpu", &result, args.no_save, args.json)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    if o.assigned_twice > 0 {
        bail!("{} GPU instances assigned twice", o.assigned_twice);
    }
    Ok(())
}
