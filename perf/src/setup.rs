//! What the fleet scenarios share: servers plus a registered simulated
//! fleet, the servers' resource use, and the end-of-run check of committed
//! state through the HTTP API.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caravan_engine::fixtures;
use caravan_engine::ids::IdGen;
use caravan_engine::model::Node;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::api::Api;
use crate::cluster::{Cluster, ClusterArgs};
use crate::fleet::{Fleet, FleetConfig};
use crate::procstat;

/// Requests in flight while reading the state back at the end.
const VERIFY_THREADS: usize = 8;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FleetArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) nodes: usize,
    /// Each node's CPU (MHz); the default fits 640 allocations of 100 MHz.
    #[arg(long, default_value_t = 64_000)]
    pub(crate) node_cpu_mhz: u64,
    /// Each node's memory (MiB).
    #[arg(long, default_value_t = 256 * 1024)]
    pub(crate) node_memory_mb: u64,
    /// OS threads running the simulated nodes.
    #[arg(long, default_value_t = 2)]
    pub(crate) fleet_threads: usize,
    /// From a node receiving an allocation to reporting it running (ms).
    #[arg(long, default_value_t = 0)]
    pub(crate) running_delay_ms: u64,
    /// How often a node sends its batched status reports (ms), as an agent
    /// does (Nomad: 200).
    #[arg(long, default_value_t = 200)]
    pub(crate) update_interval_ms: u64,
    /// How long each node's blocking allocation query waits (s).
    #[arg(long, default_value_t = 60)]
    pub(crate) allocs_wait_s: u64,
    /// Give up waiting for the fleet to register after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) register_timeout_s: u64,
}

/// Servers and a registered fleet.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) cluster: Cluster,
    pub(crate) fleet: Fleet,
    /// The leader's API (writes go there, as a user's would be forwarded).
    pub(crate) api: Api,
    pub(crate) nodes: Vec<Node>,
    /// Seconds the fleet took to register.
    pub(crate) register_s: f64,
}

/// A progress bar on stderr, hidden with `--json` or off a terminal.
pub(crate) fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

pub(crate) fn start(cluster: &ClusterArgs, fleet: &FleetArgs, quiet: bool) -> anyhow::Result<Running> {
    let cluster = Cluster::start(cluster)?;
    let leader = cluster.leader_http().context("no leader")?;
    let api = Api::new(&leader);
    let mut ids = IdGen::with_seed(fastrand::u64(..));
    let nodes: Vec<Node> = (0..fleet.nodes)
        .map(|i| fixtures::node(&mut ids, &format!("sim-{i}"), "dc1", fleet.node_cpu_mhz, fleet.node_memory_mb))
        .collect();
    let started = Instant::now();
    let running = Fleet::start(FleetConfig {
        nodes: nodes.clone(),
        servers: cluster.rpc.clone(),
        tls: cluster.fleet_tls.clone(),
        threads: fleet.fleet_threads,
        running_delay: Duration::from_millis(fleet.running_delay_ms),
        update_interval: Duration::from_millis(fleet.update_interval_ms.max(1)),
        allocs_wait: Duration::from_secs(fleet.allocs_wait_s.max(1)),
    });
    let bar = progress(fleet.nodes as u64, "registering", quiet);
    let deadline = started + Duration::from_secs(fleet.register_timeout_s);
    loop {
        let registered = running.shared.registered.load(Ordering::Relaxed);
        bar.set_position(registered);
        if registered >= fleet.nodes as u64 {
            break;
        }
        if Instant::now() > deadline {
            running.stop();
            bail!("{registered} of {} nodes registered after {} s", fleet.nodes, fleet.register_timeout_s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bar.finish_and_clear();
    let register_s = started.elapsed().as_secs_f64();
    Ok(Running { cluster, fleet: running, api, nodes, register_s })
}

/// The leader's CPU seconds and RSS (now, peak) in MiB, when this harness
/// started it.
pub(crate) fn leader_usage(cluster: &Cluster) -> Option<(f64, f64, f64)> {
    let pid = cluster.leader_process()?.pid();
    let cpu = procstat::cpu_s(pid)?;
    let (rss, peak) = procstat::rss_mb(pid)?;
    Some((cpu, rss, peak))
}

/// Committed state as the API shows it at the end of a run.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    /// Non-terminal allocations of the scenario's jobs.
    pub(crate) allocs_placed: u64,
    pub(crate) allocs_running: u64,
    /// Allocations the servers marked lost (their node went down): each
    /// one is replaced, so nodes receive more than were asked for.
    pub(crate) allocs_lost: u64,
    /// Nodes whose live allocations exceed their CPU or memory.
    pub(crate) overcommitted_nodes: u64,
}

/// An allocation (API JSON) that holds its node's resources: wanted
/// running and not terminal on the client.
pub(crate) fn is_live(alloc: &Value) -> bool {
    alloc["DesiredStatus"] == "run" && !matches!(alloc["ClientStatus"].as_str(), Some("complete" | "failed" | "lost"))
}

fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> anyhow::Result<R> + Sync) -> anyhow::Result<Vec<R>> {
    let chunk = items.len().div_ceil(VERIFY_THREADS).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<anyhow::Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(h.join().map_err(|_| anyhow::anyhow!("a verifying thread panicked"))??);
        }
        Ok(out)
    })
}

