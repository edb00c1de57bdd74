//! The `c1m` scenario: a simulated fleet registered over the client RPC,
//! `--jobs × --count` allocations submitted through the HTTP API, measured
//! until every allocation has reached its node and been reported running;
//! then the committed state is read back through the API and checked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::cluster::ClusterArgs;
use crate::report::{self, percentile, round3};
use crate::setup::{self, FleetArgs};
use crate::{api, machine};

/// Each allocation's ask (MHz, MiB), as the `engine` scenario's.
const TASK_CPU_MHZ: u32 = 100;
const TASK_MEMORY_MB: u32 = 128;

/// How often progress is sampled for the throughput plot.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

#[derive(clap::Args, Debug)]
pub(crate) struct C1mArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    #[arg(long, default_value_t = 1_000)]
    jobs: usize,
    #[arg(long, default_value_t = 1_000)]
    count: u32,
    /// `service` or `batch`.
    #[arg(long, default_value = "service")]
    job_type: String,
    /// Each job's `update { min_healthy_time }` (ms): how long the fleet
    /// waits after an allocation runs before reporting it healthy to its
    /// deployment. Unset: the job's default (Nomad's 10 s).
    #[arg(long)]
    min_healthy_time_ms: Option<u64>,
    /// HTTP clients registering jobs at once.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// Give up after this many seconds of submitting and waiting.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
    /// Write nothing to perf/results/.
    #[arg(long)]
    no_save: bool,
}

pub(crate) fn run(args: &C1mArgs) -> anyhow::Result<()> {
    if !matches!(args.job_type.as_str(), "service" | "batch") {
        bail!("--job-type must be service or batch, not {:?}", args.job_type);
    }
    let per_node = args.fleet.node_cpu_mhz / u64::from(TASK_CPU_MHZ);
    let wanted = args.jobs as u64 * u64::from(args.count);
    if wanted > args.fleet.nodes as u64 * per_node {
        bail!("{wanted} allocations cannot fit on {} nodes of {per_node} each", args.fleet.nodes);
    }
    let quiet = args.json;
    let running = setup::start(&args.cluster, &args.fleet, quiet)?;
    let result = measure(args, &running, wanted, quiet);
    running.fleet.stop();
    let mut result = result?;
    result["machine"] = machine::facts();
    let scenario = "c1m";
    if !args.no_save {
        let dir = report::folder(scenario)?;
        write_plots(&dir, &result)?;
        result["report"] = json!(dir.display().to_string());
    }
    strip_series(&mut result);
    machine::save(scenario, &result, args.no_save, args.json)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    let placed = result["allocs_placed"].as_u64().unwrap_or(0);
    let ran = result["allocs_running"].as_u64().unwrap_or(0);
    if placed != wanted || ran != wanted || result["overcommitted_nodes"].as_u64() != Some(0) {
        bail!(
            "placed {placed} and running {ran} of {wanted} allocations, {} nodes over-committed",
            result["overcommitted_nodes"]
        );
    }
    let (failed, unfinished) = (&result["deployments_failed"], &result["deployments_unfinished"]);
    if failed.as_u64() != Some(0) || unfinished.as_u64() != Some(0) {
        bail!("{failed} deployments failed and {unfinished} did not finish (of {} jobs)", args.jobs);
    }
    Ok(())
}

