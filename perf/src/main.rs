//! `caravan-perf`: scenarios that measure Caravan at fleet scale. Each
//! prints one JSON line last and writes it, with the machine's facts, to
//! `perf/results/<scenario>-<date>.json`.
//!
//! Scenarios so far:
//! - `engine`: the full in-process pipeline (broker, workers on every core,
//!   plan applier, FSM; no network, no raft) placing `--jobs × --count`
//!   allocations onto `--nodes` simulated nodes.
//! - `gpu`: a fleet of simulated 8-GPU nodes filled with a mix of GPU jobs
//!   and gang jobs until the first request cannot be placed.

mod engine;
mod gpu;
mod machine;

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Engine(args) => engine::run(&args),
        Scenario::Gpu(args) => gpu::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caravan-perf: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
