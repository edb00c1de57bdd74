//! The `engine` scenario: register `--nodes` nodes and `--jobs` jobs of
//! `--count` allocations into an in-process cluster and measure until every
//! eval is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caravan_engine::clock::SystemClock;
use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::Command;
use caravan_engine::ids::IdGen;
use caravan_engine::local::{LocalCluster, LocalConfig};
use caravan_engine::model::JobType;
use caravan_engine::state::usage_from_allocs;
use caravan_engine::worker::WorkerStats;
use caravan_net::http::Server;
use caravan_net::server::{RaftServer, ServerConfig};
use serde_json::json;
use std::sync::atomic::Ordering;

use crate::machine;

#[derive(clap::Args, Debug)]
pub(crate) struct EngineArgs {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    #[arg(long, default_value_t = 1_000)]
    jobs: usize,
    #[arg(long, default_value_t = 1_000)]
    count: u32,
    /// Scheduler workers; default: one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// `service` or `batch`.
    #[arg(long, default_value = "service")]
    job_type: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
    /// Do not write perf/results/.
    #[arg(long)]
    no_save: bool,
    /// Commit through raft: one server with the durable redb log (in a
    /// temporary data dir), instead of the in-memory serial log.
    #[arg(long)]
    raft: bool,
    /// With `--raft`: servers in the cluster (all in this process, raft
    /// between them over QUIC on loopback); jobs go to the leader.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Repeat the scenario this many times (fresh cluster each) and report
    /// the median run, with every run's placements/s alongside.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

/// Node size: room for 64 × 1000 = 64,000 allocations of 100 MHz on a
/// 10,000-node fleet with headroom, so every allocation fits.
const NODE_CPU_MHZ: u64 = 64_000;
const NODE_MEMORY_MB: u64 = 256 * 1024;
const TASK_CPU_MHZ: u32 = 100;
const TASK_MEMORY_MB: u32 = 128;

pub(crate) fn run(args: &EngineArgs) -> anyhow::Result<()> {
    let mut results = Vec::with_capacity(args.runs.max(1));
    for _ in 0..args.runs.max(1) {
        results.push(run_once(args)?);
    }
    let rate = |v: &serde_json::Value| v["placements_per_s"].as_f64().unwrap_or(0.0);
    let mut rates: Vec<f64> = results.iter().map(rate).collect();
    results.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mut result = results.swap_remove(results.len() / 2);
    if rates.len() > 1 {
        rates.sort_by(f64::total_cmp);
        result["runs_placements_per_s"] = json!(rates);
    }
    machine::save(if args.raft { "engine-raft" } else { "engine" }, &result, args.no_save, args.json)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    let placed = result["allocs_placed"].as_u64().unwrap_or(0);
    let wanted = result["allocs_wanted"].as_u64().unwrap_or(0);
    if placed != wanted || result["overcommitted_nodes"].as_u64() != Some(0) {
        bail!("placed {placed} of {wanted} allocations, {} nodes over-committed", result["overcommitted_nodes"]);
    }
    Ok(())
}

/// What a run measured on either kind of cluster.
struct Measured {
    elapsed_s: f64,
    snapshot: caravan_engine::state::Snapshot,
    worker_stats: Vec<Arc<WorkerStats>>,
    /// On the leader, during the measured part.
    log_fsyncs: Option<u64>,
    /// Raft log entries committed during the measured part.
    raft_entries: Option<u64>,
}

/// One run on a fresh cluster; the JSON result.
fn run_once(args: &EngineArgs) -> anyhow::Result<serde_json::Value> {
    let job_type = JobType::parse(&args.job_type).with_context(|| format!("unknown job type {:?}", args.job_type))?;
    let capacity = args.nodes as u64 * (NODE_CPU_MHZ / u64::from(TASK_CPU_MHZ));
    let wanted = args.jobs as u64 * u64::from(args.count);
    if wanted > capacity {
        bail!("{wanted} allocations cannot fit on {} nodes (capacity {capacity})", args.nodes);
    }
    let workers = args.workers.unwrap_or(LocalConfig::default().workers);
    let (rss_before_mb, _) = machine::rss_mb();
    let measured = if args.raft { run_raft(args, job_type, workers)? } else { run_local(args, job_type, workers)? };
    let (rss_mb, rss_peak_mb) = machine::rss_mb();
    let Measured { elapsed_s, snapshot, worker_stats, log_fsyncs, raft_entries } = measured;
    let allocs_placed = snapshot.allocs().filter(|a| !a.is_terminal()).count() as u64;
    let overcommitted_nodes = snapshot
        .nodes()
        .filter(|n| {
            usage_from_allocs(n, snapshot.allocs_by_node(n.id).filter(|a| !a.is_terminal()).map(|a| &**a)).is_err()
        })
        .count();
    let sum = |f: fn(&WorkerStats) -> u64| worker_stats.iter().map(|s| f(s)).sum::<u64>();
    let mut latencies_ms: Vec<f64> = worker_stats
        .iter()
        .flat_map(|s| s.eval_latency_us.lock().expect("stats poisoned").clone())
        .map(|us| us as f64 / 1000.0)
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| crate::report::percentile(&latencies_ms, p);
    let result = json!({
        "scenario": if args.raft { "engine-raft" } else { "engine" },
        "nodes": args.nodes,
        "jobs": args.jobs,
        "count": args.count,
        "job_type": job_type.as_str(),
        "workers": workers,
        "allocs_wanted": wanted,
        "allocs_placed": allocs_placed,
        "elapsed_s": (elapsed_s * 1000.0).round() / 1000.0,
        "placements_per_s": (allocs_placed as f64 / elapsed_s).round(),
        "evals_processed": sum(|s| s.evals_processed.load(Ordering::Relaxed)),
        "eval_latency_ms_p50": pct(0.50),
        "eval_latency_ms_p99": pct(0.99),
        "eval_latency_ms_max": pct(1.0),
        "plan_rejections": sum(|s| s.plan_refreshes.load(Ordering::Relaxed)),
        "servers": if args.raft { args.servers.max(1) } else { 0 },
        "raft_entries": raft_entries,
        "raft_entries_per_s": raft_entries.map(|n| (n as f64 / elapsed_s).round()),
        "log_fsyncs": log_fsyncs,
        "log_fsyncs_per_s": log_fsyncs.map(|n| (n as f64 / elapsed_s).round()),
        "overcommitted_nodes": overcommitted_nodes,
        "rss_mb": rss_mb.round(),
        "rss_peak_mb": rss_peak_mb.round(),
        "rss_growth_mb": (rss_mb - rss_before_mb).round(),
        "machine": machine::facts(),
    });
    Ok(result)
}

fn run_local(args: &EngineArgs, job_type: JobType, workers: usize) -> anyhow::Result<Measured> {
    let config = LocalConfig { workers, ..LocalConfig::default() };
    let cluster = LocalCluster::start(config, Arc::new(SystemClock));
    let mut ids = IdGen::with_seed(7);
    for i in 0..args.nodes {
        let n = node(&mut ids, &format!("node-{i}"), "dc1", NODE_CPU_MHZ, NODE_MEMORY_MB);
        cluster.commit(&Command::NodeRegister { node: n, evals: vec![] })?;
    }
    let start = Instant::now();
    for j in 0..args.jobs {
        cluster.register_job(job(&format!("job-{j}"), job_type, args.count, TASK_CPU_MHZ, TASK_MEMORY_MB))?;
    }
    let idle = cluster.wait_idle(Duration::from_secs(args.timeout_s));
    let elapsed_s = start.elapsed().as_secs_f64();
    if !idle {
        bail!("pipeline not idle after {} s", args.timeout_s);
    }
    let measured = Measured {
        elapsed_s,
        snapshot: cluster.store.snapshot(),
        worker_stats: cluster.worker_stats.clone(),
        log_fsyncs: None,
        raft_entries: None,
    };
    cluster.shutdown();
    Ok(measured)
}

/// Nodes per raft entry while filling the fleet: one fsync per batch.
const NODES_PER_ENTRY: usize = 500;

/// Threads registering jobs at once, as many API clients would: openraft
/// batches their concurrent entries into one append (one fsync).
const REGISTER_THREADS: usize = 16;

fn run_raft(args: &EngineArgs, job_type: JobType, workers: usize) -> anyhow::Result<Measured> {
    let root = std::env::temp_dir().join(format!("caravan-perf-raft-{}-{}", std::process::id(), fastrand::u64(..)));
    let servers = start_servers(&root, args.servers.max(1), workers)?;
    let result = measure_raft(args, job_type, &servers);
    for s in &servers {
        s.shutdown();
    }
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// `count` servers in one process, forming one cluster over QUIC on
/// loopback with a shared dev CA.
fn start_servers(root: &std::path::Path, count: usize, workers: usize) -> anyhow::Result<Vec<Arc<RaftServer>>> {
    let ca = caravan_net::quic::DevCa::generate()?;
    let ports: Vec<u16> = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let handles: Vec<_> = (0..count)
        .map(|i| -> anyhow::Result<_> {
            let dir = root.join(format!("s{i}"));
            let tls_dir = dir.join("tls");
            ca.issue_node(&[])?.write_pem(&tls_dir)?;
            let mut config = ServerConfig::single(&format!("s{i}"), dir);
            config.workers = workers;
            config.rpc_bind = addrs[i].parse()?;
            config.bootstrap_expect = count;
            config.retry_join = addrs.clone();
            config.tls = Some(caravan_net::server::TlsFiles {
                ca_file: tls_dir.join("ca.pem"),
                cert_file: tls_dir.join("cert.pem"),
                key_file: tls_dir.join("key.pem"),
            });
            Ok(std::thread::spawn(move || RaftServer::start(config, Arc::new(SystemClock))))
        })
        .collect::<Result<_, _>>()?;
    let mut servers = Vec::new();
    for h in handles {
        servers.push(Arc::new(h.join().map_err(|_| anyhow::anyhow!("a server thread panicked"))??));
    }
    for s in &servers {
        if !s.wait_for_leader(Duration::from_secs(60)) {
            bail!("server {} sees no leader", s.name);
        }
    }
    // The leader first: it takes the writes.
    servers.sort_by_key(|s| !s.raft.view().is_leader());
    Ok(servers)
}

fn measure_raft(args: &EngineArgs, job_type: JobType, servers: &[Arc<RaftServer>]) -> anyhow::Result<Measured> {
    let server = &servers[0];
    let mut ids = IdGen::with_seed(7);
    let nodes: Vec<Command> = (0..args.nodes)
        .map(|i| Command::NodeRegister {
            node: node(&mut ids, &format!("node-{i}"), "dc1", NODE_CPU_MHZ, NODE_MEMORY_MB),
            evals: vec![],
        })
        .collect();
    for batch in nodes.chunks(NODES_PER_ENTRY) {
        let bytes = caravan_net::wire::encode_commands(batch)?;
        let reply = server.committer.propose(caravan_net::raft::LogPayload { bytes })?;
        if let Some(e) = reply.error {
            bail!("registering nodes: {e}");
        }
    }
    let fsyncs_before = server.log_metrics.fsync_count();
    let entries_before = server.raft.view().last_log_index;
    let start = Instant::now();
    let next_job = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let threads: Vec<_> = (0..REGISTER_THREADS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let j = next_job.fetch_add(1, Ordering::Relaxed);
                        if j >= args.jobs {
                            return Ok(());
                        }
                        let spec = job(&format!("job-{j}"), job_type, args.count, TASK_CPU_MHZ, TASK_MEMORY_MB);
                        server.register_job(spec).map_err(|e| anyhow::anyhow!("registering job-{j}: {e}"))?;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| anyhow::anyhow!("a registering thread panicked"))??;
        }
        Ok(())
    })?;
    let idle = server.duties.wait_idle(Duration::from_secs(args.timeout_s));
    let elapsed_s = start.elapsed().as_secs_f64();
    if !idle {
        bail!("pipeline not idle after {} s", args.timeout_s);
    }
    Ok(Measured {
        elapsed_s,
        snapshot: server.store.snapshot(),
        worker_stats: server.worker_stats.clone(),
        log_fsyncs: Some(server.log_metrics.fsync_count() - fsyncs_before),
        raft_entries: Some(server.raft.view().last_log_index - entries_before),
    })
}