fn measure(args: &C1mArgs, running: &setup::Running, wanted: u64, quiet: bool) -> anyhow::Result<serde_json::Value> {
    let shared = &running.fleet.shared;
    let api = &running.api;
    let applied_before = api.gauge("nomad.raft.applied_index")?;
    let refreshes_before = api.gauge("caravan.worker.plan_refreshes")?;
    let usage_before = setup::leader_usage(&running.cluster);
    let jobs: Vec<String> = (0..args.jobs).map(|j| format!("c1m-{j}")).collect();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_s);
    let start_unix_ns = setup::unix_now_ns();
    let origin_s = shared.at_s(start);
    let submitted_s = std::sync::Mutex::new(0.0_f64);
    let next = AtomicUsize::new(0);
    let submitted = AtomicUsize::new(0);
    let bar_placed = setup::progress(wanted, "placed", quiet);
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let outcome = std::thread::scope(|scope| -> anyhow::Result<()> {
        let submitters: Vec<_> = (0..args.submitters.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = jobs.get(j) else { return Ok(()) };
                        let mut spec = api::job(id, &args.job_type, args.count, TASK_CPU_MHZ, TASK_MEMORY_MB);
                        if let Some(ms) = args.min_healthy_time_ms {
                            spec["Update"] = json!({ "MinHealthyTime": ms.saturating_mul(1_000_000) });
                        }
                        api.register(&spec).with_context(|| format!("registering {id}"))?;
                        submitted.fetch_add(1, Ordering::Relaxed);
                        let mut last = submitted_s.lock().expect("submitted_s poisoned");
                        *last = last.max(start.elapsed().as_secs_f64());
                    }
                })
            })
            .collect();
        loop {
            let seen = shared.allocs_seen.load(Ordering::Relaxed);
            let ran = shared.allocs_running.load(Ordering::Relaxed);
            samples.push((start.elapsed().as_secs_f64(), seen, ran));
            bar_placed.set_position(seen);
            // Every allocation a node received, replacements of lost ones
            // included, must be running: counting to `wanted` alone ends
            // early when some were rescheduled.
            if seen >= wanted && ran >= seen {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        for s in submitters {
            s.join().map_err(|_| anyhow::anyhow!("a submitting thread panicked"))??;
        }
        Ok(())
    });
    bar_placed.finish_and_clear();
    outcome?;
    let wall_s = start.elapsed().as_secs_f64();
    let usage_after = setup::leader_usage(&running.cluster);
    let applied_after = api.gauge("nomad.raft.applied_index")?;
    let refreshes_after = api.gauge("caravan.worker.plan_refreshes")?;

    // The fleet's own timeline: when the last allocation reached its node
    // and when the last running report was acknowledged.
    let progress = shared.jobs();
    let ours = jobs.iter().filter_map(|id| progress.get(id.as_str()));
    let (mut placed_s, mut running_s) = (0.0_f64, 0.0_f64);
    for p in ours {
        placed_s = placed_s.max(p.last_seen_s - origin_s);
        running_s = running_s.max(p.last_running_s - origin_s);
    }
    let seen = shared.allocs_seen.load(Ordering::Relaxed);
    let ran = shared.allocs_running.load(Ordering::Relaxed);
    if seen < wanted {
        placed_s = wall_s;
    }
    if ran < wanted {
        running_s = wall_s;
    }

    // Service jobs roll out under deployments, which end once the fleet
    // has reported every allocation healthy (after `min_healthy_time`).
    let deployments = if args.job_type == "service" {
        setup::wait_deployments(api, &jobs, start, deadline, quiet)?
    } else {
        setup::Deployments::default()
    };

    let verified = setup::verify(api, &jobs, &running.nodes)?;
    let eval_times = setup::eval_latencies_ms(api, &jobs)?;
    let evals = &eval_times.latencies_ms;
    let evals_done_s = (eval_times.last_done_unix_ns - start_unix_ns).max(0) as f64 / 1e9;
    let node_allocs: Vec<u32> = shared.node_allocs.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let nodes_used = node_allocs.iter().filter(|n| **n > 0).count();
    let raft_entries = applied_after - applied_before;
    let (cpu_s, rss_mb, rss_peak_mb) = match (usage_before, usage_after) {
        (Some((cpu0, _, _)), Some((cpu1, rss, peak))) => (Some(cpu1 - cpu0), Some(rss), Some(peak)),
        _ => (None, None, None),
    };
    let mut result = json!({
        "scenario": "c1m",
        "servers": running.cluster.rpc.len(),
        "nodes": args.fleet.nodes,
        "jobs": args.jobs,
        "count": args.count,
        "job_type": args.job_type,
        "allocs_wanted": wanted,
        "allocs_placed": verified.allocs_placed,
        "allocs_running": verified.allocs_running,
        "allocs_seen_by_nodes": seen,
        "placed_s": round3(placed_s),
        "placements_per_s": (seen.min(wanted) as f64 / placed_s.max(1e-9)).round(),
        "running_s": round3(running_s),
        "running_per_s": (ran.min(wanted) as f64 / running_s.max(1e-9)).round(),
        "eval_latency_ms_p50": round3(percentile(evals, 0.50)),
        "eval_latency_ms_p99": round3(percentile(evals, 0.99)),
        "eval_latency_ms_max": round3(percentile(evals, 1.0)),
        "submitted_s": round3(submitted_s.into_inner().expect("submitted_s poisoned")),
        "evals_done_s": round3(evals_done_s),
        "evals_complete": evals.len(),
        "plan_rejections": (refreshes_after - refreshes_before).round(),
        "raft_entries": raft_entries,
        "raft_entries_per_s": (raft_entries / running_s.max(1e-9)).round(),
        "overcommitted_nodes": verified.overcommitted_nodes,
        "nodes_used": nodes_used,
        "register_s": round3(running.register_s),
        "rpc_errors": shared.rpc_errors.load(Ordering::Relaxed),
        "heartbeats": shared.heartbeats.load(Ordering::Relaxed),
        "heartbeat_late_ms_max": shared.heartbeat_late_ms_max.load(Ordering::Relaxed),
        "heartbeat_rtt_ms_max": shared.heartbeat_rtt_ms_max.load(Ordering::Relaxed),
        "server_cpu_s": cpu_s.map(round3),
        "server_cpu_cores": cpu_s.map(|c| round3(c / wall_s)),
        "server_rss_mb": rss_mb.map(f64::round),
        "server_rss_peak_mb": rss_peak_mb.map(f64::round),
        "server_bytes_per_alloc_and_node_bound": rss_mb.map(|rss| {
            // An upper bound on the budget's shape (1 KiB per allocation +
            // 8 KiB per node): the whole RSS, process overhead included.
            let budget_mb = (wanted as f64 * 1024.0 + args.fleet.nodes as f64 * 8192.0) / 1048576.0;
            round3(rss / budget_mb)
        }),
        "series": {
            "t_s": samples.iter().map(|s| round3(s.0)).collect::<Vec<_>>(),
            "placed": samples.iter().map(|s| s.1).collect::<Vec<_>>(),
            "running": samples.iter().map(|s| s.2).collect::<Vec<_>>(),
            "node_allocs": node_allocs,
            "eval_latency_ms": evals,
        },
    });
    // Past `json!`'s recursion limit in the literal above.
    result["deployments_successful"] = json!(deployments.successful);
    result["deployments_failed"] = json!(deployments.failed);
    result["deployments_unfinished"] = json!(deployments.unfinished);
    result["deployments_s"] = json!(deployments.settled_s.map(round3));
    result["allocs_lost"] = json!(verified.allocs_lost);
    result["node_update_evals"] = json!(eval_times.node_update_evals);
    result["allocs_reported_healthy"] = json!(shared.allocs_healthy.load(Ordering::Relaxed));
    result["allocs_reported_unhealthy"] = json!(shared.allocs_unhealthy.load(Ordering::Relaxed));
    result["allocs_replies"] = json!(shared.allocs_replies.load(Ordering::Relaxed));
    result["allocs_reply_bytes_mean"] = json!(mean(&shared.allocs_reply_bytes, &shared.allocs_replies));
    result["update_requests"] = json!(shared.update_requests.load(Ordering::Relaxed));
    result["update_request_bytes_mean"] = json!(mean(&shared.update_request_bytes, &shared.update_requests));
    Ok(result)
}

