//! The `churn` scenario: service jobs running on a simulated fleet, then a
//! share of the busy nodes fails (goes silent, as a dead machine) while new
//! nodes join. Measured: how long until the servers mark the failed nodes
//! down, and until every lost allocation is replaced and reported running
//! elsewhere; then the committed state is checked through the API (every
//! allocation placed, none on a down node, no node over-committed).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caravan_engine::fixtures;
use caravan_engine::ids::IdGen;
use serde_json::json;

use crate::cluster::ClusterArgs;
use crate::fleet::{Fleet, FleetConfig};
use crate::report::round3;
use crate::setup::{self, FleetArgs};
use crate::{api, machine};

/// Heartbeat settings when `--server-config` gives none: failures show
/// within seconds instead of Nomad's production 10 s + 10 s.
const FAST_HEARTBEATS: &str = "  min_heartbeat_ttl = \"2s\"\n  heartbeat_grace = \"2s\"";

#[derive(clap::Args, Debug)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    #[arg(long, default_value_t = 20)]
    jobs: usize,
    #[arg(long, default_value_t = 500)]
    count: u32,
    /// Share of the nodes holding allocations that fail.
    #[arg(long, default_value_t = 0.1)]
    fail_fraction: f64,
    /// Nodes joining while the others fail.
    #[arg(long, default_value_t = 100)]
    join: usize,
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    no_save: bool,
}

pub(crate) fn run(args: &ChurnArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.fail_fraction) {
        bail!("--fail-fraction must be within 0..1");
    }
    let mut cluster = args.cluster.clone();
    if cluster.server_config.is_empty() {
        cluster.server_config = FAST_HEARTBEATS.to_string();
    }
    let running = setup::start(&cluster, &args.fleet, args.json)?;
    let result = measure(args, &running);
    running.fleet.stop();
    let mut result = result?;
    result["machine"] = machine::facts();
    machine::save("churn", &result, args.no_save, args.json)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    let wanted = args.jobs as u64 * u64::from(args.count);
    if result["allocs_placed"].as_u64() != Some(wanted)
        || result["overcommitted_nodes"].as_u64() != Some(0)
        || result["allocs_on_down_nodes"].as_u64() != Some(0)
    {
        bail!(
            "placed {} of {wanted}, {} on down nodes, {} nodes over-committed",
            result["allocs_placed"],
            result["allocs_on_down_nodes"],
            result["overcommitted_nodes"]
        );
    }
    Ok(())
}

fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<f64> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > timeout {
            bail!("{what}: not done after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn measure(args: &ChurnArgs, running: &setup::Running) -> anyhow::Result<serde_json::Value> {
    let shared = &running.fleet.shared;
    let api = &running.api;
    let timeout = Duration::from_secs(args.timeout_s);
    let wanted = args.jobs as u64 * u64::from(args.count);
    let jobs: Vec<String> = (0..args.jobs).map(|j| format!("churn-{j}")).collect();
    for id in &jobs {
        api.register(&api::job(id, "service", args.count, 100, 128)).with_context(|| format!("registering {id}"))?;
    }
    wait_for(timeout, "initial placement", || Ok(shared.allocs_running.load(Ordering::Relaxed) >= wanted))?;

    // Fail a share of the nodes that hold work; others join meanwhile.
    let busy: Vec<usize> =
        (0..running.nodes.len()).filter(|i| shared.node_allocs[*i].load(Ordering::Relaxed) > 0).collect();
    let failing = ((busy.len() as f64 * args.fail_fraction).round() as usize).min(busy.len());
    let victims: Vec<usize> =
        busy.iter().copied().step_by((busy.len() / failing.max(1)).max(1)).take(failing).collect();
    let lost: u64 = victims.iter().map(|i| u64::from(shared.node_allocs[*i].load(Ordering::Relaxed))).sum();
    let seen_before = shared.allocs_seen.load(Ordering::Relaxed);
    let running_before = shared.allocs_running.load(Ordering::Relaxed);
    for i in &victims {
        shared.fail(*i);
    }
    let mut ids = IdGen::with_seed(fastrand::u64(..));
    let join_nodes: Vec<_> = (0..args.join)
        .map(|i| {
            fixtures::node(&mut ids, &format!("join-{i}"), "dc1", args.fleet.node_cpu_mhz, args.fleet.node_memory_mb)
        })
        .collect();
    let joiners = Fleet::start(FleetConfig {
        nodes: join_nodes.clone(),
        servers: running.cluster.rpc.clone(),
        tls: running.cluster.fleet_tls.clone(),
        threads: 1,
        running_delay: Duration::from_millis(args.fleet.running_delay_ms),
        update_interval: Duration::from_millis(args.fleet.update_interval_ms.max(1)),
        allocs_wait: Duration::from_secs(args.fleet.allocs_wait_s.max(1)),
    });
    let outcome = (|| -> anyhow::Result<serde_json::Value> {
        let victim_ids: std::collections::HashSet<String> =
            victims.iter().map(|i| running.nodes[*i].id.to_string()).collect();
        let down_s = wait_for(timeout, "failed nodes marked down", || {
            let nodes = api.get("/v1/nodes")?;
            let down = nodes
                .as_array()
                .context("nodes are not a list")?
                .iter()
                .filter(|n| n["Status"] == "down" && victim_ids.contains(n["ID"].as_str().unwrap_or_default()))
                .count();
            Ok(down == victim_ids.len())
        })?;
        let replaced = || {
            shared.allocs_seen.load(Ordering::Relaxed) + joiners.shared.allocs_seen.load(Ordering::Relaxed)
                >= seen_before + lost
                && shared.allocs_running.load(Ordering::Relaxed) + joiners.shared.allocs_running.load(Ordering::Relaxed)
                    >= running_before + lost
        };
        let replaced_s = down_s + wait_for(timeout, "lost allocations replaced", || Ok(replaced()))?;
        let all_nodes: Vec<_> = running.nodes.iter().chain(&join_nodes).cloned().collect();
        let verified = setup::verify(api, &jobs, &all_nodes)?;
        let on_down = count_on_nodes(api, &jobs, &victim_ids)?;
        Ok(json!({
            "scenario": "churn",
            "servers": running.cluster.rpc.len(),
            "nodes": args.fleet.nodes,
            "nodes_failed": victims.len(),
            "nodes_joined": args.join,
            "nodes_joined_used": joiners.shared.node_allocs.iter().filter(|n| n.load(Ordering::Relaxed) > 0).count(),
            "allocs_wanted": wanted,
            "allocs_lost": lost,
            "down_detected_s": round3(down_s),
            "replaced_and_running_s": round3(replaced_s),
            "allocs_placed": verified.allocs_placed,
            "allocs_on_down_nodes": on_down,
            "overcommitted_nodes": verified.overcommitted_nodes,
            "rpc_errors": shared.rpc_errors.load(Ordering::Relaxed),
        }))
    })();
    joiners.stop();
    outcome
}

/// Live allocations of `jobs` on the given nodes.
fn count_on_nodes(api: &api::Api, jobs: &[String], nodes: &std::collections::HashSet<String>) -> anyhow::Result<u64> {
    let mut count = 0;
    for id in jobs {
        let list = api.get(&format!("/v1/job/{id}/allocations"))?;
        for alloc in list.as_array().context("job allocations are not a list")? {
            if setup::is_live(alloc) && nodes.contains(alloc["NodeID"].as_str().unwrap_or_default()) {
                count += 1;
            }
        }
    }
    Ok(count)
}
