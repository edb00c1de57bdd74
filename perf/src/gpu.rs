//! The `gpu` scenario: a fleet of 8-GPU nodes (two NVLink islands of 4)
//! takes a seeded mix of 1-, 2-, 4- and 8-GPU jobs and 4 × 8-GPU gang jobs,
//! in waves, until the first request cannot be placed. Reports how full the
//! fleet was at that moment, how fragmented its islands were, and checks the
//! committed state for any GPU instance assigned twice. After every wave it
//! samples the fleet's GPU fill and fragmented-island fraction for a plot of
//! both over the run (`fragmentation.svg`).

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

use crate::{machine, report};

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
    /// Non-terminal allocations.
    allocs_live: usize,
    gpus_total: usize,
    gpus_used: usize,
    islands_total: usize,
    islands_partial: usize,
    assigned_twice: usize,
}

/// GPU use per node and island, from committed state.
fn occupancy(state: &State) -> Occupancy {
    let mut o = Occupancy {
        allocs_live: 0,
        gpus_total: 0,
        gpus_used: 0,
        islands_total: 0,
        islands_partial: 0,
        assigned_twice: 0,
    };
    for node in state.nodes() {
        let mut used: BTreeMap<&str, usize> = BTreeMap::new();
        for alloc in state.allocs_by_node(node.id).filter(|a| !a.is_terminal()) {
            o.allocs_live += 1;
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

impl Occupancy {
    fn gpu_fill(&self) -> f64 {
        self.gpus_used as f64 / self.gpus_total.max(1) as f64
    }

    fn fragmented_island_fraction(&self) -> f64 {
        self.islands_partial as f64 / self.islands_total.max(1) as f64
    }
}

/// The fleet after one wave, for the fragmentation plot.
#[derive(Debug, Clone, Copy)]
struct Sample {
    allocs_live: usize,
    gpu_fill: f64,
    fragmented_island_fraction: f64,
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
    let mut samples = vec![Sample { allocs_live: 0, gpu_fill: 0.0, fragmented_island_fraction: 0.0 }];
    // Sampling reads every node after each wave: not part of the pipeline's
    // time, so it is taken off `elapsed_s`.
    let mut sampling = Duration::ZERO;
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
        let sampled = Instant::now();
        let o = occupancy(&snapshot);
        samples.push(Sample {
            allocs_live: o.allocs_live,
            gpu_fill: o.gpu_fill(),
            fragmented_island_fraction: o.fragmented_island_fraction(),
        });
        sampling += sampled.elapsed();
        first_failure = submitted[wave_start..]
            .iter()
            .find(|(key, r)| snapshot.allocs_by_job(key).filter(|a| !a.is_terminal()).count() < r.count as usize)
            .map(|(_, r)| *r);
        if first_failure.is_some() {
            break;
        }
    }
    let elapsed_s = start.elapsed().saturating_sub(sampling).as_secs_f64();
    let Some(failed) = first_failure else { bail!("no request failed within {WAVES_MAX} waves") };
    let snapshot = cluster.store.snapshot();
    let o = occupancy(&snapshot);
    let allocs_placed = o.allocs_live;
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
        "gpu_fill_at_first_failure": (o.gpu_fill() * 1e4).round() / 1e4,
        "fragmented_island_fraction": (o.fragmented_island_fraction() * 1e4).round() / 1e4,
        "samples": samples.len(),
        "instances_assigned_twice": o.assigned_twice,
        "first_failure": format!("{} x {} GPU{}", failed.count, failed.gpus, if failed.gang { " gang" } else { "" }),
        "rss_mb": rss_mb.round(),
        "machine": machine::facts(),
    });
    cluster.shutdown();
    let mut result = result;
    if !args.no_save {
        let dir = report::folder("gpu")?;
        write_plot(&dir, &samples)?;
        result["report"] = json!(dir.display().to_string());
    }
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

/// `fragmentation.svg`: GPU fill and the fraction of NVLink islands partly
/// in use after each wave, over the allocations placed so far.
fn write_plot(dir: &std::path::Path, samples: &[Sample]) -> anyhow::Result<()> {
    let over_allocs =
        |y: fn(&Sample) -> f64| -> Vec<(f64, f64)> { samples.iter().map(|s| (s.allocs_live as f64, y(s))).collect() };
    report::lines(
        &dir.join("fragmentation.svg"),
        "gpu: fill and fragmentation as jobs are placed",
        "allocations placed",
        "fraction",
        &[
            ("GPUs in use", over_allocs(|s| s.gpu_fill)),
            ("NVLink islands partly in use", over_allocs(|s| s.fragmented_island_fraction)),
        ],
    )
}