/// Read every job's allocations and every node back through the API and
/// check that no node holds more than it has.
pub(crate) fn verify(api: &Api, jobs: &[String], nodes: &[Node]) -> anyhow::Result<Verified> {
    use std::collections::HashMap;
    let allocs: Vec<Value> = parallel(jobs, |id| api.get(&format!("/v1/job/{id}/allocations")))?;
    let mut used: HashMap<String, (u64, u64)> = HashMap::new();
    let mut verified = Verified::default();
    for list in &allocs {
        for alloc in list.as_array().context("job allocations are not a list")? {
            if alloc["ClientStatus"] == "lost" {
                verified.allocs_lost += 1;
            }
            if !is_live(alloc) {
                continue;
            }
            verified.allocs_placed += 1;
            if alloc["ClientStatus"] == "running" {
                verified.allocs_running += 1;
            }
            let node = alloc["NodeID"].as_str().context("allocation without NodeID")?.to_string();
            let entry = used.entry(node).or_default();
            let tasks = alloc["AllocatedResources"]["Tasks"].as_object().context("allocation without Tasks")?;
            for task in tasks.values() {
                entry.0 += task["Cpu"]["CpuShares"].as_u64().unwrap_or(0);
                entry.1 += task["Memory"]["MemoryMB"].as_u64().unwrap_or(0);
            }
        }
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.id.to_string()).filter(|id| used.contains_key(id)).collect();
    let capacities: Vec<(String, u64, u64)> = parallel(&ids, |id| {
        let node = api.get(&format!("/v1/node/{id}"))?;
        let cpu = node["NodeResources"]["Cpu"]["CpuShares"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(node["ReservedResources"]["Cpu"]["CpuShares"].as_u64().unwrap_or(0));
        let memory = node["NodeResources"]["Memory"]["MemoryMB"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(node["ReservedResources"]["Memory"]["MemoryMB"].as_u64().unwrap_or(0));
        Ok((id.clone(), cpu, memory))
    })?;
    for (id, cpu, memory) in capacities {
        let (cpu_used, memory_used) = used[&id];
        if cpu_used > cpu || memory_used > memory {
            verified.overcommitted_nodes += 1;
        }
    }
    Ok(verified)
}

/// How often the deployments are read while waiting for them to end.
const DEPLOYMENTS_POLL: Duration = Duration::from_millis(500);

/// The latest deployment of each of the scenario's jobs, as the API shows
/// it once they ended (or at the deadline).
#[derive(Debug, Default)]
pub(crate) struct Deployments {
    pub(crate) successful: u64,
    pub(crate) failed: u64,
    /// Still running or paused at the deadline, cancelled, or missing (a
    /// service job without a deployment).
    pub(crate) unfinished: u64,
    /// Seconds from `start` until the last ended (to within a poll).
    pub(crate) settled_s: Option<f64>,
}

/// Wait until every job's latest deployment has ended (successful or
/// failed) or `deadline`, reading `/v1/deployments` every
/// [`DEPLOYMENTS_POLL`].
pub(crate) fn wait_deployments(
    api: &Api,
    jobs: &[String],
    start: Instant,
    deadline: Instant,
    quiet: bool,
) -> anyhow::Result<Deployments> {
    use std::collections::{HashMap, HashSet};
    let ours: HashSet<&str> = jobs.iter().map(String::as_str).collect();
    let bar = progress(jobs.len() as u64, "deployed", quiet);
    loop {
        let list = api.get("/v1/deployments")?;
        // Newest first: the first seen of a job is its latest.
        let mut latest: HashMap<&str, &str> = HashMap::new();
        for d in list.as_array().context("deployments are not a list")? {
            let (Some(job), Some(status)) = (d["JobID"].as_str(), d["Status"].as_str()) else { continue };
            if ours.contains(job) {
                latest.entry(job).or_insert(status);
            }
        }
        let count = |s: &str| latest.values().filter(|v| **v == s).count() as u64;
        let (successful, failed) = (count("successful"), count("failed"));
        let ended = successful + failed;
        bar.set_position(ended);
        let now = Instant::now();
        if ended == jobs.len() as u64 || now > deadline {
            bar.finish_and_clear();
            return Ok(Deployments {
                successful,
                failed,
                unfinished: jobs.len() as u64 - ended,
                settled_s: (ended == jobs.len() as u64).then(|| now.duration_since(start).as_secs_f64()),
            });
        }
        std::thread::sleep(DEPLOYMENTS_POLL);
    }
}

/// Every evaluation of the given jobs: (create → modify) in ms, for those
/// complete.
pub(crate) fn eval_latencies_ms(api: &Api, jobs: &[String]) -> anyhow::Result<EvalTimes> {
    let lists: Vec<Value> = parallel(jobs, |id| api.get(&format!("/v1/job/{id}/evaluations")))?;
    let mut out = Vec::new();
    let mut last_done_unix_ns = 0_i64;
    let mut node_update_evals = 0;
    for list in &lists {
        for eval in list.as_array().context("evaluations are not a list")? {
            if eval["TriggeredBy"] == "node-update" {
                node_update_evals += 1;
            }
            if eval["Status"] != "complete" {
                continue;
            }
            let (Some(created), Some(modified)) = (eval["CreateTime"].as_i64(), eval["ModifyTime"].as_i64()) else {
                continue;
            };
            out.push((modified - created).max(0) as f64 / 1e6);
            last_done_unix_ns = last_done_unix_ns.max(modified);
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(EvalTimes { latencies_ms: out, last_done_unix_ns, node_update_evals })
}

/// Completed evaluations: each one's create → complete, sorted, and when
/// the last completed (server clock, Unix ns).
pub(crate) struct EvalTimes {
    pub(crate) latencies_ms: Vec<f64>,
    pub(crate) last_done_unix_ns: i64,
    /// Evaluations a node's status change created (a node marked down, or
    /// back): 0 in a run where every node stayed ready.
    pub(crate) node_update_evals: u64,
}

/// Now on the Unix clock, in ns (the servers' eval times use it).
pub(crate) fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
