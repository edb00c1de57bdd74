//! `caravan-perf`: scenarios that measure Caravan at fleet scale. Each
//! prints one JSON line last and writes it, with the machine's facts, to
//! `perf/results/<scenario>-<date>.json`.
//!
//! Scenarios so far:
//! - `engine`: the full in-process pipeline (broker, workers on every core,
//!   plan applier, FSM; no network, no raft) placing `--jobs × --count`
//!   allocations onto `--nodes` simulated nodes.
//! - `c1m`: real `caravan agent -server` processes, a simulated fleet over
//!   the client RPC, jobs through the HTTP API; placements/s until every
//!   allocation reached its node and was reported running, checked back
//!   through the API.
//! - `latency`: register→on-node and register→running percentiles of
//!   single-allocation jobs under a steady background of evaluations.
//! - `heartbeat`: a fleet heartbeating at its TTLs; the leader's CPU and
//!   false down-markings.
//! - `churn`: busy nodes fail and new ones join; time to detect and to
//!   replace the lost work, and no over-commit.
//! - `gpu`: a fleet of simulated 8-GPU nodes filled with a mix of GPU jobs
//!   and gang jobs until the first request cannot be placed.

mod api;
mod c1m;
mod churn;
mod cluster;
mod engine;
mod fleet;
mod gpu;
mod heartbeat;
mod latency;
mod machine;
mod procstat;
mod report;
mod setup;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "caravan-perf", about = "Measure Caravan at fleet scale")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// The in-process engine pipeline, no network and no raft.
    Engine(engine::EngineArgs),
    /// A GPU fleet filled with a mix of GPU jobs until the first failure.
    Gpu(gpu::GpuArgs),
    /// A million allocations onto a simulated fleet over the real RPC.
    C1m(c1m::C1mArgs),
    /// Register→placed and →running latency under background load.
    Latency(latency::LatencyArgs),
    /// Heartbeat cost and false positives of a large fleet.
    Heartbeat(heartbeat::HeartbeatArgs),
    /// Nodes failing and joining while jobs run.
    Churn(churn::ChurnArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The simulated fleet churns through fresh heap pages; with the
    // kernel's transparent huge pages `always`, each first touch zeroed a
    // 2 MiB page (a tenth of the fleet threads' CPU in a `c1m` profile),
    // CPU the servers on the same cores then lack. The servers this
    // starts turn it off for themselves, as every agent does.
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("caravan-perf: cannot turn transparent huge pages off ({err})");
    }
    let result = match cli.scenario {
        Scenario::Engine(args) => engine::run(&args),
        Scenario::Gpu(args) => gpu::run(&args),
        Scenario::C1m(args) => c1m::run(&args),
        Scenario::Latency(args) => latency::run(&args),
        Scenario::Heartbeat(args) => heartbeat::run(&args),
        Scenario::Churn(args) => churn::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caravan-perf: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
