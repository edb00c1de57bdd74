//! The `latency` scenario: a steady background of job registrations (each
//! one evaluation) at `--background-evals-per-s`, and meanwhile `--probes`
//! single-allocation jobs registered one by one; for each probe, the time
//! from sending its registration to its allocation reaching its node (the
//! plan committed and the node's blocking query answered) and to the
//! node's running report being acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::cluster::ClusterArgs;
use crate::report::{self, percentile, round3};
use crate::setup::{self, FleetArgs};
use crate::{api, machine};

/// Background jobs cycled through: each registration flips one job's count
/// between 1 and 2, so every request is a change (an evaluation) and the
/// background never holds more than 2 × this many allocations.
const BACKGROUND_JOBS: usize = 200;

/// Threads sending the background load: a registration takes a few ms
/// (one raft commit), so a rate of 1,000/s needs several in flight.
const BACKGROUND_THREADS: usize = 8;

/// How long a probe may take to reach running before it counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Background evaluations per second (job registrations).
    #[arg(long, default_value_t = 1_000)]
    background_evals_per_s: u64,
    /// Single-allocation jobs measured.
    #[arg(long, default_value_t = 500)]
    probes: usize,
    /// Pause between probes (ms).
    #[arg(long, default_value_t = 20)]
    probe_interval_ms: u64,
    /// Stop probing after this many seconds; probes not sent count as lost.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    no_save: bool,
}

pub(crate) fn run(args: &LatencyArgs) -> anyhow::Result<()> {
    let running = setup::start(&args.cluster, &args.fleet, args.json)?;
    let result = measure(args, &running);
    running.fleet.stop();
    let mut result = result?;
    result["machine"] = machine::facts();
    let scenario = "latency";
    if !args.no_save {
        let dir = report::folder(scenario)?;
        let list = |name: &str| -> Vec<f64> {
            result["series"][name].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default()
        };
        report::cdf(&dir.join("register_to_placed_cdf.svg"), "latency: register → on the node", &list("placed_ms"))?;
        report::cdf(&dir.join("register_to_running_cdf.svg"), "latency: register → running", &list("running_ms"))?;
        result["report"] = json!(dir.display().to_string());
    }
    if let Some(obj) = result.as_object_mut() {
        obj.remove("series");
    }
    machine::save(scenario, &result, args.no_save, args.json)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    if result["probes_lost"].as_u64() != Some(0) {
        bail!("{} probes never ran", result["probes_lost"]);
    }
    Ok(())
}

fn measure(args: &LatencyArgs, running: &setup::Running) -> anyhow::Result<serde_json::Value> {
    let shared = &running.fleet.shared;
    let api = &running.api;
    let stop = AtomicBool::new(false);
    let background_sent = AtomicU64::new(0);
    let background_errors = AtomicU64::new(0);
    let per_thread_interval =
        Duration::from_secs_f64(BACKGROUND_THREADS as f64 / args.background_evals_per_s.max(1) as f64);
    let mut placed_ms = Vec::with_capacity(args.probes);
    let mut running_ms = Vec::with_capacity(args.probes);
    let mut lost = 0u64;
    let bar = setup::progress(args.probes as u64, "probes", args.json);
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        if args.background_evals_per_s > 0 {
            for t in 0..BACKGROUND_THREADS {
                let (stop, sent, errors) = (&stop, &background_sent, &background_errors);
                scope.spawn(move || {
                    let mut next = Instant::now();
                    let mut k = t;
                    while !stop.load(Ordering::Relaxed) {
                        let job = api::job(
                            &format!("bg-{}", k % BACKGROUND_JOBS),
                            "service",
                            1 + (k / BACKGROUND_JOBS % 2) as u32,
                            100,
                            128,
                        );
                        match api.register(&job) {
                            Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                        k += BACKGROUND_THREADS;
                        next += per_thread_interval;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            // Behind: do not burst to catch up.
                            next = now;
                        }
                    }
                });
            }
        }
        let result = probe(args, running, &bar, &mut placed_ms, &mut running_ms, &mut lost);
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    bar.finish_and_clear();
    let elapsed_s = started.elapsed().as_secs_f64();
    placed_ms.sort_by(f64::total_cmp);
    running_ms.sort_by(f64::total_cmp);
    let sent = background_sent.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "latency",
        "servers": running.cluster.rpc.len(),
        "nodes": args.fleet.nodes,
        "probes": args.probes,
        "probes_lost": lost,
        "background_evals_per_s_target": args.background_evals_per_s,
        "background_evals_per_s": (sent as f64 / elapsed_s).round(),
        "background_errors": background_errors.load(Ordering::Relaxed),
        "register_to_placed_ms_p50": round3(percentile(&placed_ms, 0.50)),
        "register_to_placed_ms_p99": round3(percentile(&placed_ms, 0.99)),
        "register_to_placed_ms_p999": round3(percentile(&placed_ms, 0.999)),
        "register_to_placed_ms_max": round3(percentile(&placed_ms, 1.0)),
        "register_to_running_ms_p50": round3(percentile(&running_ms, 0.50)),
        "register_to_running_ms_p99": round3(percentile(&running_ms, 0.99)),
        "register_to_running_ms_p999": round3(percentile(&running_ms, 0.999)),
        "update_interval_ms": args.fleet.update_interval_ms,
        "rpc_errors": shared.rpc_errors.load(Ordering::Relaxed),
        "series": { "placed_ms": placed_ms, "running_ms": running_ms },
    }))
}

/// Register the probes one at a time and wait for each to run.
fn probe(
    args: &LatencyArgs,
    running: &setup::Running,
    bar: &indicatif::ProgressBar,
    placed_ms: &mut Vec<f64>,
    running_ms: &mut Vec<f64>,
    lost: &mut u64,
) -> anyhow::Result<()> {
    let shared = &running.fleet.shared;
    let gives_up = Instant::now() + Duration::from_secs(args.timeout_s);
    for i in 0..args.probes {
        if Instant::now() > gives_up {
            *lost += (args.probes - i) as u64;
            break;
        }
        let id = format!("lat-{i}");
        let sent = Instant::now();
        let sent_s = shared.at_s(sent);
        running.api.register(&api::job(&id, "batch", 1, 100, 128)).with_context(|| format!("registering {id}"))?;
        let deadline = sent + PROBE_TIMEOUT;
        loop {
            if let Some(p) = shared.job(&id)
                && p.running > 0
            {
                placed_ms.push((p.first_seen_s - sent_s) * 1000.0);
                running_ms.push((p.last_running_s - sent_s) * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                *lost += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        bar.inc(1);
        std::thread::sleep(Duration::from_millis(args.probe_interval_ms));
    }
    Ok(())
}