fn write_plots(dir: &std::path::Path, result: &serde_json::Value) -> anyhow::Result<()> {
    let series = &result["series"];
    let list = |name: &str| -> Vec<f64> {
        series[name].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
    };
    let t = list("t_s");
    let rate = |counts: &[f64]| -> Vec<(f64, f64)> {
        // Per-interval rate: allocations per second between samples.
        t.windows(2)
            .zip(counts.windows(2))
            .map(|(tw, cw)| (tw[1], (cw[1] - cw[0]) / (tw[1] - tw[0]).max(1e-9)))
            .collect()
    };
    let (placed, ran) = (list("placed"), list("running"));
    report::lines(
        &dir.join("throughput.svg"),
        "c1m: allocations per second over time",
        "seconds since the first job was submitted",
        "allocations / s",
        &[("placed on nodes", rate(&placed)), ("reported running", rate(&ran))],
    )?;
    report::lines(
        &dir.join("progress.svg"),
        "c1m: allocations over time",
        "seconds since the first job was submitted",
        "allocations",
        &[
            ("placed on nodes", t.iter().copied().zip(placed.iter().copied()).collect()),
            ("reported running", t.iter().copied().zip(ran.iter().copied()).collect()),
        ],
    )?;
    report::cdf(
        &dir.join("eval_latency_cdf.svg"),
        "c1m: evaluation latency (create → complete)",
        &list("eval_latency_ms"),
    )?;
    let per_node: Vec<u32> = list("node_allocs").iter().map(|v| *v as u32).collect();
    let bucket = (per_node.iter().copied().max().unwrap_or(0) / 40).max(1);
    report::histogram(
        &dir.join("allocs_per_node.svg"),
        "c1m: allocations per node (bin packing)",
        "allocations on the node",
        &per_node,
        bucket,
    )?;
    Ok(())
}

/// The raw series go to the plots, not into the JSON line.
fn strip_series(result: &mut serde_json::Value) {
    if let Some(obj) = result.as_object_mut() {
        obj.remove("series");
    }
}

/// `total / count`, rounded; 0 for no count.
fn mean(total: &AtomicU64, count: &AtomicU64) -> f64 {
    let count = count.load(Ordering::Relaxed);
    if count == 0 { 0.0 } else { (total.load(Ordering::Relaxed) as f64 / count as f64).round() }
}
