//! The `heartbeat` scenario: a registered fleet heartbeating at the TTLs
//! the leader hands out, measured over `--duration-s`: the leader's CPU
//! for it (per 1,000 nodes), heartbeats per second, and false positives —
//! nodes the servers marked down although they never stopped beating
//! (must be zero), checked through the API at the end.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::cluster::ClusterArgs;
use crate::machine;
use crate::report::round3;
use crate::setup::{self, FleetArgs};

/// Quiet time after registration before measuring: the register storm's
/// raft commits and snapshotting settle first.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug)]
pub(crate) struct HeartbeatArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    /// How long to measure.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    no_save: bool,
}

pub(crate) fn run(args: &HeartbeatArgs) -> anyhow::Result<()> {
    let running = setup::start(&args.cluster, &args.fleet, args.json)?;
    let result = measure(args, &running);
    running.fleet.stop();
    let mut result = result?;
    result["machine"] = machine::facts();
    machine::save("heartbeat", &result, args.no_save, args.json)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{result}");
    }
    if result["false_positive_down"].as_u64() != Some(0) {
        bail!("{} nodes were marked down while heartbeating", result["false_positive_down"]);
    }
    Ok(())
}

fn measure(args: &HeartbeatArgs, running: &setup::Running) -> anyhow::Result<serde_json::Value> {
    let shared = &running.fleet.shared;
    std::thread::sleep(SETTLE);
    let before = setup::leader_usage(&running.cluster);
    let beats_before = shared.heartbeats.load(Ordering::Relaxed);
    let errors_before = shared.rpc_errors.load(Ordering::Relaxed);
    let started = Instant::now();
    let bar = setup::progress(args.duration_s, "seconds", args.json);
    while started.elapsed() < Duration::from_secs(args.duration_s) {
        std::thread::sleep(Duration::from_secs(1));
        bar.set_position(started.elapsed().as_secs());
    }
    bar.finish_and_clear();
    let elapsed_s = started.elapsed().as_secs_f64();
    let after = setup::leader_usage(&running.cluster);
    let beats = shared.heartbeats.load(Ordering::Relaxed) - beats_before;
    let nodes = running.api.get("/v1/nodes")?;
    let ours: std::collections::HashSet<String> = running.nodes.iter().map(|n| n.id.to_string()).collect();
    let mut down = 0u64;
    for node in nodes.as_array().context("nodes are not a list")? {
        let id = node["ID"].as_str().unwrap_or_default();
        if ours.contains(id) && node["Status"] != "ready" {
            down += 1;
        }
    }
    let cpu_s = match (before, after) {
        (Some((cpu0, _, _)), Some((cpu1, _, _))) => Some(cpu1 - cpu0),
        _ => None,
    };
    let core_fraction = cpu_s.map(|c| c / elapsed_s);
    Ok(json!({
        "scenario": "heartbeat",
        "servers": running.cluster.rpc.len(),
        "nodes": args.fleet.nodes,
        "duration_s": round3(elapsed_s),
        "heartbeats": beats,
        "heartbeats_per_s": round3(beats as f64 / elapsed_s),
        "false_positive_down": down,
        "reregistered": shared.reregistered.load(Ordering::Relaxed),
        "rpc_errors": shared.rpc_errors.load(Ordering::Relaxed) - errors_before,
        "server_cpu_s": cpu_s.map(round3),
        "server_core_percent": core_fraction.map(|f| round3(f * 100.0)),
        "server_core_percent_per_1000_nodes": core_fraction.map(|f| round3(f * 100.0 * 1000.0 / args.fleet.nodes as f64)),
        "server_rss_mb": after.map(|a| a.1.round()),
        "register_s": round3(running.register_s),
    }))
}
